"""Distributed training helpers: the process group torchrun describes, gathering
embeddings with gradients across ranks, and a check that all ranks hold the same weights."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def build_distributed(device: str) -> Distributed:
    """torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; without them, a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]))


def build_device(name: str, ranks: Distributed) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible")
        torch.cuda.set_device(ranks.local_rank)
        return torch.device("cuda", ranks.local_rank)
    if name not in {"auto", "cpu"}:
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


def gather_with_grad(tensor: torch.Tensor, ranks: Distributed) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0; gradients flow back to each owner."""
    if ranks.world == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def pad_to(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """(B, L, d) -> (B, length, d), zero padded (all ranks need one shape to gather)."""
    return torch.nn.functional.pad(tensor, (0, 0, 0, length - tensor.shape[1]))


def global_max(value: int, ranks: Distributed) -> int:
    if ranks.world == 1:
        return value
    box = torch.tensor([value])
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return int(box)


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def rank_digests(model: torch.nn.Module, ranks: Distributed) -> list[str]:
    digest = weights_digest(model)
    if ranks.world == 1:
        return [digest]
    gathered: list[Any] = [None] * ranks.world
    dist.all_gather_object(gathered, digest)
    return gathered
