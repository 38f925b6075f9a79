"""The service's guards and limits: the API key, the exhaustive-search bound, and a full
search queue answering 503 with Retry-After."""

import asyncio
import threading

import pytest

from app.service import BoundedExecutor, Overloaded
from tests.app.conftest import make_client


def test_api_key_guards_everything_but_health(gallery):
    with make_client(gallery, api_key="s3cret") as guarded:
        missing = guarded.post("/v1/search/images", json={"text": "a circle"})
        assert missing.status_code == 401 and "missing" in missing.json()["error"]["message"]
        wrong = guarded.get("/v1/info", headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401 and "wrong" in wrong.json()["error"]["message"]
        assert guarded.get("/healthz").status_code == 200
        assert guarded.get("/readyz").status_code == 200
        assert guarded.get("/").status_code == 200  # the page asks for the key itself
        assert guarded.get("/metrics").status_code == 401
        ok = guarded.get("/v1/info", headers={"X-API-Key": "s3cret"})
        bearer = guarded.get("/v1/info", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and bearer.status_code == 200
        guarded.cookies.set("chan_api_key", "s3cret")
        assert guarded.get("/v1/info").status_code == 200
        reloaded = guarded.post("/v1/admin/reload", json={})
        assert reloaded.status_code == 200 and reloaded.json()["reloaded"] is True
        failed = guarded.post("/v1/admin/reload", json={"index": str(gallery / "nothing")})
        assert failed.status_code == 409 and "previous index" in failed.json()["error"]["message"]
        assert guarded.post("/v1/search/images", json={"text": "a"}).status_code == 200


def test_exhaustive_is_limited_by_gallery_size(gallery):
    with make_client(gallery, exhaustive_max_images=5) as limited:
        response = limited.post("/v1/search/images", json={"text": "a", "exhaustive": True})
        assert response.status_code == 400 and "up to 5 images" in response.json()["error"][
            "message"]  # fmt: skip
    with make_client(gallery) as default:
        exact = default.post("/v1/search/images", json={"text": "a", "exhaustive": True})
        assert exact.status_code == 200 and exact.json()["exhaustive"] is True


def test_a_full_queue_answers_503_with_retry_after():
    executor = BoundedExecutor(threads=1, queue_size=1)
    release = threading.Event()

    async def scenario():
        running = asyncio.ensure_future(executor.run(release.wait, 5))
        waiting = asyncio.ensure_future(executor.run(release.wait, 5))
        await asyncio.sleep(0.05)
        assert executor.pending == 2
        with pytest.raises(Overloaded):
            await executor.run(release.wait, 5)
        release.set()
        await asyncio.gather(running, waiting)
        assert executor.pending == 0
        assert await executor.run(lambda: 7) == 7  # slots come back

    asyncio.run(scenario())
    executor.shutdown()


def test_overloaded_service_maps_to_503(gallery, monkeypatch):
    with make_client(gallery) as busy:
        service = busy.app.state.service

        async def refuse(*args, **kwargs):
            raise Overloaded("the search queue is full")

        monkeypatch.setattr(service.executor, "run", refuse)
        response = busy.post("/v1/search/images", json={"text": "a circle"})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "retry" in response.json()["error"]["message"]
