"""`chan extract`: images -> region features in the precomp layout, streamed to disk.

For a split named S the output folder receives

    S_ims.npy      (N, K, D) float32 or float16 region features
    S_counts.npy   (N,) int32 valid regions per image; 0 marks an image that failed
    S_boxes.npy    (N, K, 4) float32 boxes, x0 y0 x1 y1 as fractions of the image
    S_ids.txt      the N image ids, row order
    S_extract.json extractor spec, dtype, failures (id, path, reason), timing

Row i always belongs to input image i: an unreadable image keeps its row (zeros,
count 0) and is listed in the report, so ids never shift. Rows are written with
positioned writes into preallocated files, so memory stays flat whatever N is. Work in
progress lives in `.S_extract.partial/` with a state file updated after every batch;
an interrupted run resumes there, and files move into place only when all rows exist.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from model.features.extractors.base import RegionBatch, RegionExtractor
from model.features.images import DEFAULT_MAX_PIXELS, ImageEntry, ImageError, load_image
from model.io import RowWriter, atomic_write_text, load_state, preallocate_npy, save_state

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass
class ExtractResult:
    """What one `extract_split` call did."""

    split: str
    num_images: int
    failed: list[dict[str, Any]] = field(default_factory=list)  # {index, id, path, reason}
    seconds: float = 0.0  # wall time of this call (a resumed run counts its own part)
    processed: int = 0  # images handled by this call
    reused: bool = False  # the complete output already existed

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Layout:
    """Final and in-progress paths of one split's files."""

    out_dir: Path
    split: str

    def final(self, kind: str) -> Path:
        suffix = {"ims": "npy", "counts": "npy", "boxes": "npy", "ids": "txt", "extract": "json"}
        return self.out_dir / f"{self.split}_{kind}.{suffix[kind]}"

    @property
    def work_dir(self) -> Path:
        return self.out_dir / f".{self.split}_extract.partial"

    def work(self, kind: str) -> Path:
        return self.work_dir / self.final(kind).name

    @property
    def state_file(self) -> Path:
        return self.work_dir / "state.json"


def extract_split(
    entries: list[ImageEntry],
    extractor: RegionExtractor,
    out_dir: Path,
    split: str,
    batch_size: int = 32,
    dtype: str = "float32",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    restart: bool = False,
    progress: bool | None = None,
) -> ExtractResult:
    """Extract every entry's regions into out_dir (see the module docstring)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    layout = _Layout(out_dir, split)
    signature = _signature(entries, extractor, dtype)
    if _complete_and_same(layout, signature, overwrite):
        report = json.loads(layout.final("extract").read_text())
        return ExtractResult(split, len(entries), report["failed"], reused=True)
    state = _open_work(layout, entries, extractor, dtype, signature, restart)
    started = time.perf_counter()
    done_before = state["done"]
    _run_batches(entries, extractor, layout, signature, state, batch_size, max_pixels, progress)
    result = ExtractResult(split, len(entries), state["failed"])
    result.seconds = time.perf_counter() - started
    result.processed = len(entries) - done_before
    _finish(layout, entries, extractor, dtype, signature, result)
    return result


def _signature(entries: list[ImageEntry], extractor: RegionExtractor, dtype: str) -> str:
    """Digest of what determines the output: ids, paths, extractor spec and dtype."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(f"{entry.image_id}\t{entry.path}\n".encode())
    digest.update(json.dumps(extractor.spec.to_dict(), sort_keys=True).encode())
    digest.update(dtype.encode())
    return digest.hexdigest()


def _complete_and_same(layout: _Layout, signature: str, overwrite: bool) -> bool:
    report_path = layout.final("extract")
    if not report_path.exists():
        return False
    try:
        same = json.loads(report_path.read_text()).get("signature") == signature
    except json.JSONDecodeError:
        same = False
    if same and not overwrite:
        logger.info("%s: already extracted with the same inputs; reusing it", report_path)
        return True
    if not overwrite:
        raise ValueError(
            f"{report_path} describes a different extraction (other images, extractor or "
            "dtype); pass --overwrite to replace it or choose another --out / --split"
        )
    return False


def _open_work(
    layout: _Layout,
    entries: list[ImageEntry],
    extractor: RegionExtractor,
    dtype: str,
    signature: str,
    restart: bool,
) -> dict[str, Any]:
    """Resume a compatible interrupted run, or preallocate fresh files."""
    if layout.state_file.exists() and not restart:
        state = load_state(layout.state_file, signature)
        if state is not None:
            logger.info("resuming %s at image %d of %d", layout.split, state["done"], len(entries))
            return state
        raise ValueError(
            f"{layout.work_dir} holds an interrupted extraction of other inputs (or an "
            "unreadable state file); pass --restart to discard it"
        )
    shutil.rmtree(layout.work_dir, ignore_errors=True)
    layout.work_dir.mkdir(parents=True)
    n, k, d = len(entries), extractor.spec.num_regions, extractor.spec.dim
    for kind, shape, kind_dtype in (
        ("ims", (n, k, d), DTYPES[dtype]),
        ("counts", (n,), np.int32),
        ("boxes", (n, k, 4), np.float32),
    ):
        preallocate_npy(layout.work(kind), shape, kind_dtype)
    state = {"done": 0, "failed": []}
    save_state(layout.state_file, signature, state)
    return state


def _run_batches(
    entries: list[ImageEntry],
    extractor: RegionExtractor,
    layout: _Layout,
    signature: str,
    state: dict[str, Any],
    batch_size: int,
    max_pixels: int,
    progress: bool | None,
) -> None:
    """Decode batch i+1 on worker threads while the extractor runs on batch i."""
    writers = {kind: RowWriter(layout.work(kind)) for kind in ("ims", "counts", "boxes")}
    starts = list(range(state["done"], len(entries), batch_size))
    bar = tqdm(
        total=len(entries),
        initial=state["done"],
        desc=f"extract {layout.split}",
        unit="img",
        disable=None if progress is None else not progress,
    )
    with ThreadPoolExecutor(max_workers=2) as pool, bar:
        pending = _submit(pool, entries, starts[0], batch_size, max_pixels) if starts else []
        for index, start in enumerate(starts):
            loaded = [future.result() for future in pending]
            if index + 1 < len(starts):
                pending = _submit(pool, entries, starts[index + 1], batch_size, max_pixels)
            batch = _extract_loaded(extractor, loaded, entries, start, state["failed"])
            writers["ims"].write(start, batch.features)
            writers["counts"].write(start, batch.counts)
            writers["boxes"].write(start, batch.boxes)
            for writer in writers.values():
                writer.sync()
            state["done"] = start + len(loaded)
            save_state(layout.state_file, signature, state)
            bar.update(len(loaded))
    for writer in writers.values():
        writer.close()


def _submit(
    pool: ThreadPoolExecutor, entries: list[ImageEntry], start: int, size: int, max_pixels: int
) -> list[Future]:
    return [pool.submit(_load_or_error, e.path, max_pixels) for e in entries[start : start + size]]


def _load_or_error(path: Path, max_pixels: int):
    try:
        return load_image(path, max_pixels)
    except ImageError as exc:
        return exc


def _extract_loaded(
    extractor: RegionExtractor,
    loaded: list,
    entries: list[ImageEntry],
    start: int,
    failed: list[dict[str, Any]],
) -> RegionBatch:
    """Run the extractor on the images that loaded; failed rows stay zero, count 0."""
    spec = extractor.spec
    batch = RegionBatch(
        features=np.zeros((len(loaded), spec.num_regions, spec.dim), np.float32),
        counts=np.zeros(len(loaded), np.int32),
        boxes=np.zeros((len(loaded), spec.num_regions, 4), np.float32),
    )
    good = []
    for row, item in enumerate(loaded):
        if isinstance(item, Exception):
            _record_failure(failed, entries, start + row, str(item))
        else:
            good.append(row)
    if good:
        result, good = _extract_rows(extractor, loaded, good, entries, start, failed)
        batch.features[good], batch.counts[good], batch.boxes[good] = (
            result.features,
            result.counts,
            result.boxes,
        )
    return batch


def _extract_rows(
    extractor: RegionExtractor,
    loaded: list,
    rows: list[int],
    entries: list[ImageEntry],
    start: int,
    failed: list[dict[str, Any]],
) -> tuple[RegionBatch, list[int]]:
    """The whole batch at once; if the extractor raises, image by image, so one odd
    image costs its own row only. A batch where every image fails re-raises: that is a
    broken extractor, not bad input."""
    spec = extractor.spec
    try:
        result = extractor.extract([loaded[row] for row in rows])
        _check_output(result, len(rows), spec.num_regions, spec.dim)
        return result, rows
    except Exception as batch_error:  # isolated per image below
        kept, pieces = [], []
        for row in rows:
            try:
                single = extractor.extract([loaded[row]])
                _check_output(single, 1, spec.num_regions, spec.dim)
            except Exception as exc:  # recorded in the report
                _record_failure(failed, entries, start + row, f"extractor failed: {exc}")
                continue
            kept.append(row)
            pieces.append(single)
        if not kept:
            raise batch_error
        return _concat(pieces), kept


def _concat(pieces: list[RegionBatch]) -> RegionBatch:
    return RegionBatch(
        np.concatenate([p.features for p in pieces]),
        np.concatenate([p.counts for p in pieces]),
        np.concatenate([p.boxes for p in pieces]),
    )


def _record_failure(
    failed: list[dict[str, Any]], entries: list[ImageEntry], index: int, reason: str
) -> None:
    entry = entries[index]
    failed.append({"index": index, "id": entry.image_id, "path": str(entry.path), "reason": reason})
    logger.warning("skipping %s: %s", entry.path, reason)


def _check_output(batch: RegionBatch, n: int, k: int, d: int) -> None:
    """An extractor that breaks its contract is a bug; say which part broke."""
    if batch.features.shape != (n, k, d) or batch.boxes.shape != (n, k, 4):
        raise RuntimeError(
            f"extractor returned features {batch.features.shape} boxes {batch.boxes.shape}, "
            f"expected ({n}, {k}, {d}) and ({n}, {k}, 4)"
        )
    if batch.counts.shape != (n,) or batch.counts.min() < 1 or batch.counts.max() > k:
        raise RuntimeError(f"extractor returned region counts outside [1, {k}]")


def _finish(
    layout: _Layout,
    entries: list[ImageEntry],
    extractor: RegionExtractor,
    dtype: str,
    signature: str,
    result: ExtractResult,
) -> None:
    """Write ids and the report, then move every file into place (report last)."""
    spec = extractor.spec
    atomic_write_text(layout.work("ids"), "".join(f"{e.image_id}\n" for e in entries))
    report = {
        "format": "chan-regions",
        "format_version": FORMAT_VERSION,
        "split": layout.split,
        "num_images": len(entries),
        "num_regions": spec.num_regions,
        "dim": spec.dim,
        "dtype": dtype,
        "extractor": spec.to_dict(),
        "failed": result.failed,
        "seconds": round(result.seconds, 3),
        "signature": signature,
    }
    atomic_write_text(layout.work("extract"), json.dumps(report, indent=2) + "\n")
    layout.final("extract").unlink(missing_ok=True)  # no old report may describe new rows
    for kind in ("ims", "counts", "boxes", "ids", "extract"):
        os.replace(layout.work(kind), layout.final(kind))
    shutil.rmtree(layout.work_dir)


def read_extract_report(out_dir: Path, split: str) -> dict[str, Any]:
    """The `{split}_extract.json` of a finished extraction (spec, failures, ...)."""
    path = _Layout(out_dir, split).final("extract")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `chan extract` for split {split!r}")
    return json.loads(path.read_text())
