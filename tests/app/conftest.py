"""A small served gallery: synthetic world, demo features, a tiny checkpoint, an index
with user metadata; plus a TestClient over the loaded app."""

import json

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.service import SearchService
from app.settings import Settings
from index_builder.build import BuildOptions, build_index
from model.chan import create_model
from model.checkpoint import save_checkpoint
from model.extract import extract_split
from model.extractors.base import create_extractor
from model.images import list_images
from model.synth import generate_world
from model.vocab import Vocabulary


@pytest.fixture(scope="session")
def gallery(tmp_path_factory):
    """Index directory + checkpoint of the test split of a 90-image world (5 captions each)."""
    root = tmp_path_factory.mktemp("served")
    synth = root / "synth"
    generate_world(synth, 90, seed=2, progress=False)
    extractor = create_extractor("demo")
    extract_split(list_images(synth / "test_images.txt"), extractor, synth, "test",
                  progress=False)  # fmt: skip
    captions = [json.loads(line)["text"] for line in (synth / "captions.jsonl").open()]
    vocab = Vocabulary.build(captions, threshold=1)
    torch.manual_seed(0)
    model = create_model("tiny", img_dim=256, vocab_size=len(vocab)).eval()
    save_checkpoint(model, root / "ckpt", vocab=vocab, extractor=extractor.spec.to_dict())
    ids = (synth / "test_ids.txt").read_text().split()
    meta = root / "meta.jsonl"
    meta.write_text("".join(json.dumps({"image_id": i, "metadata": {"half": n % 2}}) + "\n"
                            for n, i in enumerate(ids)))  # fmt: skip
    build_index(
        root / "ckpt", root / "idx", synth / "captions.jsonl", features=synth, split="test",
        images=synth / "test_images.txt", caption_split="test", image_metadata=meta,
        options=BuildOptions(recall_queries=5), progress=False,
    )  # fmt: skip
    return root


def make_client(gallery, **overrides) -> TestClient:
    settings = Settings(index=gallery / "idx", checkpoint=gallery / "ckpt", **overrides)
    service = SearchService(settings)
    service.load()
    return TestClient(create_app(settings, service))


@pytest.fixture(scope="session")
def client(gallery):
    with make_client(gallery) as test_client:
        yield test_client
