"""Architecture configuration of a CHAN model and the registry of named configs."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

REGION_ENCODERS = ("basic", "selfattention")
TEXT_ENCODERS = ("bigru", "bert")
CODINGS = ("hard", "soft", "global")
POOLINGS = ("lse", "mean", "max", "sum")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build the network; weights live elsewhere."""

    # Region (image) side.
    img_dim: int = 2048  # D: size of one input region feature (2048 for bottom-up features)
    embed_size: int = 1024  # d: size of the joint embedding space
    region_encoder: str = (
        "selfattention"  # "basic" = linear; "selfattention" = linear + pre-norm MHA
    )
    attention_heads: int = 8  # heads of the region self-attention (official: 8)

    # Text side.
    text_encoder: str = "bigru"  # "bigru" (word embedding + bidirectional GRU) or "bert"
    vocab_size: int = 0  # bigru: rows of the word embedding (vocab entries incl. <mask>)
    word_dim: int = 300  # bigru: size of a word embedding (300 for GloVe)
    num_layers: int = 1  # bigru: stacked GRU layers
    bert_dir: str | None = None  # bert: local directory with config + tokenizer (+ weights)

    # Matching.
    # "hard" = each word keeps its best region (CHAN); "soft" = SCAN attention;
    # "global" = cosine of mean-pooled regions and mean-pooled words (VSE baseline)
    coding: str = "hard"
    pooling: str = "lse"  # how per-word similarities become one score: lse | mean | max | sum
    pooling_temperature: float = 0.1  # LSE temperature (official `belta`): score = logsumexp(a / t)
    soft_temperature: float = 9.0  # soft coding: softmax sharpness over regions (SCAN lambda)
    img_norm: bool = True  # L2-normalise region embeddings (official: not `no_imgnorm`)
    txt_norm: bool = True  # L2-normalise word embeddings (official: not `no_txtnorm`)

    # Reproduce the reference implementation's quirks: self-attention over padded region
    # slots with no key-padding mask. Set by `chan import-official`.
    official_compat: bool = False

    def __post_init__(self) -> None:
        _check_choice("region_encoder", self.region_encoder, REGION_ENCODERS)
        _check_choice("text_encoder", self.text_encoder, TEXT_ENCODERS)
        _check_choice("coding", self.coding, CODINGS)
        _check_choice("pooling", self.pooling, POOLINGS)
        for name in ("img_dim", "embed_size", "attention_heads", "word_dim", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.region_encoder == "selfattention" and self.embed_size % self.attention_heads:
            raise ValueError(
                f"embed_size {self.embed_size} is not divisible by attention_heads "
                f"{self.attention_heads}"
            )
        if self.text_encoder == "bert" and not self.bert_dir:
            raise ValueError("text_encoder 'bert' needs bert_dir: a local model directory")
        if self.pooling_temperature <= 0 or self.soft_temperature <= 0:
            raise ValueError("temperatures must be > 0")

    def replace(self, **changes: Any) -> ModelConfig:
        """Return a copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**data)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


# Named configurations. The two official recipes, a small one sized for the synthetic
# demo world, and a tiny one that runs in milliseconds for tests.
MODEL_CONFIGS: dict[str, ModelConfig] = {
    "chan-bigru-f30k": ModelConfig(
        img_dim=2048,
        embed_size=1024,
        region_encoder="selfattention",
        text_encoder="bigru",
        vocab_size=8482,
        word_dim=300,
        pooling="lse",
        pooling_temperature=0.1,
    ),
    "chan-bert-f30k": ModelConfig(
        img_dim=2048,
        embed_size=1024,
        region_encoder="basic",
        text_encoder="bert",
        bert_dir="bert-base-uncased",
        pooling="mean",
    ),
    "demo": ModelConfig(
        img_dim=256,
        embed_size=256,
        region_encoder="selfattention",
        text_encoder="bigru",
        vocab_size=0,
        word_dim=128,
        pooling="lse",
    ),
    "tiny": ModelConfig(
        img_dim=16,
        embed_size=32,
        region_encoder="selfattention",
        attention_heads=4,
        text_encoder="bigru",
        vocab_size=50,
        word_dim=8,
        pooling="lse",
    ),
}


def get_config(name_or_config: str | ModelConfig, **overrides: Any) -> ModelConfig:
    """Look up a named config (or pass one through) and apply `overrides`."""
    if isinstance(name_or_config, ModelConfig):
        config = name_or_config
    else:
        if name_or_config not in MODEL_CONFIGS:
            raise ValueError(
                f"unknown model config {name_or_config!r}; available: {sorted(MODEL_CONFIGS)}"
            )
        config = MODEL_CONFIGS[name_or_config]
    return config.replace(**overrides) if overrides else config
