"""FAISS index choice: a pure policy from (vectors, dim, memory budget) to a factory string.

The index holds multi-vector embeddings (an image's region vectors, a caption's word
vectors), L2-normalised and compared by inner product. Each query vector asks it for its
k' nearest stored vectors; their owners are unioned and then rescored exactly from the
stored embeddings, so the index only has to find good neighbours, not exact distances.

The rules, in order:

1. Small collections (<= FLAT_MAX_VECTORS) whose fp32 copy fits the budget: "Flat" (exact).
2. Otherwise an inverted file, IVF{nlist} with nlist ~ 4 sqrt(n) (a power of two), holding
   the richest codes that fit the budget: exact fp32 ("Flat"), then 8-bit scalar codes
   ("SQ8"), then product quantisation with as many one-byte sub-quantisers as fit ("PQ{m}x8np":
   polysemous training off), with an OPQ rotation in front when the sub-vectors are long.
3. Nothing fits: ValueError naming the smallest memory that would work.

HNSW is deliberately not chosen: on this project's data (PERF_NOTES.md) IVF4096 matched the
exact per-word shortlist at 25-39 ms while HNSW32 reached lower recall and took 10-17
minutes to build. `estimate_bytes`, `make_index` and `apply_search_params` still accept
HNSW factories, so one can be built and compared by hand.

`choose_index_key` and `estimate_bytes` are pure and never import faiss; `make_index` and
`apply_search_params` import it lazily.
"""

import logging
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# --- sizes faiss uses per stored vector --------------------------------------------------
FLOAT32_BYTES = 4  # raw vectors and centroids are stored as float32
IVF_ID_BYTES = 8  # an inverted list stores one int64 id next to each code
IVF_LIST_OVERHEAD_BYTES = 48  # two empty std::vector headers (codes, ids) per inverted list
HNSW_NODE_BYTES = 12  # per node: an int64 offset into the link table and an int32 level
HNSW_LINK_BYTES = 4  # one int32 per neighbour link

# --- when exact search is enough -----------------------------------------------------------
# An exact scan costs ~106 ms for 360k x 1024 fp32 vectors here (PERF_NOTES.md), so 50k
# vectors cost ~15 ms: less than training and probing an IVF index is worth.
FLAT_MAX_VECTORS = 50_000

# --- inverted file (IVF) ---------------------------------------------------------------------
# faiss's guideline is 4 to 16 sqrt(n) lists; the low end keeps lists long (cheap probes,
# fewer centroids to train on a 2-core machine) at a small cost in scanned vectors.
IVF_LISTS_PER_SQRT_N = 4
IVF_MIN_LISTS = 64  # fewer lists than this prune too little to beat an exact scan
IVF_MAX_LISTS = 65_536  # beyond this, centroid search itself dominates (faiss's own range)
# faiss k-means warns under 39 training points per centroid: the centroids are unreliable.
MIN_TRAIN_POINTS_PER_CENTROID = 39
# The smallest collection that can train IVF_MIN_LISTS centroids with enough points each.
IVF_MIN_VECTORS = IVF_MIN_LISTS * MIN_TRAIN_POINTS_PER_CENTROID
# Sample size we aim for when the collection allows it: stabler centroids than the minimum.
TRAIN_POINTS_PER_CENTROID = 64
# Caps training cost (k-means is O(train x nlist x d) per iteration); faiss subsamples to
# 256 points per centroid anyway, so a larger sample would mostly be read and dropped.
MAX_TRAIN_VECTORS = 500_000

# --- search-time probes ----------------------------------------------------------------------
# Probe 1/16 of the lists, about 6% of the collection per query vector. This favours recall
# (the reranked shortlist must reach recall >= 0.98): on clustered synthetic sets of 100k
# vectors (d=64-256, IVF1024,Flat) neighbour recall@64 was 0.87-0.94 at 1/16 of the lists,
# 0.81-0.88 at 1/32 and 0.92-0.97 at 1/8 (a near-random set: 0.63 at 1/16). Tune it per
# index by measuring recall.
NPROBE_LIST_DIVISOR = 16
MIN_NPROBE = 32  # with few lists (64-512) a neighbour's list is often not the query's nearest
MAX_NPROBE = 1024  # bounds latency for very large nlist (1024 of 65,536 lists is 1.6%)

# --- codes -----------------------------------------------------------------------------------
SQ8_BYTES_PER_DIM = 1  # 8-bit scalar quantiser: one byte per dimension
SQ_TRAINED_FLOATS_PER_DIM = 2  # SQ8 keeps a trained (min, range) pair per dimension
PQ_BITS = 8  # 256 centroids per sub-quantiser: one byte per code, the fast-scanning width
# Each sub-quantiser's k-means needs >= 39 points for each of its 256 centroids.
PQ_MIN_TRAIN_VECTORS = MIN_TRAIN_POINTS_PER_CENTROID * 2**PQ_BITS
# Sub-vectors of fewer than 4 dims cost nearly as much as SQ8 for less accuracy.
PQ_MIN_SUBVECTOR_DIM = 4
# One byte for more than 32 dims loses too much neighbour recall to be worth building.
PQ_MAX_SUBVECTOR_DIM = 32
# Factory suffix that turns off polysemous training: index_factory enables it for "PQ" codes,
# but it only serves Hamming pre-filtering, which we never use, and costs seconds per
# sub-quantiser (minutes for PQ128) of build time.
PQ_NO_POLYSEMOUS = "np"
# From 16 dims per sub-vector, an OPQ rotation (d x d floats) that balances the variance
# across sub-vectors measurably helps; below that, PQ alone is already fine.
OPQ_MIN_SUBVECTOR_DIM = 16

METRIC = "ip"  # stored vectors are L2-normalised: inner product is cosine similarity


@dataclass(frozen=True)
class IndexChoice:
    """One index decision: what to build, how to train and search it, and why."""

    factory: str  # faiss.index_factory string, e.g. "IVF4096,PQ64x8np", "Flat"
    metric: str  # always "ip" (inner product on L2-normalised vectors)
    train_vectors: int  # sample size to train on (0 when nothing is trained)
    nprobe: int | None  # search-time IVF probes (None when not IVF)
    ef_search: int | None  # search-time HNSW efSearch (None when not HNSW)
    bytes_estimate: int  # estimated RAM of the filled index, see estimate_bytes
    reason: str  # one sentence: why this choice (logged, stored in the manifest)


def choose_index_key(n_vectors: int, dim: int, memory_budget_bytes: int) -> IndexChoice:
    """The index for `n_vectors` vectors of `dim` dims within `memory_budget_bytes` of RAM.

    Deterministic and pure. Raises ValueError on invalid inputs or when no index fits.
    """
    _validate_sizes(n_vectors, dim, memory_budget_bytes)
    flat_bytes = estimate_bytes("Flat", n_vectors, dim)
    if n_vectors <= FLAT_MAX_VECTORS and flat_bytes <= memory_budget_bytes:
        reason = (
            f"{n_vectors:,} vectors <= FLAT_MAX_VECTORS ({FLAT_MAX_VECTORS:,}): "
            f"an exact scan is cheap and {_mb(flat_bytes)} fits the budget"
        )
        choice = IndexChoice("Flat", METRIC, 0, None, None, flat_bytes, reason)
    elif n_vectors < IVF_MIN_VECTORS:
        raise ValueError(
            f"{n_vectors:,} vectors of dim {dim} need {_mb(flat_bytes)} for an exact index, "
            f"more than the budget of {_mb(memory_budget_bytes)}, and are too few "
            f"(< {IVF_MIN_VECTORS:,}) to train a compressed one: raise the memory budget"
        )
    else:
        choice = _choose_ivf(n_vectors, dim, memory_budget_bytes)
    logger.debug("index choice for n=%d d=%d: %s", n_vectors, dim, choice)
    return choice


def ivf_list_count(n_vectors: int) -> int:
    """nlist: ~IVF_LISTS_PER_SQRT_N * sqrt(n) rounded to a power of two, clamped, trainable."""
    target = IVF_LISTS_PER_SQRT_N * math.sqrt(n_vectors)
    nlist = min(max(2 ** round(math.log2(target)), IVF_MIN_LISTS), IVF_MAX_LISTS)
    trainable = n_vectors // MIN_TRAIN_POINTS_PER_CENTROID
    if nlist > trainable:
        nlist = 2 ** int(math.log2(trainable))  # largest power of two with enough points
    if nlist < IVF_MIN_LISTS:
        raise ValueError(f"{n_vectors:,} vectors are too few for IVF (< {IVF_MIN_VECTORS:,})")
    return nlist


def default_nprobe(nlist: int) -> int:
    """Probes for `nlist` lists: nlist / NPROBE_LIST_DIVISOR within [MIN_NPROBE, MAX_NPROBE]."""
    return min(nlist, max(MIN_NPROBE, min(MAX_NPROBE, nlist // NPROBE_LIST_DIVISOR)))


def train_vector_count(n_vectors: int, nlist: int, uses_pq: bool) -> int:
    """Training sample: TRAIN_POINTS_PER_CENTROID per list up to MAX_TRAIN_VECTORS, never
    under faiss's minimum for the centroids (and PQ codebooks), never more than n."""
    wanted = min(TRAIN_POINTS_PER_CENTROID * nlist, MAX_TRAIN_VECTORS)
    needed = MIN_TRAIN_POINTS_PER_CENTROID * nlist
    if uses_pq:
        needed = max(needed, PQ_MIN_TRAIN_VECTORS)
    return min(n_vectors, max(wanted, needed))


def pq_sub_quantizer_counts(dim: int) -> list[int]:
    """Valid PQ sizes m for `dim`, richest first: divisors with dim/m in [4, 32] dims."""
    return [
        m
        for m in range(dim, 0, -1)
        if dim % m == 0 and PQ_MIN_SUBVECTOR_DIM <= dim // m <= PQ_MAX_SUBVECTOR_DIM
    ]


def _choose_ivf(n_vectors: int, dim: int, memory_budget_bytes: int) -> IndexChoice:
    """The IVF index with the least lossy codes that fit the budget."""
    nlist = ivf_list_count(n_vectors)
    candidates = [_ivf_factory(nlist, code, dim) for code in _code_ladder(dim)]
    for factory in candidates:
        needed = estimate_bytes(factory, n_vectors, dim)
        if needed <= memory_budget_bytes:
            uses_pq = ",PQ" in factory
            return IndexChoice(
                factory=factory,
                metric=METRIC,
                train_vectors=train_vector_count(n_vectors, nlist, uses_pq),
                nprobe=default_nprobe(nlist),
                ef_search=None,
                bytes_estimate=needed,
                reason=_ivf_reason(n_vectors, factory, needed, memory_budget_bytes),
            )
    smallest = min(candidates, key=lambda factory: estimate_bytes(factory, n_vectors, dim))
    raise ValueError(
        f"no index for {n_vectors:,} vectors of dim {dim} fits {_mb(memory_budget_bytes)}: "
        f"the smallest ({smallest}) needs at least "
        f"{_mb(estimate_bytes(smallest, n_vectors, dim))}; raise the memory budget"
    )


def _code_ladder(dim: int) -> list[str]:
    """Code kinds from exact to most compressed: Flat, SQ8, then PQ{m}x8np by decreasing m."""
    return [
        "Flat",
        "SQ8",
        *(f"PQ{m}x{PQ_BITS}{PQ_NO_POLYSEMOUS}" for m in pq_sub_quantizer_counts(dim)),
    ]


def _ivf_factory(nlist: int, code: str, dim: int) -> str:
    """IVF factory string, with an OPQ rotation in front of PQ codes over long sub-vectors."""
    match = re.fullmatch(r"PQ(\d+)x\d+(?:np)?", code)
    if match and dim // int(match.group(1)) >= OPQ_MIN_SUBVECTOR_DIM:
        return f"OPQ{match.group(1)},IVF{nlist},{code}"
    return f"IVF{nlist},{code}"


def _ivf_reason(n_vectors: int, factory: str, needed: int, budget: int) -> str:
    """One sentence for the manifest explaining an IVF choice."""
    if n_vectors <= FLAT_MAX_VECTORS:
        why_ivf = "an exact fp32 index does not fit the budget"
    else:
        why_ivf = f"{n_vectors:,} vectors > FLAT_MAX_VECTORS ({FLAT_MAX_VECTORS:,})"
    return (
        f"{why_ivf}, so {factory} (about 4 sqrt(n) lists, the least lossy codes that fit) "
        f"needs {_mb(needed)} of the {_mb(budget)} budget"
    )


def _validate_sizes(n_vectors: int, dim: int, memory_budget_bytes: int) -> None:
    """Reject sizes that cannot describe an index, naming the bad value."""
    if n_vectors < 1:
        raise ValueError(f"n_vectors must be >= 1, got {n_vectors}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if memory_budget_bytes <= 0:
        raise ValueError(f"memory_budget_bytes must be > 0, got {memory_budget_bytes}")


def _mb(n_bytes: int) -> str:
    """Bytes as a short human string (MiB)."""
    return f"{n_bytes / 2**20:,.1f} MiB"


# --- memory estimate ---------------------------------------------------------------------------


def estimate_bytes(factory: str, n_vectors: int, dim: int) -> int:
    """Rough RAM of a filled index built from `factory` over `n_vectors` vectors of `dim` dims.

    Counted: per vector, the code (Flat 4d, SQ8 d, SQfp16 2d, PQm m*bits/8 bytes) plus an
    int64 id in IVF lists, or HNSW's links (about 2M + 1 int32 neighbours and 12 bytes of
    bookkeeping per node); once, the IVF centroids (nlist x d fp32) and list headers, PQ
    codebooks (2^bits x d fp32), SQ ranges (2d fp32) and OPQ's rotation (d_out x d fp32).
    Not counted: allocator slack (inverted lists grow by doubling) and search-time buffers,
    so leave some headroom in the budget. Supports OPQ / IVF / HNSW / Flat / SQ / PQ parts.
    """
    if n_vectors < 0 or dim < 1:
        raise ValueError(f"need n_vectors >= 0 and dim >= 1, got {n_vectors}, {dim}")
    per_vector, fixed, current_dim = 0, 0, dim
    parts = [part.strip() for part in factory.split(",")]
    if parts and parts[0].startswith("OPQ"):
        current_dim, fixed = _opq_bytes(parts.pop(0), dim)
    if parts and parts[0].startswith("IVF"):
        nlist = _parse_int(parts.pop(0), r"IVF(\d+)", factory)
        per_vector += IVF_ID_BYTES
        fixed += nlist * (current_dim * FLOAT32_BYTES + IVF_LIST_OVERHEAD_BYTES)
    elif parts and parts[0].startswith("HNSW"):
        links = _parse_int(parts.pop(0), r"HNSW(\d+)", factory)
        per_vector += (2 * links + 1) * HNSW_LINK_BYTES + HNSW_NODE_BYTES
        parts = parts or ["Flat"]  # "HNSW32" alone stores full vectors
    if len(parts) != 1:
        raise ValueError(f"unsupported faiss factory string {factory!r}")
    code_bytes, code_fixed = _code_bytes(parts[0], current_dim, factory)
    return n_vectors * (per_vector + code_bytes) + fixed + code_fixed


def _opq_bytes(part: str, dim: int) -> tuple[int, int]:
    """(output dim, rotation bytes) of an "OPQm" or "OPQm_dout" pre-transform."""
    match = re.fullmatch(r"OPQ(\d+)(?:_(\d+))?", part)
    if match is None:
        raise ValueError(f"unsupported faiss pre-transform {part!r}")
    d_out = int(match.group(2)) if match.group(2) else dim
    return d_out, d_out * dim * FLOAT32_BYTES


def _code_bytes(code: str, dim: int, factory: str) -> tuple[int, int]:
    """(bytes per vector, fixed trained bytes) of a code part: Flat, SQ8/SQ4/SQfp16, PQ."""
    if code == "Flat":
        return dim * FLOAT32_BYTES, 0
    sq_bits = {"SQ8": 8, "SQ4": 4, "SQfp16": 16, "SQbf16": 16}.get(code)
    if sq_bits is not None:
        return math.ceil(dim * sq_bits / 8), SQ_TRAINED_FLOATS_PER_DIM * dim * FLOAT32_BYTES
    match = re.fullmatch(r"PQ(\d+)(?:x(\d+))?(?:np)?", code)
    if match is None:
        raise ValueError(f"unsupported faiss code {code!r} in {factory!r}")
    m, bits = int(match.group(1)), int(match.group(2) or PQ_BITS)
    if m < 1 or dim % m:
        raise ValueError(f"PQ{m} needs dim divisible by {m}, got dim {dim} in {factory!r}")
    return math.ceil(m * bits / 8), 2**bits * dim * FLOAT32_BYTES


def _parse_int(part: str, pattern: str, factory: str) -> int:
    """The integer captured by `pattern` in `part`, or a ValueError naming the factory."""
    match = re.fullmatch(pattern, part)
    if match is None:
        raise ValueError(f"cannot parse {part!r} in faiss factory string {factory!r}")
    return int(match.group(1))


# --- faiss side (lazy import) ----------------------------------------------------------------


def make_index(choice: IndexChoice, dim: int) -> Any:
    """An empty (untrained) faiss index for `choice` over `dim`-dim vectors, search params set."""
    import faiss

    if choice.metric != METRIC:
        raise ValueError(f"only the inner-product metric {METRIC!r} is supported, got {choice}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    index = faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    apply_search_params(index, choice)
    return index


def apply_search_params(index: Any, params: IndexChoice | Mapping[str, int | None]) -> None:
    """Set nprobe (IVF, also under an OPQ pre-transform) and efSearch (HNSW) on `index`.

    `params` is an IndexChoice or a mapping with optional "nprobe" / "ef_search" keys; None
    values are skipped, so a Flat choice is a no-op. A value the index cannot take raises.
    """
    import faiss

    nprobe, ef_search = _search_values(params)
    if nprobe is not None:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is None:
            kind = type(faiss.downcast_index(index)).__name__
            raise ValueError(f"nprobe={nprobe} given but the index is not IVF: {kind}")
        ivf.nprobe = nprobe
    if ef_search is not None:
        _find_hnsw(index).hnsw.efSearch = ef_search


def _search_values(params: IndexChoice | Mapping[str, int | None]) -> tuple[int | None, ...]:
    """(nprobe, ef_search) from an IndexChoice or a mapping, validated as positive ints."""
    if isinstance(params, IndexChoice):
        values = (params.nprobe, params.ef_search)
    else:
        unknown = set(params) - {"nprobe", "ef_search"}
        if unknown:
            raise ValueError(f"unknown search parameters {sorted(unknown)}: use nprobe, ef_search")
        values = (params.get("nprobe"), params.get("ef_search"))
    return tuple(
        _positive_int_or_none(name, value)
        for name, value in zip(("nprobe", "ef_search"), values, strict=True)
    )


def _positive_int_or_none(name: str, value: object) -> int | None:
    """`value` as a Python int >= 1 (numpy ints accepted), None kept, else ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return int(value)


def _find_hnsw(index: Any) -> Any:
    """The HNSW index inside `index` (directly or under a pre-transform), else ValueError."""
    import faiss

    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if not hasattr(inner, "hnsw"):
        raise ValueError(f"ef_search given but the index is not HNSW: {type(inner).__name__}")
    return inner
