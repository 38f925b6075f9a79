"""Drawing a sampled scene: a light, low-saturation background, gently shaded and
textured, under flat, saturated shapes (so a region extractor can segment objects by
colour). The pixels depend only on (seed, scene)."""

from __future__ import annotations

import logging
import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from model.synth.scene import Scene, SceneObject

logger = logging.getLogger(__name__)

_SHADE_MAX = 27  # grey levels: shading (8) + texture (5) + a speck (14), clipped to this


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
