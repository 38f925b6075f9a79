"""The extractor contract, its self-describing spec, and the name -> builder registry."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractorSpec:
    """Everything needed to extract regions of a query image exactly as the gallery's.

    Written next to the features (`{split}_extract.json`) and copied into checkpoints and
    index manifests."""

    name: str  # registry name: demo | grid | detr | vit
    num_regions: int  # K, regions per image (rows of the output, padded when fewer)
    dim: int  # D, feature size of one region
    weights_path: str | None = None  # local model directory, None for weight-free extractors
    weights_sha256: str | None = None  # digest of the weight files (see hash_weights)
    input_size: list[int] | None = None  # [height, width] the network sees, None if native
    image_mean: list[float] | None = None  # per-channel normalisation, None if not used
    image_std: list[float] | None = None
    options: dict[str, Any] = field(default_factory=dict)  # extractor-specific settings
    version: int = 1  # bumped when an extractor's output changes for the same inputs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExtractorSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"extractor spec has unknown fields {sorted(unknown)}")
        return cls(**data)


@dataclass
class RegionBatch:
    """Extractor output for B images; rows past counts[b] are zero padding."""

    features: np.ndarray  # (B, K, D) float32
    counts: np.ndarray  # (B,) int32, valid regions per image, 1..K
    boxes: np.ndarray  # (B, K, 4) float32, x0 y0 x1 y1 as fractions of width / height


class RegionExtractor(Protocol):
    """What `chan extract`, the index builder and the service call."""

    spec: ExtractorSpec

    def extract(self, images: Sequence[Image.Image]) -> RegionBatch:
        """RGB images (any sizes) -> their regions. Output row b depends on image b only."""
        ...


Builder = Callable[..., RegionExtractor]
_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make `name` (or `name:<dir>`) a valid extractor argument."""

    def wrap(builder: Builder) -> Builder:
        _REGISTRY[name] = builder
        return builder

    return wrap


def available() -> list[str]:
    _import_builtin()
    return sorted(_REGISTRY)


def create_extractor(
    name: str, weights: str | Path | None = None, **options: Any
) -> RegionExtractor:
    """Build an extractor from `demo`, `grid:<dir>`, `detr:<dir>` or `vit:<dir>`
    (equivalently `grid` with weights=<dir>). Raises ValueError for an unknown name."""
    _import_builtin()
    kind, _, path = name.partition(":")
    if path and weights is not None and Path(path) != Path(weights):
        raise ValueError(f"extractor {name!r} names a directory and --weights {weights} another")
    if kind not in _REGISTRY:
        raise ValueError(f"unknown extractor {kind!r}; available: {', '.join(sorted(_REGISTRY))}")
    directory = path or weights
    return _REGISTRY[kind](Path(directory) if directory else None, **options)


def load_extractor(spec: ExtractorSpec | dict[str, Any], verify: bool = True) -> RegionExtractor:
    """Rebuild the extractor a spec describes; with verify, refuse weights whose digest or
    output shape differ from the spec's."""
    spec = spec if isinstance(spec, ExtractorSpec) else ExtractorSpec.from_dict(spec)
    extractor = create_extractor(spec.name, spec.weights_path, **spec.options)
    if verify:
        got = extractor.spec
        if spec.weights_sha256 and got.weights_sha256 != spec.weights_sha256:
            raise ValueError(
                f"weights in {spec.weights_path} changed since the features were extracted "
                f"(sha256 {got.weights_sha256} != {spec.weights_sha256}); point to the original"
            )
        if (got.num_regions, got.dim, got.version) != (spec.num_regions, spec.dim, spec.version):
            raise ValueError(
                f"extractor {spec.name} now gives K={got.num_regions} D={got.dim} v{got.version}, "
                f"the spec says K={spec.num_regions} D={spec.dim} v{spec.version}"
            )
    return extractor


def hash_weights(directory: Path) -> str:
    """sha256 over the weight files of a model directory (names and bytes, sorted)."""
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and p.suffix in {".safetensors", ".bin", ".pt", ".pth", ".json"}
    )
    if not files:
        raise FileNotFoundError(f"{directory} holds no weight or config files")
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _import_builtin() -> None:
    """Import the modules that register the built-in extractors (cheap: no torch models
    are built until an extractor is created)."""
    from model.features.extractors import demo, hf  # noqa: F401
