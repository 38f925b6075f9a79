"""Service settings: `CHAN_*` environment variables, overridden by `chan serve` flags,
validated once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the service can be told. Limits protect the process from what any
    client can send; every one of them answers a 4xx that names the limit."""

    model_config = SettingsConfigDict(env_prefix="CHAN_", extra="forbid", frozen=True)

    index: Path = Field(description="index directory built by `chan index build`")
    checkpoint: Path | None = Field(
        None, description="checkpoint directory (default: the one the index manifest names)"
    )
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on (0: any free port)")
    workers: int = Field(1, ge=1, le=64, description="server processes (each loads the index)")
    # One thread per search and as many searches as cores: a search's products are small,
    # and on 2 cores a 2-thread torch op spent more time synchronising than computing
    # (100,000 images: p50 41 ms with 1 thread, 72-95 ms with 2; see README).
    torch_threads: int = Field(1, ge=1, le=256, description="threads of each torch product")
    inference_threads: int = Field(2, ge=1, le=64, description="searches run at once")
    queue_size: int = Field(32, ge=1, description="searches waiting before 503 + Retry-After")
    api_key: SecretStr | None = Field(
        None, description="when set, every route but /healthz, /readyz and / needs it "
        "(header `X-API-Key` or `Authorization: Bearer`)",
    )  # fmt: skip
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="allowed CORS origins (comma-separated in the env)"
    )
    max_text_chars: int = Field(1000, ge=1, description="longest query text")
    max_k: int = Field(100, ge=1, le=1000, description="most results per query")
    max_candidates: int = Field(5000, ge=1, description="largest shortlist a client may ask")
    max_json_bytes: int = Field(64 << 10, ge=1024, description="largest JSON request body")
    max_json_depth: int = Field(
        32, ge=2, le=1000, description="deepest nesting of arrays/objects in a JSON body or field"
    )
    max_filter_keys: int = Field(32, ge=1, description="most keys in a metadata filter")
    max_filter_values: int = Field(
        256, ge=1, description="most values in a metadata filter, all keys together"
    )
    max_upload_bytes: int = Field(10 << 20, ge=1024, description="largest image upload")
    max_image_pixels: int = Field(40_000_000, ge=1, description="largest upload in pixels")
    exhaustive_max_images: int = Field(
        20_000, ge=0, description="`exhaustive` is allowed only up to this gallery size"
    )
    image_root: Path | None = Field(
        None, description="folder that relative image paths of the index are read from"
    )
    checksums: bool = Field(True, description="verify index checksums when loading")
    watch_seconds: float = Field(
        2.0, ge=0, description="how often the index's generation is looked at; a new one "
        "(after `chan index add`, `delete`, `compact` or a rebuild) is opened beside the "
        "served one and swapped in (0: only on POST /v1/admin/reload)",
    )  # fmt: skip
    log_json: bool = Field(False, description="one JSON object per log line")

    @field_validator("index")
    @classmethod
    def _index_exists(cls, value: Path) -> Path:
        from index_builder.format.layout import shard_dirs

        try:
            shard_dirs(value)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{value} is not an index directory or a folder of shards "
                             f"({exc})") from None  # fmt: skip
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value):
        if isinstance(value, str):  # CHAN_CORS_ORIGINS="https://a,https://b"
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value
