"""The `chan` command line: one entry point whose subcommands come from each package."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Sequence

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The full `chan` parser; subcommand modules are imported here, their heavy
    dependencies only when a command runs."""
    from app.cli import index as index_cli
    from app.cli import model as model_cli
    from app.cli import serve as cli_serve

    parser = argparse.ArgumentParser(
        prog="chan", description="CHAN image-text retrieval: model, index builder, search service."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_cli.add_subcommands(subparsers)
    index_cli.add_subcommands(subparsers)
    cli_serve.add_subcommands(subparsers)
    bench = subparsers.add_parser("bench", help="benchmarks that print side-by-side ratios")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    model_cli.add_bench_subcommands(bench_sub)
    index_cli.add_bench_subcommands(bench_sub)
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
