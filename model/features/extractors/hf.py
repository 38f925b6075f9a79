"""Region extractors backed by local transformers models: `grid`, `detr` and `vit`.

- grid: the cells of a convolutional backbone's last feature map (ResNet, ConvNeXt, ...);
- detr: the decoder states of a DETR-family detector's top-scoring object queries;
- vit:  the patch tokens of a ViT / CLIP vision / DINOv2 tower.
Models load from a local directory (`save_pretrained` output plus `preprocessor_config.json`),
never from the network. Each network input has one fixed size (see `preprocess`), so an
image's regions do not depend on the other images of its batch. torch and transformers are
imported when an extractor is built: `model.features.extractors.base` imports this
module to fill the registry and that must stay cheap.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from model.errors import first_line
from model.features.extractors.base import ExtractorSpec, RegionBatch, hash_weights, register
from model.features.extractors.preprocess import (
    PREPROCESSOR_FILE,
    Fit,
    PixelBatch,
    PreprocessConfig,
    default_input_size,
    grid_cells,
    input_boxes_to_fractions,
    load_preprocess_config,
    preprocess_images,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DEFAULT_DETR_REGIONS = 36  # the bottom-up-attention convention of the CHAN / SCAN features
GRID_FITS = ("stretch", "crop")
VIT_FITS = ("stretch", "crop")
DETR_FITS = ("pad", "stretch")  # a crop would hide objects; DETR was trained on padded inputs


class HFExtractor:
    """What the three extractors share: preprocessing, the forward pass, the output batch."""

    def __init__(
        self, model: Any, preprocess: PreprocessConfig, input_size: tuple[int, int], fit: Fit
    ) -> None:
        self.model = model
        self.preprocess = preprocess
        self.input_size = input_size
        self.fit = fit
        self.spec: ExtractorSpec  # set by the builder once the output shape is known

    def extract(self, images: Sequence[Image.Image]) -> RegionBatch:
        """RGB images (any sizes) -> K regions each, in one forward pass."""
        import torch

        spec = self.spec
        if not images:
            return RegionBatch(
                np.zeros((0, spec.num_regions, spec.dim), np.float32),
                np.zeros((0,), np.int32),
                np.zeros((0, spec.num_regions, 4), np.float32),
            )
        batch = preprocess_images(images, self.preprocess, self.input_size, self.fit)
        with torch.inference_mode():
            features, boxes = self.regions(batch)
        counts = np.full(len(images), features.shape[1], dtype=np.int32)
        return RegionBatch(
            np.ascontiguousarray(features.float().numpy()), counts, boxes.astype(np.float32)
        )

    def regions(self, batch: PixelBatch) -> tuple[torch.Tensor, np.ndarray]:
        """-> features (B, K, D) and boxes (B, K, 4) as fractions of the original images."""
        raise NotImplementedError


class GridExtractor(HFExtractor):
    """Cells of the last (optionally average-pooled) feature map of a convolutional model."""

    def __init__(self, *args: Any, pool: tuple[int, int] | None) -> None:
        super().__init__(*args)
        self.pool = pool

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, h, w)."""
        import torch.nn.functional as F

        output = self.model(pixel_values=pixel_values)
        fmap = getattr(output, "last_hidden_state", None)
        if fmap is None or fmap.dim() != 4:
            shape = None if fmap is None else tuple(fmap.shape)
            raise ValueError(
                f"the grid extractor needs a convolutional model whose last_hidden_state is "
                f"(B, C, h, w), this one gives {shape}; use vit:<dir> for transformer towers"
            )
        return F.adaptive_avg_pool2d(fmap, self.pool) if self.pool else fmap

    def regions(self, batch: PixelBatch) -> tuple[torch.Tensor, np.ndarray]:
        import torch

        fmap = self.feature_map(torch.from_numpy(batch.pixel_values))  # (B, C, h, w)
        rows, cols = fmap.shape[-2:]
        height, width = self.input_size
        cells = grid_cells(rows, cols, height / rows, width / cols)  # (h * w, 4) input pixels
        boxes = np.stack([input_boxes_to_fractions(cells, g) for g in batch.geometries])
        return fmap.flatten(2).transpose(1, 2), boxes  # (B, h * w, C), (B, h * w, 4)


class VitExtractor(HFExtractor):
    """Patch tokens of a vision transformer, leading CLS / register tokens dropped."""

    def __init__(self, *args: Any, patch: tuple[int, int], cls: bool) -> None:
        super().__init__(*args)
        self.patch = patch
        self.cls = cls
        self.rows, self.cols = self.input_size[0] // patch[0], self.input_size[1] // patch[1]
        # towers with learned position embeddings refuse other sizes unless told to interpolate
        parameters = inspect.signature(self.model.forward).parameters
        self.forward_options = (
            {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in parameters else {}
        )

    def tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, prefix + rows * cols, D), prefix = CLS and register tokens."""
        output = self.model(pixel_values=pixel_values, **self.forward_options)
        tokens = output.last_hidden_state
        if tokens.dim() != 3 or tokens.shape[1] < self.rows * self.cols + int(self.cls):
            raise ValueError(
                f"the vit extractor expected {self.rows * self.cols} patch tokens"
                f"{' and a CLS token' if self.cls else ''}, the model gives {tuple(tokens.shape)}"
            )
        return tokens

    def regions(self, batch: PixelBatch) -> tuple[torch.Tensor, np.ndarray]:
        import torch

        tokens = self.tokens(torch.from_numpy(batch.pixel_values))
        patches = tokens[:, tokens.shape[1] - self.rows * self.cols :]  # (B, rows * cols, D)
        cells = grid_cells(self.rows, self.cols, *self.patch)
        boxes = np.stack([input_boxes_to_fractions(cells, g) for g in batch.geometries])
        if self.cls:  # the global token as one more region spanning the image
            patches = torch.cat([patches, tokens[:, :1]], dim=1)
            whole = np.broadcast_to(np.array([0, 0, 1, 1], np.float32), (len(boxes), 1, 4))
            boxes = np.concatenate([boxes, whole], axis=1)
        return patches, boxes


class DetrExtractor(HFExtractor):
    """Decoder states of the K object queries a DETR-family detector is most sure of."""

    def __init__(self, *args: Any, num_regions: int) -> None:
        super().__init__(*args)
        self.num_regions = num_regions
        # RT-DETR takes no mask; padding then only costs some accuracy, not batch independence
        self.use_mask = "pixel_mask" in inspect.signature(self.model.forward).parameters

    def query_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, Q, C) -> (B, Q): the best object-class probability of each query."""
        if logits.shape[-1] == self.model.config.num_labels + 1:
            # DETR: softmax over the classes and a last "no object" class that never counts
            return logits.softmax(-1)[..., :-1].max(-1).values
        return logits.sigmoid().max(-1).values  # focal-loss heads (Conditional / Deformable / RT)

    def regions(self, batch: PixelBatch) -> tuple[torch.Tensor, np.ndarray]:
        import torch

        options = {"pixel_mask": torch.from_numpy(batch.pixel_mask)} if self.use_mask else {}
        output = self.model(pixel_values=torch.from_numpy(batch.pixel_values), **options)
        hidden = output.last_hidden_state  # (B, Q, d)
        scores = self.query_scores(output.logits)  # (B, Q)
        # stable, so equal scores keep query order and the choice is deterministic
        top = torch.argsort(scores, dim=1, descending=True, stable=True)[:, : self.num_regions]
        features = hidden.gather(1, top[..., None].expand(-1, -1, hidden.shape[-1]))
        centre = output.pred_boxes.gather(1, top[..., None].expand(-1, -1, 4))  # cx cy w h
        # DETR predicts fractions of the unpadded image, i.e. of the original image
        xy, half = centre[..., :2], centre[..., 2:] / 2
        boxes = torch.cat([xy - half, xy + half], dim=-1).clamp(0.0, 1.0)  # (B, K, 4)
        return features, boxes.numpy()


@register("grid")
def build_grid(
    directory: Path | None,
    *,
    input_size: int | Sequence[int] | None = None,
    fit: str = "stretch",
    pool: int | Sequence[int] | None = None,
) -> GridExtractor:
    """Grid regions of a convolutional model in `directory`.

    input_size: [H, W] (or one int for a square) the network sees; default the config's size.
    fit: "stretch" (whole image, default) or "crop" (the config's resize and center crop).
    pool: average-pool the feature map to [h, w] cells (or n x n); default keep it."""
    path = check_model_dir(directory, "grid")
    preprocess = load_preprocess_config(path)
    size = parse_input_size(input_size, preprocess)
    chosen = parse_fit(fit, GRID_FITS, "grid")
    cells = None if pool is None else parse_pair(pool, "pool")
    model = load_image_model("AutoModel", path, "grid")
    extractor = GridExtractor(model, preprocess, size, chosen, pool=cells)
    channels, rows, cols = probe_grid(extractor, size)
    if cells and (cells[0] > rows or cells[1] > cols):
        raise ValueError(f"pool {list(cells)} is larger than the {rows}x{cols} feature map")
    rows, cols = cells or (rows, cols)
    options = {"input_size": list(size), "fit": chosen, "pool": list(cells) if cells else None}
    extractor.spec = make_spec("grid", path, rows * cols, channels, size, preprocess, options)
    return extractor


@register("detr")
def build_detr(
    directory: Path | None,
    *,
    input_size: int | Sequence[int] | None = None,
    fit: str | None = None,
    num_regions: int = DEFAULT_DETR_REGIONS,
) -> DetrExtractor:
    """The top `num_regions` object queries of a DETR-family detector in `directory`.

    input_size: [H, W] canvas (or one int); default a square of the config's shortest edge.
    fit: "pad" (keep the aspect, pad with a pixel mask; default when the config pads) or
    "stretch". num_regions: K, capped at the detector's number of queries."""
    path = check_model_dir(directory, "detr")
    preprocess = load_preprocess_config(path)
    size = parse_input_size(input_size, preprocess)
    chosen = parse_fit(fit or ("pad" if preprocess.do_pad else "stretch"), DETR_FITS, "detr")
    if not isinstance(num_regions, int) or num_regions < 1:
        raise ValueError(f"num_regions must be a positive int, got {num_regions!r}")
    model = load_image_model("AutoModelForObjectDetection", path, "detr")
    queries = getattr(model.config, "num_queries", None)
    count = min(num_regions, queries) if queries else num_regions
    extractor = DetrExtractor(model, preprocess, size, chosen, num_regions=count)
    options = {"input_size": list(size), "fit": chosen, "num_regions": num_regions}
    dim = model.config.d_model
    extractor.spec = make_spec("detr", path, count, dim, size, preprocess, options)
    return extractor


@register("vit")
def build_vit(
    directory: Path | None,
    *,
    input_size: int | Sequence[int] | None = None,
    fit: str = "stretch",
    cls: bool = False,
) -> VitExtractor:
    """Patch-token regions of a ViT / CLIP / SigLIP vision / DINOv2 model in `directory`.

    input_size: [H, W] (or one int); default the config's crop or resize size.
    fit: "stretch" (default) or "crop". cls: append the CLS token as a whole-image region."""
    path = check_model_dir(directory, "vit")
    preprocess = load_preprocess_config(path)
    size = parse_input_size(input_size, preprocess)
    chosen = parse_fit(fit, VIT_FITS, "vit")
    tower = vision_tower(load_image_model("AutoModel", path, "vit", allow_text=True), path)
    patch = parse_pair(getattr(tower.config, "patch_size", None), f"patch_size in {path}")
    if size[0] < patch[0] or size[1] < patch[1]:
        raise ValueError(f"input_size {list(size)} is smaller than one {list(patch)} patch")
    extractor = VitExtractor(tower, preprocess, size, chosen, patch=patch, cls=bool(cls))
    dim = probe_vit(extractor, size)
    count = extractor.rows * extractor.cols + int(bool(cls))
    options = {"input_size": list(size), "fit": chosen, "cls": bool(cls)}
    extractor.spec = make_spec("vit", path, count, dim, size, preprocess, options)
    return extractor


def check_model_dir(directory: Path | None, kind: str) -> Path:
    """The resolved model directory; FileNotFoundError when it cannot hold a model."""
    if directory is None:
        raise ValueError(f"the {kind} extractor needs a local model directory: {kind}:<dir>")
    path = Path(directory).expanduser().resolve()
    need = (
        f"a {kind} model directory must hold config.json, the weights (*.safetensors) and "
        f"{PREPROCESSOR_FILE}, as written by save_pretrained"
    )
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory; {need}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; {need}")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise FileNotFoundError(f"{path} has no weight files; {need}")
    return path


def load_image_model(auto_class: str, path: Path, kind: str, allow_text: bool = False) -> Any:
    """Load with a transformers Auto class in float32, eval mode, from local files only."""
    import torch
    import transformers

    loader = getattr(transformers, auto_class)
    try:
        model = loader.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    except (ValueError, KeyError, OSError) as err:
        raise ValueError(
            f"{path}: the {kind} extractor cannot load it as {auto_class}: {first_line(err)}"
        ) from err
    image_input = getattr(model, "main_input_name", None) == "pixel_values"
    if not image_input and not (allow_text and hasattr(model, "vision_model")):
        raise ValueError(
            f"{path} holds a {model.config.model_type} model that does not take images; the "
            f"{kind} extractor needs an image model"
        )
    logger.info("%s extractor: loaded %s from %s", kind, type(model).__name__, path)
    return model.eval()


def vision_tower(model: Any, path: Path) -> Any:
    """The image tower of a two-tower model (CLIP, SigLIP), else the model itself."""
    if getattr(model, "main_input_name", None) == "pixel_values":
        return model
    tower = model.vision_model  # transformers 5: a CLIPVisionModel / SiglipVisionModel
    logger.info("vit extractor: using the vision tower of the %s in %s", type(model).__name__, path)
    return tower.eval()


def probe_grid(extractor: GridExtractor, size: tuple[int, int]) -> tuple[int, int, int]:
    """(C, h, w) of the unpooled feature map for one blank input of `size`."""
    import torch

    pool, extractor.pool = extractor.pool, None
    try:
        with torch.inference_mode():
            fmap = extractor.feature_map(torch.zeros(1, 3, *size))
    finally:
        extractor.pool = pool
    return int(fmap.shape[1]), int(fmap.shape[2]), int(fmap.shape[3])


def probe_vit(extractor: VitExtractor, size: tuple[int, int]) -> int:
    """D of the tokens for one blank input of `size` (and that the token count fits)."""
    import torch

    with torch.inference_mode():
        tokens = extractor.tokens(torch.zeros(1, 3, *size))
    if extractor.cls and tokens.shape[1] == extractor.rows * extractor.cols:
        raise ValueError("cls=True but this model has no CLS token (only patch tokens)")
    return int(tokens.shape[-1])


def parse_input_size(value: Any, preprocess: PreprocessConfig) -> tuple[int, int]:
    """None -> the config's size; an int -> a square; [H, W] -> itself."""
    if value is None:
        return default_input_size(preprocess)
    return parse_pair(value, "input_size")


def parse_pair(value: Any, name: str) -> tuple[int, int]:
    """An int n -> (n, n); a pair of positive ints -> itself; else ValueError naming `name`."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return int(value[0]), int(value[1])
    raise ValueError(
        f"{name} must be a positive int or [height, width] of positive ints, got {value!r}"
    )


def parse_fit(value: Any, allowed: tuple[str, ...], kind: str) -> Fit:
    if value not in allowed:
        raise ValueError(
            f"the {kind} extractor's fit must be one of {', '.join(allowed)}, got {value!r}"
        )
    return value


def make_spec(
    name: str,
    path: Path,
    num_regions: int,
    dim: int,
    size: tuple[int, int],
    preprocess: PreprocessConfig,
    options: dict[str, Any],
) -> ExtractorSpec:
    mean, std = preprocess.image_mean, preprocess.image_std
    return ExtractorSpec(
        name=name,
        num_regions=num_regions,
        dim=dim,
        weights_path=str(path),
        weights_sha256=hash_weights(path),
        input_size=list(size),
        image_mean=list(mean) if mean is not None else None,
        image_std=list(std) if std is not None else None,
        options=options,
    )
