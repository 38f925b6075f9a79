"""Index build -> open -> search, end to end on a small synthetic world, with the
refusals a damaged or foreign index must meet."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli import main
from index_builder.build.build import BuildOptions, build_index
from index_builder.errors import UnknownIdError
from index_builder.format import layout as fmt
from index_builder.format.reader import GalleryIndex
from index_builder.search.searcher import Searcher
from model.checkpoint import checkpoint_hash
from tests.index_builder.conftest import build, ranked, split_gallery


@pytest.fixture(scope="module")
def index_dir(world):
    return build(world, world / "idx")


@pytest.fixture(scope="module")
def searcher(world, index_dir):
    return Searcher.open(index_dir, world / "ckpt")


def test_manifest_describes_the_index(world, index_dir):
    manifest = fmt.read_manifest(index_dir)
    assert manifest["counts"]["images"] == 14 and manifest["counts"]["captions"] == 70
    assert manifest["checkpoint"]["sha256"] == checkpoint_hash(world / "ckpt")
    assert manifest["extractor"]["name"] == "demo"
    # a small gallery: every image and caption is scored exactly, so there are no cells
    assert manifest["cells"] == {} and manifest["format_version"] == 2
    assert not any(name.endswith((".faiss", "_pooled.npy")) for name in manifest["files"])
    assert manifest["recall"]["text_to_image"]["queries"] == 10
    assert all(len(entry["sha256"]) == 64 for entry in manifest["files"].values())
    assert not (world / "idx.partial").exists()


def test_small_galleries_are_scored_exactly(searcher):
    for text in ["a red circle and a blue square", "two black stars", "a small green cross"]:
        fast = searcher.search_images(text, k=5, candidates=14)
        exact = searcher.search_images(text, k=5, exhaustive=True)
        assert [h.image_id for h in fast.hits] == [h.image_id for h in exact.hits]
        np.testing.assert_allclose([h.score for h in fast.hits],
                                   [h.score for h in exact.hits], rtol=1e-5)  # fmt: skip
        assert exact.exhaustive and fast.exhaustive  # no cells: the exact scan decides


def test_text_search_scores_equal_the_model_on_stored_vectors(world, searcher):
    """The ranked scores are the exact CHAN scores of the stored (fp16) embeddings."""
    result = searcher.search_images("a purple diamond above a yellow star", k=3, explain=True)
    words, _ = searcher.encoder.text("a purple diamond above a yellow star")
    for hit in result.hits:
        row = searcher.index.metadata.image_rows([hit.image_id])[0]
        regions, counts = searcher.index.images(np.array([row]))
        from model.scoring import score_text_query

        want = score_text_query(words, regions, counts, searcher.matching)[0]
        assert hit.score == pytest.approx(float(want), rel=1e-5)
        assert [e.token for e in hit.explain][:3] == ["<start>", "a", "purple"]
        assert all(0 <= v <= 1 for e in hit.explain for v in e.box)


def test_caption_search_from_id_features_and_image_agree(world, searcher):
    by_id = searcher.search_captions(image_id="img000081", k=5, explain=True)
    features = np.load(world / "synth" / "test_ims.npy")
    ids = (world / "synth" / "test_ids.txt").read_text().split()
    row = ids.index("img000081")
    counts = np.load(world / "synth" / "test_counts.npy")
    by_features = searcher.search_captions(features=features[row], count=int(counts[row]), k=5)
    image = Image.open(world / "synth" / "images" / "img000081.png").convert("RGB")
    by_image = searcher.search_captions(image=image, k=5)
    top = [h.caption_id for h in by_id.hits]
    assert [h.caption_id for h in by_features.hits] == top
    assert [h.caption_id for h in by_image.hits] == top
    assert by_id.hits[0].explain[0].box is not None
    with pytest.raises(UnknownIdError, match="not in the index"):
        searcher.search_captions(image_id="nope")
    with pytest.raises(ValueError, match="exactly one"):
        searcher.search_captions(image_id="img000081", features=features[row])


def test_refusals(world, index_dir, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(index_dir, damaged)
    regions = damaged / "seg000" / "regions.npy"
    data = bytearray(regions.read_bytes())
    data[-1] ^= 0xFF
    regions.write_bytes(bytes(data))
    with pytest.raises(fmt.IndexFormatError, match="sha256"):
        GalleryIndex(damaged)
    regions.write_bytes(bytes(data[:-10]))
    with pytest.raises(fmt.IndexFormatError, match="truncated"):
        GalleryIndex(damaged)
    with pytest.raises(fmt.IndexFormatError, match="version 99"):
        GalleryIndex(copy_with_version(index_dir, tmp_path / "v99", 99))
    with pytest.raises(fmt.IndexFormatError, match="not by the loaded one"):
        Searcher.open(index_dir, world / "other")


def test_delete_is_honoured_and_verify_passes(world, index_dir, tmp_path, capsys):
    copy = tmp_path / "idx"
    shutil.copytree(index_dir, copy)
    searcher = Searcher.open(copy, world / "ckpt")
    top = searcher.search_images("a red circle", k=1).hits[0].image_id
    assert main(["index", "delete", str(copy), "--image", top]) == 0
    searcher = Searcher.open(copy, world / "ckpt")
    assert top not in [h.image_id for h in searcher.search_images("a red circle", k=13).hits]
    assert main(["index", "verify", str(copy), "--checkpoint", str(world / "ckpt")]) == 0
    assert "verified" in capsys.readouterr().out
    assert main(["index", "delete", str(copy), "--image", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_interrupted_build_leaves_nothing_in_place_and_resumes(world, tmp_path, monkeypatch):
    from index_builder.build import writer as writer_module

    encoded = {"n": 0}
    module_call = torch.nn.Module.__call__

    def counting(self, *args, **kwargs):
        if type(self).__name__ == "RegionEncoder":
            encoded["n"] += 1
        return module_call(self, *args, **kwargs)

    def interrupt(self, start, words):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.nn.Module, "__call__", counting)
    original = writer_module.IndexWriter.write_captions
    monkeypatch.setattr(writer_module.IndexWriter, "write_captions", interrupt)
    with pytest.raises(KeyboardInterrupt):
        build(world, tmp_path / "idx")
    assert not (tmp_path / "idx").exists() and (tmp_path / "idx.partial").exists()
    assert encoded["n"] >= 1  # the images were encoded before the interruption
    monkeypatch.setattr(writer_module.IndexWriter, "write_captions", original)
    encoded["n"] = 0
    build(world, tmp_path / "idx")
    assert (tmp_path / "idx" / fmt.MANIFEST).exists() and not (tmp_path / "idx.partial").exists()
    assert encoded["n"] == 0  # resumed after the images: none encoded again
    assert GalleryIndex(tmp_path / "idx").num_images == 14


def test_int8_and_forced_cells(world, tmp_path, index_dir):
    out = build(world, tmp_path / "cells", storage="int8", region_cells=8, word_cells=8)
    manifest = fmt.read_manifest(out)
    assert manifest["cells"]["regions"]["cells"] == 8 and manifest["cells"]["words"]["cells"] == 8
    for name in ("region_centroids.npy", "word_centroids.npy", "seg000/region_codes.npy",
                 "seg000/word_codes.npy"):  # fmt: skip
        assert name in manifest["files"] and (out / name).is_file()
    assert np.load(out / "region_centroids.npy").shape == (8, manifest["dim"])
    searcher = Searcher.open(out, world / "ckpt")
    fp16 = Searcher.open(index_dir, world / "ckpt")
    # the cell path with C covering everything equals the exact scan
    query = searcher.search_captions(image_id="img000081", k=5, candidates=70)
    exact = searcher.search_captions(image_id="img000081", k=5, exhaustive=True)
    assert [h.image_id for h in query.hits] == [h.image_id for h in exact.hits]
    assert not query.exhaustive
    fast = searcher.search_images("a red circle and a blue square", k=5, candidates=14)
    slow = searcher.search_images("a red circle and a blue square", k=5, exhaustive=True)
    assert [h.image_id for h in fast.hits] == [h.image_id for h in slow.hits]
    assert not fast.exhaustive and fast.candidates == 14
    a = searcher.search_images("a blue square", k=5, exhaustive=True).hits
    b = fp16.search_images("a blue square", k=5, exhaustive=True).hits
    assert abs(a[0].score - b[0].score) < 0.05  # int8 costs little precision


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "x"}', "non-empty"),
        ('{"id": "x", "text": "a red circle", "image_id": "ghost"}', "not in the gallery"),
        ("not json", "not JSON"),
    ],
)
def test_bad_caption_lines_are_one_line_errors(world, tmp_path, capsys, line, message):
    captions = tmp_path / "caps.jsonl"
    captions.write_text('{"id": "ok", "text": "a red circle"}\n' + line + "\n")
    argv = ["index", "build", "--checkpoint", str(world / "ckpt"), "--features",
            str(world / "synth"), "--split", "test", "--captions", str(captions),
            "--out", str(tmp_path / "idx")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "caps.jsonl:2" in err and len(err.splitlines()) == 1


def test_delete_compact_add_match_fresh_builds(world, index_dir, tmp_path, capsys):
    _, last = split_gallery(world, tmp_path)
    fresh = build_index(world / "ckpt", tmp_path / "fresh", tmp_path / "first.jsonl",
                        features=tmp_path / "first", split="test",
                        options=BuildOptions(recall_queries=5), progress=False)  # fmt: skip
    edited = tmp_path / "edited"
    shutil.copytree(index_dir, edited)
    args = ["index", "delete", str(edited)] + [f"--image={i}" for i in last]
    lines = (tmp_path / "last.jsonl").read_text().splitlines()
    args += [f"--caption={json.loads(line)['caption_id']}" for line in lines]
    assert main(args) == 0
    assert main(["index", "compact", str(edited)]) == 0
    assert "removed 4 images and 20 captions" in capsys.readouterr().out
    a, b = Searcher.open(fresh, world / "ckpt"), Searcher.open(edited, world / "ckpt")
    assert a.index.num_images == b.index.num_images == 10
    for text in ["a red circle", "two blue squares and a star"]:
        assert ranked(a, text) == ranked(b, text)
    assert main(["index", "add", str(edited), "--checkpoint", str(world / "ckpt"),
                 "--features", str(tmp_path / "last"), "--split", "test",
                 "--captions", str(tmp_path / "last.jsonl")]) == 0  # fmt: skip
    full, grown = Searcher.open(index_dir, world / "ckpt"), Searcher.open(edited, world / "ckpt")
    for text in ["a red circle", "two blue squares and a star"]:
        assert ranked(full, text) == ranked(grown, text)
    assert main(["index", "verify", str(edited)]) == 0
    assert main(["index", "add", str(edited), "--checkpoint", str(world / "ckpt"),
                 "--features", str(tmp_path / "last"), "--split", "test"]) == 2  # fmt: skip
    assert "already in the index" in capsys.readouterr().err


def test_bench_search_on_a_built_index_and_on_synthetic_vectors(world, index_dir, capsys):
    argv = ["bench", "search", "--index", str(index_dir), "--checkpoint", str(world / "ckpt"),
            "--queries", "3", "--json"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    figures = report["storage"]["float16"]
    assert figures["text_to_image"]["recall_at_10"] == 1.0  # Flat regions: exact neighbours
    assert figures["image_to_text"]["p50_ms"] > 0
    argv = ["bench", "search", "--images", "300", "--regions", "8", "--dim", "32",
            "--queries", "3", "--storage", "int8", "--json"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    int8 = report["storage"]["int8"]
    assert int8["disk_bytes_per_image"] > 0 and 0 <= int8["image_to_text"]["recall_at_10"] <= 1


def test_row_gathers_in_any_order_equal_single_reads(world, index_dir):
    index = GalleryIndex(index_dir, cache_bytes=0)  # the memory-map path, no RAM copy
    rows = np.array([7, 2, 11, 2, 0])
    regions, counts = index.images(rows)
    for i, row in enumerate(rows):
        single, count = index.images(np.array([row]))
        np.testing.assert_array_equal(regions[i].numpy(), single[0].numpy())
        assert counts[i] == count[0]
    filled = index.filled_images(rows).numpy()
    for i in range(len(rows)):
        n = int(counts[i])
        np.testing.assert_array_equal(filled[i, :n], regions[i, :n].numpy())
        assert (filled[i, n:] == regions[i, 0].numpy()).all()
    words = index.captions(np.array([5, 1, 5]))
    assert words.lengths.tolist() == [
        int(index.word_offsets[r + 1] - index.word_offsets[r]) for r in (5, 1, 5)
    ]


@pytest.mark.parametrize("storage", ["float16", "int8"])
def test_disk_and_ram_paths_score_identically(world, index_dir, tmp_path, monkeypatch, storage):
    """The exact scorer reads stored rows from the memory map and widens them block by
    block into a small reused buffer when the index is not held in RAM; both paths give
    the same rows and scores (small steps, so that chunks and blocks repeat and end
    ragged)."""
    from index_builder.search import vectors as shortlist
    from index_builder.search.vectors import VectorSearcher

    monkeypatch.setattr(shortlist, "RERANK_CHUNK_IMAGES", 4)
    monkeypatch.setattr(shortlist, "RERANK_CHUNK_CAPTIONS", 8)
    monkeypatch.setattr(shortlist, "PRODUCT_BLOCK_VECTORS", 5)  # a ragged last block
    if storage == "int8":
        index_dir = build(world, tmp_path / "int8", storage="int8")

    ram = VectorSearcher(GalleryIndex(index_dir))
    disk = VectorSearcher(GalleryIndex(index_dir, cache_bytes=0))
    assert ram.index.has_filled_cache and not disk.index.has_filled_cache
    words = torch.nn.functional.normalize(torch.randn(7, ram.index.dim), dim=1)
    for exhaustive in (True, False):
        a = ram.images_for_words(words, k=9, exhaustive=exhaustive)
        b = disk.images_for_words(words, k=9, exhaustive=exhaustive)
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    _same_caption_results(ram, disk, row=3, rtol=1e-6)


def _same_caption_results(ram, disk, row: int, rtol: float) -> None:
    """Stored image `row` as a query: both searchers give the same captions and scores."""
    regions, counts = ram.index.images(np.array([row]))
    query = regions[0, : int(counts[0])]
    a = ram.captions_for_regions(query, k=20, exhaustive=True)
    b = disk.captions_for_regions(query, k=20, exhaustive=True)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_allclose(a.scores, b.scores, rtol=rtol)


def test_soft_coding_disk_and_ram_paths_score_identically(index_dir, monkeypatch):
    """A checkpoint with soft coding takes the general scorer in both directions: from
    the RAM copy and from the memory map it gives the same rows and scores."""
    from index_builder.search import vectors as shortlist
    from index_builder.search.vectors import VectorSearcher
    from model.scoring import Matching

    monkeypatch.setattr(shortlist, "RERANK_CHUNK_IMAGES", 4)
    monkeypatch.setattr(shortlist, "RERANK_CHUNK_CAPTIONS", 8)
    ram = VectorSearcher(GalleryIndex(index_dir))
    disk = VectorSearcher(GalleryIndex(index_dir, cache_bytes=0))
    for searcher in (ram, disk):
        searcher.matching = Matching(coding="soft", pooling="lse", pooling_temperature=0.1)
    words = torch.nn.functional.normalize(torch.randn(5, ram.index.dim), dim=1)
    a = ram.images_for_words(words, k=9, exhaustive=True)
    b = disk.images_for_words(words, k=9, exhaustive=True)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    hard = VectorSearcher(GalleryIndex(index_dir)).images_for_words(words, k=9, exhaustive=True)
    assert not np.allclose(hard.scores, a.scores)  # the soft scorer did run
    _same_caption_results(ram, disk, row=2, rtol=1e-5)


def copy_with_version(index_dir, out, version: int):
    """A copy of the index whose manifest claims another format version."""
    shutil.copytree(index_dir, out)
    manifest = json.loads((out / fmt.MANIFEST).read_text())
    manifest["format_version"] = version
    (out / fmt.MANIFEST).write_text(json.dumps(manifest))
    return out


def test_a_version_1_index_is_refused_with_the_fix(world, index_dir, tmp_path, capsys):
    """Version 1 held pooled FAISS indexes nothing searched; this code reads version 2."""
    old = copy_with_version(index_dir, tmp_path / "v1", 1)
    with pytest.raises(fmt.IndexFormatError, match="version 1; this code reads version 2"):
        GalleryIndex(old)
    assert main(["index", "verify", str(old)]) == 2
    err = capsys.readouterr().err
    assert "rebuild the index" in err and err.count("\n") == 1


@pytest.mark.parametrize("damage", ["centroid shape", "codes out of range"])
def test_damaged_cells_are_refused(world, tmp_path, damage):
    out = build(world, tmp_path / "cells", region_cells=8, word_cells=8)
    if damage == "centroid shape":
        dim = fmt.read_manifest(out)["dim"]
        np.save(out / "word_centroids.npy", np.zeros((16, dim // 2), np.float32))  # same bytes
        match = re.escape(f"word_centroids.npy holds float32 (16, {dim // 2})")
    else:
        codes = np.load(out / "seg000" / "region_codes.npy")
        codes[0] = 8
        np.save(out / "seg000" / "region_codes.npy", codes)
        match = "regions codes outside 0..7"
    with pytest.raises(fmt.IndexFormatError, match=match):
        GalleryIndex(out, checksums=False)  # the shape and range checks, not the sha256
