"""What a search returns: rankings of rows, hits with their records and alignments, and
the timings of each step, measured by one small timer. Every result converts to the JSON
the service answers with `as_json`."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Timer:
    """Milliseconds per named step (repeated steps add up, e.g. over shards) and in total."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.steps_ms: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, (time.perf_counter() - started) * 1000)

    def add(self, name: str, ms: float) -> None:
        self.steps_ms[name] = round(self.steps_ms.get(name, 0.0) + ms, 3)

    def timings_ms(self) -> dict[str, float]:
        """Every step so far and `total_ms` since the timer started."""
        return {**self.steps_ms, "total_ms": round((time.perf_counter() - self.started) * 1000, 3)}


@dataclass
class Ranking:
    """Rows of one index and their exact scores, best first, plus where the time went."""

    rows: np.ndarray  # (k,) int64
    scores: np.ndarray  # (k,) float32
    timings_ms: dict[str, float] = field(default_factory=dict)
    candidates: int = 0  # items scored exactly
    exhaustive: bool = False


@dataclass
class WordMatch:
    """One query word's winning region: the hard assignment made visible."""

    token: str
    region: int  # index of the region that won this word's max
    similarity: float
    box: list[float] | None  # x0, y0, x1, y1 as fractions of the image


@dataclass
class ImageHit:
    rank: int
    score: float
    image_id: str
    uri: str | None
    metadata: dict[str, Any]
    explain: list[WordMatch] | None = None
    shard: int | None = None  # the shard it came from (sharded galleries only)


@dataclass
class CaptionHit:
    rank: int
    score: float
    caption_id: str
    text: str
    image_id: str | None
    metadata: dict[str, Any]
    explain: list[WordMatch] | None = None
    shard: int | None = None


@dataclass
class ImageResults:
    """Text -> images: the hits, the query's tokens, timings and how it was searched."""

    hits: list[ImageHit]
    tokens: list[str]
    timings_ms: dict[str, float]
    candidates: int  # items scored exactly, over every shard
    exhaustive: bool


@dataclass
class CaptionResults:
    """Image -> captions: the hits, the query image's region boxes (None for features)."""

    hits: list[CaptionHit]
    query_boxes: list[list[float]] | None
    timings_ms: dict[str, float]
    candidates: int
    exhaustive: bool


@dataclass
class ScoreResult:
    """The exact score of one text and one image, with the word -> region alignment."""

    score: float
    alignment: list[WordMatch]
    query_boxes: list[list[float]] | None


def as_json(result: ImageResults | CaptionResults | ScoreResult) -> dict[str, Any]:
    """A result as JSON-ready dicts and lists."""
    return dataclasses.asdict(result)


def alignment(
    tokens: list[str], regions: Any, sims: Any, boxes: np.ndarray | None
) -> list[WordMatch]:
    """Per word: its token, the region that won its max, that region's box, the
    similarity. Placeholder tokens when a tokenizer disagrees with the stored words."""
    if len(tokens) != len(regions):
        tokens = [f"#{i}" for i in range(len(regions))]
    return [
        WordMatch(token, int(r), round(float(s), 4),
                  None if boxes is None else [round(float(x), 4) for x in boxes[r]])
        for token, r, s in zip(tokens, regions.tolist(), sims.tolist(), strict=True)
    ]  # fmt: skip


def boxes_list(boxes: np.ndarray | None) -> list[list[float]] | None:
    return None if boxes is None else [[round(float(v), 4) for v in box] for box in boxes]
