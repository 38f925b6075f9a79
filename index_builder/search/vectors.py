"""Vector-level search: approximate scores from cells (and residual codes where the
index has them), then exact CHAN scores.

Both directions work as late-interaction engines such as PLAID do. Every stored vector
belongs to a k-means cell; a query vector's similarity to a stored one is first taken
as its similarity to that vector's cell centroid. Pooled exactly like the model pools
(each query word keeps an image's best region; each caption word keeps the query
image's best region), this scores every item met in the probed cells in a few array
passes. The best of those are scored again over all their vectors (each its centroid,
plus its residual code in an index built with them: search/residuals.py), and only the
top C of that go on to the exact score from the stored vectors. Small galleries have no
cells and are scored exactly throughout. `exhaustive=True` scores every live item
exactly."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from index_builder.format.quant import stored_tensor
from index_builder.format.reader import GalleryIndex
from index_builder.search.lists import InvertedLists
from index_builder.search.residuals import ResidualCodes
from index_builder.search.results import Ranking, Timer
from model.pooling import pool_dense, pool_partial, pool_segments
from model.scoring import Matching, score_image_query, score_text_query

logger = logging.getLogger(__name__)

EXHAUSTIVE_CHUNK_IMAGES = 2048  # images dequantised and scored per step of an exact scan
CELL_SCAN_IMAGES = 8192  # images per block of the approximate cell scan
RERANK_CHUNK_IMAGES = 128  # images per exact step read from the memory map (4.7 MB int8)
RERANK_CHUNK_CAPTIONS = 256  # captions per exact step
# Stored vectors widened to float32 per product: 2 MB at d = 1024, a block that stays in
# cache, so the exact scorer reads each candidate once, as stored (int8: a quarter of the
# bytes), and its float32 copy never goes out to memory.
PRODUCT_BLOCK_VECTORS = 512
FILTER_EXACT_MAX = 4096  # a metadata filter keeping at most this many rows is scored exactly


@dataclass(frozen=True)
class SearchParams:
    """Shortlist knobs; the defaults are what the index's recall was measured with."""

    candidates: int = 600  # C: images reranked with the exact score (text -> image)
    caption_candidates: int = 500  # C for image -> caption
    probes: int = 32  # region cells probed per query word (text -> image)
    caption_probes: int = 256  # word cells probed per query image (image -> caption)
    refine: int = 4  # refine x C candidates get the approximate score of the second stage
    residuals: bool = True  # that score adds residual codes when the index has them


class VectorSearcher:
    """Searches one GalleryIndex with query vectors (see search/encoder.py for queries):
    rows and exact scores, no metadata. Thread-safe."""

    def __init__(
        self,
        index: GalleryIndex,
        params: SearchParams | None = None,
        previous: VectorSearcher | None = None,
    ) -> None:
        """previous: a searcher of the same index at an earlier generation; when this one
        only adds segments after its rows, over the same cells (`chan index add`), its
        inverted lists are extended with the new rows' postings instead of rebuilt."""
        self.index = index
        self.params = params or SearchParams()
        self.matching: Matching = index.matching
        use = self.params.residuals
        self.region_residuals = _residual_codes(index.region_residuals if use else None)
        self.word_residuals = _residual_codes(index.word_residuals if use else None)
        self.caption_lengths = np.diff(index.word_offsets)
        word_owner = np.repeat(np.arange(index.num_captions), self.caption_lengths)
        # per cell, the images with a region in it, and the caption of each word in it
        self.region_lists = _lists(index, "region", index.region_owner, True, previous)
        self.word_lists = _lists(index, "word", word_owner, False, previous)
        self._local = threading.local()  # per-thread scratch buffers of the exact scorer

    # ------------------------------------------------------------------ text -> images

    def images_for_words(
        self,
        words: torch.Tensor,
        k: int = 10,
        candidates: int | None = None,
        exhaustive: bool = False,
        allowed: np.ndarray | None = None,
    ) -> Ranking:
        """Query word vectors (L, d) -> the k best live images. allowed: rows a filter
        keeps (None = all)."""
        timer = Timer()
        live = self.index.live_images if allowed is None else _mask(allowed, self.index.num_images)
        live = live & self.index.live_images
        candidates = candidates or self.params.candidates
        small = allowed is not None and len(allowed) <= FILTER_EXACT_MAX
        if exhaustive or small or self.index.region_codes is None:
            rows = np.flatnonzero(live)
            return self._exact_images(words, rows, k, timer, exhaustive=True)
        with timer.step("shortlist_ms"):
            rows = np.sort(self._shortlist_images(words, live, candidates))  # sorted reads
        if len(rows) < min(k, int(live.sum())):  # tombstones or a filter emptied the list
            return self._exact_images(words, np.flatnonzero(live), k, timer, exhaustive=True)
        return self._exact_images(words, rows, k, timer, exhaustive=False)

    def _shortlist_images(self, words: torch.Tensor, live: np.ndarray, candidates: int):
        """Candidates from region cells, in two approximations of the model's score.
        1. Each query word probes its `probes` most similar cells; an image's value for
           the word is its best probed cell's centroid similarity (or, when none of its
           regions lies in a probed cell, the least probed one: an upper bound). Only
           images met in the probed lists are considered: work grows with the lists,
           not with the gallery.
        2. The `refine` x C best of those are scored over all their regions, each region
           standing for its cell centroid plus its residual code (or the bare centroid
           in an index without residual codes), and the C best go on to the exact score."""
        index, params = self.index, self.params
        cell_sims = words.numpy().astype(np.float32) @ index.region_centroids.T  # (L, cells)
        probes = min(params.probes, cell_sims.shape[1])
        probed = np.argpartition(-cell_sims, probes - 1, axis=1)[:, :probes]  # (L, P)
        probed_sims = np.take_along_axis(cell_sims, probed, axis=1)
        floor = probed_sims.min(axis=1)  # (L,)
        items, source = self.region_lists.gather(probed.ravel())
        if not live.all():
            keep = live[items]
            items, source = items[keep], source[keep]
        rows, local = _dense_ids(items, index.num_images)
        best = torch.from_numpy(np.repeat(floor[:, None], len(rows), axis=1))  # (L, n)
        flat = torch.from_numpy(source // probes * len(rows) + local)
        values = torch.from_numpy(probed_sims.ravel()[source])
        best.view(-1).scatter_reduce_(0, flat, values, "amax")
        approx = pool_dense(best.numpy(), self.matching)
        rows = rows[_top(approx, params.refine * candidates)]
        if not len(rows):
            return rows
        # 2. every region of the survivors: its centroid (+ residual), words x vectors
        positions, segment_starts = item_positions(index.region_starts, rows)
        by_cell = np.ascontiguousarray(cell_sims.T)  # (cells, L): one row read per vector
        sims = by_cell[index.region_codes[positions]]  # (vectors, L)
        if self.region_residuals is not None:
            sims += self.region_residuals.similarities(words.numpy(), positions)
        per_image = np.maximum.reduceat(sims, segment_starts, axis=0)  # (n, L)
        refined = pool_dense(per_image.T.astype(np.float64), self.matching)
        return rows[_top(refined, candidates)]

    def _exact_images(
        self, words: torch.Tensor, rows: np.ndarray, k: int, timer: Timer, exhaustive: bool
    ) -> Ranking:
        index, hard = self.index, self.matching.coding == "hard"
        if index.has_filled_cache:  # views of the RAM copy: big steps cost nothing
            step, buffer = EXHAUSTIVE_CHUNK_IMAGES, None
        elif hard:  # stored rows, widened block by block in one cached buffer
            step = RERANK_CHUNK_IMAGES
            buffer = self._buffer("product", (PRODUCT_BLOCK_VECTORS, index.dim))
        else:  # the general scorer takes float32 images
            step = RERANK_CHUNK_IMAGES
            buffer = self._buffer("images", (step, index.num_regions, index.dim))

        def score(chunk: np.ndarray) -> torch.Tensor:
            if buffer is not None and hard:
                codes, scales = index.stored_images(chunk)
                sims = stored_products(words, codes, scales, buffer)
                counts = torch.from_numpy(index.counts[chunk])
                return hard_text_scores(sims.view(len(words), *codes.shape[:2]), counts,
                                        self.matching)  # fmt: skip
            # padding holds a copy of each image's first region, so no lengths
            block = index.filled_images(chunk, buffer)
            return score_text_query(words, block, None, self.matching)

        return _rank_exactly(score, rows, step, k, timer, exhaustive)

    def _buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 scratch array of at least `shape`, one per thread and name."""
        buffers = self._local.__dict__.setdefault("buffers", {})
        held = buffers.get(name)
        if held is None or held.shape[0] < shape[0] or held.shape[1:] != shape[1:]:
            held = buffers[name] = np.empty(shape, np.float32)
        return held

    # ------------------------------------------------------------------ image -> captions

    def captions_for_regions(
        self,
        regions: torch.Tensor,
        k: int = 10,
        candidates: int | None = None,
        exhaustive: bool = False,
        allowed: np.ndarray | None = None,
    ) -> Ranking:
        """Query region vectors (n, d), valid ones only -> the k best live captions."""
        timer = Timer()
        live = self.index.live_captions
        if allowed is not None:
            live = live & _mask(allowed, self.index.num_captions)
        candidates = candidates or self.params.caption_candidates
        small = allowed is not None and len(allowed) <= FILTER_EXACT_MAX
        if exhaustive or small or self.index.word_codes is None:
            return self._exact_captions(regions, np.flatnonzero(live), k, timer, True)
        with timer.step("shortlist_ms"):
            rows = self._shortlist_captions(regions, live, candidates)
        if len(rows) < min(k, int(live.sum())):
            return self._exact_captions(regions, np.flatnonzero(live), k, timer, True)
        return self._exact_captions(regions, rows, k, timer, False)

    def _shortlist_captions(self, regions: torch.Tensor, live: np.ndarray, candidates: int):
        """The mirror of _shortlist_images: a word cell's value is its centroid's best
        similarity to any query region. 1. The `caption_probes` best cells are probed;
        a caption's words in them take their cell's value, its other words the least
        probed value (an upper bound), pooled as the model pools. 2. The `refine` x C
        best captions are scored with every word as its cell centroid plus its residual
        code against every query region (or its own cell's value in an index without
        residual codes), and the C best go on to the exact score."""
        index, params = self.index, self.params
        query = regions.numpy().astype(np.float32)
        cell_sims = query @ index.word_centroids.T  # (regions, cells)
        cell_best = cell_sims.max(axis=0)  # (cells,)
        probes = min(params.caption_probes, len(cell_best))
        probed = np.argpartition(-cell_best, probes - 1)[:probes]
        floor = float(cell_best[probed].min())
        items, source = self.word_lists.gather(probed)
        if not live.all():
            keep = live[items]
            items, source = items[keep], source[keep]
        rows, local = _dense_ids(items, index.num_captions)
        lengths = self.caption_lengths[rows]
        hits = np.bincount(local, minlength=len(rows))
        values = cell_best[probed][source]  # float32: one pass of float32 exp, not float64
        approx = pool_partial(values, local, hits, lengths, floor, self.matching)
        rows = rows[_top(approx, params.refine * candidates)]
        if not len(rows):
            return rows
        # 2. every word of the survivors: its best region, from centroid + residual
        positions, segment_starts = item_positions(index.word_offsets, rows)
        if self.word_residuals is None:
            per_word = cell_best[index.word_codes[positions]].astype(np.float64)
        else:
            by_cell = np.ascontiguousarray(cell_sims.T)  # (cells, regions)
            sims = by_cell[index.word_codes[positions]]  # (words, regions)
            sims += self.word_residuals.similarities(query, positions)
            per_word = sims.max(axis=1).astype(np.float64)
        offsets = np.append(segment_starts, len(positions))
        refined = pool_segments(per_word, offsets, self.matching)
        return rows[_top(refined, candidates)]

    def _exact_captions(
        self, regions: torch.Tensor, rows: np.ndarray, k: int, timer: Timer, exhaustive: bool
    ) -> Ranking:
        lengths = self.caption_lengths
        step = RERANK_CHUNK_CAPTIONS
        if self.matching.coding == "hard":
            buffer = self._buffer("product", (PRODUCT_BLOCK_VECTORS, self.index.dim))

            def score(chunk: np.ndarray) -> torch.Tensor:  # each word's best region, pooled
                positions, run_starts = item_positions(self.index.word_offsets, chunk)
                codes, scales = self.index.stored_words(positions)
                best = stored_products(regions, codes, scales, buffer).amax(dim=0)
                offsets = torch.from_numpy(np.append(run_starts, len(positions)))
                return pool_segments(best, offsets, self.matching)

            return _rank_exactly(score, rows, step, k, timer, exhaustive)

        def score(chunk: np.ndarray) -> torch.Tensor:
            words = int(lengths[chunk].sum())
            buffer = self._buffer("words", (max(words, step * 16), self.index.dim))
            return score_image_query(regions, self.index.captions(chunk, buffer), self.matching)

        return _rank_exactly(score, rows, step, k, timer, exhaustive)


def _lists(
    index: GalleryIndex,
    side: str,
    owners: np.ndarray,
    unique: bool,
    previous: VectorSearcher | None,
) -> InvertedLists | None:
    """One side's ("region" or "word") inverted lists: the previous searcher's, extended
    by the vectors after its own, when this index kept its cells and every earlier row
    as it was (an add), else built afresh."""
    codes, centroids = getattr(index, f"{side}_codes"), getattr(index, f"{side}_centroids")
    if codes is None:
        return None
    old = None if previous is None else getattr(previous, f"{side}_lists")
    if old is not None:
        before = previous.index
        # the rows' layout decides the owners: image region counts, caption offsets
        layout = "counts" if side == "region" else "word_offsets"
        old_codes, old_layout = getattr(before, f"{side}_codes"), getattr(before, layout)
        kept = (len(old_codes) <= len(codes)
                and np.array_equal(getattr(before, f"{side}_centroids"), centroids)
                and np.array_equal(old_layout, getattr(index, layout)[: len(old_layout)])
                and np.array_equal(old_codes, codes[: len(old_codes)]))  # fmt: skip
        if kept:
            start = len(old_codes)
            newer = InvertedLists.build(codes[start:], owners[start:], len(centroids), unique)
            return old.extended(newer)
    return InvertedLists.build(codes, owners, len(centroids), unique)


def _residual_codes(stored: tuple[np.ndarray, np.ndarray] | None) -> ResidualCodes | None:
    return None if stored is None else ResidualCodes(*stored)


def stored_products(
    query: torch.Tensor, codes: np.ndarray, scales: np.ndarray | None, buffer: np.ndarray
) -> torch.Tensor:
    """Similarities of query vectors (L, d) to stored vectors `codes` (..., d): (L, n),
    n the number of stored vectors, in their order. int8 and float16 codes are widened
    into `buffer` (float32, (B, d), one that stays in cache) B vectors at a time and
    multiplied there; int8 products are then scaled by `scales` (...,), L x n values
    instead of n x d. float32 codes (a RAM copy) are multiplied as they are."""
    dim = query.shape[1]
    flat = stored_tensor(codes).reshape(-1, dim)
    out = torch.empty(query.shape[0], flat.shape[0])
    if flat.dtype == torch.float32:
        torch.mm(query, flat.T, out=out)
    else:
        block = torch.from_numpy(buffer)
        for start in range(0, len(flat), len(block)):
            stop = min(start + len(block), len(flat))
            widened = block[: stop - start]
            widened.copy_(flat[start:stop])
            torch.mm(query, widened.T, out=out[:, start:stop])
    if scales is not None:
        out *= torch.from_numpy(np.asarray(scales, np.float32).reshape(1, -1))
    return out


def hard_text_scores(sims: torch.Tensor, counts: torch.Tensor, matching: Matching) -> torch.Tensor:
    """Exact hard-assignment scores of one query from its word-region similarities
    (L, n, K) to n images with `counts` valid regions: padded slots masked to -inf before
    each word's max, then the model's pooling. The rerank's inner loop: the general
    scorer's padding fill and chunk planning cost more than the product here."""
    padded = torch.arange(sims.shape[2])[None, :] >= counts[:, None]  # (n, K)
    per_word = sims.masked_fill_(padded[None], float("-inf")).amax(dim=2)  # (L, n)
    return pool_dense(per_word, matching)


def _rank_exactly(
    score: Callable[[np.ndarray], torch.Tensor],
    rows: np.ndarray,
    step: int,
    k: int,
    timer: Timer,
    exhaustive: bool,
) -> Ranking:
    """Exact scores of `rows`, step rows at a time, and the k best of them."""
    with timer.step("exact_ms" if exhaustive else "rerank_ms"):
        scores = np.empty(len(rows), np.float32)
        for start in range(0, len(rows), step):
            scores[start : start + step] = score(rows[start : start + step])
        best = _top(scores, k)
    return Ranking(rows[best], scores[best], timer.steps_ms, len(rows), exhaustive)


def _mask(rows: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros(size, bool)
    mask[rows] = True
    return mask


def _dense_ids(items: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ids among `items` (ascending) and each item's position among them, in
    O(len(items) + size) without sorting."""
    present = np.zeros(size, bool)
    present[items] = True
    position = np.cumsum(present) - 1  # of each present id among the distinct ones
    return np.flatnonzero(present), position[items]


def item_positions(starts: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vector positions of the given items (item r owns starts[r]:starts[r + 1]), item
    after item, and where each item's run begins in that list."""
    lo, sizes = starts[rows], starts[rows + 1] - starts[rows]
    run_starts = np.cumsum(sizes) - sizes
    positions = np.arange(int(sizes.sum())) - np.repeat(run_starts - lo, sizes)
    return positions, run_starts


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first (stable for ties)."""
    if len(scores) <= k:
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]
