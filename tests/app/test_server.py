"""`chan serve` as a real process on a free loopback port, spoken to over HTTP."""

import importlib.util
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.app.conftest import running_server


def _call(url: str, body: dict | None = None, headers: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={
        "Content-Type": "application/json", **(headers or {})})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture(scope="module")
def server(gallery, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {"CHAN_API_KEY": "k3y", "CHAN_LOG_JSON": "true"}
    with running_server(gallery, log, env, "--torch-threads", "1") as (base, process):
        yield base, process, log


def test_real_server_answers_over_http(server):
    base, _, _ = server
    status, headers, body = _call(f"{base}/v1/search/images", {"text": "a red circle", "k": 3},
                                  {"X-API-Key": "k3y", "X-Request-ID": "abc-123"})  # fmt: skip
    assert status == 200, body
    hits = json.loads(body)["hits"]
    assert len(hits) == 3 and headers["x-request-id"] == "abc-123"
    status, headers, image = _call(
        f"{base}{hits[0]['thumbnail_url']}", headers={"X-API-Key": "k3y"}
    )
    assert status == 200 and headers["content-type"] == "image/jpeg" and image[:2] == b"\xff\xd8"
    status, _, body = _call(f"{base}/v1/search/images", {"text": "a red circle"})
    assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"
    status, _, body = _call(f"{base}/v1/search/images", {"text": "", "k": 3}, {"X-API-Key": "k3y"})
    assert status == 422
    assert _call(f"{base}/healthz")[0] == 200
    status, _, page = _call(f"{base}/")
    assert status == 200 and b"<html" in page.lower()


def _smoke_module():
    """scripts/smoke_http.py, the stdlib checker the runtime and container tests run."""
    path = Path(__file__).parents[2] / "scripts" / "smoke_http.py"
    spec = importlib.util.spec_from_file_location("smoke_http", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_smoke_checker_passes_against_the_real_server(server, capsys):
    base, _, _ = server
    assert _smoke_module().main([base, "--api-key", "k3y", "--wait-ready", "30"]) == 0
    out = capsys.readouterr().out
    assert "POST /v1/score (upload)" in out and "all 8 checks passed" in out


def test_the_smoke_checker_fails_on_plain_text_and_wrong_status():
    smoke = _smoke_module()
    with pytest.raises(smoke.SmokeError, match="not JSON"):
        smoke._decoded("POST /x", 500, {"Content-Type": "text/plain"}, b"Internal", 500)
    with pytest.raises(smoke.SmokeError, match="HTTP 500"):
        smoke._decoded("POST /x", 500, {"Content-Type": "application/json"}, b"{}", 200)
    body = {"hits": [{"rank": 1, "score": 1.0}, {"rank": 2, "score": 2.0}],
            "timings_ms": {}, "candidates": 2}  # fmt: skip
    with pytest.raises(smoke.SmokeError, match="not descending"):
        smoke._check_hits("search", body, 2, {"rank", "score"})


def test_real_server_logs_json_with_request_ids_and_stops_on_sigterm(server):
    base, process, log = server
    _call(f"{base}/v1/info", headers={"X-API-Key": "k3y", "X-Request-ID": "trace-me"})
    process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    messages = [entry["message"] for entry in lines]
    assert "Application shutdown complete." in messages
    access = [entry for entry in lines if entry.get("request_id") == "trace-me"]
    assert access and access[0]["route"] == "/v1/info" and access[0]["status"] == 200


def test_serve_refuses_a_missing_index_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--index",
                             str(tmp_path / "none")], capture_output=True, text=True,
                            timeout=60, cwd=Path(__file__).parents[2])  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not an index directory" in result.stderr
