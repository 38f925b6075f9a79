"""Image-caption similarity: CHAN hard assignment, SCAN soft attention, global vectors.

An image is K region vectors (B_img, K, d) with a count of valid regions per image; a
caption is L word vectors (B_cap, L, d) with a count of valid words. Hard assignment
keeps, for every word, its best region, then pools over the caption's words:

    a[i, c, w] = max_{r < n_regions[i]} <region[i, r], word[c, w]>
    score[i, c] = pool_{w < n_words[c]} a[i, c, w]

It is computed as one matrix product per chunk, (all regions of a chunk of images) x
(all valid words of a chunk of captions), then a max over regions and the pooling.
Padded word slots are never multiplied: captions are flattened to their valid words.
Padded region slots are overwritten with a copy of the image's first region, which can
never change a max, so the product needs no mask and no masked_fill pass. The pooling
itself (lse, mean, max, sum) lives in model.pooling.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.pooling import pool_segments

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 64 * 2**20  # peak extra memory of a score-matrix computation
_EPS = 1e-8


@dataclass(frozen=True)
class Matching:
    """How a word-region similarity block becomes one score (a slice of ModelConfig)."""

    coding: str = "hard"  # "hard" | "soft" | "global" (one pooled vector per side, VSE)
    pooling: str = "lse"  # "lse" | "mean" | "max" | "sum"
    pooling_temperature: float = 0.1  # lse: score = logsumexp(a / t)
    soft_temperature: float = 9.0  # soft: softmax sharpness over regions


def lengths_to_mask(lens: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) counts -> (B, max_len) bool mask, True on valid slots."""
    return torch.arange(max_len, device=lens.device)[None, :] < lens[:, None]


def check_lengths(lens: torch.Tensor, max_len: int, what: str) -> None:
    """Raise ValueError unless every count is in [1, max_len]."""
    if lens.numel() and (int(lens.min()) < 1 or int(lens.max()) > max_len):
        raise ValueError(
            f"{what} counts must lie in [1, {max_len}], got min {int(lens.min())} "
            f"and max {int(lens.max())}"
        )


def fill_padded_regions(
    regions: torch.Tensor, lens: torch.Tensor | None, inplace: bool = False
) -> torch.Tensor:
    """Copy each image's first region into its padded slots (a copy cannot change a max
    over regions, so a scorer needs no mask).

    regions: (B, K, d); lens: (B,) valid counts, or None when every slot is valid.
    Returns (B, K, d); the input itself when nothing is padded or with inplace=True (then
    only the padded slots are written: no new (B, K, d) array).
    """
    if lens is None or bool((lens == regions.shape[1]).all()):
        return regions
    if inplace:
        padded = torch.arange(regions.shape[1], device=regions.device)[None, :] >= lens[:, None]
        regions[padded] = regions[:, 0].repeat_interleave(regions.shape[1] - lens, dim=0)
        return regions
    slots = torch.arange(regions.shape[1], device=regions.device).expand(regions.shape[0], -1)
    slots = torch.where(slots < lens[:, None], slots, 0)
    return regions.gather(1, slots[..., None].expand(-1, -1, regions.shape[2]))


@dataclass(frozen=True)
class FlatWords:
    """Captions as their valid word vectors back to back.

    vectors: (W, d); offsets: (n_captions + 1,) int64, caption c owns rows
    offsets[c]:offsets[c+1].
    """

    vectors: torch.Tensor
    offsets: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @classmethod
    def from_padded(cls, words: torch.Tensor, lens: torch.Tensor) -> FlatWords:
        """words: (B, L, d) padded, lens: (B,) -> FlatWords."""
        check_lengths(lens, words.shape[1], "word")
        mask = lengths_to_mask(lens, words.shape[1])
        offsets = F.pad(lens.to(torch.int64).cumsum(0), (1, 0))
        return cls(words[mask], offsets)

    def aligned(self, multiple: int = 16) -> FlatWords:
        """The same captions with zero rows appended so the row count is a multiple of
        `multiple`: matrix products run much faster on aligned shapes. The extra rows
        belong to no caption, so no score changes."""
        extra = -self.vectors.shape[0] % multiple
        if not extra:
            return self
        return FlatWords(F.pad(self.vectors, (0, 0, 0, extra)), self.offsets)

    def slice(self, start: int, stop: int) -> FlatWords:
        """Captions start..stop-1, offsets rebased to 0."""
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        return FlatWords(self.vectors[lo:hi], self.offsets[start : stop + 1] - lo)


def hard_assignment(regions: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Best region per word: regions (B, K, d) with padding filled, words (W, d) -> (B, W)."""
    batch, slots, dim = regions.shape
    sims = regions.reshape(batch * slots, dim) @ words.T  # (B*K, W)
    return sims.view(batch, slots, -1).amax(dim=1)


def soft_assignment(
    regions: torch.Tensor, region_mask: torch.Tensor, flat: FlatWords, matching: Matching
) -> torch.Tensor:
    """SCAN text-to-image attention: per word, cosine with its attended region mixture.

    regions: (B, K, d), region_mask: (B, K) bool, flat: the caption chunk's words.
    Returns (B, W): one cosine per (image, word).
    """
    batch, slots, dim = regions.shape
    words = flat.vectors
    sims = (regions.reshape(batch * slots, dim) @ words.T).view(batch, slots, -1)
    sims = F.leaky_relu(sims, 0.1)
    # Normalise each region's similarities across the words of one caption (SCAN's
    # clipped l2norm), then softmax over the image's valid regions.
    n_captions = flat.offsets.numel() - 1
    owner = torch.repeat_interleave(torch.arange(n_captions, device=words.device), flat.lengths)
    squares = sims.new_zeros(batch, slots, n_captions).index_add_(2, owner, sims * sims)
    # clamp before the root: padded (zero) regions would make sqrt's gradient 0 * inf = NaN
    norms = squares.clamp_min(_EPS * _EPS).sqrt()
    sims = sims / (norms[:, :, owner] + _EPS)
    logits = (sims * matching.soft_temperature).masked_fill(~region_mask[:, :, None], float("-inf"))
    attn = torch.softmax(logits, dim=1)  # (B, K, W)
    attended = torch.bmm(attn.transpose(1, 2), regions)  # (B, W, d)
    attended = attended / (attended.norm(dim=-1, keepdim=True) + _EPS)
    return (attended * words[None]).sum(-1) / words.norm(dim=-1)[None]


def score_block(
    regions: torch.Tensor,
    region_lens: torch.Tensor | None,
    flat: FlatWords,
    matching: Matching,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Scores of every image in `regions` (B, K, d) against every caption of `flat`.

    No chunking: the caller bounds the block. Returns (B, n_captions) float32 (or the
    input dtype when that is float64).
    """
    out_dtype = torch.promote_types(regions.dtype, torch.float32)
    if matching.coding == "hard":
        filled = fill_padded_regions(regions, region_lens)
        words = flat.vectors
        if compute_dtype is not None:
            filled, words = filled.to(compute_dtype), words.to(compute_dtype)
        per_word = hard_assignment(filled, words).to(out_dtype)
    elif matching.coding == "soft":
        lens = region_lens
        if lens is None:
            lens = torch.full((regions.shape[0],), regions.shape[1], device=regions.device)
        per_word = soft_assignment(
            regions, lengths_to_mask(lens, regions.shape[1]), flat, matching
        ).to(out_dtype)
    else:
        raise ValueError(f"unknown coding {matching.coding!r}")
    return pool_segments(per_word, flat.offsets, matching)


def bytes_per_word_pair(slots: int, dim: int, coding: str, element_bytes: int = 4) -> int:
    """Extra bytes one (image, word) pair costs inside a block."""
    if coding == "soft":
        # similarity block and its softmax copies, plus the attended d-vector per word
        return 4 * slots * element_bytes + 2 * dim * element_bytes
    return slots * element_bytes + 4 * 4  # similarity block + per-word max and pooling


def plan_chunks(
    n_images: int,
    slots: int,
    word_lengths: torch.Tensor,
    dim: int,
    coding: str,
    max_chunk_bytes: int,
    element_bytes: int = 4,
) -> tuple[int, list[tuple[int, int]]]:
    """Choose (images per chunk, caption ranges) so one block stays under the bound.

    A block costs its similarity block and per-word results (bytes_per_word_pair per
    image-word pair), plus copies of its words and regions in the compute dtype.
    Caption chunks hold up to a few thousand words; image chunks fill the rest.
    Returns the image chunk size and [(start, stop)] caption ranges.
    """
    per_pair = bytes_per_word_pair(slots, dim, coding, element_bytes)
    total_words = int(word_lengths.sum())
    # Square-ish blocks keep the matrix product efficient: words are capped so that at
    # least ~256 region rows fit beside them.
    target_words = max(
        int(word_lengths.max()),
        min(total_words, max_chunk_bytes // (256 * per_pair + dim * element_bytes), 4096),
    )
    ranges: list[tuple[int, int]] = []
    start, words = 0, 0
    for c, n in enumerate(word_lengths.tolist()):
        if words and words + n > target_words:
            ranges.append((start, c))
            start, words = c, 0
        words += n
    ranges.append((start, len(word_lengths)))
    widest = max(int(word_lengths[a:b].sum()) for a, b in ranges) + 15  # + alignment rows
    per_image = widest * per_pair + slots * dim * element_bytes
    budget = max_chunk_bytes - widest * dim * element_bytes
    images_per_chunk = max(1, min(n_images, budget // per_image))
    if 8 <= images_per_chunk < n_images:
        images_per_chunk -= images_per_chunk % 8  # keeps the product's rows aligned
    return images_per_chunk, ranges


def score_matrix(
    regions: torch.Tensor,
    region_lens: torch.Tensor | None,
    words: torch.Tensor | FlatWords,
    word_lens: torch.Tensor | None = None,
    matching: Matching | None = None,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The (B_img, B_cap) score matrix, computed in memory-bounded chunks.

    regions: (B_img, K, d), region_lens: (B_img,) or None (all valid);
    words: (B_cap, L, d) padded with word_lens (B_cap,), or FlatWords.
    compute_dtype: e.g. torch.bfloat16 for the matrix products (pooling stays fp32).
    Differentiable; chunking only bounds memory and never changes a value.
    """
    matching = matching or Matching()
    if region_lens is not None:
        check_lengths(region_lens, regions.shape[1], "region")
    flat = words if isinstance(words, FlatWords) else FlatWords.from_padded(words, word_lens)
    if matching.coding == "global":
        return global_scores(regions, region_lens, flat)
    n_images, slots, dim = regions.shape
    element_bytes = torch.finfo(compute_dtype or regions.dtype).bits // 8
    images_per_chunk, ranges = plan_chunks(
        n_images, slots, flat.lengths, dim, matching.coding, max_chunk_bytes, element_bytes
    )
    # Without autograd, blocks are written straight into the result (no joining copies).
    needs_grad = torch.is_grad_enabled() and (regions.requires_grad or flat.vectors.requires_grad)
    out_dtype = torch.promote_types(regions.dtype, torch.float32)
    result = None if needs_grad else regions.new_empty(n_images, len(flat.lengths), dtype=out_dtype)
    columns = []
    for start, stop in ranges:
        chunk = flat.slice(start, stop)
        if matching.coding == "hard":
            chunk = chunk.aligned()
        rows = []
        for a, b in _ranges(n_images, images_per_chunk):
            block = score_block(
                regions[a:b], _slice(region_lens, a, b), chunk, matching, compute_dtype
            )
            if result is None:
                rows.append(block)
            else:
                result[a:b, start:stop] = block
        if result is None:
            columns.append(torch.cat(rows, 0))
    return result if result is not None else torch.cat(columns, 1)


def pooled_regions(regions: torch.Tensor, region_lens: torch.Tensor | None) -> torch.Tensor:
    """(B, K, d) -> (B, d): l2-normalised mean of each image's valid regions."""
    if region_lens is None:
        mean = regions.mean(dim=1)
    else:
        valid = lengths_to_mask(region_lens, regions.shape[1]).to(regions.dtype)
        mean = (regions * valid[..., None]).sum(1) / region_lens[:, None].to(regions.dtype)
    return F.normalize(mean, dim=-1, eps=_EPS)


def pooled_words(flat: FlatWords) -> torch.Tensor:
    """FlatWords of B captions -> (B, d): l2-normalised mean of each caption's words."""
    lens = flat.lengths
    owner = torch.repeat_interleave(torch.arange(len(lens), device=lens.device), lens)
    sums = flat.vectors.new_zeros(len(lens), flat.vectors.shape[1]).index_add(
        0, owner, flat.vectors
    )
    return F.normalize(sums / lens[:, None].to(sums.dtype), dim=-1, eps=_EPS)


def global_scores(
    regions: torch.Tensor, region_lens: torch.Tensor | None, flat: FlatWords
) -> torch.Tensor:
    """The VSE-style baseline: cosine of mean-pooled regions and mean-pooled words."""
    return pooled_regions(regions, region_lens) @ pooled_words(flat).T


def _ranges(n: int, step: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _slice(lens: torch.Tensor | None, a: int, b: int) -> torch.Tensor | None:
    return None if lens is None else lens[a:b]


def best_regions(
    regions: torch.Tensor, region_len: int, words: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For one image (K, d) and one caption's valid words (L, d): each word's winning
    region index (L,) and its similarity (L,). This is the hard assignment made visible."""
    sims = words @ regions[:region_len].T  # (L, K_valid)
    values, index = sims.max(dim=1)
    return index, values


def score_text_query(
    words: torch.Tensor,
    regions: torch.Tensor,
    region_lens: torch.Tensor | None,
    matching: Matching | None = None,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One caption's valid words (L, d) against stored images (N, K, d) -> (N,) scores.

    The fast path of text -> image search: one (N_chunk * K, d) x (d, L) product per
    image chunk, then the max over regions and the pooling."""
    flat = FlatWords(words, torch.tensor([0, words.shape[0]], device=words.device))
    scores = score_matrix(
        regions, region_lens, flat, None, matching, max_chunk_bytes, compute_dtype
    )
    return scores[:, 0]


def score_image_query(
    regions: torch.Tensor,
    words: FlatWords,
    matching: Matching | None = None,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One image's valid regions (K, d) against stored captions -> (n_captions,) scores.

    Hard coding takes a tall product, (all words) x (regions), whose rows are the flat
    words: a handful of regions would make the other orientation a thin, slow product.
    Each word keeps its best region, then every caption pools its own words."""
    matching = matching or Matching()
    if matching.coding != "hard":
        scores = score_matrix(
            regions[None], None, words, None, matching, max_chunk_bytes, compute_dtype
        )
        return scores[0]
    n_words = words.vectors.shape[0]
    rows_per_chunk = max(1, max_chunk_bytes // (4 * max(1, regions.shape[0])))
    best = torch.empty(n_words, dtype=torch.promote_types(regions.dtype, torch.float32))
    right = regions if compute_dtype is None else regions.to(compute_dtype)
    for start in range(0, n_words, rows_per_chunk):
        left = words.vectors[start : start + rows_per_chunk]
        if compute_dtype is not None:
            left = left.to(compute_dtype)
        best[start : start + rows_per_chunk] = (left @ right.T).amax(dim=1)
    return pool_segments(best, words.offsets, matching)
