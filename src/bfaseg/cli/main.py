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
    "suggest",
]


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (which tests and callers may swap), message only."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging() -> None:
    """Library notices (``logging`` under ``bfaseg``) go to stderr, one line each."""
    logger = logging.getLogger("bfaseg")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


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
    configure_logging()
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
