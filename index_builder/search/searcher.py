"""The searcher: text -> images and image -> captions over one index directory or several
shards built by one checkpoint (`chan index build --shard I/N`), with the metadata of every
hit and, on request, the alignment behind each score. No web framework here; the service
translates results and errors (QueryError: bad request, UnknownIdError: not found).

A query is encoded once. Every shard returns its exact top k: CHAN scores are exact and
comparable across shards (same model, same pooling), so the merged top k is the top k of
the whole gallery; records and explanations are built for those k hits only."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index_builder.errors import QueryError, UnknownIdError
from index_builder.format import layout as fmt
from index_builder.format.metadata import ImageRecord
from index_builder.format.reader import GalleryIndex
from index_builder.search.encoder import QueryEncoder
from index_builder.search.results import (
    CaptionHit,
    CaptionResults,
    ImageHit,
    ImageResults,
    Ranking,
    ScoreResult,
    Timer,
    WordMatch,
    alignment,
    boxes_list,
)
from index_builder.search.vectors import SearchParams, VectorSearcher
from model.checkpoint import LoadedCheckpoint, checkpoint_hash, load_checkpoint
from model.scoring import FlatWords, best_regions, score_matrix

logger = logging.getLogger(__name__)

MAX_K = 1000  # results per query; a client wanting more should page through filters


@dataclass
class Shard:
    """One index directory of the gallery and its vector searcher."""

    index: GalleryIndex
    vectors: VectorSearcher


class Searcher:
    """Open with `Searcher.open(index_dir_or_shards, checkpoint_dir)`; thread-safe."""

    def __init__(
        self,
        indexes: list[GalleryIndex],
        checkpoint: LoadedCheckpoint | None,
        params: SearchParams | None = None,
        root: Path | None = None,
        previous: dict[Path, VectorSearcher] | None = None,
    ) -> None:
        """previous: vector searchers of these directories at an earlier generation, whose
        inverted lists an added segment extends (VectorSearcher)."""
        if len({index.checkpoint_sha256 for index in indexes}) != 1:
            raise fmt.IndexFormatError("the shards were built by different checkpoints")
        self.params = params or SearchParams()
        earlier = previous or {}
        self.shards = [Shard(index, VectorSearcher(index, self.params, earlier.get(index.path)))
                       for index in indexes]  # fmt: skip
        self.checkpoint = checkpoint
        # every shard records the same model, so the same extractor
        self.encoder = QueryEncoder(checkpoint, indexes[0].manifest.get("extractor"))
        self.matching = indexes[0].matching
        self.root = root  # the directory opened: one index or a folder of shards

    @classmethod
    def open(
        cls,
        path: Path | str,
        checkpoint_path: Path | str,
        checksums: bool = True,
        params: SearchParams | None = None,
    ) -> Searcher:
        """Load the checkpoint once, open the index (or every shard under `path`) and
        refuse one the checkpoint did not build."""
        loaded = load_checkpoint(checkpoint_path)
        digest = checkpoint_hash(checkpoint_path)
        indexes = [GalleryIndex(d, digest, checksums) for d in fmt.shard_dirs(Path(path))]
        return cls(indexes, loaded, params, Path(path))

    @property
    def generations(self) -> dict[Path, int]:
        """The manifest generation of every open index directory."""
        return {shard.index.path: shard.index.generation for shard in self.shards}

    def generations_on_disk(self) -> dict[Path, int] | None:
        """The generations the opened directory holds now; they differ from
        `generations` once an add, delete, compact or rebuild has committed (or shards
        came or went). None when it cannot be read just now."""
        if self.root is None:
            return None
        try:
            return {d: fmt.read_generation(d) for d in fmt.shard_dirs(self.root)}
        except (OSError, ValueError):
            return None

    def refreshed(self, checksums: bool = True) -> Searcher:
        """A new Searcher over the same directory at its current generation, with the
        loaded model and the verification of every unchanged file carried over (a
        segment that an add hard-linked over is not checksummed again), and after an add
        the inverted lists extended by the new rows, not rebuilt. This searcher
        keeps serving what it holds; requests in flight finish on it."""
        if self.root is None:
            raise ValueError("this searcher was not opened from a directory")
        previous = {shard.index.path: shard.index for shard in self.shards}
        digest = self.checkpoint_sha256
        indexes = [GalleryIndex(d, digest, checksums, previous=previous.get(d))
                   for d in fmt.shard_dirs(self.root)]  # fmt: skip
        searchers = {shard.index.path: shard.vectors for shard in self.shards}
        return Searcher(indexes, self.checkpoint, self.params, self.root, searchers)

    @property
    def index(self) -> GalleryIndex:
        """The index of a one-directory gallery."""
        if len(self.shards) != 1:
            raise ValueError("a sharded gallery has one index per shard: use .shards")
        return self.shards[0].index

    # ------------------------------------------------------------------ text -> images

    def search_images(
        self,
        text: str,
        k: int = 10,
        candidates: int | None = None,
        explain: bool = False,
        exhaustive: bool = False,
        filter: dict[str, Any] | None = None,
    ) -> ImageResults:
        """The k best images for `text`: hits with id, score, URI, metadata; with explain,
        per query word the region that won its max (index, box, similarity)."""
        k, candidates = _check_k(k, candidates)
        timer = Timer()
        with timer.step("encode_ms"):
            words, tokens = self.encoder.text(text)
        rankings = [
            shard.vectors.images_for_words(words, k, candidates, exhaustive, allowed)
            for shard, allowed in self._filtered("images", filter)
        ]
        hits = []
        for rank, (shard_no, row, score) in enumerate(self._merge(rankings, k, timer), 1):
            index = self.shards[shard_no].index
            record = index.metadata.images([row])[0]
            hit = ImageHit(rank, score, record.image_id, record.uri, record.metadata or {},
                           shard=self._shard_tag(shard_no))  # fmt: skip
            if explain:
                hit.explain = self._explain_text(index, words, tokens, row)
            hits.append(hit)
        return ImageResults(hits, tokens, timer.timings_ms(), *_scored(rankings))

    def _explain_text(
        self, index: GalleryIndex, words: torch.Tensor, tokens: list[str], row: int
    ) -> list[WordMatch]:
        regions, counts = index.images(np.array([row]))
        best, sims = best_regions(regions[0], int(counts[0]), words)
        return alignment(tokens, best, sims, index.boxes(row))

    # ------------------------------------------------------------------ image -> captions

    def search_captions(
        self,
        image=None,
        image_id: str | None = None,
        features: np.ndarray | None = None,
        count: int | None = None,
        k: int = 10,
        candidates: int | None = None,
        explain: bool = False,
        exhaustive: bool = False,
        filter: dict[str, Any] | None = None,
    ) -> CaptionResults:
        """The k best captions for one image given as a PIL image, a gallery image_id, or
        raw region features (K, D) with their valid count."""
        k, candidates = _check_k(k, candidates)
        timer = Timer()
        with timer.step("encode_ms"):
            regions, boxes = self.query_regions(image, image_id, features, count)
        rankings = [
            shard.vectors.captions_for_regions(regions, k, candidates, exhaustive, allowed)
            for shard, allowed in self._filtered("captions", filter)
        ]
        hits = []
        for rank, (shard_no, row, score) in enumerate(self._merge(rankings, k, timer), 1):
            index = self.shards[shard_no].index
            record = index.metadata.captions([row])[0]
            hit = CaptionHit(rank, score, record.caption_id, record.text, record.image_id,
                             record.metadata or {}, shard=self._shard_tag(shard_no))  # fmt: skip
            if explain:
                words = index.captions(np.array([row])).vectors
                best, sims = best_regions(regions, len(regions), words)
                hit.explain = alignment(self.encoder.tokens(record.text), best, sims, boxes)
            hits.append(hit)
        return CaptionResults(hits, boxes_list(boxes), timer.timings_ms(), *_scored(rankings))

    def query_regions(
        self, image=None, image_id: str | None = None, features=None, count: int | None = None
    ) -> tuple[torch.Tensor, np.ndarray | None]:
        """Exactly one of the three query forms -> (n, d) region vectors and (n, 4) boxes."""
        given = sum(x is not None for x in (image, image_id, features))
        if given != 1:
            raise QueryError("give exactly one of: an image, an image_id, or region features")
        if image_id is not None:
            index, row = self._locate(image_id)
            regions, counts = index.images(np.array([row]))
            n = int(counts[0])
            return regions[0, :n], index.boxes(row)[:n]
        if image is not None:
            return self.encoder.image(image)
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2:
            raise QueryError(f"region features must be (K, D), got shape {features.shape}")
        return self.encoder.regions(features, count or features.shape[0]), None

    # ------------------------------------------------------------------ one pair

    def score(
        self, text: str, image=None, image_id: str | None = None, features=None, count=None
    ) -> ScoreResult:
        """The exact CHAN score of one text and one image, with the word -> region
        alignment (for debugging and for users' own rerankers)."""
        words, tokens = self.encoder.text(text)
        regions, boxes = self.query_regions(image, image_id, features, count)
        flat = FlatWords(words, torch.tensor([0, len(words)]))
        value = score_matrix(regions[None], None, flat, None, self.matching)[0, 0]
        best, sims = best_regions(regions, len(regions), words)
        return ScoreResult(float(value), alignment(tokens, best, sims, boxes), boxes_list(boxes))

    # ------------------------------------------------------------------ gallery facts

    def image_record(self, image_id: str) -> ImageRecord:
        """The metadata record of a live gallery image; UnknownIdError otherwise."""
        index, row = self._locate(image_id)
        return index.metadata.images([row])[0]

    def has_image(self, image_id: str) -> bool:
        return any(s.index.metadata.image_rows([image_id])[0] is not None for s in self.shards)

    @property
    def checkpoint_sha256(self) -> str:
        return self.shards[0].index.checkpoint_sha256

    @property
    def num_images(self) -> int:
        return sum(shard.index.num_images for shard in self.shards)

    def summary(self) -> dict[str, Any]:
        """What is served: counts of live items, storage, dims, cells, measured recall
        (a list of one per shard for a sharded gallery), bytes on disk."""
        parts = [_summary(shard.index) for shard in self.shards]
        merged = dict(parts[0])
        for key in ("images", "captions", "bytes", "segments"):
            merged[key] = sum(part[key] for part in parts)
        merged["shards"] = len(parts)
        if len(parts) > 1:
            merged["recall"] = [part["recall"] for part in parts]
            merged["generation"] = [part["generation"] for part in parts]
        return merged

    # ------------------------------------------------------------------ internals

    def _locate(self, image_id: str) -> tuple[GalleryIndex, int]:
        for shard in self.shards:
            row = shard.index.metadata.image_rows([image_id])[0]
            if row is not None:
                return shard.index, row
        raise UnknownIdError(f"image id {image_id!r} is not in the index")

    def _filtered(self, kind: str, filter: dict[str, Any] | None) -> list[tuple]:
        """(shard, rows its metadata filter keeps or None for no filter) per shard."""
        return [(shard, shard.index.metadata.filter_rows(kind, filter) if filter else None)
                for shard in self.shards]  # fmt: skip

    def _merge(self, rankings: list[Ranking], k: int, timer: Timer) -> list[tuple]:
        """Per-shard rankings -> the k best (shard, row, score) by exact score; the
        shards' step timings add up."""
        found = [(float(score), shard, int(row))
                 for shard, ranking in enumerate(rankings)
                 for row, score in zip(ranking.rows, ranking.scores, strict=True)]  # fmt: skip
        found.sort(key=lambda item: (-item[0], item[1]))  # stable within a shard
        for ranking in rankings:
            for name, ms in ranking.timings_ms.items():
                timer.add(name, ms)
        return [(shard, row, score) for score, shard, row in found[:k]]

    def _shard_tag(self, shard: int) -> int | None:
        return shard if len(self.shards) > 1 else None


def _check_k(k: int, candidates: int | None) -> tuple[int, int | None]:
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must lie in [1, {MAX_K}], got {k}")
    if candidates is not None and candidates < 1:
        raise QueryError(f"candidates must be >= 1, got {candidates}")
    return k, None if candidates is None else max(candidates, k)


def _scored(rankings: list[Ranking]) -> tuple[int, bool]:
    """Items scored exactly over every shard, and whether every shard scored all."""
    return sum(r.candidates for r in rankings), all(r.exhaustive for r in rankings)


def _summary(index: GalleryIndex) -> dict[str, Any]:
    manifest = index.manifest
    return {"images": int(index.live_images.sum()),
            "captions": int(index.live_captions.sum()),
            "storage": manifest["storage"], "dim": index.dim,
            "num_regions": index.num_regions, "format_version": manifest["format_version"],
            "generation": index.generation, "segments": len(manifest["segments"]),
            "cells": {side: entry["cells"] for side, entry in manifest["cells"].items()},
            "recall": manifest.get("recall"),
            "bytes": sum(int(f["bytes"]) for f in manifest["files"].values())}  # fmt: skip
