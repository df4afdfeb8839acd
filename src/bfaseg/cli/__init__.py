"""Command-line interface: one module per sub-command, each with ``register(subparsers)``.

Ctrl-C at any point is one line and exit code 130: :func:`bfaseg.cli.main.main` catches it from its first
statement on (the heavy imports, torch included, happen inside it, in ``build_parser``); for the few
milliseconds before ``main`` runs (importing this package and ``bfaseg.cli.main``), the hook below turns an
uncaught KeyboardInterrupt into the same line instead of a traceback. Other exceptions keep the hook
that was there.
"""

import sys

INTERRUPTED = "error: interrupted by Ctrl-C; files being written were removed, finished outputs kept"


def _one_line_on_ctrl_c(exc_type, exc, tb, _previous=sys.excepthook):
    if issubclass(exc_type, KeyboardInterrupt):
        print(INTERRUPTED, file=sys.stderr)
        return
    _previous(exc_type, exc, tb)


sys.excepthook = _one_line_on_ctrl_c
