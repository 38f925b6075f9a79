"""The `chan` command line: `main` and `build_parser`; argparse lives here, one module a room."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Sequence

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The full `chan` parser. Cheap to build: each subcommand module imports its heavy
    dependencies (torch, nltk, the training code) only inside the function that runs it."""
    from app.cli import bench, features, index, model, serve, synth, training

    parser = argparse.ArgumentParser(
        prog="chan", description="CHAN image-text retrieval: model, index builder, search service."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for room in (synth, features, training, model, index, serve, bench):  # the --help order
        room.add_subcommands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `chan` with argv; returns the exit code. User errors print one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        PermissionError,
    ) as exc:
        print(f"chan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        reason = exc.strerror or str(exc)
        if type(exc) is OSError:  # a bare one says only "No space left on device"
            reason += f"{where}: free disk space and run the command again"
        print(f"chan {args.command}: error: {reason}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"chan {args.command}: interrupted", file=sys.stderr)
        return 130
