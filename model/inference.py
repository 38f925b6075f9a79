"""Batched encoding of region-feature files and caption files with a loaded model."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.chan import CHANModel
from model.checkpoint import LoadedCheckpoint
from model.scoring import FlatWords

logger = logging.getLogger(__name__)


def read_regions(
    path: Path, lens_path: Path | None, img_dim: int | None, allow_empty: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Open [N, K, D] region features (memory-mapped) and their [N] valid counts. D must
    equal img_dim when given; allow_empty accepts count 0 (an image that failed
    extraction)."""
    if not path.is_file():
        raise FileNotFoundError(f"region feature file {path} not found")
    try:
        regions = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{path} is not a .npy array: {exc}") from None
    if regions.ndim != 3 or (img_dim is not None and regions.shape[2] != img_dim):
        raise ValueError(
            f"{path} has shape {regions.shape}; the model expects [N, K, {img_dim or 'D'}] "
            "(its img_dim): extract with the matching extractor or pick the matching config"
        )
    if not np.issubdtype(regions.dtype, np.floating):
        raise ValueError(f"{path} holds {regions.dtype}; region features must be floats")
    if lens_path is None:
        return regions, np.full(regions.shape[0], regions.shape[1], dtype=np.int64)
    if not lens_path.is_file():
        raise FileNotFoundError(f"region count file {lens_path} not found")
    lens = np.load(lens_path, allow_pickle=False)
    if lens.shape != (regions.shape[0],) or not np.issubdtype(lens.dtype, np.integer):
        raise ValueError(
            f"{lens_path} must be [{regions.shape[0]}] integers (one count per image), "
            f"got {lens.shape} {lens.dtype}"
        )
    low = 0 if allow_empty else 1
    if lens.size and (lens.min() < low or lens.max() > regions.shape[1]):
        raise ValueError(f"{lens_path}: region counts must lie in [{low}, {regions.shape[1]}]")
    return regions, lens.astype(np.int64)


def read_captions(path: Path) -> list[str]:
    """One caption a line; empty lines are an error (they would shift the columns)."""
    if not path.is_file():
        raise FileNotFoundError(f"caption file {path} not found")
    captions = path.read_text(encoding="utf-8").splitlines()
    for number, caption in enumerate(captions, 1):
        if not caption.strip():
            raise ValueError(f"{path}:{number}: empty caption; remove the line or write a caption")
    if not captions:
        raise ValueError(f"{path} holds no captions")
    return [c.strip() for c in captions]


def encode_regions(
    model: CHANModel, regions: np.ndarray, lens: np.ndarray, batch_size: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K, D] features -> (N, K, d) embeddings and (N,) counts, batch by batch."""
    out = torch.empty(regions.shape[0], regions.shape[1], model.config.embed_size)
    for start in tqdm(
        range(0, regions.shape[0], batch_size), desc="encode images", unit="batch", disable=None
    ):
        stop = start + batch_size
        batch = torch.tensor(regions[start:stop], dtype=torch.float32)  # copies out of the mmap
        out[start:stop] = model.encode_images(batch, torch.from_numpy(lens[start:stop]))
    return out, torch.from_numpy(lens)


def encode_captions(
    loaded: LoadedCheckpoint, captions: Sequence[str], batch_size: int = 128
) -> FlatWords:
    """Raw captions -> their valid word embeddings, back to back."""
    return encode_flat(loaded.encode_captions, captions, batch_size)


def encode_flat(
    encode: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]],
    captions: Sequence[str],
    batch_size: int = 128,
    progress: bool | None = None,
) -> FlatWords:
    """Captions -> FlatWords, batch by batch; `encode` maps a list of captions to padded
    word embeddings (B, L, d) and their lengths (B,)."""
    pieces, lengths = [], []
    for start in tqdm(
        range(0, len(captions), batch_size),
        desc="encode captions",
        unit="batch",
        disable=None if progress is None else not progress,
    ):
        emb, lens = encode(list(captions[start : start + batch_size]))
        pieces.append(FlatWords.from_padded(emb, lens).vectors)
        lengths.append(lens)
    lens = torch.cat(lengths)
    offsets = torch.nn.functional.pad(lens.cumsum(0), (1, 0))
    return FlatWords(torch.cat(pieces), offsets)
