"""The CHAN network: region and text encoders plus the matching function.

Stable inference API:
    encode_images(regions, lens) -> (B, K, d) region embeddings
    encode_texts(ids, lens)      -> (B, L, d) word embeddings
    score(img_emb, img_lens, cap_emb, cap_lens) -> (B_img, B_cap) scores
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from model.config import ModelConfig, get_config
from model.encoders import BertTextEncoder, BiGRUTextEncoder, RegionEncoder
from model.scoring import DEFAULT_CHUNK_BYTES, FlatWords, Matching, check_lengths, score_matrix

logger = logging.getLogger(__name__)


class CHANModel(nn.Module):
    """Cross-modal hard aligning network (Pan et al., CVPR 2023)."""

    def __init__(self, config: ModelConfig, pretrained_text: bool = True) -> None:
        """pretrained_text: load BERT weights from config.bert_dir (False: architecture
        only, as when the weights come from a checkpoint)."""
        super().__init__()
        self.config = config
        self.region_encoder = RegionEncoder(
            config.img_dim,
            config.embed_size,
            self_attention=config.region_encoder == "selfattention",
            heads=config.attention_heads,
            normalize=config.img_norm,
            mask_padding=not config.official_compat,
        )
        if config.text_encoder == "bigru":
            self.text_encoder: nn.Module = BiGRUTextEncoder(
                config.vocab_size,
                config.word_dim,
                config.embed_size,
                config.num_layers,
                normalize=config.txt_norm,
            )
        else:
            self.text_encoder = BertTextEncoder(
                config.bert_dir,
                config.embed_size,
                normalize=config.txt_norm,
                pretrained=pretrained_text,
            )
        self.matching = Matching(
            coding=config.coding,
            pooling=config.pooling,
            pooling_temperature=config.pooling_temperature,
            soft_temperature=config.soft_temperature,
        )

    def encode_images(
        self, regions: torch.Tensor, lens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """regions: (B, K, D) features, lens: (B,) valid counts (None: all K valid).
        Returns (B, K, d); padded slots are zero."""
        if regions.ndim != 3 or regions.shape[-1] != self.config.img_dim:
            raise ValueError(
                f"region features must be (B, K, {self.config.img_dim}), got {tuple(regions.shape)}"
            )
        if lens is None:
            lens = torch.full((regions.shape[0],), regions.shape[1], dtype=torch.int64)
        check_lengths(lens, regions.shape[1], "region")
        return self.region_encoder(regions, lens.to(regions.device))

    def encode_texts(self, ids: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """ids: (B, L) token ids, lens: (B,) -> (B, L, d); padded positions are zero."""
        check_lengths(lens, ids.shape[1], "token")
        return self.text_encoder(ids, lens.to(ids.device))

    def score(
        self,
        img_emb: torch.Tensor,
        img_lens: torch.Tensor | None,
        cap_emb: torch.Tensor | FlatWords,
        cap_lens: torch.Tensor | None = None,
        max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        compute_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """(B_img, B_cap) scores of encoded images against encoded captions."""
        return score_matrix(
            img_emb, img_lens, cap_emb, cap_lens, self.matching, max_chunk_bytes, compute_dtype
        )

    def forward(
        self,
        regions: torch.Tensor,
        region_lens: torch.Tensor,
        ids: torch.Tensor,
        lens: torch.Tensor,
    ) -> torch.Tensor:
        """Training forward: raw inputs -> (B_img, B_cap) score matrix."""
        img_emb = self.encode_images(regions, region_lens)
        cap_emb = self.encode_texts(ids, lens)
        return self.score(img_emb, region_lens, cap_emb, lens)


def create_model(
    name_or_config: str | ModelConfig, pretrained_text: bool = True, **overrides: object
) -> CHANModel:
    """Build a model from a registered name (see MODEL_CONFIGS) or a ModelConfig."""
    config = get_config(name_or_config, **overrides)
    if config.text_encoder == "bert" and not Path(config.bert_dir).is_dir():
        raise FileNotFoundError(
            f"bert_dir {config.bert_dir!r} is not a directory: pass a local model folder"
        )
    return CHANModel(config, pretrained_text=pretrained_text)
