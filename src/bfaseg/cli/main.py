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
from typing import Callable, Iterable

from bfaseg import __version__
from bfaseg.cli import INTERRUPTED
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
    parser.commands = sub.choices  # name -> sub-parser: the defaults that tell given options apart (main)
    return parser


# ----------------------------------------------------------------------------- options that would change nothing
# Options that do not apply, or that another option overrides, are refused by name, never dropped silently.
# main() records in ``args.given`` the options given on the command line (their value differs from the
# parser's default); each command lists its rules, ``(option, dest, why)``: ``why(args)`` returns the reason
# the option does not apply with the other options given, or None. Window options that depend on the
# network (a 2-D network has no windows) are checked where it is known, ``Predictor.from_checkpoint``.

Rule = tuple[str, str, Callable[[object], "str | None"]]


def given(args, dest: str) -> bool:
    """Whether ``--dest`` was given on the command line (False for namespaces not made by ``bfaseg.cli.main``)."""
    return dest in getattr(args, "given", ())


def refuse_inapplicable(args, rules: Iterable[Rule]) -> None:
    """The first rule whose option was given and does not apply: one error naming the option and why."""
    for option, dest, why in rules:
        if given(args, dest):
            reason = why(args)
            if reason:
                raise BfasegError(f"{option}: {reason}")


def check_set_keys(overrides: list[str], implied: dict[str, str]) -> None:
    """``--set KEY=VALUE`` options: a key given twice (the last would silently win), or a key another
    option sets too (``implied``: key -> that option, e.g. ``{"train.iterations": "--iterations 10"}``)."""
    seen: dict[str, str] = {}
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if not key or "=" not in item:
            continue  # malformed: config.apply_overrides says what is wrong with it
        if key in seen:
            raise BfasegError(f"--set {key}: given twice ({seen[key]!r} and {item!r}); the last would silently win")
        seen[key] = item
        if key in implied:
            raise BfasegError(f"--set {item}: {implied[key]} sets {key} too; give one of them")


REPEATABLE = {"--set"}  # options that collect every value (action="append")


def refuse_repeated_options(argv: list[str]) -> None:
    """An option given twice (``--mode paper ... --mode fast``): argparse keeps the last one silently."""
    seen = set()
    for token in argv:
        if token == "--":
            break
        option = token.split("=", 1)[0]
        if option.startswith("--") and option not in REPEATABLE:
            if option in seen:
                raise BfasegError(f"{option}: given twice; the last one would silently replace the first, give it once")
            seen.add(option)


def _given_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> set[str]:
    """The options of the command that were given (their value differs from the default): options that
    do not apply are refused by name (``refuse_inapplicable``) instead of being dropped silently."""
    command = getattr(parser, "commands", {}).get(getattr(args, "command", None))
    if command is None:
        return set()
    return {dest for dest, value in vars(args).items()
            if dest not in ("func", "command", "debug") and value != command.get_default(dest)}


def main(argv: list[str] | None = None) -> int:
    try:  # Ctrl-C while the commands (torch, ...) are still importing: the same one line as later
        parser = build_parser()
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    args.given = _given_options(parser, args)
    configure_logging()
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    old_term = signal.signal(signal.SIGTERM, _terminate) if _default_sigterm() else None
    try:
        refuse_repeated_options(sys.argv[1:] if argv is None else argv)
        return int(args.func(args) or 0)
    except BfasegError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        # atomic writes unwind on KeyboardInterrupt: the file being written is gone, finished ones stay
        print(INTERRUPTED, file=sys.stderr)
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
