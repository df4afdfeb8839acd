"""``bfaseg`` entry point.

Each sub-command lives in its own module ``bfaseg.cli.<name>`` exposing
``register(subparsers)``, which adds a parser and sets ``func`` to a callable
``func(args) -> int``. Adding a command = one module + one line in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import traceback

from bfaseg import __version__
from bfaseg.errors import BfasegError, Interrupted

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


class _OneLine(logging.Formatter):
    """The message; warnings and worse prefixed ``warning: `` / ``error: `` like the CLI's own errors."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return f"{record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (which tests and callers may swap), one line per record."""

    def __init__(self):
        super().__init__()
        self.setFormatter(_OneLine())

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
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback of an unexpected error (default: one line)")
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
    old_term = signal.signal(signal.SIGTERM, _terminate) if _default_sigterm() else None
    try:
        return int(args.func(args) or 0)
    except BfasegError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        # atomic writes unwind on KeyboardInterrupt: the file being written is gone, finished ones stay
        print("error: interrupted by Ctrl-C; files being written were removed, finished outputs kept",
              file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an input no check knew: still one line, naming what failed
        if args.debug:
            traceback.print_exc()
        print(f"error: {_one_line(exc)} (unexpected; rerun with --debug for the traceback and please report it)",
              file=sys.stderr)
        return 1
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _default_sigterm() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)


def _terminate(signum, frame):
    """SIGTERM unwinds like Ctrl-C, so atomic writes remove their temporary files (training has its own handler)."""
    raise Interrupted("terminated by SIGTERM; files being written were removed, finished outputs kept")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:300]
    where = ""
    filename = getattr(exc, "filename", None)
    if filename and str(filename) not in text:
        where = f"{filename}: "
    return f"{where}{type(exc).__name__}: {text}" if text else f"{where}{type(exc).__name__}"


if __name__ == "__main__":
    raise SystemExit(main())
