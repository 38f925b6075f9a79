"""Image preprocessing that follows a model directory's preprocessor config: size rules,
crops, padding, rescaling and normalisation, each against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model.features.extractors.preprocess import (
    Geometry,
    ResizeRule,
    crop_resize_shape,
    default_input_size,
    grid_cells,
    input_boxes_to_fractions,
    load_preprocess_config,
    parse_preprocess_config,
    prepare_image,
    resized_shape,
)
from tests.model.features.conftest import MEAN, STD


def test_resized_shape_follows_the_size_rules():
    assert resized_shape(50, 100, ResizeRule(shortest_edge=32)) == (32, 64)
    assert resized_shape(100, 50, ResizeRule(shortest_edge=32)) == (64, 32)
    assert resized_shape(33, 100, ResizeRule(shortest_edge=32)) == (32, 96)  # int() truncates
    # the long side is capped: 800 short would make 2400 long, over 1333, so the short side
    # becomes round(1333 / 3) = 444 and the long one int(444 * 3), as transformers rounds
    assert resized_shape(100, 300, ResizeRule(shortest_edge=800, longest_edge=1333)) == (444, 1332)
    assert resized_shape(10, 999, ResizeRule(height=7, width=9)) == (7, 9)


def test_parse_reads_sizes_crop_and_defaults():
    square = parse_preprocess_config({"size": 48, "image_mean": MEAN, "image_std": STD})
    assert square.resize == ResizeRule(height=48, width=48)
    assert square.rescale_factor == pytest.approx(1 / 255)
    assert square.resample == 2 and not square.do_pad
    # an int size followed by a crop keeps the aspect (CLIP / ConvNeXt processors)
    clip = parse_preprocess_config(
        {"size": 48, "do_center_crop": True, "crop_size": 40, "image_mean": MEAN, "image_std": STD}
    )
    assert clip.resize == ResizeRule(shortest_edge=48)
    assert clip.crop_size == (40, 40)
    assert default_input_size(clip) == (40, 40)
    plain = parse_preprocess_config({"do_resize": False, "do_normalize": False})
    assert plain.resize is None and plain.image_mean is None
    with pytest.raises(ValueError, match="input_size"):
        default_input_size(plain)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"size": {"longest_edge": 5}, "image_mean": MEAN, "image_std": STD}, "size"),
        ({"size": -3, "image_mean": MEAN, "image_std": STD}, "size"),
        ({"size": 32, "image_mean": [0.5, 0.5], "image_std": STD}, "image_mean"),
        ({"size": 32, "image_mean": MEAN}, "image_std"),
        ({"size": 32, "image_mean": MEAN, "image_std": [1, 0, 1]}, "image_std"),
        ({"size": 32, "image_mean": MEAN, "image_std": STD, "resample": 9}, "resample"),
        ({"size": 32, "do_center_crop": True, "image_mean": MEAN, "image_std": STD}, "crop_size"),
    ],
)
def test_parse_rejects_malformed_configs(data, key):
    with pytest.raises(ValueError, match=key):
        parse_preprocess_config(data, "cfg.json")


def test_load_names_the_missing_or_broken_file(tmp_path):
    with pytest.raises(ValueError, match=r"preprocessor_config\.json is missing"):
        load_preprocess_config(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_preprocess_config(tmp_path)


def test_rescale_and_normalise_values():
    config = parse_preprocess_config({"size": 4, "image_mean": MEAN, "image_std": STD})
    image = Image.new("RGB", (4, 4), (255, 0, 51))
    pixels, mask, _ = prepare_image(image, config, (4, 4), "stretch")
    expected = (np.array([1.0, 0.0, 0.2]) - MEAN) / STD
    assert pixels.dtype == np.float32 and pixels.shape == (3, 4, 4)
    np.testing.assert_allclose(pixels[:, 2, 3], expected, rtol=1e-6)
    assert mask.all()


def test_crop_fit_keeps_the_aspect_and_crops_the_centre():
    config = parse_preprocess_config(
        {"size": {"shortest_edge": 32}, "do_center_crop": True, "crop_size": 32, "resample": 0}
        | {"do_normalize": False, "do_rescale": False}
    )
    # a 100 x 50 image: left half black, right half white -> resized 64 x 32, crop x 16..48
    array = np.zeros((50, 100, 3), dtype=np.uint8)
    array[:, 50:] = 255
    pixels, _, geometry = prepare_image(Image.fromarray(array), config, (32, 32), "crop")
    assert geometry.content == (-16.0, 0.0, 48.0, 32.0)
    assert (pixels[:, :, :16] == 0).all() and (pixels[:, :, 16:] == 255).all()
    # the input's left column lies at x = 16 / 64 = 0.25 of the original image
    fractions = input_boxes_to_fractions(np.array([[0.0, 0.0, 32.0, 32.0]]), geometry)
    np.testing.assert_allclose(fractions, [[0.25, 0.0, 0.75, 1.0]])


def test_crop_pct_resizes_the_short_edge_up_before_cropping():
    config = parse_preprocess_config(
        {"size": 224, "crop_pct": 0.875, "image_mean": MEAN, "image_std": STD}
    )
    assert default_input_size(config) == (224, 224)
    assert crop_resize_shape(300, 600, config, (224, 224)) == (256, 512)
    # too small a resize is grown until it covers the crop
    small = parse_preprocess_config({"size": {"shortest_edge": 16}, "do_normalize": False})
    assert crop_resize_shape(20, 40, small, (32, 32)) == (32, 64)


def test_pad_fit_keeps_the_aspect_and_masks_the_padding():
    config = parse_preprocess_config({"size": 64, "do_normalize": False})
    pixels, mask, geometry = prepare_image(
        Image.new("RGB", (60, 30), "white"), config, (64, 64), "pad"
    )
    assert geometry == Geometry(60, 30, (0.0, 0.0, 64.0, 32.0))
    assert mask[:32].all() and not mask[32:].any()
    assert (pixels[:, 32:] == 0).all() and (pixels[:, :32] == 1).all()


def test_grid_cells_are_row_major():
    cells = grid_cells(2, 3, 10.0, 5.0)
    np.testing.assert_allclose(cells[1], [5, 0, 10, 10])
    np.testing.assert_allclose(cells[3], [0, 10, 5, 20])


# ---------------------------------------------------------------- extractors
