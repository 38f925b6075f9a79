"""`/v1/search/images`, `/v1/search/captions` and `/v1/score`: validate, run the search
in the bounded executor, shape the hits."""

from __future__ import annotations

from io import BytesIO
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from app.deps import (
    MetricsDep,
    ServiceDep,
    SettingsDep,
    check_options,
    check_text,
    parse_body,
    read_upload,
)
from app.errors import ApiError, describe_validation
from app.schemas import (
    ERROR_RESPONSES,
    CaptionSearchRequest,
    CaptionSearchResponse,
    ImageSearchRequest,
    ImageSearchResponse,
    ScoreRequest,
    ScoreResponse,
    SearchOptions,
)
from app.settings import Settings
from model.features.images import ImageError, load_image

router = APIRouter(prefix="/v1", tags=["search"], responses=ERROR_RESPONSES)

UPLOAD_FORMATS = {"JPEG", "PNG", "WEBP"}
THUMBNAIL_SIZE = 256


def _body_schema(model, form_fields: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """OpenAPI request body for routes that read the request themselves: JSON (the
    pydantic model) or a multipart form with the image as `file`."""
    form = {
        "type": "object",
        "required": ["file", *required],
        "properties": {"file": {"type": "string", "format": "binary"}, **form_fields},
    }
    json_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    json_schema.pop("$defs", None)
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_schema},
                "multipart/form-data": {"schema": form},
            },
        }
    }


_FORM_OPTIONS = {
    "k": {"type": "integer", "minimum": 1, "default": 10},
    "candidates": {"type": "integer", "minimum": 1},
    "explain": {"type": "boolean", "default": False},
    "exhaustive": {"type": "boolean", "default": False},
    "filter": {"type": "string", "description": "JSON object of metadata filters"},
}


@router.post("/search/images", response_model=ImageSearchResponse)
async def search_images(
    body: ImageSearchRequest, service: ServiceDep, settings: SettingsDep, metrics: MetricsDep
):
    """Text -> the k best gallery images."""
    check_text(body.text, settings)
    loaded = service.current
    check_options(body, settings, loaded)
    result = await service.executor.run(
        loaded.searcher.search_images, body.text, **_search_options(body)
    )
    metrics.observe_search("text_to_image", result)
    for hit in result["hits"]:
        hit.update(image_urls(hit["image_id"]))
    return result


@router.post(
    "/search/captions",
    response_model=CaptionSearchResponse,
    openapi_extra=_body_schema(CaptionSearchRequest, _FORM_OPTIONS, []),
)
async def search_captions(
    request: Request, service: ServiceDep, settings: SettingsDep, metrics: MetricsDep
):
    """Image -> the k best captions. JSON `{"image_id": ...}` for a gallery image, or a
    multipart upload (`file`: JPEG, PNG or WebP, plus the same options as form fields)."""
    fields, upload = await parse_body(request, settings)
    loaded = service.current
    if upload is None:
        options = _validated(CaptionSearchRequest, fields)
        query: dict[str, Any] = {"image_id": options.image_id}
    else:
        options = _validated(SearchOptions, fields)
        query = {"image": await _decode_upload(upload, settings, service)}
    check_options(options, settings, loaded)
    result = await service.executor.run(
        loaded.searcher.search_captions, **query, **_search_options(options)
    )
    metrics.observe_search("image_to_text", result)
    return result


@router.post(
    "/score",
    response_model=ScoreResponse,
    openapi_extra=_body_schema(
        ScoreRequest, {"text": {"type": "string", "minLength": 1}}, ["text"]
    ),
)
async def score(request: Request, service: ServiceDep, settings: SettingsDep):
    """The exact CHAN score of one text and one image (gallery `image_id` in JSON, or an
    uploaded `file` with a `text` field), with the word -> region alignment."""
    fields, upload = await parse_body(request, settings)
    loaded = service.current
    if upload is None:
        body = _validated(ScoreRequest, fields)
        text, query = body.text, {"image_id": body.image_id}
    else:
        text = fields.get("text")
        if not isinstance(text, str) or not text:
            raise ApiError(422, "invalid_request", "text: a non-empty form field is required")
        extra = set(fields) - {"text"}
        if extra:
            raise ApiError(422, "invalid_request", f"unknown form fields: {sorted(extra)}")
        query = {"image": await _decode_upload(upload, settings, service)}
    check_text(text, settings)
    return await service.executor.run(loaded.searcher.score, text, **query)


def _search_options(options: SearchOptions) -> dict[str, Any]:
    """k, candidates, explain, exhaustive, filter: the searcher's keyword arguments."""
    return options.model_dump(include=set(SearchOptions.model_fields))


def _validated(model, fields: dict[str, Any]):
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", describe_validation(exc.errors())) from None


async def _decode_upload(upload, settings: Settings, service) -> Any:
    """Upload -> RGB PIL image, decoded in the executor (decoding is CPU work), with the
    pixel limit checked from the header before any pixel is decoded."""
    data = await read_upload(upload, settings)

    try:
        kind = Image.open(BytesIO(data)).format  # reads the header only
    except Image.DecompressionBombError:
        kind = None  # let load_image name the pixel limit
        load_image(data, settings.max_image_pixels)
    except (UnidentifiedImageError, OSError):
        kind = None
    if kind not in UPLOAD_FORMATS:
        raise ImageError("file: not a JPEG, PNG or WebP image")
    return await service.executor.run(load_image, data, settings.max_image_pixels)


def image_urls(image_id: str) -> dict[str, str]:
    url = f"/v1/images/{quote(image_id, safe='')}"
    return {"image_url": url, "thumbnail_url": f"{url}?size={THUMBNAIL_SIZE}"}
