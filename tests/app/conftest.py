"""A small served gallery: synthetic world, demo features, a tiny checkpoint, an index
with user metadata; plus a TestClient over the loaded app."""

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.service import SearchService
from app.settings import Settings
from index_builder.build.build import BuildOptions, build_index
from model.chan import create_model
from model.checkpoint import save_checkpoint
from model.features.extract import extract_split
from model.features.extractors.base import create_extractor
from model.features.images import list_images
from model.synth.world import generate_world
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


READY_TIMEOUT_S = 90
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(gallery, log: Path, env: dict, *flags: str):
    """`chan serve` on a free loopback port, ready; yields (base URL, process)."""
    port = free_port()
    command = [sys.executable, "-m", "app.cli", "serve", "--index", str(gallery / "idx"),
               "--checkpoint", str(gallery / "ckpt"), "--port", str(port), *flags]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **env}, cwd=ROOT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, process, log)
        yield base, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait_ready(base: str, process, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{base}/readyz", timeout=5) as response,
        ):
            if response.status == 200:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"server did not become ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


# request bodies shared by the refusal tests
def noise_jpeg() -> bytes:
    """A small valid JPEG of noise."""
    out = io.BytesIO()
    Image.effect_noise((64, 48), 60).convert("RGB").save(out, "JPEG")
    return out.getvalue()


def upload_part(data: bytes, kind: str = "image/jpeg") -> dict:
    """TestClient arguments of a multipart upload of `data` as `file`, with k=3."""
    return {"files": {"file": ("q", data, kind)}, "data": {"k": "3"}}


def chunked(data: bytes, size: int = 1 << 16) -> list[bytes]:
    """A body sent chunked (no Content-Length)."""
    return [data[start : start + size] for start in range(0, len(data), size)]
