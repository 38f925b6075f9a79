"""`create_app(settings)`: the FastAPI service. The model and index load in the
lifespan, in the background, so `/healthz` answers at once and `/readyz` turns true
when both are loaded and verified."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.errors import install_error_handlers
from app.metrics import Metrics
from app.middleware import install_middleware
from app.routes import gallery, page, search, system
from app.routes.content_type import install_openapi
from app.service import SearchService
from app.settings import Settings

logger = logging.getLogger(__name__)

API_VERSION = "1"


def create_app(settings: Settings, service: SearchService | None = None) -> FastAPI:
    """The app for one index. `service` lets tests pass one that is already loaded."""
    service = service or SearchService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        torch.set_num_threads(settings.torch_threads)
        service.start()
        loading = None
        if not service.ready:
            loading = asyncio.create_task(asyncio.to_thread(_load, service))
        try:
            yield
        finally:
            if loading is not None and not loading.done():
                loading.cancel()
            service.close()

    app = FastAPI(
        title="CHAN image-text retrieval",
        version=API_VERSION,
        description="Text -> images and image -> captions search with CHAN hard alignment. "
        'Errors are JSON `{"error": {"code", "message", "request_id"}}`.',
        lifespan=lifespan,
    )
    app.state.settings, app.state.service = settings, service
    app.state.metrics = Metrics(lambda: service.executor.pending)
    install_error_handlers(app)
    install_middleware(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )  # fmt: skip
    for module in (search, gallery, system, page):
        app.include_router(module.router)
    page.mount_static(app)
    install_openapi(app)
    return app


def _load(service: SearchService) -> None:
    try:
        service.load()
    except (OSError, ValueError) as exc:  # a damaged or missing index: one line says why
        logger.error("could not load the index: %s (/readyz answers 503 with it)", exc)
    except Exception:  # reported by /readyz; the process stays up for its probes
        logger.exception("could not load the index")


def app_from_env() -> FastAPI:
    """The app for the settings in the environment (what `chan serve` workers run)."""
    from app.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_json)
    return create_app(settings)
