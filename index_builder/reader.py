"""GalleryIndex: an index directory opened for reading, verified, memory-mapped.

Global rows: image r of the gallery lives in the segment whose row range holds r; the
reader hides segments behind row-level gathers. Tombstones (deleted rows) come from the
metadata store and are applied by the searcher."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index_builder import format as fmt
from index_builder.metadata import MetadataStore
from index_builder.policy import apply_search_params
from index_builder.writer import dequantize
from model.scoring import FlatWords, Matching

logger = logging.getLogger(__name__)


class GalleryIndex:
    """Read side of an index directory. Thread-safe for concurrent searches."""

    def __init__(
        self, path: Path | str, checkpoint_sha256: str | None = None, checksums: bool = True
    ) -> None:
        self.path = Path(path)
        self.manifest = fmt.read_manifest(self.path)
        if "files" in self.manifest:  # absent only while a build measures its own recall
            fmt.verify_files(self.path, self.manifest, checksums=checksums)
        if checkpoint_sha256 is not None:
            fmt.check_checkpoint(self.manifest, checkpoint_sha256, self.path)
        self.storage = self.manifest["storage"]
        self.num_regions, self.dim = self.manifest["num_regions"], self.manifest["dim"]
        self.matching = Matching(**self.manifest["matching"])
        self.segments = [
            fmt.open_segment(self.path / s["name"], self.storage) for s in self.manifest["segments"]
        ]
        self._image_starts = _starts([len(s.counts) for s in self.segments])
        self._caption_starts = _starts([len(s.offsets) - 1 for s in self.segments])
        self.counts = np.concatenate([s.counts for s in self.segments]).astype(np.int64)
        self.region_owner = np.concatenate([s.owner for s in self.segments])
        self.word_offsets = _global_offsets([s.offsets for s in self.segments])
        self.metadata = MetadataStore.open(self.path / fmt.METADATA)
        self.faiss = self._load_faiss()
        self.word_codes, self.word_centroids = self._word_cells()
        self.refresh_tombstones()

    def _load_faiss(self) -> dict[str, Any]:
        import faiss

        indexes = {}
        for name, choice in self.manifest["faiss"].items():
            index = faiss.read_index(str(self.path / name))
            apply_search_params(
                index, {"nprobe": choice["nprobe"], "ef_search": choice["ef_search"]}
            )
            indexes[name] = index
        return indexes

    def _word_cells(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Cell of every word and the cell centroids (words.faiss), when the index has them."""
        if any(s.word_codes is None for s in self.segments) or fmt.WORD_INDEX not in self.faiss:
            return None, None
        cells = self.faiss[fmt.WORD_INDEX]
        return np.concatenate([s.word_codes for s in self.segments]), cells.reconstruct_n(
            0, cells.ntotal
        )

    def refresh_tombstones(self) -> None:
        """Reload which rows are deleted (after `chan index delete`)."""
        self.live_images = self.metadata.live_mask("images")
        self.live_captions = self.metadata.live_mask("captions")

    @property
    def num_images(self) -> int:
        return len(self.counts)

    @property
    def num_captions(self) -> int:
        return len(self.word_offsets) - 1

    @property
    def checkpoint_sha256(self) -> str:
        return self.manifest["checkpoint"]["sha256"]

    # ------------------------------------------------------------------ gathers

    def images(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored embeddings of image rows -> (C, K, d) float32 and (C,) counts."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.num_regions, self.dim), np.float32)
        for seg_index, positions, local in self._by_segment(rows, self._image_starts):
            seg = self.segments[seg_index]
            order = np.argsort(local)  # sorted reads are kinder to the memory map
            scales = None if seg.region_scales is None else seg.region_scales[local[order]]
            out[positions[order]] = dequantize(seg.regions[local[order]], scales)
        return torch.from_numpy(out), torch.from_numpy(self.counts[rows])

    def boxes(self, row: int) -> np.ndarray:
        """(K, 4) boxes of one image (fractions of its width and height)."""
        seg_index = int(np.searchsorted(self._image_starts, row, side="right") - 1)
        return np.asarray(self.segments[seg_index].boxes[row - self._image_starts[seg_index]])

    def captions(self, rows: np.ndarray) -> FlatWords:
        """Stored word vectors of caption rows, back to back in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.word_offsets[rows + 1] - self.word_offsets[rows]
        positions = (
            np.concatenate(
                [np.arange(self.word_offsets[r], self.word_offsets[r + 1]) for r in rows]
            )
            if len(rows)
            else np.zeros(0, np.int64)
        )
        vectors = self.word_vectors(positions)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        return FlatWords(torch.from_numpy(vectors), torch.from_numpy(offsets))

    def word_vectors(self, positions: np.ndarray) -> np.ndarray:
        """Global flat word positions -> (n, d) float32."""
        word_starts = _starts([len(s.words) for s in self.segments])
        out = np.empty((len(positions), self.dim), np.float32)
        for seg_index, where, local in self._by_segment(positions, word_starts):
            seg = self.segments[seg_index]
            scales = None if seg.word_scales is None else seg.word_scales[local]
            out[where] = dequantize(seg.words[local], scales)
        return out

    def caption_of_words(self, positions: np.ndarray) -> np.ndarray:
        """Owner caption row of global word positions."""
        return np.searchsorted(self.word_offsets, positions, side="right") - 1

    @staticmethod
    def _by_segment(rows: np.ndarray, starts: np.ndarray):
        segment_of = np.searchsorted(starts, rows, side="right") - 1
        for seg_index in np.unique(segment_of):
            where = np.flatnonzero(segment_of == seg_index)
            yield int(seg_index), where, rows[where] - starts[seg_index]

    def close(self) -> None:
        self.metadata.close()


def _starts(sizes: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _global_offsets(offsets: list[np.ndarray]) -> np.ndarray:
    """Per-segment caption offsets -> one global (n_captions + 1,) array."""
    parts, base = [np.zeros(1, np.int64)], 0
    for seg_offsets in offsets:
        parts.append(np.asarray(seg_offsets[1:], dtype=np.int64) + base)
        base += int(seg_offsets[-1])
    return np.concatenate(parts)
