"""Checks on the folders and files a command writes, made BEFORE any work.

Every command that writes (train, evaluate, predict, report, experiment, demo) calls
:func:`check_output_dir` on its ``--output`` first: a file in the way, a read-only
folder or a read-only file system is then one line at start-up, not a traceback after
an hour of predicting. The check creates nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from bfaseg.errors import BfasegError, Interrupted


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    return probe


def check_output_dir(path: str | os.PathLike, option: str = "--output", *,
                     input_dir: str | os.PathLike | None = None) -> Path:
    """``path`` as a Path if it is, or can become, a writable folder; else :class:`BfasegError`.

    Creates nothing: writability is probed with a temporary file in the nearest existing
    folder, removed at once (``os.access`` would say yes to root on a read-only mount).
    ``input_dir``: a folder the command reads (recursively); outputs there would be read
    back as inputs by the next run, so ``path`` may be neither it nor inside it.
    """
    path = Path(path)
    if input_dir is not None:
        inputs, target = Path(input_dir).resolve(), path.resolve()
        if target == inputs or inputs in target.parents:
            where = "is" if target == inputs else "is inside"
            raise BfasegError(f"{option} {path}: {where} the input folder {input_dir}; a second run would read "
                              "the outputs as inputs: choose another folder")
    if os.path.lexists(path) and not path.is_dir():
        raise BfasegError(f"{option} {path}: exists and is not a folder")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise BfasegError(f"{option} {path}: not writable (Not a directory: {base} is a file)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".bfaseg-write-test-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BfasegError(f"{option} {path}: not writable ({exc.strerror or exc} in {base})") from None
    return path


def user_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file: 0o666 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


STAGING_PREFIX = ".staging."


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove ``.<name>.<random>.tmp`` files that an atomic write cut short by SIGKILL left in ``folder``, and
    ``.staging.<random>.tmp`` folders of :func:`staged_outputs` (a command killed before it finished)."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            if p.is_file() and p.name.count(".") >= 3:  # .<name>.<random>.tmp, as atomic_write_bytes names them
                p.unlink(missing_ok=True)
                removed.append(p)
            elif p.is_dir() and p.name.startswith(STAGING_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


@contextmanager
def staged_outputs(folder: str | os.PathLike):
    """All or nothing for a command that writes one file per input: the body writes into a hidden staging
    folder inside ``folder`` (yielded), and the files move into ``folder`` only when the body has finished.
    A failure on the second of ten inputs (or Ctrl-C) leaves none of the first one's outputs, and no folder
    the command created; files already in ``folder`` are replaced only by a run that succeeded. Ctrl-C and
    SIGTERM are not failures of the inputs: the outputs finished so far are moved in and kept, as the
    interrupted message says (an atomic write cut short leaves no file in the staging folder)."""
    folder = Path(folder)
    with removed_if_failed(folder):
        folder.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, suffix=".tmp", dir=folder))
        try:
            yield stage
        except (KeyboardInterrupt, Interrupted):
            _move_into(stage, folder)
            raise
        else:
            _move_into(stage, folder)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _move_into(stage: Path, folder: Path) -> None:
    for p in sorted(stage.iterdir()):
        os.replace(p, folder / p.name)


@contextmanager
def removed_if_failed(path: str | os.PathLike):
    """Run the body; if it fails, remove ``path`` and the parents it created, where still free of files.

    Only folders that did not exist before are touched, and only empty ones, deepest first.
    """
    path = Path(path)
    missing = []
    probe = path
    while not os.path.lexists(probe) and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    try:
        yield path
    except BaseException:
        for folder in missing:  # deepest first
            if folder.is_dir():
                for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    _try_rmdir(sub)
                _try_rmdir(folder)
        raise


def _try_rmdir(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty: a file was written, keep it
        pass
