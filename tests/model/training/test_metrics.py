"""Recall metrics against a brute-force oracle that sorts every row and column."""

import numpy as np
import pytest

from model.training.metrics import fold_metrics, retrieval_metrics


def oracle(scores: np.ndarray, caption_image: np.ndarray) -> dict[str, float]:
    """Sort-based ranks, loops everywhere (ties cannot occur with random floats)."""
    i2t, t2i = [], []
    for image in range(scores.shape[0]):
        order = list(np.argsort(-scores[image]))
        i2t.append(min(order.index(c) for c in np.flatnonzero(caption_image == image)) + 1)
    for caption in range(scores.shape[1]):
        order = list(np.argsort(-scores[:, caption]))
        t2i.append(order.index(caption_image[caption]) + 1)
    out = {}
    for name, ranks in (("i2t", np.array(i2t)), ("t2i", np.array(t2i))):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * np.mean(ranks <= k)
        out[f"{name}_medr"] = float(np.floor(np.median(ranks)))
        out[f"{name}_meanr"] = float(np.mean(ranks))
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


@pytest.mark.parametrize("per_image", [1, 5])
def test_matches_the_oracle(per_image):
    rng = np.random.default_rng(per_image)
    n_img = 40
    caption_image = np.repeat(np.arange(n_img), per_image)
    # signal on the diagonal so that recalls are neither 0 nor 100
    scores = rng.normal(size=(n_img, n_img * per_image))
    scores[caption_image, np.arange(caption_image.size)] += 1.5
    got, want = retrieval_metrics(scores, caption_image), oracle(scores, caption_image)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key]), key
    assert 0 < got["t2i_r1"] < 100


def test_perfect_and_reversed_scores():
    caption_image = np.repeat(np.arange(10), 5)
    perfect = (caption_image[None, :] == np.arange(10)[:, None]).astype(float)
    assert retrieval_metrics(perfect, caption_image)["rsum"] == 600.0
    worst = retrieval_metrics(-perfect + 1e-3 * np.arange(50)[None, :], caption_image)
    assert worst["t2i_r1"] == 0.0 and worst["t2i_medr"] == 10.0


def test_five_folds_average_the_blocks():
    rng = np.random.default_rng(0)
    caption_image = np.repeat(np.arange(50), 5)
    scores = rng.normal(size=(50, 250))
    folds = fold_metrics(scores, caption_image, folds=5)
    blocks = [
        oracle(scores[f * 10 : (f + 1) * 10, f * 50 : (f + 1) * 50], caption_image[:50])
        for f in range(5)
    ]
    assert folds["rsum"] == pytest.approx(np.mean([b["rsum"] for b in blocks]))
    with pytest.raises(ValueError, match="equal folds"):
        fold_metrics(scores[:49], caption_image[caption_image < 49], folds=5)


def test_bad_shapes_and_orphan_images():
    with pytest.raises(ValueError, match="ground-truth"):
        retrieval_metrics(np.zeros((3, 4)), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(np.zeros((3, 2)), np.array([0, 1]))


def test_nan_scores_are_refused_not_counted_as_hits():
    scores = np.full((3, 3), np.nan)
    with pytest.raises(ValueError, match="diverged"):
        retrieval_metrics(scores, np.arange(3))
