"""One path, two bodies: an upload route that takes only multipart/form-data and its JSON
twin that takes the rest, split by the request's content type; and the OpenAPI document
that shows both bodies under the one operation."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.routing import Match
from starlette.types import Scope

from app.deps import check_upload_length
from app.errors import ApiError
from app.schemas import form_json_depth

logger = logging.getLogger(__name__)

JSON, MULTIPART = "application/json", "multipart/form-data"
# one image and a handful of option fields: anything more is not a query
FORM_LIMITS = {"max_files": 1, "max_fields": 16}

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def content_type(headers: Headers) -> str:
    """The media type alone, lower-cased: `multipart/form-data; boundary=x` -> its type."""
    return headers.get("content-type", "").split(";")[0].strip().lower()


class UploadRoute(APIRoute):
    """The multipart route of a path. It declines any other content type, so Starlette's
    router moves on to the JSON route registered after it on the same path and method."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE and content_type(Headers(scope=scope)) != MULTIPART:
            return Match.NONE, {}
        return match, child_scope

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def parse_then_handle(request: Request) -> Response:
            # FastAPI parses a form before any dependency runs, so the size checks cannot
            # be dependencies: the route checks Content-Length (411 / 413) and parses the
            # form itself, under its limits and naming a parser error (400); FastAPI's
            # handler then reuses the form the request holds. A middleware would do the
            # same for every multipart route, but only these routes take uploads.
            settings = request.app.state.settings
            check_upload_length(request, settings)
            try:
                await request.form(**FORM_LIMITS)
            except (HTTPException, MultiPartException) as exc:  # Starlette wraps the latter
                detail = exc.detail if isinstance(exc, HTTPException) else exc.message
                message = f"the multipart body is malformed: {detail}"
                raise ApiError(400, "malformed_form", message) from None
            token = form_json_depth.set(settings.max_json_depth)
            try:
                return await handler(request)
            finally:
                form_json_depth.reset(token)

        return parse_then_handle


class JsonRoute(APIRoute):
    """The JSON route of a path with an upload twin: it takes what the twin declines,
    answers 415 for a type that is neither, and 400 for a body that is not JSON."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def decode_then_handle(request: Request) -> Response:
            kind = content_type(request.headers)
            if kind != JSON:
                message = f"send {JSON} or {MULTIPART}, not {kind or 'no type'}"
                raise ApiError(415, "unsupported_media_type", message)
            try:
                await request.json()  # kept by the request: FastAPI's handler reuses it
            except ValueError:  # includes a body that is not UTF-8
                raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
            return await handler(request)

        return decode_then_handle


def install_openapi(app: FastAPI) -> None:
    """`app.openapi()` documents each upload route's multipart body as a second content
    type of the JSON operation on its path (two routes, one operation)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _merged_openapi(app)
        return app.openapi_schema

    app.openapi = openapi


def _merged_openapi(app: FastAPI) -> dict[str, Any]:
    contexts = list(iter_route_contexts(app.routes))
    uploads = [c for c in contexts if isinstance(c.original_route, UploadRoute)]
    others = [c for c in contexts if not isinstance(c.original_route, UploadRoute)]
    info = {"title": app.title, "version": app.version, "openapi_version": app.openapi_version}
    document = get_openapi(**info, description=app.description, routes=others)
    twins = get_openapi(**info, routes=uploads)
    for path, operations in twins["paths"].items():
        for method, operation in operations.items():
            body = document["paths"][path][method]["requestBody"]
            body["content"].update(operation["requestBody"]["content"])
    schemas = {**document["components"]["schemas"], **twins["components"]["schemas"]}
    document["components"]["schemas"] = dict(sorted(schemas.items()))
    return document
