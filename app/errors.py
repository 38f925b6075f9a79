"""Every error the service answers is JSON `{"error": {"code", "message", "request_id"}}`
with a 4xx for anything a client can cause; a 5xx means a bug or an unavailable index.
Only the project's own error types map to a 4xx: any other exception, a plain ValueError
included, is a bug, caught by the request middleware and answered as `internal` 500
(`internal_error_response`), never as a plain-text page."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.service import NotReady, Overloaded
from index_builder.errors import QueryError, UnknownIdError
from model.features.images import ImageError

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1


class ApiError(Exception):
    """A client error with its HTTP status, a stable code and a message saying what to fix."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(
    status: int, code: str, message: str, headers=None, request: Request | None = None
) -> JSONResponse:
    """The JSON error body; `request_id` is the request's (the `X-Request-ID` it answers
    with) when the request went through the middleware."""
    request_id = getattr(request.state, "request_id", None) if request is not None else None
    body = {"error": {"code": code, "message": message, "request_id": request_id}}
    return JSONResponse(body, status_code=status, headers=headers)


def internal_error_response(request: Request) -> JSONResponse:
    """500 for an unexpected exception: no internals in the body, only the id to quote."""
    request_id = getattr(request.state, "request_id", None)
    message = f"internal error: the server logged it under request id {request_id}"
    return error_response(500, "internal", message, request=request)


def install_error_handlers(app: FastAPI) -> None:
    """Domain errors -> HTTP: ApiError its own status, ImageError and QueryError 400 (422
    for schema violations), UnknownIdError 404, Overloaded 503 + Retry-After, NotReady 503.
    No handler for ValueError itself: one that is not a QueryError or an ImageError is a
    programming error, and a 400 would hide it."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message = describe_validation(exc.errors())
        return error_response(422, "invalid_request", message, request=request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), exc.headers, request)

    @app.exception_handler(ImageError)
    async def _image(request: Request, exc: ImageError):
        return error_response(400, "bad_image", str(exc), request=request)

    @app.exception_handler(UnknownIdError)
    async def _unknown(request: Request, exc: UnknownIdError):
        return error_response(404, "unknown_id", str(exc), request=request)

    @app.exception_handler(QueryError)
    async def _query(request: Request, exc: QueryError):
        return error_response(400, "bad_request", str(exc), request=request)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded):
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        return error_response(503, "overloaded", f"{exc}; retry shortly", headers, request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, _: Exception):
        # Only for exceptions raised outside the request middleware (which catches, logs
        # and counts the rest): Starlette sends this and then lets the server log it.
        return internal_error_response(request)

    @app.exception_handler(NotReady)
    async def _not_ready(request: Request, exc: NotReady):
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        return error_response(503, "not_ready", str(exc), headers, request)


def describe_validation(errors: list[dict]) -> str:
    """pydantic's error list -> one readable line: `body.k: Input should be ... (got 0)`."""
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        message = error.get("msg", "invalid")
        whole_body = where == "body" and isinstance(error.get("input"), dict)  # not echoed
        if "input" in error and error.get("type") != "missing" and not whole_body:
            shown = repr(error["input"])
            message += f" (got {shown[:60]}{'…' if len(shown) > 60 else ''})"
        parts.append(f"{where}: {message}")
    return "; ".join(parts) or "invalid request"
