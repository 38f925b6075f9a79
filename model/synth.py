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

Layout written by `generate_world` (built in a temporary sibling, renamed into place):
    images/img000123.png, captions.jsonl, scenes.jsonl, world.json,
    {train,dev,test}_{images,ids,caps}.txt (5 captions per image: the "precomp" layout).
"""

from __future__ import annotations

import colorsys
import itertools
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

logger = logging.getLogger(__name__)

FORMAT, VERSION = "chan-synth", 1
SPLITS = ("train", "dev", "test")
CAPTIONS_PER_IMAGE = 5
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
# Saturated hues a person names at once, plus brown and black; no grey or white, which
# would melt into the background. Pairwise RGB distances are all above 85.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (250, 125, 15),
    "yellow": (245, 210, 20),
    "green": (40, 165, 65),
    "blue": (40, 80, 220),
    "purple": (135, 50, 185),
    "pink": (245, 95, 190),
    "brown": (135, 80, 35),
    "black": (25, 25, 25),
}
COLOURS = tuple(PALETTE)
SIZES = ("small", "medium", "large")
# Each synonym names exactly one shape, so a caption never leaves its shape open.
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "star": ("star",),
    "diamond": ("diamond",),
    "cross": ("cross",),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little"),
    "medium": (),
    "large": ("large", "big"),
}
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five")

_SIDE_PX_AT_160 = {"small": 22, "medium": 34, "large": 48}
_OBJECT_COUNT_WEIGHTS = (0.1, 0.3, 0.3, 0.2, 0.1)  # P(1..5 objects)
_REPEAT_PROBABILITY = 0.12  # an object copies an earlier one's colour+shape: "two red discs"
_TWIN_PROBABILITY = 0.55  # per odd index; some bases cannot be permuted, so ~20% overall
_MAX_OVERLAP = 0.15  # of a box's area that other boxes may cover in total
_PLACEMENT_TRIES = 60
_MARGIN = 0.08  # of the image side: relations, orders and positions need this much room
_PERIOD_PROBABILITY = 0.3
_SHADE_MAX = 27  # grey levels: shading (8) + texture (5) + a speck (14), clipped to this
_PNG_COMPRESS_LEVEL = 3  # measured: as small as level 6 at 2.6x the speed
_MAX_IMAGES = 1_000_000  # ids have six digits


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape. `box` is its square frame [x0, y0, x1, y1) in pixels."""

    shape: str
    colour: str
    size: str  # small | medium | large
    box: tuple[int, int, int, int]
    rgb: tuple[int, int, int]  # the fill actually drawn: the palette colour, brightness-jittered
    angle: float = 0.0  # degrees of rotation (stars only)

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    @property
    def side(self) -> int:
        return self.box[2] - self.box[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "box": list(self.box),
            "centre": list(self.centre),
            "rgb": list(self.rgb),
            "angle": self.angle,
        }


@dataclass(frozen=True)
class Scene:
    """What one image shows; the pixels add only texture drawn from (seed, index)."""

    index: int
    image_size: int
    objects: tuple[SceneObject, ...]
    background: tuple[int, int, int]  # base RGB before shading and texture
    twin_of: int | None = None  # index of the scene this one permutes the colours of

    @property
    def image_id(self) -> str:
        return image_id(self.index)


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


def image_id(index: int) -> str:
    return f"img{index:06d}"


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


# ---------------------------------------------------------------------------- scenes


def _rng(seed: int, index: int, stream: str) -> random.Random:
    """An independent generator per (seed, image, purpose): image i never depends on N."""
    return random.Random(f"{FORMAT}/{seed}/{index}/{stream}")


def sample_scene(seed: int, index: int, image_size: int = 160) -> Scene:
    """The scene of image `index`: a fresh one, or a binding twin of scene index - 1."""
    rng = _rng(seed, index, "scene")
    if index % 2 == 1 and rng.random() < _TWIN_PROBABILITY:
        base = _sample_fresh_scene(_rng(seed, index - 1, "scene"), index - 1, image_size)
        twin = _make_twin(base, index, rng)
        if twin is not None:
            return twin
    return _sample_fresh_scene(rng, index, image_size)


def _sample_fresh_scene(rng: random.Random, index: int, image_size: int) -> Scene:
    count = rng.choices(range(1, 6), weights=_OBJECT_COUNT_WEIGHTS)[0]
    specs: list[tuple[str, str, str]] = []
    for _ in range(count):
        if specs and rng.random() < _REPEAT_PROBABILITY:
            shape, colour, _size = rng.choice(specs)
        else:
            shape, colour = rng.choice(SHAPES), rng.choice(COLOURS)
        specs.append((shape, colour, rng.choice(SIZES)))
    objects = _place_objects(specs, rng, image_size)
    return Scene(index, image_size, objects, _sample_background(rng))


def _sample_background(rng: random.Random) -> tuple[int, int, int]:
    # Value 212-235 and saturation <= 0.10 leave room for shading (+-8) and texture
    # (+-5 and specks +-14) while staying above value 0.7 and below saturation 0.15.
    hue, saturation, value = rng.random(), rng.uniform(0.02, 0.10), rng.uniform(212, 235)
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(red), round(green), round(blue)


def _make_twin(base: Scene, index: int, rng: random.Random) -> Scene | None:
    """Permute the colours of `base` among its objects so that some pairing changes."""
    shapes = [(obj.shape, obj.size) for obj in base.objects]
    colours = [obj.colour for obj in base.objects]
    pairs = Counter((obj.colour, obj.shape) for obj in base.objects)
    for _ in range(20):
        rng.shuffle(colours)
        if Counter((c, s) for c, (s, _) in zip(colours, shapes, strict=True)) != pairs:
            break
    else:
        return None  # one object, one colour or one shape: nothing to permute
    specs = [(shape, colour, size) for colour, (shape, size) in zip(colours, shapes, strict=True)]
    objects = _place_objects(specs, rng, base.image_size)
    if len(objects) != len(specs):
        return None  # a dropped object would break the twin's multisets
    return Scene(index, base.image_size, objects, _sample_background(rng), twin_of=base.index)


def _place_objects(
    specs: Sequence[tuple[str, str, str]], rng: random.Random, image_size: int
) -> tuple[SceneObject, ...]:
    """Boxes that overlap little; an object with no room is dropped, never drawn."""
    boxes: list[tuple[int, int, int, int]] = []
    covered: list[int] = []  # area of each placed box that other boxes cover
    objects: list[SceneObject] = []
    for shape, colour, size in specs:
        side = round(_SIDE_PX_AT_160[size] * image_size / 160 * rng.uniform(0.93, 1.07))
        box = _find_free_box(side, boxes, covered, rng, image_size)
        if box is None:
            continue
        angle = round(rng.uniform(0, 72), 1) if shape == "star" else 0.0
        brightness = rng.uniform(0.92, 1.04)
        red, green, blue = (min(255, round(c * brightness)) for c in PALETTE[colour])
        objects.append(SceneObject(shape, colour, size, box, (red, green, blue), angle))
    return tuple(objects)


def _find_free_box(
    side: int,
    boxes: list[tuple[int, int, int, int]],
    covered: list[int],
    rng: random.Random,
    image_size: int,
) -> tuple[int, int, int, int] | None:
    margin = max(1, image_size // 64)
    limit = _MAX_OVERLAP * side * side
    for _ in range(_PLACEMENT_TRIES):
        x0, y0 = (rng.randint(margin, image_size - margin - side) for _ in range(2))
        box = (x0, y0, x0 + side, y0 + side)
        shared = [_intersection(box, other) for other in boxes]
        if sum(shared) > limit:
            continue
        # the limit is on the smaller box too: a small shape must stay mostly visible
        room = zip(covered, shared, boxes, strict=True)
        if any(c + s > _MAX_OVERLAP * _area(b) for c, s, b in room):
            continue
        covered[:] = [c + s for c, s in zip(covered, shared, strict=True)]
        boxes.append(box)
        covered.append(sum(shared))
        return box
    return None


def _area(box: tuple[int, int, int, int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _intersection(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, width) * max(0, height)


# ------------------------------------------------------------------------- rendering


def render_scene(scene: Scene, seed: int) -> Image.Image:
    """The RGB image of `scene`: shaded, textured background, then flat filled shapes."""
    rng = np.random.default_rng([seed, scene.index, 1])
    image = Image.fromarray(_background_pixels(scene, rng), "RGB")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj)
    return image


@lru_cache(maxsize=4)
def _unit_grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size - 0.5
    return axis[None, :], axis[:, None]  # x (1, S), y (S, 1)


def _background_pixels(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """(S, S, 3) uint8. Shading and texture move all channels together: saturation stays low."""
    size = scene.image_size
    grid_x, grid_y = _unit_grid(size)
    angle, strength = rng.uniform(0, 2 * math.pi), rng.uniform(-16, 16)
    shade = strength * (math.cos(angle) * grid_x + math.sin(angle) * grid_y)  # (S, S) +-8
    shade = shade + (rng.random((size, size), dtype=np.float32) * 10 - 5)
    for _ in range(int(rng.integers(0, 6))):  # a few faint specks of clutter
        x, y = rng.integers(0, size - 3, 2)
        radius = int(rng.integers(1, 3))
        shade[y : y + radius + 1, x : x + radius + 1] += rng.uniform(-14, 14)
    np.clip(shade, -_SHADE_MAX, _SHADE_MAX, out=shade)  # overlapping specks could stack
    # One shade moves all three channels: a (55, 3) table gathered by the rounded shade
    # is five times faster than adding and clipping a float (S, S, 3) array.
    levels = np.arange(-_SHADE_MAX, _SHADE_MAX + 1)[:, None] + np.asarray(scene.background)
    table = np.clip(levels, 0, 255).astype(np.uint8)
    return np.take(table, (shade + _SHADE_MAX + 0.5).astype(np.intp), axis=0)


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    x0, y0, x1, y1 = obj.box
    frame = (x0, y0, x1 - 1, y1 - 1)  # PIL includes the last pixel; our boxes exclude it
    if obj.shape == "circle":
        draw.ellipse(frame, fill=obj.rgb)
    elif obj.shape == "square":
        draw.rectangle(frame, fill=obj.rgb)
    elif obj.shape == "cross":
        bar = max(2, round(0.34 * obj.side))
        start = (obj.side - bar) // 2
        draw.rectangle((x0, y0 + start, x1 - 1, y0 + start + bar - 1), fill=obj.rgb)
        draw.rectangle((x0 + start, y0, x0 + start + bar - 1, y1 - 1), fill=obj.rgb)
    else:
        draw.polygon(_polygon(obj), fill=obj.rgb)


def _polygon(obj: SceneObject) -> list[tuple[float, float]]:
    x0, y0 = obj.box[:2]
    x1, y1 = obj.box[2] - 1, obj.box[3] - 1  # last pixel inside the box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if obj.shape == "triangle":
        return [(x0, y1), (cx, y0), (x1, y1)]
    if obj.shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    assert obj.shape == "star", obj.shape
    outer = (x1 - x0) / 2
    points = []
    for k in range(10):
        radius = outer if k % 2 == 0 else 0.5 * outer
        turn = math.radians(obj.angle) - math.pi / 2 + k * math.pi / 5
        points.append((cx + radius * math.cos(turn), cy + radius * math.sin(turn)))
    return points


# -------------------------------------------------------------------------- captions

Group = tuple[SceneObject, ...]  # the objects of a scene that share colour and shape

_LIST_OPENINGS = ("", "", "there is ", "an image of ", "a picture of ", "a photo showing ")
_ENDINGS = ("", "", " on a light background", " on a plain background")
_RELATION_WORDS = {
    "left": ("left of", "to the left of"),
    "right": ("right of", "to the right of"),
    "above": ("above",),
    "below": ("below", "under"),
    "near": ("next to",),
}
# (row, column) thirds of the image -> phrases; None is a coordinate too near a border
_POSITIONS: dict[tuple[int | None, int | None], tuple[str, ...]] = {
    (0, 0): ("in the top left corner",),
    (0, 2): ("in the top right corner",),
    (2, 0): ("in the bottom left corner",),
    (2, 2): ("in the bottom right corner",),
    (0, 1): ("at the top",),
    (0, None): ("at the top",),
    (2, 1): ("at the bottom",),
    (2, None): ("at the bottom",),
    (1, 0): ("on the left",),
    (None, 0): ("on the left",),
    (1, 2): ("on the right",),
    (None, 2): ("on the right",),
    (1, 1): ("in the centre", "in the middle"),
}


def caption_scene(scene: Scene, seed: int) -> list[str]:
    """Five distinct captions of `scene`; at least four name every object."""
    rng = _rng(seed, scene.index, "captions")
    groups = _groups(scene.objects)
    captions: list[str] = []
    for kind in _caption_plan(len(scene.objects), rng):
        captions.append(_distinct_caption(kind, scene, groups, rng, captions))
    return captions


def _groups(objects: Sequence[SceneObject]) -> list[Group]:
    by_pair: dict[tuple[str, str], list[SceneObject]] = {}
    for obj in objects:
        by_pair.setdefault((obj.colour, obj.shape), []).append(obj)
    return [tuple(group) for group in by_pair.values()]


def _caption_plan(num_objects: int, rng: random.Random) -> list[str]:
    """Caption kinds for one image. Only "partial" leaves objects out, and at most once."""
    if num_objects == 1:
        plan = ["list", "list", "list", "position", "position"]
    else:
        last = rng.choice(("partial", "relation", "order"))
        plan = ["list", "relation", "count", rng.choice(("order", "list")), last]
    rng.shuffle(plan)
    return plan


def _distinct_caption(
    kind: str, scene: Scene, groups: list[Group], rng: random.Random, taken: list[str]
) -> str:
    seen = {text.rstrip(".") for text in taken}
    for _ in range(20):
        text = _compose(kind, scene, groups, rng)
        if text.rstrip(".") not in seen:
            break
    return text  # after 20 tries a repeat is kept: harmless, and only plain scenes get there


class _Wording:
    """One caption's word choices: a synonym per shape, and whether to say sizes."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.nouns = {shape: rng.choice(words) for shape, words in SHAPE_WORDS.items()}
        self.sizes = rng.random() < 0.4

    def phrase(self, group: Group) -> str:
        """'a small red disc' for one object, 'two red discs' for several."""
        obj = group[0]
        noun = self.nouns[obj.shape]
        if len(group) > 1:
            return f"{NUMBER_WORDS[len(group)]} {obj.colour} {_plural(noun)}"
        size_words = SIZE_WORDS[obj.size] if self.sizes else ()
        words = [self.rng.choice(size_words)] if size_words else []
        words += [obj.colour, noun]
        return f"{_article(words[0])} {' '.join(words)}"

    def phrases(self, groups: Sequence[Group]) -> list[str]:
        return [self.phrase(group) for group in groups]


def _compose(kind: str, scene: Scene, groups: list[Group], rng: random.Random) -> str:
    words = _Wording(rng)
    text = _BUILDERS[kind](scene, groups, words, rng) or _list_caption(scene, groups, words, rng)
    return text + "." if rng.random() < _PERIOD_PROBABILITY else text


def _list_caption(scene: Scene, groups: list[Group], words: _Wording, rng: random.Random) -> str:
    order = rng.sample(groups, len(groups))
    opening = rng.choice(_LIST_OPENINGS)
    if opening == "there is " and len(order[0]) > 1:
        opening = "there are "
    return f"{opening}{_join(words.phrases(order))}{rng.choice(_ENDINGS)}"


def _count_caption(
    scene: Scene, groups: list[Group], words: _Wording, rng: random.Random
) -> str | None:
    if len(scene.objects) < 2:
        return None
    total = f"{NUMBER_WORDS[len(scene.objects)]} {rng.choice(('shapes', 'objects'))}"
    listed = _join(words.phrases(rng.sample(groups, len(groups))))
    return rng.choice((f"{total}: {listed}", f"{listed}, {total} in total"))


def _relation_caption(
    scene: Scene, groups: list[Group], words: _Wording, rng: random.Random
) -> str | None:
    """'a red disc left of a blue box', plus the other objects listed in front of it."""
    singles = [group[0] for group in groups if len(group) == 1]  # a repeat has no single place
    options = [
        (a, b, relation)
        for a in singles
        for b in singles
        if a is not b
        for relation in _relations(a, b, scene.image_size)
    ]
    if not options:
        return None
    a, b, relation = rng.choice(options)
    core = f"{words.phrase((a,))} {relation} {words.phrase((b,))}"
    rest = [group for group in groups if group[0] is not a and group[0] is not b]
    return _join([*words.phrases(rng.sample(rest, len(rest))), core])


def _relations(a: SceneObject, b: SceneObject, image_size: int) -> list[str]:
    """Relation phrases true of `a` with respect to `b`, where the geometry leaves no doubt."""
    margin = _MARGIN * image_size
    dx, dy = b.centre[0] - a.centre[0], b.centre[1] - a.centre[1]
    found: list[str] = []
    if abs(dx) > margin and abs(dx) > 1.5 * abs(dy):
        found += _RELATION_WORDS["left" if dx > 0 else "right"]
        if abs(dx) - (a.side + b.side) / 2 < margin:
            found += _RELATION_WORDS["near"]
    if abs(dy) > margin and abs(dy) > 1.5 * abs(dx):
        found += _RELATION_WORDS["above" if dy > 0 else "below"]
    return found


def _order_caption(
    scene: Scene, groups: list[Group], words: _Wording, rng: random.Random
) -> str | None:
    """'from left to right: ...' where every object has its own clear place on the axis."""
    if len(scene.objects) < 2 or len(groups) < len(scene.objects):
        return None
    axes = [axis for axis in (0, 1) if _well_separated(scene, axis)]
    if not axes:
        return None
    axis = rng.choice(axes)
    ordered = sorted(scene.objects, key=lambda obj: obj.centre[axis])
    lead = ("from left to right", "from top to bottom")[axis]
    listed = _join([words.phrase((obj,)) for obj in ordered])
    return rng.choice((f"{lead}: {listed}", f"{listed}, {lead}"))


def _well_separated(scene: Scene, axis: int) -> bool:
    values = sorted(obj.centre[axis] for obj in scene.objects)
    return all(b - a > _MARGIN * scene.image_size for a, b in itertools.pairwise(values))


def _partial_caption(
    scene: Scene, groups: list[Group], words: _Wording, rng: random.Random
) -> str | None:
    """Some of the objects and a true count of the rest (or of all)."""
    if len(groups) < 2 or len(scene.objects) < 3:
        return None
    kept = rng.sample(groups, rng.randint(1, len(groups) - 1))
    others = len(scene.objects) - sum(len(group) for group in kept)
    rest = f"{NUMBER_WORDS[others]} other {'shape' if others == 1 else 'shapes'}"
    if rng.random() < 0.5:
        return _join([*words.phrases(kept), rest])
    return f"{NUMBER_WORDS[len(scene.objects)]} shapes including {_join(words.phrases(kept))}"


def _position_caption(
    scene: Scene, groups: list[Group], words: _Wording, rng: random.Random
) -> str | None:
    if len(scene.objects) != 1:
        return None
    x, y = scene.objects[0].centre
    where = _POSITIONS.get((_third(y, scene.image_size), _third(x, scene.image_size)))
    if where is None:
        return None
    opening = rng.choice(("", "", "there is ", "an image of "))
    return f"{opening}{words.phrase(groups[0])} {rng.choice(where)}"


def _third(value: float, image_size: int) -> int | None:
    """0, 1 or 2: the third of the image `value` lies in; None when near a border of two."""
    third = image_size / 3
    if min(abs(value - third), abs(value - 2 * third)) < _MARGIN / 2 * image_size:
        return None
    return min(2, int(value // third))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(noun: str) -> str:
    return noun + "es" if noun.endswith(("s", "x")) else noun + "s"


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


_Builder = Callable[[Scene, list[Group], _Wording, random.Random], "str | None"]
_BUILDERS: dict[str, _Builder] = {
    "list": _list_caption,
    "count": _count_caption,
    "relation": _relation_caption,
    "order": _order_caption,
    "partial": _partial_caption,
    "position": _position_caption,
}


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
    """Write into a hidden sibling directory, then rename it into place when complete."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    started = time.perf_counter()
    try:
        world = _write_world(staging, header, progress)
        staging.chmod(0o755)  # mkdtemp makes it private; a world is meant to be shared
        if out_dir.exists():
            out_dir.rmdir()  # empty: checked by _reusable_world
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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
            shape: [*words, *(_plural(word) for word in words)]
            for shape, words in SHAPE_WORDS.items()
        },
        "size_words": {size: list(words) for size, words in SIZE_WORDS.items() if words},
    }
