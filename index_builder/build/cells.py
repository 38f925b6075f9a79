"""Cells: spherical k-means over one side's stored vectors, and how many cells a side gets.

Every stored vector (an image region, a caption word) belongs to the cell of its nearest
centroid. The searcher uses cells twice (see search/vectors.py): inverted lists
(search/lists.py) give the items that have a vector in the cells nearest a query vector
(candidate generation, sublinear in the gallery), and centroid similarities (plus the
vectors' residual codes in an index built with them, residuals.py) approximate every
vector of a candidate before the exact rerank.

Training and assignment are matrix products in torch, in bf16 where the CPU multiplies
bf16 natively (AVX512-BF16 or AMX: about 270 GFLOP/s against 160 for fp32 on a Zen 4
EPYC) and in fp32 elsewhere: without those instructions torch emulates bf16 products at
a tenth of fp32's speed or less (11 against 100 GFLOP/s measured on an AVX2-only EPYC).
A cell only needs to be roughly right: the rerank is exact. Assigning 3.6M vectors of
d=1024 to 4,096 cells is about 30 TFLOP exactly; from TWO_LEVEL_MIN_CELLS cells on the
Assigner searches centroid groups first, which `chan bench cells` measured at 6.3x
faster assignment and 3.7x faster training on 2 AVX2 cores, with 99.991% of vectors in
the exact product's cell and the same held-out quantisation quality."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from index_builder.build.residuals import encode_residuals
from index_builder.format.manifest import code_bytes
from model.io import RowWriter, preallocate_npy

logger = logging.getLogger(__name__)

ASSIGN_BATCH = 8192  # vectors per assignment product (batch x cells bf16 temporary)
SEED_ROUNDS = 16  # k-means++ seeding draws cells / SEED_ROUNDS seeds per round
SEED_TRIALS = 3  # candidates per seed in greedy k-means++
SEED_POINTS_PER_CELL = 4  # k-means++ seeds from a sample of this many points per cell
FETCH_BATCH = 65_536  # vectors read from the segment per step when writing codes
CELL_ITERATIONS = 10  # k-means passes; cells only need to be roughly right
# A side with at most this many vectors is scanned exactly (it costs a few ms): no cells.
EXACT_MAX_VECTORS = 50_000
# About 4 sqrt(n) cells, a power of two: the low end of FAISS's 4-16 sqrt(n) guideline for
# inverted lists keeps the lists long (cheap probes, fewer centroids to train on 2 cores).
CELLS_PER_SQRT_N = 4
MIN_CELLS = 64  # fewer cells than this prune too little to beat an exact scan
# More cells sharpen approximate scores but cost assignment time (vectors x cells x d):
# 4,096 cells keep 100,000 images x 36 regions x d=1024 at about two minutes.
MAX_CELLS = 4096
MIN_POINTS_PER_CELL = 39  # fewer training points per centroid make unreliable centroids
TWO_LEVEL_MIN_CELLS = 2048  # from this many cells on, vectors are assigned in two levels
GROUP_PROBES = 4  # centroid groups searched per vector in the two-level assignment
RECHECK_SHARE = 0.02  # the least similar share of each block is assigned exactly again

Fetch = Callable[[np.ndarray], np.ndarray]  # positions -> (n, d) float32 vectors


def product_dtype() -> torch.dtype:
    """The dtype of the k-means products on this CPU (see the module docstring)."""
    native = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    return torch.bfloat16 if native else torch.float32


def cell_count(n_vectors: int) -> int:
    """Cells for a side of n_vectors: 0 (exact scan) up to EXACT_MAX_VECTORS, else about
    CELLS_PER_SQRT_N * sqrt(n) rounded to a power of two in [MIN_CELLS, MAX_CELLS], and
    never more than MIN_POINTS_PER_CELL training points per cell allow."""
    if n_vectors <= EXACT_MAX_VECTORS:
        return 0
    target = CELLS_PER_SQRT_N * math.sqrt(n_vectors)
    cells = min(max(2 ** round(math.log2(target)), MIN_CELLS), MAX_CELLS)
    trainable = n_vectors // MIN_POINTS_PER_CELL
    return min(cells, 2 ** int(math.log2(trainable)))


def train_centroids(
    vectors: np.ndarray,
    cells: int,
    iterations: int,
    seed: int = 0,
    progress: bool | None = None,
    two_level: bool | None = None,
) -> np.ndarray:
    """Spherical k-means: (n, d) unit vectors -> (cells, d) unit float32 centroids.
    Seeded by k-means++ over a random SEED_POINTS_PER_CELL points per cell: seeding from
    every training point cost 55 s of 80 at 4,096 cells on 131,072 points of d=1024 (2
    AVX2 cores), from 4 per cell 7.7 s, with the same held-out similarity to the cell
    after the 10 passes (0.8540 against 0.8541; seeding at random, as FAISS does, also
    0.8541 there, but it leaves a cluster without a cell when the cells are as few as
    the clusters). An emptied cell restarts at a random point. Each pass
    assigns through an Assigner (two levels from TWO_LEVEL_MIN_CELLS cells, or as
    `two_level` says)."""
    if cells > len(vectors):
        raise ValueError(f"{cells} cells need at least as many vectors ({len(vectors)})")
    rng = np.random.default_rng(seed)
    points = torch.from_numpy(np.ascontiguousarray(vectors, np.float32))
    low = points.to(product_dtype())
    pool = torch.from_numpy(
        np.sort(
            rng.choice(len(points), min(len(points), SEED_POINTS_PER_CELL * cells), replace=False)
        )
    )
    centroids = points[pool[torch.from_numpy(seed_centroids(low[pool], cells, rng))]].clone()
    for _ in tqdm(range(iterations), desc=f"k-means ({cells} cells)", disable=_quiet(progress)):
        assign, _ = Assigner(centroids.numpy(), two_level)(low)  # regrouped every pass
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        sizes = torch.bincount(assign, minlength=cells)
        empty = torch.nonzero(sizes == 0).flatten()
        if len(empty):
            restart = rng.choice(len(points), len(empty), replace=False)
            sums[empty] = points[torch.from_numpy(restart)]
        centroids = torch.nn.functional.normalize(sums, dim=1)
    return centroids.numpy()


def seed_centroids(points: torch.Tensor, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding: candidates drawn with probability ~ squared distance to
    the nearest seed so far, and of every SEED_TRIALS candidates the one that lowers
    the total squared distance most is kept. Seeds come in SEED_ROUNDS rounds of
    cells / SEED_ROUNDS, so the cost is a few (n x cells x d) products rather than
    `cells` sequential passes over the points."""
    n = len(points)
    chosen = [int(rng.integers(n))]
    nearest = (points @ points[chosen].T).float().amax(dim=1)  # best similarity to a seed
    per_round = max(1, -(-cells // SEED_ROUNDS))
    while len(chosen) < cells:
        draws = min(per_round, cells - len(chosen))
        weights = (2 - 2 * nearest).clamp_(min=0).double().numpy()  # squared distances
        weights[chosen] = 0
        if np.count_nonzero(weights) < draws * SEED_TRIALS:  # duplicates left: any point
            free = np.setdiff1d(np.arange(n), chosen)
            chosen += rng.choice(free, cells - len(chosen), replace=False).tolist()
            break
        trials = rng.choice(n, draws * SEED_TRIALS, replace=False, p=weights / weights.sum())
        sims = (points @ points[torch.from_numpy(trials)].T).float()  # (n, draws x trials)
        gain = (torch.clamp(sims - nearest[:, None], min=0)).sum(dim=0).view(draws, -1)
        best = trials.reshape(draws, -1)[np.arange(draws), gain.argmax(dim=1).numpy()]
        chosen += best.tolist()
        nearest = torch.maximum(
            nearest, (points @ points[torch.from_numpy(best)].T).float().amax(1)
        )
    return np.array(chosen[:cells])


def nearest_cells(
    vectors: torch.Tensor, centroids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the most similar centroid (inner product) of every vector, and that
    similarity; the products in product_dtype()."""
    dtype = product_dtype()
    cents = centroids.to(dtype)
    cells = torch.empty(len(vectors), dtype=torch.int64)
    sims = torch.empty(len(vectors), dtype=torch.float32)
    for start in range(0, len(vectors), ASSIGN_BATCH):
        block = vectors[start : start + ASSIGN_BATCH].to(dtype)
        best = (block @ cents.T).float().max(dim=1)
        cells[start : start + len(block)] = best.indices
        sims[start : start + len(block)] = best.values
    return cells, sims


class Assigner:
    """Nearest-centroid assignment in two levels, for many cells: the centroids are
    grouped by a small k-means over the centroids themselves; a vector is compared with
    every group's centre, then only with the centroids of its GROUP_PROBES best groups.
    With 4,096 cells in 64 groups that is 64 + 4 x 64 products per vector instead of
    4,096 (about 12x fewer); `chan bench cells` measures the time and how often the
    cell found is the exact nearest one. A vector whose nearest centroid lies in a group
    it did not search ends far from home, so the RECHECK_SHARE least similar vectors of
    each block are assigned exactly again. Below TWO_LEVEL_MIN_CELLS cells the exact
    product (nearest_cells) is used."""

    def __init__(self, centroids: np.ndarray, two_level: bool | None = None) -> None:
        self.centroids = torch.from_numpy(np.ascontiguousarray(centroids, np.float32))
        cells = len(self.centroids)
        self.two_level = cells >= TWO_LEVEL_MIN_CELLS if two_level is None else two_level
        if not self.two_level:
            return
        groups = max(2, 2 ** round(math.log2(math.sqrt(cells))))
        centres = train_centroids(centroids, groups, CELL_ITERATIONS, seed=2, progress=False)
        dtype = product_dtype()
        self.centres = torch.from_numpy(centres).to(dtype)
        member, _ = nearest_cells(self.centroids, self.centres)
        self.members = [torch.nonzero(member == g).flatten() for g in range(groups)]
        # each group's centroids gathered once, not once per block
        self.member_centroids = [self.centroids[m].to(dtype).contiguous() for m in self.members]
        self.probes = min(GROUP_PROBES, groups)

    def __call__(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, d) vectors -> each vector's cell (n,) int64 and its similarity (n,)."""
        if not self.two_level:
            return nearest_cells(vectors, self.centroids)
        dtype = product_dtype()
        cells = torch.empty(len(vectors), dtype=torch.int64)
        sims = torch.empty(len(vectors), dtype=torch.float32)

        def assign(start: int) -> None:
            block = vectors[start : start + ASSIGN_BATCH]
            stop = start + len(block)
            cells[start:stop], sims[start:stop] = self._two(block, dtype)

        starts = range(0, len(vectors), ASSIGN_BATCH)
        threads = torch.get_num_threads()
        if threads == 1 or len(starts) == 1:
            for start in starts:
                assign(start)
            return cells, sims
        # Blocks side by side, each on one torch thread: the small products of a block
        # spend much of a 2-thread op synchronising (x1.15-1.3 on 2 cores). The thread
        # count is process-wide, so searches running meanwhile also get one thread.
        with torch_threads(1), ThreadPoolExecutor(min(threads, len(starts))) as pool:
            list(pool.map(assign, starts))
        return cells, sims

    def _two(self, block: torch.Tensor, dtype: torch.dtype):
        low = block.to(dtype)
        near = (low @ self.centres.T).topk(self.probes, dim=1).indices.flatten()  # (B x g,)
        # the block's rows grouped by probed group in one sort, not one scan per group
        by_group = torch.argsort(near, stable=True) // self.probes
        ends = torch.bincount(near, minlength=len(self.members)).cumsum(0).tolist()
        best_sim = torch.full((len(block),), -torch.inf)
        best_cell = torch.zeros(len(block), dtype=torch.int64)
        for group, (begin, end) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
            members = self.members[group]
            if begin == end or not len(members):
                continue
            rows = by_group[begin:end]
            # index_select: 6-8x faster than low[rows], which was a quarter of the time
            picked = torch.index_select(low, 0, rows)
            sims = (picked @ self.member_centroids[group].T).float().max(dim=1)
            better = sims.values > best_sim[rows]
            rows = rows[better]
            best_sim[rows] = sims.values[better]
            best_cell[rows] = members[sims.indices[better]]
        # a vector whose nearest centroid lies in a group it did not search comes out
        # with a far cell, among the least similar of the block: those are redone exactly
        doubt = torch.nonzero(best_sim <= torch.quantile(best_sim, RECHECK_SHARE)).flatten()
        if len(doubt):
            redo = torch.index_select(block, 0, doubt)
            best_cell[doubt], best_sim[doubt] = nearest_cells(redo, self.centroids)
        return best_cell, best_sim


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's (process-wide) thread count set to `count` for the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_codes(
    centroids: np.ndarray,
    count: int,
    fetch: Fetch,
    path: Path,
    progress: bool | None = None,
    residuals: tuple[np.ndarray, Path] | None = None,
) -> float:
    """The cell of every one of `count` vectors (see Assigner), streamed into an int32
    .npy, and with `residuals` (a PQ codebook and a path) the uint8 codes of
    each vector's residual from its cell (build/residuals.py); returns the vectors' mean
    similarity to their cell (0 for no vectors)."""
    assign = Assigner(centroids)
    preallocate_npy(path, (count,), np.int32)
    codebook = residual_writer = None
    if residuals is not None:
        codebook = torch.from_numpy(np.ascontiguousarray(residuals[0], np.float32))
        preallocate_npy(residuals[1], (count, code_bytes(len(codebook))), np.uint8)
        residual_writer = RowWriter(residuals[1])
    total = 0.0
    try:
        with RowWriter(path) as writer:
            steps = range(0, count, FETCH_BATCH)
            for start in tqdm(steps, desc=f"assign {path.stem}", disable=_quiet(progress)):
                stop = min(count, start + FETCH_BATCH)
                vectors = torch.from_numpy(np.ascontiguousarray(fetch(np.arange(start, stop))))
                cells, sims = assign(vectors)
                total += float(sims.sum())
                writer.write(start, cells.numpy().astype(np.int32))
                if residual_writer is not None:
                    codes = encode_residuals(vectors, assign.centroids, cells, codebook)
                    residual_writer.write(start, codes)
    finally:
        if residual_writer is not None:
            residual_writer.close()
    return total / count if count else 0.0


def _quiet(progress: bool | None) -> bool | None:
    """tqdm's disable flag: None lets tqdm decide (bars on a terminal only)."""
    return None if progress is None else not progress
