"""Encoders that map regions and words into the joint embedding space."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from model.scoring import lengths_to_mask

logger = logging.getLogger(__name__)


def l2norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x / (||x||_2 + eps) on the last dimension (the reference implementation's form)."""
    return x / (x.norm(dim=-1, keepdim=True) + eps)


class RegionEncoder(nn.Module):
    """Region features (B, K, D) -> region embeddings (B, K, d).

    A linear projection, then optionally one pre-norm self-attention block with a single
    residual (h + MHA(LN(h))), then L2 normalisation.
    """

    def __init__(
        self,
        img_dim: int,
        embed_size: int,
        self_attention: bool,
        heads: int = 8,
        normalize: bool = True,
        mask_padding: bool = True,
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(img_dim, embed_size)
        self.norm = nn.LayerNorm(embed_size) if self_attention else None
        self.attn = (
            nn.MultiheadAttention(embed_size, heads, batch_first=True) if self_attention else None
        )
        self.normalize = normalize
        # The reference implementation attends over padded slots too; masking them is
        # the default because a padded slot carries no image content.
        self.mask_padding = mask_padding
        bound = (6.0 / (img_dim + embed_size)) ** 0.5  # Xavier uniform, zero bias
        nn.init.uniform_(self.proj.weight, -bound, bound)
        nn.init.zeros_(self.proj.bias)

    def forward(self, regions: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """regions: (B, K, D), lens: (B,) valid counts -> (B, K, d), padded slots zeroed."""
        valid = lengths_to_mask(lens, regions.shape[1])[..., None]
        # Padded slots enter as zero rows whatever the caller left there (the reference
        # implementation's padding), which matters when attention is unmasked.
        h = self.proj(regions.masked_fill(~valid, 0))
        if self.attn is not None:
            pad = ~valid[..., 0] if self.mask_padding else None
            q = self.norm(h)
            h = h + self.attn(q, q, q, key_padding_mask=pad, need_weights=False)[0]
        if self.normalize:
            h = l2norm(h)
        return h.masked_fill(~valid, 0)


class BiGRUTextEncoder(nn.Module):
    """Word ids (B, L) -> word embeddings (B, L, d): embedding, bidirectional GRU over
    packed sequences, average of the two directions, L2 normalisation."""

    def __init__(
        self, vocab_size: int, word_dim: int, embed_size: int, num_layers: int, normalize: bool
    ) -> None:
        super().__init__()
        if vocab_size < 1:
            raise ValueError("a BiGRU text encoder needs vocab_size >= 1 (build a vocabulary)")
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.gru = nn.GRU(word_dim, embed_size, num_layers, batch_first=True, bidirectional=True)
        self.normalize = normalize
        nn.init.xavier_uniform_(self.embed.weight)

    def forward(self, ids: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """ids: (B, L) int64, lens: (B,) -> (B, L, d), padded steps zero."""
        packed = pack_padded_sequence(
            self.embed(ids), lens.cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        half = out.shape[-1] // 2
        out = (out[..., :half] + out[..., half:]) / 2
        return l2norm(out) if self.normalize else out


def load_glove(embedding: nn.Embedding, word2idx: dict[str, int], path: str | Path) -> int:
    """Initialise rows of `embedding` from a local GloVe-format text file.

    Each line is a word followed by its vector. Words missing verbatim are tried once
    more without '-', '.', "'" and before a '/'. Returns how many vocab words were found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GloVe file {path} not found: pass a local word-vector text file")
    alternatives: dict[str, list[int]] = {}
    for word, idx in word2idx.items():
        alt = word.replace("-", "").replace(".", "").replace("'", "").split("/")[0]
        if alt != word:
            alternatives.setdefault(alt, []).append(idx)
    exact: set[int] = set()
    found: set[int] = set()
    dim = embedding.embedding_dim
    with path.open(encoding="utf-8", errors="replace") as lines, torch.no_grad():
        for line in lines:
            word, _, rest = line.rstrip("\n").partition(" ")
            targets = [word2idx[word]] if word in word2idx else []
            targets += [i for i in alternatives.get(word, ()) if i not in exact]
            if not targets:
                continue
            values = rest.split(" ")
            if len(values) != dim:
                raise ValueError(
                    f"{path}: vector of {word!r} has {len(values)} values, the embedding {dim}; "
                    "set word_dim to the file's dimension"
                )
            embedding.weight[targets] = torch.tensor([float(v) for v in values])
            found.update(targets)
            if word in word2idx:
                exact.add(word2idx[word])
    logger.info("GloVe: %d/%d vocabulary words found in %s", len(found), len(word2idx), path)
    return len(found)


class BertTextEncoder(nn.Module):
    """Token ids (B, L) -> (B, L, d): a BERT-family model's last hidden layer for every
    position ([CLS] and [SEP] included), a linear projection, L2 normalisation."""

    def __init__(self, model_dir: str | Path, embed_size: int, normalize: bool, pretrained: bool):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{model_dir} has no config.json: bert_dir must be a local model directory"
            )
        if pretrained:
            self.bert = AutoModel.from_pretrained(model_dir, local_files_only=True)
        else:
            config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
            self.bert = AutoModel.from_config(config)
        self.proj = nn.Linear(self.bert.config.hidden_size, embed_size)
        self.normalize = normalize

    def forward(self, ids: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """ids: (B, L), lens: (B,) -> (B, L, d), padded positions zero."""
        valid = lengths_to_mask(lens, ids.shape[1])
        attention = valid.to(torch.long)
        hidden = self.bert(input_ids=ids, attention_mask=attention).last_hidden_state
        out = self.proj(hidden)
        out = l2norm(out) if self.normalize else out
        return out * valid[..., None].to(out.dtype)
