"""Shared pieces of the routes: the service from app state, limits checks, reading an
upload within its limits, and running a search in the bounded executor."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.datastructures import UploadFile

from app.errors import ApiError
from app.metrics import Metrics
from app.schemas import SearchOptions
from app.service import Loaded, SearchService
from app.settings import Settings

UPLOAD_TYPES = {"image/jpeg", "image/png", "image/webp"}
FORM_OVERHEAD_BYTES = 64 << 10  # multipart boundaries and small fields around the file


def get_service(request: Request) -> SearchService:
    return request.app.state.service


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


ServiceDep = Annotated[SearchService, Depends(get_service)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def check_options(options: SearchOptions, settings: Settings, loaded: Loaded) -> None:
    """Limits that depend on the configuration, not on the schema."""
    if options.k > settings.max_k:
        raise ApiError(422, "invalid_request", f"k: at most {settings.max_k} (got {options.k})")
    if options.candidates is not None and options.candidates > settings.max_candidates:
        raise ApiError(
            422,
            "invalid_request",
            f"candidates: at most {settings.max_candidates} (got {options.candidates})",
        )
    check_filter(options.filter, settings)
    images = loaded.searcher.num_images
    if options.exhaustive and images > settings.exhaustive_max_images:
        raise ApiError(
            400,
            "exhaustive_not_allowed",
            f"exhaustive search is allowed up to {settings.exhaustive_max_images:,} images; "
            f"this gallery has {images:,}: drop `exhaustive` or narrow it with a `filter`",
        )


def check_filter(metadata_filter: dict[str, Any] | None, settings: Settings) -> None:
    """A filter's size, bounded before it becomes SQL."""
    if not metadata_filter:
        return
    if len(metadata_filter) > settings.max_filter_keys:
        raise ApiError(422, "invalid_request", f"filter: at most {settings.max_filter_keys} "
                       f"keys (got {len(metadata_filter):,})")  # fmt: skip
    values = sum(len(v) if isinstance(v, list) else 1 for v in metadata_filter.values())
    if values > settings.max_filter_values:
        raise ApiError(422, "invalid_request", f"filter: at most {settings.max_filter_values} "
                       f"values in all (got {values:,})")  # fmt: skip


def check_text(text: str, settings: Settings) -> None:
    if len(text) > settings.max_text_chars:
        raise ApiError(
            422,
            "invalid_request",
            f"text: at most {settings.max_text_chars} characters (got {len(text):,})",
        )
    if not text.strip():
        raise ApiError(422, "invalid_request", "text: must contain a word")


def check_upload_length(request: Request, settings: Settings) -> None:
    """Refuse an oversized or unsized upload from its headers, before reading it."""
    length = request.headers.get("content-length")
    if length is None:
        raise ApiError(411, "length_required", "send uploads with a Content-Length header")
    if not length.isdigit() or int(length) > settings.max_upload_bytes + FORM_OVERHEAD_BYTES:
        raise ApiError(
            413,
            "too_large",
            f"uploads are limited to {settings.max_upload_bytes:,} "
            "bytes: downscale or recompress the image",
        )


async def read_upload(upload: UploadFile, settings: Settings) -> bytes:
    """The bytes of the `file` part, with its declared type and size checked."""
    declared = (upload.content_type or "").split(";")[0].strip().lower()
    if declared not in UPLOAD_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"file: {declared or 'no'} content type; send one of {', '.join(sorted(UPLOAD_TYPES))}",
        )
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise ApiError(413, "too_large", f"file: over {settings.max_upload_bytes:,} bytes")
    if not data:
        raise ApiError(400, "bad_image", "file: the upload is empty")
    return data
