"""Per-request plumbing: a request id (taken from `X-Request-ID` when sane, returned in
the same header), the API key check, one structured log line, and the metrics. An
exception that no handler mapped ends here: logged once with its traceback and the
request id, counted, and answered as the JSON `internal` 500."""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from urllib.parse import unquote

from fastapi import FastAPI, Request
from starlette.middleware.base import BaseHTTPMiddleware

from app.bodylimit import JsonBodyLimit
from app.errors import error_response, internal_error_response

logger = logging.getLogger("app.access")

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
PUBLIC_PATHS = {"/healthz", "/readyz", "/", "/favicon.ico"}
PUBLIC_PREFIXES = ("/static/",)
API_KEY_COOKIE = "chan_api_key"


class RequestMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):
        incoming = request.headers.get("x-request-id", "")
        request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request.state.request_id = request_id
        started = time.perf_counter()
        app = request.app
        try:
            refused = _check_api_key(request, app.state.settings.api_key)
            response = refused or await call_next(request)
        except Exception:
            logger.exception(
                "%s %s: unhandled exception (request id %s)", request.method,
                request.url.path, request_id,
                extra={"request_id": request_id, "route": _route_name(request)},
            )  # fmt: skip
            app.state.metrics.internal_errors.labels(_route_name(request)).inc()
            response = internal_error_response(request)
        elapsed = time.perf_counter() - started
        route = _route_name(request)
        response.headers["X-Request-ID"] = request_id
        metrics = app.state.metrics
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        metrics.latency.labels(route, request.method).observe(elapsed)
        logger.info(
            "%s %s %d %.1f ms", request.method, request.url.path, response.status_code,
            elapsed * 1000,
            extra={"request_id": request_id, "route": route, "status": response.status_code,
                   "duration_ms": round(elapsed * 1000, 2)},
        )  # fmt: skip
        return response


def _check_api_key(request: Request, api_key):
    """None when the request may pass, else the 401 response."""
    if api_key is None:
        return None
    path = request.url.path
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return None
    given = request.headers.get("x-api-key") or unquote(request.cookies.get(API_KEY_COOKIE, ""))
    auth = request.headers.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    expected = api_key.get_secret_value()
    if given and hmac.compare_digest(given.encode(), expected.encode()):
        return None
    message = "missing API key" if not given else "wrong API key"
    return error_response(
        401, "unauthorized", f"{message}: send it as `X-API-Key` or `Authorization: Bearer`",
        {"WWW-Authenticate": "Bearer"}, request,
    )  # fmt: skip


def _route_name(request: Request) -> str:
    """The route's path template (bounded label values), not the raw path."""
    route = request.scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def install_middleware(app: FastAPI) -> None:
    # the last added runs first: the request id and the log line wrap the body bounds
    app.add_middleware(JsonBodyLimit)
    app.add_middleware(RequestMiddleware)
