"""Image preprocessing that follows a model directory's `preprocessor_config.json`, in PIL + numpy.

Transformers' own image processors may need torchvision, which does not import beside the
pinned torch, so this module reads the same keys and reproduces the steps it needs:
resize (`size` as `{"shortest_edge"[, "longest_edge"]}`, `{"height", "width"}` or an int),
`resample`, center crop (`crop_size`, ConvNeXt's `crop_pct`), rescale and normalise.

Every network input of one extractor has one fixed size, so an image's pixels never depend
on the other images of its batch. How an image of any aspect ratio reaches that size is the
`fit`:
- `stretch`: resize straight to (H, W); the whole image is seen, its aspect is not kept;
- `crop`:    the config's aspect-keeping resize, then a center crop of (H, W) (what the
             classifier was trained on; the image borders are lost);
- `pad`:     scale to fit inside (H, W) keeping the aspect, pad bottom / right with zeros and
             mark the valid pixels in a mask (DETR's padding, on a fixed canvas).
Each image's `Geometry` says where the original image lies in the input, to map boxes back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

PREPROCESSOR_FILE = "preprocessor_config.json"
FITS = ("stretch", "crop", "pad")
Fit = Literal["stretch", "crop", "pad"]

# ConvNeXt's processor applies crop_pct only below this edge and warps to a square above it
CROP_PCT_MAX_EDGE = 384
PIL_RESAMPLE_CODES = {0, 1, 2, 3, 4, 5}  # nearest, lanczos, bilinear, bicubic, box, hamming


@dataclass(frozen=True)
class ResizeRule:
    """The `size` of a preprocessor config: a shortest edge (aspect kept) or a fixed (H, W)."""

    shortest_edge: int | None = None
    longest_edge: int | None = None  # cap on the long side after a shortest-edge resize
    height: int | None = None
    width: int | None = None


@dataclass(frozen=True)
class PreprocessConfig:
    """The preprocessing steps a model directory asks for; None disables a step."""

    resize: ResizeRule | None  # None when do_resize is false
    resample: int  # PIL resampling code
    crop_size: tuple[int, int] | None  # (H, W) of the center crop when do_center_crop
    crop_pct: float | None  # ConvNeXt-style: resize the short edge to size / crop_pct, then crop
    rescale_factor: float | None  # None when do_rescale is false
    image_mean: tuple[float, ...] | None  # None when do_normalize is false
    image_std: tuple[float, ...] | None
    do_pad: bool  # the model was trained on padded batches with a pixel mask (DETR)


@dataclass(frozen=True)
class Geometry:
    """Where an original image lies in the network input, in input pixels."""

    width: int  # original image size
    height: int
    content: tuple[float, float, float, float]  # x0 y0 x1 y1 the whole image spans (may exceed
    # the input when cropped)


@dataclass
class PixelBatch:
    """Network inputs of B images, all of one size."""

    pixel_values: np.ndarray  # (B, 3, H, W) float32
    pixel_mask: np.ndarray  # (B, H, W) int64, 1 on image pixels, 0 on padding
    geometries: list[Geometry]


def load_preprocess_config(directory: Path) -> PreprocessConfig:
    """Read `directory/preprocessor_config.json`; ValueError naming the file when missing or bad."""
    path = Path(directory) / PREPROCESSOR_FILE
    if not path.is_file():
        raise ValueError(
            f"{path} is missing: save the model's image processor config there (do_resize, size, "
            "image_mean, image_std, ...)"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); fix or re-save it") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return parse_preprocess_config(data, str(path))


def parse_preprocess_config(
    data: dict[str, Any], source: str = PREPROCESSOR_FILE
) -> PreprocessConfig:
    """Validate the keys of a preprocessor config (defaults as transformers' processors)."""
    crop_pct = data.get("crop_pct")
    do_crop = bool(data.get("do_center_crop", False))
    resize = None
    if data.get("do_resize", True):
        # an int size keeps the aspect when a crop follows (CLIP, ConvNeXt), else is a square
        resize = _parse_size(
            data.get("size"), "size", source, keep_aspect=do_crop or bool(crop_pct)
        )
    crop_size = None
    if do_crop:
        crop = _parse_size(data.get("crop_size"), "crop_size", source, keep_aspect=False)
        crop_size = (crop.height, crop.width)
    resample = data.get("resample", 2)
    if resample not in PIL_RESAMPLE_CODES:
        raise ValueError(f"{source}: resample must be a PIL code 0..5, got {resample!r}")
    if crop_pct is not None and not (isinstance(crop_pct, int | float) and 0 < crop_pct <= 1):
        raise ValueError(f"{source}: crop_pct must be in (0, 1], got {crop_pct!r}")
    rescale = _parse_rescale(data, source)
    mean, std = _parse_normalize(data, source)
    return PreprocessConfig(
        resize, resample, crop_size, crop_pct, rescale, mean, std, bool(data.get("do_pad", False))
    )


def _parse_size(value: Any, key: str, source: str, keep_aspect: bool) -> ResizeRule:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return (
            ResizeRule(shortest_edge=value)
            if keep_aspect
            else ResizeRule(height=value, width=value)
        )
    if isinstance(value, dict):
        fields = {k: value.get(k) for k in ("shortest_edge", "longest_edge", "height", "width")}
        if all(isinstance(v, int) and v > 0 for v in fields.values() if v is not None):
            rule = ResizeRule(**fields)
            if rule.shortest_edge is not None or (rule.height and rule.width):
                return rule
    raise ValueError(
        f"{source}: {key} must be a positive int, {{'shortest_edge': n}} (optionally with "
        f"'longest_edge') or {{'height': h, 'width': w}}; got {value!r}"
    )


def _parse_rescale(data: dict[str, Any], source: str) -> float | None:
    if not data.get("do_rescale", True):
        return None
    factor = data.get("rescale_factor", 1 / 255)
    if not isinstance(factor, int | float) or factor <= 0:
        raise ValueError(f"{source}: rescale_factor must be a positive number, got {factor!r}")
    return float(factor)


def _parse_normalize(
    data: dict[str, Any], source: str
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    if not data.get("do_normalize", True):
        return None, None
    mean, std = data.get("image_mean"), data.get("image_std")
    for key, value in (("image_mean", mean), ("image_std", std)):
        if not (isinstance(value, list) and len(value) == 3 and all(_is_number(v) for v in value)):
            raise ValueError(
                f"{source}: {key} must be a list of 3 numbers (RGB) when do_normalize is true, "
                f"got {value!r}"
            )
    if any(s <= 0 for s in std):
        raise ValueError(f"{source}: image_std must be positive, got {std!r}")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def default_input_size(config: PreprocessConfig) -> tuple[int, int]:
    """(H, W) the model was trained on: the crop if any, else the fixed resize, else a square of
    the shortest edge. ValueError when the config fixes no size (pass an input size)."""
    if config.crop_size is not None:
        return config.crop_size
    rule = config.resize
    if rule is None:
        raise ValueError("the preprocessor config does not resize; pass input_size=[H, W]")
    if rule.height and rule.width:
        return rule.height, rule.width
    assert rule.shortest_edge is not None  # guaranteed by _parse_size
    return rule.shortest_edge, rule.shortest_edge


def resized_shape(height: int, width: int, rule: ResizeRule) -> tuple[int, int]:
    """(h, w) after the config's resize, rounding as transformers does."""
    if rule.shortest_edge is None:
        assert rule.height and rule.width  # guaranteed by _parse_size
        return rule.height, rule.width
    short = rule.shortest_edge
    low, high = min(height, width), max(height, width)
    if rule.longest_edge is not None and high / low * short > rule.longest_edge:
        short = round(rule.longest_edge * low / high)
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def crop_resize_shape(
    height: int, width: int, config: PreprocessConfig, input_size: tuple[int, int]
) -> tuple[int, int]:
    """(h, w) of the aspect-keeping resize before a center crop of input_size; never smaller
    than the crop, so the crop needs no padding."""
    rule = config.resize or ResizeRule(height=height, width=width)
    if config.crop_pct and rule.shortest_edge and rule.shortest_edge < CROP_PCT_MAX_EDGE:
        rule = ResizeRule(shortest_edge=int(rule.shortest_edge / config.crop_pct))
    new_h, new_w = resized_shape(height, width, rule)
    grow = max(input_size[0] / new_h, input_size[1] / new_w, 1.0)
    if grow > 1.0:
        new_h, new_w = (
            max(input_size[0], round(new_h * grow)),
            max(input_size[1], round(new_w * grow)),
        )
    return new_h, new_w


def prepare_image(
    image: Image.Image, config: PreprocessConfig, input_size: tuple[int, int], fit: Fit
) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """One image -> pixels (3, H, W) float32, mask (H, W) int64 and its geometry."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    height, width = input_size
    if fit == "stretch":
        resized = _resize(image, height, width, config.resample)
        content = (0.0, 0.0, float(width), float(height))
    elif fit == "crop":
        new_h, new_w = crop_resize_shape(image.height, image.width, config, input_size)
        top, left = (new_h - height) // 2, (new_w - width) // 2  # transformers' center crop
        resized = _resize(image, new_h, new_w, config.resample).crop(
            (left, top, left + width, top + height)
        )
        content = (float(-left), float(-top), float(new_w - left), float(new_h - top))
    elif fit == "pad":
        scale = min(height / image.height, width / image.width)
        new_h = min(height, max(1, round(image.height * scale)))
        new_w = min(width, max(1, round(image.width * scale)))
        resized = _resize(image, new_h, new_w, config.resample)
        content = (0.0, 0.0, float(new_w), float(new_h))
    else:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    pixels = normalize(np.asarray(resized, dtype=np.float32), config)  # (h, w, 3)
    canvas = np.zeros((3, height, width), dtype=np.float32)
    canvas[:, : pixels.shape[0], : pixels.shape[1]] = pixels.transpose(2, 0, 1)
    mask = np.zeros((height, width), dtype=np.int64)
    mask[: pixels.shape[0], : pixels.shape[1]] = 1
    return canvas, mask, Geometry(image.width, image.height, content)


def _resize(image: Image.Image, height: int, width: int, resample: int) -> Image.Image:
    if (image.height, image.width) == (height, width):
        return image
    return image.resize((width, height), resample=Image.Resampling(resample))


def normalize(pixels: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """(h, w, 3) raw 0..255 values -> rescaled and normalised float32 values."""
    if config.rescale_factor is not None:
        pixels = pixels * np.float32(config.rescale_factor)
    if config.image_mean is not None and config.image_std is not None:
        mean = np.asarray(config.image_mean, dtype=np.float32)
        std = np.asarray(config.image_std, dtype=np.float32)
        pixels = (pixels - mean) / std
    return pixels.astype(np.float32, copy=False)


def preprocess_images(
    images: Sequence[Image.Image], config: PreprocessConfig, input_size: tuple[int, int], fit: Fit
) -> PixelBatch:
    """B images of any sizes -> one batch of fixed size (H, W); row b depends on image b only."""
    if not images:
        raise ValueError("preprocess_images needs at least one image")
    prepared = [prepare_image(image, config, input_size, fit) for image in images]
    return PixelBatch(
        pixel_values=np.stack([p[0] for p in prepared]),  # (B, 3, H, W)
        pixel_mask=np.stack([p[1] for p in prepared]),  # (B, H, W)
        geometries=[p[2] for p in prepared],
    )


def input_boxes_to_fractions(boxes: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(N, 4) x0 y0 x1 y1 in input pixels -> fractions of the original image, clipped to [0, 1]."""
    x0, y0, x1, y1 = geometry.content
    scale = np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0], dtype=np.float64)
    offset = np.array([x0, y0, x0, y0], dtype=np.float64)
    return np.clip((boxes - offset) / scale, 0.0, 1.0).astype(np.float32)


def grid_cells(rows: int, cols: int, cell_height: float, cell_width: float) -> np.ndarray:
    """(rows * cols, 4) x0 y0 x1 y1 of the cells of a grid in input pixels, row-major."""
    row, col = np.divmod(np.arange(rows * cols), cols)
    return np.stack(
        [col * cell_width, row * cell_height, (col + 1) * cell_width, (row + 1) * cell_height],
        axis=1,
    ).astype(np.float64)
