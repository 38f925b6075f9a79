"""`chan bench score`: score-matrix throughput and memory, measured side by side.

Methods, all on the same random unit vectors:
- hard (fp32, and bf16): the chunked hard-assignment scorer of model.scoring;
- matmul: a plain fp32 matrix product with the FLOP count of the hard scorer's product
  (the roofline), timed interleaved with the hard scorer so machine noise hits both;
- reference-style: the hard assignment computed as a direct port of the reference code
  does it (padded product, mask product, masked_fill, max, pooling), on a subset;
- soft: SCAN text-to-image attention (mean pooling), on a subset of the images, both as
  model.scoring computes it (vectorised, chunked) and as the reference code does (a
  loop over captions with every image repeated).
Peak extra memory is the growth of the process's peak resident set during a method.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from model.scoring import FlatWords, Matching, score_matrix

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreBenchOptions:
    """Sizes of the random inputs and of the runs that `run_score_bench` measures."""

    images: int = 1000
    captions: int = 5000
    regions: int = 36  # K, regions per image
    dim: int = 1024  # d, embedding size
    min_len: int = 8  # shortest caption (words)
    max_len: int = 20  # longest caption (words)
    chunk_mb: int = 64  # memory bound of one scoring block
    groups: int = 5  # interleaved hard / matmul rounds
    soft_images: int = 20  # images for the soft baseline
    reference_images: int = 100  # images for the reference-style port
    seed: int = 0
    threads: int | None = None  # torch threads; None: torch's default
    memory: bool = True  # peak-memory runs, each in a fresh process


def peak_extra_bytes(method: str, options: ScoreBenchOptions) -> int:
    """Run one method in a fresh process and return how far its peak resident set rose
    above the resident set it had with the inputs built (Linux /proc)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_child_peak, (method, dataclasses.asdict(options)))


def _child_peak(method: str, fields: dict[str, Any]) -> int:
    options = ScoreBenchOptions(**fields)
    if options.threads:
        torch.set_num_threads(options.threads)
    regions, words, lens = make_inputs(options)
    flat = FlatWords.from_padded(words, lens)
    run = _methods(options, regions, words, lens, flat)[method]
    # building the inputs had temporaries: restart the peak from the current resident set
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    with torch.inference_mode():
        run()
    return max(0, _status_kb("VmHWM") - before) * 1024


def _methods(
    options: ScoreBenchOptions,
    regions: torch.Tensor,
    words: torch.Tensor,
    lens: torch.Tensor,
    flat: FlatWords,
) -> dict[str, Any]:
    """The measured computations, by name, as zero-argument callables."""
    bound = options.chunk_mb * 2**20
    hard, soft = Matching(coding="hard", pooling="lse"), Matching(coding="soft", pooling="mean")
    n_ref, n_soft = (
        min(options.reference_images, options.images),
        min(options.soft_images, options.images),
    )
    return {
        "hard_fp32": lambda: score_matrix(
            regions, None, flat, matching=hard, max_chunk_bytes=bound
        ),
        "hard_bf16": lambda: score_matrix(
            regions, None, flat, matching=hard, max_chunk_bytes=bound, compute_dtype=torch.bfloat16
        ),
        "reference_style_fp32": lambda: reference_style(regions[:n_ref], words, lens),
        "soft_fp32": lambda: score_matrix(
            regions[:n_soft], None, flat, matching=soft, max_chunk_bytes=bound
        ),
        "soft_reference_style_fp32": lambda: scan_reference_style(regions[:n_soft], words, lens),
    }


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def make_inputs(options: ScoreBenchOptions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random unit regions (N, K, d), padded unit words (C, L, d) and word counts (C,)."""
    gen = torch.Generator().manual_seed(options.seed)
    regions = F.normalize(
        torch.randn(options.images, options.regions, options.dim, generator=gen), dim=-1
    )
    lens = torch.randint(options.min_len, options.max_len + 1, (options.captions,), generator=gen)
    words = F.normalize(
        torch.randn(options.captions, options.max_len, options.dim, generator=gen), dim=-1
    )
    words = words * (torch.arange(options.max_len)[None, :] < lens[:, None])[..., None]
    return regions, words, lens


def reference_style(
    regions: torch.Tensor,
    words: torch.Tensor,
    lens: torch.Tensor,
    temperature: float = 0.1,
    shard: int = 128,
) -> torch.Tensor:
    """Hard assignment as a direct port computes it: every padded slot multiplied, a
    mask built by a second product, masked_fill, max, pooling; 128 x 128 shards."""
    n_img, slots, dim = regions.shape
    region_lens = torch.full((n_img,), slots)
    out = torch.empty(n_img, words.shape[0])
    for i in range(0, n_img, shard):
        for c in range(0, words.shape[0], shard):
            img, cap, cl = regions[i : i + shard], words[c : c + shard], lens[c : c + shard]
            sims = img.reshape(-1, dim) @ cap.reshape(-1, dim).T
            sims = sims.view(img.shape[0], slots, cap.shape[0], -1).permute(0, 2, 1, 3)
            mi = (
                (torch.arange(slots)[None] < region_lens[i : i + shard, None])
                .float()
                .reshape(-1, 1)
            )
            mc = (torch.arange(cap.shape[1])[None] < cl[:, None]).float().reshape(1, -1)
            mask = (mi @ mc).view(img.shape[0], slots, cap.shape[0], -1).permute(0, 2, 1, 3)
            best = sims.masked_fill(mask == 0, -1).max(dim=-2)[0]
            best = best.masked_fill(best == -1, float("-inf"))
            out[i : i + shard, c : c + shard] = torch.logsumexp(best / temperature, dim=-1)
    return out


def scan_reference_style(
    regions: torch.Tensor, words: torch.Tensor, lens: torch.Tensor, smooth: float = 9.0
) -> torch.Tensor:
    """SCAN text-to-image attention as the reference code computes it: one caption at a
    time, repeated for every image, attended features built explicitly; mean pooling."""
    n_img = regions.shape[0]
    out = torch.empty(n_img, words.shape[0])
    for c in range(words.shape[0]):
        cap = words[c, : int(lens[c])][None].repeat(n_img, 1, 1)  # (n_img, L, d)
        attn = F.leaky_relu(torch.bmm(regions, cap.transpose(1, 2)), 0.1)  # (n_img, K, L)
        attn = attn / (attn.norm(dim=2, keepdim=True) + 1e-8)
        attn = torch.softmax(attn.transpose(1, 2) * smooth, dim=2)  # (n_img, L, K)
        context = torch.bmm(attn, regions)  # (n_img, L, d)
        context = context / (context.norm(dim=2, keepdim=True) + 1e-8)
        out[:, c] = F.cosine_similarity(cap, context, dim=2).mean(1)
    return out


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def topk_agreement(a: torch.Tensor, b: torch.Tensor, k: int = 10) -> dict[str, float]:
    """How often two score matrices give the same top-k, per caption (t2i) and per image (i2t)."""
    result = {}
    for name, x, y in (("t2i", a.T, b.T), ("i2t", a, b)):
        ta, tb = x.topk(k, dim=1).indices, y.topk(k, dim=1).indices
        overlap = (ta[:, :, None] == tb[:, None, :]).any(-1).float().mean(1)
        result[f"{name}_top{k}_overlap"] = float(overlap.mean())
        result[f"{name}_top{k}_identical_sets"] = float((overlap == 1).float().mean())
        result[f"{name}_top1_agree"] = float((ta[:, 0] == tb[:, 0]).float().mean())
    return result


@torch.inference_mode()
def run_score_bench(options: ScoreBenchOptions) -> dict[str, Any]:
    """Measure every method; returns the figures as a dict."""
    if options.threads:
        torch.set_num_threads(options.threads)
    regions, words, lens = make_inputs(options)
    flat = FlatWords.from_padded(words, lens)
    run = _methods(options, regions, words, lens, flat)
    bound = options.chunk_mb * 2**20
    n_img, slots, dim = regions.shape
    total_words = int(lens.sum())
    flops = 2.0 * n_img * slots * total_words * dim
    n_ref, n_soft = min(options.reference_images, n_img), min(options.soft_images, n_img)
    hard_match = Matching(coding="hard", pooling="lse")

    # hard fp32, interleaved group by group with the matmul roofline of the same FLOPs
    roofline = Roofline(dim)
    hard_s, mm_s, pieces = 0.0, 0.0, []
    for group in torch.arange(n_img).chunk(options.groups):
        part, seconds = _timed(
            lambda g=group: score_matrix(
                regions[g], None, flat, matching=hard_match, max_chunk_bytes=bound
            )
        )
        pieces.append(part)
        hard_s += seconds
        mm_s += roofline.seconds(flops * len(group) / n_img)
    del roofline
    hard = torch.cat(pieces)
    seconds = {"hard_fp32": hard_s, "matmul_fp32": mm_s}
    results = {"hard_fp32": hard}
    for name in ("hard_bf16", "reference_style_fp32", "soft_fp32", "soft_reference_style_fp32"):
        if (name.startswith("soft") and not n_soft) or (name.startswith("ref") and not n_ref):
            continue
        results[name], seconds[name] = _timed(run[name])

    subset = {
        "reference_style_fp32": n_ref,
        "soft_fp32": n_soft,
        "soft_reference_style_fp32": n_soft,
    }
    methods: dict[str, dict[str, float]] = {}
    for name, secs in seconds.items():
        n = subset.get(name, n_img)
        peak = 0 if name == "matmul_fp32" or not options.memory else peak_extra_bytes(name, options)
        methods[name] = _figures(n * options.captions, secs, flops * n / n_img, peak)
    if n_ref:
        methods["reference_style_fp32"]["max_abs_diff_vs_hard"] = float(
            (results["reference_style_fp32"] - hard[:n_ref]).abs().max()
        )
    if n_soft:
        methods["soft_reference_style_fp32"]["max_abs_diff_vs_soft"] = float(
            (results["soft_reference_style_fp32"] - results["soft_fp32"]).abs().max()
        )

    hard_pps = methods["hard_fp32"]["pairs_per_s"]

    def ratio(name: str) -> float | None:
        return hard_pps / methods[name]["pairs_per_s"] if name in methods else None

    return {
        "sizes": {
            "images": n_img,
            "captions": options.captions,
            "regions": slots,
            "dim": dim,
            "words": total_words,
            "chunk_bytes": bound,
            "threads": torch.get_num_threads(),
        },
        "flops": flops,
        "methods": methods,
        "hard_fraction_of_matmul": mm_s / hard_s,
        "hard_over_soft": ratio("soft_fp32"),
        "hard_over_soft_reference_style": ratio("soft_reference_style_fp32"),
        "hard_over_reference_style": ratio("reference_style_fp32"),
        "bf16_speedup": hard_s / seconds["hard_bf16"],
        "bf16_max_abs_diff": float((results["hard_bf16"] - hard).abs().max()),
        "bf16_agreement": topk_agreement(hard, results["hard_bf16"]),
    }


class Roofline:
    """Plain fp32 products [4096, dim] x [dim, 4096] into a reused output."""

    def __init__(self, dim: int) -> None:
        self.a, self.b = torch.randn(4096, dim), torch.randn(dim, 4096)
        self.out = torch.empty(4096, 4096)
        self.flops_each = 2.0 * 4096 * 4096 * dim

    def seconds(self, flops: float) -> float:
        """Time products totalling about `flops`, scaled to exactly `flops`."""
        reps = max(1, round(flops / self.flops_each))
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(self.a, self.b, out=self.out)
        return (time.perf_counter() - start) * flops / (reps * self.flops_each)


def _figures(pairs: int, seconds: float, flops: float, peak_bytes: int) -> dict[str, float]:
    return {
        "seconds": seconds,
        "pairs_per_s": pairs / seconds,
        "gflop_per_s": flops / seconds / 1e9,
        "peak_extra_mb": peak_bytes / 2**20,
    }


def format_report(result: dict[str, Any]) -> str:
    """Human-readable table of a run_score_bench result."""
    s = result["sizes"]
    lines = [
        f"{s['images']} images x {s['captions']} captions, K={s['regions']}, d={s['dim']}, "
        f"{s['words']} words, chunk bound {s['chunk_bytes'] / 2**20:.0f} MB, "
        f"{s['threads']} threads",
        f"{'method':24} {'pairs/s':>12} {'GFLOP/s':>9} {'peak MB':>9}",
    ]
    for name, m in result["methods"].items():
        lines.append(
            f"{name:24} {m['pairs_per_s']:12,.0f} {m['gflop_per_s']:9.1f} {m['peak_extra_mb']:9.1f}"
        )
    lines.append(f"hard fp32 / matmul roofline: {result['hard_fraction_of_matmul']:.2f}")
    if result["hard_over_soft"]:
        lines.append(
            f"hard fp32 / soft (vectorised here): {result['hard_over_soft']:.1f}x; "
            f"/ soft (reference-style SCAN loop): "
            f"{result['hard_over_soft_reference_style']:.1f}x"
        )
    if result["hard_over_reference_style"]:
        lines.append(
            f"hard fp32 / reference-style port: {result['hard_over_reference_style']:.2f}x"
        )
    agreement = result["bf16_agreement"]
    lines.append(
        f"bf16 speed-up {result['bf16_speedup']:.2f}x, max |diff| "
        f"{result['bf16_max_abs_diff']:.2e}, t2i top-10 overlap "
        f"{agreement['t2i_top10_overlap']:.4f}, identical top-10 sets "
        f"{agreement['t2i_top10_identical_sets']:.3f}"
    )
    return "\n".join(lines)
