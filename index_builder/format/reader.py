"""GalleryIndex: an index directory opened for reading, verified, memory-mapped.

Global rows: image r of the gallery lives in the segment whose row range holds r; the
reader hides segments behind row-level gathers. Tombstones (deleted rows) come from the
metadata store and are applied by the searcher."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import torch

from index_builder.format import layout as fmt
from index_builder.format.manifest import CENTROID_FILES, CODEBOOK_FILES
from index_builder.format.metadata import MetadataStore
from index_builder.format.quant import dequantize
from model.scoring import FlatWords, Matching, fill_padded_regions

logger = logging.getLogger(__name__)

EXACT_CACHE_BYTES = 256 << 20  # float32 copies up to this size make exact scans cheap


class GalleryIndex:
    """Read side of an index directory. Thread-safe for concurrent searches."""

    def __init__(
        self,
        path: Path | str,
        checkpoint_sha256: str | None = None,
        checksums: bool = True,
        cache_bytes: int = EXACT_CACHE_BYTES,
        previous: GalleryIndex | None = None,
    ) -> None:
        """previous: the same index opened at an earlier generation; the files it
        verified that this generation still holds unchanged (hard-linked segments) are
        not checksummed again, so a reload after `chan index add` reads the new segment."""
        self.path = Path(path)
        self.manifest = fmt.read_manifest(self.path)
        self.generation: int = self.manifest.get("generation", 1)
        verified = previous.verified if previous is not None else None
        self.verified = fmt.verify_files(self.path, self.manifest, checksums, verified)
        if checkpoint_sha256 is not None:
            fmt.check_checkpoint(self.manifest, checkpoint_sha256, self.path)
        self.storage = self.manifest["storage"]
        self.num_regions, self.dim = self.manifest["num_regions"], self.manifest["dim"]
        self.matching = Matching(**self.manifest["matching"])
        self.segments = []
        cell_sides = tuple(self.manifest["cells"])
        coded = tuple(side for side, entry in self.manifest["cells"].items()
                      if entry.get("residual"))  # fmt: skip
        for entry in self.manifest["segments"]:
            segment = fmt.open_segment(self.path / entry["name"], self.storage, cell_sides,
                                       coded)  # fmt: skip
            fmt.check_segment(self.path / entry["name"], segment, entry, self.manifest)
            self.segments.append(segment)
        self._image_starts = _starts([len(s.counts) for s in self.segments])
        self._word_starts = _starts([len(s.words) for s in self.segments])
        self.counts = np.concatenate([s.counts for s in self.segments]).astype(np.int64)
        self.region_owner = np.concatenate([s.owner for s in self.segments])
        self.word_offsets = _global_offsets([s.offsets for s in self.segments])
        self.metadata = MetadataStore.open(self.path / fmt.METADATA)
        self._check_metadata_rows()
        self.word_codes, self.word_centroids = self._cells("words")
        self.region_codes, self.region_centroids = self._cells("regions")
        self.word_residuals = self._residuals("words")
        self.region_residuals = self._residuals("regions")
        # start of each image's vectors in region_owner order (every count is >= 1)
        self.region_starts = np.concatenate([[0], np.cumsum(self.counts)])
        self._lock = threading.Lock()
        self._image_cache: np.ndarray | None = None
        self._filled_cache: np.ndarray | None = None
        self._word_cache: np.ndarray | None = None
        self.refresh_tombstones()
        if cache_bytes:
            self.warm(cache_bytes)

    def _check_metadata_rows(self) -> None:
        stored = self.metadata.counts()
        if (stored["images"], stored["captions"]) != (self.num_images, self.num_captions):
            self.metadata.close()
            raise fmt.IndexFormatError(
                f"{self.path / fmt.METADATA} has {stored['images']} images and "
                f"{stored['captions']} captions, the manifest {self.num_images} and "
                f"{self.num_captions}; rebuild the index"
            )

    def _cells(self, side: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Cell of every vector of one side ("regions" or "words") and the (cells, d)
        float32 centroids, when the index has cells for that side."""
        entry = self.manifest["cells"].get(side)
        if entry is None:
            return None, None
        path = self.path / CENTROID_FILES[side]
        centroids = np.asarray(fmt.load_array(path))
        if centroids.shape != (entry["cells"], self.dim) or centroids.dtype != np.float32:
            raise fmt.IndexFormatError(
                f"{path} holds {centroids.dtype} {centroids.shape}, the manifest implies "
                f"float32 ({entry['cells']}, {self.dim}); rebuild the index"
            )
        codes = np.concatenate([getattr(seg, f"{side[:-1]}_codes") for seg in self.segments])
        if len(codes) and (codes.min() < 0 or codes.max() >= entry["cells"]):
            raise fmt.IndexFormatError(
                f"{self.path}: {side} codes outside 0..{entry['cells'] - 1}; rebuild the index"
            )
        return codes, centroids

    def _residuals(self, side: str) -> tuple[np.ndarray, np.ndarray] | None:
        """One side's PQ codebook (S, 16, d / S) float32 and every vector's (n, S / 2)
        uint8 residual codes, when the index has them (see build/residuals.py)."""
        entry = (self.manifest["cells"].get(side) or {}).get("residual")
        if entry is None:
            return None
        path = self.path / CODEBOOK_FILES[side]
        codebook = np.asarray(fmt.load_array(path))
        subspaces = entry["subspaces"]
        shape = (subspaces, entry["codewords"], self.dim // subspaces)
        if self.dim % subspaces or codebook.shape != shape or codebook.dtype != np.float32:
            raise fmt.IndexFormatError(
                f"{path} holds {codebook.dtype} {codebook.shape}, the manifest implies "
                f"float32 {shape} of d={self.dim}; rebuild the index"
            )
        parts = [getattr(seg, f"{side[:-1]}_residuals") for seg in self.segments]
        # one segment: the memory map itself (its pages are shared with the page cache)
        return codebook, parts[0] if len(parts) == 1 else np.concatenate(parts)

    def warm(self, max_bytes: int = EXACT_CACHE_BYTES) -> None:
        """Keep float32 copies of the stored vectors in RAM when they fit max_bytes, so
        exact scans of small galleries skip dequantising the memory map every query."""
        with self._lock:
            image_bytes = self.num_images * self.num_regions * self.dim * 4
            if self._image_cache is None and 2 * image_bytes <= max_bytes:
                self._image_cache = self._read_images(np.arange(self.num_images))
                counts = torch.from_numpy(self.counts)
                filled = fill_padded_regions(torch.from_numpy(self._image_cache), counts)
                self._filled_cache = filled.numpy()
            word_bytes = int(self.word_offsets[-1]) * self.dim * 4
            if self._word_cache is None and word_bytes <= max_bytes:
                self._word_cache = self._read_words(np.arange(int(self.word_offsets[-1])))

    def refresh_tombstones(self) -> None:
        """Reload which rows are deleted (after `chan index delete`)."""
        self.live_images = self.metadata.live_mask("images")
        self.live_captions = self.metadata.live_mask("captions")

    @property
    def has_filled_cache(self) -> bool:
        """Whether the float32 RAM copy (with filled padding) is held."""
        return self._filled_cache is not None

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

    def images(
        self, rows: np.ndarray, out: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored embeddings of image rows -> (C, K, d) float32 and (C,) counts. `out`:
        a reusable float32 buffer of at least C images to write into (see filled_images)."""
        rows = np.asarray(rows, dtype=np.int64)
        if out is not None:
            block = self._read_images(rows, out[: len(rows)])
            return torch.from_numpy(block), torch.from_numpy(self.counts[rows])
        cache = self._image_cache
        block = cache[rows] if cache is not None else self._read_images(rows)
        return torch.from_numpy(block), torch.from_numpy(self.counts[rows])

    def filled_images(self, rows: np.ndarray, out: np.ndarray | None = None) -> torch.Tensor:
        """Like images(), but padded slots hold a copy of the image's first region (which
        cannot change a max), so the exact scorer needs no lengths and no mask. A
        contiguous run of rows from the RAM copy is a view, not a copy. `out`: a reusable
        float32 buffer of at least len(rows) images to write into; filling a buffer that
        stays in cache is about 3x faster than a fresh array (no page faults)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._filled_cache is not None and out is None:
            return torch.from_numpy(self._filled_cache[_as_slice(rows)])
        block = self._read_images(rows, None if out is None else out[: len(rows)])
        counts = torch.from_numpy(self.counts[rows])
        return fill_padded_regions(torch.from_numpy(block), counts, inplace=True)

    def stored_images(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Image rows as stored, not widened: (C, K, d) codes (int8 or float16; float32
        from the RAM copy) and, for int8, their (C, K) scales (else None). The exact
        rerank widens them a cache-sized block at a time (search/vectors.py), so a
        query's float32 copy of its candidates never exists."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._image_cache is not None:
            return self._image_cache[rows], None
        return self._stored(rows, self._image_starts, "regions", "region_scales")

    def stored_words(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Like stored_images, for global flat word positions: (n, d) codes, (n,) scales."""
        positions = np.asarray(positions, dtype=np.int64)
        if self._word_cache is not None:
            return self._word_cache[positions], None
        return self._stored(positions, self._word_starts, "words", "word_scales")

    def _stored(
        self, rows: np.ndarray, starts: np.ndarray, vectors: str, scales_name: str
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows of one side as stored (segment fields `vectors`, `scales_name`), in the
        asked order, each segment read in ascending order; one segment's sorted rows come
        back as its memory map's own slice or gather, with no second copy."""
        parts = list(self._by_segment(rows, starts))
        if len(parts) == 1 and np.all(np.diff(parts[0][2]) > 0):  # one segment, sorted rows
            seg = self.segments[parts[0][0]]
            take = _as_slice(parts[0][2])
            scales = getattr(seg, scales_name)
            return getattr(seg, vectors)[take], None if scales is None else scales[take]
        first = getattr(self.segments[0], vectors)
        codes = np.empty((len(rows), *first.shape[1:]), first.dtype)
        scales = None
        for seg_index, where, local in parts:
            seg = self.segments[seg_index]
            order = np.argsort(local, kind="stable")  # sorted reads suit the memory map
            take = _as_slice(local[order])
            codes[where[order]] = getattr(seg, vectors)[take]
            seg_scales = getattr(seg, scales_name)
            if seg_scales is not None:
                if scales is None:
                    scales = np.empty(codes.shape[:-1], np.float32)
                scales[where[order]] = seg_scales[take]
        return codes, scales

    def _read_images(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows dequantised into `out` (a new array when None)."""
        if out is None:
            out = np.empty((len(rows), self.num_regions, self.dim), np.float32)
        if self._image_cache is not None:
            out[...] = self._image_cache[rows]
            return out
        codes, scales = self._stored(rows, self._image_starts, "regions", "region_scales")
        return dequantize(codes, scales, out)

    def boxes(self, row: int) -> np.ndarray:
        """(K, 4) boxes of one image (fractions of its width and height)."""
        seg_index = int(np.searchsorted(self._image_starts, row, side="right") - 1)
        return np.asarray(self.segments[seg_index].boxes[row - self._image_starts[seg_index]])

    def captions(self, rows: np.ndarray, out: np.ndarray | None = None) -> FlatWords:
        """Stored word vectors of caption rows, back to back in the given order. `out`:
        a reusable float32 (n, d) buffer with room for every word, as in filled_images."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.word_offsets[rows]
        lengths = self.word_offsets[rows + 1] - starts
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        # every word position, vectorised: its caption's start plus its rank inside it
        positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        vectors = self.word_vectors(positions, None if out is None else out[: len(positions)])
        return FlatWords(torch.from_numpy(vectors), torch.from_numpy(offsets))

    def word_vectors(self, positions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Global flat word positions -> (n, d) float32 (written into `out` when given)."""
        cache = self._word_cache
        if cache is None:
            return self._read_words(positions, out)
        if out is None:
            return cache[positions]
        np.take(cache, positions, axis=0, out=out)
        return out

    def _read_words(self, positions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            out = np.empty((len(positions), self.dim), np.float32)
        codes, scales = self._stored(positions, self._word_starts, "words", "word_scales")
        return dequantize(codes, scales, out)

    @staticmethod
    def _by_segment(rows: np.ndarray, starts: np.ndarray):
        segment_of = np.searchsorted(starts, rows, side="right") - 1
        for seg_index in np.unique(segment_of):
            where = np.flatnonzero(segment_of == seg_index)
            yield int(seg_index), where, rows[where] - starts[seg_index]

    def close(self) -> None:
        self.metadata.close()


def _as_slice(index: np.ndarray) -> slice | np.ndarray:
    """A sorted run of consecutive positions as a slice (one block read), else as is."""
    if len(index) and index[-1] - index[0] == len(index) - 1 and np.all(np.diff(index) == 1):
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def _starts(sizes: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _global_offsets(offsets: list[np.ndarray]) -> np.ndarray:
    """Per-segment caption offsets -> one global (n_captions + 1,) array."""
    parts, base = [np.zeros(1, np.int64)], 0
    for seg_offsets in offsets:
        parts.append(np.asarray(seg_offsets[1:], dtype=np.int64) + base)
        base += int(seg_offsets[-1])
    return np.concatenate(parts)
