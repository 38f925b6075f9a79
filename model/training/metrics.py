"""Retrieval metrics as pure functions of a score matrix: R@K, median / mean rank, rsum.

Ranks are 1-based and count the items scored strictly higher than the ground truth, so
ties are resolved in the ground truth's favour (the reference code breaks ties by sort
order instead; with float scores ties practically never happen)."""

from __future__ import annotations

import numpy as np

RECALL_AT = (1, 5, 10)


def text_to_image_ranks(scores: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """scores (n_img, n_cap), caption_image (n_cap,) gt image per caption -> (n_cap,) ranks."""
    _check(scores, caption_image)
    truth = scores[caption_image, np.arange(scores.shape[1])]  # (n_cap,)
    return (scores > truth[None, :]).sum(axis=0) + 1


def image_to_text_ranks(scores: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """(n_img,) rank of each image's best-ranked ground-truth caption."""
    _check(scores, caption_image)
    n_img = scores.shape[0]
    best = np.full(n_img, -np.inf)
    np.maximum.at(best, caption_image, scores[caption_image, np.arange(scores.shape[1])])
    if np.isneginf(best).any():
        missing = int(np.flatnonzero(np.isneginf(best))[0])
        raise ValueError(f"image {missing} has no caption; every image needs at least one")
    return (scores > best[:, None]).sum(axis=1) + 1


def summarize(ranks: np.ndarray) -> dict[str, float]:
    """R@1/5/10 in percent, median and mean rank."""
    out = {f"r{k}": float(100.0 * (ranks <= k).mean()) for k in RECALL_AT}
    out["medr"] = float(np.floor(np.median(ranks)))
    out["meanr"] = float(ranks.mean())
    return out


def retrieval_metrics(scores: np.ndarray, caption_image: np.ndarray) -> dict[str, float]:
    """Both directions: i2t_r1 ... t2i_meanr, and rsum (the sum of the six recalls)."""
    i2t = summarize(image_to_text_ranks(scores, caption_image))
    t2i = summarize(text_to_image_ranks(scores, caption_image))
    metrics = {f"i2t_{k}": v for k, v in i2t.items()} | {f"t2i_{k}": v for k, v in t2i.items()}
    metrics["rsum"] = sum(i2t[f"r{k}"] + t2i[f"r{k}"] for k in RECALL_AT)
    return metrics


def fold_metrics(scores: np.ndarray, caption_image: np.ndarray, folds: int = 5) -> dict[str, float]:
    """COCO 1K protocol: split the images into `folds` equal blocks (their captions go
    with them), compute metrics inside each block, and average."""
    n_img = scores.shape[0]
    if n_img % folds:
        raise ValueError(f"{n_img} images do not split into {folds} equal folds")
    size = n_img // folds
    results = []
    for fold in range(folds):
        caps = np.flatnonzero(caption_image // size == fold)
        block = scores[fold * size : (fold + 1) * size][:, caps]
        results.append(retrieval_metrics(block, caption_image[caps] - fold * size))
    return {key: float(np.mean([r[key] for r in results])) for key in results[0]}


def _check(scores: np.ndarray, caption_image: np.ndarray) -> None:
    if not np.isfinite(scores).all():
        raise ValueError("the score matrix holds NaN or infinite values: the model diverged")
    if scores.ndim != 2 or caption_image.shape != (scores.shape[1],):
        raise ValueError(
            f"scores {scores.shape} need one ground-truth image per column, "
            f"got {caption_image.shape}"
        )
    if caption_image.size and (caption_image.min() < 0 or caption_image.max() >= scores.shape[0]):
        raise ValueError("caption_image holds an image index outside the score matrix")
