"""Search over a sharded gallery: several index directories built by one checkpoint
(`chan index build --shard I/N`), searched one after another and merged.

Every shard returns its exact top k: CHAN scores are exact and comparable across
shards (same model, same pooling), so the merged top k is the top k of the whole
gallery. A query is encoded once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from index_builder.errors import UnknownIdError
from index_builder.format import layout as fmt
from index_builder.format.metadata import ImageRecord
from index_builder.format.reader import GalleryIndex
from index_builder.search.searcher import Searcher, _check_k, _ms
from index_builder.search.vectors import SearchParams
from model.checkpoint import checkpoint_hash, load_checkpoint


def shard_dirs(path: Path) -> list[Path]:
    """An index directory itself, or the index directories directly under it (shards)."""
    path = Path(path)
    if (path / fmt.MANIFEST).is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"index {path} does not exist; build it with `chan index build`")
    shards = sorted(p for p in path.iterdir() if (p / fmt.MANIFEST).is_file())
    if not shards:
        raise fmt.IndexFormatError(
            f"{path} is neither an index directory nor a folder of index shards "
            "(no manifest.json in it or in its subfolders)"
        )
    return shards


class ShardedSearcher:
    """The Searcher interface over several shards (one shard works too)."""

    def __init__(self, shards: list[Searcher]) -> None:
        digests = {s.checkpoint_sha256 for s in shards}
        if len(digests) != 1:
            raise fmt.IndexFormatError("the shards were built by different checkpoints")
        self.shards = shards
        self.checkpoint = shards[0].checkpoint
        self.params = shards[0].params

    @classmethod
    def open(
        cls,
        path: Path | str,
        checkpoint_path: Path | str,
        checksums: bool = True,
        params: SearchParams | None = None,
    ) -> ShardedSearcher:
        """Load the checkpoint once and open every shard under `path` with it."""
        loaded = load_checkpoint(checkpoint_path)
        digest = checkpoint_hash(checkpoint_path)
        return cls([Searcher(GalleryIndex(d, digest, checksums), loaded, params)
                    for d in shard_dirs(Path(path))])  # fmt: skip

    # ------------------------------------------------------------------ searches

    def search_images(self, text: str, k: int = 10, candidates: int | None = None,
                      explain: bool = False, exhaustive: bool = False,
                      filter: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        k, candidates = _check_k(k, candidates)
        started = time.perf_counter()
        words, tokens = self.shards[0].encode_text(text)
        encode_ms = _ms(started)
        options = (k, candidates, explain, exhaustive, filter, started, encode_ms)
        results = [s.images_for_query(words, tokens, *options) for s in self.shards]
        return _merge(results, k, started, encode_ms)

    def search_captions(self, image=None, image_id: str | None = None, features=None,
                        count: int | None = None, k: int = 10, candidates: int | None = None,
                        explain: bool = False, exhaustive: bool = False,
                        filter: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        k, candidates = _check_k(k, candidates)
        started = time.perf_counter()
        owner = self.shards[0] if image_id is None else self._owner(image_id)
        regions, boxes = owner.query_regions(image, image_id, features, count)
        encode_ms = _ms(started)
        options = (k, candidates, explain, exhaustive, filter, started, encode_ms)
        results = [s.captions_for_query(regions, boxes, *options) for s in self.shards]
        return _merge(results, k, started, encode_ms)

    def score(self, text: str, image=None, image_id: str | None = None, features=None,
              count=None) -> dict[str, Any]:  # fmt: skip
        owner = self.shards[0] if image_id is None else self._owner(image_id)
        return owner.score(text, image, image_id, features, count)

    # ------------------------------------------------------------------ gallery facts

    def _owner(self, image_id: str) -> Searcher:
        for shard in self.shards:
            if shard.has_image(image_id):
                return shard
        raise UnknownIdError(f"image id {image_id!r} is not in the index")

    def image_record(self, image_id: str) -> ImageRecord:
        return self._owner(image_id).image_record(image_id)

    @property
    def checkpoint_sha256(self) -> str:
        return self.shards[0].checkpoint_sha256

    @property
    def num_images(self) -> int:
        return sum(s.num_images for s in self.shards)

    def summary(self) -> dict[str, Any]:
        parts = [s.summary() for s in self.shards]
        merged = dict(parts[0])
        for key in ("images", "captions", "bytes"):
            merged[key] = sum(p[key] for p in parts)
        merged["shards"] = len(parts)
        if len(parts) > 1:
            merged["recall"] = [p["recall"] for p in parts]
        return merged


def _merge(results: list[dict[str, Any]], k: int, started: float, encode_ms: float) -> dict:
    """Per-shard results -> one: hits by exact score, timings and candidates summed."""
    hits = []
    for shard, result in enumerate(results):
        for hit in result["hits"]:
            hits.append(hit | {"shard": shard} if len(results) > 1 else hit)
    hits.sort(key=lambda hit: -hit["score"])
    hits = hits[:k]
    for rank, hit in enumerate(hits, 1):
        hit["rank"] = rank
    timings: dict[str, float] = {"encode_ms": encode_ms}
    for result in results:
        for key, value in result["timings_ms"].items():
            if key not in ("encode_ms", "total_ms"):
                timings[key] = round(timings.get(key, 0.0) + value, 3)
    timings["total_ms"] = _ms(started)
    merged = {key: value for key, value in results[0].items() if key not in ("hits",)}
    merged |= {"hits": hits, "timings_ms": timings,
               "candidates": sum(r["candidates"] for r in results),
               "exhaustive": all(r["exhaustive"] for r in results)}  # fmt: skip
    return merged
