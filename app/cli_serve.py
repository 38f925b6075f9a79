"""`chan serve`: run the search service (API + web page) with uvicorn. Flags override
the `CHAN_*` environment variables; both go through the same validated Settings."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from pydantic import ValidationError

logger = logging.getLogger(__name__)

FLAGS = {  # flag -> (Settings field, type, help)
    "--index": ("index", Path, "index directory (CHAN_INDEX)"),
    "--checkpoint": ("checkpoint", Path, "checkpoint directory (default: the manifest's)"),
    "--host": ("host", str, "address to listen on (127.0.0.1)"),
    "--port": ("port", int, "port (8000)"),
    "--workers": ("workers", int, "server processes, each with its own copy (1)"),
    "--torch-threads": ("torch_threads", int, "threads per torch product (2)"),
    "--inference-threads": ("inference_threads", int, "searches run at once (1)"),
    "--queue-size": ("queue_size", int, "searches waiting before 503 (32)"),
    "--image-root": ("image_root", Path, "folder for relative image paths"),
    "--exhaustive-max-images": ("exhaustive_max_images", int, "allow exhaustive up to N"),
}


def add_subcommands(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the search API and web page",
        description="Serve an index: REST API under /v1, web page at /, /healthz, /readyz, "
        "/metrics. Every setting is also a CHAN_* environment variable (see README).",
    )  # fmt: skip
    for flag, (_, kind, text) in FLAGS.items():
        parser.add_argument(flag, type=kind, help=text)
    parser.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    parser.set_defaults(func=run_serve)


def settings_from_args(args: argparse.Namespace):
    """Settings from the environment, with the given flags on top; a bad value is a
    one-line ValueError naming the setting."""
    from app.settings import Settings

    given = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in
             FLAGS.items()}  # fmt: skip
    given["log_json"] = args.log_json
    try:
        return Settings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "settings"
        hint = " (set --index or CHAN_INDEX)" if where == "index" else ""
        raise ValueError(f"{where}: {error['msg']}{hint}") from None


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.logs import configure_logging

    settings = settings_from_args(args)
    configure_logging(settings.log_json)
    # worker processes rebuild the settings from the environment
    for name, value in settings.model_dump(exclude_none=True).items():
        if name == "api_key":
            value = settings.api_key.get_secret_value()
        elif name == "cors_origins":
            value = ",".join(value)
        os.environ[f"CHAN_{name.upper()}"] = str(value)
    logger.info("serving %s on http://%s:%d", settings.index, settings.host, settings.port)
    uvicorn.run(
        "app.main:app_from_env", factory=True, host=settings.host, port=settings.port,
        workers=settings.workers, access_log=False, log_config=None,
        timeout_graceful_shutdown=10,
    )  # fmt: skip
    return 0
