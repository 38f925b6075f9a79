"""`extract_split` / `chan extract`: aligned rows, failures reported, resume, reuse."""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from app.cli import main
from model.features.extract import extract_split, read_extract_report
from model.features.extractors.base import create_extractor
from model.features.images import list_images


def make_gallery(folder, count: int = 9):
    """count small images with a coloured square that moves, plus two broken files."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = Image.new("RGB", (64, 48), (220, 220, 215))
        ImageDraw.Draw(image).rectangle((index * 4, 10, index * 4 + 20, 30), fill=(200, 30, 30))
        image.save(folder / f"img{index:02d}.png")
    (folder / "img03b.jpg").write_text("not a jpeg at all")  # sorts between 03 and 04
    good = (folder / "img00.png").read_bytes()
    (folder / "img05c.png").write_bytes(good[: len(good) // 2])  # truncated
    return list_images(folder)


def load_outputs(out, split="gallery"):
    return (
        np.load(out / f"{split}_ims.npy"),
        np.load(out / f"{split}_counts.npy"),
        np.load(out / f"{split}_boxes.npy"),
        (out / f"{split}_ids.txt").read_text().split(),
    )


def test_rows_stay_aligned_and_failures_are_reported(tmp_path):
    entries = make_gallery(tmp_path / "images")
    extractor = create_extractor("demo")
    result = extract_split(entries, extractor, tmp_path / "out", "gallery", batch_size=4)
    ims, counts, boxes, ids = load_outputs(tmp_path / "out")
    assert ids == [e.image_id for e in entries] and len(ids) == 11
    assert ims.shape == (11, 10, 256) and ims.dtype == np.float32 and boxes.shape == (11, 10, 4)
    bad = {ids.index("img03b"), ids.index("img05c")}
    assert {f["index"] for f in result.failed} == bad
    assert all(f["reason"] for f in result.failed)
    for row in range(11):
        if row in bad:
            assert counts[row] == 0 and not ims[row].any()
        else:  # identical to extracting that image alone
            alone = extractor.extract([Image.open(entries[row].path).convert("RGB")])
            assert counts[row] == alone.counts[0] == 2
            np.testing.assert_array_equal(ims[row], alone.features[0])
    report = read_extract_report(tmp_path / "out", "gallery")
    assert report["extractor"] == extractor.spec.to_dict() and len(report["failed"]) == 2
    assert not list((tmp_path / "out").glob(".*partial"))


def test_float16_output(tmp_path):
    entries = make_gallery(tmp_path / "images", 3)
    extract_split(entries, create_extractor("demo"), tmp_path, "g", dtype="float16")
    assert np.load(tmp_path / "g_ims.npy").dtype == np.float16


class Interrupting:
    """Wraps an extractor and raises KeyboardInterrupt on the n-th call."""

    def __init__(self, inner, stop_at: int):
        self.inner, self.spec, self.calls, self.stop_at = inner, inner.spec, 0, stop_at

    def extract(self, images):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.inner.extract(images)


def test_resume_after_interruption_matches_a_clean_run(tmp_path):
    entries = make_gallery(tmp_path / "images")
    demo = create_extractor("demo")
    extract_split(entries, demo, tmp_path / "clean", "gallery", batch_size=3)
    with pytest.raises(KeyboardInterrupt):
        extract_split(entries, Interrupting(demo, 3), tmp_path / "out", "gallery", batch_size=3)
    assert not (tmp_path / "out" / "gallery_ims.npy").exists()  # nothing half-done in place
    state = json.loads((tmp_path / "out" / ".gallery_extract.partial" / "state.json").read_text())
    assert state["done"] == 6
    result = extract_split(entries, demo, tmp_path / "out", "gallery", batch_size=3)
    assert result.processed == 5 and len(result.failed) == 2
    pairs = zip(load_outputs(tmp_path / "clean"), load_outputs(tmp_path / "out"), strict=True)
    for clean, resumed in pairs:
        np.testing.assert_array_equal(np.asarray(clean), np.asarray(resumed))


def test_reuse_overwrite_and_restart(tmp_path):
    entries = make_gallery(tmp_path / "images", 4)
    demo = create_extractor("demo")
    extract_split(entries, demo, tmp_path, "g")
    assert extract_split(entries, demo, tmp_path, "g").reused
    other = create_extractor("demo", num_regions=4)
    with pytest.raises(ValueError, match="--overwrite"):
        extract_split(entries, other, tmp_path, "g")
    extract_split(entries, other, tmp_path, "g", overwrite=True)
    assert np.load(tmp_path / "g_ims.npy").shape[1] == 4
    with pytest.raises(KeyboardInterrupt):
        extract_split(entries, Interrupting(demo, 1), tmp_path, "h", batch_size=2)
    with pytest.raises(ValueError, match="--restart"):
        extract_split(entries[:3], demo, tmp_path, "h")
    assert extract_split(entries[:3], demo, tmp_path, "h", restart=True).processed == 3


class FailsOnWide:
    """An extractor that raises on images wider than 60 px (stands in for a model that
    chokes on one odd input)."""

    def __init__(self, inner):
        self.inner, self.spec = inner, inner.spec

    def extract(self, images):
        if any(image.size[0] > 60 for image in images):
            raise RuntimeError("too wide")
        return self.inner.extract(images)


def test_an_image_the_extractor_rejects_costs_only_its_row(tmp_path):
    folder = tmp_path / "images"
    make_gallery(folder, 3)
    for index in range(3):  # shrink the good ones so only the wide one fails
        path = folder / f"img{index:02d}.png"
        Image.open(path).crop((0, 0, 50, 48)).save(path)
    Image.new("RGB", (90, 40), (220, 30, 30)).save(folder / "wide.png")
    entries = list_images(folder)
    result = extract_split(entries, FailsOnWide(create_extractor("demo")), tmp_path, "g")
    reasons = {f["id"]: f["reason"] for f in result.failed}
    assert "too wide" in reasons["wide"] and set(reasons) == {"wide", "img03b", "img05c"}
    counts = np.load(tmp_path / "g_counts.npy")
    assert (counts > 0).sum() == 3


def test_cli_extract_and_errors(tmp_path, capsys):
    make_gallery(tmp_path / "images", 3)
    listing = tmp_path / "train_images.txt"
    listing.write_text("images/img00.png\nimages/img01.png\n")
    assert (
        main(
            [
                "extract",
                "--images",
                str(listing),
                "--extractor",
                "demo",
                "--out",
                str(tmp_path / "feat"),
                "--option",
                "num_regions=6",
            ]
        )
        == 0
    )
    assert "extracted 2 images" in capsys.readouterr().out
    assert np.load(tmp_path / "feat" / "train_ims.npy").shape == (2, 6, 256)
    assert (
        main(
            [
                "extract",
                "--images",
                str(tmp_path / "images"),
                "--extractor",
                "demo",
                "--out",
                str(tmp_path / "feat"),
            ]
        )
        == 0
    )
    assert "2 images skipped" in capsys.readouterr().out  # gallery split, broken files
    for argv, message in [
        (["--images", str(tmp_path / "nowhere")], "does not exist"),
        (["--images", str(listing), "--extractor", "nope"], "unknown extractor"),
        (["--images", str(listing), "--option", "oops"], "KEY=VALUE"),
    ]:
        full = ["extract", "--extractor", "demo", "--out", str(tmp_path / "x"), *argv]
        assert main(full) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
