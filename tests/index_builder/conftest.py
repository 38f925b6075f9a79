"""Shared fixtures of the index tests."""

import json
import shutil

import numpy as np
import pytest
import torch

from index_builder.build.build import BuildOptions, build_index
from model.chan import create_model
from model.checkpoint import save_checkpoint
from model.features.extract import extract_split
from model.features.extractors.base import create_extractor
from model.features.images import list_images
from model.synth.world import generate_world
from model.vocab import Vocabulary


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """30 synthetic images (test split), demo features, an untrained tiny checkpoint
    that records the demo extractor, and the world's captions."""
    root = tmp_path_factory.mktemp("index")
    synth = root / "synth"
    generate_world(synth, 90, seed=1, progress=False)
    entries = list_images(synth / "test_images.txt")
    extractor = create_extractor("demo")
    extract_split(entries, extractor, synth, "test", progress=False)
    captions = [json.loads(line)["text"] for line in (synth / "captions.jsonl").open()]
    vocab = Vocabulary.build(captions, threshold=1)
    torch.manual_seed(0)
    model = create_model("tiny", img_dim=256, vocab_size=len(vocab)).eval()
    save_checkpoint(model, root / "ckpt", vocab=vocab, extractor=extractor.spec.to_dict())
    other = create_model("tiny", img_dim=256, vocab_size=len(vocab)).eval()
    save_checkpoint(other, root / "other", vocab=vocab, extractor=extractor.spec.to_dict())
    return root


def build(world, out, **options):
    return build_index(
        world / "ckpt", out, world / "synth" / "captions.jsonl",
        features=world / "synth", split="test", images=world / "synth" / "test_images.txt",
        caption_split="test", options=BuildOptions(recall_queries=10, **options),
        progress=False,
    )  # fmt: skip


def write_subset(world, rows, out):
    """The test split's features restricted to `rows`, as a feature folder."""
    src = world / "synth"
    out.mkdir()
    for name in ("ims", "counts", "boxes"):
        np.save(out / f"test_{name}.npy", np.load(src / f"test_{name}.npy")[rows])
    ids = (src / "test_ids.txt").read_text().split()
    (out / "test_ids.txt").write_text("".join(f"{ids[r]}\n" for r in rows))
    shutil.copy(src / "test_extract.json", out / "test_extract.json")
    return [ids[r] for r in rows]


def ranked(searcher, text):
    hits = searcher.search_images(text, k=8, exhaustive=True).hits
    return [(h.image_id, round(h.score, 4)) for h in hits]


def split_gallery(world, root):
    """The test split as two feature folders with caption JSONL: `first` (images 0-9)
    and `last` (10-13) under root; returns their image ids."""
    captions = [json.loads(line) for line in (world / "synth" / "captions.jsonl").open()]
    test_caps = [c for c in captions if c["split"] == "test"]
    first = write_subset(world, list(range(10)), root / "first")
    last = write_subset(world, list(range(10, 14)), root / "last")
    for name, ids in (("first", first), ("last", last)):
        lines = [json.dumps(c) for c in test_caps if c["image_id"] in ids]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return first, last
