"""The weight-free demo extractor: regions where the objects are, features that carry
colour and shape, output independent of batching."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from model.features.extractors.base import create_extractor, load_extractor
from model.features.extractors.demo import DIM

BACKGROUND = (222, 218, 205)
COLOURS = {"red": (215, 35, 35), "blue": (40, 70, 215), "green": (40, 170, 60)}


def draw(shape: str, draw_ctx: ImageDraw.ImageDraw, box: tuple, colour: tuple) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw_ctx.ellipse(box, fill=colour)
    elif shape == "square":
        draw_ctx.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw_ctx.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=colour)
    else:  # a five-pointed star
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        points = [
            (
                cx + (r if i % 2 == 0 else r * 0.4) * np.sin(i * np.pi / 5),
                cy - (r if i % 2 == 0 else r * 0.4) * np.cos(i * np.pi / 5),
            )
            for i in range(10)
        ]
        draw_ctx.polygon(points, fill=colour)


def scene(objects: list[tuple[str, str, tuple]], size: int = 160) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUND)
    ctx = ImageDraw.Draw(image)
    for shape, colour, box in objects:
        draw(shape, ctx, box, COLOURS[colour])
    return image


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def extractor():
    return create_extractor("demo")


def test_regions_are_the_objects(extractor):
    objects = [
        ("circle", "red", (10, 10, 50, 50)),
        ("square", "blue", (90, 20, 140, 70)),
        ("triangle", "green", (40, 100, 90, 150)),
    ]
    batch = extractor.extract([scene(objects)])
    assert batch.features.shape == (1, 10, DIM) and batch.features.dtype == np.float32
    assert batch.counts.tolist() == [4]  # whole image + three objects
    np.testing.assert_allclose(batch.boxes[0, 0], [0, 0, 1, 1])
    found = batch.boxes[0, 1:4]
    for _, _, box in objects:
        truth = [(box[0]) / 160, box[1] / 160, (box[2] + 1) / 160, (box[3] + 1) / 160]
        assert max(iou(truth, f) for f in found) > 0.85
    assert not batch.features[0, 4:].any() and not batch.boxes[0, 4:].any()


def test_touching_objects_of_two_colours_are_split(extractor):
    objects = [("square", "red", (20, 20, 80, 80)), ("square", "blue", (80, 30, 130, 80))]
    batch = extractor.extract([scene(objects)])
    assert batch.counts.tolist() == [3]


def test_empty_image_keeps_the_whole_image_region(extractor):
    batch = extractor.extract([Image.new("RGB", (50, 90), BACKGROUND)])
    assert batch.counts.tolist() == [1]


def test_deterministic_and_batch_independent(extractor):
    rng = np.random.default_rng(0)
    images = [
        scene([("circle", "red", (5, 5, 40, 40)), ("star", "blue", (60, 60, 120, 120))]),
        Image.fromarray(rng.integers(0, 255, (70, 130, 3), np.uint8)),  # noise, odd aspect
        scene([("triangle", "green", (30, 30, 100, 100))], size=240),
    ]
    together = extractor.extract(images)
    for row, image in enumerate(images):
        alone = extractor.extract([image])
        np.testing.assert_array_equal(alone.features[0], together.features[row])
        np.testing.assert_array_equal(alone.boxes[0], together.boxes[row])
    again = extractor.extract(images)
    np.testing.assert_array_equal(again.features, together.features)
    assert ((together.boxes >= 0) & (together.boxes <= 1)).all()
    valid = together.boxes[:, :, 2] > 0
    assert (together.boxes[..., 2] >= together.boxes[..., 0])[valid].all()


def random_object_features(extractor, rng, count: int):
    """Single objects of random shape, colour, size and place -> (features, shape, colour)."""
    shapes, colours = ["circle", "square", "triangle", "star"], list(COLOURS)
    feats, shape_ids, colour_ids = [], [], []
    for _ in range(count):
        s, c = rng.integers(len(shapes)), rng.integers(len(colours))
        side = int(rng.integers(22, 60))
        x, y = rng.integers(0, 160 - side, size=2)
        image = scene([(shapes[s], colours[c], (int(x), int(y), int(x) + side, int(y) + side))])
        batch = extractor.extract([image])
        assert batch.counts[0] == 2
        feats.append(batch.features[0, 1])
        shape_ids.append(s)
        colour_ids.append(c)
    return np.stack(feats), np.array(shape_ids), np.array(colour_ids)


def linear_probe_accuracy(train_x, train_y, test_x, test_y, classes: int) -> float:
    """Least-squares one-vs-rest linear classifier: can a linear layer read the label?"""
    design = np.hstack([train_x, np.ones((len(train_x), 1))])
    targets = np.eye(classes)[train_y]
    weights = np.linalg.lstsq(design, targets, rcond=None)[0]
    predicted = (np.hstack([test_x, np.ones((len(test_x), 1))]) @ weights).argmax(1)
    return float((predicted == test_y).mean())


def test_a_linear_layer_can_read_shape_and_colour(extractor):
    rng = np.random.default_rng(1)
    train = random_object_features(extractor, rng, 240)
    test = random_object_features(extractor, rng, 80)
    assert linear_probe_accuracy(train[0], train[1], test[0], test[1], 4) >= 0.9
    assert linear_probe_accuracy(train[0], train[2], test[0], test[2], 3) >= 0.95


def test_spec_round_trip_and_bad_options(extractor):
    spec = extractor.spec
    assert (spec.name, spec.num_regions, spec.dim) == ("demo", 10, DIM)
    rebuilt = load_extractor(spec.to_dict())
    assert rebuilt.spec == spec
    assert create_extractor("demo", num_regions=5).spec.num_regions == 5
    with pytest.raises(ValueError, match="no weights"):
        create_extractor("demo:/some/dir")
    with pytest.raises(ValueError, match="num_regions"):
        create_extractor("demo", num_regions=1)
    with pytest.raises(ValueError, match=r"unknown extractor 'nope'; available: .*demo"):
        create_extractor("nope")
