"""One exception type for every user-facing error.

The CLI prints ``error: <message>`` on one line and exits non-zero; messages must
name the file, key or option at fault.
"""


class BfasegError(Exception):
    """An error caused by user input (files, configs, options), with a one-line message."""

    exit_code = 2


class TrainingDiverged(BfasegError):
    """The loss or the teacher became NaN/Inf; the last good checkpoint is kept."""

    exit_code = 3


class Interrupted(BfasegError):
    """Ctrl-C / SIGTERM during training; a checkpoint was written first."""

    exit_code = 130
