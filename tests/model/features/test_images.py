"""Image loading: every odd input handled on purpose, failures as ImageError."""

import io

import numpy as np
import pytest
from PIL import Image

from model.features.images import ImageError, list_images, load_image, to_rgb
from tests.conftest import bomb_png, png_bytes


def test_rgb_png_round_trip():
    image = Image.new("RGB", (7, 5), (10, 200, 30))
    loaded = load_image(png_bytes(image))
    assert loaded.mode == "RGB" and loaded.size == (7, 5)
    assert loaded.getpixel((3, 2)) == (10, 200, 30)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello, not a jpeg")
    with pytest.raises(ImageError, match="not an image"):
        load_image(path)


def test_truncated_jpeg(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buffer, format="JPEG"
    )
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match=r"truncated|corrupt"):
        load_image(path)


@pytest.mark.parametrize("side", [30000, 9000])
def test_decompression_bomb_refused_from_the_header(side):
    # 30000^2 is past Pillow's own hard limit, 9000^2 only past ours: both refused
    with pytest.raises(ImageError, match="pixels"):
        load_image(bomb_png(side, side), max_pixels=50_000_000)


def test_cmyk_jpeg_becomes_rgb():
    buffer = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(buffer, format="JPEG")  # red ink
    r, g, b = load_image(buffer.getvalue()).getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


def test_palette_with_transparency_goes_onto_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.info["transparency"] = 0  # palette entry 0 (black) is transparent
    loaded = load_image(png_bytes(image))
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 1)) == (255, 0, 0)


def test_rgba_half_transparent_blends_with_white():
    image = Image.new("RGBA", (2, 2), (0, 0, 255, 128))
    r, g, b = load_image(png_bytes(image)).getpixel((0, 0))
    assert abs(r - 127) <= 2 and abs(g - 127) <= 2 and b == 255


def test_16bit_greyscale_is_scaled_not_clipped():
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)  # mode I;16
    loaded = load_image(png_bytes(image))
    assert [loaded.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


@pytest.mark.parametrize("mode", ["L", "1", "LA", "I", "F"])
def test_other_modes_convert(mode):
    image = Image.new(mode, (3, 3))
    assert to_rgb(image).mode == "RGB"


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 8, 8))  # top-left marker (a block: JPEG blurs pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was rotated: display rotated 90 degrees clockwise
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=100)
    loaded = load_image(buffer.getvalue())
    assert loaded.size == (20, 40)
    r, g, _ = loaded.getpixel((16, 3))  # top-left moved to the top-right
    assert r > 200 and g < 80


def test_list_folder_recursive_sorted_and_ignores_other_files(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["b.png", "a.jpg", "sub/c.webp"]:
        Image.new("RGB", (2, 2)).save(tmp_path / name)
    (tmp_path / "readme.txt").write_text("not an image")
    entries = list_images(tmp_path)
    assert [e.image_id for e in entries] == ["a", "b", "sub/c"]


def test_list_file_paths_ids_and_duplicates(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    listing = tmp_path / "list.txt"
    listing.write_text("x/one.png\n# comment\n\nmy-id\ty/one.png\n")
    entries = list_images(listing)
    assert [(e.image_id, e.path) for e in entries] == [
        ("one", tmp_path / "x/one.png"),
        ("my-id", tmp_path / "y/one.png"),
    ]
    listing.write_text("x/one.png\ny/one.png\n")
    with pytest.raises(ValueError, match="id<TAB>path"):
        list_images(listing)


def test_empty_and_missing_sources(tmp_path):
    with pytest.raises(ValueError, match="no images found"):
        list_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "missing")
