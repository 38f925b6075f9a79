"""Shortlist recall: how much of the exact top-k the shortlist + rerank path returns,
measured on sample queries in both directions (stored in every manifest)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from index_builder.search.vectors import VectorSearcher

logger = logging.getLogger(__name__)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """|found ∩ truth| / |truth| for one query."""
    return len(np.intersect1d(found, truth)) / max(1, len(truth))


def measure(
    searcher: VectorSearcher,
    text_queries: Sequence[torch.Tensor],
    image_queries: Sequence[torch.Tensor],
    k: int = 10,
) -> dict[str, Any]:
    """text_queries: word vectors (L, d) each; image_queries: region vectors (n, d) each.
    Returns mean recall@k of shortlist + rerank against exhaustive exact search, and the
    mean shortlist size, per direction."""
    result: dict[str, Any] = {"k": k, **dataclasses.asdict(searcher.params)}
    for name, queries, run in (
        ("text_to_image", text_queries, searcher.images_for_words),
        ("image_to_text", image_queries, searcher.captions_for_regions),
    ):
        if not queries:
            continue
        recalls = []
        for query in queries:
            fast = run(query, k)
            exact = run(query, k, exhaustive=True)
            recalls.append(recall_at_k(fast.rows, exact.rows))
        result[name] = {"recall_at_k": float(np.mean(recalls)), "queries": len(queries)}
        logger.info("shortlist recall@%d %s: %.4f over %d queries", k, name,
                    result[name]["recall_at_k"], len(queries))  # fmt: skip
    return result
