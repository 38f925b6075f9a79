"""Evaluation of a model on a precomp split: encode everything once, score every image
against every caption exactly, and report recall in both directions."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model.chan import CHANModel
from model.inference import encode_flat
from model.scoring import FlatWords
from model.training.data import PrecompSplit
from model.training.metrics import fold_metrics, retrieval_metrics
from model.vocab import CaptionTokenizer

logger = logging.getLogger(__name__)


@dataclass
class EncodedSplit:
    """Embeddings of a whole split, ready for score_matrix."""

    images: torch.Tensor  # (N, K, d)
    counts: torch.Tensor  # (N,)
    words: FlatWords  # all captions' valid word vectors


@torch.inference_mode()
def encode_split(
    model: CHANModel,
    tokenizer: CaptionTokenizer,
    split: PrecompSplit,
    batch_size: int = 256,
    max_images: int | None = None,
    progress: bool | None = None,
) -> tuple[EncodedSplit, np.ndarray]:
    """Encode the first max_images images (all by default) and their captions.
    Returns the embeddings and caption_image (n_cap,) for the metrics."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n_img = split.num_images if max_images is None else min(max_images, split.num_images)
    caps = np.flatnonzero(split.caption_image < n_img)
    images = []
    for start in tqdm(range(0, n_img, batch_size), desc="encode images", disable=progress is False):
        feats, counts = split.image_batch(np.arange(start, min(n_img, start + batch_size)))
        images.append(model.encode_images(feats.to(device), counts.to(device)).cpu())

    def encode(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, lens = tokenizer(captions)
        return model.encode_texts(ids.to(device), lens.to(device)).cpu(), lens

    words = encode_flat(encode, [split.captions[c] for c in caps], batch_size, progress)
    model.train(was_training)
    encoded = EncodedSplit(
        torch.cat(images),
        torch.from_numpy(split.counts[split.rows[:n_img]]),
        words,
    )
    return encoded, split.caption_image[caps]


@torch.inference_mode()
def evaluate(
    model: CHANModel,
    tokenizer: CaptionTokenizer,
    split: PrecompSplit,
    folds: int = 1,
    max_images: int | None = None,
    batch_size: int = 256,
    progress: bool | None = None,
) -> dict[str, Any]:
    """R@1/5/10, medr, meanr both ways and rsum; folds=5 is the COCO 1K protocol."""
    encoded, caption_image = encode_split(model, tokenizer, split, batch_size, max_images, progress)
    scores = model.score(encoded.images, encoded.counts, encoded.words).numpy()
    if folds > 1:
        metrics = fold_metrics(scores, caption_image, folds)
    else:
        metrics = retrieval_metrics(scores, caption_image)
    metrics["num_images"], metrics["num_captions"] = scores.shape
    return metrics
