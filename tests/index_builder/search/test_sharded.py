"""Sharded builds (`--shard I/N`) searched together equal one index of the whole gallery."""

import json

import pytest

from app.cli import main
from index_builder.build.build import parse_shard, shard_of
from index_builder.errors import UnknownIdError
from index_builder.format import layout as fmt
from index_builder.format.layout import shard_dirs
from index_builder.search.searcher import Searcher
from tests.index_builder.conftest import build


@pytest.fixture(scope="module")
def shards(world):
    root = world / "shards"
    for i in range(3):
        build(world, root / f"shard-{i}", shard=(i, 3))
    return root


def test_shards_partition_the_gallery(world, shards):
    full = Searcher.open(build(world, world / "full-for-shards"), world / "ckpt")
    counts = [fmt.read_manifest(d)["counts"] for d in shard_dirs(shards)]
    assert sum(c["images"] for c in counts) == full.index.num_images
    assert sum(c["captions"] for c in counts) == full.index.num_captions
    for i, directory in enumerate(shard_dirs(shards)):
        index = Searcher.open(directory, world / "ckpt").index
        ids = [r.image_id for r in index.metadata.images(range(index.num_images))]
        assert all(shard_of(image_id, 3) == i for image_id in ids)


def test_merged_results_equal_the_whole_gallery(world, shards):
    full = Searcher.open(world / "full-for-shards", world / "ckpt")
    sharded = Searcher.open(shards, world / "ckpt")
    assert len(sharded.shards) == 3 and sharded.num_images == full.num_images
    for text in ("a red circle", "two blue squares and a green star"):
        a = full.search_images(text, k=8, exhaustive=True)
        b = sharded.search_images(text, k=8, exhaustive=True)
        assert [h.image_id for h in a.hits] == [h.image_id for h in b.hits]
        assert [h.rank for h in b.hits] == list(range(1, 9))
        assert {h.shard for h in b.hits} <= {0, 1, 2}
    image_id = a.hits[0].image_id
    a = full.search_captions(image_id=image_id, k=6, exhaustive=True, explain=True)
    b = sharded.search_captions(image_id=image_id, k=6, exhaustive=True, explain=True)
    assert [h.caption_id for h in a.hits] == [h.caption_id for h in b.hits]
    assert b.hits[0].explain
    score = sharded.score("a red circle", image_id=image_id).score
    assert score == pytest.approx(full.score("a red circle", image_id=image_id).score)
    assert sharded.image_record(image_id).image_id == image_id
    with pytest.raises(UnknownIdError):
        sharded.image_record("ghost")
    assert sharded.summary()["shards"] == 3
    assert sharded.summary()["images"] == full.summary()["images"]


def test_shard_argument_and_cli(world, tmp_path, capsys):
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "a/2", "1", "-1/2"):
        with pytest.raises(ValueError, match="I/N"):
            parse_shard(bad)
    argv = ["index", "build", "--checkpoint", str(world / "ckpt"), "--features",
            str(world / "synth"), "--split", "test", "--captions",
            str(world / "synth" / "captions.jsonl"), "--caption-split", "test",
            "--out", str(tmp_path / "s1"), "--shard", "1/2", "--recall-queries", "3"]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "s1" / "manifest.json").read_text())
    assert manifest["build"]["shard"] == [1, 2]
    assert main([*argv[:-4], "--out", str(tmp_path / "s9"), "--shard", "9/2"]) == 2
    assert "I/N" in capsys.readouterr().err


def test_the_service_serves_a_folder_of_shards(world, shards):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.service import SearchService
    from app.settings import Settings

    settings = Settings(index=shards, checkpoint=world / "ckpt")
    service = SearchService(settings)
    service.load()
    with TestClient(create_app(settings, service)) as client:
        body = client.post("/v1/search/images", json={"text": "a red circle", "k": 5}).json()
        assert len(body["hits"]) == 5 and all("shard" in h for h in body["hits"])
        info = client.get("/v1/info").json()["index"]
        assert info["shards"] == 3
        image = client.get(body["hits"][0]["image_url"])
        assert image.status_code == 200
