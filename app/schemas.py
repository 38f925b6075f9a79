"""Request and response bodies of the `/v1` API (they are the OpenAPI schema)."""

from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any

from fastapi import UploadFile
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from starlette.datastructures import UploadFile as StarletteUploadFile

from app.bodylimit import depth_message, json_depth
from app.settings import Settings

# Filter values: metadata `key: value` (dotted keys reach into nested metadata); a list
# matches any of its values.
Scalar = str | int | float | bool
FilterValue = Scalar | list[Scalar]
# ids are matched exactly; none holds a control character (the index refuses them)
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchOptions(_Body):
    k: int = Field(10, ge=1, description="results to return")
    candidates: int | None = Field(None, ge=1, description="shortlist size C (default: index)")
    explain: bool = Field(False, description="per query word, the region that won its max")
    exhaustive: bool = Field(False, description="score every item exactly (small galleries)")
    filter: dict[str, FilterValue] | None = Field(
        None, description='metadata filter, e.g. {"split": "test", "tags": ["a", "b"]}'
    )


class ImageSearchRequest(SearchOptions):
    text: str = Field(min_length=1, description="the query text")


class CaptionSearchRequest(SearchOptions):
    image_id: str = Field(
        min_length=1, max_length=512, pattern=ID_PATTERN, description="a gallery image id"
    )


class ScoreRequest(_Body):
    text: str = Field(min_length=1)
    image_id: str = Field(min_length=1, max_length=512, pattern=ID_PATTERN)


# The depth bound of JSON-typed form fields is a setting, and FastAPI validates a form model
# without a pydantic context: the upload route sets this around each request's validation.
form_json_depth: ContextVar[int] = ContextVar(
    "form_json_depth", default=Settings.model_fields["max_json_depth"].default
)


class _UploadForm(_Body):
    """A multipart upload: the query image as the `file` part, the other fields as text."""

    file: UploadFile = Field(description="the query image: JPEG, PNG or WebP")

    @model_validator(mode="before")
    @classmethod
    def _one_file_part(cls, data: Any) -> Any:
        """`file` is the one file part. (The form holds Starlette's UploadFile, of which
        FastAPI's is a subclass.)"""
        for key, value in data.items() if isinstance(data, dict) else ():
            if key == "file" and not isinstance(value, StarletteUploadFile):
                message = "send the image as a multipart file part named `file`, not a text field"
                raise PydanticCustomError("file_part", message)
            if key != "file" and isinstance(value, StarletteUploadFile):
                raise PydanticCustomError(
                    "file_part", "only `file` may be a file part, not '{key}'", {"key": key}
                )
        return data


class CaptionUploadForm(SearchOptions, _UploadForm):
    """An image upload with the search options as form fields (`filter`: a JSON object)."""

    @field_validator(*SearchOptions.model_fields, mode="before")
    @classmethod
    def _json_typed(cls, value: Any, info: ValidationInfo) -> Any:
        """Form text -> the option; its nesting is bounded before `filter` is decoded."""
        if not isinstance(value, str):
            return value
        depth, limit = json_depth(value.encode()), form_json_depth.get()
        if depth > limit:
            message = depth_message(depth, limit, f"form field {info.field_name!r}")
            raise PydanticCustomError("json_too_deep", "{message}", {"message": message})
        if info.field_name != "filter":
            return value  # pydantic reads ints and booleans from their text
        try:
            return json.loads(value)
        except ValueError:
            return value  # the type check names the field and shows the value


class ScoreUploadForm(_UploadForm):
    """An image upload and the `text` to score against it."""

    text: str = Field(min_length=1)


class WordMatch(BaseModel):
    token: str
    region: int = Field(description="index of the region that won this word's max")
    similarity: float
    box: list[float] | None = Field(description="x0, y0, x1, y1 as fractions of the image")


class ImageHit(BaseModel):
    rank: int
    score: float
    image_id: str
    uri: str | None
    image_url: str
    thumbnail_url: str
    metadata: dict[str, Any]
    explain: list[WordMatch] | None = None
    shard: int | None = Field(None, description="the shard it came from (sharded indexes)")


class CaptionHit(BaseModel):
    rank: int
    score: float
    caption_id: str
    text: str
    image_id: str | None
    metadata: dict[str, Any]
    explain: list[WordMatch] | None = None
    shard: int | None = Field(None, description="the shard it came from (sharded indexes)")


class Timings(BaseModel):
    model_config = ConfigDict(extra="allow")
    encode_ms: float
    total_ms: float
    shortlist_ms: float | None = None
    rerank_ms: float | None = None
    exact_ms: float | None = None


class ImageSearchResponse(BaseModel):
    hits: list[ImageHit]
    tokens: list[str]
    timings_ms: Timings
    candidates: int = Field(description="items scored exactly")
    exhaustive: bool


class CaptionSearchResponse(BaseModel):
    hits: list[CaptionHit]
    query_boxes: list[list[float]] | None
    timings_ms: Timings
    candidates: int
    exhaustive: bool


class ScoreResponse(BaseModel):
    score: float
    alignment: list[WordMatch]
    query_boxes: list[list[float]] | None


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. `invalid_request`")
    message: str = Field(description="what went wrong and what to fix")
    request_id: str | None = Field(description="the request's `X-Request-ID`, for reports")


class ErrorBody(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": why}
    for status, why in (
        (400, "the request is well-formed but cannot be served as asked"),
        (401, "the API key is missing or wrong"),
        (404, "unknown image or caption id"),
        (413, "the upload is too large"),
        (415, "unsupported content type"),
        (422, "the body does not match the schema"),
        (500, "an unexpected server error (code `internal`), logged under the request id"),
        (503, "overloaded or not ready: retry after `Retry-After` seconds"),
    )
}
