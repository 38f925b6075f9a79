"""`chan index ...`: build, inspect, verify and edit index directories."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from model.errors import first_line

logger = logging.getLogger(__name__)


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("index", help="build and manage search indexes")
    sub = parser.add_subparsers(dest="index_command", required=True, metavar="INDEX_COMMAND")
    _add_build(sub)
    _add_info(sub)
    _add_verify(sub)
    _add_delete(sub)
    _add_add(sub)
    _add_compact(sub)


def _add_build(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "build",
        help="encode a gallery into an index directory",
        description="Encode gallery images (region features from `chan extract`, or raw "
        "images extracted with the checkpoint's extractor) and captions (JSONL: id, text, "
        "image_id?, metadata?) into OUT. Written in OUT.partial and renamed when complete "
        "and verified; an interrupted build resumes.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory")
    parser.add_argument("--features", type=Path, help="folder with SPLIT_ims.npy (+ counts, ...)")
    parser.add_argument("--split", default="gallery", help="split name of the features")
    parser.add_argument("--images", type=Path, help="image folder or list (URIs, or to extract)")
    parser.add_argument("--captions", type=Path, required=True, help="captions JSONL")
    parser.add_argument("--caption-split", help="keep only caption lines with this `split`")
    parser.add_argument("--image-metadata", type=Path, help="JSONL: image_id + metadata")
    parser.add_argument("--out", type=Path, required=True, help="index directory to write")
    parser.add_argument("--storage", choices=["float16", "int8"], default="float16")
    parser.add_argument(
        "--word-cells", type=int, help="k-means cells over caption words (default: by size)"
    )
    parser.add_argument(
        "--region-cells", type=int, help="k-means cells over region vectors (default: by size)"
    )
    parser.add_argument("--residual-codes", action="store_true",
                        help="also store 4-bit PQ codes of every vector's residual from its "
                        "cell (32 B per vector at d=1024) and score the second search stage "
                        "with them; measured not to pay on the synthetic benchmark (README, "
                        "Search figures)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--recall-queries", type=int, default=100, help="per direction")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing index")
    parser.add_argument("--shard", metavar="I/N",
                        help="build shard I of N (images by a stable hash of their id); "
                        "run one process per shard, serve the shards' parent folder")  # fmt: skip
    parser.set_defaults(func=_run_build)


def _run_build(args: argparse.Namespace) -> int:
    from index_builder.build.build import BuildOptions, build_index, parse_shard
    from index_builder.format.durable import disk_full_reported

    if args.batch_size < 1:
        raise ValueError("--batch-size must be positive")
    options = BuildOptions(
        storage=args.storage,
        word_cells=args.word_cells,
        region_cells=args.region_cells,
        residual_codes=args.residual_codes,
        batch_size=args.batch_size,
        recall_queries=args.recall_queries,
        overwrite=args.overwrite,
        shard=parse_shard(args.shard) if args.shard else None,
    )
    with disk_full_reported(args.out):
        out = build_index(
            args.checkpoint, args.out, args.captions, features=args.features, split=args.split,
            images=args.images, caption_split=args.caption_split,
            image_metadata=args.image_metadata, options=options,
        )  # fmt: skip
    print(summary(out))
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("info", help="what an index holds (manifest summary)")
    parser.add_argument("index", type=Path)
    parser.add_argument("--json", action="store_true", help="print the whole manifest")
    parser.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from index_builder.format.layout import read_manifest

    manifest = read_manifest(args.index)
    print(json.dumps(manifest, indent=2) if args.json else summary(args.index))
    return 0


def summary(path: Path) -> str:
    """A few lines a person reads: counts, sizes, indexes, measured recall."""
    from index_builder.format.layout import read_manifest
    from index_builder.format.manifest import code_bytes, drift

    m = read_manifest(path)
    drifted = drift(m)
    c = m["counts"]
    size = sum(f["bytes"] for f in m.get("files", {}).values())
    lines = [
        f"{path}: {c['images']:,} images ({c['region_vectors']:,} region vectors), "
        f"{c['captions']:,} captions ({c['word_vectors']:,} word vectors)",
        f"  K={m['num_regions']} d={m['dim']} storage={m['storage']}, "
        f"{size / 1e6:,.1f} MB on disk, {len(m['segments'])} segment(s), "
        f"generation {m.get('generation', 1)}",
        f"  checkpoint {m['checkpoint']['sha256'][:12]} ({m['checkpoint'].get('path')})",
    ]
    for side in ("regions", "words"):
        cells = m["cells"].get(side)
        shown = f"{cells['cells']:,} k-means cells" if cells else "no cells (scanned exactly)"
        if cells and cells.get("residual"):
            residual = cells["residual"]
            shown += (f", residual codes of {code_bytes(residual['subspaces'])} B per vector "
                      f"({residual['subspaces']} 4-bit slices, error {residual['error']:.3f} "
                      f"of the bare cell's)")  # fmt: skip
        if cells and cells.get("retrain_drift"):
            shown += f", drift {drifted[side]:.3f} (compact retrains past {cells['retrain_drift']})"
        lines.append(f"  {side}: {shown}")
    for direction in ("text_to_image", "image_to_text"):
        if direction in m.get("recall", {}):
            r = m["recall"][direction]
            lines.append(f"  shortlist recall@{m['recall']['k']} {direction}: "
                         f"{r['recall_at_k']:.3f} ({r['queries']} queries)")  # fmt: skip
    return "\n".join(lines)


def _add_verify(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "verify",
        help="check checksums, counts and consistency",
        description="Recompute every file's sha256, and check that array shapes, cell "
        "centroids and codes, metadata rows and ids agree with each other and with the manifest.",
    )
    parser.add_argument("index", type=Path)
    parser.add_argument("--checkpoint", type=Path, help="also check it built the index")
    parser.set_defaults(func=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    from index_builder.build.verify import verify_index
    from index_builder.format.durable import recover
    from index_builder.format.layout import IndexFormatError

    try:
        for line in recover(args.index):  # an interrupted update is undone first
            print(f"recovered: {line}")
    except OSError as exc:  # a read-only copy: verify what is there
        print(f"could not undo an interrupted update ({exc.strerror}); verifying as it is")
    try:
        checks = verify_index(args.index, args.checkpoint)
    except (OSError, ValueError):
        raise  # one line from `chan`: IndexFormatError is a ValueError
    except Exception as exc:  # never a traceback: whatever broke, say which index and how
        raise IndexFormatError(f"{args.index} could not be verified ({type(exc).__name__}: "
                               f"{first_line(exc)}); rebuild the index") from exc  # fmt: skip
    for line in checks:
        print(f"ok  {line}")
    print(f"{args.index}: verified")
    return 0


def _add_delete(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "delete",
        help="tombstone images or captions (search skips them; compact drops them)",
    )
    parser.add_argument("index", type=Path)
    parser.add_argument("--image", action="append", default=[], help="image id (repeatable)")
    parser.add_argument("--caption", action="append", default=[], help="caption id (repeatable)")
    parser.add_argument("--ids-file", type=Path, help="file of `image <id>` / `caption <id>` lines")
    parser.set_defaults(func=_run_delete)


def _run_delete(args: argparse.Namespace) -> int:
    from index_builder.build.edit import delete_items
    from index_builder.format.durable import disk_full_reported

    images, captions = list(args.image), list(args.caption)
    if args.ids_file:
        for number, line in enumerate(args.ids_file.read_text().splitlines(), 1):
            kind, _, item = line.strip().partition(" ")
            if kind not in {"image", "caption"} or not item:
                raise ValueError(f"{args.ids_file}:{number}: write `image <id>` or `caption <id>`")
            (images if kind == "image" else captions).append(item.strip())
    if not images and not captions:
        raise ValueError("nothing to delete: give --image, --caption or --ids-file")
    with disk_full_reported(args.index):
        deleted = delete_items(args.index, images, captions)
    print(f"deleted {deleted['images']} images and {deleted['captions']} captions in {args.index}")
    return 0


def _add_add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "add",
        help="add images and/or captions (encoded with the index's checkpoint)",
        description="The new rows are encoded and written as one new segment, their vectors "
        "assigned to the index's existing cells: the time grows with what is added, not "
        "with the index. A running `chan serve` picks the new generation up by itself. "
        "`chan index compact` merges segments and retrains cells that have drifted.",
    )
    parser.add_argument("index", type=Path)
    parser.add_argument("--checkpoint", type=Path, required=True, help="the index's checkpoint")
    parser.add_argument("--features", type=Path, help="folder with SPLIT_ims.npy of new images")
    parser.add_argument("--split", default="gallery")
    parser.add_argument("--images", type=Path, help="new images (folder or list)")
    parser.add_argument("--captions", type=Path, help="captions JSONL to add")
    parser.add_argument("--caption-split", help="keep only caption lines with this `split`")
    parser.set_defaults(func=_run_add)


def _run_add(args: argparse.Namespace) -> int:
    from index_builder.build.edit import add_items
    from index_builder.format.durable import disk_full_reported

    with disk_full_reported(args.index):
        added = add_items(
            args.index, args.checkpoint, captions=args.captions, features=args.features,
            split=args.split, images=args.images, caption_split=args.caption_split,
        )  # fmt: skip
    drift = ", ".join(f"{side} {value:.3f}" for side, value in added["drift"].items())
    print(f"added {added['images']} images and {added['captions']} captions to {args.index} "
          f"as segment {added['segment']} (generation {added['generation']}, "
          f"{added['seconds']:.1f} s{'; cell drift ' + drift if drift else ''})")  # fmt: skip
    return 0


def _add_compact(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "compact",
        help="merge segments and drop deleted rows for good",
        description="Every segment is merged into one and tombstoned rows are dropped. A "
        "side's cells are kept unless the vectors added since they were trained fit them "
        "worse than the training data by more than the manifest's retrain_drift (or the "
        "side has grown large enough to need cells); then they are retrained.",
    )
    parser.add_argument("index", type=Path)
    parser.set_defaults(func=_run_compact)


def _run_compact(args: argparse.Namespace) -> int:
    from index_builder.build.edit import compact_index
    from index_builder.format.durable import disk_full_reported

    with disk_full_reported(args.index):
        removed = compact_index(args.index)
    retrained = ", ".join(removed["retrained"]) or "none"
    print(f"removed {removed['images']} images and {removed['captions']} captions from "
          f"{args.index}; merged {removed['segments']} segment(s); cells retrained: "
          f"{retrained}")  # fmt: skip
    return 0
