"""The web page in headless Chromium against a real server: search, see results, open
the alignment view, query by image, and fit a phone screen. A screenshot of the
alignment view is saved as a test artefact."""

import os
import shutil
from pathlib import Path

import pytest

from tests.app.conftest import ROOT, running_server

ARTIFACTS = Path(os.environ.get("CHAN_TEST_ARTIFACTS", ROOT / "test-artifacts"))


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CHAN_REQUIRE_BROWSER") == "1":
        pytest.fail("chromium is not installed (scripts/setup.sh installs it with apt)")
    pytest.skip("chromium is not installed; scripts/setup.sh installs it")


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site(gallery, tmp_path_factory):
    log = tmp_path_factory.mktemp("page") / "server.log"
    with running_server(gallery, log, {}, "--torch-threads", "1") as (base, _):
        yield base


def test_search_results_and_alignment_view(browser, site, gallery):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(site)
    info = page.get_by_test_id("info")
    images = len((gallery / "synth" / "test_ids.txt").read_text().split())
    page.wait_for_function("document.querySelector('[data-testid=info]').textContent"
                           ".includes('image')")  # fmt: skip
    assert f"{images} images" in info.inner_text()
    page.get_by_test_id("text-query").fill("a red circle")
    page.get_by_test_id("text-query").press("Enter")
    hits = page.get_by_test_id("image-hit")
    hits.first.wait_for()
    assert hits.count() == min(12, images)
    assert "total" in page.get_by_test_id("timings").inner_text()
    first_thumbnail = hits.first.locator("img")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=first_thumbnail.element_handle())  # fmt: skip
    hits.first.click()
    view = page.get_by_test_id("alignment-view")
    view.wait_for(state="visible")
    boxes = page.get_by_test_id("region-box")
    boxes.first.wait_for()
    legend = page.get_by_test_id("word-legend")
    assert boxes.count() >= 1 and legend.count() >= 3  # a box per matched region, a word each
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "alignment-view.png"))
    page.keyboard.press("Escape")
    view.wait_for(state="hidden")
    page.get_by_test_id("image-file").set_input_files(_gallery_image(gallery))
    captions = page.get_by_test_id("caption-hit")
    captions.first.wait_for()
    assert captions.count() >= 1 and page.get_by_test_id("query-box").count() >= 1
    assert not errors, errors
    page.close()


def test_page_fits_a_phone_screen_and_shows_errors(browser, site):
    page = browser.new_page(viewport={"width": 360, "height": 740})
    page.goto(site)
    page.get_by_test_id("text-query").fill("x" * 1500)  # over the 1000-character limit
    page.get_by_test_id("text-submit").click()
    error = page.get_by_test_id("error")
    error.wait_for(state="visible")
    assert "at most 1000" in error.inner_text()
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    page.close()


def _gallery_image(gallery) -> str:
    first = (gallery / "synth" / "test_images.txt").read_text().split("\n")[0].split("\t")[-1]
    path = Path(first)
    return str(path if path.is_absolute() else gallery / "synth" / path)
