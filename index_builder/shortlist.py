"""Vector-level search: approximate scores from cells, then exact CHAN scores.

Both directions work as late-interaction engines such as PLAID do. Every stored vector
belongs to a k-means cell; a query vector's similarity to a stored one is first taken
as its similarity to that vector's cell centroid. Pooled exactly like the model pools
(each query word keeps an image's best region; each caption word keeps the query
image's best region), this scores every item in a few array passes. The top C are then
scored exactly from the stored vectors. Small galleries have no cells and are scored
exactly throughout. `exhaustive=True` scores every live item exactly."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from index_builder.reader import GalleryIndex
from model.checkpoint import LoadedCheckpoint
from model.scoring import Matching, score_image_query, score_text_query

logger = logging.getLogger(__name__)

EXHAUSTIVE_CHUNK_IMAGES = 2048  # images dequantised and scored per step of an exact scan
CELL_SCAN_IMAGES = 8192  # images per block of the approximate cell scan
EXHAUSTIVE_CHUNK_CAPTIONS = 16384
FILTER_EXACT_MAX = 4096  # a metadata filter keeping at most this many rows is scored exactly


@dataclass(frozen=True)
class SearchParams:
    """Shortlist knobs; the defaults are what the index's recall was measured with."""

    candidates: int = 300  # C: images reranked with the exact score (text -> image)
    caption_candidates: int = 2000  # C for image -> caption (captions are cheap to score)


@dataclass
class Ranking:
    """Rows and exact scores, best first, plus where the time went."""

    rows: np.ndarray  # (k,) int64
    scores: np.ndarray  # (k,) float32
    timings_ms: dict[str, float] = field(default_factory=dict)
    candidates: int = 0  # items scored exactly
    exhaustive: bool = False


class VectorSearcher:
    """Searches one GalleryIndex with query vectors; encodes queries when it has the
    checkpoint that built the index."""

    def __init__(
        self,
        index: GalleryIndex,
        checkpoint: LoadedCheckpoint | None = None,
        params: SearchParams | None = None,
    ) -> None:
        self.index, self.checkpoint = index, checkpoint
        self.params = params or SearchParams()
        self.matching: Matching = index.matching
        self._extractor = None
        self._extractor_lock = threading.Lock()

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
        timings: dict[str, float] = {}
        live = self.index.live_images if allowed is None else _mask(allowed, self.index.num_images)
        live = live & self.index.live_images
        candidates = candidates or self.params.candidates
        small = allowed is not None and len(allowed) <= FILTER_EXACT_MAX
        if exhaustive or small or self.index.region_codes is None:
            rows = np.flatnonzero(live)
            return self._exact_images(words, rows, k, timings, exhaustive=True)
        started = time.perf_counter()
        rows = np.sort(self._shortlist_images(words, live, candidates))  # sorted reads
        timings["shortlist_ms"] = _ms(started)
        if len(rows) < min(k, int(live.sum())):  # tombstones or a filter emptied the list
            return self._exact_images(words, np.flatnonzero(live), k, timings, exhaustive=True)
        return self._exact_images(words, rows, k, timings, exhaustive=False)

    def _shortlist_images(self, words: torch.Tensor, live: np.ndarray, candidates: int):
        """Approximate every image from region cells: a region's similarity to a query
        word is its cell centroid's; each word keeps its image's best region, and the
        words pool as the model pools. Image blocks bound the (L, vectors) temporary."""
        cell_sims = words.numpy().astype(np.float32) @ self.index.region_centroids.T  # (L, C)
        starts = self.index.region_starts
        approx = np.empty(self.index.num_images, np.float64)
        for a in range(0, self.index.num_images, CELL_SCAN_IMAGES):
            b = min(self.index.num_images, a + CELL_SCAN_IMAGES)
            codes = self.index.region_codes[starts[a] : starts[b]]
            per_image = np.maximum.reduceat(cell_sims[:, codes], starts[a:b] - starts[a], axis=1)
            approx[a:b] = _pool_rows(per_image.astype(np.float64), self.matching)
        approx[~live] = -np.inf
        return _top(approx, candidates)

    def _exact_images(
        self, words: torch.Tensor, rows: np.ndarray, k: int, timings: dict, exhaustive: bool
    ) -> Ranking:
        def score(chunk: np.ndarray) -> torch.Tensor:
            # padding already holds a copy of each image's first region, so no lengths
            return score_text_query(words, self.index.filled_images(chunk), None, self.matching)

        return _rank_exactly(score, rows, EXHAUSTIVE_CHUNK_IMAGES, k, timings, exhaustive)

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
        timings: dict[str, float] = {}
        live = self.index.live_captions
        if allowed is not None:
            live = live & _mask(allowed, self.index.num_captions)
        candidates = candidates or self.params.caption_candidates
        small = allowed is not None and len(allowed) <= FILTER_EXACT_MAX
        if exhaustive or small or self.index.word_codes is None:
            return self._exact_captions(regions, np.flatnonzero(live), k, timings, True)
        started = time.perf_counter()
        rows = self._shortlist_captions(regions, live, candidates)
        timings["shortlist_ms"] = _ms(started)
        if len(rows) < min(k, int(live.sum())):
            return self._exact_captions(regions, np.flatnonzero(live), k, timings, True)
        return self._exact_captions(regions, rows, k, timings, False)

    def _shortlist_captions(self, regions: torch.Tensor, live: np.ndarray, candidates: int):
        """Approximate every caption from cell centroids, as late-interaction engines do:
        a word's similarity is taken as its IVF cell centroid's best similarity to a
        query region; pooled per caption, these rank all captions in a few array passes."""
        query = regions.numpy().astype(np.float32)
        cell_best = (query @ self.index.word_centroids.T).max(axis=0)  # (n_cells,)
        per_word = cell_best[self.index.word_codes].astype(np.float64)  # (W,)
        approx = _pool_segments(per_word, self.index.word_offsets, self.matching)
        approx[~live] = -np.inf
        return _top(approx, candidates)

    def _exact_captions(
        self, regions: torch.Tensor, rows: np.ndarray, k: int, timings: dict, exhaustive: bool
    ) -> Ranking:
        def score(chunk: np.ndarray) -> torch.Tensor:
            return score_image_query(regions, self.index.captions(chunk), self.matching)

        return _rank_exactly(score, rows, EXHAUSTIVE_CHUNK_CAPTIONS, k, timings, exhaustive)

    # ------------------------------------------------------------------ model side

    def require_checkpoint(self) -> LoadedCheckpoint:
        if self.checkpoint is None:
            raise ValueError("this searcher has no checkpoint: it can only take query vectors")
        return self.checkpoint

    @torch.inference_mode()
    def encode_text(self, text: str) -> tuple[torch.Tensor, list[str]]:
        """A query text -> its valid word vectors (L, d) and the token of each."""
        if not text or not text.strip():
            raise ValueError("the query text is empty")
        checkpoint = self.require_checkpoint()
        words, lens = checkpoint.encode_captions([text])
        return words[0, : int(lens[0])].float(), checkpoint.tokenizer.tokens(text)

    @torch.inference_mode()
    def encode_image(self, image) -> tuple[torch.Tensor, np.ndarray]:
        """An RGB PIL image -> valid region vectors (n, d) and their boxes (n, 4), through
        the extractor the gallery was built with."""
        extractor = self._get_extractor()
        with self._extractor_lock:
            batch = extractor.extract([image])
        return self.encode_regions(batch.features[0], int(batch.counts[0])), batch.boxes[0]

    @torch.inference_mode()
    def encode_regions(self, features: np.ndarray, count: int) -> torch.Tensor:
        """Raw (K, D) region features + valid count -> (count, d) region vectors."""
        checkpoint = self.require_checkpoint()
        feats = torch.as_tensor(np.asarray(features, np.float32))[None]
        if not 1 <= count <= feats.shape[1]:
            raise ValueError(f"region count {count} outside [1, {feats.shape[1]}]")
        emb = checkpoint.model.encode_images(feats, torch.tensor([count]))
        return emb[0, :count].float()

    def _get_extractor(self):
        if self._extractor is None:
            spec = self.index.manifest.get("extractor")
            if not spec:
                raise ValueError(
                    "this index records no extractor, so raw images cannot be encoded; "
                    "query with a gallery image_id or region features"
                )
            from model.extractors.base import load_extractor

            self._extractor = load_extractor(spec)
        return self._extractor


def _rank_exactly(
    score: Callable[[np.ndarray], torch.Tensor],
    rows: np.ndarray,
    step: int,
    k: int,
    timings: dict,
    exhaustive: bool,
) -> Ranking:
    """Exact scores of `rows`, step rows at a time, and the k best of them."""
    started = time.perf_counter()
    scores = np.empty(len(rows), np.float32)
    for start in range(0, len(rows), step):
        scores[start : start + step] = score(rows[start : start + step])
    best = _top(scores, k)
    timings["exact_ms" if exhaustive else "rerank_ms"] = _ms(started)
    return Ranking(rows[best], scores[best], timings, len(rows), exhaustive)


def _mask(rows: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros(size, bool)
    mask[rows] = True
    return mask


def _pool_rows(values: np.ndarray, matching: Matching) -> np.ndarray:
    """(L, N) per-word values of N items -> (N,) pooled over the L query words."""
    if matching.pooling == "lse":
        t = matching.pooling_temperature
        top = values.max(axis=0)
        return np.log(np.exp((values - top) / t).sum(axis=0)) + top / t
    if matching.pooling == "max":
        return values.max(axis=0)
    return values.mean(axis=0) if matching.pooling == "mean" else values.sum(axis=0)


def _pool_segments(values: np.ndarray, offsets: np.ndarray, matching: Matching) -> np.ndarray:
    """Per caption (offsets bound its words) the model's pooling of per-word values."""
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    if matching.pooling == "lse":
        return np.log(np.add.reduceat(np.exp(values / matching.pooling_temperature), starts))
    if matching.pooling == "max":
        return np.maximum.reduceat(values, starts)
    total = np.add.reduceat(values, starts)
    return total / lengths if matching.pooling == "mean" else total


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first (stable for ties)."""
    if len(scores) <= k:
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
