"""Cells (k-means, codes, inverted lists) and the shortlist's array helpers, each
against a direct re-computation."""

import json

import numpy as np
import pytest
import torch

from index_builder.build.cells import Assigner, nearest_cells, train_centroids, write_codes
from index_builder.search.lists import InvertedLists
from index_builder.search.vectors import _dense_ids, item_positions
from model.scoring import Matching


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _clusters(rng, centers, per, noise=0.02):
    points = np.repeat(centers, per, axis=0)
    return _unit(points + rng.normal(size=points.shape) * noise), np.repeat(
        np.arange(len(centers)), per
    )


def test_two_level_assignment_finds_the_exact_cells_of_clustered_data():
    """2,048 trained cells over clustered points: the two-level assignment gives the
    exact product's cell for nearly every point, and its similarities are the true ones."""
    rng = np.random.default_rng(1)
    centers = _unit(rng.normal(size=(512, 48)))
    points, _ = _clusters(rng, centers, 40, noise=0.05)
    centroids = train_centroids(points, 2048, iterations=3, seed=1, progress=False)
    vectors = torch.from_numpy(points)
    exact_cells, exact_sims = Assigner(centroids, two_level=False)(vectors)
    assigner = Assigner(centroids)
    assert assigner.two_level  # 2,048 cells: two levels by default
    cells, sims = assigner(vectors)
    assert (cells == exact_cells).float().mean() > 0.995
    np.testing.assert_allclose(sims, (vectors * torch.from_numpy(centroids)[cells]).sum(1),
                               atol=1e-5)  # fmt: skip
    assert float((exact_sims - sims).max()) < 0.1  # a miss is a near-tie, never a far cell
    nearest, _ = nearest_cells(vectors, torch.from_numpy(centroids))
    np.testing.assert_array_equal(exact_cells, nearest)


def test_kmeans_finds_separated_clusters_and_codes_follow_them(tmp_path):
    rng = np.random.default_rng(0)
    centers = _unit(rng.normal(size=(6, 64)))
    points, truth = _clusters(rng, centers, 200)
    centroids = train_centroids(points[rng.permutation(len(points))], 6, iterations=8, seed=3)
    assert centroids.shape == (6, 64)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    # every true centre has a learnt centroid next to it
    assert (centers @ centroids.T).max(axis=1).min() > 0.99
    path = tmp_path / "codes.npy"
    write_codes(centroids, len(points), lambda pos: points[pos], path, progress=False)
    codes = np.load(path)
    expected = (points @ centroids.T).argmax(axis=1)
    np.testing.assert_array_equal(codes, expected)
    # one learnt cell per true cluster
    assert len({tuple(np.unique(codes[truth == c])) for c in range(6)}) == 6


def test_blocks_assigned_side_by_side_equal_one_by_one_and_restore_the_threads(monkeypatch):
    """With 2 torch threads the two-level blocks run in 2 worker threads of one torch
    thread each: the same cells and similarities as one block after another, and the
    thread count is back afterwards."""
    from index_builder.build import cells as cells_module

    rng = np.random.default_rng(5)
    centroids = _unit(rng.normal(size=(256, 24)))
    vectors = torch.from_numpy(_unit(centroids[rng.integers(0, 256, 3000)]
                                     + rng.normal(size=(3000, 24)) * 0.1))  # fmt: skip
    assigner = Assigner(centroids, two_level=True)
    monkeypatch.setattr(cells_module, "ASSIGN_BATCH", 256)  # 12 blocks, a ragged last one
    with cells_module.torch_threads(1):
        one_by_one = assigner(vectors)
    with cells_module.torch_threads(2):
        side_by_side = assigner(vectors)
        assert torch.get_num_threads() == 2
    torch.testing.assert_close(side_by_side, one_by_one, rtol=0, atol=0)


def test_nearest_cells_is_the_argmax_of_inner_products():
    rng = np.random.default_rng(1)
    centroids = _unit(rng.normal(size=(50, 32)))
    vectors = _unit(centroids[rng.integers(0, 50, 300)] + rng.normal(size=(300, 32)) * 0.1)
    got, sims = nearest_cells(torch.from_numpy(vectors), torch.from_numpy(centroids))
    np.testing.assert_array_equal(got.numpy(), (vectors @ centroids.T).argmax(axis=1))
    np.testing.assert_allclose(sims.numpy(), (vectors @ centroids.T).max(axis=1), atol=1e-5)


def test_too_many_cells_is_refused():
    with pytest.raises(ValueError, match="at least as many vectors"):
        train_centroids(np.eye(4, dtype=np.float32), 5, iterations=1)


@pytest.mark.parametrize("unique", [True, False])
def test_inverted_lists_hold_each_cells_owners(unique):
    rng = np.random.default_rng(2)
    owners = np.sort(rng.integers(0, 40, 500))
    codes = rng.integers(0, 9, 500).astype(np.int32)
    lists = InvertedLists.build(codes, owners, 12, unique=unique)
    for cell in range(12):
        members = owners[codes == cell]
        expected = np.unique(members) if unique else members
        np.testing.assert_array_equal(lists.items[lists.starts[cell] : lists.starts[cell + 1]],
                                      expected)  # fmt: skip
    cells = np.array([3, 11, 0, 3])
    items, source = lists.gather(cells)
    expected = np.concatenate([lists.items[lists.starts[c] : lists.starts[c + 1]] for c in cells])
    np.testing.assert_array_equal(items, expected)
    np.testing.assert_array_equal(cells[source], np.concatenate(
        [np.full(lists.starts[c + 1] - lists.starts[c], c) for c in cells]))  # fmt: skip
    empty_items, empty_source = lists.gather(np.array([11]))  # cell 11 holds nothing
    assert len(empty_items) == 0 and len(empty_source) == 0


def test_dense_ids_and_segments():
    items = np.array([7, 2, 7, 9, 2, 2])
    distinct, position = _dense_ids(items, 12)
    np.testing.assert_array_equal(distinct, [2, 7, 9])
    np.testing.assert_array_equal(distinct[position], items)
    starts = np.array([0, 3, 4, 9, 11])  # item r owns starts[r]:starts[r + 1]
    positions, run_starts = item_positions(starts, np.array([2, 0, 3]))
    np.testing.assert_array_equal(positions, [4, 5, 6, 7, 8, 0, 1, 2, 9, 10])
    np.testing.assert_array_equal(run_starts, [0, 5, 8])


@pytest.mark.parametrize("unique", [True, False])
def test_extended_lists_equal_lists_built_over_all_rows(unique):
    """An added segment's postings appended per cell give the lists of the whole."""
    rng = np.random.default_rng(6)
    owners = np.sort(rng.integers(0, 40, 300))  # vectors item by item, ascending
    codes = rng.integers(0, 9, 300)
    split = int(np.searchsorted(owners, 25))  # items 25.. arrive in a later segment
    whole = InvertedLists.build(codes, owners, 9, unique)
    old = InvertedLists.build(codes[:split], owners[:split], 9, unique)
    new = InvertedLists.build(codes[split:], owners[split:], 9, unique)
    grown = old.extended(new)
    np.testing.assert_array_equal(grown.starts, whole.starts)
    np.testing.assert_array_equal(grown.items, whole.items)
    empty = old.extended(InvertedLists.build(codes[:0], owners[:0], 9, unique))
    np.testing.assert_array_equal(empty.items, old.items)
    with pytest.raises(ValueError, match="cells"):
        old.extended(InvertedLists.build(codes, owners, 10, unique))


@pytest.mark.parametrize("pooling", ["lse", "mean", "max", "sum"])
def test_rerank_scores_equal_the_model_scorer(pooling):
    """The rerank's path (int8 rows as stored, widened block by block, products scaled
    afterwards, padded slots masked) equals score_text_query on the dequantised images
    with filled padding."""
    from index_builder.format.quant import dequantize, quantize_int8
    from index_builder.search.vectors import hard_text_scores, stored_products
    from model.scoring import fill_padded_regions, score_text_query

    rng = np.random.default_rng(4)
    matching = Matching(coding="hard", pooling=pooling, pooling_temperature=0.1)
    regions = _unit(rng.normal(size=(9, 7, 32)))
    counts = torch.tensor([7, 1, 3, 7, 5, 2, 7, 4, 6])
    regions[np.arange(7)[None, :] >= counts.numpy()[:, None]] = 5.0  # garbage in padding
    codes, scales = quantize_int8(regions)
    words = torch.from_numpy(_unit(rng.normal(size=(6, 32))))
    stored = torch.from_numpy(dequantize(codes, scales))
    expected = score_text_query(words, fill_padded_regions(stored, counts), None, matching)
    buffer = np.empty((10, 32), np.float32)  # 63 vectors: six full blocks and a ragged one
    sims = stored_products(words, codes, scales, buffer).view(6, 9, 7)
    got = hard_text_scores(sims, counts, matching)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["int8", "float16", "float32"])
def test_stored_products_equal_the_product_with_the_decoded_vectors(dtype):
    from index_builder.format.quant import dequantize, quantize_int8
    from index_builder.search.vectors import stored_products

    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(4, 9, 16)).astype(np.float32)
    if dtype == "int8":
        codes, scales = quantize_int8(vectors)
        decoded = dequantize(codes, scales)
    else:
        codes, scales = vectors.astype(dtype), None
        decoded = codes.astype(np.float32)
    query = torch.from_numpy(rng.normal(size=(3, 16)).astype(np.float32))
    got = stored_products(query, codes, scales, np.empty((7, 16), np.float32))
    expected = query @ torch.from_numpy(decoded.reshape(-1, 16)).T
    assert got.shape == (3, 36)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_bench_cells_reports_both_paths_side_by_side(capsys):
    from app.cli import main

    argv = ["bench", "cells", "--images", "300", "--cells", "2048", "--dim", "32",
            "--concepts", "256", "--iterations", "2", "--json"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    assert "assign: exact" in lines[2] and "train:  exact" in lines[1]
    for path in ("exact", "two_level"):
        assert report[path]["assign_s"] > 0 and report[path]["train_s"] > 0
        assert 0 < report[path]["held_out_similarity"] <= 1
    assert 0.9 <= report["two_level"]["same_cell"] <= 1
