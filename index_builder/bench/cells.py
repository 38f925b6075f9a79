"""`chan bench cells`: k-means training and cell assignment, exact against two-level
(build/cells.py Assigner), side by side in one run on the synthetic region vectors of
`chan bench search`.

Reported per path: seconds to train the centroids and the held-out vectors' mean
similarity to their cell (the quantisation quality), seconds to assign every vector, and
for the two-level path the share of vectors that got exactly the cell of the exact
product and the mean similarity lost on those that did not."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from index_builder.bench.search import SearchBenchOptions, World
from index_builder.build.cells import CELL_ITERATIONS, Assigner, train_centroids
from index_builder.build.writer import CELL_TRAIN_POINTS


@dataclasses.dataclass(frozen=True)
class CellsBenchOptions:
    """What `run_cells_bench` measures (`chan bench cells --help`)."""

    images: int = 9000  # synthetic images whose valid regions are the vectors
    cells: int = 4096
    dim: int = 1024
    regions: int = 36
    concepts: int = 2048
    iterations: int = CELL_ITERATIONS
    threads: int = 2  # a build uses every core
    seed: int = 0


def run_cells_bench(args: CellsBenchOptions) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    world = World(SearchBenchOptions(images=args.images, regions=args.regions, dim=args.dim,
                                     concepts=args.concepts, seed=args.seed))  # fmt: skip
    block = world.images(0, args.images)
    vectors = np.concatenate([block[i, : world.counts[i]] for i in range(args.images)])
    del block
    if len(vectors) < 2 * args.cells:
        raise ValueError(f"{len(vectors)} vectors are too few for {args.cells} cells: "
                         "raise --images")  # fmt: skip
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(vectors))
    sample = vectors[np.sort(order[: min(len(vectors) // 2, CELL_TRAIN_POINTS * args.cells)])]
    held = torch.from_numpy(vectors[np.sort(order[len(vectors) // 2 :])])
    points = torch.from_numpy(vectors)
    report: dict[str, Any] = {"vectors": len(vectors), "train_vectors": len(sample),
                              "cells": args.cells, "dim": args.dim,
                              "threads": args.threads}  # fmt: skip
    trained = {}
    for name, two_level in (("exact", False), ("two_level", True)):
        started = time.perf_counter()
        centroids = train_centroids(sample, args.cells, args.iterations, seed=1,
                                    progress=False, two_level=two_level)  # fmt: skip
        train_s = time.perf_counter() - started
        _, sims = Assigner(centroids, two_level=False)(held)
        trained[name] = centroids
        report[name] = {"train_s": round(train_s, 2),
                        "held_out_similarity": round(float(sims.mean()), 4)}  # fmt: skip
    centroids = trained["exact"]  # both assignments against the same centroids
    found = {}
    for name, two_level in (("exact", False), ("two_level", True)):
        assign = Assigner(centroids, two_level=two_level)
        started = time.perf_counter()
        found[name] = assign(points)
        report[name]["assign_s"] = round(time.perf_counter() - started, 2)
    (cells, sims), (ref_cells, ref_sims) = found["two_level"], found["exact"]
    missed = cells != ref_cells
    report["two_level"]["same_cell"] = round(1 - float(missed.float().mean()), 5)
    report["two_level"]["loss_per_miss"] = (
        round(float((ref_sims - sims)[missed].mean()), 4) if bool(missed.any()) else 0.0
    )
    return report


def format_report(report: dict[str, Any]) -> str:
    exact, fast = report["exact"], report["two_level"]
    return "\n".join([
        f"cells benchmark: {report['vectors']:,} vectors of d={report['dim']}, "
        f"{report['cells']:,} cells trained on {report['train_vectors']:,}, "
        f"{report['threads']} threads",
        f"  train:  exact {exact['train_s']} s, two-level {fast['train_s']} s "
        f"(x{exact['train_s'] / max(fast['train_s'], 1e-9):.1f}); held-out similarity "
        f"{exact['held_out_similarity']} vs {fast['held_out_similarity']}",
        f"  assign: exact {exact['assign_s']} s, two-level {fast['assign_s']} s "
        f"(x{exact['assign_s'] / max(fast['assign_s'], 1e-9):.1f}); same cell for "
        f"{fast['same_cell']:.3%}, {fast['loss_per_miss']} similarity lost per miss",
    ])  # fmt: skip
