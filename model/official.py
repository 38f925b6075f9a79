"""Import of checkpoints written by the reference CHAN implementation.

The file is a torch.save'd dict: `model` is a list of four state dicts
[img_enc, txt_enc, sim_enc, criterion] and `opt` a pickled argparse.Namespace. It is
read with weights_only=True and only argparse.Namespace allow-listed; every key is
mapped and shape-checked, nothing is skipped silently.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from model.chan import CHANModel
from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.vocab import BertTokenizer, Vocabulary

logger = logging.getLogger(__name__)

POOLINGS = {"LSEPooling": "lse", "MeanPooling": "mean", "MaxPooling": "max", "SumPooling": "sum"}
# Present in official state dicts but unused by the forward computation.
IGNORED_KEYS = {
    "txt_enc": {"fc.weight", "fc.bias", "bert.embeddings.position_ids"},
}


class OfficialFormatError(ValueError):
    """The file is not a CHAN checkpoint this importer can map exactly."""


def read_official(path: str | Path) -> dict[str, Any]:
    """torch.load the official file safely and check its top-level layout."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint {path} not found")
    with path.open("rb") as handle:
        head = handle.read(2)
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":  # zip or legacy pickle
        raise OfficialFormatError(f"{path} is not a torch checkpoint (not written by torch.save)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise OfficialFormatError(
            f"{path}: refused to unpickle it: it holds an object other than tensors and "
            f"argparse.Namespace ({first})"
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError) as exc:
        raise OfficialFormatError(f"{path} is not a torch checkpoint: {exc}") from None
    if not isinstance(raw, dict) or "model" not in raw or "opt" not in raw:
        raise OfficialFormatError(f"{path}: expected a dict with 'model' and 'opt' keys")
    parts = raw["model"]
    if not isinstance(parts, list | tuple) or len(parts) != 4:
        raise OfficialFormatError(
            f"{path}: 'model' must be a list of 4 state dicts "
            "[img_enc, txt_enc, sim_enc, criterion]"
        )
    if not isinstance(raw["opt"], argparse.Namespace):
        raise OfficialFormatError(f"{path}: 'opt' is not an argparse.Namespace")
    return raw


def config_from_opt(opt: argparse.Namespace, bert_dir: str | None) -> ModelConfig:
    """The ModelConfig equivalent to the official options."""
    options = vars(opt)
    coding = options.get("coding_type")
    if coding != "VHACoding":
        raise OfficialFormatError(
            f"coding_type {coding!r} is not supported: only hard assignment (VHACoding) imports"
        )
    pooling = options.get("pooling_type")
    if pooling not in POOLINGS:
        raise OfficialFormatError(f"pooling_type {pooling!r} is not one of {sorted(POOLINGS)}")
    text = options.get("text_enc_type", "bigru")
    if text == "bert" and not bert_dir:
        raise OfficialFormatError("this is a BERT checkpoint: pass --bert-dir with its local model")
    try:
        return ModelConfig(
            img_dim=int(options.get("img_dim", 2048)),
            embed_size=int(options["embed_size"]),
            region_encoder=options.get("precomp_enc_type", "basic"),
            text_encoder=text,
            vocab_size=int(options.get("vocab_size", 0)) if text == "bigru" else 0,
            word_dim=int(options.get("word_dim", 300)),
            num_layers=int(options.get("num_layers", 1)),
            bert_dir=bert_dir if text == "bert" else None,
            coding="hard",
            pooling=POOLINGS[pooling],
            pooling_temperature=float(options.get("belta", 0.1)),
            img_norm=not options.get("no_imgnorm", False),
            txt_norm=not options.get("no_txtnorm", False),
            official_compat=True,
        )
    except (KeyError, ValueError) as exc:
        raise OfficialFormatError(f"options cannot be mapped: {exc}") from None


def key_map(config: ModelConfig, txt_state: dict[str, torch.Tensor]) -> dict[tuple[str, str], str]:
    """(part, official key) -> own key, for every weight the own model needs."""
    mapping = {
        ("img_enc", "fc.weight"): "region_encoder.proj.weight",
        ("img_enc", "fc.bias"): "region_encoder.proj.bias",
    }
    if config.region_encoder == "selfattention":
        for name in ("weight", "bias"):
            mapping["img_enc", f"feedforward.ln.{name}"] = f"region_encoder.norm.{name}"
        for name in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"):
            mapping["img_enc", f"feedforward.attn.{name}"] = f"region_encoder.attn.{name}"
    if config.text_encoder == "bigru":
        mapping["txt_enc", "embed.weight"] = "text_encoder.embed.weight"
        for layer in range(config.num_layers):
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                for suffix in ("", "_reverse"):
                    name = f"{kind}_l{layer}{suffix}"
                    mapping["txt_enc", f"rnn.{name}"] = f"text_encoder.gru.{name}"
    else:
        for key in txt_state:
            if key.startswith("bert.") and key not in IGNORED_KEYS["txt_enc"]:
                mapping["txt_enc", key] = f"text_encoder.{key}"
        mapping["txt_enc", "linear.weight"] = "text_encoder.proj.weight"
        mapping["txt_enc", "linear.bias"] = "text_encoder.proj.bias"
    return mapping


def convert_state(
    parts: list[dict[str, torch.Tensor]], model: CHANModel
) -> dict[str, torch.Tensor]:
    """Map the 4 official state dicts onto `model`'s keys, strictly."""
    names = ("img_enc", "txt_enc", "sim_enc", "criterion")
    official = dict(zip(names, parts, strict=True))
    for part in ("sim_enc", "criterion"):
        if official[part]:
            raise OfficialFormatError(f"unexpected key {part}.{next(iter(official[part]))}")
    mapping = key_map(model.config, official["txt_enc"])
    target = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for (part, key), own in mapping.items():
        if key not in official[part]:
            raise OfficialFormatError(f"missing key {part}.{key}")
        tensor = official[part][key]
        if own not in target:
            raise OfficialFormatError(f"key {part}.{key} has no place in this architecture")
        if tuple(tensor.shape) != tuple(target[own].shape):
            raise OfficialFormatError(
                f"shape mismatch at {part}.{key}: checkpoint {tuple(tensor.shape)}, "
                f"expected {tuple(target[own].shape)}"
            )
        state[own] = tensor.to(target[own].dtype)
    for part in ("img_enc", "txt_enc"):
        used = {key for (p, key) in mapping if p == part} | IGNORED_KEYS.get(part, set())
        extra = sorted(set(official[part]) - used)
        if extra:
            raise OfficialFormatError(f"unexpected key {part}.{extra[0]}")
    unfilled = sorted(set(target) - set(state))
    if unfilled:
        raise OfficialFormatError(f"no checkpoint weight for {unfilled[0]}")
    return state


def import_official(
    ckpt_path: str | Path,
    out_dir: str | Path,
    vocab_path: str | Path | None = None,
    bert_dir: str | Path | None = None,
) -> Path:
    """Convert an official CHAN checkpoint into the own format at out_dir."""
    raw = read_official(ckpt_path)
    config = config_from_opt(raw["opt"], str(bert_dir) if bert_dir else None)
    vocab = None
    if config.text_encoder == "bigru":
        if vocab_path is None:
            raise OfficialFormatError(
                "this is a BiGRU checkpoint: pass --vocab with its vocab json"
            )
        vocab = Vocabulary.load(vocab_path)
        rows = raw["model"][1].get("embed.weight")
        if rows is not None and rows.shape[0] != len(vocab):
            raise OfficialFormatError(
                f"vocabulary {vocab_path} has {len(vocab)} entries with <mask>, the checkpoint's "
                f"embedding {rows.shape[0]} rows: pass the vocab file the model was trained with"
            )
        config = config.replace(vocab_size=len(vocab))
    model = CHANModel(config, pretrained_text=False)
    model.load_state_dict(convert_state(list(raw["model"]), model), strict=True)
    metadata = {
        "imported_from": str(Path(ckpt_path).name),
        "epoch": raw.get("epoch"),
        "best_rsum": raw.get("best_rsum"),
        "data_name": getattr(raw["opt"], "data_name", None),
    }
    tokenizer = BertTokenizer(bert_dir) if config.text_encoder == "bert" else None
    return save_checkpoint(model, out_dir, vocab=vocab, bert_tokenizer=tokenizer, metadata=metadata)
