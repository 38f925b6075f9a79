"""The /v1 API through TestClient: results, explanations, info, images, metrics."""

import io
import itertools

import pytest
from PIL import Image

from index_builder.search.searcher import Searcher


def test_text_search_returns_ranked_images_with_urls(client, gallery):
    response = client.post("/v1/search/images", json={"text": "a red circle", "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    hits = body["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(hits))
    assert hits[0]["image_url"] == f"/v1/images/{hits[0]['image_id']}"
    assert hits[0]["thumbnail_url"].endswith("?size=256")
    assert body["tokens"][:3] == ["<start>", "a", "red"] or "red" in body["tokens"]
    assert body["timings_ms"]["total_ms"] > 0
    assert response.headers["x-request-id"]
    # the same query through the searcher directly gives the same ranking and scores
    direct = Searcher.open(gallery / "idx", gallery / "ckpt").search_images("a red circle", k=5)
    assert [h.image_id for h in direct.hits] == [h["image_id"] for h in hits]


def test_explain_gives_one_region_per_query_word(client):
    body = client.post("/v1/search/images", json={"text": "a blue square", "k": 2,
                                                  "explain": True}).json()  # fmt: skip
    explain = body["hits"][0]["explain"]
    assert [w["token"] for w in explain] == body["tokens"]
    for word in explain:
        x0, y0, x1, y1 = word["box"]
        assert 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1
        assert -1 <= word["similarity"] <= 1


def test_filter_keeps_only_matching_metadata(client):
    body = client.post("/v1/search/images", json={"text": "a green star", "k": 30,
                                                  "filter": {"half": 1}}).json()  # fmt: skip
    assert body["hits"] and all(h["metadata"]["half"] == 1 for h in body["hits"])


def test_caption_search_by_id_upload_and_score_agree(client, gallery):
    image_id = client.post("/v1/search/images", json={"text": "a circle", "k": 1}).json()[
        "hits"][0]["image_id"]  # fmt: skip
    by_id = client.post("/v1/search/captions", json={"image_id": image_id, "k": 3,
                                                     "explain": True})  # fmt: skip
    assert by_id.status_code == 200, by_id.text
    hits = by_id.json()["hits"]
    assert len(hits) == 3 and all(h["explain"] for h in hits)
    raw = client.get(f"/v1/images/{image_id}")
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/png"
    upload = client.post("/v1/search/captions", files={"file": ("q.png", raw.content, "image/png")},
                         data={"k": "3", "explain": "true"})  # fmt: skip
    assert upload.status_code == 200, upload.text
    uploaded = upload.json()
    # the upload goes through the same extractor, so it finds the same captions
    assert [h["caption_id"] for h in uploaded["hits"]] == [h["caption_id"] for h in hits]
    assert len(uploaded["query_boxes"]) >= 1
    text = hits[0]["text"]
    scored = client.post("/v1/score", json={"text": text, "image_id": image_id}).json()
    # equal up to the fp16 storage of the caption's word vectors
    assert abs(scored["score"] - hits[0]["score"]) < 1e-3 * abs(scored["score"])
    form = client.post("/v1/score", files={"file": ("q.png", raw.content, "image/png")},
                       data={"text": text}).json()  # fmt: skip
    # the upload's regions are fresh, the gallery's are stored in fp16
    assert abs(form["score"] - scored["score"]) < 1e-3 * abs(scored["score"])


def test_thumbnails_are_small_jpegs(client):
    image_id = client.post("/v1/search/images", json={"text": "a star"}).json()["hits"][0][
        "image_id"]  # fmt: skip
    response = client.get(f"/v1/images/{image_id}", params={"size": 64})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(response.content)).size) == 64


def test_info_health_ready_metrics(client, gallery):
    images = len((gallery / "synth" / "test_ids.txt").read_text().split())
    info = client.get("/v1/info").json()
    assert info["index"]["images"] == images and info["index"]["captions"] == 5 * images
    assert info["model"]["sha256"] and info["search"]["max_k"] == 100
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    client.post("/v1/search/images", json={"text": "a red circle"})
    metrics = client.get("/metrics").text
    assert 'chan_requests_total{method="POST",route="/v1/search/images",status="200"}' in metrics
    assert f'chan_index_items{{kind="images"}} {images}.0' in metrics
    assert "chan_search_stage_seconds_bucket" in metrics and "chan_queue_depth" in metrics


def test_page_and_static_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="/static/app.js"' in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert client.get("/static/style.css").status_code == 200


def test_openapi_documents_both_request_bodies(client):
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/search/captions"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert "/v1/search/images" in schema["paths"] and "/v1/score" in schema["paths"]


def test_the_app_survives_a_second_lifespan(gallery):
    """Closing the app (lifespan end) and starting it again must not leave a shut-down
    executor behind."""
    from tests.app.conftest import make_client

    client = make_client(gallery)
    for _ in range(2):
        with client:
            response = client.post("/v1/search/images", json={"text": "a red circle"})
            assert response.status_code == 200


def test_relative_image_paths_resolve_under_the_image_root(tmp_path, monkeypatch):
    from app.errors import ApiError
    from app.routes.gallery import resolve_image_path

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"x")
    index = tmp_path / "indexes" / "idx"
    assert resolve_image_path("imgs/a.png", tmp_path, index) == tmp_path / "imgs" / "a.png"
    monkeypatch.chdir(tmp_path)  # no root set: next to the index, then the working dir
    assert resolve_image_path("imgs/a.png", None, index) == tmp_path / "imgs" / "a.png"
    for bad in ("../../etc/passwd", "imgs/missing.png"):
        with pytest.raises(ApiError) as error:
            resolve_image_path(bad, tmp_path / "imgs", index)
        assert error.value.status == 404
