"""Precomp training data (the SCAN / VSE-infinity / official CHAN layout, and what
`chan extract` writes) and the batches the training loop consumes.

A split S in a folder holds `S_ims.npy` (N, K, D), `S_caps.txt` (1 or 5 captions a
image, in image order), optionally `S_counts.npy` (valid regions; 0 = the image failed
extraction), `S_ids.txt` and `S_extract.json`. Region arrays stay memory-mapped."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.inference import read_captions, read_regions

logger = logging.getLogger(__name__)


@dataclass
class PrecompSplit:
    """One split: image rows and the captions that belong to them."""

    regions: np.ndarray  # (N, K, D) memory-mapped
    counts: np.ndarray  # (N,) int64 valid regions, >= 1
    rows: np.ndarray  # (N,) rows of `regions` in use (failed images are left out)
    captions: list[str]  # (n_cap,)
    caption_image: np.ndarray  # (n_cap,) index into rows of each caption's image
    image_ids: list[str]
    extractor: dict[str, Any] | None  # spec from S_extract.json, when present

    @property
    def num_images(self) -> int:
        return len(self.rows)

    def image_batch(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, D) float32 features and (B,) counts of images `indices` (into rows)."""
        rows = self.rows[np.asarray(indices)]
        order = np.argsort(rows)  # sorted reads are kinder to a memory map
        feats = np.empty((len(rows), *self.regions.shape[1:]), np.float32)
        feats[order] = self.regions[rows[order]]
        return torch.from_numpy(feats), torch.from_numpy(self.counts[rows])


def load_split(data_dir: Path, split: str, img_dim: int | None = None) -> PrecompSplit:
    """Open split `split` of a precomp folder, validating what a user can get wrong."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder {data_dir} does not exist")
    ims_path = data_dir / f"{split}_ims.npy"
    counts_path = data_dir / f"{split}_counts.npy"
    regions, counts = read_regions(
        ims_path, counts_path if counts_path.exists() else None, img_dim, allow_empty=True
    )
    captions = read_captions(data_dir / f"{split}_caps.txt")
    per_image = _captions_per_image(len(captions), regions.shape[0], data_dir, split)
    image_ids = _image_ids(data_dir / f"{split}_ids.txt", regions.shape[0])
    keep = np.flatnonzero(counts > 0)
    if len(keep) < regions.shape[0]:
        logger.warning(
            "%s: %d images failed extraction (count 0); leaving them and their captions out",
            ims_path,
            regions.shape[0] - len(keep),
        )
    kept_caps = (keep[:, None] * per_image + np.arange(per_image)[None, :]).ravel()
    return PrecompSplit(
        regions=regions,
        counts=counts.astype(np.int64),
        rows=keep,
        captions=[captions[c] for c in kept_caps],
        caption_image=np.repeat(np.arange(len(keep)), per_image),
        image_ids=[image_ids[r] for r in keep],
        extractor=_extractor_spec(data_dir / f"{split}_extract.json"),
    )


def _captions_per_image(n_caps: int, n_img: int, data_dir: Path, split: str) -> int:
    if n_img == 0:
        raise ValueError(f"{data_dir}/{split}_ims.npy holds no images")
    if n_caps % n_img:
        raise ValueError(
            f"{data_dir}/{split}_caps.txt has {n_caps} captions for {n_img} images in "
            f"{split}_ims.npy; write the same number of captions (1 or 5) for every image, "
            "in image order"
        )
    return n_caps // n_img


def _image_ids(path: Path, n_img: int) -> list[str]:
    if not path.exists():
        return [str(i) for i in range(n_img)]
    ids = path.read_text(encoding="utf-8").split()
    if len(ids) != n_img:
        raise ValueError(f"{path} lists {len(ids)} ids for {n_img} images; regenerate it")
    return ids


def _extractor_spec(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())["extractor"]
    except (json.JSONDecodeError, KeyError):
        raise ValueError(f"{path} is not an extraction report; delete it or re-extract") from None


@dataclass(frozen=True)
class Augment:
    """Training-time noise, as in the reference recipe."""

    region_drop: float = 0.2  # each region is dropped with this probability (>= 1 kept)
    token_prob: float = 0.2  # share of caption tokens that are altered ...
    token_mask: float = 0.5  # ... of which this share becomes the mask token,
    token_random: float = 0.1  # this share a random word, and the rest are deleted


def drop_regions(
    regions: torch.Tensor, counts: torch.Tensor, rate: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop each valid region with probability `rate`, keeping at least one; survivors are
    packed to the front so padding stays at the end. (B, K, D), (B,) -> same shapes."""
    if rate <= 0:
        return regions, counts
    batch, slots, _ = regions.shape
    valid = torch.arange(slots)[None, :] < counts[:, None]
    keep = valid & (torch.rand(batch, slots, generator=generator) >= rate)
    keep[:, 0] |= ~keep.any(dim=1)  # an image keeps at least its first region
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept first
    packed = torch.gather(regions, 1, order[..., None].expand_as(regions))
    new_counts = keep.sum(dim=1)
    packed = packed * (torch.arange(slots)[None, :, None] < new_counts[:, None, None])
    return packed, new_counts


def augment_tokens(
    ids: list[int], mask_id: int, vocab_size: int, augment: Augment, rng: np.random.Generator
) -> list[int]:
    """Alter the inner tokens of one caption (the first and last are special tokens)."""
    out = [ids[0]]
    for token in ids[1:-1]:
        if rng.random() >= augment.token_prob:
            out.append(token)
            continue
        choice = rng.random()
        if choice < augment.token_mask:
            out.append(mask_id)
        elif choice < augment.token_mask + augment.token_random:
            out.append(int(rng.integers(4, vocab_size)))  # past the special ids
        # else: deleted
    out.append(ids[-1])
    return out
