"""QueryEncoder: queries (a text, an image, raw region features) -> vectors in the joint
space, with the checkpoint that built the index and the extractor the gallery records."""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import torch

from index_builder.errors import QueryError
from model.checkpoint import LoadedCheckpoint

logger = logging.getLogger(__name__)


class QueryEncoder:
    """Thread-safe; the extractor is built on the first image query."""

    def __init__(
        self, checkpoint: LoadedCheckpoint | None, extractor_spec: dict[str, Any] | None
    ) -> None:
        self.checkpoint, self.extractor_spec = checkpoint, extractor_spec
        self._extractor = None
        self._lock = threading.Lock()

    def require_checkpoint(self) -> LoadedCheckpoint:
        if self.checkpoint is None:
            raise QueryError("this searcher has no checkpoint: it can only take query vectors")
        return self.checkpoint

    @torch.inference_mode()
    def text(self, text: str) -> tuple[torch.Tensor, list[str]]:
        """A query text -> its valid word vectors (L, d) and the token of each."""
        if not text or not text.strip():
            raise QueryError("the query text is empty")
        checkpoint = self.require_checkpoint()
        words, lens = checkpoint.encode_captions([text])
        return words[0, : int(lens[0])].float(), checkpoint.tokenizer.tokens(text)

    def tokens(self, text: str) -> list[str]:
        """The tokens the model reads in `text` (none without a checkpoint)."""
        return [] if self.checkpoint is None else self.checkpoint.tokenizer.tokens(text)

    @torch.inference_mode()
    def image(self, image) -> tuple[torch.Tensor, np.ndarray]:
        """An RGB PIL image -> valid region vectors (n, d) and their boxes (n, 4), through
        the extractor the gallery was built with."""
        extractor = self._get_extractor()
        with self._lock:
            batch = extractor.extract([image])
        return self.regions(batch.features[0], int(batch.counts[0])), batch.boxes[0]

    @torch.inference_mode()
    def regions(self, features: np.ndarray, count: int) -> torch.Tensor:
        """Raw (K, D) region features + valid count -> (count, d) region vectors."""
        checkpoint = self.require_checkpoint()
        feats = torch.as_tensor(np.asarray(features, np.float32))[None]
        if not 1 <= count <= feats.shape[1]:
            raise QueryError(f"region count {count} outside [1, {feats.shape[1]}]")
        emb = checkpoint.model.encode_images(feats, torch.tensor([count]))
        return emb[0, :count].float()

    def _get_extractor(self):
        with self._lock:
            if self._extractor is None:
                if not self.extractor_spec:
                    raise QueryError(
                        "this index records no extractor, so raw images cannot be encoded; "
                        "query with a gallery image_id or region features"
                    )
                from model.features.extractors.base import load_extractor

                self._extractor = load_extractor(self.extractor_spec)
        return self._extractor
