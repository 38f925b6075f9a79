"""The manifest is never trusted unchecked: property-based mutations of a real manifest
(a key deleted, a value retyped, a number changed, resealed or not) end in a clean
one-line refusal or in an index equal to the original; malformed manifests of every
kind are refused by open, `verify` and the service."""

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.cli import main
from index_builder.format import layout as fmt
from index_builder.format import manifest as schema
from index_builder.format.reader import GalleryIndex
from index_builder.search.searcher import Searcher
from tests.index_builder.conftest import build

QUERY = "a red circle and a blue square"
ODD_VALUES = [None, True, 0, -1, 1.5, 10**12, "", "float64", "x" * 300, [], {}, [1], {"a": 1}]


@pytest.fixture(scope="module")
def original(world):
    index = build(world, world / "manifest-base")
    searcher = Searcher.open(index, world / "ckpt")
    hits = searcher.search_images(QUERY, k=5).hits
    return {"index": index, "manifest": fmt.read_manifest(index),
            "hits": [(h.image_id, round(h.score, 5)) for h in hits]}  # fmt: skip


def _paths(value, prefix=()):
    """Every key path into the manifest (dict keys and list positions)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield (*prefix, position)
            yield from _paths(item, (*prefix, position))


def _mutate(manifest: dict, path: tuple, action: str, odd) -> dict:
    copy = json.loads(json.dumps(manifest))
    parent = copy
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "retype":
        parent[last] = odd
    else:  # a number moved by one, doubled or negated; other values retyped
        value = parent[last]
        if isinstance(value, bool) or not isinstance(value, int | float):
            parent[last] = odd
        else:
            parent[last] = {"+1": value + 1, "-1": value - 1, "x2": value * 2, "neg": -value}[
                action
            ]
    return copy


def _outcome(world, index: Path, original) -> str:
    """'refused' (one clean line) or 'equal' (opens and answers as the original)."""
    try:
        searcher = Searcher.open(index, world / "ckpt")
    except fmt.IndexFormatError as exc:
        message = str(exc)
        assert "\n" not in message and "rebuild" in message, message
        return "refused"
    hits = searcher.search_images(QUERY, k=5).hits
    assert [(h.image_id, round(h.score, 5)) for h in hits] == original["hits"]
    return "equal"


@settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_a_mutated_manifest_is_refused_or_harmless(world, original, tmp_path_factory, data):
    manifest = original["manifest"]
    path = data.draw(st.sampled_from(sorted(_paths(manifest), key=str)), label="path")
    action = data.draw(st.sampled_from(["delete", "retype", "+1", "-1", "x2", "neg"]))
    odd = data.draw(st.sampled_from(ODD_VALUES), label="value")
    reseal = data.draw(st.booleans(), label="reseal")
    mutated = _mutate(manifest, path, action, odd)
    if reseal:  # the checksum matches: the schema and the arrays must catch it
        mutated[schema.CHECKSUM_KEY] = schema.checksum(mutated)
    index = tmp_path_factory.mktemp("mutated") / "idx"
    shutil.copytree(original["index"], index)
    (index / fmt.MANIFEST).write_text(json.dumps(mutated))
    outcome = _outcome(world, index, original)
    if not reseal and mutated != manifest:
        assert outcome == "refused"  # any edit breaks the manifest's own checksum
    shutil.rmtree(index.parent)


BROKEN = {
    "random bytes": b"\x8f\x00\xff garbage \x01",
    "a JSON array": b"[1, 2, 3]",
    "null": b"null",
    "a string": b'"manifest"',
    "empty": b"",
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("content", list(BROKEN.values()), ids=list(BROKEN))
def test_a_malformed_manifest_is_one_line_everywhere(world, original, tmp_path, capsys, content):
    index = tmp_path / "idx"
    shutil.copytree(original["index"], index)
    (index / fmt.MANIFEST).write_bytes(content)
    with pytest.raises(fmt.IndexFormatError, match="rebuild"):
        GalleryIndex(index)
    assert main(["index", "verify", str(index)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "manifest" in err and "Traceback" not in err


def _resealed(manifest: dict, change) -> dict:
    copy = json.loads(json.dumps(manifest))
    change(copy)
    copy[schema.CHECKSUM_KEY] = schema.checksum(copy)
    return copy


CASES = {  # (change to the manifest, words the refusal must hold)
    "files emptied": (lambda m: m.update(files={}), "files: does not list"),
    "files removed": (lambda m: m.pop("files"), "files: Field required"),
    "storage float64": (lambda m: m.update(storage="float64"), "storage"),
    "images off by one": (lambda m: m["counts"].update(images=m["counts"]["images"] + 1),
                          "counts.images"),
    "segments off by one": (
        lambda m: [m["counts"].update(images=m["counts"]["images"] + 1),
                   m["segments"][0].update(images=m["segments"][0]["images"] + 1)],
        "has shape"),
    "dim disagrees": (lambda m: m.update(dim=m["dim"] * 2), "dim"),
    "num_regions disagrees": (lambda m: m.update(num_regions=m["num_regions"] - 1),
                              "num_regions"),
    "no storage": (lambda m: m.pop("storage"), "storage: Field required"),
    "no checkpoint": (lambda m: m.pop("checkpoint"), "checkpoint: Field required"),
    "no segments": (lambda m: m.pop("segments"), "segments: Field required"),
    "no cells": (lambda m: m.pop("cells"), "cells: Field required"),
    "cells for a side with no files": (
        lambda m: m.update(cells={"words": {"cells": 4, "train_vectors": 8, "iterations": 1,
                                            "seconds": 0.0}}),
        "files: does not list"),
    "an unknown cell side": (
        lambda m: m.update(cells={"images": {"cells": 4, "train_vectors": 8, "iterations": 1,
                                             "seconds": 0.0}}),
        "cells.images"),
    "unknown key": (lambda m: m.update(extra=1), "extra"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_each_reported_damage_is_refused_with_its_field(world, original, tmp_path, capsys, case):
    change, words = CASES[case]
    index = tmp_path / "idx"
    shutil.copytree(original["index"], index)
    (index / fmt.MANIFEST).write_text(json.dumps(_resealed(original["manifest"], change)))
    with pytest.raises(fmt.IndexFormatError) as refused:
        GalleryIndex(index)
    assert words in str(refused.value) and "\n" not in str(refused.value)
    assert main(["index", "verify", str(index)]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and err.count("\n") == 0


def test_an_edited_manifest_fails_its_own_checksum(original, tmp_path):
    index = tmp_path / "idx"
    shutil.copytree(original["index"], index)
    manifest = json.loads((index / fmt.MANIFEST).read_text())
    manifest["build"]["seed"] = 7  # harmless by itself, but not what the writer sealed
    (index / fmt.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(fmt.IndexFormatError, match="its own checksum"):
        GalleryIndex(index)


def test_files_emptied_and_a_flipped_byte_is_refused_by_verify(original, tmp_path, capsys):
    """The reported attack: empty the files list, then damage a vector file."""
    index = tmp_path / "idx"
    shutil.copytree(original["index"], index)
    manifest = _resealed(original["manifest"], lambda m: m.update(files={}))
    (index / fmt.MANIFEST).write_text(json.dumps(manifest))
    regions = index / "seg000" / "regions.npy"
    data = bytearray(regions.read_bytes())
    data[-1] ^= 0xFF
    regions.write_bytes(bytes(data))
    assert main(["index", "verify", str(index)]) == 2
    assert "files: does not list" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["files emptied", "random bytes", "storage float64"])
def test_reload_to_a_damaged_index_is_409_and_keeps_serving(world, original, tmp_path, damage):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.service import SearchService
    from app.settings import Settings

    index = tmp_path / "idx"
    shutil.copytree(original["index"], index)
    if damage in CASES:
        manifest = _resealed(original["manifest"], CASES[damage][0])
        (index / fmt.MANIFEST).write_text(json.dumps(manifest))
    else:
        (index / fmt.MANIFEST).write_bytes(BROKEN[damage])
    settings = Settings(index=original["index"], checkpoint=world / "ckpt", api_key="k")
    service = SearchService(settings)
    service.load()
    with TestClient(create_app(settings, service)) as client:
        response = client.post("/v1/admin/reload", json={"index": str(index)},
                               headers={"X-API-Key": "k"})  # fmt: skip
        assert response.status_code == 409, response.text
        message = response.json()["error"]["message"]
        assert message.startswith("still serving the previous index:") and "\n" not in message
        assert "manifest" in message
        search = client.post("/v1/search/images", json={"text": QUERY}, headers={"X-API-Key": "k"})
        assert search.status_code == 200
