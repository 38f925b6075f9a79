"""Segments: `add` writes one new segment against the existing cells, a new generation
is picked up by a running searcher (only the changed files read again), `compact`
merges segments and retrains drifted cells, `verify` checks the stored cells."""

import json
import shutil
import threading
import time

import numpy as np
import pytest
import torch

from app.cli import main
from index_builder.build import edit
from index_builder.build.edit import add_items, compact_index, delete_items
from index_builder.build.verify import verify_index
from index_builder.format import layout as fmt
from index_builder.format.manifest import drift
from index_builder.format.reader import GalleryIndex
from index_builder.search.live import GenerationWatch
from index_builder.search.searcher import Searcher
from tests.index_builder.conftest import build, ranked, split_gallery


@pytest.fixture(scope="module")
def parts(world, tmp_path_factory):
    """An index with cells of the first 10 images (and their captions), and the last 4
    images with their captions as features + JSONL to add."""
    root = tmp_path_factory.mktemp("segments")
    _, last = split_gallery(world, root)
    from index_builder.build.build import BuildOptions, build_index

    base = build_index(
        world / "ckpt", root / "base", root / "first.jsonl", features=root / "first",
        split="test", options=BuildOptions(recall_queries=5, region_cells=8, word_cells=8,
                                           residual_codes=True),
        progress=False,
    )  # fmt: skip
    return {"root": root, "base": base, "last": root / "last", "last_ids": last,
            "last_captions": root / "last.jsonl"}  # fmt: skip


def _grown(world, parts, tmp_path):
    index = tmp_path / "idx"
    shutil.copytree(parts["base"], index)
    added = add_items(index, world / "ckpt", captions=parts["last_captions"],
                      features=parts["last"], split="test", progress=False)  # fmt: skip
    return index, added


def test_add_writes_one_segment_against_the_existing_cells(world, parts, tmp_path):
    before = fmt.read_manifest(parts["base"])
    index, added = _grown(world, parts, tmp_path)
    manifest = fmt.read_manifest(index)
    assert added["segment"] == "seg001" and added["images"] == 4 and added["captions"] == 20
    assert manifest["generation"] == before["generation"] + 1 == added["generation"]
    assert [s["name"] for s in manifest["segments"]] == ["seg000", "seg001"]
    assert manifest["counts"]["images"] == 14 and manifest["counts"]["captions"] == 70
    # the cells and the old segment are the same files, not rewritten
    for name in ("region_centroids.npy", "word_centroids.npy", "seg000/regions.npy",
                 "seg000/region_codes.npy"):  # fmt: skip
        assert manifest["files"][name] == before["files"][name]
    assert manifest["cells"] == before["cells"]
    assert set(manifest["segments"][1]["similarity"]) == {"regions", "words"}
    assert set(added["drift"]) == {"regions", "words"}
    verify_index(index)
    # every new vector went to its nearest existing centroid
    opened = GalleryIndex(index)
    new_words = np.arange(int(opened.word_offsets[50]), int(opened.word_offsets[-1]))
    sims = opened.word_vectors(new_words) @ opened.word_centroids.T
    np.testing.assert_array_equal(opened.word_codes[new_words], sims.argmax(axis=1))
    opened.close()


def test_an_added_segment_searches_like_a_fresh_build(world, parts, tmp_path):
    index, _ = _grown(world, parts, tmp_path)
    fresh = build(world, tmp_path / "fresh", region_cells=8, word_cells=8)
    a, b = Searcher.open(fresh, world / "ckpt"), Searcher.open(index, world / "ckpt")
    for text in ["a red circle", "two blue squares and a star"]:
        assert ranked(a, text) == ranked(b, text)
        got = b.search_images(text, k=5, candidates=14)
        assert not got.exhaustive  # through the cells, the new segment's lists included
        exact = b.search_images(text, k=5, exhaustive=True)
        assert [h.image_id for h in got.hits] == [h.image_id for h in exact.hits]
    new = parts["last_ids"][0]
    got = b.search_captions(image_id=new, k=5, candidates=70)
    exact = b.search_captions(image_id=new, k=5, exhaustive=True)
    assert not got.exhaustive
    assert [h.caption_id for h in got.hits] == [h.caption_id for h in exact.hits]


def test_a_captions_only_add_is_a_segment_without_images(world, parts, tmp_path):
    index = tmp_path / "idx"
    shutil.copytree(parts["base"], index)
    path = tmp_path / "more.jsonl"
    path.write_text("".join(json.dumps({"id": f"extra{n}", "text": f"a blue star {n}"}) + "\n"
                            for n in range(3)))  # fmt: skip
    added = add_items(index, world / "ckpt", captions=path, progress=False)
    assert added["images"] == 0 and added["captions"] == 3
    searcher = Searcher.open(index, world / "ckpt")
    assert searcher.index.num_captions == 53 and searcher.index.num_images == 10
    ids = [
        h.caption_id
        for h in searcher.search_captions(
            image_id=searcher.index.metadata.images([0])[0].image_id, k=53, candidates=53
        ).hits
    ]
    assert {"extra0", "extra1", "extra2"} <= set(ids)
    verify_index(index)


def test_compact_merges_segments_keeps_cells_and_equals_a_fresh_build(world, parts, tmp_path,
                                                                     capsys):  # fmt: skip
    index, _ = _grown(world, parts, tmp_path)
    delete_items(index, [parts["last_ids"][0]], [])
    grown = fmt.read_manifest(index)
    assert main(["index", "compact", str(index)]) == 0
    out = capsys.readouterr().out
    assert "removed 1 images" in out and "merged 2 segment(s)" in out
    manifest = fmt.read_manifest(index)
    assert [s["name"] for s in manifest["segments"]] == ["seg000"]
    assert manifest["generation"] == grown["generation"] + 1
    assert manifest["counts"]["images"] == 13
    drifted = drift(grown)
    if all(value <= 1.15 for value in drifted.values()):  # low drift: the cells carry over
        assert "cells retrained: none" in out
        assert manifest["files"]["region_centroids.npy"] == grown["files"]["region_centroids.npy"]
    verify_index(index)
    a = Searcher.open(index, world / "ckpt")
    for text in ["a red circle", "two blue squares and a star"]:
        assert all(h.image_id != parts["last_ids"][0] for h in a.search_images(text, k=13).hits)


def _manifest(similarity: float, added: list[tuple[float, int]]) -> dict:
    segments = [{"name": "seg000", "images": 100, "captions": 500}]
    segments += [
        {"name": f"seg{n + 1:03d}", "images": count, "captions": 0, "similarity": {"regions": sim}}
        for n, (sim, count) in enumerate(added)
    ]
    return {"cells": {"regions": {"similarity": similarity, "retrain_drift": 1.15}},
            "segments": segments}  # fmt: skip


def test_drift_is_the_added_vectors_error_over_the_training_error():
    assert drift(_manifest(0.8, [])) == {"regions": 1.0}
    # errors 0.2 at training; added 0.3 (x10 images) and 0.2 (x30): mean 0.225
    assert drift(_manifest(0.8, [(0.7, 10), (0.8, 30)])) == {"regions": pytest.approx(1.125)}
    assert drift(_manifest(0.8, [(0.6, 10)]))["regions"] == pytest.approx(2.0)


def test_compact_retrains_drifted_cells(world, parts, tmp_path, monkeypatch, capsys):
    index, _ = _grown(world, parts, tmp_path)
    before = fmt.read_manifest(index)
    monkeypatch.setattr(edit, "drift", lambda manifest: {"regions": 3.0, "words": 1.0})
    report = compact_index(index, recall_queries=5)
    assert report["retrained"] == ["regions"]
    manifest = fmt.read_manifest(index)
    assert manifest["cells"]["regions"]["cells"] == manifest["cells"]["words"]["cells"] == 8
    assert manifest["files"]["region_centroids.npy"] != before["files"]["region_centroids.npy"]
    assert manifest["files"]["word_centroids.npy"] == before["files"]["word_centroids.npy"]
    verify_index(index)


def test_a_searcher_after_an_add_extends_the_lists_it_had(world, parts, tmp_path, monkeypatch):
    """Opening the next generation extends the previous searcher's inverted lists by the
    added rows (no sort over every vector) and gets the lists a fresh open builds; after
    a compaction that dropped an image the region rows moved, so those are built afresh."""
    from index_builder.search import lists
    from index_builder.search.vectors import VectorSearcher

    path = tmp_path / "idx"
    shutil.copytree(parts["base"], path)
    before = VectorSearcher(GalleryIndex(path))
    add_items(path, world / "ckpt", captions=parts["last_captions"], features=parts["last"],
              split="test", progress=False)  # fmt: skip
    extended = []
    real = lists.InvertedLists.extended
    monkeypatch.setattr(
        lists.InvertedLists,
        "extended",
        lambda self, newer: extended.append(len(newer.items)) or real(self, newer),
    )
    after = VectorSearcher(GalleryIndex(path), previous=before)
    fresh = VectorSearcher(GalleryIndex(path))
    assert len(extended) == 2 and all(extended)  # both sides, each with new postings
    for side in ("region_lists", "word_lists"):
        np.testing.assert_array_equal(getattr(after, side).starts, getattr(fresh, side).starts)
        np.testing.assert_array_equal(getattr(after, side).items, getattr(fresh, side).items)
    delete_items(path, [parts["last_ids"][0]], [])
    compact_index(path, recall_queries=0)
    extended.clear()
    compacted = VectorSearcher(GalleryIndex(path), previous=after)
    assert extended == [0]  # images moved: region lists rebuilt; captions kept: nothing new
    rebuilt = VectorSearcher(GalleryIndex(path))
    for side in ("region_lists", "word_lists"):
        np.testing.assert_array_equal(getattr(compacted, side).items, getattr(rebuilt, side).items)


def test_a_reload_reads_only_the_new_segment_again(world, parts, tmp_path, monkeypatch):
    index, _ = _grown(world, parts, tmp_path)
    old = GalleryIndex(index)
    add = tmp_path / "one.jsonl"
    add.write_text(json.dumps({"id": "late", "text": "a green cross"}) + "\n")
    add_items(index, world / "ckpt", captions=add, progress=False)
    hashed = []
    real = fmt.sha256_file
    monkeypatch.setattr(fmt, "sha256_file", lambda path: hashed.append(path) or real(path))
    new = GalleryIndex(index, previous=old)
    assert new.generation == old.generation + 1 and new.num_captions == old.num_captions + 1
    names = sorted(str(p.relative_to(index)) for p in hashed)
    assert names and all(n.startswith("seg002/") or n == fmt.METADATA for n in names), names


def test_verify_finds_a_vector_filed_in_the_wrong_cell(world, parts, tmp_path):
    index = tmp_path / "idx"
    shutil.copytree(parts["base"], index)
    codes = np.load(index / "seg000" / "word_codes.npy")
    centroids = np.load(index / "word_centroids.npy")
    opened = GalleryIndex(index)
    sims = opened.word_vectors(np.arange(len(codes))) @ centroids.T
    opened.close()
    worst = sims.argmin(axis=1)
    codes[:] = worst
    _replace_listed(index, "seg000/word_codes.npy", codes)
    with pytest.raises(fmt.IndexFormatError, match="not its nearest one"):
        verify_index(index)


def _replace_listed(index, name, array):
    """Overwrite one array of the index and list its new size and sha256, as a writer
    with a bug would: every checksum passes, only the contents are wrong."""
    np.save(index / name, array)
    manifest = fmt.read_manifest(index)
    manifest["files"].update(fmt.file_entries(index, [name]))
    fmt.write_manifest(index, manifest)


def test_verify_finds_residual_codes_that_do_not_encode_the_vectors(world, parts, tmp_path):
    index = tmp_path / "idx"
    shutil.copytree(parts["base"], index)
    assert "regions: residual codes of" in " ".join(verify_index(index))
    codes = np.load(index / "seg000" / "region_residuals.npy")
    off = (codes.astype(np.int64) + 1).astype(np.uint8)  # every byte one off
    _replace_listed(index, "seg000/region_residuals.npy", off)
    with pytest.raises(fmt.IndexFormatError, match="residual codes of the sampled vectors"):
        verify_index(index)


@pytest.mark.parametrize("storage", ["float16", "int8"])
def test_stored_rows_are_gathered_across_segments_in_the_asked_order(world, parts, tmp_path,
                                                                      storage):  # fmt: skip
    """The rerank's gathers (rows as stored, int8 scales apart) equal the dequantising
    reads, for rows of both segments in any order, and for runs of one segment."""
    from index_builder.build.build import BuildOptions, build_index
    from index_builder.format.quant import dequantize

    path = tmp_path / "idx"
    root = parts["root"]
    build_index(world / "ckpt", path, root / "first.jsonl", features=root / "first",
                split="test", options=BuildOptions(recall_queries=2, region_cells=8,
                                                   word_cells=8, storage=storage),
                progress=False)  # fmt: skip
    add_items(path, world / "ckpt", captions=parts["last_captions"], features=parts["last"],
              split="test", progress=False)  # fmt: skip
    index = GalleryIndex(path, cache_bytes=0)
    assert len(index.segments) == 2
    for rows in ([12, 3, 10, 0, 13, 4], [2, 3, 4], [1, 5, 9], [11, 13]):
        codes, scales = index.stored_images(np.array(rows))
        assert codes.dtype == np.dtype(storage) and (scales is None) == (storage != "int8")
        # one row at a time: each read is a one-row slice of its own segment
        expected = np.concatenate([index.images(np.array([r]))[0].numpy() for r in rows])
        np.testing.assert_array_equal(dequantize(codes, scales), expected)
    last = int(index.word_offsets[-1]) - 1
    for positions in ([last, 0, 5, 4], [0, 1, 2], [last - 1, last]):
        codes, scales = index.stored_words(np.array(positions))
        expected = np.concatenate([index.word_vectors(np.array([p])) for p in positions])
        np.testing.assert_array_equal(dequantize(codes, scales), expected)


def test_add_encodes_the_new_residuals_with_the_existing_codebook(world, parts, tmp_path):
    from index_builder.build.residuals import encode_residuals

    before = fmt.read_manifest(parts["base"])
    index, _ = _grown(world, parts, tmp_path)
    manifest = fmt.read_manifest(index)
    for name in ("region_codebook.npy", "word_codebook.npy", "seg000/word_residuals.npy"):
        assert manifest["files"][name] == before["files"][name]
    opened = GalleryIndex(index)
    codebook, codes = opened.word_residuals
    new = np.arange(int(opened.word_offsets[50]), int(opened.word_offsets[-1]))
    fresh = encode_residuals(
        torch.from_numpy(opened.word_vectors(new)), torch.from_numpy(opened.word_centroids),
        torch.from_numpy(opened.word_codes[new].astype(np.int64)), torch.from_numpy(codebook),
    )  # fmt: skip
    assert np.mean(fresh == codes[new]) > 0.99
    opened.close()


def test_compact_keeps_the_residual_codebook_and_the_live_rows_codes(world, parts, tmp_path):
    index, _ = _grown(world, parts, tmp_path)
    grown = GalleryIndex(index)
    book, codes = grown.word_residuals
    live = np.ones(grown.num_captions, bool)
    live[3] = False  # caption 3 is deleted: its words' codes go
    kept_words = np.flatnonzero(np.repeat(live, np.diff(grown.word_offsets)))
    expected = np.array(codes[kept_words])
    caption_id = grown.metadata.captions([3])[0].caption_id
    grown.close()
    delete_items(index, [], [caption_id])
    report = compact_index(index, recall_queries=5)
    assert "words" not in report["retrained"] and report["captions"] == 1
    compacted = GalleryIndex(index)
    np.testing.assert_array_equal(compacted.word_residuals[0], book)
    np.testing.assert_array_equal(compacted.word_residuals[1], expected)
    compacted.close()
    verify_index(index)


def test_an_index_without_residual_codes_is_searched_from_the_bare_centroids(world, tmp_path):
    plain = build(world, tmp_path / "plain", region_cells=8, word_cells=8)
    assert "residual" not in fmt.read_manifest(plain)["cells"]["words"]
    opened = GalleryIndex(plain)
    assert opened.word_residuals is None and opened.region_residuals is None
    opened.close()
    coded = build(world, tmp_path / "coded", region_cells=8, word_cells=8, residual_codes=True)
    a, b = Searcher.open(plain, world / "ckpt"), Searcher.open(coded, world / "ckpt")
    assert b.shards[0].vectors.word_residuals is not None
    for text in ["a red circle", "two blue squares and a star"]:
        assert ranked(a, text) == ranked(b, text)  # C covers this small gallery


def test_a_running_searcher_picks_up_an_add_under_concurrent_searches(world, parts, tmp_path):
    """Four threads search without pause while `add` commits a segment; the watch swaps
    the new generation in and the new images are found within 5 s, no search fails."""
    index = tmp_path / "idx"
    shutil.copytree(parts["base"], index)
    holder = {"searcher": Searcher.open(index, world / "ckpt")}
    watch = GenerationWatch(lambda: holder["searcher"],
                            lambda fresh: holder.update(searcher=fresh), 0.1).start()  # fmt: skip
    errors, searches, stop = [], [0], threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                holder["searcher"].search_images("a red circle", k=14)
                searches[0] += 1
            except Exception as exc:  # any failure fails the test
                errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        add_items(index, world / "ckpt", captions=parts["last_captions"],
                  features=parts["last"], split="test", progress=False)  # fmt: skip
        finished = time.monotonic()
        new = set(parts["last_ids"])
        while time.monotonic() - finished < 5:
            found = {h.image_id for h in holder["searcher"].search_images("a red circle",
                                                                          k=14).hits}  # fmt: skip
            if new <= found:
                break
            time.sleep(0.05)
        picked_up = time.monotonic() - finished
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        watch.stop()
    assert errors == []
    assert new <= found, f"the new images were not served {picked_up:.1f} s after the add"
    assert searches[0] > 0 and holder["searcher"].index.generation == 2


@pytest.mark.slow
def test_bench_add_grows_a_searched_index_without_failures(capsys, tmp_path):
    """At small scale (both sides with cells): adds in 2 segments while 2 clients search;
    the new images are served, nothing fails, recall holds, compact equals a fresh build."""
    argv = ["bench", "add", "--images", "1800", "--add", "100", "--segments", "2",
            "--regions", "36", "--dim", "32", "--concepts", "256", "--queries", "10",
            "--compact", "--workdir", str(tmp_path), "--json"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["failed_searches"] == 0 and report["searches_during"] > 0
    assert report["pickup_s"] is not None and report["pickup_s"] < 5
    assert len(report["add_s"]) == 2
    for name in ("text_to_image", "image_to_text"):
        assert report["after"][name] >= report["before"][name] - 0.05
        assert report["after_added"][name] >= 0.9  # the added images are found as well
    assert report["compact"]["same_top10"] >= 0.9
    assert set(report["drift"]) == {"regions", "words"}  # both sides went through cells


def test_a_second_change_while_one_runs_is_refused_not_lost(world, parts, tmp_path):
    """Two changes staged from one generation would both commit and the later would drop
    the earlier's rows: while one holds the index's lock, the others are refused."""
    from index_builder.format import durable

    index = tmp_path / "idx"
    shutil.copytree(parts["base"], index)
    before = fmt.read_manifest(index)["generation"]
    with durable.exclusive(index):
        with pytest.raises(durable.Busy, match="another command is changing"):
            delete_items(index, [parts["last_ids"][0]], [])
        loose = tmp_path / "loose.jsonl"
        loose.write_text(json.dumps({"id": "loose", "text": "a red star"}) + "\n")
        with pytest.raises(durable.Busy):
            add_items(index, world / "ckpt", captions=loose, progress=False)
        with pytest.raises(durable.Busy):
            compact_index(index)
    assert fmt.read_manifest(index)["generation"] == before
    delete_items(index, [], [])  # the lock is free again
    with pytest.raises(FileNotFoundError, match="does not exist"):
        delete_items(tmp_path / "nowhere", ["x"], [])


def test_index_info_shows_cells_residual_codes_generation_and_drift(world, parts, tmp_path, capsys):
    index, _ = _grown(world, parts, tmp_path)
    assert main(["index", "info", str(index)]) == 0
    out = capsys.readouterr().out
    assert "2 segment(s), generation 2" in out
    for side in ("regions", "words"):
        line = next(line for line in out.splitlines() if line.strip().startswith(f"{side}:"))
        assert "8 k-means cells, residual codes of" in line and "B per vector" in line
        assert "drift" in line


def test_index_build_residual_codes_flag(world, tmp_path):
    out = tmp_path / "idx"
    argv = ["index", "build", "--checkpoint", str(world / "ckpt"), "--features",
            str(world / "synth"), "--split", "test", "--captions",
            str(world / "synth" / "captions.jsonl"), "--caption-split", "test",
            "--word-cells", "8", "--recall-queries", "5", "--residual-codes",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    words = fmt.read_manifest(out)["cells"]["words"]["residual"]
    assert words["codewords"] == 16 and 0 < words["error"] < 1
