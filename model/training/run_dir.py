"""The run directory's own files: train_config.json, the metrics log (metrics.jsonl) and
the resume state (train_state.pt: optimizer and counters; the weights are last/)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from model.chan import CHANModel
from model.io import atomic_write_text, atomic_writer

logger = logging.getLogger(__name__)

CONFIG_FILE = "train_config.json"
STATE_FILE = "train_state.pt"
LOG_FILE = "metrics.jsonl"


def prepare_run_dir(out: Path, config: dict[str, Any], resume: bool) -> None:
    """Create the run directory and record its config; a non-empty one only on resume."""
    if out.exists() and any(out.iterdir()) and not resume:
        raise ValueError(f"run directory {out} is not empty; pass --resume or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_FILE, json.dumps(config, indent=2) + "\n")


class RunLog:
    """metrics.jsonl (one JSON object a line) and curves.png; rank 0 only."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.path, self.enabled = out / LOG_FILE, enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def save_run_state(
    out: Path, optimizer: torch.optim.Optimizer, epoch: int, step: int, best: float
) -> None:
    """Optimizer state and counters, written atomically after last/ (the weights)."""
    state = {"optimizer": optimizer.state_dict(), "epoch": epoch, "step": step, "best_rsum": best}
    with atomic_writer(out / STATE_FILE) as handle:
        torch.save(state, handle)


def load_run_state(
    out: Path, model: CHANModel, optimizer: torch.optim.Optimizer
) -> tuple[int, int, float]:
    """Weights from out/last, optimizer and counters from train_state.pt; returns
    (epoch, step, best rsum)."""
    path = out / STATE_FILE
    if not path.exists() or not (out / "last" / "model.safetensors").exists():
        raise FileNotFoundError(f"--resume: {path} or {out}/last not found; train without --resume")
    model.load_state_dict(load_file(str(out / "last" / "model.safetensors")))
    state = torch.load(path, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    return state["epoch"], state["step"], state["best_rsum"]
