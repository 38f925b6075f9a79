"""`chan demo`'s preparation on a tiny world: every step runs once, then is reused."""

import logging
from pathlib import Path

from app.cli import main
from app.demo import DemoOptions, prepare_demo
from index_builder.format import layout as fmt


def test_demo_prepares_everything_then_reuses_it(tmp_path, caplog):
    options = DemoOptions(workdir=tmp_path / "demo", images=70, epochs=1, train_budget_s=60,
                          progress=False)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="app.demo"):
        paths = prepare_demo(options)
    first = caplog.text
    assert "wrote 70 images" in first and "trained in" in first and "built" in first
    manifest = fmt.read_manifest(paths.index)
    from index_builder.search.searcher import Searcher

    searcher = Searcher.open(paths.index, paths.checkpoint)
    first = searcher.index.metadata.images([0])[0]
    assert Path(first.uri).is_absolute() and Path(first.uri).is_file()  # the page can show it
    assert manifest["counts"]["images"] == 10 and manifest["counts"]["captions"] == 50
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="app.demo"):
        again = prepare_demo(options)
    assert again == paths
    second = caplog.text
    assert "reused 70 images" in second and "test reused" in second
    assert f"reused {paths.checkpoint}" in second and f"reused {paths.index}" in second
    # the CLI path without serving reuses it too
    argv = ["demo", "--workdir", str(tmp_path / "demo"), "--images", "70", "--no-serve"]
    assert main(argv) == 0
