"""`chan train`: the training loop on precomp data.

Reads top to bottom: configuration, the pieces (`build_*`), one epoch, validation and
checkpoints, then `train()` which orchestrates them; the run directory's own files (the
metrics log, the resume state) are run_dir.py's. Defaults follow the reference
recipe (AdamW, lr 5e-4 decayed x0.1 at epoch 15 of 25, one warm-up epoch with the sum
of violations then hardest negatives, margin 0.05, grad clip 2.0, region drop 0.2,
caption token augmentation, BERT layers at lr x0.1).

Distributed: launched under `torchrun`, every rank encodes its share of the batch and
the embeddings of all ranks are gathered (with gradients) before the loss, so the
negatives come from the global batch; only rank 0 validates, logs and writes files.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from model.chan import CHANModel
from model.checkpoint import save_checkpoint
from model.config import ModelConfig, get_config
from model.losses import hinge_triplet_loss
from model.scoring import score_matrix
from model.training.data import Augment, PrecompSplit, augment_tokens, drop_regions, load_split
from model.training.distributed import (
    Distributed,
    build_device,
    build_distributed,
    gather_with_grad,
    global_max,
    pad_to,
    rank_digests,
)
from model.training.evaluate import evaluate
from model.training.plot import plot_curves
from model.training.run_dir import RunLog, load_run_state, prepare_run_dir, save_run_state
from model.vocab import MASK, BertTokenizer, VocabTokenizer, Vocabulary, pad_ids

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Model architecture comes from a named ModelConfig + overrides."""

    data: str  # precomp folder with {train,dev}_ims.npy and _caps.txt
    out: str  # run directory: best/, last/, metrics.jsonl, curves.png, train_state.pt
    model: str = "demo"  # name in MODEL_CONFIGS
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"coding": "soft"}
    train_split: str = "train"  # split the model trains on ({split}_ims.npy, _caps.txt)
    val_split: str = "dev"  # split validated after every epoch (best/ is kept by its rsum)
    val_images: int | None = 1000  # validate on the first N dev images (None: all)
    epochs: int = 25  # passes over the training split
    batch_size: int = 128  # global batch: split over ranks when distributed
    lr: float = 5e-4  # AdamW learning rate of the non-BERT parameters
    lr_decay_epochs: tuple[int, ...] = (15,)  # multiply lr by lr_decay at these epochs
    lr_decay: float = 0.1  # factor applied at each lr_decay_epochs epoch
    weight_decay: float | None = None  # None: 0.01 (AdamW default) for BiGRU, 1e-4 for BERT
    bert_lr_factor: float = 0.1  # BERT layers train at lr x this
    margin: float = 0.05  # hinge triplet loss margin
    warmup_epochs: int = 1  # epochs with the sum of violations before hardest negatives
    grad_clip: float = 2.0  # max gradient norm (0 turns clipping off)
    region_drop: float = 0.2  # each region dropped with this probability (augmentation)
    token_prob: float = 0.2  # caption augmentation; 0 turns it off
    vocab: str | None = None  # existing vocab json (BiGRU); default: built from train captions
    vocab_threshold: int = 4  # min count of a word in train captions to enter the vocab
    seed: int = 0  # model initialisation and, per epoch, data order and augmentation
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bfloat16 autocast when on CUDA (ignored on CPU)
    max_steps: int | None = None  # stop after this many steps in total (smoke tests)
    time_budget_s: float | None = None  # stop (validate, save) once training took this long
    resume: bool = False  # continue from out/train_state.pt
    progress: bool | None = None  # tqdm bars: None = when attached to a terminal


# ----------------------------------------------------------------------------- pieces


@dataclass
class TextSide:
    """What turns captions into ids for this run, and what the checkpoint must store."""

    tokenizer: VocabTokenizer | BertTokenizer
    vocab: Vocabulary | None
    mask_id: int
    vocab_size: int


def build_text_side(config: TrainConfig, model_config: ModelConfig, captions: list[str]):
    if model_config.text_encoder == "bert":
        if not model_config.bert_dir:
            raise ValueError("a BERT model needs --bert-dir (a local BERT directory)")
        tokenizer = BertTokenizer(model_config.bert_dir, max_length=64)
        hf = tokenizer.tokenizer
        return TextSide(tokenizer, None, hf.mask_token_id, hf.vocab_size)
    if config.vocab:
        vocab = Vocabulary.load(config.vocab)
    else:
        vocab = Vocabulary.build(captions, threshold=config.vocab_threshold).with_mask()
    return TextSide(VocabTokenizer(vocab), vocab, vocab(MASK), len(vocab))


def check_img_dim(config: TrainConfig, model_config: ModelConfig, img_dim: int) -> None:
    if img_dim != model_config.img_dim:
        raise ValueError(
            f"{config.data}/{config.train_split}_ims.npy has {img_dim}-dim regions, model "
            f"{config.model!r} expects {model_config.img_dim}; pass --img-dim {img_dim} or "
            "extract with the matching extractor"
        )


def build_model(model_config: ModelConfig, text: TextSide) -> CHANModel:
    if model_config.text_encoder == "bigru":
        model_config = model_config.replace(vocab_size=text.vocab_size)
    return CHANModel(model_config)


def build_optimizer(model: CHANModel, config: TrainConfig) -> torch.optim.Optimizer:
    bert = model.config.text_encoder == "bert"
    decay = config.weight_decay if config.weight_decay is not None else (1e-4 if bert else 0.01)
    slow = [p for n, p in model.named_parameters() if n.startswith("text_encoder.bert.")]
    slow_ids = {id(p) for p in slow}
    fast = [p for p in model.parameters() if id(p) not in slow_ids]
    groups = [{"params": fast, "lr": config.lr, "base_lr": config.lr}]
    if slow:
        lr = config.lr * config.bert_lr_factor
        groups.append({"params": slow, "lr": lr, "base_lr": lr})
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=decay)


def set_lr(optimizer: torch.optim.Optimizer, config: TrainConfig, epoch: int) -> float:
    factor = config.lr_decay ** sum(epoch >= e for e in config.lr_decay_epochs)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]


class CaptionBatches:
    """Batches of (image features, counts, caption ids, lengths), one caption per row and
    its image beside it. Each epoch is a seeded permutation; rank r of W takes every
    W-th item, so the ranks' batches together are exactly a single process's batch."""

    def __init__(
        self, split: PrecompSplit, text: TextSide, config: TrainConfig, ranks: Distributed
    ):
        self.split, self.text, self.config, self.ranks = split, text, config, ranks
        self.token_ids = [
            text.tokenizer.ids(c)
            for c in tqdm(
                split.captions, desc="tokenize", disable=config.progress is False or not ranks.main
            )
        ]
        if config.batch_size % ranks.world:
            raise ValueError(f"--batch-size {config.batch_size} must divide by {ranks.world} ranks")
        self.local_batch = config.batch_size // ranks.world
        self.augment = Augment(region_drop=config.region_drop, token_prob=config.token_prob)

    def __len__(self) -> int:
        return math.ceil(len(self.token_ids) // self.ranks.world / self.local_batch)

    def epoch(self, epoch: int):
        seed = self.config.seed * 100_003 + epoch
        order = torch.randperm(len(self.token_ids), generator=torch.Generator().manual_seed(seed))
        per_rank = len(order) // self.ranks.world
        mine = order[self.ranks.rank :: self.ranks.world][:per_rank].numpy()
        rng = np.random.default_rng([seed, self.ranks.rank])
        gen = torch.Generator().manual_seed(seed * 31 + self.ranks.rank)
        for start in range(0, len(mine), self.local_batch):
            captions = mine[start : start + self.local_batch]
            yield self._batch(captions, rng, gen)

    def _batch(self, captions: np.ndarray, rng: np.random.Generator, gen: torch.Generator):
        feats, counts = self.split.image_batch(self.split.caption_image[captions])
        feats, counts = drop_regions(feats, counts, self.augment.region_drop, gen)
        ids = [self.token_ids[c] for c in captions]
        if self.augment.token_prob > 0:
            ids = [
                augment_tokens(t, self.text.mask_id, self.text.vocab_size, self.augment, rng)
                for t in ids
            ]
        return (feats, counts, *pad_ids(ids))


# ----------------------------------------------------------------------------- one epoch


def train_step(model, ddp_model, batch, optimizer, config, ranks, hardest, device, amp):
    """One optimisation step; returns the loss value."""
    feats, counts, ids, lens = (t.to(device) for t in batch)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        img, cap = ddp_model(feats, counts, ids, lens)
    img, cap = img.float(), cap.float()
    cap = pad_to(cap, global_max(cap.shape[1], ranks))
    img_all, cap_all = gather_with_grad(img, ranks), gather_with_grad(cap, ranks)
    counts_all, lens_all = gather_with_grad(counts, ranks), gather_with_grad(lens, ranks)
    scores = score_matrix(img_all, counts_all, cap_all, lens_all, model.matching)
    loss = hinge_triplet_loss(scores, config.margin, hardest_negative=hardest)
    if not torch.isfinite(loss):
        raise RuntimeError(
            f"the loss became {float(loss)}; lower --lr or --grad-clip, or check the features"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    return float(loss.detach())


class Encoders(torch.nn.Module):
    """The part DistributedDataParallel wraps: both encoders, no scoring (the score
    needs the gathered embeddings of every rank)."""

    def __init__(self, model: CHANModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats, counts, ids, lens):
        return self.model.encode_images(feats, counts), self.model.encode_texts(ids, lens)


# ----------------------------------------------------------------------------- main loop


@dataclass
class TrainResult:
    best_rsum: float
    best_metrics: dict[str, Any]
    epochs_run: int
    steps: int
    seconds: float
    out: Path


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) a training run; returns what the best checkpoint achieved."""
    ranks = build_distributed(config.device)
    try:
        return _train(config, ranks)
    finally:
        if ranks.world > 1:
            dist.destroy_process_group()


def _train(config: TrainConfig, ranks: Distributed) -> TrainResult:
    started = time.perf_counter()
    device = build_device(config.device, ranks)
    torch.manual_seed(config.seed)
    out = Path(config.out)
    model_config = get_config(config.model).replace(**config.model_overrides)
    data_dir = Path(config.data)
    train_split = load_split(data_dir, config.train_split, None)
    check_img_dim(config, model_config, train_split.regions.shape[2])
    val_split = load_split(data_dir, config.val_split, model_config.img_dim)
    text = build_text_side(config, model_config, train_split.captions)
    model = build_model(model_config, text).to(device)
    optimizer = build_optimizer(model, config)
    if ranks.main:
        prepare_run_dir(out, dataclasses.asdict(config), config.resume)
    epoch, step, best = 0, 0, -1.0
    if config.resume:
        epoch, step, best = load_run_state(out, model, optimizer)
        logger.info("resuming at epoch %d, step %d (best rsum %.2f)", epoch, step, best)
    encoders = Encoders(model)
    ddp = torch.nn.parallel.DistributedDataParallel(encoders) if ranks.world > 1 else encoders
    batches = CaptionBatches(train_split, text, config, ranks)
    log = RunLog(out, ranks.main)
    amp = config.amp and device.type == "cuda"
    best_metrics: dict[str, Any] = {}
    first_epoch = epoch
    out_of_time = False
    while epoch < config.epochs and not _done(config, step) and not out_of_time:
        lr = set_lr(optimizer, config, epoch)
        hardest = epoch >= config.warmup_epochs
        model.train()
        losses = []
        bar = tqdm(
            batches.epoch(epoch),
            total=len(batches),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=config.progress is False or not ranks.main,
        )
        for batch in bar:
            losses.append(
                train_step(model, ddp, batch, optimizer, config, ranks, hardest, device, amp)
            )
            step += 1
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            out_of_time = _out_of_time(config, started, ranks)
            if _done(config, step) or out_of_time:
                break
        epoch += 1
        record = {
            "epoch": epoch,
            "step": step,
            "lr": lr,
            "loss": float(np.mean(losses)),
            "hardest_negative": hardest,
            "seconds": round(time.perf_counter() - started, 2),
        }
        if ranks.main:
            metrics = evaluate(
                model, text.tokenizer, val_split, max_images=config.val_images, progress=False
            )
            record |= {f"val_{k}": v for k, v in metrics.items()}
            if metrics["rsum"] > best:
                best, best_metrics = metrics["rsum"], metrics
                _save(model, out / "best", text, train_split, config, epoch, step, metrics)
            _save(model, out / "last", text, train_split, config, epoch, step, metrics)
            save_run_state(out, optimizer, epoch, step, best)
            log.write(record)
            plot_curves(log.records(), out / "curves.png")
            logger.info(
                "epoch %d: loss %.3f, val rsum %.1f (t2i R@1 %.1f, i2t R@1 %.1f)",
                epoch,
                record["loss"],
                metrics["rsum"],
                metrics["t2i_r1"],
                metrics["i2t_r1"],
            )
        if ranks.world > 1:
            dist.barrier()
    digests = rank_digests(model, ranks)
    log.write({"event": "end", "epochs": epoch, "step": step, "rank_weight_digests": digests})
    if len(set(digests)) > 1:
        raise RuntimeError(f"ranks ended with different weights: {digests}")
    return TrainResult(
        best, best_metrics, epoch - first_epoch, step, time.perf_counter() - started, out
    )


def _out_of_time(config: TrainConfig, started: float, ranks: Distributed) -> bool:
    """Whether the time budget is spent; rank 0's clock decides for every rank."""
    if config.time_budget_s is None:
        return False
    spent = torch.tensor([float(time.perf_counter() - started > config.time_budget_s)])
    if ranks.world > 1:
        dist.broadcast(spent, src=0)
    return bool(spent.item())


def _done(config: TrainConfig, step: int) -> bool:
    return config.max_steps is not None and step >= config.max_steps


def _save(model, path, text, train_split, config, epoch, step, metrics) -> None:
    save_checkpoint(
        model,
        path,
        vocab=text.vocab,
        bert_tokenizer=text.tokenizer if text.vocab is None else None,
        extractor=train_split.extractor,
        metadata={
            "epoch": epoch,
            "step": step,
            "val": metrics,
            "train": dataclasses.asdict(config),
        },
    )
