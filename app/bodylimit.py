"""Bounds on a JSON body before anything parses it: its size (413) and its nesting depth
(422). Python's JSON decoder recurses once per level, so a body nested 10,000 deep would
otherwise end in a RecursionError; a body of many megabytes would be read and parsed
whole. The same depth check guards the JSON-typed fields of a multipart form."""

from __future__ import annotations

import re

import numpy as np
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_OPEN = (ord("["), ord("{"))
_CLOSE = (ord("]"), ord("}"))


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text (strings skipped), read
    without parsing: O(len) at C speed, whatever the depth."""
    structural = np.frombuffer(_STRING.sub(b"", data), dtype=np.uint8)
    if structural.size == 0:
        return 0
    steps = np.isin(structural, _OPEN).astype(np.int32) - np.isin(structural, _CLOSE)
    return max(int(np.cumsum(steps).max()), 0)


def depth_message(depth: int, limit: int, where: str = "the JSON body") -> str:
    return f"{where} is nested {depth} levels deep; at most {limit} are accepted"


class JsonBodyLimit:
    """ASGI middleware: a JSON request body larger than `max_json_bytes` is refused with
    413 (from `Content-Length` before reading, or while reading a chunked body), one
    nested deeper than `max_json_depth` with 422; the body read is replayed to the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        if headers is None or not _is_json(headers):
            await self.app(scope, receive, send)
            return
        settings = scope["app"].state.settings
        limit = settings.max_json_bytes
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _refuse(scope, receive, send, 413, "too_large", _size_message(limit))
            return
        body, more = await _read(receive, limit)
        if more is None:  # the client went away while sending
            return
        if more:
            await _refuse(scope, receive, send, 413, "too_large", _size_message(limit))
            return
        depth = json_depth(body)
        if depth > settings.max_json_depth:
            message = depth_message(depth, settings.max_json_depth)
            await _refuse(scope, receive, send, 422, "invalid_request", message)
            return
        await self.app(scope, _replay(body, receive), send)


def _is_json(headers: Headers) -> bool:
    kind = headers.get("content-type", "")
    return kind.split(";")[0].strip().lower() == "application/json"


def _size_message(limit: int) -> str:
    return f"JSON bodies are limited to {limit:,} bytes"


async def _read(receive: Receive, limit: int) -> tuple[bytes, bool | None]:
    """(body, over the limit?) or (b"", None) on a disconnect."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # what comes after the body: a disconnect
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, code: str,
                  message: str) -> None:  # fmt: skip
    response = error_response(status, code, message, request=Request(scope))
    await response(scope, receive, send)
