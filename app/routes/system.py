"""Health, readiness, metrics, service info and the admin reload."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict

from app.deps import MetricsDep, ServiceDep, SettingsDep
from app.errors import ApiError
from app.schemas import ERROR_RESPONSES
from app.service import Loaded
from model.errors import first_line

logger = logging.getLogger(__name__)

router = APIRouter(tags=["system"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (it may still be loading)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not loaded (yet)"}})
async def readyz(service: ServiceDep):
    """200 once the model and index are loaded and verified, with what is served."""
    if not service.ready:
        body = {"ready": False, "error": service.error or "loading"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
    loaded = service.current
    return {"ready": True, "index": str(loaded.index_path),
            "checkpoint_sha256": loaded.searcher.checkpoint_sha256,
            "loaded_at": loaded.loaded_at}  # fmt: skip


@router.get("/metrics", response_class=Response)
async def metrics(service: ServiceDep, metrics: MetricsDep):
    """Prometheus text format."""
    metrics.ready.set(1 if service.ready else 0)
    if service.ready:
        summary = service.current.searcher.summary()
        metrics.index_items.labels("images").set(summary["images"])
        metrics.index_items.labels("captions").set(summary["captions"])
        metrics.index_bytes.set(summary["bytes"])
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/info", responses=ERROR_RESPONSES)
async def info(service: ServiceDep, settings: SettingsDep) -> dict[str, Any]:
    """What is served: model, extractor, index summary, search defaults and limits."""
    return describe(service.current, settings)


def describe(loaded: Loaded, settings) -> dict[str, Any]:
    searcher = loaded.searcher
    index = searcher.shards[0].index  # every shard shares the model and the extractor
    checkpoint = searcher.checkpoint
    extractor = index.manifest.get("extractor") or {}
    return {
        "model": {"checkpoint": str(loaded.checkpoint_path),
                  "text_encoder": checkpoint.config.text_encoder if checkpoint else None,
                  "sha256": searcher.checkpoint_sha256,
                  "matching": index.manifest["matching"]},
        "extractor": {k: extractor.get(k) for k in ("name", "num_regions", "dim", "input_size")
                      if k in extractor} or None,
        "index": {"path": str(loaded.index_path)} | searcher.summary(),
        "search": vars(searcher.params) | {"max_k": settings.max_k,
                  "max_text_chars": settings.max_text_chars,
                  "max_upload_bytes": settings.max_upload_bytes,
                  "exhaustive_max_images": settings.exhaustive_max_images},
        "loaded_at": loaded.loaded_at,
    }  # fmt: skip


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: Path | None = None  # default: the configured index path (rebuilt in place)
    checkpoint: Path | None = None  # default: the configured one or the manifest's


@router.post("/v1/admin/reload", responses=ERROR_RESPONSES, tags=["admin"])
async def reload(
    service: ServiceDep, settings: SettingsDep, body: ReloadRequest | None = None
) -> dict[str, Any]:
    """Open an index (a new build) next to the served one and swap to it; requests in
    flight finish on the old one. Needs the API key; refused when none is configured."""
    if settings.api_key is None:
        raise ApiError(403, "admin_disabled", "set CHAN_API_KEY to enable admin routes")
    body = body or ReloadRequest()
    try:
        loaded = await asyncio.to_thread(service.load, body.index, body.checkpoint)
    except Exception as exc:  # whatever the new index did wrong, the old one keeps serving
        if not isinstance(exc, OSError | ValueError):
            logger.exception("reload of %s failed unexpectedly", body.index)
        raise ApiError(
            409, "reload_failed", f"still serving the previous index: {first_line(exc)}"
        ) from None
    return {"reloaded": True, "index": str(loaded.index_path),
            "load_seconds": loaded.load_seconds}  # fmt: skip
