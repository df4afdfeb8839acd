"""Files written whole or not at all, and strict JSON export.

Every output bfaseg writes (checkpoints, h5/NIfTI volumes, summaries, tables) goes
through :func:`atomic_write_bytes`, so a crash, a full disk or Ctrl-C never leaves a
torn file behind.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bfaseg.errors import BfasegError
from bfaseg.io.output import user_file_mode

__all__ = ["atomic_write_bytes", "atomic_write_text", "jsonable", "write_json_atomic"]


def atomic_write_bytes(path: Path, write_fn) -> None:
    """Write via ``write_fn(file)`` into a temporary file beside ``path``, fsync, then rename.

    A crash, a full disk or Ctrl-C leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, user_file_mode())  # mkstemp makes 0600; outputs get the user's umask, as open() would
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise BfasegError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def jsonable(value: Any) -> Any:
    """NaN/Inf -> None, numpy scalars -> Python, int dict keys -> str (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: Path, data: Any) -> None:
    """Strict JSON (no NaN), indented, written atomically."""
    atomic_write_text(path, json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")
