"""Shared fixtures of the index tests."""

import json

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
