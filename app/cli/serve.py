"""`chan serve`: run the search service (API + web page) with uvicorn. Flags override
the `CHAN_*` environment variables; both go through the same validated Settings."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

FLAGS = {  # flag -> (Settings field, type, help)
    "--index": ("index", Path, "index directory (CHAN_INDEX)"),
    "--checkpoint": ("checkpoint", Path, "checkpoint directory (default: the manifest's)"),
    "--host": ("host", str, "address to listen on (127.0.0.1)"),
    "--port": ("port", int, "port (8000)"),
    "--workers": ("workers", int, "server processes, each with its own copy (1)"),
    "--torch-threads": ("torch_threads", int, "threads per torch product (1)"),
    "--inference-threads": ("inference_threads", int, "searches run at once (2)"),
    "--queue-size": ("queue_size", int, "searches waiting before 503 (32)"),
    "--image-root": ("image_root", Path, "folder for relative image paths"),
    "--exhaustive-max-images": ("exhaustive_max_images", int, "allow exhaustive up to N"),
    "--watch-seconds": (
        "watch_seconds",
        float,
        "look for a new index generation every S seconds (2; 0: never)",
    ),
}


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the search API and web page",
        description="Serve an index: REST API under /v1, web page at /, /healthz, /readyz, "
        "/metrics. Every setting is also a CHAN_* environment variable (see README).",
    )  # fmt: skip
    for flag, (_, kind, text) in FLAGS.items():
        parser.add_argument(flag, type=kind, help=text)
    parser.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    parser.set_defaults(func=run_serve)

    demo = subparsers.add_parser(
        "demo", help="synthetic world -> features -> model -> index -> served web page",
        description="The whole product on the embedded default: generate the synthetic "
        "world, extract demo features, train the demo model, index the test split and "
        "serve it. Each step reuses what an earlier run finished.",
    )  # fmt: skip
    demo.add_argument("--workdir", type=Path, default=Path("data/demo"))
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--images", type=int, default=7000, help="world size (7000)")
    demo.add_argument("--epochs", type=int, default=3, help="training epochs (3)")
    demo.add_argument("--train-budget-min", type=float, default=5.0,
                      help="stop training after this many minutes (5)")  # fmt: skip
    demo.add_argument("--no-serve", action="store_true", help="prepare everything, then exit")
    demo.set_defaults(func=run_demo)


def settings_from_args(args: argparse.Namespace):
    """Settings from the environment, with the given flags on top; a bad value is a
    one-line ValueError naming the setting."""
    from pydantic import ValidationError

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


def run_demo(args: argparse.Namespace) -> int:
    import uvicorn

    from app.demo import DemoOptions, prepare_demo
    from app.main import create_app
    from app.settings import Settings

    options = DemoOptions(workdir=args.workdir, images=args.images, epochs=args.epochs,
                          train_budget_s=args.train_budget_min * 60)  # fmt: skip
    paths = prepare_demo(options)
    if args.no_serve:
        return 0
    settings = Settings(index=paths.index, checkpoint=paths.checkpoint, host=args.host,
                        port=args.port)  # fmt: skip
    logger.info("open http://%s:%d in a browser (Ctrl-C stops)", args.host, args.port)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, access_log=False,
                log_config=None)  # fmt: skip
    return 0
