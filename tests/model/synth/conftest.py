"""Shared pieces of the synthetic-world tests: one small world for the session."""

import json
from pathlib import Path

import pytest

from model.synth.world import generate_world

SEED, N = 3, 40
NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "world"
    generate_world(out, N, seed=SEED, progress=False)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
