"""Every caption of the synthetic world is true of its scene, checked by an independent
reader of the sentences that knows only world.json's word lists."""

import json
import re
from collections import Counter

import pytest

from tests.model.synth.conftest import NUMBERS, N, read_jsonl

# ------------------------------------------------------------------------ the captions


def alternatives(words) -> str:
    """A regex alternation, longest words first so that 'discs' is not read as 'disc'."""
    return "|".join(sorted(words, key=len, reverse=True))


class CaptionChecker:
    """Checks a caption against a scene record using only world.json's word lists."""

    def __init__(self, world_json: dict) -> None:
        self.size = world_json["image_size"]
        self.noun_shape = {
            word: shape for shape, words in world_json["shape_words"].items() for word in words
        }
        self.plurals = {
            word
            for words in world_json["shape_words"].values()
            for word in words
            if any(word in (w + "s", w + "es") for w in words)
        }
        self.size_of = {w: size for size, words in world_json["size_words"].items() for w in words}
        self.mention = re.compile(
            rf"\b(?P<det>{alternatives(NUMBERS)}) "
            rf"(?:(?P<size>{alternatives(self.size_of)}) )?"
            rf"(?P<colour>{alternatives(world_json['colours'])}) "
            rf"(?P<noun>{alternatives(self.noun_shape)})\b"
        )

    def mentions(self, text: str, scene: dict) -> list[tuple[re.Match, list[dict]]]:
        """Every '<det> <size>? <colour> <shape>' phrase and the objects it can mean."""
        return [(match, self.objects(match, "", scene)) for match in self.mention.finditer(text)]

    def check(self, text: str, scene: dict) -> bool:
        """Asserts that every claim in `text` holds; returns whether it names every object."""
        mentions = self.mentions(text, scene)
        assert mentions, f"no object found in {text!r}"
        for match, objects in mentions:
            count = NUMBERS[match["det"]]
            assert len(objects) == count, (text, match[0])
            assert (count > 1) == (match["noun"] in self.plurals), text
            if match["size"]:
                assert objects[0]["size"] == self.size_of[match["size"]], (text, match[0])
        self.check_relations(text, scene)
        self.check_orders(text, mentions)
        self.check_counts(text, scene, mentions)
        self.check_positions(text, mentions)
        named = {(o["colour"], o["shape"]) for _, objects in mentions for o in objects}
        return named == {(o["colour"], o["shape"]) for o in scene["objects"]}

    def check_relations(self, text: str, scene: dict) -> None:
        words = "to the left of|left of|to the right of|right of|above|below|under|next to"
        relation = re.compile(rf"{self.pattern_for('a')} (?P<rel>{words}) {self.pattern_for('b')}")
        for match in relation.finditer(text):
            a = self.only_object(match, "a", scene)
            b = self.only_object(match, "b", scene)
            dx, dy = b["centre"][0] - a["centre"][0], b["centre"][1] - a["centre"][1]
            rel = match["rel"]
            horizontal = abs(dx) > abs(dy)
            if rel.endswith("left of"):
                assert dx > 0 and horizontal, text
            elif rel.endswith("right of"):
                assert dx < 0 and horizontal, text
            elif rel == "above":
                assert dy > 0 and not horizontal, text
            elif rel in ("below", "under"):
                assert dy < 0 and not horizontal, text
            else:
                assert horizontal and abs(dx) < 0.5 * self.size, text

    def pattern_for(self, tag: str) -> str:
        """The mention pattern with its group names suffixed by `tag`."""
        return re.sub(r"\(\?P<(\w+)>", rf"(?P<\1{tag}>", self.mention.pattern)

    def objects(self, match: re.Match, tag: str, scene: dict) -> list[dict]:
        colour, shape = match[f"colour{tag}"], self.noun_shape[match[f"noun{tag}"]]
        return [o for o in scene["objects"] if (o["colour"], o["shape"]) == (colour, shape)]

    def only_object(self, match: re.Match, tag: str, scene: dict) -> dict:
        objects = self.objects(match, tag, scene)
        assert len(objects) == 1, match[0]
        return objects[0]

    def check_orders(self, text: str, mentions: list) -> None:
        for lead, axis in (("from left to right", 0), ("from top to bottom", 1)):
            if lead in text:
                values = [objects[0]["centre"][axis] for _, objects in mentions]
                assert values == sorted(values) and len(set(values)) == len(values), text

    def check_counts(self, text: str, scene: dict, mentions: list) -> None:
        total = len(scene["objects"])
        named = sum(NUMBERS[match["det"]] for match, _ in mentions)
        pattern = r"\b(one|two|three|four|five) (other )?(shape|shapes|objects)\b"
        for number, other, _ in re.findall(pattern, text):
            assert NUMBERS[number] == (total - named if other else total), text

    def check_positions(self, text: str, mentions: list) -> None:
        half = self.size / 2
        pattern = (
            r"in the (?P<v>top|bottom) (?P<h>left|right) corner|at the (?P<v2>top|bottom)\b"
            r"|on the (?P<h2>left|right)\b|in the (?:centre|middle)\b"
        )
        for place in re.finditer(pattern, text):
            before = [objects for match, objects in mentions if match.end() <= place.start()]
            x, y = before[-1][0]["centre"]
            vertical, horizontal = place["v"] or place["v2"], place["h"] or place["h2"]
            if vertical:
                assert (y < half) == (vertical == "top"), text
            if horizontal:
                assert (x < half) == (horizontal == "left"), text
            if not vertical and not horizontal:
                assert abs(x - half) < self.size / 4 and abs(y - half) < self.size / 4, text


def test_every_caption_is_true_of_its_scene(world):
    world_json = json.loads((world / "world.json").read_text())
    checker = CaptionChecker(world_json)
    scenes = {row["image_id"]: row for row in read_jsonl(world / "scenes.jsonl")}
    captions = read_jsonl(world / "captions.jsonl")
    complete = Counter()
    for row in captions:
        scene = scenes[row["image_id"]]
        complete[row["image_id"]] += checker.check(row["text"], scene)
    assert len(complete) == N and min(complete.values()) >= 3
    by_image = Counter(row["image_id"] for row in captions)
    assert set(by_image.values()) == {5}
    vocabulary = {w for row in captions for w in re.findall(r"[a-z]+", row["text"])}
    assert len(vocabulary) < 150
    # the checks above are not vacuous: relations, orders, counts and partial captions occur
    text = "\n".join(row["text"] for row in captions)
    for phrase in ("left of", "right of", "above", "from left to right", "shapes", "other"):
        assert phrase in text, phrase


def test_checker_catches_false_captions(world):
    checker = CaptionChecker(json.loads((world / "world.json").read_text()))
    scene = {
        "objects": [
            {"shape": "circle", "colour": "red", "size": "small", "centre": [30, 80]},
            {"shape": "square", "colour": "blue", "size": "large", "centre": [120, 80]},
        ]
    }
    assert checker.check("a red disc left of a big blue box", scene)
    for wrong in (
        "a blue circle and a red square",  # the binding is swapped
        "a red circle right of a blue square",
        "a large red circle",
        "two red circles",
        "three shapes: a red circle and a blue square",
    ):
        with pytest.raises(AssertionError):
            checker.check(wrong, scene)
