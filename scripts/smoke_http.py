"""Smoke test of a running `chan serve` over HTTP, with the standard library only (it runs
in a bare runtime install, on the host against a container, anywhere with Python 3).

    python3 scripts/smoke_http.py http://127.0.0.1:8000 [--text "a red circle"] [--api-key K]

Checks, each against the documented JSON: a text search, a gallery image and its
thumbnail, an image upload search (the gallery image's own bytes, as multipart), `score`
with an upload, a caption search by gallery id, `/v1/info`, and that a bad request is a
JSON 4xx. Prints one line per check; exits 1 with the failing check's reason.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import quote


class SmokeError(Exception):
    """A check failed: the message says which and why."""


class Client:
    def __init__(self, base: str, api_key: str | None, timeout_s: float) -> None:
        self.base, self.timeout_s = base.rstrip("/"), timeout_s
        self.headers = {"X-API-Key": api_key} if api_key else {}

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str | None = None) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        headers = dict(self.headers)
        if content_type:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def json(self, method: str, path: str, payload: dict | None = None,
             expect: int = 200) -> dict:  # fmt: skip
        body = json.dumps(payload).encode() if payload is not None else None
        status, headers, data = self.request(
            method, path, body, "application/json" if body else None
        )
        return _decoded(f"{method} {path}", status, headers, data, expect)

    def multipart(self, path: str, fields: dict[str, str], file: bytes, filename: str) -> dict:
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            .encode()
            for name, value in fields.items()
        ]  # fmt: skip
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"'
            f"\r\nContent-Type: {_image_type(file)}\r\n\r\n".encode()
            + file
            + b"\r\n"
        )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        status, headers, data = self.request(
            "POST", path, body, f"multipart/form-data; boundary={boundary}"
        )
        return _decoded(f"POST {path} (upload)", status, headers, data, 200)


def _decoded(what: str, status: int, headers: dict, data: bytes, expect: int) -> dict:
    kind = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    if status != expect:
        raise SmokeError(f"{what}: HTTP {status} (expected {expect}): {data[:300]!r}")
    if not kind.startswith("application/json"):
        raise SmokeError(f"{what}: content type {kind!r}, not JSON: {data[:200]!r}")
    return json.loads(data)


def _image_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    return "image/webp"


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise SmokeError(what)


def _check_hits(what: str, body: dict, k: int, keys: set[str]) -> list[dict]:
    hits = body.get("hits")
    _require(isinstance(hits, list) and len(hits) == k, f"{what}: expected {k} hits: {body}")
    for rank, hit in enumerate(hits, 1):
        missing = keys - set(hit)
        _require(not missing, f"{what}: hit {rank} lacks {sorted(missing)}: {hit}")
        _require(hit["rank"] == rank, f"{what}: hit {rank} has rank {hit['rank']}")
        _require(isinstance(hit["score"], int | float), f"{what}: score {hit['score']!r}")
    scores = [hit["score"] for hit in hits]
    _require(scores == sorted(scores, reverse=True), f"{what}: scores not descending {scores}")
    _require("timings_ms" in body and "candidates" in body, f"{what}: no timings/candidates")
    return hits


IMAGE_HIT = {"rank", "score", "image_id", "uri", "image_url", "thumbnail_url", "metadata"}
CAPTION_HIT = {"rank", "score", "caption_id", "text", "image_id", "metadata"}


def run_checks(client: Client, text: str, k: int) -> list[str]:
    """Every check in order; returns one line of what each saw."""
    done = []
    started = time.perf_counter()

    def ok(line: str) -> None:
        done.append(f"ok {1000 * (time.perf_counter() - started):7.0f} ms  {line}")

    body = client.json("POST", "/v1/search/images", {"text": text, "k": k})
    hits = _check_hits("text search", body, k, IMAGE_HIT)
    image_id = hits[0]["image_id"]
    ok(f"POST /v1/search/images {text!r}: {', '.join(h['image_id'] for h in hits)}")

    status, headers, image = client.request("GET", f"/v1/images/{quote(image_id, safe='')}")
    _require(status == 200 and len(image) > 0, f"GET /v1/images/{image_id}: HTTP {status}")
    ok(f"GET /v1/images/{image_id}: {len(image)} bytes")
    status, headers, thumb = client.request("GET", hits[0]["thumbnail_url"])
    kind = {k.lower(): v for k, v in headers.items()}.get("content-type")
    _require(status == 200 and kind == "image/jpeg" and thumb.startswith(b"\xff\xd8"),
             f"GET {hits[0]['thumbnail_url']}: HTTP {status}, {kind}")  # fmt: skip
    ok(f"GET {hits[0]['thumbnail_url']}: JPEG, {len(thumb)} bytes")

    body = client.multipart("/v1/search/captions", {"k": str(k)}, image, "query.png")
    _check_hits("upload caption search", body, k, CAPTION_HIT)
    _require(isinstance(body.get("query_boxes"), list), "upload search: no query_boxes")
    ok(f"POST /v1/search/captions (upload of {image_id}): best {body['hits'][0]['text']!r}")

    body = client.multipart("/v1/score", {"text": text}, image, "query.png")
    _require(isinstance(body.get("score"), int | float), f"score (upload): {body}")
    _require(isinstance(body.get("alignment"), list) and body["alignment"],
             f"score (upload): no alignment: {body}")  # fmt: skip
    for match in body["alignment"]:
        _require({"token", "region", "similarity"} <= set(match), f"alignment entry {match}")
    ok(f"POST /v1/score (upload): {body['score']:.3f} over {len(body['alignment'])} words")

    body = client.json("POST", "/v1/search/captions", {"image_id": image_id, "k": k})
    _check_hits("caption search by id", body, k, CAPTION_HIT)
    ok(f"POST /v1/search/captions {{image_id: {image_id}}}: {len(body['hits'])} hits")

    body = client.json("GET", "/v1/info")
    missing = {"model", "extractor", "index", "search"} - set(body)
    _require(not missing, f"GET /v1/info lacks {sorted(missing)}: {body}")
    _require(body["index"].get("images", 0) > 0, f"GET /v1/info: no images: {body['index']}")
    ok(f"GET /v1/info: {body['index']['images']} images, {body['index']['captions']} captions")

    body = client.json("POST", "/v1/search/images", {"text": "", "k": k}, expect=422)
    error = body.get("error") or {}
    _require(error.get("code") == "invalid_request" and error.get("message"),
             f"empty text: expected a JSON invalid_request error: {body}")  # fmt: skip
    ok("POST /v1/search/images {text: ''}: 422 invalid_request")
    return done


def wait_ready(client: Client, timeout_s: float, server_pid: int | None) -> float:
    """Poll /readyz until 200; returns the seconds waited. Fails at the deadline, or at
    once when the server process is gone."""
    started = time.monotonic()
    while True:
        try:
            if client.request("GET", "/readyz")[0] == 200:
                return time.monotonic() - started
        except OSError:
            pass  # not listening yet
        if server_pid is not None and not _alive(server_pid):
            raise SmokeError(f"the server (pid {server_pid}) exited before it was ready")
        if time.monotonic() - started > timeout_s:
            raise SmokeError(f"/readyz did not answer 200 within {timeout_s:.0f} s")
        time.sleep(0.25)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the service's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--text", default="a red circle", help="the text query")
    parser.add_argument("--k", type=int, default=3, help="hits per search (3)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument(
        "--wait-ready",
        type=float,
        default=0.0,
        metavar="S",
        help="first poll /readyz until it answers 200, for up to S seconds",
    )
    parser.add_argument(
        "--server-pid",
        type=int,
        default=None,
        help="with --wait-ready: stop waiting when this process has exited",
    )
    args = parser.parse_args(argv)
    client = Client(args.base, args.api_key, args.timeout)
    try:
        if args.wait_ready > 0:
            waited_s = wait_ready(client, args.wait_ready, args.server_pid)
            print(f"smoke: /readyz answered 200 after {waited_s:.1f} s")
        lines = run_checks(client, args.text, args.k)
    except (SmokeError, OSError, ValueError) as exc:
        print(f"smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    print("\n".join(f"smoke: {line}" for line in lines))
    print(f"smoke: all {len(lines)} checks passed against {args.base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
