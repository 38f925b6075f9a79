"""Changing an index: tombstone deletes, new segments (add), and merges (compact).

Segments are immutable. `add` writes one new segment whose vectors are assigned to the
index's existing cells, so it costs time in proportion to what is added; `compact`
merges every segment into one, drops tombstoned rows, and retrains a side's cells only
when the vectors added since training fit them worse than the training data did (the
drift, see RETRAIN_DRIFT in writer.py). Every change is staged beside the index (the
unchanged files as hard links) and swapped in with one atomic step (durable.py), with
a higher manifest `generation`; a reader that opened the old files keeps a consistent
view until it reloads, and a command killed at any point leaves the old index or the
new one."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from index_builder.build.cells import cell_count
from index_builder.build.writer import (
    RETRAIN_DRIFT,
    IndexWriter,
    KeptCells,
    SegmentWriter,
    WriterSpec,
)
from index_builder.format import durable
from index_builder.format import layout as fmt
from index_builder.format.manifest import (
    CENTROID_FILES,
    CODEBOOK_FILES,
    drift,
    next_generation,
)
from index_builder.format.metadata import CaptionRecord, ImageRecord, MetadataStore

logger = logging.getLogger(__name__)


def delete_items(index: Path, image_ids: list[str], caption_ids: list[str]) -> dict[str, int]:
    """Tombstone images and captions; returns how many of each were newly deleted.
    Unknown ids raise ValueError and change nothing. The new state is staged beside the
    index (hard links to the unchanged files, an edited copy of the metadata, the new
    manifest) and swapped in with one atomic step (durable.commit_dir)."""
    durable.recover(index)
    with durable.exclusive(index):
        return _delete_locked(index, image_ids, caption_ids)


def _delete_locked(index: Path, image_ids: list[str], caption_ids: list[str]) -> dict[str, int]:
    manifest = fmt.read_manifest(index)
    fmt.verify_files(index, manifest, checksums=False)
    staged = durable.staged_path(index)
    try:
        durable.link_tree(index, staged, skip={fmt.METADATA, fmt.MANIFEST})
        shutil.copyfile(index / fmt.METADATA, staged / fmt.METADATA)
        with MetadataStore.open(staged / fmt.METADATA, readonly=False) as store:
            deleted = {
                "images": store.delete_images(image_ids) if image_ids else 0,
                "captions": store.delete_captions(caption_ids) if caption_ids else 0,
            }
        manifest["files"][fmt.METADATA] = fmt.file_entries(staged, [fmt.METADATA])[fmt.METADATA]
        manifest["generation"] = next_generation(manifest)
        fmt.write_manifest(staged, manifest)
        durable.commit_dir(staged, index)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    logger.info("%s: deleted %s", index, deleted)
    return deleted


# ---------------------------------------------------------------------- add


def add_items(
    index_path: Path,
    checkpoint: Path,
    captions: Path | None = None,
    features: Path | None = None,
    split: str = "gallery",
    images: Path | None = None,
    caption_split: str | None = None,
    batch_size: int = 128,
    progress=None,
) -> dict[str, Any]:
    """Add images and/or captions, encoded with the checkpoint that built the index, as
    one new segment. Returns the numbers added and the new segment's figures."""
    from index_builder.build.build import (
        BuildOptions,
        encode_captions,
        encode_images,
        open_gallery,
        read_captions_jsonl,
    )
    from model.checkpoint import checkpoint_hash, load_checkpoint

    durable.recover(index_path)
    manifest = fmt.read_manifest(index_path)
    fmt.check_checkpoint(manifest, checkpoint_hash(checkpoint), index_path)
    loaded = load_checkpoint(checkpoint)
    gallery = None
    if features is not None or images is not None:
        gallery = open_gallery(
            loaded, features, split, images, index_path, BuildOptions(), progress
        )
    with MetadataStore.open(index_path / fmt.METADATA) as store:
        new_ids = [] if gallery is None else gallery.ids
        clash = [
            i for i, row in zip(new_ids, store.image_rows(new_ids), strict=True) if row is not None
        ]
        if clash:
            raise ValueError(f"image id {clash[0]!r} is already in the index; delete it first")
        live = store.live_mask("images")
        known = {r.image_id for r in store.images(np.flatnonzero(live).tolist())}
    new_captions = []
    if captions is not None:
        new_captions = read_captions_jsonl(captions, known | set(new_ids), caption_split)
    if gallery is None and not new_captions:
        raise ValueError("nothing to add: give --features / --images and/or --captions")
    texts = [c.text for c in new_captions]
    lengths = np.array([len(loaded.tokenizer.ids(t)) for t in texts], np.int64)
    counts = np.zeros(0, np.int32) if gallery is None else gallery.counts[gallery.rows]

    def fill(writer: SegmentWriter) -> None:
        if gallery is not None:
            encode_images(loaded, gallery, writer, batch_size, progress)
        encode_captions(loaded, texts, writer, batch_size, progress)

    image_records = [] if gallery is None else [
        ImageRecord(i, u) for i, u in zip(gallery.ids, gallery.uris, strict=True)
    ]  # fmt: skip
    caption_records = [
        CaptionRecord(c.caption_id, c.text, c.image_id, c.metadata) for c in new_captions
    ]
    return append_segment(
        index_path, counts, lengths, fill, image_records, caption_records, progress
    )


def append_segment(
    index_path: Path,
    region_counts: np.ndarray,
    caption_lengths: np.ndarray,
    fill: Callable[[SegmentWriter], None],
    image_records: list[ImageRecord],
    caption_records: list[CaptionRecord],
    progress=None,
) -> dict[str, Any]:
    """Stage the index with one more segment, which `fill` writes (images and captions
    in order), its vectors assigned to the existing cells, the records appended to the
    metadata, and commit it with the next generation. The old segments are hard links:
    the cost is the new rows, the metadata copy and the commit."""
    durable.recover(index_path)
    with durable.exclusive(index_path):
        return _append_locked(index_path, region_counts, caption_lengths, fill, image_records,
                              caption_records, progress)  # fmt: skip


def _append_locked(index_path, region_counts, caption_lengths, fill, image_records,
                   caption_records, progress) -> dict[str, Any]:  # fmt: skip
    manifest = fmt.read_manifest(index_path)
    fmt.verify_files(index_path, manifest, checksums=False)
    if len(image_records) != len(region_counts) or len(caption_records) != len(caption_lengths):
        raise ValueError("one metadata record per new image and per new caption is needed")
    started = time.perf_counter()
    numbers = [int(entry["name"][3:]) for entry in manifest["segments"]]
    name = fmt.segment_name(max(numbers) + 1)
    staged = durable.staged_path(index_path)
    try:
        durable.link_tree(index_path, staged, skip={fmt.METADATA, fmt.MANIFEST})
        shutil.copyfile(index_path / fmt.METADATA, staged / fmt.METADATA)
        spec = WriterSpec(num_regions=manifest["num_regions"], dim=manifest["dim"],
                          matching=manifest["matching"], checkpoint=manifest["checkpoint"],
                          storage=manifest["storage"])  # fmt: skip
        writer = SegmentWriter(staged / name, spec, region_counts, caption_lengths,
                               first_image=manifest["counts"]["images"])  # fmt: skip
        writer.preallocate()
        fill(writer)
        if not writer.complete:
            raise ValueError(f"the new segment {name} was not completely written")
        similarity = {}
        for side, cells in manifest["cells"].items():
            centroids = np.load(staged / CENTROID_FILES[side])
            codebook = np.load(staged / CODEBOOK_FILES[side]) if cells.get("residual") else None
            similarity[side] = round(writer.assign_cells(side, centroids, codebook, progress), 6)
        with MetadataStore.open(staged / fmt.METADATA, readonly=False) as store:
            store.add_images(image_records)
            store.add_captions(caption_records)
        entry = {"name": name, "images": len(region_counts), "captions": len(caption_lengths),
                 "similarity": similarity}  # fmt: skip
        _grow_manifest(manifest, entry, writer)
        names = [fmt.METADATA] + [f"{name}/{f}" for f in writer.files()]
        manifest["files"].update(fmt.file_entries(staged, names))
        fmt.write_manifest(staged, manifest)
        durable.commit_dir(staged, index_path)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    seconds = round(time.perf_counter() - started, 2)
    logger.info("%s: segment %s added (%d images, %d captions) in %.1f s", index_path, name,
                entry["images"], entry["captions"], seconds)  # fmt: skip
    return {"images": entry["images"], "captions": entry["captions"], "segment": name,
            "generation": manifest["generation"], "seconds": seconds,
            "drift": drift(manifest)}  # fmt: skip


def _grow_manifest(manifest: dict[str, Any], entry: dict[str, Any], writer) -> None:
    counts = manifest["counts"]
    counts["images"] += entry["images"]
    counts["captions"] += entry["captions"]
    counts["region_vectors"] += int(writer.counts.sum())
    counts["word_vectors"] += int(writer.lengths.sum())
    manifest["segments"].append(entry)
    manifest["generation"] = next_generation(manifest)


# ---------------------------------------------------------------------- compact


REWRITE_BATCH = 512  # rows copied per step when segments are merged


def compact_index(index_path: Path, recall_queries: int = 100, progress=None) -> dict[str, Any]:
    """Merge every segment into one and drop tombstoned rows: the stored embeddings of
    live rows are copied (never re-encoded) into a fresh index that replaces this one.
    A side's cells carry over unless they drifted (see drift()) or the side has grown
    large enough to need cells it lacks; then they are retrained. Returns what was
    removed, merged and retrained."""
    durable.recover(index_path)
    with durable.exclusive(index_path):
        return _compact_locked(index_path, recall_queries, progress)


def _compact_locked(index_path: Path, recall_queries: int, progress) -> dict[str, Any]:
    from index_builder.build.build import measure_recall
    from index_builder.format.reader import GalleryIndex

    index = GalleryIndex(index_path, checksums=True)
    manifest = index.manifest
    images = np.flatnonzero(index.live_images)
    captions = np.flatnonzero(index.live_captions)
    report = {
        "images": index.num_images - len(images),
        "captions": index.num_captions - len(captions),
        "segments": len(manifest["segments"]),
        "drift": drift(manifest),
    }
    retrain = _sides_to_retrain(index, manifest, report["drift"], images, captions)
    report["retrained"] = retrain
    if not (report["images"] or report["captions"] or retrain) and report["segments"] == 1:
        index.close()
        return report
    if not len(images):
        index.close()
        raise ValueError(f"{index_path}: every image is deleted; an index needs at least one")
    spec = WriterSpec(
        num_regions=index.num_regions, dim=index.dim, matching=manifest["matching"],
        checkpoint=manifest["checkpoint"], extractor=manifest["extractor"],
        storage=index.storage, region_cells=_retrained_cells(manifest, "regions", retrain),
        word_cells=_retrained_cells(manifest, "words", retrain),
        residual_codes=any(cells.get("residual") for cells in manifest["cells"].values()),
        build={**manifest["build"], "rewritten_from": manifest["counts"]},
    )  # fmt: skip
    lengths = np.diff(index.word_offsets)[captions]
    try:
        writer = IndexWriter(index_path, spec, index.counts[images], lengths, overwrite=True)
        _copy_rows(index, writer, images, captions)
        image_records, caption_records = _records(index, images, captions)
        kept = _kept_cells(index, manifest, images, captions, retrain)
    finally:
        index.close()

    def measure(work: Path) -> dict:
        return measure_recall(work, recall_queries, 0)

    writer.finish(image_records, caption_records, measure, progress, kept,
                  generation=next_generation(manifest))  # fmt: skip
    return report


def _sides_to_retrain(index, manifest: dict, drifted: dict[str, float], images: np.ndarray,
                      captions: np.ndarray) -> list:  # fmt: skip
    """Sides whose cells drifted past their threshold, or that have no cells and now
    hold enough vectors to want them."""
    sides = []
    for side, cells in manifest["cells"].items():
        if drifted[side] > (cells.get("retrain_drift") or RETRAIN_DRIFT):
            sides.append(side)
    vectors = {"regions": int(index.counts[images].sum()),
               "words": int(np.diff(index.word_offsets)[captions].sum())}  # fmt: skip
    for side, count in vectors.items():
        if side not in manifest["cells"] and cell_count(count):
            sides.append(side)
    return sides


def _retrained_cells(manifest: dict, side: str, retrain: list) -> int | None:
    """Cells for a side that is retrained: as many as it had (a drift changes where the
    cells lie, not how many), or by size for a side that had none (None)."""
    if side in retrain and side in manifest["cells"]:
        return manifest["cells"][side]["cells"]
    return None


def _kept_cells(index, manifest: dict, images: np.ndarray, captions: np.ndarray,
                retrain: list) -> dict:  # fmt: skip
    """The centroids, codebook and the live rows' codes of every side with cells not
    retrained."""
    from index_builder.search.vectors import item_positions

    kept = {}
    for side in manifest["cells"]:
        if side in retrain:
            continue
        if side == "regions":
            live = item_positions(index.region_starts, images)[0]
            codes, centroids = index.region_codes[live], index.region_centroids
            stored = index.region_residuals
        else:
            live = item_positions(index.word_offsets, captions)[0]
            codes, centroids = index.word_codes[live], index.word_centroids
            stored = index.word_residuals
        codebook, residuals = (None, None) if stored is None else (stored[0], stored[1][live])
        kept[side] = KeptCells(centroids, codes, codebook, residuals, manifest["cells"][side])
    return kept


def _copy_rows(index, writer, images: np.ndarray, captions: np.ndarray) -> None:
    for start in range(writer.images_done, len(images), REWRITE_BATCH):
        rows = images[start : start + REWRITE_BATCH]
        regions, _ = index.images(rows)
        boxes = np.stack([index.boxes(int(r)) for r in rows])
        writer.write_images(start, regions.numpy(), boxes)
    for start in range(writer.captions_done, len(captions), REWRITE_BATCH):
        words = index.captions(captions[start : start + REWRITE_BATCH])
        writer.write_captions(start, words.vectors.numpy())


def _records(index, images: np.ndarray, captions: np.ndarray):
    image_records = [
        ImageRecord(r.image_id, r.uri, r.metadata) for r in index.metadata.images(images.tolist())
    ]
    live_ids = {r.image_id for r in image_records}
    caption_records = [
        CaptionRecord(r.caption_id, r.text, r.image_id if r.image_id in live_ids else None,
                      r.metadata)  # a link to a deleted image is dropped
        for r in index.metadata.captions(captions.tolist())
    ]  # fmt: skip
    return image_records, caption_records
