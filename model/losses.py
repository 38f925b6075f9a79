"""Training objectives on a square (B, B) score matrix whose diagonal holds the positives."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def hinge_triplet_loss(
    scores: torch.Tensor, margin: float = 0.05, hardest_negative: bool = True
) -> torch.Tensor:
    """Bidirectional hinge triplet loss, summed over the batch (VSE++ / official CHAN).

    scores: (B, B), scores[i, j] = s(image i, caption j), positives on the diagonal.
    hardest_negative: keep only the most violating negative per query (VSE++);
    False sums the violations of every negative (the warm-up objective).
    """
    _check_square(scores)
    positive = scores.diag()
    eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    # image i as the query: its captions j != i must score below its own caption
    cost_caption = (margin + scores - positive[:, None]).clamp(min=0).masked_fill(eye, 0)
    # caption j as the query: images i != j must score below its own image
    cost_image = (margin + scores - positive[None, :]).clamp(min=0).masked_fill(eye, 0)
    if hardest_negative:
        return cost_caption.amax(dim=1).sum() + cost_image.amax(dim=0).sum()
    return cost_caption.sum() + cost_image.sum()


def info_nce_loss(scores: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Symmetric InfoNCE (cross-entropy over rows and over columns), mean over the batch."""
    _check_square(scores)
    logits = scores / temperature
    target = torch.arange(scores.shape[0], device=scores.device)
    row = torch.nn.functional.cross_entropy(logits, target)
    column = torch.nn.functional.cross_entropy(logits.T, target)
    return row + column


def _check_square(scores: torch.Tensor) -> None:
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"a loss needs a square (B, B) score matrix, got {tuple(scores.shape)}")
