"""Word pooling (model.pooling) against a plain loop-based float64 reference."""

import itertools
import math

import numpy as np
import pytest
import torch

from model.pooling import pool_dense, pool_partial, pool_segments
from model.scoring import Matching

POOLINGS = ["lse", "mean", "max", "sum"]
DTYPES = [np.float32, np.float64]
TEMPERATURE = 0.1


def reference(captions: list[list[tuple[float, float]]], pooling: str) -> np.ndarray:
    """Each caption a list of (value, weight): weight n counts the value n times."""
    out = []
    for entries in captions:
        kept = [(float(v), float(w)) for v, w in entries if w > 0]
        if pooling == "lse":
            out.append(math.log(math.fsum(w * math.exp(v / TEMPERATURE) for v, w in kept)))
        elif pooling == "max":
            out.append(max(v for v, _ in kept))
        else:
            total = math.fsum(w * v for v, w in kept)
            out.append(total / math.fsum(w for _, w in kept) if pooling == "mean" else total)
    return np.array(out)


def tolerance(dtype) -> dict:
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}


def matching(pooling: str) -> Matching:
    return Matching(pooling=pooling, pooling_temperature=TEMPERATURE)


def ragged(rng, lengths) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return rng.uniform(-1, 1, int(offsets[-1])), offsets


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense(pooling, dtype):
    rng = np.random.default_rng(0)
    values = rng.uniform(-1, 1, (7, 5)).astype(dtype)  # (L words, N items)
    expected = reference([[(v, 1) for v in values[:, n]] for n in range(5)], pooling)
    got = pool_dense(values, matching(pooling))
    assert isinstance(got, np.ndarray) and got.dtype == dtype and got.shape == (5,)
    np.testing.assert_allclose(got, expected, **tolerance(dtype))
    as_tensor = pool_dense(torch.from_numpy(values), matching(pooling))
    assert isinstance(as_tensor, torch.Tensor)
    np.testing.assert_array_equal(as_tensor.numpy(), got)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_segments(pooling, dtype):
    rng = np.random.default_rng(1)
    values, offsets = ragged(rng, [3, 1, 6, 2, 4])
    values = values.astype(dtype)
    expected = reference(
        [[(v, 1) for v in values[a:b]] for a, b in itertools.pairwise(offsets)],
        pooling,
    )
    got = pool_segments(values, offsets, matching(pooling))
    assert got.dtype == dtype and got.shape == (5,)
    np.testing.assert_allclose(got, expected, **tolerance(dtype))


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_segments_with_leading_dims_and_one_caption(pooling, dtype):
    """(B, W) values of several captions, and of one caption (the plain reduction), each
    row against the reference; rows past offsets[-1] (alignment rows) belong to none."""
    rng = np.random.default_rng(2)
    values, offsets = ragged(rng, [2, 5, 3])
    table = rng.uniform(-1, 1, (4, len(values) + 3)).astype(dtype)  # 3 alignment rows
    captions = list(itertools.pairwise(offsets))
    got = pool_segments(torch.from_numpy(table), torch.from_numpy(offsets), matching(pooling))
    assert got.shape == (4, 3)
    single = pool_segments(table, np.array([0, 5]), matching(pooling))
    assert single.shape == (4, 1)
    for row in range(4):
        expected = reference([[(v, 1) for v in table[row, a:b]] for a, b in captions], pooling)
        np.testing.assert_allclose(got[row].numpy(), expected, **tolerance(dtype))
        alone = reference([[(v, 1) for v in table[row, :5]]], pooling)
        np.testing.assert_allclose(single[row], alone, **tolerance(dtype))


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_partial_with_floor(pooling, dtype):
    """Known values plus `floor` for each missing word, against the reference over every
    word; items with no missing word and items with no known value included."""
    rng = np.random.default_rng(3)
    lengths = np.array([3, 5, 1, 4, 2])
    owner = np.array([0, 0, 1, 2, 3, 3, 3, 3, 1])  # item 2 and 3 complete, item 4 unseen
    values = rng.uniform(-0.5, 0.9, len(owner)).astype(dtype)
    hits = np.bincount(owner, minlength=len(lengths))
    floor = -0.6
    expected = reference(
        [
            [(v, 1) for v in values[owner == item]] + [(floor, lengths[item] - hits[item])]
            for item in range(len(lengths))
        ],
        pooling,
    )
    got = pool_partial(values, owner, hits, lengths, floor, matching(pooling))
    assert got.dtype == dtype and got.shape == (5,)
    np.testing.assert_allclose(got, expected, **tolerance(dtype))


@pytest.mark.parametrize("pooling", POOLINGS)
def test_pool_with_floor_equals_pooling_the_filled_words(pooling):
    """Known word values plus `floor` for every other word, pooled directly."""
    rng = np.random.default_rng(3)
    matching = Matching(coding="hard", pooling=pooling, pooling_temperature=0.1)
    lengths = np.array([3, 5, 1, 4])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    hit_words = np.array([0, 2, 3, 7, 8, 10])  # flat word positions with a known value
    values = rng.uniform(0.2, 0.9, len(hit_words))
    owner = np.searchsorted(offsets, hit_words, side="right") - 1
    floor = 0.15
    filled = np.full(offsets[-1], floor)
    filled[hit_words] = values
    expected = pool_segments(filled, offsets, matching)
    hits = np.bincount(owner, minlength=len(lengths))
    got = pool_partial(values, owner, hits, lengths, floor, matching)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    # the (L, N) pooling agrees with the segment pooling for equal-length items
    table = rng.uniform(size=(4, 3))
    np.testing.assert_allclose(
        pool_dense(table, matching), pool_segments(table.T.ravel(), np.arange(0, 13, 4), matching)
    )


def test_lse_is_stable_far_beyond_the_range_of_exp():
    offsets = torch.tensor([0, 3, 5])
    values = torch.tensor([[900.0, 899.0, -900.0, 5.0, 4.0]], dtype=torch.float64)
    got = pool_segments(values, offsets, matching("lse"))
    expected = [900.0 / 0.1 + math.log1p(math.exp(-10.0)), 5.0 / 0.1 + math.log1p(math.exp(-10.0))]
    torch.testing.assert_close(got[0], torch.tensor(expected, dtype=torch.float64))


def plain_pooling(values: torch.Tensor, pooling: str) -> torch.Tensor:
    """One caption's values (L,) pooled with plain torch reductions (autograd's oracle)."""
    if pooling == "lse":
        return torch.logsumexp(values / TEMPERATURE, 0)
    return {"max": values.amax, "mean": values.mean, "sum": values.sum}[pooling](0)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_gradients_equal_those_of_plain_reductions(pooling):
    """Training backpropagates through the pooling: several captions (the scatter path)
    and one caption (the plain reduction) give the gradients of per-caption reductions."""
    rng = np.random.default_rng(5)
    values, offsets = ragged(rng, [3, 1, 4])
    table = torch.from_numpy(rng.uniform(-1, 1, (2, len(values))))
    table[0, 1] = table[0, 0]  # a tie for the max: the gradient is shared evenly
    tracked = table.clone().requires_grad_(True)
    weights = torch.arange(1.0, 7.0, dtype=torch.float64).view(2, 3)  # d loss / d score
    (
        pool_segments(tracked, torch.from_numpy(offsets), matching(pooling)) * weights
    ).sum().backward()
    oracle = table.clone().requires_grad_(True)
    pieces = [
        plain_pooling(oracle[row, a:b], pooling) * weights[row, c]
        for row in range(2)
        for c, (a, b) in enumerate(itertools.pairwise(offsets))
    ]
    torch.stack(pieces).sum().backward()
    torch.testing.assert_close(tracked.grad, oracle.grad)
    alone = table[:, :3].clone().requires_grad_(True)
    pool_segments(alone, offsets[:2], matching(pooling)).sum().backward()
    expected = table[:, :3].clone().requires_grad_(True)
    torch.stack([plain_pooling(expected[row], pooling) for row in range(2)]).sum().backward()
    torch.testing.assert_close(alone.grad, expected.grad)


def test_an_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="unknown pooling 'median'"):
        pool_dense(np.ones((2, 2)), Matching(pooling="median"))
