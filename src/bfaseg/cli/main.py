"""``bfaseg`` entry point.

Each sub-command lives in its own module ``bfaseg.cli.<name>`` exposing
``register(subparsers)``, which adds a parser and sets ``func`` to a callable
``func(args) -> int``. Adding a command = one module + one line in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from bfaseg import __version__
from bfaseg.errors import BfasegError

COMMANDS = [
    "train",
    "demo",
    "evaluate",
    "predict",
    "metrics",
    "prepare",
    "report",
    "experiment",
]


class _StderrLines(logging.Handler):
    """Library log records as one line each on the current ``sys.stderr``: ``warning: ...``; info as is.

    The library (``bfaseg.*``) logs and never prints; only the command line decides where it goes.
    """

    def emit(self, record: logging.LogRecord) -> None:
        prefix = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        print(prefix + record.getMessage(), file=sys.stderr, flush=True)


def _route_library_logs() -> None:
    logger = logging.getLogger("bfaseg")
    if not any(isinstance(h, _StderrLines) for h in logger.handlers):
        logger.addHandler(_StderrLines())
    logger.setLevel(logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bfaseg",
        description="Semi-supervised medical image segmentation with boundary feature alignment.",
    )
    parser.add_argument("--version", action="version", version=f"bfaseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"bfaseg.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bfaseg.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _route_library_logs()
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except BfasegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
