"""Scenes of the synthetic world: its shapes, colours and sizes, and their seeded layouts."""

from __future__ import annotations

import colorsys
import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

FORMAT, VERSION = "chan-synth", 1
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

_SIDE_PX_AT_160 = {"small": 22, "medium": 34, "large": 48}
_OBJECT_COUNT_WEIGHTS = (0.1, 0.3, 0.3, 0.2, 0.1)  # P(1..5 objects)
_REPEAT_PROBABILITY = 0.12  # an object copies an earlier one's colour+shape: "two red discs"
_TWIN_PROBABILITY = 0.55  # per odd index; some bases cannot be permuted, so ~20% overall
_MAX_OVERLAP = 0.15  # of a box's area that other boxes may cover in total
_PLACEMENT_TRIES = 60


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


def image_id(index: int) -> str:
    return f"img{index:06d}"


def stream_rng(seed: int, index: int, stream: str) -> random.Random:
    """An independent generator per (seed, image, purpose): image i never depends on N."""
    return random.Random(f"{FORMAT}/{seed}/{index}/{stream}")


def sample_scene(seed: int, index: int, image_size: int = 160) -> Scene:
    """The scene of image `index`: a fresh one, or a binding twin of scene index - 1."""
    rng = stream_rng(seed, index, "scene")
    if index % 2 == 1 and rng.random() < _TWIN_PROBABILITY:
        base = _sample_fresh_scene(stream_rng(seed, index - 1, "scene"), index - 1, image_size)
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
