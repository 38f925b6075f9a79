"""Residual codes: the torch encoder agrees with FAISS's, the query-side table gives the
products with the decoded residuals, and the codes make approximate scores sharper."""

import faiss
import numpy as np
import pytest
import torch

from index_builder.build.residuals import (
    decode_residuals,
    encode_residuals,
    pack,
    subspaces_for,
    train_codebook,
    unpack,
)
from index_builder.format.manifest import code_bytes
from index_builder.search.residuals import ResidualCodes


@pytest.fixture(scope="module")
def data():
    """Unit vectors around 32 centres in d=64, their nearest centre and the codebook."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(32, 64)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # residual structure PQ can learn: a few directions per slice, plus noise
    basis = rng.normal(size=(6, 64)).astype(np.float32)
    x = centres[rng.integers(0, 32, 3000)] + 0.3 * rng.normal(size=(3000, 6)) @ basis / 8
    x = (x + 0.02 * rng.normal(size=x.shape)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cells = (x @ centres.T).argmax(axis=1)
    residuals = x - centres[cells]
    codebook = train_codebook(residuals[:2000], subspaces=8)
    return x, centres, cells, residuals, codebook


def test_subspaces_divide_the_dimension_and_pack_two_to_a_byte():
    assert subspaces_for(1024) == 64 and code_bytes(64) == 32
    assert subspaces_for(100) == 50
    assert subspaces_for(37) == 37 and code_bytes(37) == 19
    assert subspaces_for(8) == 8
    slices = np.random.default_rng(3).integers(0, 16, size=(10, 7)).astype(np.uint8)
    packed = pack(slices)
    assert packed.shape == (10, 4)
    np.testing.assert_array_equal(unpack(packed, 7), slices)
    assert packed[0, 0] == slices[0, 0] | (slices[0, 1] << 4)  # slice 2j in the low half


def test_torch_encoder_gives_faiss_codes(data):
    x, centres, cells, residuals, codebook = data
    assert codebook.shape == (8, 16, 8)
    ours = encode_residuals(torch.from_numpy(x), torch.from_numpy(centres),
                            torch.from_numpy(cells), torch.from_numpy(codebook))  # fmt: skip
    pq = faiss.ProductQuantizer(64, 8, 4)
    faiss.copy_array_to_vector(codebook.ravel(), pq.centroids)
    theirs = pq.compute_codes(np.ascontiguousarray(residuals))
    assert ours.dtype == np.uint8 and ours.shape == theirs.shape
    assert np.mean(ours == theirs) > 0.999  # the same codewords and byte layout, up to ties


def test_codes_keep_most_of_the_residual(data):
    x, centres, cells, residuals, codebook = data
    held_out = slice(2000, None)  # not trained on
    codes = encode_residuals(
        torch.from_numpy(x[held_out]), torch.from_numpy(centres),
        torch.from_numpy(cells[held_out]), torch.from_numpy(codebook),
    )  # fmt: skip
    left = np.sum((residuals[held_out] - decode_residuals(codes, codebook)) ** 2, axis=1)
    before = np.sum(residuals[held_out] ** 2, axis=1)
    assert left.mean() < 0.6 * before.mean()


def test_query_table_equals_products_with_decoded_residuals(data):
    x, centres, cells, _, codebook = data
    codes = encode_residuals(torch.from_numpy(x), torch.from_numpy(centres),
                             torch.from_numpy(cells), torch.from_numpy(codebook))  # fmt: skip
    stored = ResidualCodes(codebook, codes)
    queries = np.random.default_rng(1).normal(size=(5, 64)).astype(np.float32)
    positions = np.array([7, 0, 2999, 7, 1500])
    got = stored.similarities(queries, positions)
    expected = decode_residuals(codes[positions], codebook) @ queries.T
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # and the approximation centroid + residual is closer to the exact product
    exact = x[positions] @ queries.T
    bare = centres[cells[positions]] @ queries.T
    assert np.abs(bare + got - exact).mean() < 0.5 * np.abs(bare - exact).mean()


def test_a_tiny_side_trains_a_codebook_from_repeated_points():
    points = np.random.default_rng(2).normal(size=(40, 16)).astype(np.float32)
    codebook = train_codebook(points, subspaces=4)
    assert codebook.shape == (4, 16, 4) and np.isfinite(codebook).all()
    tiny = train_codebook(points[:5], subspaces=4)  # fewer points than codewords
    assert tiny.shape == (4, 16, 4) and np.isfinite(tiny).all()
