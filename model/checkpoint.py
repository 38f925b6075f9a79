"""The own checkpoint format: a directory with config.json, model.safetensors and the
vocabulary (vocab.json) or the BERT config + tokenizer (text_encoder/).

Writes go to a temporary sibling directory that replaces the checkpoint in one atomic
step when complete (model.io.staged_dir). Loading reads JSON and safetensors only:
nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.chan import CHANModel
from model.config import ModelConfig
from model.io import staged_dir
from model.vocab import BertTokenizer, CaptionTokenizer, VocabTokenizer, Vocabulary

logger = logging.getLogger(__name__)

FORMAT = "chan-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.json"
TEXT_DIR = "text_encoder"


@dataclass
class LoadedCheckpoint:
    """A model ready for inference with everything needed to feed it."""

    model: CHANModel
    tokenizer: CaptionTokenizer
    path: Path
    extractor: dict[str, Any] | None = None  # how gallery regions were extracted
    metadata: dict[str, Any] = field(default_factory=dict)  # training run facts

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def encode_captions(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw captions -> word embeddings (B, L, d) and word counts (B,)."""
        ids, lens = self.tokenizer(captions)
        return self.model.encode_texts(ids, lens), lens


def code_versions() -> dict[str, str]:
    """Versions that produced an artifact."""
    try:
        own = importlib_metadata.version("chan-retrieval")
    except importlib_metadata.PackageNotFoundError:
        own = "unknown"
    return {"chan-retrieval": own, "torch": torch.__version__, "python": platform.python_version()}


def save_checkpoint(
    model: CHANModel,
    out_dir: str | Path,
    *,
    vocab: Vocabulary | None = None,
    bert_tokenizer: BertTokenizer | None = None,
    extractor: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write `model` as a checkpoint directory at out_dir (replacing one already there).

    A BiGRU model needs `vocab`, a BERT model `bert_tokenizer`. Returns out_dir.
    """
    out_dir = Path(out_dir)
    config = model.config
    if config.text_encoder == "bigru" and vocab is None:
        raise ValueError("a BiGRU checkpoint needs its vocabulary")
    if config.text_encoder == "bert" and bert_tokenizer is None:
        raise ValueError("a BERT checkpoint needs its tokenizer")
    if vocab is not None and len(vocab) != config.vocab_size:
        raise ValueError(f"vocabulary has {len(vocab)} words, the model {config.vocab_size}")
    with staged_dir(out_dir) as tmp:  # replaces out_dir when complete
        tokenizer_entry = _write_text_side(model, tmp, vocab, bert_tokenizer)
        if config.text_encoder == "bert":
            config = config.replace(bert_dir=TEXT_DIR)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        document = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": config.to_dict(),
            "tokenizer": tokenizer_entry,
            "extractor": extractor,
            "metadata": metadata or {},
            "versions": code_versions(),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    logger.info("checkpoint written to %s", out_dir)
    return out_dir


def _write_text_side(
    model: CHANModel, tmp: Path, vocab: Vocabulary | None, bert_tokenizer: BertTokenizer | None
) -> dict[str, str]:
    if model.config.text_encoder == "bigru":
        vocab.save(tmp / VOCAB_FILE)
        return {"kind": "vocab", "path": VOCAB_FILE}
    text_dir = tmp / TEXT_DIR
    model.text_encoder.bert.config.save_pretrained(str(text_dir))
    bert_tokenizer.save(text_dir)
    return {"kind": "bert", "path": TEXT_DIR}


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """Parse and validate a checkpoint's config.json."""
    path = Path(path)
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint directory: {CONFIG_FILE} is missing")
    try:
        document = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path} is not valid JSON: {exc}") from None
    if document.get("format") != FORMAT:
        raise ValueError(
            f"{config_path} is not a {FORMAT} config (format={document.get('format')!r})"
        )
    if document.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{config_path} has format_version {document.get('format_version')}, this code reads "
            f"{FORMAT_VERSION}: upgrade chan-retrieval or re-export the checkpoint"
        )
    return document


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load a checkpoint directory written by save_checkpoint, in eval mode."""
    path = Path(path)
    document = read_checkpoint_config(path)
    config = ModelConfig.from_dict(document["model"])
    entry = document["tokenizer"]
    tokenizer: CaptionTokenizer
    if entry["kind"] == "vocab":
        tokenizer = VocabTokenizer(Vocabulary.load(path / entry["path"]))
    else:
        config = config.replace(bert_dir=str(path / entry["path"]))
        tokenizer = BertTokenizer(path / entry["path"])
    model = CHANModel(config, pretrained_text=False)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: the checkpoint is incomplete")
    try:
        state = load_file(str(weights))
    except SafetensorError as exc:
        raise ValueError(f"{weights} is not a readable safetensors file: {exc}") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"{weights} does not match its config: {exc}") from None
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match its config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    model.to(device).eval()
    return LoadedCheckpoint(model, tokenizer, path, document.get("extractor"), document["metadata"])


def checkpoint_hash(path: str | Path) -> str:
    """sha256 of the weights and the model config: names the model that built an index."""
    path = Path(path)
    digest = hashlib.sha256()
    digest.update(json.dumps(read_checkpoint_config(path)["model"], sort_keys=True).encode())
    with (path / WEIGHTS_FILE).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
