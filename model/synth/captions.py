"""Captions of a synthetic scene: five true sentences per image, built from templates."""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Sequence

from model.synth.scene import Scene, SceneObject, stream_rng

logger = logging.getLogger(__name__)

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

_MARGIN = 0.08  # of the image side: relations, orders and positions need this much room
_PERIOD_PROBABILITY = 0.3

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
    rng = stream_rng(seed, scene.index, "captions")
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
            return f"{NUMBER_WORDS[len(group)]} {obj.colour} {plural(noun)}"
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


def plural(noun: str) -> str:
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
