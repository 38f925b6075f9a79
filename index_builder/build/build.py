"""`chan index build`: encode a gallery with a checkpoint and write an index directory.

The gallery comes as region features (`chan extract` output) or as raw images, which are
extracted here with the checkpoint's own extractor spec (resumable, like `chan extract`).
Captions come as JSONL: {"id" (or "caption_id"), "text", "image_id"?, "metadata"?}."""

from __future__ import annotations

import json
import logging
import random
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from index_builder.build import recall
from index_builder.build.writer import IndexWriter, WriterSpec
from index_builder.format import durable
from index_builder.format.metadata import CaptionRecord, ImageRecord
from index_builder.format.reader import GalleryIndex
from index_builder.search.vectors import SearchParams, VectorSearcher
from model.checkpoint import LoadedCheckpoint, checkpoint_hash, load_checkpoint
from model.inference import read_regions
from model.scoring import FlatWords

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    """How to build; every field lands in the manifest's `build` section."""

    storage: str = "float16"  # float16 | int8
    word_cells: int | None = None  # None: by size (no cells for few words)
    region_cells: int | None = None  # None: by size (no cells for small galleries)
    residual_codes: bool = False  # PQ codes of every vector's residual (see residuals.py)
    batch_size: int = 128
    recall_queries: int = 100  # sample queries per direction for the measured recall
    seed: int = 0
    overwrite: bool = False
    shard: tuple[int, int] | None = None  # (i, n): keep only shard i of n (see shard_of)


@dataclass
class Gallery:
    """Image rows to index: features (memory-mapped) and what describes them."""

    features: np.ndarray  # (N, K, D)
    counts: np.ndarray  # (N,)
    boxes: np.ndarray | None  # (N, K, 4)
    ids: list[str]
    uris: list[str | None]
    extractor: dict[str, Any] | None
    rows: np.ndarray  # rows of `features` kept (failed extractions left out)


def build_index(
    checkpoint: Path,
    out: Path,
    captions: Path,
    features: Path | None = None,
    split: str = "gallery",
    images: Path | None = None,
    caption_split: str | None = None,
    image_metadata: Path | None = None,
    options: BuildOptions | None = None,
    progress: bool | None = None,
) -> Path:
    """Build the index at `out` (see the module docstring); returns out."""
    options = options or BuildOptions()
    durable.recover(out)  # what an interrupted build or edit of `out` left
    if out.exists() and not options.overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    loaded = load_checkpoint(checkpoint)
    gallery = open_gallery(loaded, features, split, images, out, options, progress)
    image_records = _image_records(gallery, image_metadata)
    caption_records = read_captions_jsonl(captions, set(gallery.ids), caption_split,
                                          options.shard)  # fmt: skip
    texts = [c.text for c in caption_records]
    lengths = np.array([len(loaded.tokenizer.ids(t)) for t in texts], dtype=np.int64)
    spec = WriterSpec(
        num_regions=gallery.features.shape[1],
        dim=loaded.config.embed_size,
        matching=_matching(loaded),
        checkpoint={
            "sha256": checkpoint_hash(checkpoint),
            "path": str(checkpoint),
            "config": loaded.config.to_dict(),
        },
        extractor=gallery.extractor,
        storage=options.storage,
        word_cells=options.word_cells,
        region_cells=options.region_cells,
        residual_codes=options.residual_codes,
        build={
            "batch_size": options.batch_size,
            "recall_queries": options.recall_queries,
            "seed": options.seed,
            "features": str(features) if features else None,
            "images": str(images) if images else None,
            "captions": str(captions),
            "shard": list(options.shard) if options.shard else None,
        },
    )
    writer = IndexWriter(out, spec, gallery.counts[gallery.rows], lengths, options.overwrite)
    encode_images(loaded, gallery, writer, options.batch_size, progress)
    encode_captions(loaded, texts, writer, options.batch_size, progress)

    def measure(work: Path) -> dict[str, Any]:
        return measure_recall(work, options.recall_queries, options.seed)

    result = writer.finish(image_records, caption_records, measure, progress)
    shutil.rmtree(_extract_dir(out), ignore_errors=True)
    return result


def _matching(loaded: LoadedCheckpoint) -> dict[str, Any]:
    m = loaded.model.matching
    return {
        "coding": m.coding,
        "pooling": m.pooling,
        "pooling_temperature": m.pooling_temperature,
        "soft_temperature": m.soft_temperature,
    }


# ---------------------------------------------------------------------- gallery input


def open_gallery(
    loaded: LoadedCheckpoint,
    features: Path | None,
    split: str,
    images: Path | None,
    out: Path,
    options: BuildOptions,
    progress: bool | None,
) -> Gallery:
    if features is None and images is None:
        raise ValueError("give the gallery as --features DIR (chan extract output) or --images")
    entries = None
    if images is not None:
        from model.features.images import list_images

        entries = list_images(images)
        if options.shard and features is None:  # extract only this shard's images
            entries = [e for e in entries if in_shard(e.image_id, options.shard)]
    if features is None:
        features = _extract(loaded, entries, out, split, options, progress)
    gallery = _read_features(features, split, loaded)
    if options.shard:
        gallery = _keep_shard(gallery, options.shard)
    if entries is not None:
        by_id = {e.image_id: str(e.path) for e in entries}
        missing = [i for i in gallery.ids if i not in by_id]
        if missing:
            raise ValueError(
                f"{len(missing)} feature ids have no image in {images} (first: {missing[0]!r})"
            )
        gallery.uris = [by_id[i] for i in gallery.ids]
    return gallery


def shard_of(item_id: str, shards: int) -> int:
    """The shard of an image (or of an unlinked caption): a stable hash of its id, so
    every process of a sharded build agrees without talking to the others."""
    return zlib.crc32(item_id.encode("utf-8")) % shards


def in_shard(item_id: str, shard: tuple[int, int]) -> bool:
    return shard_of(item_id, shard[1]) == shard[0]


def parse_shard(text: str) -> tuple[int, int]:
    """ "I/N" -> (I, N), 0 <= I < N."""
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise ValueError(f"--shard {text!r}: write I/N with 0 <= I < N, e.g. 0/4")
    return int(index), int(count)


def _keep_shard(gallery: Gallery, shard: tuple[int, int]) -> Gallery:
    keep = [i for i, image_id in enumerate(gallery.ids) if in_shard(image_id, shard)]
    if not keep:
        raise ValueError(f"shard {shard[0]}/{shard[1]} holds no image of this gallery")
    logger.info("shard %d/%d: %d of %d images", *shard, len(keep), len(gallery.ids))
    gallery.ids = [gallery.ids[i] for i in keep]
    gallery.uris = [gallery.uris[i] for i in keep]
    gallery.rows = gallery.rows[keep]
    return gallery


def _extract_dir(out: Path) -> Path:
    return out.with_name(out.name + ".extract")


def _extract(loaded, entries, out: Path, split: str, options: BuildOptions, progress) -> Path:
    """Raw images -> features with the checkpoint's extractor (resumable)."""
    from model.features.extract import extract_split
    from model.features.extractors.base import load_extractor

    if not loaded.extractor:
        raise ValueError(
            "the checkpoint records no extractor spec, so raw images cannot be encoded the "
            "way it was trained; extract them yourself and pass --features"
        )
    work = _extract_dir(out)
    work.mkdir(parents=True, exist_ok=True)
    extractor = load_extractor(loaded.extractor)
    result = extract_split(entries, extractor, work, split, batch_size=32, progress=progress)
    if result.failed:
        logger.warning("%d gallery images could not be read and are left out", len(result.failed))
    return work


def _read_features(folder: Path, split: str, loaded: LoadedCheckpoint) -> Gallery:
    counts_path = folder / f"{split}_counts.npy"
    regions, counts = read_regions(
        folder / f"{split}_ims.npy", counts_path if counts_path.exists() else None,
        loaded.config.img_dim, allow_empty=True,
    )  # fmt: skip
    boxes_path = folder / f"{split}_boxes.npy"
    boxes = np.load(boxes_path, mmap_mode="r") if boxes_path.exists() else None
    ids_path = folder / f"{split}_ids.txt"
    ids = (
        ids_path.read_text().split() if ids_path.exists() else [str(i) for i in range(len(counts))]
    )
    if len(ids) != len(counts):
        raise ValueError(f"{ids_path} lists {len(ids)} ids for {len(counts)} feature rows")
    spec = _extract_spec(folder / f"{split}_extract.json")
    _check_extractor(spec, loaded.extractor, folder / f"{split}_extract.json")
    rows = np.flatnonzero(counts > 0)
    if len(rows) < len(counts):
        logger.warning("%d images failed extraction and are left out", len(counts) - len(rows))
    if len(rows) == 0:
        raise ValueError(f"{folder}/{split}_ims.npy has no usable image (all counts are 0)")
    return Gallery(regions, counts, boxes, [ids[r] for r in rows], [None] * len(rows), spec, rows)


def _extract_spec(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("extractor")


def _check_extractor(features_spec, checkpoint_spec, where: Path) -> None:
    """Features must come from the extractor the model was trained on."""
    if not features_spec or not checkpoint_spec:
        return
    keys = ("name", "num_regions", "dim", "weights_sha256", "version")
    differ = [k for k in keys if features_spec.get(k) != checkpoint_spec.get(k)]
    if differ:
        raise ValueError(
            f"{where}: features were extracted differently from the checkpoint's training "
            f"data ({', '.join(differ)} differ); re-extract with the checkpoint's extractor"
        )


def _image_records(gallery: Gallery, metadata_path: Path | None) -> list[ImageRecord]:
    extra: dict[str, dict] = {}
    if metadata_path is not None:
        for number, line in enumerate(metadata_path.read_text().splitlines(), 1):
            if line.strip():
                item = _json_line(line, metadata_path, number)
                image_id = str(item.pop("image_id", "")) or None
                if image_id is None:
                    raise ValueError(f"{metadata_path}:{number}: needs an image_id")
                extra[image_id] = item.get("metadata", item)
    return [
        ImageRecord(image_id=i, uri=u, metadata=extra.get(i))
        for i, u in zip(gallery.ids, gallery.uris, strict=True)
    ]


def read_captions_jsonl(
    path: Path, image_ids: set[str], split: str | None = None, shard: tuple[int, int] | None = None
) -> list[CaptionRecord]:
    """Caption lines -> records, validated (one-line errors with the line number). With a
    shard, only captions of its images (or, when unlinked, of its own id) are kept."""
    if not path.is_file():
        raise FileNotFoundError(f"caption file {path} not found")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        item = _json_line(line, path, number)
        if split is not None and item.get("split") != split:
            continue
        caption_id = item.get("id", item.get("caption_id"))
        text = item.get("text")
        if caption_id is None or not isinstance(text, str) or not text.strip():
            raise ValueError(f'{path}:{number}: needs an "id" and a non-empty "text"')
        image_id = item.get("image_id")
        if shard and not in_shard(str(caption_id if image_id is None else image_id), shard):
            continue
        if image_id is not None and str(image_id) not in image_ids:
            raise ValueError(
                f"{path}:{number}: image_id {image_id!r} is not in the gallery; fix the link, "
                "drop it, or pass --caption-split to index one split's captions"
            )
        records.append(CaptionRecord(str(caption_id), text.strip(),
                                     None if image_id is None else str(image_id),
                                     item.get("metadata")))  # fmt: skip
    if not records:
        raise ValueError(f"{path} holds no captions" + (f" of split {split!r}" if split else ""))
    return records


def _json_line(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
    if not isinstance(item, dict):
        raise ValueError(f"{path}:{number}: each line must be a JSON object")
    return item


# ---------------------------------------------------------------------- encoding


@torch.inference_mode()
def encode_images(
    loaded, gallery: Gallery, writer: IndexWriter, batch: int, progress, base: int = 0
) -> None:
    """Encode the gallery's rows into writer rows base.., resuming after the rows the
    writer already holds."""
    total = len(gallery.rows)
    done = max(0, writer.images_done - base)
    bar = tqdm(total=total, initial=done, desc="encode images", unit="img",
               disable=progress is False)  # fmt: skip
    with bar:
        for start in range(done, total, batch):
            rows = gallery.rows[start : start + batch]
            writer.write_images(base + start, *encode_gallery_rows(loaded, gallery, rows))
            bar.update(len(rows))


@torch.inference_mode()
def encode_gallery_rows(
    loaded: LoadedCheckpoint, gallery: Gallery, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows -> (B, K, d) region embeddings and (B, K, 4) boxes (whole-image
    boxes when the features came without any)."""
    feats = torch.from_numpy(np.asarray(gallery.features[rows], dtype=np.float32))
    counts = torch.from_numpy(gallery.counts[rows].astype(np.int64))
    emb = loaded.model.encode_images(feats, counts).numpy()
    if gallery.boxes is not None:
        return emb, np.asarray(gallery.boxes[rows], dtype=np.float32)
    return emb, np.tile(np.array([0, 0, 1, 1], np.float32), (len(rows), emb.shape[1], 1))


@torch.inference_mode()
def encode_captions(
    loaded, texts: list[str], writer: IndexWriter, batch: int, progress, base: int = 0
) -> None:
    """Encode captions into writer captions base.., resuming like encode_images."""
    done = max(0, writer.captions_done - base)
    bar = tqdm(total=len(texts), initial=done, desc="encode captions", unit="cap",
               disable=progress is False)  # fmt: skip
    with bar:
        for start in range(done, len(texts), batch):
            emb, lens = loaded.encode_captions(texts[start : start + batch])
            flat = FlatWords.from_padded(emb, lens).vectors.numpy()
            writer.write_captions(base + start, flat)
            bar.update(len(lens))


# ---------------------------------------------------------------------- recall


def measure_recall(work: Path, queries: int, seed: int) -> dict[str, Any]:
    """Recall@10 of shortlist + rerank against exact search on sample queries drawn from
    the index itself: stored caption word vectors as text queries (what the encoder
    made of those captions) and stored images as image queries."""
    index = GalleryIndex(work, checksums=False)
    try:
        searcher = VectorSearcher(index, SearchParams())
        rng = random.Random(seed)
        live_captions = np.flatnonzero(index.live_captions).tolist()
        caption_rows = rng.sample(live_captions, min(queries, len(live_captions)))
        text_queries = [index.captions(np.array([row])).vectors for row in caption_rows]
        live_images = np.flatnonzero(index.live_images).tolist()
        image_rows = rng.sample(live_images, min(queries, len(live_images)))
        regions, counts = index.images(np.array(image_rows, dtype=np.int64))
        image_queries = [regions[i, : int(counts[i])] for i in range(len(image_rows))]
        return recall.measure(searcher, text_queries, image_queries, k=10)
    finally:
        index.close()
