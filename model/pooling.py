"""Word pooling: per-word values of a caption -> the caption's score (lse, mean, max, sum).

Every caller pools through the one switch, `_pool`, over a reducer that says which
entries form a segment (a caption):

    lse   log sum_j exp(v_j / t)   = logsumexp(v / t), t = pooling_temperature
    max   max_j v_j
    sum   sum_j v_j
    mean  sum / the caption's word count

Reducers: one segment along a dimension (plain reductions: the exact rerank's one-caption case),
or entries owned by segments (one scatter / index_add pass: thousands of captions of a
caption search, never a padded copy). Entry points:

    pool_segments(values (..., W), offsets (m + 1,))       -> (..., m)  the model's scorer
    pool_dense(values (L, N))                              -> (N,)      N items, L words each
    pool_partial(values (H,), owner, hits, lengths, floor) -> (n,)      known words + floor

Each takes torch tensors or numpy arrays (float32 or float64) and returns the same kind.
pool_partial, the search's approximate stage, is the one that does not go through
`_pool` (it is not differentiable, and one bincount pass per item is its whole cost):
each item's missing words count as that many entries of value `floor`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from model.config import POOLINGS

if TYPE_CHECKING:
    from model.scoring import Matching

logger = logging.getLogger(__name__)

Values = TypeVar("Values", torch.Tensor, np.ndarray)


@dataclass(frozen=True)
class _Along:
    """Every entry along `dim` belongs to one segment: plain reductions, kept dims."""

    dim: int

    def max(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(self.dim, keepdim=True)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(self.dim, keepdim=True)

    def spread(self, per_segment: torch.Tensor) -> torch.Tensor:
        return per_segment  # broadcasts over the kept dim

    def count(self, x: torch.Tensor) -> int:
        return x.shape[self.dim]


@dataclass(frozen=True)
class _Owned:
    """Entry j of the last dim belongs to segment owner[j] (of `counts.numel()`)."""

    owner: torch.Tensor  # (W,) int64
    counts: torch.Tensor  # (n,) entries per segment

    def _empty(self, x: torch.Tensor, fill: float) -> torch.Tensor:
        return x.new_full((*x.shape[:-1], self.counts.numel()), fill)

    def max(self, x: torch.Tensor) -> torch.Tensor:
        index = self.owner.expand_as(x)
        return self._empty(x, float("-inf")).scatter_reduce(-1, index, x, reduce="amax")

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return self._empty(x, 0.0).index_add(-1, self.owner, x)

    def spread(self, per_segment: torch.Tensor) -> torch.Tensor:
        return per_segment.index_select(-1, self.owner)

    def count(self, x: torch.Tensor) -> torch.Tensor:
        return self.counts.to(x.dtype)


def _pool(
    values: torch.Tensor,
    segments: _Along | _Owned,
    matching: Matching,
) -> torch.Tensor:
    """The one switch on `matching.pooling` (formulas: module docstring)."""
    pooling = matching.pooling
    if pooling == "max":
        return segments.max(values)
    if pooling == "lse":
        logits = values / matching.pooling_temperature
        # Shifting by each segment's max keeps exp finite; the result does not depend on
        # the shift, so it takes no gradient. A segment that is all -inf shifts by 0.
        shift = segments.max(logits.detach()).nan_to_num(0.0, posinf=0.0, neginf=0.0)
        return torch.log(segments.sum(torch.exp(logits - segments.spread(shift)))) + shift
    if pooling in ("sum", "mean"):
        total = segments.sum(values)
        if pooling == "sum":
            return total
        return total / segments.count(values)
    raise ValueError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")


def pool_segments(values: Values, offsets: torch.Tensor | np.ndarray, matching: Matching) -> Values:
    """Pool flat per-word values caption by caption.

    values: (..., W), one value per word of captions laid end to end; offsets: (m + 1,)
    ints, caption c owns entries offsets[c]:offsets[c+1] (entries past offsets[-1], such
    as alignment rows, belong to no caption). Returns (..., m). One caption is a plain
    reduction over the last dim; several are one scatter pass over the entries.
    """
    tensor = _as_tensor(values)
    offsets = torch.as_tensor(offsets, device=tensor.device)
    start, stop = int(offsets[0]), int(offsets[-1])
    tensor = tensor[..., start:stop]
    if offsets.numel() == 2:
        return _like(values, _pool(tensor, _Along(-1), matching))
    counts = offsets[1:] - offsets[:-1]
    segment = torch.arange(counts.numel(), device=tensor.device)
    owner = torch.repeat_interleave(segment, counts, output_size=stop - start)  # no 2nd sync
    return _like(values, _pool(tensor, _Owned(owner, counts), matching))


def pool_dense(values: Values, matching: Matching) -> Values:
    """values: (L, N), the L query words' values for each of N items -> (N,) pooled."""
    tensor = _as_tensor(values)
    return _like(values, _pool(tensor, _Along(0), matching).squeeze(0))


def pool_partial(
    values: Values,
    owner: torch.Tensor | np.ndarray,
    hits: torch.Tensor | np.ndarray,
    lengths: torch.Tensor | np.ndarray,
    floor: float,
    matching: Matching,
) -> Values:
    """Pooled score per item when only some word values are known.

    values: (H,) known values, owner: (H,) the item of each (in [0, n)), hits: (n,) known
    values per item, lengths: (n,) words per item; each item's lengths - hits other words
    are worth `floor`. Returns (n,). The same as pooling every word with the missing ones
    filled in, without building that array.

    The search's approximate stage pools hundreds of thousands of entries per query
    here, so this is the one pooling outside `_pool`: a weighted bincount per item (one
    pass, float64), and for lse one shift for all items, the largest value (the result
    does not depend on it; an item loses precision only if all its values lie more than
    about 700 temperatures below that, which similarities never do). Not differentiable.
    """
    as_tensor = isinstance(values, torch.Tensor)
    array = values.detach().cpu().numpy() if as_tensor else np.asarray(values)
    owner, hits, lengths = (np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a)
                            for a in (owner, hits, lengths))  # fmt: skip
    items = len(lengths)
    missing = (lengths - hits).astype(np.float64)
    pooling = matching.pooling
    if pooling == "max":
        best = torch.full((items,), float("-inf"), dtype=torch.float64)
        best.scatter_reduce_(0, torch.from_numpy(owner.astype(np.int64)),
                             torch.from_numpy(array.astype(np.float64)), "amax")  # fmt: skip
        result = np.where(missing > 0, np.maximum(best.numpy(), floor), best.numpy())
    elif pooling == "lse":
        t = matching.pooling_temperature
        shift = max(float(array.max()) if len(array) else floor, floor)
        # exp in the values' own precision (float32 takes the vectorised exp), sums in float64
        weights = np.exp((array - array.dtype.type(shift)) / array.dtype.type(t))
        total = np.bincount(owner, weights=weights, minlength=items)
        total += missing * np.exp((floor - shift) / t)
        result = np.log(total.astype(array.dtype)) + array.dtype.type(shift / t)
    elif pooling in ("sum", "mean"):
        result = np.bincount(owner, weights=array.astype(np.float64), minlength=items)
        result += missing * floor
        if pooling == "mean":
            result /= lengths
    else:
        raise ValueError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    result = result.astype(array.dtype)
    return torch.from_numpy(result).to(values.device) if as_tensor else result


def _as_tensor(values: torch.Tensor | np.ndarray) -> torch.Tensor:
    return values if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values))


def _like(values: Values, result: torch.Tensor) -> Values:
    """The result in the kind of array the caller passed."""
    return result if isinstance(values, torch.Tensor) else result.numpy()
