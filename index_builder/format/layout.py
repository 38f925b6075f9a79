"""The index directory format, version 2: names, manifest, checksums, and opening with
verification. Nothing else reads or writes these files directly.

    INDEX/
      manifest.json            what this is, who built it, counts, dims, dtypes, cells,
                               build parameters, measured recall, checksums
      metadata.sqlite          ids, URIs, caption text, image <-> caption links, tombstones
      region_centroids.npy     (cells, d) float32 k-means centroids of the region vectors
                               (text -> image shortlist); absent for small galleries
      word_centroids.npy       (cells, d) float32 the same for the word vectors (image ->
                               caption shortlist); absent for small caption sets
      region_codebook.npy      (S, 16, d / S) float32 PQ codewords of the region residuals
      word_codebook.npy        (S, 16, d / S) float32 the same for the word residuals
      seg000/ seg001/ ...      segments: `chan index add` appends one, compact merges them
        regions.npy            (n, K, d) float16, or int8 + region_scales.npy (n, K)
        region_counts.npy      (n,) int32 valid regions
        region_boxes.npy       (n, K, 4) float32 x0 y0 x1 y1 fractions
        region_owner.npy       (v,) int64 global image row of each valid region vector
        words.npy              (w, d) float16, or int8 + word_scales.npy (w,)
        word_offsets.npy       (m + 1,) int64 caption boundaries inside words.npy
        word_codes.npy         (w,) int32 cell of each word vector (with word_centroids)
        region_codes.npy       (v,) int32 cell of each region vector (with region_centroids)
        region_residuals.npy   (v, S / 2) uint8 4-bit PQ codes of each region vector's
                               residual, two slices per byte
        word_residuals.npy     (w, S / 2) uint8 the same for the word vectors

The stored vectors are the exact contents of the cells. Region vector i (valid regions,
image by image) belongs to image region_owner[i]; word vector j belongs to the caption
whose global offsets bracket j. Version 1 also held one pooled vector per item and FAISS
files that nothing searched; it is refused with the advice to rebuild.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index_builder.format import manifest as manifest_schema
from index_builder.format.manifest import CODE_FILES, RESIDUAL_FILES, code_bytes
from model.io import atomic_write_text

logger = logging.getLogger(__name__)

FORMAT = "chan-index"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
METADATA = "metadata.sqlite"
STORAGE_DTYPES = ("float16", "int8")
SIDES = ("regions", "words")  # the two sides that can have cells: text -> image, image -> text


class IndexFormatError(ValueError):
    """An index directory that cannot be used as it is; the message says why and what
    to do (rebuild, verify, point to the right checkpoint)."""


def segment_name(number: int) -> str:
    return f"seg{number:03d}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entries(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """{relative name: {bytes, sha256}} for the manifest."""
    return {
        name: {"bytes": (directory / name).stat().st_size, "sha256": sha256_file(directory / name)}
        for name in names
    }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest with its own checksum (checked against the schema first)."""
    sealed = manifest_schema.seal(manifest)
    atomic_write_text(directory / MANIFEST, json.dumps(sealed, indent=2) + "\n")


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest, with its format and version checked."""
    if not directory.is_dir():
        aside = sorted(directory.parent.glob(f".{directory.name}.old-*"))
        if aside:  # an update was interrupted between its two renames (see durable.py)
            raise FileNotFoundError(
                f"index {directory} is missing but an interrupted update left it at "
                f"{aside[-1]}: run `chan index verify {directory}` to put it back"
            )
        raise FileNotFoundError(
            f"index {directory} does not exist; build it with `chan index build`"
        )
    path = directory / MANIFEST
    if not path.is_file():
        raise IndexFormatError(
            f"{directory} has no {MANIFEST}: not an index, or a build that never finished; "
            "rebuild it"
        )
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise IndexFormatError(f"{path} is not valid JSON ({exc}); rebuild the index") from None
    if not isinstance(manifest, dict):
        raise IndexFormatError(
            f"{path} holds a JSON {type(manifest).__name__}, not a manifest object; "
            "rebuild the index"
        )
    if manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path} is not a {FORMAT} manifest; rebuild the index")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{directory} is index format version {version!r}; this code reads version "
            f"{FORMAT_VERSION}: rebuild the index with this version of `chan index build`"
        )
    try:
        manifest_schema.check_manifest(manifest, path)
    except ValueError as exc:
        raise IndexFormatError(f"{exc}; rebuild the index") from None
    return manifest


Fingerprint = tuple[int, int, int, int, str]  # device, inode, size, mtime_ns, sha256


def read_generation(directory: Path) -> int:
    """The generation of the manifest in `directory`, without checking the rest of it
    (cheap enough to poll); ValueError when the manifest cannot be read."""
    try:
        manifest = json.loads((Path(directory) / MANIFEST).read_bytes())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{directory / MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{directory / MANIFEST} is not a manifest object")
    return int(manifest.get("generation", 1))


def verify_files(
    directory: Path,
    manifest: dict[str, Any],
    checksums: bool = True,
    verified: dict[str, Fingerprint] | None = None,
) -> dict[str, Fingerprint]:
    """Every listed file exists with its size (and sha256 when checksums=True). The
    schema (checked by read_manifest) makes the list exactly the files the format requires.
    verified: fingerprints of files checked before (a previous generation); a file that
    is still the same inode, size and mtime with the same listed sha256 (a segment that
    a change hard-linked over) is not read again. Returns the fingerprints of every file."""
    prints = {}
    for name, entry in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            raise IndexFormatError(f"{path} is missing; the index is incomplete: rebuild it")
        stat = path.stat()
        prints[name] = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, entry["sha256"])
        if verified is not None and verified.get(name) == prints[name]:
            continue
        size = stat.st_size
        if size != entry["bytes"]:
            raise IndexFormatError(
                f"{path} has {size} bytes, the manifest says {entry['bytes']}: truncated or "
                "replaced; rebuild the index"
            )
        if checksums and sha256_file(path) != entry["sha256"]:
            raise IndexFormatError(
                f"{path} fails its sha256 checksum: corrupted; rebuild the index"
            )
    return prints if checksums else {}


@dataclass
class Segment:
    """One segment's arrays, memory-mapped (nothing is read until used)."""

    regions: np.ndarray  # (n, K, d) float16 or int8
    region_scales: np.ndarray | None  # (n, K) float32 for int8
    counts: np.ndarray  # (n,)
    boxes: np.ndarray  # (n, K, 4)
    owner: np.ndarray  # (v,) global image rows of this segment's region vectors
    words: np.ndarray  # (w, d)
    word_scales: np.ndarray | None  # (w,)
    offsets: np.ndarray  # (m + 1,)
    word_codes: np.ndarray | None  # (w,) cells of the words, when the index has word cells
    region_codes: np.ndarray | None  # (v,) cells of the region vectors, likewise
    word_residuals: np.ndarray | None = None  # (w, S / 2) uint8 residual codes of the words
    region_residuals: np.ndarray | None = None  # (v, S / 2) uint8 the same of the regions


def load_array(path: Path) -> np.ndarray:
    """A stored .npy array, memory-mapped; IndexFormatError when it cannot be read."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise IndexFormatError(
            f"{path} is not a readable .npy array ({exc}); rebuild the index"
        ) from None


def open_segment(
    directory: Path,
    storage: str,
    cell_sides: Iterable[str] = (),
    residual_sides: Iterable[str] = (),
) -> Segment:
    """The arrays of one segment; the cell codes of the sides in `cell_sides` and the
    residual codes of those in `residual_sides`."""

    def load(name: str) -> np.ndarray:
        return load_array(directory / name)

    int8, sides, coded = storage == "int8", set(cell_sides), set(residual_sides)
    return Segment(
        regions=load("regions.npy"),
        region_scales=load("region_scales.npy") if int8 else None,
        counts=np.asarray(load("region_counts.npy")),
        boxes=load("region_boxes.npy"),
        owner=np.asarray(load("region_owner.npy")),
        words=load("words.npy"),
        word_scales=load("word_scales.npy") if int8 else None,
        offsets=np.asarray(load("word_offsets.npy")),
        word_codes=np.asarray(load(CODE_FILES["words"])) if "words" in sides else None,
        region_codes=np.asarray(load(CODE_FILES["regions"])) if "regions" in sides else None,
        word_residuals=load(RESIDUAL_FILES["words"]) if "words" in coded else None,
        region_residuals=load(RESIDUAL_FILES["regions"]) if "regions" in coded else None,
    )


def check_segment(directory: Path, seg: Segment, entry: dict[str, Any],
                  manifest: dict[str, Any]) -> None:  # fmt: skip
    """The arrays of one segment agree with the manifest: shapes, dtypes, row counts."""
    n, m = entry["images"], entry["captions"]
    k, d = manifest["num_regions"], manifest["dim"]
    store = np.dtype(manifest["storage"])
    vectors = int(np.asarray(seg.counts, dtype=np.int64).sum()) if len(seg.counts) else 0
    words = int(seg.offsets[-1]) if len(seg.offsets) else -1
    expected = {
        "regions.npy": (seg.regions, (n, k, d), store),
        "region_counts.npy": (seg.counts, (n,), None),
        "region_boxes.npy": (seg.boxes, (n, k, 4), np.dtype(np.float32)),
        "region_owner.npy": (seg.owner, (vectors,), None),
        "words.npy": (seg.words, (words, d), store),
        "word_offsets.npy": (seg.offsets, (m + 1,), None),
    }
    if seg.region_scales is not None:
        expected["region_scales.npy"] = (seg.region_scales, (n, k), None)
        expected["word_scales.npy"] = (seg.word_scales, (words,), None)
    if seg.region_codes is not None:
        expected[CODE_FILES["regions"]] = (seg.region_codes, (vectors,), None)
    if seg.word_codes is not None:
        expected[CODE_FILES["words"]] = (seg.word_codes, (words,), None)
    for side, array, rows in (("regions", seg.region_residuals, vectors),
                              ("words", seg.word_residuals, words)):  # fmt: skip
        if array is not None:
            width = code_bytes(manifest["cells"][side]["residual"]["subspaces"])
            expected[RESIDUAL_FILES[side]] = (array, (rows, width), np.dtype(np.uint8))
    for name, (array, shape, dtype) in expected.items():
        if array.shape != shape:
            raise IndexFormatError(
                f"{directory / name} has shape {array.shape}, the manifest implies {shape} "
                f"(num_regions {k}, dim {d}, {n} images, {m} captions); rebuild the index"
            )
        if dtype is not None and array.dtype != dtype:
            raise IndexFormatError(
                f"{directory / name} holds {array.dtype}, not the {dtype} the manifest "
                f"implies (storage {manifest['storage']}); rebuild the index"
            )
    if n and (int(seg.counts.min()) < 1 or int(seg.counts.max()) > k):
        raise IndexFormatError(
            f"{directory / 'region_counts.npy'}: region counts outside 1..{k}; rebuild the index"
        )
    if seg.offsets[0] != 0 or np.any(np.diff(seg.offsets) < 1):
        raise IndexFormatError(
            f"{directory / 'word_offsets.npy'}: not increasing from 0; rebuild the index"
        )


def check_checkpoint(manifest: dict[str, Any], checkpoint_digest: str, where: Path) -> None:
    built_by = manifest["checkpoint"]["sha256"]
    if built_by != checkpoint_digest:
        raise IndexFormatError(
            f"{where} was built by checkpoint {built_by[:12]}… "
            f"({manifest['checkpoint'].get('path')}), not by the loaded one "
            f"({checkpoint_digest[:12]}…): load that checkpoint or rebuild the index"
        )


def shard_dirs(path: Path) -> list[Path]:
    """An index directory itself, or the index directories directly under it (shards)."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"index {path} does not exist; build it with `chan index build`")
    shards = sorted(p for p in path.iterdir() if (p / MANIFEST).is_file())
    if not shards:
        raise IndexFormatError(
            f"{path} is neither an index directory nor a folder of index shards "
            "(no manifest.json in it or in its subfolders)"
        )
    return shards
