"""A running service follows its index: a change committed by `chan index delete` or
`add` is served within seconds, without a reload call and without a failed request."""

import shutil
import time

from fastapi.testclient import TestClient

from app.main import create_app
from app.service import SearchService
from app.settings import Settings
from index_builder.build.edit import delete_items

PICKUP_LIMIT_S = 5.0


def _top(client) -> list[str]:
    response = client.post("/v1/search/images", json={"text": "a red circle", "k": 30})
    assert response.status_code == 200, response.text
    return [hit["image_id"] for hit in response.json()["hits"]]


def _client(gallery, index, watch_seconds: float) -> TestClient:
    settings = Settings(index=index, checkpoint=gallery / "ckpt", watch_seconds=watch_seconds)
    service = SearchService(settings)
    service.load()
    return TestClient(create_app(settings, service))


def test_a_delete_is_served_without_a_reload(gallery, tmp_path):
    index = tmp_path / "idx"
    shutil.copytree(gallery / "idx", index)
    with _client(gallery, index, 0.1) as client:
        first = _top(client)[0]
        assert client.get("/v1/info").json()["index"]["generation"] == 1
        delete_items(index, [first], [])
        started = time.monotonic()
        while first in _top(client) and time.monotonic() - started < PICKUP_LIMIT_S:
            time.sleep(0.05)
        assert first not in _top(client), f"still served {PICKUP_LIMIT_S} s after the delete"
        info = client.get("/v1/info").json()["index"]
        assert info["generation"] == 2 and info["segments"] == 1


def test_watch_seconds_zero_keeps_the_served_generation(gallery, tmp_path):
    index = tmp_path / "idx"
    shutil.copytree(gallery / "idx", index)
    with _client(gallery, index, 0) as client:
        first = _top(client)[0]
        delete_items(index, [first], [])
        time.sleep(0.5)  # five intervals of the watch above: none runs here
        assert first in _top(client)
        assert client.get("/v1/info").json()["index"]["generation"] == 1
        response = client.post("/v1/admin/reload")  # no API key: admin routes are off
        assert response.status_code == 403
