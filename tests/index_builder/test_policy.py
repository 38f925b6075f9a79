"""The FAISS index policy: a table over every branch and boundary, invariants, and a real build."""

import re
import subprocess
import sys

import numpy as np
import pytest

from index_builder import policy
from index_builder.policy import (
    IndexChoice,
    apply_search_params,
    choose_index_key,
    default_nprobe,
    estimate_bytes,
    ivf_list_count,
    make_index,
    pq_sub_quantizer_counts,
    train_vector_count,
)

MiB, GiB = 2**20, 2**30
BIG = 2**50  # a budget nothing reaches


def _bytes(factory: str, n: int, d: int, delta: int = 0) -> int:
    return estimate_bytes(factory, n, d) + delta


# (n_vectors, dim, budget) -> exact factory string and nprobe
POLICY_TABLE = [
    pytest.param(1, 1, 4, "Flat", None, id="one-vector-exactly-fits"),
    pytest.param(10_000, 1024, 512 * MiB, "Flat", None, id="small"),
    pytest.param(50_000, 256, GiB, "Flat", None, id="flat-max"),
    pytest.param(50_001, 256, GiB, "IVF1024,Flat", 64, id="flat-max+1"),
    pytest.param(50_000, 256, 50_000 * 1024, "Flat", None, id="flat-exactly-fits"),
    pytest.param(50_000, 256, 50_000 * 1024 - 1, "IVF1024,SQ8", 64, id="small-flat-too-big"),
    pytest.param(2_496, 8, 2_496 * 32 - 1, "IVF64,SQ8", 32, id="smallest-ivf"),
    pytest.param(
        360_000, 1024, _bytes("IVF2048,Flat", 360_000, 1024), "IVF2048,Flat", 128, id="flat-codes"
    ),
    pytest.param(
        360_000, 1024, _bytes("IVF2048,Flat", 360_000, 1024, -1), "IVF2048,SQ8", 128, id="sq8"
    ),
    pytest.param(
        360_000,
        1024,
        _bytes("IVF2048,SQ8", 360_000, 1024, -1),
        "IVF2048,PQ256x8np",
        128,
        id="pq256",
    ),
    pytest.param(3_600_000, 1024, 512 * MiB, "IVF8192,PQ128x8np", 512, id="pq128"),
    pytest.param(3_600_000, 1024, 300 * MiB, "OPQ64,IVF8192,PQ64x8np", 512, id="opq64"),
    pytest.param(3_600_000, 256, 512 * MiB, "IVF8192,PQ64x8np", 512, id="d256-pq64"),
    pytest.param(3_600_000, 256, 16 * GiB, "IVF8192,Flat", 512, id="d256-flat"),
    pytest.param(10**9, 8, BIG, "IVF65536,Flat", 1024, id="max-lists-and-probes"),
]


@pytest.mark.parametrize("n, dim, budget, factory, nprobe", POLICY_TABLE)
def test_policy_table(n, dim, budget, factory, nprobe):
    choice = choose_index_key(n, dim, budget)
    assert (choice.factory, choice.nprobe) == (factory, nprobe)
    assert choice.metric == "ip" and choice.ef_search is None
    assert choice.bytes_estimate == estimate_bytes(factory, n, dim) <= budget
    assert (choice.train_vectors == 0) == (factory == "Flat")
    assert 0 <= choice.train_vectors <= n and choice.reason


@pytest.mark.parametrize(
    "n, dim, budget, message",
    [
        (0, 8, GiB, "n_vectors must be >= 1"),
        (-3, 8, GiB, "n_vectors must be >= 1"),
        (10, 0, GiB, "dim must be >= 1"),
        (10, 8, 0, "memory_budget_bytes must be > 0"),
        (10, 8, -1, "memory_budget_bytes must be > 0"),
        (1, 1, 3, "too few"),  # the exact index does not fit and IVF cannot be trained
        (2_495, 8, 2_495 * 32 - 1, "too few"),  # one vector short of IVF_MIN_VECTORS
        (3_600_000, 1024, 100 * MiB, r"at least [\d,.]+ MiB"),  # even PQ32 is too big
    ],
)
def test_invalid_or_impossible_inputs_raise(n, dim, budget, message):
    with pytest.raises(ValueError, match=message):
        choose_index_key(n, dim, budget)


@pytest.mark.parametrize(
    "n, nlist",
    [
        (2_496, 64),
        (24_000, 512),
        (50_001, 1024),
        (360_000, 2048),
        (3_600_000, 8192),
        (10**9, 65536),
    ],
)
def test_ivf_list_count(n, nlist):
    assert ivf_list_count(n) == nlist
    assert n // nlist >= policy.MIN_TRAIN_POINTS_PER_CENTROID


@pytest.mark.parametrize(
    "nlist, nprobe", [(16, 16), (64, 32), (512, 32), (1024, 64), (8192, 512), (65536, 1024)]
)
def test_default_nprobe(nlist, nprobe):
    assert default_nprobe(nlist) == nprobe


@pytest.mark.parametrize(
    "n, nlist, uses_pq, expected",
    [
        (360_000, 2048, False, 131_072),  # 64 per list
        (3_600_000, 8192, False, 500_000),  # capped by MAX_TRAIN_VECTORS
        (10**9, 65536, False, 39 * 65536),  # the 39-per-centroid minimum beats the cap
        (100_000, 64, True, 39 * 256),  # PQ codebooks need more than the 64 lists
        (3_000, 64, True, 3_000),  # never more than the collection
    ],
)
def test_train_vector_count(n, nlist, uses_pq, expected):
    assert train_vector_count(n, nlist, uses_pq) == expected


@pytest.mark.parametrize(
    "dim, counts",
    [
        (1024, [256, 128, 64, 32]),
        (256, [64, 32, 16, 8]),
        (300, [75, 60, 50, 30, 25, 20, 15, 12, 10]),
        (3, []),
    ],
)
def test_pq_sub_quantizer_counts(dim, counts):
    assert pq_sub_quantizer_counts(dim) == counts


@pytest.mark.parametrize(
    "factory, expected",
    [
        ("Flat", 100 * 32),
        ("IVF64,Flat", 100 * (8 + 32) + 64 * (32 + 48)),
        ("IVF64,SQ8", 100 * (8 + 8) + 64 * (32 + 48) + 2 * 8 * 4),
        ("IVF64,PQ4x8", 100 * (8 + 4) + 64 * (32 + 48) + 256 * 8 * 4),
        ("IVF64,PQ4x8np", 100 * (8 + 4) + 64 * (32 + 48) + 256 * 8 * 4),
        ("IVF64,PQ4", 100 * (8 + 4) + 64 * (32 + 48) + 256 * 8 * 4),
        ("OPQ4,IVF64,PQ4x8", 100 * (8 + 4) + 64 * (32 + 48) + 256 * 8 * 4 + 8 * 8 * 4),
        ("OPQ4_4,IVF64,PQ4", 4 * 8 * 4 + 64 * (16 + 48) + 100 * (8 + 4) + 256 * 4 * 4),
        ("HNSW32,Flat", 100 * ((2 * 32 + 1) * 4 + 12 + 32)),
        ("HNSW32", 100 * ((2 * 32 + 1) * 4 + 12 + 32)),
        ("SQfp16", 100 * 16 + 2 * 8 * 4),
    ],
)
def test_estimate_bytes_by_hand(factory, expected):
    assert estimate_bytes(factory, 100, 8) == expected


@pytest.mark.parametrize("factory", ["IVF64,PQ3x8", "LSH", "IVF64,Flat,Flat", "IVFx,Flat", ""])
def test_estimate_bytes_rejects_unknown_factories(factory):
    with pytest.raises(ValueError):
        estimate_bytes(factory, 100, 8)


def _code_bytes_per_vector(factory: str, dim: int) -> int:
    code = factory.split(",")[-1]
    if code == "Flat":
        return 4 * dim
    if code == "SQ8":
        return dim
    return int(re.fullmatch(r"PQ(\d+)x8np", code).group(1))


@pytest.mark.parametrize("n", [3_000, 50_000, 50_001, 360_000, 3_600_000])
@pytest.mark.parametrize("dim", [64, 256, 300, 1024])
def test_more_memory_never_gives_lossier_codes(n, dim):
    previous = 0
    for budget in (2**p for p in range(16, 40)):
        try:
            choice = choose_index_key(n, dim, budget)
        except ValueError:
            assert previous == 0, "a larger budget must not fail once a smaller one worked"
            continue
        assert choice.bytes_estimate <= budget
        code_bytes = _code_bytes_per_vector(choice.factory, dim)
        assert code_bytes >= previous
        previous = code_bytes
    assert previous == 4 * dim  # enough memory always ends at exact vectors


def test_choice_is_deterministic_and_frozen():
    first = choose_index_key(360_000, 1024, 512 * MiB)
    assert first == choose_index_key(360_000, 1024, 512 * MiB)
    with pytest.raises(AttributeError):
        first.nprobe = 1  # type: ignore[misc]


def test_choosing_does_not_import_faiss():
    code = (
        "import sys; from index_builder.policy import choose_index_key;"
        "choose_index_key(3_600_000, 1024, 2**29); assert 'faiss' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- real faiss indexes, tiny ---------------------------------------------------------------


@pytest.fixture
def faiss_one_thread():
    faiss = pytest.importorskip("faiss")
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # share the machine politely
    yield faiss
    faiss.omp_set_num_threads(threads)


@pytest.fixture
def vectors() -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((3_000, 32)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _build(choice: IndexChoice, vectors: np.ndarray):
    index = make_index(choice, vectors.shape[1])
    index.train(vectors[: choice.train_vectors])
    index.add(vectors)
    return index


def test_ivf_build_sets_nprobe_and_finds_stored_vectors(faiss_one_thread, vectors, monkeypatch):
    monkeypatch.setattr(policy, "FLAT_MAX_VECTORS", 1_000)
    choice = choose_index_key(len(vectors), 32, GiB)
    assert choice.factory == "IVF64,Flat" and choice.train_vectors == 3_000
    index = _build(choice, vectors)
    assert index.metric_type == faiss_one_thread.METRIC_INNER_PRODUCT
    assert faiss_one_thread.extract_index_ivf(index).nprobe == choice.nprobe == 32
    scores, ids = index.search(vectors[:5], 10)
    assert scores.shape == ids.shape == (5, 10)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]  # each stored vector is its own best match
    apply_search_params(index, {"nprobe": np.int64(3)})  # e.g. read back from a manifest
    assert faiss_one_thread.extract_index_ivf(index).nprobe == 3


def test_pq_build_searches(faiss_one_thread, vectors):
    budget = estimate_bytes("IVF64,PQ8x8np", len(vectors), 32)
    choice = choose_index_key(len(vectors), 32, budget)
    assert choice.factory == "IVF64,PQ8x8np"
    index = _build(choice, vectors)
    assert faiss_one_thread.extract_index_ivf(index).nprobe == 32
    scores, ids = index.search(vectors[:4], 7)
    assert scores.shape == ids.shape == (4, 7) and (ids >= 0).all()


def test_opq_sets_nprobe_through_the_pre_transform(faiss_one_thread, vectors):
    budget = estimate_bytes("OPQ2,IVF64,PQ2x8np", len(vectors), 32)
    choice = choose_index_key(len(vectors), 32, budget)
    assert choice.factory == "OPQ2,IVF64,PQ2x8np"
    index = make_index(choice, 32)  # not trained: OPQ training takes seconds even here
    assert isinstance(index, faiss_one_thread.IndexPreTransform)
    assert faiss_one_thread.extract_index_ivf(index).nprobe == 32


def test_flat_and_hnsw_search_params(faiss_one_thread):
    flat = make_index(choose_index_key(100, 16, GiB), 16)
    apply_search_params(flat, {"nprobe": None, "ef_search": None})  # no-op
    with pytest.raises(ValueError, match="not IVF"):
        apply_search_params(flat, {"nprobe": 4})
    with pytest.raises(ValueError, match="not HNSW"):
        apply_search_params(flat, {"ef_search": 4})
    hnsw_choice = IndexChoice("HNSW32,Flat", "ip", 0, None, 48, 0, "by hand")
    hnsw = make_index(hnsw_choice, 16)
    assert faiss_one_thread.downcast_index(hnsw).hnsw.efSearch == 48


@pytest.mark.parametrize(
    "params, message",
    [
        ({"nprobe": 0}, "positive int"),
        ({"nprobe": 2.5}, "positive int"),
        ({"nprobe": True}, "positive int"),
        ({"k": 3}, "unknown"),
    ],
)
def test_apply_search_params_rejects_bad_values(faiss_one_thread, params, message):
    index = make_index(IndexChoice("IVF64,Flat", "ip", 2_496, 16, None, 0, "by hand"), 8)
    with pytest.raises(ValueError, match=message):
        apply_search_params(index, params)


def test_make_index_rejects_other_metrics():
    with pytest.raises(ValueError, match="inner-product"):
        make_index(IndexChoice("Flat", "l2", 0, None, None, 0, "by hand"), 8)
