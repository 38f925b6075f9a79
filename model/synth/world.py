"""Deterministic synthetic world of captioned shape images, for the demo and the tests.

Every image shows 1-5 flat, saturated shapes (circle, square, triangle, star, diamond,
cross) in one of nine colours and three sizes on a light, low-saturation, gently shaded
and textured background, so that a region extractor can segment objects by colour.
Every image gets five captions: most name every object with its colour and shape; some
add size words, spatial relations, left-to-right orders, counts or positions, and all of
those are true of the scene's geometry (relations are used only with a clear margin).

Binding twins: a bag of words must not solve the task, so about 20% of the scenes are
*binding twins* of the scene just before them: the same shapes and the same colours,
with the colours permuted among the objects ("a red circle and a blue square" against
"a blue circle and a red square"), placed anew. Twins are pairs (2k, 2k+1), and split
sizes are made even, so a twin lies in the same split as its original (in all but
worlds too small to allow it).

Determinism: image i depends only on (seed, i), never on the number of images, so a
world of 40 images starts with the world of 20. Splits are contiguous: train, dev, test.

Scenes are sampled in `model.synth.scene`, captioned in `model.synth.captions` and drawn
in `model.synth.render`; this module splits them and writes the world.

Layout written by `generate_world` (built in a temporary sibling, renamed into place):
    images/img000123.png, captions.jsonl, scenes.jsonl, world.json,
    {train,dev,test}_{images,ids,caps}.txt (5 captions per image: the "precomp" layout).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from model.io import staged_dir
from model.synth.captions import SHAPE_WORDS, SIZE_WORDS, caption_scene, plural
from model.synth.render import render_scene
from model.synth.scene import (
    COLOURS,
    FORMAT,
    PALETTE,
    SHAPES,
    SIZES,
    VERSION,
    Scene,
    image_id,
    sample_scene,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
CAPTIONS_PER_IMAGE = 5
_PNG_COMPRESS_LEVEL = 3  # measured: as small as level 6 at 2.6x the speed
_MAX_IMAGES = 1_000_000  # ids have six digits


@dataclass(frozen=True)
class WorldSummary:
    """What `generate_world` made (or found already made) in `out_dir`."""

    out_dir: Path
    seed: int
    num_images: int
    image_size: int
    counts: dict[str, int] = field(default_factory=dict)  # images per split
    num_twins: int = 0
    reused: bool = False


# ---------------------------------------------------------------------------- splits


def split_counts(
    num_images: int, splits: tuple[float, float, float] | None = None
) -> dict[str, int]:
    """Images per split. Default: dev = test = min(1000, ~1/7), the rest train (7000
    images -> 5000 / 1000 / 1000, the layout of the Flickr30K precomp data).

    Train and dev sizes are made even where possible so that no twin pair (2k, 2k+1)
    straddles a split boundary; the test split, last, absorbs the odd image.
    """
    if num_images < 3:
        raise ValueError(f"num_images must be >= 3 (one per split), got {num_images}")
    if splits is None:
        dev = test = min(1000, max(1, round(num_images / 7)))
    else:
        fractions = _check_fractions(splits)
        dev, test = (max(1, round(f * num_images)) for f in fractions[1:])
    if dev > 1:
        dev -= dev % 2
    train = num_images - dev - test
    if train > 2 and train % 2:
        train, test = train - 1, test + 1
    if train < 1:
        raise ValueError(f"splits {splits} leave no training image out of {num_images}")
    return {"train": train, "dev": dev, "test": test}


def _check_fractions(splits: Sequence[float]) -> tuple[float, ...]:
    fractions = tuple(float(f) for f in splits)
    if len(fractions) != 3 or any(not f > 0 for f in fractions):
        raise ValueError(
            f"splits must be three positive fractions (train, dev, test), got {splits}"
        )
    if abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {splits} (sum {sum(fractions)})")
    return fractions


def split_of_indices(counts: dict[str, int]) -> list[str]:
    """The split name of every image index: contiguous blocks train, dev, test."""
    return [name for name in SPLITS for _ in range(counts[name])]


# ----------------------------------------------------------------------------- world


def generate_world(
    out_dir: Path,
    num_images: int,
    seed: int = 0,
    image_size: int = 160,
    splits: tuple[float, float, float] | None = None,
    progress: bool = True,
) -> WorldSummary:
    """Write a world of `num_images` captioned images to `out_dir` (layout: module doc).

    Same arguments, same bytes. `splits` are (train, dev, test) fractions; by default
    dev = test = min(1000, ~10%). An `out_dir` holding a world made with the same
    arguments is returned as it is; one holding anything else is refused.
    """
    out_dir = Path(out_dir)
    _check_arguments(num_images, seed, image_size)
    counts = split_counts(num_images, splits)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "seed": seed,
        "num_images": num_images,
        "image_size": image_size,
        "counts": counts,
    }
    existing = _reusable_world(out_dir, header)
    if existing is not None:
        return existing
    return _build_world(out_dir, header, progress)


def _check_arguments(num_images: int, seed: int, image_size: int) -> None:
    if not 3 <= num_images <= _MAX_IMAGES:
        raise ValueError(f"num_images must be in [3, {_MAX_IMAGES}], got {num_images}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 64 <= image_size <= 2048:
        raise ValueError(
            f"image_size must be in [64, 2048] so that small shapes stay legible, got {image_size}"
        )


def _reusable_world(out_dir: Path, header: dict[str, Any]) -> WorldSummary | None:
    """The summary of a finished world with these arguments in `out_dir`, or None if empty."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file; pick a new or empty directory for the world")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return None
    world = _read_json(out_dir / "world.json")
    if world is None or {key: world.get(key) for key in header} != header:
        raise ValueError(
            f"{out_dir} is not empty and holds no synthetic world made with seed "
            f"{header['seed']}, {header['num_images']} images of {header['image_size']} px "
            f"and splits {header['counts']}; pick a new or empty directory"
        )
    logger.info("reusing the synthetic world in %s", out_dir)
    return _summary(out_dir, world, reused=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _summary(out_dir: Path, world: dict[str, Any], reused: bool) -> WorldSummary:
    return WorldSummary(
        out_dir=out_dir,
        seed=world["seed"],
        num_images=world["num_images"],
        image_size=world["image_size"],
        counts=dict(world["counts"]),
        num_twins=world.get("num_twins", 0),
        reused=reused,
    )


def _build_world(out_dir: Path, header: dict[str, Any], progress: bool) -> WorldSummary:
    """Write into a hidden sibling directory that replaces out_dir when complete (an
    out_dir already there is empty: _reusable_world checked)."""
    started = time.perf_counter()
    with staged_dir(out_dir) as staging:
        world = _write_world(staging, header, progress)
    logger.info(
        "wrote a synthetic world of %d images (%s, %d binding twins) to %s in %.1f s",
        header["num_images"],
        ", ".join(f"{n} {name}" for name, n in header["counts"].items()),
        world["num_twins"],
        out_dir,
        time.perf_counter() - started,
    )
    return _summary(out_dir, world, reused=False)


def _write_world(directory: Path, header: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Images, jsonl records and split files of the world; returns world.json's content."""
    (directory / "images").mkdir()
    split_names = split_of_indices(header["counts"])
    per_split: dict[str, list[tuple[str, list[str]]]] = {name: [] for name in SPLITS}
    num_twins = 0
    with (
        open(directory / "scenes.jsonl", "w", encoding="utf-8") as scenes_file,
        open(directory / "captions.jsonl", "w", encoding="utf-8") as captions_file,
    ):
        for scene, captions in _generate(directory / "images", header, progress):
            split = split_names[scene.index]
            scenes_file.write(json.dumps(_scene_record(scene, split)) + "\n")
            for row in _caption_records(scene, split, captions):
                captions_file.write(json.dumps(row) + "\n")
            per_split[split].append((scene.image_id, captions))
            num_twins += scene.twin_of is not None
    _write_split_files(directory, per_split)
    world = {**header, **_world_vocabulary(), "num_twins": num_twins}
    (directory / "world.json").write_text(json.dumps(world, indent=2) + "\n", encoding="utf-8")
    return world


def _generate(
    images_dir: Path, header: dict[str, Any], progress: bool
) -> Iterator[tuple[Scene, list[str]]]:
    """Yield (scene, captions) in index order, each image already saved.

    Threads pay off because zlib and numpy release the GIL: PNG encoding is most of the work.
    """
    seed, size, total = header["seed"], header["image_size"], header["num_images"]

    def make(index: int) -> tuple[Scene, list[str]]:
        scene = sample_scene(seed, index, size)
        image = render_scene(scene, seed)
        image.save(images_dir / f"{scene.image_id}.png", compress_level=_PNG_COMPRESS_LEVEL)
        return scene, caption_scene(scene, seed)

    bar = tqdm(total=total, desc="synth", unit="img", disable=None if progress else True)
    with bar, ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for start in range(0, total, 512):  # in chunks: a million futures at once is a lot
            for result in pool.map(make, range(start, min(total, start + 512))):
                yield result
                bar.update()


def _scene_record(scene: Scene, split: str) -> dict[str, Any]:
    return {
        "image_id": scene.image_id,
        "split": split,
        "file": f"images/{scene.image_id}.png",
        "width": scene.image_size,
        "height": scene.image_size,
        "objects": [obj.to_json() for obj in scene.objects],
        "background": list(scene.background),
        "twin_of": None if scene.twin_of is None else image_id(scene.twin_of),
    }


def _caption_records(scene: Scene, split: str, captions: list[str]) -> list[dict[str, str]]:
    return [
        {
            "image_id": scene.image_id,
            "caption_id": f"{scene.image_id}_{k}",
            "split": split,
            "text": text,
        }
        for k, text in enumerate(captions)
    ]


def _write_split_files(directory: Path, per_split: dict[str, list[tuple[str, list[str]]]]) -> None:
    """{split}_images.txt, {split}_ids.txt and {split}_caps.txt (5 a image, image order)."""
    for split, rows in per_split.items():
        ids = [image for image, _ in rows]
        _write_lines(directory / f"{split}_ids.txt", ids)
        _write_lines(directory / f"{split}_images.txt", [f"images/{image}.png" for image in ids])
        _write_lines(directory / f"{split}_caps.txt", [text for _, caps in rows for text in caps])


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _world_vocabulary() -> dict[str, Any]:
    """The world's words, so that a checker can parse captions without this module."""
    return {
        "captions_per_image": CAPTIONS_PER_IMAGE,
        "shapes": list(SHAPES),
        "colours": list(COLOURS),
        "sizes": list(SIZES),
        "palette": {name: list(rgb) for name, rgb in PALETTE.items()},
        "shape_words": {
            shape: [*words, *(plural(word) for word in words)]
            for shape, words in SHAPE_WORDS.items()
        },
        "size_words": {size: list(words) for size, words in SIZE_WORDS.items() if words},
    }
