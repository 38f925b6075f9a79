"""`chan bench extract`: images per second and peak memory of the region extractors.

The models are built with random weights, in a temporary directory, at the sizes used in
practice (random weights cost the same FLOPs as trained ones; nothing is downloaded):
- grid: ResNet-50 (transformers' ResNetConfig defaults) on 224 x 224 inputs, so a 7 x 7
  grid: 49 regions of 2048;
- detr: DETR-R50 (DetrConfig defaults: 6 + 6 layers, d_model 256, 100 queries, 91 classes)
  with the native ResNet-50 backbone, on a 512 x 512 padded canvas (`--detr-size`): the
  published 800-shortest-edge setting has 2.4x the pixels and is too slow for a CPU run;
  the top 36 queries: 36 regions of 256;
- demo: the weight-free extractor at its defaults, when it is registered.
The inputs are synthetic 160 x 160 images of coloured shapes. Each extractor first runs one
warm-up batch that is not timed. Peak memory is the process's peak resident set (Linux
/proc, everything imported included) while the extractor is built and run; the counter is
restarted before each extractor.
"""

from __future__ import annotations

import gc
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from model.features.extractors.base import RegionExtractor, create_extractor

logger = logging.getLogger(__name__)

EXTRACTORS = ("grid", "detr", "demo")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DETR_REGIONS = 36


def parse_extractors(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = sorted(set(names) - set(EXTRACTORS))
    if unknown or not names:
        raise ValueError(f"--extractors takes names from {','.join(EXTRACTORS)}, got {value!r}")
    return names


def run_extract_bench(
    names: Sequence[str] = EXTRACTORS,
    num_images: int = 64,
    batch_size: int = 16,
    image_size: int = 160,
    grid_size: int = 224,
    detr_size: int = 512,
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Build each named extractor and time it on `num_images` synthetic images."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    images = synthetic_images(num_images, image_size, seed)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="chan-bench-extract-") as tmp:
        for name in names:
            reset_peak_rss()
            start = time.perf_counter()
            extractor = build_extractor(name, Path(tmp), grid_size, detr_size, seed)
            if extractor is None:
                continue
            build_s = time.perf_counter() - start
            results[name] = time_extractor(name, extractor, images, batch_size)
            results[name]["build_s"] = build_s
            results[name]["peak_rss_mb"] = peak_rss_bytes() / 2**20
            del extractor
            gc.collect()
    return {
        "images": num_images,
        "batch_size": batch_size,
        "image_size": image_size,
        "threads": torch.get_num_threads(),
        "extractors": results,
    }


def build_extractor(
    name: str, root: Path, grid_size: int, detr_size: int, seed: int
) -> RegionExtractor | None:
    """The named extractor on random weights written under root; None when not available."""
    if name == "grid":
        return create_extractor(
            f"grid:{write_resnet50(root / 'resnet50', seed)}", input_size=grid_size
        )
    if name == "detr":
        directory = write_detr_r50(root / "detr-r50", seed)
        return create_extractor(f"detr:{directory}", input_size=detr_size, num_regions=DETR_REGIONS)
    try:
        return create_extractor("demo")
    except (ImportError, ValueError) as err:  # the demo extractor is optional here
        logger.warning("skipping the demo extractor: %s", err)
        return None


def write_resnet50(directory: Path, seed: int) -> Path:
    """A random-weight ResNet-50 saved with save_pretrained, with an ImageNet preprocessor."""
    import torch
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(seed)
    logger.info("building a random ResNet-50 in %s", directory)
    ResNetModel(ResNetConfig()).save_pretrained(directory)
    write_preprocessor(directory, {"size": {"height": 224, "width": 224}})
    return directory


def write_detr_r50(directory: Path, seed: int) -> Path:
    """A random-weight DETR-R50 (native transformers ResNet-50 backbone, no timm)."""
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    torch.manual_seed(seed)
    logger.info("building a random DETR-R50 in %s", directory)
    config = DetrConfig(backbone_config=ResNetConfig(out_features=["stage4"]), num_labels=91)
    DetrForObjectDetection(config).save_pretrained(directory)
    size = {"shortest_edge": 800, "longest_edge": 1333}  # DETR's published setting
    write_preprocessor(directory, {"size": size, "do_pad": True})
    return directory


def write_preprocessor(directory: Path, extra: dict[str, Any]) -> None:
    config = {"do_resize": True, "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255}
    config |= {"do_normalize": True, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}
    (directory / "preprocessor_config.json").write_text(json.dumps(config | extra, indent=2))


def synthetic_images(count: int, size: int, seed: int) -> list[Image.Image]:
    """`count` RGB images of a few coloured ellipses and rectangles on a light background."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        image = Image.new("RGB", (size, size), (235, 235, 230))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 5))):
            x0, y0 = rng.integers(0, size * 3 // 4, 2)
            side = int(rng.integers(size // 8, size // 3))
            colour = tuple(int(c) for c in rng.integers(0, 200, 3))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((int(x0), int(y0), int(x0) + side, int(y0) + side), fill=colour)
        images.append(image)
    return images


def time_extractor(
    name: str, extractor: RegionExtractor, images: list[Image.Image], batch_size: int
) -> dict[str, Any]:
    """Seconds for all images in batches of batch_size, after one untimed warm-up batch."""
    extractor.extract(images[:batch_size])
    starts = range(0, len(images), batch_size)
    start = time.perf_counter()
    for first in tqdm(starts, desc=f"extract {name}", unit="batch", leave=False):
        extractor.extract(images[first : first + batch_size])
    seconds = time.perf_counter() - start
    spec = extractor.spec
    return {
        "images_per_s": len(images) / seconds,
        "seconds": seconds,
        "num_regions": spec.num_regions,
        "dim": spec.dim,
        "input_size": spec.input_size,
    }


def reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS counter at the current resident set (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as err:  # not Linux, or not allowed: the peak then covers the whole run
        logger.debug("cannot reset the peak RSS: %s", err)


def peak_rss_bytes() -> int:
    """Peak resident set of this process since the last reset (VmHWM), 0 where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def format_report(result: dict[str, Any]) -> str:
    """A table: one line per extractor."""
    lines = [
        f"extract throughput: {result['images']} images of {result['image_size']}px, "
        f"batch {result['batch_size']}, {result['threads']} threads",
        f"{'extractor':<10} {'input':>9} {'K':>4} {'D':>5} {'images/s':>9} {'build s':>8} "
        f"{'peak RSS MB':>12}",
    ]
    for name, row in result["extractors"].items():
        size = "x".join(str(s) for s in row["input_size"] or []) or "native"
        lines.append(
            f"{name:<10} {size:>9} {row['num_regions']:>4} {row['dim']:>5} "
            f"{row['images_per_s']:>9.1f} {row['build_s']:>8.1f} {row['peak_rss_mb']:>12.0f}"
        )
    return "\n".join(lines)
