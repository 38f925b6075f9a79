"""Inverted lists: per k-means cell, the items (images or captions) with a vector in it.

Candidate generation reads them: the items met in the cells nearest a query vector are
the only ones the approximate scan considers, so its work grows with the probed lists,
not with the gallery."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class InvertedLists:
    """Per cell, the items owning a vector in it: items[starts[c]:starts[c + 1]]."""

    starts: np.ndarray  # (cells + 1,) int64
    items: np.ndarray  # (postings,) int32, ascending within a cell

    @classmethod
    def build(cls, codes: np.ndarray, owners: np.ndarray, cells: int, unique: bool):
        """codes: cell of every vector; owners: item of every vector, ascending (vectors
        are stored item by item). unique=True keeps one posting per (cell, item); False
        keeps one per vector."""
        order = np.argsort(codes, kind="stable")  # stable: items stay ascending per cell
        cell_of, items = codes[order], owners[order].astype(np.int32)
        if unique and len(items):
            keep = np.ones(len(items), bool)
            keep[1:] = (cell_of[1:] != cell_of[:-1]) | (items[1:] != items[:-1])
            cell_of, items = cell_of[keep], items[keep]
        sizes = np.bincount(cell_of, minlength=cells)
        return cls(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), items)

    def extended(self, newer: InvertedLists) -> InvertedLists:
        """These lists with `newer`'s postings after each cell's own: the lists of an
        index that gained a segment, in time proportional to the postings rather than a
        sort. newer's items must be rows after all of these (a later segment), so every
        cell stays ascending."""
        cells = len(self.starts) - 1
        if len(newer.starts) - 1 != cells:
            raise ValueError(f"lists over {cells} and {len(newer.starts) - 1} cells")
        own, added = np.diff(self.starts), np.diff(newer.starts)
        starts = self.starts + newer.starts
        items = np.empty(len(self.items) + len(newer.items), np.int32)
        cell = np.repeat(np.arange(cells), own)  # each old posting moves by the cell's gain
        items[np.arange(len(self.items)) + newer.starts[:-1][cell]] = self.items
        cell = np.repeat(np.arange(cells), added)  # each new one goes after the cell's old
        shift = self.starts[1:][cell]
        items[np.arange(len(newer.items)) + shift] = newer.items
        return InvertedLists(starts, items)

    def gather(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Items of the given cells, and for each the position in `cells` it came from."""
        lo, hi = self.starts[cells], self.starts[cells + 1]
        sizes = hi - lo
        if not sizes.sum():
            return np.empty(0, np.int32), np.empty(0, np.int64)
        source = np.repeat(np.arange(len(cells)), sizes)
        within = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        return self.items[lo[source] + within], source
