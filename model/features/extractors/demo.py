"""`demo`: a weight-free region extractor for the synthetic world.

It proposes object regions the way a detector would, with no learned weights: pixels that
are saturated or dark stand out from a light, unsaturated background; their connected
components, split by hue when two colours touch, are the objects. Each region is then
described by fixed features a linear layer can read:

- colour: the region's hue as soft votes on 24 hue centres (x saturation), darkness,
  mean saturation and value;
- shape: the region's mask cropped to its box and resized to 12 x 12, plus radial
  encodings of fill ratio, box aspect, compactness and the rotation-invariant Fourier
  magnitudes of the boundary's radius profile (3-fold triangle, 4-fold square, 5-fold
  star, ...);
- size and position: area, width, height and centre, each as radial encodings.

Region 0 is the whole image (colour mix, foreground share, count of objects), so K-1
objects fit. Photographs are out of scope: this is the demo and test extractor.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from model.features.extractors.base import ExtractorSpec, RegionBatch, register

logger = logging.getLogger(__name__)

DIM = 256  # feature size; the parts below add up to it
HUE_BINS = 24
MASK_SIDE = 12  # shape thumbnail side (12 x 12 = 144 features)
PROFILE_ANGLES = 64  # samples of the boundary radius profile
FOURIER_TERMS = 8
SATURATED = 0.35  # HSV saturation above which a pixel is coloured ink
DARK = 0.3  # HSV value below which a pixel is dark ink
MIN_AREA_FRACTION = 0.002  # smaller components are noise
MIN_MODE_SHARE = 0.12  # a second hue inside one component must cover this share to split it


@register("demo")
def build_demo(directory: Path | None = None, num_regions: int = 10, size: int = 160):
    if directory is not None:
        raise ValueError("the demo extractor has no weights; drop --weights / the :<dir> part")
    return DemoExtractor(num_regions=num_regions, size=size)


class DemoExtractor:
    """Colour-segment proposals + fixed descriptors; see the module docstring."""

    def __init__(self, num_regions: int = 10, size: int = 160) -> None:
        if num_regions < 2:
            raise ValueError("the demo extractor needs num_regions >= 2 (whole image + objects)")
        if not 32 <= size <= 1024:
            raise ValueError(f"demo extractor size must lie in [32, 1024], got {size}")
        self.num_regions, self.size = num_regions, size
        self.spec = ExtractorSpec(
            name="demo",
            num_regions=num_regions,
            dim=DIM,
            input_size=[size, size],
            options={"num_regions": num_regions, "size": size},
        )

    def extract(self, images: Sequence[Image.Image]) -> RegionBatch:
        batch = RegionBatch(
            features=np.zeros((len(images), self.num_regions, DIM), np.float32),
            counts=np.zeros(len(images), np.int32),
            boxes=np.zeros((len(images), self.num_regions, 4), np.float32),
        )
        for row, image in enumerate(images):
            feats, boxes = self._one(image)
            batch.features[row, : len(feats)] = feats
            batch.boxes[row, : len(boxes)] = boxes
            batch.counts[row] = len(feats)
        return batch

    def _one(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """One image -> (n, DIM) features and (n, 4) fractional boxes, whole image first."""
        hsv = _resize_hsv(image, self.size)
        labels = segment(hsv)
        regions = _largest(labels, self.num_regions - 1)
        height, width = labels.shape
        feats = [global_features(hsv, len(regions))]
        boxes = [np.array([0.0, 0.0, 1.0, 1.0], np.float32)]
        for mask in regions:
            feats.append(region_features(mask, hsv))
            ys, xs = np.nonzero(mask)
            boxes.append(
                np.array(
                    [
                        xs.min() / width,
                        ys.min() / height,
                        (xs.max() + 1) / width,
                        (ys.max() + 1) / height,
                    ],
                    np.float32,
                )
            )
        return np.stack(feats), np.stack(boxes)


def _resize_hsv(image: Image.Image, size: int) -> np.ndarray:
    """Longer side -> size (aspect kept), as HSV floats in [0, 1]; (h, w, 3)."""
    width, height = image.size
    scale = size / max(width, height)
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = image.convert("RGB").resize(shape, Image.Resampling.BILINEAR)
    return np.asarray(resized.convert("HSV"), dtype=np.float32) / 255.0


def colour_class(hsv: np.ndarray) -> np.ndarray:
    """(h, w) int: -1 background, 0..HUE_BINS-1 hue bin of coloured ink, HUE_BINS dark ink."""
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    classes = np.full(hue.shape, -1, np.int32)
    inked = (sat > SATURATED) & (val >= DARK)
    classes[inked] = (hue[inked] * HUE_BINS).astype(np.int32) % HUE_BINS
    classes[val < DARK] = HUE_BINS
    return classes


def segment(hsv: np.ndarray) -> np.ndarray:
    """(h, w) int labels: 0 background, 1..n object regions."""
    classes = colour_class(hsv)
    min_area = max(4, int(MIN_AREA_FRACTION * classes.size))
    components, _ = ndimage.label(classes >= 0, structure=np.ones((3, 3)))
    labels = np.zeros(classes.shape, np.int32)
    next_label = 1
    for index, piece in enumerate(ndimage.find_objects(components), 1):
        window = components[piece] == index
        for mask in _split_by_colour(classes[piece], window, min_area):
            labels[piece][mask] = next_label
            next_label += 1
    return labels


def _split_by_colour(classes: np.ndarray, window: np.ndarray, min_area: int) -> list[np.ndarray]:
    """One connected component -> one mask per colour mode in it (two touching objects)."""
    if window.sum() < min_area:
        return []
    votes = np.bincount(classes[window], minlength=HUE_BINS + 1).astype(np.float64)
    modes = _colour_modes(votes)
    if len(modes) == 1:
        return [window]
    nearest = _nearest_mode(classes, modes)
    masks = []
    for mode_index in range(len(modes)):
        parts, count = ndimage.label(window & (nearest == mode_index), structure=np.ones((3, 3)))
        sizes = np.bincount(parts.ravel(), minlength=count + 1)
        masks += [parts == p for p in range(1, count + 1) if sizes[p] >= min_area]
    return masks


def _colour_modes(votes: np.ndarray) -> list[int]:
    """Peaks of the circular hue histogram (plus the dark class) holding enough pixels."""
    hue = votes[:HUE_BINS]
    smooth = hue + 0.5 * (np.roll(hue, 1) + np.roll(hue, -1))
    total = votes.sum()
    peaks = [
        b
        for b in range(HUE_BINS)
        if smooth[b] >= smooth[b - 1]
        and smooth[b] > smooth[(b + 1) % HUE_BINS]
        and smooth[b] >= MIN_MODE_SHARE * total
    ]
    if votes[HUE_BINS] >= MIN_MODE_SHARE * total:
        peaks.append(HUE_BINS)
    return peaks or [int(np.argmax(votes))]


def _nearest_mode(classes: np.ndarray, modes: list[int]) -> np.ndarray:
    """Each pixel's closest mode: circular hue distance, dark only to dark."""
    distance = np.empty((len(modes), *classes.shape), np.float32)
    for index, mode in enumerate(modes):
        if mode == HUE_BINS:
            distance[index] = np.where(classes == HUE_BINS, 0, HUE_BINS)
        else:
            gap = np.abs(classes - mode) % HUE_BINS
            distance[index] = np.where(
                classes == HUE_BINS, HUE_BINS, np.minimum(gap, HUE_BINS - gap)
            )
    return distance.argmin(axis=0)


def _largest(labels: np.ndarray, limit: int) -> list[np.ndarray]:
    """The `limit` largest regions, ordered by area then position (deterministic)."""
    sizes = np.bincount(labels.ravel())
    order = sorted(range(1, len(sizes)), key=lambda lab: (-sizes[lab], lab))
    return [labels == lab for lab in order[:limit] if sizes[lab] > 0]


def rbf(value: float, low: float, high: float, count: int) -> np.ndarray:
    """Radial encoding of a scalar on `count` centres spanning [low, high]."""
    centres = np.linspace(low, high, count)
    width = (high - low) / (count - 1)
    return np.exp(-0.5 * ((value - centres) / width) ** 2).astype(np.float32)


FINE_BINS = 4 * HUE_BINS


def _vote_kernel() -> np.ndarray:
    """(FINE_BINS, HUE_BINS): how much a hue in each fine bin votes for each centre."""
    fine = (np.arange(FINE_BINS) + 0.5) / FINE_BINS
    centres = (np.arange(HUE_BINS) + 0.5) / HUE_BINS
    gap = np.abs(fine[:, None] - centres[None, :])
    gap = np.minimum(gap, 1.0 - gap) * HUE_BINS  # in bins
    return np.exp(-0.5 * gap**2)


_KERNEL = _vote_kernel()


def hue_votes(hsv_pixels: np.ndarray) -> np.ndarray:
    """(n, 3) HSV pixels -> HUE_BINS soft votes weighted by saturation, summing to <= 1."""
    fine = (hsv_pixels[:, 0] * FINE_BINS).astype(np.int64) % FINE_BINS
    weight = hsv_pixels[:, 1] * (hsv_pixels[:, 2] >= DARK)
    histogram = np.bincount(fine, weights=weight, minlength=FINE_BINS)
    votes = histogram @ _KERNEL / max(1, len(hsv_pixels))
    return (votes / max(1.0, votes.sum())).astype(np.float32)


def region_features(mask: np.ndarray, hsv: np.ndarray) -> np.ndarray:
    """(h, w) bool mask of one object -> (DIM,) features."""
    pixels = hsv[mask]
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    box_h, box_w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    area = mask.sum() / mask.size
    parts = [
        hue_votes(pixels) * 4.0,
        np.array(
            [(pixels[:, 2] < DARK).mean(), pixels[:, 1].mean(), pixels[:, 2].mean(), 0.0],
            np.float32,
        ),
        mask_thumbnail(mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]),
        shape_features(mask, box_h, box_w),
        rbf(np.log(area), np.log(0.005), np.log(0.25), 8),
        rbf(box_w / width, 0.0, 0.5, 6),
        rbf(box_h / height, 0.0, 0.5, 6),
        rbf(xs.mean() / width, 0.0, 1.0, 7),
        rbf(ys.mean() / height, 0.0, 1.0, 7),
    ]
    return _fill(parts, is_global=False)


def mask_thumbnail(crop: np.ndarray) -> np.ndarray:
    """A box-cropped mask resized to MASK_SIDE x MASK_SIDE, flattened (coverage per cell)."""
    image = Image.fromarray(crop.astype(np.uint8) * 255)
    thumb = image.resize((MASK_SIDE, MASK_SIDE), Image.Resampling.BOX)
    return np.asarray(thumb, np.float32).ravel() / 255.0


def shape_features(mask: np.ndarray, box_h: int, box_w: int) -> np.ndarray:
    """Fill ratio, aspect, compactness and Fourier magnitudes of the radius profile."""
    area = float(mask.sum())
    fill = area / (box_h * box_w)
    aspect = np.log(box_w / box_h)
    boundary = mask & ~ndimage.binary_erosion(mask)
    compact = boundary.sum() ** 2 / (4 * np.pi * area)
    return np.concatenate(
        [
            rbf(fill, 0.3, 1.0, 8),
            rbf(aspect, -1.0, 1.0, 5),
            rbf(np.log(compact), 0.0, 1.5, 6),
            radius_spectrum(mask, boundary),
        ]
    )


def radius_spectrum(mask: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    """Boundary radius as a function of angle around the centroid -> |FFT| terms 1..8
    relative to the mean radius (rotation invariant: a k-pointed shape peaks at k)."""
    ys, xs = np.nonzero(mask)
    by, bx = np.nonzero(boundary)
    angle = np.arctan2(by - ys.mean(), bx - xs.mean())
    radius = np.hypot(by - ys.mean(), bx - xs.mean())
    bins = ((angle + np.pi) / (2 * np.pi) * PROFILE_ANGLES).astype(np.int64) % PROFILE_ANGLES
    profile = np.zeros(PROFILE_ANGLES)
    np.maximum.at(profile, bins, radius)
    filled = profile > 0
    if filled.sum() < 3:
        return np.zeros(FOURIER_TERMS, np.float32)
    positions = np.arange(PROFILE_ANGLES)
    profile = np.interp(positions, positions[filled], profile[filled], period=PROFILE_ANGLES)
    spectrum = np.abs(np.fft.rfft(profile))
    return (4.0 * spectrum[1 : FOURIER_TERMS + 1] / max(spectrum[0], 1e-6)).astype(np.float32)


def global_features(hsv: np.ndarray, num_objects: int) -> np.ndarray:
    """The whole image: ink colours, ink share, and how many objects were found."""
    classes = colour_class(hsv)
    ink = classes >= 0
    pixels = hsv[ink] if ink.any() else hsv.reshape(-1, 3)[:1] * 0
    parts = [
        hue_votes(pixels) * 2.0,
        np.array([(classes == HUE_BINS).mean(), ink.mean(), hsv[..., 2].mean(), 0.0], np.float32),
        np.eye(10, dtype=np.float32)[min(num_objects, 9)],
    ]
    return _fill(parts, is_global=True)


def _fill(parts: list[np.ndarray], is_global: bool) -> np.ndarray:
    """Concatenate into DIM slots; the last slot flags the whole-image region."""
    features = np.zeros(DIM, np.float32)
    flat = np.concatenate(parts).astype(np.float32)
    assert flat.size < DIM, f"demo features overflow: {flat.size} >= {DIM}"
    features[: flat.size] = flat
    features[-1] = 1.0 if is_global else 0.0
    return features
