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
PREVIOUS_PREFIX = ".previous."  # files a commit of staged outputs replaces, kept until the commit is complete


def remove_stale_temporaries(folder: str | os.PathLike, *, atomic_files: bool = True) -> list[Path]:
    """Remove ``.<name>.<random>.tmp`` files that an atomic write cut short by SIGKILL left in ``folder``, and
    ``.staging.<random>.tmp`` folders of :func:`staged_outputs` (a command killed before it finished).
    ``atomic_files=False``: staging folders only, for a command that never writes into ``folder`` directly
    (``folder`` may be a run folder that a training writes into right now). A ``.previous.<random>.tmp`` folder
    (the earlier outputs of a commit cut short by SIGKILL) is never removed."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            if atomic_files and p.is_file() and p.name.count(".") >= 3:  # .<name>.<random>.tmp, as atomic_write_bytes names them
                p.unlink(missing_ok=True)
                removed.append(p)
            elif p.is_dir() and p.name.startswith(STAGING_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


@contextmanager
def staged_outputs(folder: str | os.PathLike, *, keep_finished_on_interrupt: bool = True):
    """All or nothing for a command's outputs: the body writes into a hidden staging folder inside ``folder``
    (yielded; sub-folders allowed), and the files move into ``folder`` only when the body has finished
    (:func:`_move_into`, itself all or nothing). A failure on the second of ten inputs (or Ctrl-C) leaves none
    of the first one's outputs, and no folder the command created; files already in ``folder`` are replaced
    only by a run that succeeded, and are back in place if moving the new ones in fails. With
    ``keep_finished_on_interrupt`` (``predict``: one output per input) Ctrl-C and SIGTERM are not failures of
    the inputs: the outputs finished so far are moved in and kept, as the interrupted message says (an atomic
    write cut short leaves no file in the staging folder). Without it (``report``: one output made of several
    files) an interruption keeps nothing either."""
    folder = Path(folder)
    with removed_if_failed(folder):
        folder.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, suffix=".tmp", dir=folder))
        try:
            yield stage
        except (KeyboardInterrupt, Interrupted):
            if keep_finished_on_interrupt:
                _move_into(stage, folder)
            raise
        else:
            _move_into(stage, folder)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _move_into(stage: Path, folder: Path) -> None:
    """Move every file under ``stage`` to the same place under ``folder``, all or nothing: a file it replaces is
    first renamed into a hidden ``.previous.<random>.tmp`` folder inside ``folder`` (same file system: renames
    only, nothing is copied), and if any rename fails (or Ctrl-C lands half-way) the new files are taken out and
    the earlier ones renamed back, so ``folder`` never keeps a mix of the two. The earlier files are deleted
    only once every new one is in place."""
    files = sorted(p for p in stage.rglob("*") if not p.is_dir())
    if not files:
        return
    moved: list[tuple[Path, Path | None, bool]] = []  # (target, where its earlier file went, new file moved in)
    made: list[Path] = []  # sub-folders of folder created for the new files
    previous = None
    try:
        previous = Path(tempfile.mkdtemp(prefix=PREVIOUS_PREFIX, suffix=".tmp", dir=folder))
        for src in files:
            rel = src.relative_to(stage)
            target = folder / rel
            for sub in reversed(rel.parents[:-1]):  # outermost first
                if not os.path.lexists(folder / sub):
                    (folder / sub).mkdir()
                    made.append(folder / sub)
            kept = None
            if os.path.isdir(target) and not os.path.islink(target):
                raise BfasegError(f"{target}: is a folder; a file of the new outputs would replace it")
            if os.path.lexists(target):
                kept = previous / rel
                kept.parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, kept)
            moved.append((target, kept, False))
            os.replace(src, target)
            moved[-1] = (target, kept, True)
    except BaseException as exc:
        if _undo_moves(moved, made):
            if previous is not None:
                shutil.rmtree(previous, ignore_errors=True)
            kept_note = "nothing in it was changed"
        else:
            kept_note = f"the earlier files that could not be put back are in {previous}"
        if isinstance(exc, OSError):
            raise BfasegError(f"cannot move the new outputs into {folder} ({exc.strerror or exc}); {kept_note}") \
                from None
        raise
    shutil.rmtree(previous, ignore_errors=True)


def _undo_moves(moved: list[tuple[Path, Path | None, bool]], made: list[Path]) -> bool:
    """Take out the new files :func:`_move_into` moved in and put the earlier ones back; True if all went back."""
    ok = True
    for target, kept, moved_in in reversed(moved):
        try:
            if moved_in:
                os.unlink(target)
            if kept is not None:
                os.replace(kept, target)
        except OSError:
            ok = False
    for sub in reversed(made):
        _try_rmdir(sub)
    return ok


def move_aside(path: str | os.PathLike, folder: str | os.PathLike, name: str) -> Path:
    """Rename ``path`` (a run folder) to ``folder/<name>-<n>``, the first ``n`` from 1 that is free, and return
    where it went: ``--force`` starts a run over this way and deletes nothing (``train``, ``experiment``).
    ``folder`` is created if needed and must be on the same file system (a rename, nothing is copied)."""
    path, folder = Path(path), Path(folder)
    here = Path.cwd()
    if path.resolve() == here or path.resolve() in here.parents:
        raise BfasegError(f"{path}: holds the current folder and cannot be moved aside; run from another folder "
                          "or choose another --output")
    n = 1
    while os.path.lexists(folder / f"{name}-{n}"):
        n += 1
    target = folder / f"{name}-{n}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.rename(path, target)
    except OSError as exc:
        raise BfasegError(f"{path}: cannot move it aside to {target} ({exc.strerror or exc})") from None
    return target


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
