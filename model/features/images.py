"""Reading images from users: every format quirk handled on purpose, every failure an
`ImageError` that says what is wrong, never a crash and never a silently wrong image.

`load_image` returns an upright RGB image: EXIF orientation applied, CMYK / palette /
greyscale / 16-bit converted, transparency composited onto white, and the pixel count
checked before any pixel is decoded (decompression bombs)."""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 50_000_000  # a 50 MP photo decodes to 150 MB of RGB; beyond, refuse
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class ImageError(ValueError):
    """An input that is not a usable image; the message names the problem."""


@dataclass(frozen=True)
class ImageEntry:
    """One image to process: its id (stable, unique) and where it lives."""

    image_id: str
    path: Path


def load_image(source: Path | str | bytes | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Path, bytes or file object -> an upright RGB PIL image. Raises ImageError."""
    name = str(source) if isinstance(source, str | Path) else "upload"
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(handle)
            _check_pixels(image, name, max_pixels)
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return to_rgb(image)
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: too many pixels (limit {max_pixels:,})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read (JPEG, PNG, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from None


def _check_pixels(image: Image.Image, name: str, max_pixels: int) -> None:
    """Refuse from the header alone, before any pixel is decoded."""
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"{name}: empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: {width}x{height} is {width * height:,} pixels, over the limit of "
            f"{max_pixels:,}; downscale it first"
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Transparent pixels become white (how a viewer shows them on
    a page); high-bit-depth greyscale is scaled, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode.startswith("I") or image.mode == "F":
        return _scale_to_8bit(image).convert("RGB")
    return image.convert("RGB")


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> 8-bit: 16-bit data by /257, float data in
    [0, 1] by x255, anything else clipped to [0, 255]."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and values.max(initial=0) > 255):
        values = values / 257.0
    elif image.mode == "F" and values.size and values.min() >= 0.0 and values.max() <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def list_images(source: Path) -> list[ImageEntry]:
    """A folder (searched recursively for image suffixes; ids are the relative paths
    without suffix) or a list file (one path a line, relative to the list's folder, or
    `id<TAB>path`; ids default to the file stem). Order is sorted for folders, as written
    for lists. Raises FileNotFoundError / ValueError with the fix."""
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist; pass an image folder or a list file")
    entries = _list_folder(source) if source.is_dir() else _list_file(source)
    if not entries:
        kinds = " ".join(IMAGE_SUFFIXES)
        raise ValueError(f"no images found in {source} (looked for {kinds})")
    _check_unique(entries, source)
    return entries


def _list_folder(folder: Path) -> list[ImageEntry]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if len(images) < len(files):
        logger.info(
            "%s: ignoring %d files without an image suffix", folder, len(files) - len(images)
        )
    return [ImageEntry(p.relative_to(folder).with_suffix("").as_posix(), p) for p in images]


def _list_file(list_path: Path) -> list[ImageEntry]:
    entries = []
    for number, line in enumerate(list_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        image_id, tab, path_text = line.partition("\t")
        path = Path((path_text if tab else image_id).strip())
        if not tab:
            image_id = path.stem
        if not image_id.strip():
            raise ValueError(f"{list_path}:{number}: empty image id")
        entries.append(
            ImageEntry(image_id.strip(), path if path.is_absolute() else list_path.parent / path)
        )
    return entries


def _check_unique(entries: list[ImageEntry], source: Path) -> None:
    seen: dict[str, Path] = {}
    for entry in entries:
        if entry.image_id in seen:
            raise ValueError(
                f"{source}: image id {entry.image_id!r} used by {seen[entry.image_id]} and "
                f"{entry.path}; give explicit ids as `id<TAB>path` lines"
            )
        seen[entry.image_id] = entry.path
