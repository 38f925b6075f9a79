"""The manifest's schema and its own checksum: every key, type and range of
`manifest.json`, and the files the format requires, checked on every read. A manifest
that fails is refused with one line naming the file, the field and the fix.

The checksum (`manifest_sha256`) is the sha256 of the manifest's canonical JSON (sorted
keys, no spaces) without that key: an edited or damaged manifest is refused even when
every value in it would pass the schema."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CHECKSUM_KEY = "manifest_sha256"
Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0)]
# per side with cells: its centroids (at the index root) and each vector's cell (per segment)
CENTROID_FILES = {"regions": "region_centroids.npy", "words": "word_centroids.npy"}
CODE_FILES = {"regions": "region_codes.npy", "words": "word_codes.npy"}
# per side with residual codes: the PQ codewords (at the root) and each vector's codes
CODEBOOK_FILES = {"regions": "region_codebook.npy", "words": "word_codebook.npy"}
RESIDUAL_FILES = {"regions": "region_residuals.npy", "words": "word_residuals.npy"}
METADATA_FILE = "metadata.sqlite"


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class FileEntry(_Strict):
    bytes: Count
    sha256: Hex64


class CheckpointRef(_Strict):
    sha256: Hex64
    path: str | None
    config: dict[str, Any] | None


class MatchingSpec(_Strict):
    coding: Literal["hard", "soft", "global"]
    pooling: Literal["lse", "mean", "max", "sum"]
    pooling_temperature: float = Field(gt=0)
    soft_temperature: float = Field(gt=0)


class Counts(_Strict):
    images: int = Field(ge=1)
    captions: Count
    region_vectors: int = Field(ge=1)
    word_vectors: Count


class SegmentEntry(_Strict):
    name: str = Field(pattern=r"^seg[0-9]{3,}$")
    images: Count  # a segment added by `chan index add` may hold only captions
    captions: Count
    # per side with cells, the mean similarity of this segment's vectors to their cells
    # when they were assigned to cells trained on other vectors (`chan index add`)
    similarity: dict[Literal["regions", "words"], float] = Field(default_factory=dict)


class ResidualEntry(_Strict):
    subspaces: int = Field(ge=1)  # PQ slices of d, two to a stored byte
    codewords: Literal[16]  # per slice (4 bits)
    train_vectors: int = Field(ge=1)
    seconds: float = Field(ge=0)  # training the codewords
    error: float = Field(ge=0)  # mean squared residual left after coding / before


class CellsEntry(_Strict):
    cells: int = Field(ge=1)  # k-means centroids
    train_vectors: int = Field(ge=1)  # the sample they were trained on
    iterations: int = Field(ge=1)
    seconds: float = Field(ge=0)  # training and assigning every vector
    similarity: float | None = None  # mean similarity of the vectors to their cells
    retrain_drift: float | None = Field(None, gt=1)  # compact retrains past this error ratio
    residual: ResidualEntry | None = None  # residual codes of the vectors (from the cells)


class ManifestModel(_Strict):
    format: Literal["chan-index"]
    format_version: Literal[2]
    generation: int = Field(1, ge=1)  # every change of the index makes a higher one
    checkpoint: CheckpointRef
    extractor: dict[str, Any] | None
    matching: MatchingSpec
    counts: Counts
    num_regions: int = Field(ge=1, le=4096)
    dim: int = Field(ge=1, le=65536)
    storage: Literal["float16", "int8"]
    segments: list[SegmentEntry] = Field(min_length=1)
    cells: dict[Literal["regions", "words"], CellsEntry]
    build: dict[str, Any]
    versions: dict[str, str]
    recall: dict[str, Any] | None = None
    files: dict[str, FileEntry]
    manifest_sha256: Hex64

    @model_validator(mode="after")
    def _consistent(self) -> ManifestModel:
        counts = self.counts
        names = [s.name for s in self.segments]
        if len(set(names)) != len(names):
            raise ValueError(f"segments: names repeat ({names})")
        if sum(s.images for s in self.segments) != counts.images:
            raise ValueError("counts.images: differs from the segments' images")
        if sum(s.captions for s in self.segments) != counts.captions:
            raise ValueError("counts.captions: differs from the segments' captions")
        if not counts.images <= counts.region_vectors <= counts.images * self.num_regions:
            raise ValueError("counts.region_vectors: outside 1..num_regions per image")
        if counts.word_vectors < counts.captions:
            raise ValueError("counts.word_vectors: fewer than one word per caption")
        config = self.checkpoint.config or {}
        for key, value in self.matching.model_dump().items():
            if key in config and config[key] != value:
                raise ValueError(
                    f"matching.{key}: {value!r} differs from the checkpoint's {config[key]!r}"
                )
        missing = sorted(set(required_files(self)) - set(self.files))
        if missing:
            raise ValueError(f"files: does not list {', '.join(missing[:4])}")
        unknown = sorted(set(self.files) - set(required_files(self)))
        if unknown:
            raise ValueError(f"files: lists files the format has no place for: {unknown[:4]}")
        return self


def segment_files(storage: str) -> list[str]:
    """The array files of one segment for a storage dtype."""
    files = ["regions.npy", "region_counts.npy", "region_boxes.npy", "region_owner.npy"]
    files += ["words.npy", "word_offsets.npy"]
    if storage == "int8":
        files += ["region_scales.npy", "word_scales.npy"]
    return files


def required_files(manifest: ManifestModel) -> list[str]:
    """Every file an index with this manifest must hold."""
    names = [METADATA_FILE, *(CENTROID_FILES[side] for side in manifest.cells)]
    coded = [side for side, entry in manifest.cells.items() if entry.residual is not None]
    names += [CODEBOOK_FILES[side] for side in coded]
    for segment in manifest.segments:
        names += [f"{segment.name}/{f}" for f in segment_files(manifest.storage)]
        names += [f"{segment.name}/{CODE_FILES[side]}" for side in manifest.cells]
        names += [f"{segment.name}/{RESIDUAL_FILES[side]}" for side in coded]
    return names


def checksum(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != CHECKSUM_KEY}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with its checksum, checked against the schema before it is written."""
    sealed = {**manifest, CHECKSUM_KEY: checksum(manifest)}
    problem = schema_problem(sealed)
    if problem:
        raise AssertionError(f"the writer made an invalid manifest: {problem}")
    return sealed


def schema_problem(manifest: Any) -> str | None:
    """None when the manifest passes the schema, else one line: field and problem."""
    try:
        ManifestModel.model_validate(manifest)
    except ValidationError as exc:
        return _describe(exc.errors())
    return None


def check_manifest(manifest: Any, path: Path) -> None:
    """Schema, then the manifest's own checksum; raises ValueError with one line."""
    problem = schema_problem(manifest)
    if problem:
        raise ValueError(f"{path}: {problem}")
    if checksum(manifest) != manifest[CHECKSUM_KEY]:
        raise ValueError(f"{path}: fails its own checksum ({CHECKSUM_KEY}): edited or damaged")


def _describe(errors: list[dict[str, Any]]) -> str:
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "manifest"
    message = first.get("msg", "invalid").removeprefix("Value error, ")
    if first.get("type") not in ("missing", "value_error") and "input" in first:
        shown = repr(first["input"])
        message += f" (got {shown[:60]}{'…' if len(shown) > 60 else ''})"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    if first.get("type") == "value_error" and ":" in message:
        return message + more  # the validator names its field itself
    return f"{where}: {message}{more}"


def drift(manifest: dict[str, Any]) -> dict[str, float]:
    """Per side with cells: the quantisation error (1 - mean similarity to the cell) of
    the vectors added since the cells were trained, over the error at training; 1.0
    when nothing was added. `chan index compact` retrains past the side's retrain_drift."""
    out = {}
    counts = {"regions": "images", "words": "captions"}
    for side, cells in manifest["cells"].items():
        trained = cells.get("similarity")
        added = [(s["similarity"][side], s[counts[side]]) for s in manifest["segments"]
                 if side in s.get("similarity", {}) and s[counts[side]]]  # fmt: skip
        if trained is None or not added:
            out[side] = 1.0
            continue
        weight = sum(n for _, n in added)
        added_error = sum((1 - sim) * n for sim, n in added) / weight
        out[side] = round(added_error / max(1 - trained, 1e-9), 4)
    return out


def code_bytes(subspaces: int) -> int:
    """Bytes per stored vector of residual codes in `subspaces` 4-bit slices (two slices
    per byte; see build/residuals.py)."""
    return (subspaces + 1) // 2


def next_generation(manifest: dict[str, Any]) -> int:
    """The generation a change of this index commits (an index before generations: 1)."""
    return manifest.get("generation", 1) + 1
