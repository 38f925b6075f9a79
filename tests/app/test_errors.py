"""The net under the error handlers: an unexpected exception in a route is a JSON 500
with the request id, logged once with its traceback, and counted in the metrics."""

import logging

import pytest
from fastapi.testclient import TestClient

from app.errors import ApiError
from index_builder.errors import QueryError, UnknownIdError
from model.features.images import ImageError
from tests.app.conftest import make_client


@pytest.fixture()
def broken_search(gallery):
    """A served app whose text search raises an exception no handler maps."""
    with make_client(gallery) as client:
        searcher = client.app.state.service.current.searcher

        def fail(*_args, **_kwargs):
            raise RuntimeError("planted failure in the searcher")

        searcher.search_images = fail
        yield client


def test_an_unexpected_exception_is_a_json_500_logged_once(broken_search, caplog):
    caplog.set_level(logging.INFO)
    response = broken_search.post(
        "/v1/search/images", json={"text": "a red circle"}, headers={"X-Request-ID": "req-500"}
    )
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"] == "req-500"
    error = response.json()["error"]
    assert error["code"] == "internal"
    assert error["request_id"] == "req-500"
    assert "req-500" in error["message"]
    assert "planted" not in error["message"]  # no internals leak to the client

    with_traceback = [r for r in caplog.records if r.exc_info]
    assert len(with_traceback) == 1
    record = with_traceback[0]
    assert record.request_id == "req-500" and "req-500" in record.getMessage()
    assert "planted failure" in str(record.exc_info[1])
    access = [r for r in caplog.records if getattr(r, "status", None) == 500]
    assert len(access) == 1 and access[0].request_id == "req-500"


def test_an_unexpected_exception_counts_in_the_metrics(broken_search):
    for _ in range(2):
        assert broken_search.post("/v1/search/images", json={"text": "a"}).status_code == 500
    text = broken_search.get("/metrics").text
    assert 'chan_internal_errors_total{route="/v1/search/images"} 2.0' in text
    assert 'route="/v1/search/images",status="500"} 2.0' in text


def test_client_errors_stay_4xx_with_the_request_id(client):
    response = client.post("/v1/search/images", json={"text": ""}, headers={"X-Request-ID": "r1"})
    assert response.status_code == 422
    assert response.json()["error"]["request_id"] == "r1"
    response = client.get("/v1/images/no-such-image", headers={"X-Request-ID": "r2"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_id"
    assert response.json()["error"]["request_id"] == "r2"


def test_an_exception_outside_the_middleware_is_still_json(gallery):
    """The last net: a failure in the middleware itself reaches Starlette's server error
    layer, which answers with the same JSON body (and lets the server log it)."""
    with make_client(gallery) as client:
        app = client.app

        class Broken:
            def labels(self, *_args):
                raise RuntimeError("planted failure in the metrics")

        app.state.metrics.requests = Broken()
        raw = TestClient(app, raise_server_exceptions=False)
        response = raw.get("/healthz", headers={"X-Request-ID": "outer"})
    assert response.status_code == 500
    assert response.json()["error"] == {
        "code": "internal",
        "message": "internal error: the server logged it under request id outer",
        "request_id": "outer",
    }


@pytest.fixture()
def planted(gallery):
    """A served app whose text search raises what `planted.planted_error` holds."""
    with make_client(gallery) as client:
        searcher = client.app.state.service.current.searcher

        def fail(*_args, **_kwargs):
            raise client.planted_error

        searcher.search_images = fail
        yield client


def test_a_plain_value_error_is_a_bug_not_a_400(planted, caplog):
    """Only the project's own error types are client errors: a ValueError from anywhere
    else reaches the 500 net, logged once with its request id."""
    planted.planted_error = ValueError("planted programming error")
    response = planted.post(
        "/v1/search/images", json={"text": "a red circle"}, headers={"X-Request-ID": "req-v"}
    )
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == {
        "code": "internal",
        "message": "internal error: the server logged it under request id req-v",
        "request_id": "req-v",
    }
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and logged[0].request_id == "req-v"
    assert isinstance(logged[0].exc_info[1], ValueError)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (QueryError("k must lie in [1, 100], got 0"), 400, "bad_request"),
        (ImageError("q.png: corrupt or truncated image"), 400, "bad_image"),
        (UnknownIdError("image id 'x' is not in the index"), 404, "unknown_id"),
        (ApiError(409, "conflict", "planted"), 409, "conflict"),
    ],
    ids=["QueryError", "ImageError", "UnknownIdError", "ApiError"],
)
def test_the_project_error_types_are_client_errors(planted, error, status, code):
    planted.planted_error = error
    response = planted.post("/v1/search/images", json={"text": "a red circle"})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"] == str(error)
