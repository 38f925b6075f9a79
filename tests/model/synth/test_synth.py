"""The synthetic world: deterministic, true captions, pixels that agree with the records.

The caption checker below reads only world.json's word lists and the scene records; it
knows nothing of the generator's templates beyond "determiner, size?, colour, shape".
"""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import model.synth.world as synth
from model.synth.world import generate_world, split_counts
from tests.model.synth.conftest import SEED, N, read_jsonl


def drop_split(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key != "split"} for row in rows]


def world_files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


# ------------------------------------------------------------------ splits and arguments


def test_split_counts_defaults_and_fractions():
    assert split_counts(100) == {"train": 72, "dev": 14, "test": 14}
    assert split_counts(7000) == {"train": 5000, "dev": 1000, "test": 1000}
    assert split_counts(20_000) == {"train": 18_000, "dev": 1000, "test": 1000}
    assert split_counts(3) == {"train": 1, "dev": 1, "test": 1}
    for n in (3, 4, 7, 40, 101, 7001):
        counts = split_counts(n)
        assert sum(counts.values()) == n and min(counts.values()) >= 1
    assert split_counts(100, (0.6, 0.2, 0.2)) == {"train": 60, "dev": 20, "test": 20}


@pytest.mark.parametrize(
    ("num_images", "splits", "message"),
    [
        (2, None, "num_images"),
        (10, (0.5, 0.5, 0.0), "positive"),
        (10, (0.5, 0.3, 0.3), "sum to 1"),
        (10, (0.5, 0.5), "positive"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, num_images, splits, message):
    with pytest.raises(ValueError, match=message):
        generate_world(tmp_path / "w", num_images, splits=splits, progress=False)
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files(world, tmp_path):
    again = generate_world(tmp_path / "again", N, seed=SEED, progress=False).out_dir
    assert world_files(again) == world_files(world)


def test_other_seed_gives_other_world(world, tmp_path):
    other = generate_world(tmp_path / "other", N, seed=SEED + 1, progress=False).out_dir
    assert (other / "captions.jsonl").read_text() != (world / "captions.jsonl").read_text()
    same_images = [
        (other / "images" / name).read_bytes() == (world / "images" / name).read_bytes()
        for name in ("img000000.png", "img000001.png", "img000002.png")
    ]
    assert not any(same_images)


def test_image_i_does_not_depend_on_the_number_of_images(world, tmp_path):
    small = generate_world(tmp_path / "small", 20, seed=SEED, progress=False).out_dir
    for name in (small / "images").iterdir():
        assert name.read_bytes() == (world / "images" / name.name).read_bytes()
    small_scenes = read_jsonl(small / "scenes.jsonl")
    assert drop_split(small_scenes) == drop_split(read_jsonl(world / "scenes.jsonl")[:20])
    small_captions = read_jsonl(small / "captions.jsonl")
    assert drop_split(small_captions) == drop_split(read_jsonl(world / "captions.jsonl")[:100])


# -------------------------------------------------------------------------- the pixels


def saturation_value(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    top, bottom = pixels.max(-1).astype(float), pixels.min(-1).astype(float)
    return (top - bottom) / np.maximum(top, 1), top / 255


def test_pixels_agree_with_scene_records(world):
    world_json = json.loads((world / "world.json").read_text())
    names = list(world_json["palette"])
    palette = np.array([world_json["palette"][name] for name in names], float)
    for scene in read_jsonl(world / "scenes.jsonl"):
        pixels = np.asarray(Image.open(world / scene["file"]).convert("RGB"))
        assert pixels.shape == (scene["height"], scene["width"], 3)
        saturation, value = saturation_value(pixels)
        foreground = (saturation > 0.4) | (value < 0.35)
        inside = np.zeros(foreground.shape, bool)
        for obj in scene["objects"]:
            x0, y0, x1, y1 = obj["box"]
            inside[y0:y1, x0:x1] = True
            patch = pixels[y0:y1, x0:x1][foreground[y0:y1, x0:x1]].astype(float)
            assert len(patch) > 0.3 * (x1 - x0) * (y1 - y0), (scene["image_id"], obj)
            nearest = ((patch[:, None, :] - palette[None]) ** 2).sum(-1).argmin(1)
            assert names[np.bincount(nearest).argmax()] == obj["colour"], (scene["image_id"], obj)
        # nothing is drawn outside the recorded boxes, and the background stays pale
        assert not foreground[~inside].any(), scene["image_id"]
        assert saturation[~inside].max() < 0.15 and value[~inside].min() > 0.7


def test_image_corners_are_light_background(world):
    for path in sorted((world / "images").iterdir()):
        pixels = np.asarray(Image.open(path).convert("RGB"))
        corners = np.concatenate(
            [pixels[:2, :2], pixels[:2, -2:], pixels[-2:, :2], pixels[-2:, -2:]]
        )
        saturation, value = saturation_value(corners)
        assert saturation.max() < 0.15 and value.min() > 0.7, path.name


def test_objects_overlap_little_and_number_one_to_five(world):
    for scene in read_jsonl(world / "scenes.jsonl"):
        boxes = [obj["box"] for obj in scene["objects"]]
        assert 1 <= len(boxes) <= 5
        for i, a in enumerate(boxes):
            covered = 0
            for j, b in enumerate(boxes):
                if i != j:
                    width = min(a[2], b[2]) - max(a[0], b[0])
                    height = min(a[3], b[3]) - max(a[1], b[1])
                    covered += max(0, width) * max(0, height)
            assert covered <= 0.15 * (a[2] - a[0]) * (a[3] - a[1]) + 1e-9


# ------------------------------------------------------------------------ binding twins


def test_binding_twins_share_colours_and_shapes_but_not_pairs(world):
    scenes = read_jsonl(world / "scenes.jsonl")
    by_id = {scene["image_id"]: scene for scene in scenes}

    def signature(scene: dict) -> tuple[Counter, Counter, Counter]:
        objects = scene["objects"]
        return (
            Counter(o["colour"] for o in objects),
            Counter(o["shape"] for o in objects),
            Counter((o["colour"], o["shape"]) for o in objects),
        )

    twins = [
        (a, b)
        for i, a in enumerate(scenes)
        for b in scenes[i + 1 :]
        if a["split"] == b["split"]
        and signature(a)[:2] == signature(b)[:2]
        and signature(a)[2] != signature(b)[2]
    ]
    assert len(twins) >= 3
    marked = [scene for scene in scenes if scene["twin_of"]]
    assert 0.1 * N <= len(marked) <= 0.35 * N
    for scene in marked:
        base = by_id[scene["twin_of"]]
        assert base["split"] == scene["split"]
        assert signature(base)[:2] == signature(scene)[:2]
        assert signature(base)[2] != signature(scene)[2]


# -------------------------------------------------------------------------- the layout


def test_split_files_follow_the_precomp_layout(world):
    world_json = json.loads((world / "world.json").read_text())
    assert world_json["format"] == "chan-synth" and world_json["version"] == 1
    assert world_json["counts"] == split_counts(N)
    scenes = read_jsonl(world / "scenes.jsonl")
    captions = read_jsonl(world / "captions.jsonl")
    for split, count in world_json["counts"].items():
        ids = (world / f"{split}_ids.txt").read_text().splitlines()
        assert ids == [s["image_id"] for s in scenes if s["split"] == split] and len(ids) == count
        files = (world / f"{split}_images.txt").read_text().splitlines()
        assert files == [f"images/{image}.png" for image in ids]
        assert all((world / file).is_file() for file in files)
        caps = (world / f"{split}_caps.txt").read_text().splitlines()
        rows = [row for row in captions if row["split"] == split]
        assert caps == [row["text"] for row in rows] and len(caps) == 5 * count
        assert [row["image_id"] for row in rows] == [image for image in ids for _ in range(5)]
        assert [row["caption_id"] for row in rows] == [f"{i}_{k}" for i in ids for k in range(5)]
    assert len(list((world / "images").iterdir())) == N


def test_a_finished_world_is_reused_and_other_content_refused(tmp_path):
    out = tmp_path / "world"
    out.mkdir()  # an empty directory is fine
    first = generate_world(out, 12, seed=1, progress=False)
    assert not first.reused and first.counts == split_counts(12)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    second = generate_world(out, 12, seed=1, progress=False)
    assert second.reused and second.counts == first.counts
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    with pytest.raises(ValueError, match="pick a new or empty directory"):
        generate_world(out, 12, seed=2, progress=False)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="pick a new or empty directory"):
        generate_world(stray, 12, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stray", "world"]


def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(synth, "render_scene", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate_world(tmp_path / "world", 12, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_then_reuses(tmp_path, capsys):
    from app.cli import main

    assert main(["synth", "--out", str(tmp_path / "w"), "--images", "6", "--seed", "2"]) == 0
    assert "wrote 6 images" in capsys.readouterr().out
    assert main(["synth", "--out", str(tmp_path / "w"), "--images", "6", "--seed", "2"]) == 0
    assert "reused 6 images" in capsys.readouterr().out
    assert main(["synth", "--out", str(tmp_path / "w"), "--images", "7"]) == 2
    assert "empty directory" in capsys.readouterr().err
