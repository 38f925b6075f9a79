"""`chan demo`: the whole product on the embedded default, one command. Generates the
synthetic world, extracts demo region features, trains the demo model, builds the index
of the test split and serves the API and web page. Every step reuses what an earlier
run finished, so a second start only loads the index."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path = Path("data/demo")
    images: int = 7000  # world size: 5,000 train / 1,000 dev / 1,000 test (the gallery)
    seed: int = 0
    epochs: int = 3  # about 70 s each on 2 cores
    train_budget_s: float = 300.0  # training stops (validates, saves) after this long
    progress: bool | None = None


@dataclass(frozen=True)
class DemoPaths:
    world: Path
    run: Path
    checkpoint: Path
    index: Path

    @classmethod
    def under(cls, workdir: Path) -> DemoPaths:
        run = workdir / "run"
        return cls(workdir / "world", run, run / "best", workdir / "index")


def prepare_demo(options: DemoOptions) -> DemoPaths:
    """Every step before serving; returns where the checkpoint and the index are."""
    # absolute: the index records image paths, and the server may run from elsewhere
    paths = DemoPaths.under(options.workdir.resolve())
    started = time.perf_counter()
    _step("1/4 synthetic world", lambda: _world(paths, options))
    _step("2/4 region features", lambda: _features(paths, options))
    _step("3/4 demo model", lambda: _model(paths, options))
    _step("4/4 index of the test split", lambda: _index(paths, options))
    logger.info("demo ready in %.0f s: %s", time.perf_counter() - started, paths.index)
    return paths


def _step(name: str, run) -> None:
    started = time.perf_counter()
    logger.info("%s ...", name)
    what = run()
    logger.info("%s: %s (%.1f s)", name, what, time.perf_counter() - started)


def _world(paths: DemoPaths, options: DemoOptions) -> str:
    from model.synth.world import generate_world

    summary = generate_world(paths.world, options.images, seed=options.seed,
                             progress=options.progress)  # fmt: skip
    return f"{'reused' if summary.reused else 'wrote'} {summary.num_images} images"


def _features(paths: DemoPaths, options: DemoOptions) -> str:
    from model.features.extract import extract_split
    from model.features.extractors.base import create_extractor
    from model.features.images import list_images

    extractor = create_extractor("demo")
    done = []
    for split in SPLITS:
        entries = list_images(paths.world / f"{split}_images.txt")
        result = extract_split(entries, extractor, paths.world, split, progress=options.progress)
        done.append(f"{split} {'reused' if result.reused else 'extracted'}")
    return ", ".join(done)


def _model(paths: DemoPaths, options: DemoOptions) -> str:
    from model.training.train import TrainConfig, train

    marker = paths.run / "demo_done.json"
    if marker.exists() and (paths.checkpoint / "config.json").exists():
        return f"reused {paths.checkpoint}"
    resume = (paths.run / "train_state.pt").exists()
    config = TrainConfig(
        data=str(paths.world), out=str(paths.run), model="demo", epochs=options.epochs,
        lr_decay_epochs=(max(1, options.epochs - 1),), time_budget_s=options.train_budget_s,
        resume=resume, progress=options.progress, seed=options.seed,
    )  # fmt: skip
    if not resume and paths.run.exists():  # an earlier run stopped before its first save
        shutil.rmtree(paths.run)
    result = train(config)
    marker.write_text(json.dumps({"rsum": result.best_rsum, "seconds": result.seconds}))
    return f"trained in {result.seconds:.0f} s, dev rsum {result.best_rsum:.1f}"


def _index(paths: DemoPaths, options: DemoOptions) -> str:
    from index_builder.build.build import BuildOptions, build_index
    from index_builder.format import layout as fmt
    from model.checkpoint import checkpoint_hash

    digest = checkpoint_hash(paths.checkpoint)
    if (paths.index / fmt.MANIFEST).exists():
        if fmt.read_manifest(paths.index)["checkpoint"]["sha256"] == digest:
            return f"reused {paths.index}"
        logger.info("the model changed since the index was built: rebuilding it")
    build_index(
        paths.checkpoint, paths.index, paths.world / "captions.jsonl", features=paths.world,
        split="test", images=paths.world / "test_images.txt", caption_split="test",
        options=BuildOptions(overwrite=True), progress=options.progress,
    )  # fmt: skip
    return f"built {paths.index}"
