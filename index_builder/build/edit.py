"""Changing an index: tombstone deletes, and rewrites (add, compact). Every change is
staged beside the index and swapped in with one atomic step (durable.py), so a reader
that opened the old files keeps a consistent view until it reloads, and a command killed
at any point leaves the old index or the new one."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from index_builder.format import durable
from index_builder.format import layout as fmt
from index_builder.format.metadata import MetadataStore

logger = logging.getLogger(__name__)


def delete_items(index: Path, image_ids: list[str], caption_ids: list[str]) -> dict[str, int]:
    """Tombstone images and captions; returns how many of each were newly deleted.
    Unknown ids raise ValueError and change nothing. The new state is staged beside the
    index (hard links to the unchanged files, an edited copy of the metadata, the new
    manifest) and swapped in with one atomic step (durable.commit_dir)."""
    durable.recover(index)
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
        fmt.write_manifest(staged, manifest)
        durable.commit_dir(staged, index)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    logger.info("%s: deleted %s", index, deleted)
    return deleted


# ---------------------------------------------------------------------- rewrite


REWRITE_BATCH = 512  # rows copied per step when an index is rewritten


def compact_index(index_path: Path, recall_queries: int = 100, progress=None) -> dict[str, int]:
    """Drop tombstoned rows: the stored embeddings of live rows are copied (never
    re-encoded) into a fresh index that replaces this one; the cells are retrained for
    the new size. Returns how many images and captions were removed."""
    durable.recover(index_path)
    return _rewrite(index_path, None, recall_queries, progress)


def add_items(
    index_path: Path,
    checkpoint: Path,
    captions: Path | None = None,
    features: Path | None = None,
    split: str = "gallery",
    images: Path | None = None,
    caption_split: str | None = None,
    batch_size: int = 128,
    recall_queries: int = 100,
    progress=None,
) -> dict[str, int]:
    """Add images and/or captions, encoded with the checkpoint that built the index.
    Existing rows are copied from their stored embeddings, not encoded again; tombstoned
    rows are dropped on the way. Returns the numbers added."""
    from index_builder.build.build import BuildOptions, open_gallery, read_captions_jsonl
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
    extra = _Extra(loaded, gallery, new_captions, batch_size)
    _rewrite(index_path, extra, recall_queries, progress)
    return {"images": len(new_ids), "captions": len(new_captions)}


class _Extra:
    """New rows for a rewrite: a gallery to encode and caption records to encode."""

    def __init__(self, loaded, gallery, captions, batch_size: int) -> None:
        self.loaded, self.gallery, self.captions, self.batch = loaded, gallery, captions, batch_size
        self.texts = [c.text for c in captions]
        self.lengths = np.array([len(loaded.tokenizer.ids(t)) for t in self.texts], np.int64)

    @property
    def counts(self) -> np.ndarray:
        if self.gallery is None:
            return np.zeros(0, np.int32)
        return self.gallery.counts[self.gallery.rows].astype(np.int32)


def _rewrite(index_path: Path, extra: _Extra | None, recall_queries: int, progress) -> dict:
    from index_builder.build.build import measure_recall
    from index_builder.build.writer import IndexWriter, WriterSpec
    from index_builder.format.reader import GalleryIndex

    index = GalleryIndex(index_path, checksums=True)
    manifest = index.manifest
    images = np.flatnonzero(index.live_images)
    captions = np.flatnonzero(index.live_captions)
    removed = {
        "images": index.num_images - len(images),
        "captions": index.num_captions - len(captions),
    }
    if extra is None and not any(removed.values()):
        index.close()
        return removed
    spec = WriterSpec(
        num_regions=index.num_regions, dim=index.dim, matching=manifest["matching"],
        checkpoint=manifest["checkpoint"], extractor=manifest["extractor"],
        storage=index.storage,
        build={**manifest["build"], "rewritten_from": manifest["counts"]},
    )  # fmt: skip
    lengths = np.diff(index.word_offsets)[captions]
    counts = index.counts[images].astype(np.int32)
    if extra is not None:
        counts, lengths = (
            np.concatenate([counts, extra.counts]),
            np.concatenate([lengths, extra.lengths]),
        )
    try:
        writer = IndexWriter(index_path, spec, counts, lengths, overwrite=True)
        _copy_rows(index, writer, images, captions)
        image_records, caption_records = _records(index, images, captions)
        if extra is not None:
            _append_new(extra, writer, image_records, caption_records, progress)
    finally:
        index.close()

    def measure(work: Path) -> dict:
        return measure_recall(work, recall_queries, 0)

    writer.finish(image_records, caption_records, measure, progress)
    return removed


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
    from index_builder.format.metadata import CaptionRecord, ImageRecord

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


def _append_new(extra: _Extra, writer, image_records: list, caption_records: list, progress):
    from index_builder.build.build import encode_captions, encode_images
    from index_builder.format.metadata import CaptionRecord, ImageRecord

    base_images, base_captions = len(image_records), len(caption_records)
    gallery = extra.gallery
    if gallery is not None:
        encode_images(extra.loaded, gallery, writer, extra.batch, progress, base=base_images)
        image_records += [ImageRecord(i, u) for i, u in zip(gallery.ids, gallery.uris, strict=True)]
    encode_captions(extra.loaded, extra.texts, writer, extra.batch, progress, base=base_captions)
    caption_records += [
        CaptionRecord(c.caption_id, c.text, c.image_id, c.metadata) for c in extra.captions
    ]
