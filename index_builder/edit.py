"""Changing an index in place: tombstone deletes. The metadata store is edited on a copy
that replaces the original together with an updated manifest, so a reader that opened
the old files keeps a consistent view until it reloads."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from index_builder import format as fmt
from index_builder.metadata import MetadataStore

logger = logging.getLogger(__name__)


def delete_items(index: Path, image_ids: list[str], caption_ids: list[str]) -> dict[str, int]:
    """Tombstone images and captions; returns how many of each were newly deleted.
    Unknown ids raise ValueError and change nothing."""
    manifest = fmt.read_manifest(index)
    fmt.verify_files(index, manifest, checksums=False)
    source = index / fmt.METADATA
    work = index / f".{fmt.METADATA}.edit-{os.getpid()}"
    shutil.copyfile(source, work)
    try:
        with MetadataStore.open(work, readonly=False) as store:
            deleted = {
                "images": store.delete_images(image_ids) if image_ids else 0,
                "captions": store.delete_captions(caption_ids) if caption_ids else 0,
            }
        manifest["files"][fmt.METADATA] = fmt.file_entries(index, [work.name])[work.name]
        os.replace(work, source)
    except BaseException:
        work.unlink(missing_ok=True)
        raise
    fmt.write_manifest(index, manifest)
    logger.info("%s: deleted %s", index, deleted)
    return deleted
