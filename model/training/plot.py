"""Training curves as a PNG drawn with Pillow (no plotting library needed): one panel
per quantity, epochs on the x axis."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from model.io import atomic_writer

logger = logging.getLogger(__name__)

PANELS = (  # title, [(record key, colour)]
    ("train loss", [("loss", (31, 119, 180))]),
    ("val R@1", [("val_t2i_r1", (214, 39, 40)), ("val_i2t_r1", (44, 160, 44))]),
    ("val rsum", [("val_rsum", (148, 103, 189))]),
)
PANEL_W, PANEL_H, MARGIN = 360, 240, 40


def plot_curves(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Draw the epoch records (dicts with `epoch` and the PANELS keys) into path."""
    epochs = [r for r in records if "epoch" in r and "loss" in r]
    image = Image.new("RGB", (PANEL_W * len(PANELS), PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    for index, (title, series) in enumerate(PANELS):
        _panel(draw, index * PANEL_W, title, series, epochs)
    with atomic_writer(path) as handle:
        image.save(handle, format="PNG")


def _panel(draw: ImageDraw.ImageDraw, left: int, title: str, series, records) -> None:
    x0, y0, x1, y1 = left + MARGIN, 24, left + PANEL_W - 12, PANEL_H - 28
    draw.rectangle((x0, y0, x1, y1), outline=(160, 160, 160))
    draw.text((x0, 6), title, fill="black")
    values = [r[key] for key, _ in series for r in records if key in r]
    if not values:
        draw.text((x0 + 8, y0 + 8), "no data yet", fill=(120, 120, 120))
        return
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 1.0, high + 1.0
    last_epoch = max(r["epoch"] for r in records)
    first_epoch = min(r["epoch"] for r in records)
    span = max(1, last_epoch - first_epoch)
    draw.text((left + 2, y0), f"{high:.3g}", fill="black")
    draw.text((left + 2, y1 - 10), f"{low:.3g}", fill="black")
    draw.text((x0, y1 + 6), f"epoch {first_epoch}", fill="black")
    draw.text((x1 - 50, y1 + 6), f"{last_epoch}", fill="black")
    for offset, (key, colour) in enumerate(series):
        points = [
            (
                x0 + (r["epoch"] - first_epoch) / span * (x1 - x0),
                y1 - (r[key] - low) / (high - low) * (y1 - y0),
            )
            for r in records
            if key in r
        ]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        draw.text((x1 - 110, y0 + 4 + 12 * offset), key, fill=colour)
