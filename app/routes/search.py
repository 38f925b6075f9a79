"""`/v1/search/images`, `/v1/search/captions` and `/v1/score`: validate, run the search
in the bounded executor, shape the hits."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form
from fastapi.routing import APIRoute
from PIL import Image, UnidentifiedImageError

from app.deps import MetricsDep, ServiceDep, SettingsDep, check_options, check_text, read_upload
from app.metrics import Metrics
from app.routes.content_type import MULTIPART, JsonRoute, UploadRoute
from app.schemas import (
    ERROR_RESPONSES,
    CaptionSearchRequest,
    CaptionSearchResponse,
    CaptionUploadForm,
    ImageSearchRequest,
    ImageSearchResponse,
    ScoreRequest,
    ScoreResponse,
    ScoreUploadForm,
    SearchOptions,
)
from app.service import Loaded, SearchService
from app.settings import Settings
from index_builder.search.results import as_json
from model.features.images import ImageError, load_image

router = APIRouter(prefix="/v1", tags=["search"], responses=ERROR_RESPONSES)

UPLOAD_FORMATS = {"JPEG", "PNG", "WEBP"}
THUMBNAIL_SIZE = 256


def _post(path: str, route_class: type[APIRoute], response_model: type) -> Callable:
    """`@router.post` with a route class (FastAPI's decorators take none). Captions and
    score take a JSON body or an upload on one path: each upload route is registered first
    and takes only multipart/form-data, its JSON route the rest (app.routes.content_type).
    Both sit on `router` itself, so the path template the metrics see is the full one."""

    def register(endpoint: Callable) -> Callable:
        router.add_api_route(path, endpoint, methods=["POST"], response_model=response_model,
                             route_class_override=route_class)  # fmt: skip
        return endpoint

    return register


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
    answer = as_json(result)
    for hit in answer["hits"]:
        hit.update(image_urls(hit["image_id"]))
    return answer


@_post("/search/captions", UploadRoute, CaptionSearchResponse)
async def search_captions_upload(
    form: Annotated[CaptionUploadForm, Form(media_type=MULTIPART)],
    service: ServiceDep,
    settings: SettingsDep,
    metrics: MetricsDep,
):
    """Uploaded image -> the k best captions."""
    loaded = service.current
    check_options(form, settings, loaded)
    image = await _decode_upload(form.file, settings, service)
    return await _search_captions({"image": image}, form, loaded, service, metrics)


@_post("/search/captions", JsonRoute, CaptionSearchResponse)
async def search_captions(
    body: CaptionSearchRequest, service: ServiceDep, settings: SettingsDep, metrics: MetricsDep
):
    """Image -> the k best captions. JSON `{"image_id": ...}` for a gallery image, or a
    multipart upload (`file`: JPEG, PNG or WebP, plus the same options as form fields)."""
    loaded = service.current
    check_options(body, settings, loaded)
    return await _search_captions({"image_id": body.image_id}, body, loaded, service, metrics)


async def _search_captions(query: dict[str, Any], options: SearchOptions, loaded: Loaded,
                           service: SearchService, metrics: Metrics) -> dict[str, Any]:  # fmt: skip
    result = await service.executor.run(
        loaded.searcher.search_captions, **query, **_search_options(options)
    )
    metrics.observe_search("image_to_text", result)
    return as_json(result)


@_post("/score", UploadRoute, ScoreResponse)
async def score_upload(
    form: Annotated[ScoreUploadForm, Form(media_type=MULTIPART)],
    service: ServiceDep,
    settings: SettingsDep,
):
    """The exact CHAN score of one `text` and an uploaded image."""
    check_text(form.text, settings)
    image = await _decode_upload(form.file, settings, service)
    return await service.executor.run(service.current.searcher.score, form.text, image=image)


@_post("/score", JsonRoute, ScoreResponse)
async def score(body: ScoreRequest, service: ServiceDep, settings: SettingsDep):
    """The exact CHAN score of one text and one image (gallery `image_id` in JSON, or an
    uploaded `file` with a `text` field), with the word -> region alignment."""
    check_text(body.text, settings)
    searcher = service.current.searcher
    return await service.executor.run(searcher.score, body.text, image_id=body.image_id)


def _search_options(options: SearchOptions) -> dict[str, Any]:
    """k, candidates, explain, exhaustive, filter: the searcher's keyword arguments."""
    return options.model_dump(include=set(SearchOptions.model_fields))


async def _decode_upload(upload: Any, settings: Settings, service: SearchService) -> Any:
    """Upload -> RGB PIL image, decoded in the executor (decoding is CPU work), with the
    pixel limit checked from the header before any pixel is decoded."""
    data = await read_upload(upload, settings)

    try:
        kind = Image.open(BytesIO(data)).format  # reads the header only
    except Image.DecompressionBombError:
        kind = None  # let load_image name the pixel limit
        load_image(data, settings.max_image_pixels)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        kind = None  # Pillow's header parsers: a truncated PNG header is a ValueError
    if kind not in UPLOAD_FORMATS:
        raise ImageError("file: not a JPEG, PNG or WebP image")
    return await service.executor.run(load_image, data, settings.max_image_pixels)


def image_urls(image_id: str) -> dict[str, str]:
    url = f"/v1/images/{quote(image_id, safe='')}"
    return {"image_url": url, "thumbnail_url": f"{url}?size={THUMBNAIL_SIZE}"}
