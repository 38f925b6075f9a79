"""The searcher: text -> images and image -> captions over one index, with the metadata
of every hit and, on request, the alignment behind each score. No web framework here;
the service translates results and errors (ValueError: bad request, UnknownIdError: not
found)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index_builder.errors import QueryError, UnknownIdError
from index_builder.format.metadata import ImageRecord
from index_builder.format.reader import GalleryIndex
from index_builder.search.vectors import Ranking, SearchParams, VectorSearcher
from model.checkpoint import checkpoint_hash, load_checkpoint
from model.scoring import FlatWords, best_regions, score_matrix

logger = logging.getLogger(__name__)

MAX_K = 1000  # results per query; a client wanting more should page through filters


class Searcher(VectorSearcher):
    """Open with `Searcher.open(index_dir, checkpoint_dir)`; methods are thread-safe."""

    @classmethod
    def open(
        cls,
        index_path: Path | str,
        checkpoint_path: Path | str,
        checksums: bool = True,
        params: SearchParams | None = None,
    ) -> Searcher:
        """Load the checkpoint, open the index, refuse an index it did not build."""
        loaded = load_checkpoint(checkpoint_path)
        index = GalleryIndex(index_path, checkpoint_hash(checkpoint_path), checksums)
        return cls(index, loaded, params)

    # ------------------------------------------------------------------ text -> images

    def search_images(
        self,
        text: str,
        k: int = 10,
        candidates: int | None = None,
        explain: bool = False,
        exhaustive: bool = False,
        filter: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The k best images for `text`: hits with id, score, URI, metadata; with explain,
        per query word the region that won its max (index, box, similarity)."""
        k, candidates = _check_k(k, candidates)
        started = time.perf_counter()
        words, tokens = self.encode_text(text)
        encode_ms = _ms(started)
        return self.images_for_query(words, tokens, k, candidates, explain, exhaustive, filter,
                                     started, encode_ms)  # fmt: skip

    def images_for_query(
        self, words, tokens, k, candidates, explain, exhaustive, filter, started, encode_ms
    ) -> dict[str, Any]:
        """search_images() after the text is encoded (a sharded gallery encodes once)."""
        allowed = self.index.metadata.filter_rows("images", filter) if filter else None
        ranking = self.images_for_words(words, k, candidates, exhaustive, allowed)
        hits = self._image_hits(ranking)
        if explain:
            for hit in hits:
                hit["explain"] = self._explain_text(words, tokens, hit["row"])
        return _result(hits, ranking, encode_ms, started, tokens=tokens)

    def _image_hits(self, ranking: Ranking) -> list[dict[str, Any]]:
        records = self.index.metadata.images(ranking.rows.tolist())
        return [
            {**_ranked(rank, ranking), "image_id": rec.image_id, "uri": rec.uri,
             "metadata": rec.metadata or {}}
            for rank, rec in enumerate(records)
        ]  # fmt: skip

    def _explain_text(self, words: torch.Tensor, tokens: list[str], row: int) -> list[dict]:
        regions, counts = self.index.images(np.array([row]))
        index, sims = best_regions(regions[0], int(counts[0]), words)
        return alignment(tokens, index, sims, self.index.boxes(row))

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
    ) -> dict[str, Any]:
        """The k best captions for one image given as a PIL image, a gallery image_id, or
        raw region features (K, D) with their valid count."""
        k, candidates = _check_k(k, candidates)
        started = time.perf_counter()
        regions, boxes = self.query_regions(image, image_id, features, count)
        encode_ms = _ms(started)
        return self.captions_for_query(regions, boxes, k, candidates, explain, exhaustive,
                                       filter, started, encode_ms)  # fmt: skip

    def captions_for_query(
        self, regions, boxes, k, candidates, explain, exhaustive, filter, started, encode_ms
    ) -> dict[str, Any]:
        """search_captions() after the image is encoded (a sharded gallery encodes once)."""
        allowed = self.index.metadata.filter_rows("captions", filter) if filter else None
        ranking = self.captions_for_regions(regions, k, candidates, exhaustive, allowed)
        hits = self._caption_hits(ranking)
        if explain:
            for hit in hits:
                hit["explain"] = self._explain_image(regions, boxes, hit)
        return _result(hits, ranking, encode_ms, started, query_boxes=_boxes_list(boxes))

    def query_regions(
        self, image=None, image_id: str | None = None, features=None, count: int | None = None
    ) -> tuple[torch.Tensor, np.ndarray | None]:
        """Exactly one of the three query forms -> (n, d) region vectors and (n, 4) boxes."""
        given = sum(x is not None for x in (image, image_id, features))
        if given != 1:
            raise QueryError("give exactly one of: an image, an image_id, or region features")
        if image_id is not None:
            row = self.image_row(image_id)
            regions, counts = self.index.images(np.array([row]))
            n = int(counts[0])
            return regions[0, :n], self.index.boxes(row)[:n]
        if image is not None:
            return self.encode_image(image)
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2:
            raise QueryError(f"region features must be (K, D), got shape {features.shape}")
        return self.encode_regions(features, count or features.shape[0]), None

    def image_record(self, image_id: str) -> ImageRecord:
        """The metadata record of a live gallery image; UnknownIdError otherwise."""
        return self.index.metadata.images([self.image_row(image_id)])[0]

    def has_image(self, image_id: str) -> bool:
        return self.index.metadata.image_rows([image_id])[0] is not None

    def summary(self) -> dict[str, Any]:
        """What is served: counts of live items, storage, dims, cells, measured recall."""
        index, manifest = self.index, self.index.manifest
        files = manifest.get("files", {}).values()
        return {"images": int(index.live_images.sum()),
                "captions": int(index.live_captions.sum()),
                "storage": manifest["storage"], "dim": index.dim,
                "num_regions": index.num_regions, "format_version": manifest["format_version"],
                "cells": {side: c["cells"] for side, c in manifest["cells"].items()},
                "recall": manifest.get("recall"),
                "bytes": sum(int(f.get("bytes", 0)) for f in files)}  # fmt: skip

    @property
    def checkpoint_sha256(self) -> str:
        return self.index.checkpoint_sha256

    @property
    def num_images(self) -> int:
        return self.index.num_images

    def image_row(self, image_id: str) -> int:
        row = self.index.metadata.image_rows([image_id])[0]
        if row is None:
            raise UnknownIdError(f"image id {image_id!r} is not in the index")
        return row

    def _caption_hits(self, ranking: Ranking) -> list[dict[str, Any]]:
        records = self.index.metadata.captions(ranking.rows.tolist())
        return [
            {**_ranked(rank, ranking), "caption_id": rec.caption_id, "text": rec.text,
             "image_id": rec.image_id, "metadata": rec.metadata or {}}
            for rank, rec in enumerate(records)
        ]  # fmt: skip

    def _explain_image(self, regions: torch.Tensor, boxes, hit: dict) -> list[dict]:
        words = self.index.captions(np.array([hit["row"]])).vectors
        sims = words @ regions.T  # (L, n)
        values, index = sims.max(dim=1)
        return alignment(self._tokens(hit["text"]), index, values, boxes)

    def _tokens(self, text: str) -> list[str]:
        return [] if self.checkpoint is None else self.checkpoint.tokenizer.tokens(text)

    # ------------------------------------------------------------------ one pair

    def score(
        self, text: str, image=None, image_id: str | None = None, features=None, count=None
    ) -> dict[str, Any]:
        """The exact CHAN score of one text and one image, with the word -> region
        alignment (for debugging and for users' own rerankers)."""
        words, tokens = self.encode_text(text)
        regions, boxes = self.query_regions(image, image_id, features, count)
        flat = FlatWords(words, torch.tensor([0, len(words)]))
        value = score_matrix(regions[None], None, flat, None, self.matching)[0, 0]
        index, sims = best_regions(regions, len(regions), words)
        return {
            "score": float(value),
            "alignment": alignment(tokens, index, sims, boxes),
            "query_boxes": _boxes_list(boxes),
        }


def _check_k(k: int, candidates: int | None) -> tuple[int, int | None]:
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must lie in [1, {MAX_K}], got {k}")
    if candidates is not None and candidates < 1:
        raise QueryError(f"candidates must be >= 1, got {candidates}")
    return k, None if candidates is None else max(candidates, k)


def alignment(
    tokens: list[str], regions: torch.Tensor, sims: torch.Tensor, boxes: np.ndarray | None
) -> list[dict[str, Any]]:
    """Per word: its token, the region that won its max, that region's box, the
    similarity. Placeholder tokens when a tokenizer disagrees with the stored words."""
    if len(tokens) != len(regions):
        tokens = [f"#{i}" for i in range(len(regions))]
    return [
        {"token": token, "region": int(r), "similarity": round(float(s), 4),
         "box": None if boxes is None else [round(float(x), 4) for x in boxes[r]]}
        for token, r, s in zip(tokens, regions.tolist(), sims.tolist(), strict=True)
    ]  # fmt: skip


def _ranked(rank: int, ranking: Ranking) -> dict[str, Any]:
    return {
        "rank": rank + 1,
        "row": int(ranking.rows[rank]),
        "score": float(ranking.scores[rank]),
    }


def _boxes_list(boxes) -> list[list[float]] | None:
    return None if boxes is None else [[round(float(v), 4) for v in box] for box in boxes]


def _result(hits, ranking: Ranking, encode_ms: float, started: float, **extra) -> dict[str, Any]:
    timings = {"encode_ms": encode_ms, **ranking.timings_ms, "total_ms": _ms(started)}
    return {"hits": hits, "timings_ms": timings, "candidates": ranking.candidates,
            "exhaustive": ranking.exhaustive, **extra}  # fmt: skip


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
