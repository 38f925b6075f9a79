"""Tests of the transformers-backed extractors (grid, detr, vit) on tiny randomly
initialised models saved into temporary directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.features.extractors.base import create_extractor, load_extractor
from model.features.extractors.preprocess import (
    load_preprocess_config,
    preprocess_images,
)
from tests.model.features.conftest import MEAN, STD

SIZES = [(60, 40), (30, 70), (50, 50), (97, 13)]  # (width, height): landscape, portrait, ...


def write_preprocessor(directory: Path, **overrides) -> None:
    config = {"do_resize": True, "size": {"height": 32, "width": 32}, "do_normalize": True}
    config.update({"image_mean": MEAN, "image_std": STD, "resample": 2, **overrides})
    (directory / "preprocessor_config.json").write_text(json.dumps(config))


def tiny_resnet_config(**kwargs):
    from transformers import ResNetConfig

    return ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", **kwargs
    )


def save_grid(directory: Path, seed: int = 0) -> Path:
    from transformers import ResNetModel

    torch.manual_seed(seed)
    ResNetModel(tiny_resnet_config()).save_pretrained(directory)
    write_preprocessor(directory, size={"shortest_edge": 64}, crop_size=64, do_center_crop=True)
    return directory


def save_detr(directory: Path) -> Path:
    from transformers import DetrConfig, DetrForObjectDetection

    torch.manual_seed(0)
    config = DetrConfig(
        backbone_config=tiny_resnet_config(out_features=["stage2"]),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=12,
        num_labels=5,
    )
    model = DetrForObjectDetection(config)
    # DETR's init makes every query of a 1-layer decoder alike (zero heads, tiny query
    # embeddings): spread them so the scores, boxes and features differ per query
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(k in name for k in ("query_position", "class_labels", "bbox_", "decoder")):
                param.normal_(0.0, 0.5)
    model.save_pretrained(directory)
    write_preprocessor(directory, size={"shortest_edge": 64, "longest_edge": 96}, do_pad=True)
    return directory


def save_vit(directory: Path) -> Path:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(directory)
    write_preprocessor(directory)
    return directory


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-extractors")
    return {
        "grid": save_grid(root / "grid"),
        "detr": save_detr(root / "detr"),
        "vit": save_vit(root / "vit"),
    }


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


# ---------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("kind", ["grid", "detr", "vit"])
def test_output_shapes_boxes_and_determinism(kind, model_dirs, images):
    extractor = create_extractor(f"{kind}:{model_dirs[kind]}")
    spec = extractor.spec
    batch = extractor.extract(images)
    n, k, d = len(images), spec.num_regions, spec.dim
    assert batch.features.shape == (n, k, d) and batch.features.dtype == np.float32
    assert batch.boxes.shape == (n, k, 4) and batch.boxes.dtype == np.float32
    assert batch.counts.dtype == np.int32 and (batch.counts == k).all()
    assert np.isfinite(batch.features).all()
    boxes = batch.boxes
    assert (boxes >= 0).all() and (boxes <= 1).all()
    assert (boxes[..., 0] <= boxes[..., 2]).all() and (boxes[..., 1] <= boxes[..., 3]).all()
    again = extractor.extract(images)
    np.testing.assert_array_equal(batch.features, again.features)
    np.testing.assert_array_equal(batch.boxes, again.boxes)


@pytest.mark.parametrize("kind", ["grid", "detr", "vit"])
def test_rows_do_not_depend_on_the_batch(kind, model_dirs, images):
    extractor = create_extractor(kind, model_dirs[kind])
    together = extractor.extract(images)
    for row, image in enumerate(images):
        alone = extractor.extract([image])
        np.testing.assert_allclose(together.features[row], alone.features[0], atol=1e-5)
        np.testing.assert_allclose(together.boxes[row], alone.boxes[0], atol=1e-5)


def test_empty_input_gives_empty_arrays(model_dirs):
    extractor = create_extractor(f"vit:{model_dirs['vit']}")
    batch = extractor.extract([])
    assert batch.features.shape == (0, extractor.spec.num_regions, extractor.spec.dim)


def test_spec_describes_and_rebuilds_the_extractor(model_dirs, images, tmp_path):
    extractor = create_extractor(f"grid:{model_dirs['grid']}", pool=2)
    spec = extractor.spec
    assert (spec.name, spec.num_regions, spec.dim) == ("grid", 4, 16)
    assert spec.weights_path == str(model_dirs["grid"].resolve())
    assert spec.input_size == [64, 64] and spec.image_mean == MEAN and spec.image_std == STD
    assert spec.options == {"input_size": [64, 64], "fit": "stretch", "pool": [2, 2]}
    rebuilt = load_extractor(json.loads(json.dumps(spec.to_dict())))
    np.testing.assert_array_equal(
        rebuilt.extract(images).features, extractor.extract(images).features
    )
    # other weights: another digest, and the old spec refuses them
    moved = save_grid(tmp_path / "grid", seed=1)
    other = create_extractor(f"grid:{moved}", pool=2)
    assert other.spec.weights_sha256 != spec.weights_sha256
    shutil.rmtree(moved)
    shutil.copytree(model_dirs["grid"], moved)
    stale = spec.to_dict() | {"weights_path": str(moved)}
    assert load_extractor(stale).spec.weights_sha256 == spec.weights_sha256
    save_grid(moved, seed=2)
    with pytest.raises(ValueError, match="changed since"):
        load_extractor(stale)


def test_grid_cells_map_to_the_image(model_dirs):
    extractor = create_extractor(f"grid:{model_dirs['grid']}")
    assert extractor.spec.num_regions == 64  # stride 8 on 64 x 64
    boxes = extractor.extract([Image.new("RGB", (80, 40))]).boxes[0]
    np.testing.assert_allclose(boxes[0], [0, 0, 1 / 8, 1 / 8])
    np.testing.assert_allclose(boxes[-1], [7 / 8, 7 / 8, 1, 1])
    # crop: the config's 64-short-edge resize and 64 x 64 centre crop of a 2:1 image keep
    # its middle half, so the cells tile x in [0.25, 0.75]
    cropped = create_extractor(f"grid:{model_dirs['grid']}", fit="crop")
    boxes = cropped.extract([Image.new("RGB", (80, 40))]).boxes[0]
    np.testing.assert_allclose(boxes[0], [0.25, 0, 0.25 + 1 / 16, 1 / 8])
    np.testing.assert_allclose(boxes[-1], [0.75 - 1 / 16, 7 / 8, 0.75, 1])


def test_detr_keeps_the_best_queries_in_score_order(model_dirs, images):
    from transformers import AutoModelForObjectDetection

    extractor = create_extractor(f"detr:{model_dirs['detr']}", num_regions=5)
    spec = extractor.spec
    assert (spec.num_regions, spec.dim, spec.input_size) == (5, 16, [64, 64])
    assert spec.options["fit"] == "pad"  # the config pads
    assert create_extractor(f"detr:{model_dirs['detr']}").spec.num_regions == 12  # all queries
    got = extractor.extract(images[:2])
    # oracle: the detector run directly on the same inputs, queries ranked by hand
    model = AutoModelForObjectDetection.from_pretrained(model_dirs["detr"]).eval()
    batch = preprocess_images(
        images[:2], load_preprocess_config(model_dirs["detr"]), (64, 64), "pad"
    )
    with torch.no_grad():
        out = model(
            pixel_values=torch.from_numpy(batch.pixel_values),
            pixel_mask=torch.from_numpy(batch.pixel_mask),
        )
    scores = out.logits.softmax(-1)[..., :-1].max(-1).values.numpy()
    for row in range(2):
        top = np.argsort(-scores[row], kind="stable")[:5]
        np.testing.assert_allclose(got.features[row], out.last_hidden_state[row, top], atol=1e-5)
        cx, cy, w, h = out.pred_boxes[row, top].numpy().T
        expected = np.clip(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), 0, 1)
        np.testing.assert_allclose(got.boxes[row], expected, atol=1e-5)


def test_vit_drops_cls_and_can_add_it_back(model_dirs, images):
    extractor = create_extractor(f"vit:{model_dirs['vit']}")
    assert (extractor.spec.num_regions, extractor.spec.dim) == (16, 16)  # 4 x 4 patches of 8
    with_cls = create_extractor(f"vit:{model_dirs['vit']}", cls=True)
    assert with_cls.spec.num_regions == 17
    plain, extra = extractor.extract(images), with_cls.extract(images)
    np.testing.assert_allclose(extra.features[:, :16], plain.features, atol=1e-6)
    np.testing.assert_array_equal(extra.boxes[:, 16], np.tile([0, 0, 1, 1], (len(images), 1)))
    # another input size interpolates the position embeddings: 48 / 8 = 6 x 6 patches
    larger = create_extractor(f"vit:{model_dirs['vit']}", input_size=48)
    assert larger.extract(images[:1]).features.shape == (1, 36, 16)


def test_vit_drops_register_tokens(tmp_path, images):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    config = Dinov2WithRegistersConfig(
        image_size=28, patch_size=7, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_register_tokens=3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Dinov2WithRegistersModel(config).eval()
    model.save_pretrained(tmp_path)
    write_preprocessor(tmp_path, size={"shortest_edge": 28}, do_center_crop=True, crop_size=28)
    extractor = create_extractor(f"vit:{tmp_path}")
    got = extractor.extract(images[:1]).features
    assert got.shape == (1, 16, 16)
    batch = preprocess_images(images[:1], extractor.preprocess, (28, 28), "stretch")
    with torch.no_grad():
        tokens = model(pixel_values=torch.from_numpy(batch.pixel_values)).last_hidden_state
    np.testing.assert_allclose(got[0], tokens[0, 1 + 3 :], atol=1e-5)


def test_vit_uses_the_vision_tower_of_clip(tmp_path, images):
    from transformers import CLIPConfig, CLIPModel

    tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    config = CLIPConfig(
        text_config=tower | {"num_attention_heads": 2, "vocab_size": 50},
        vision_config=tower | {"num_attention_heads": 2, "image_size": 32, "patch_size": 16},
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(tmp_path)
    write_preprocessor(tmp_path, size=32, do_center_crop=True, crop_size=32)
    extractor = create_extractor(f"vit:{tmp_path}", cls=True)
    assert (extractor.spec.num_regions, extractor.spec.dim) == (5, 16)
    assert extractor.extract(images[:2]).features.shape == (2, 5, 16)


@pytest.mark.parametrize("kind", ["grid", "detr", "vit"])
def test_missing_or_empty_directories_are_named(kind, tmp_path):
    with pytest.raises(ValueError, match=f"{kind}:<dir>"):
        create_extractor(kind)
    with pytest.raises(FileNotFoundError, match=r"is not a directory.*config\.json"):
        create_extractor(f"{kind}:{tmp_path / 'nowhere'}")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        create_extractor(f"{kind}:{tmp_path}")


def test_wrong_models_and_options_get_clear_errors(model_dirs, tiny_bert_dir, tmp_path):
    with pytest.raises(ValueError, match=r"last_hidden_state is \(B, C, h, w\)"):
        create_extractor(f"grid:{model_dirs['vit']}")
    with pytest.raises(ValueError, match="cannot load it as AutoModelForObjectDetection"):
        create_extractor(f"detr:{model_dirs['grid']}")
    text_model = shutil.copytree(tiny_bert_dir, tmp_path / "bert")
    write_preprocessor(text_model)
    with pytest.raises(ValueError, match="bert model that does not take images"):
        create_extractor(f"vit:{text_model}")
    with pytest.raises(ValueError, match="fit must be one of stretch, crop"):
        create_extractor(f"grid:{model_dirs['grid']}", fit="pad")
    with pytest.raises(ValueError, match="pool"):
        create_extractor(f"grid:{model_dirs['grid']}", pool=9)
    with pytest.raises(ValueError, match="input_size"):
        create_extractor(f"vit:{model_dirs['vit']}", input_size=[32])
    with pytest.raises(ValueError, match="num_regions"):
        create_extractor(f"detr:{model_dirs['detr']}", num_regions=0)
    # weights without a preprocessor config
    shutil.copytree(model_dirs["vit"], tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match=r"preprocessor_config\.json is missing"):
        create_extractor(f"vit:{tmp_path / 'vit'}")


def test_bench_extract_reports_each_extractor(capsys):
    from app.cli import main
    from model.features.bench import parse_extractors

    with pytest.raises(ValueError, match="--extractors"):
        parse_extractors("grid,yolo")
    args = ["--extractors", "demo", "--images", "4", "--batch-size", "2", "--json"]
    assert main(["bench", "extract", *args]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    row = report["extractors"]["demo"]
    assert row["images_per_s"] > 0 and row["num_regions"] == 10 and row["peak_rss_mb"] > 0
