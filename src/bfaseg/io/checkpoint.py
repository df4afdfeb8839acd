"""Checkpoint files: one schema for every method and stage, atomic writes, safe loading.

A checkpoint holds only tensors and plain Python values (dict, list, tuple, str,
int, float, bool, None), so it loads with ``torch.load(weights_only=True)``: a
file crafted to run code on unpickling is refused instead of executed. No type
beyond PyTorch's default allow-list is needed; numpy RNG state is stored as lists.

Every checkpoint carries ``content_hash``, a BLAKE2b digest of everything else in it
(each tensor's dtype, shape and bytes, every plain value, keys in sorted order) computed
at save time and checked at load time: a file whose stored weights were changed in place
(torch.load does not check the zip CRCs) is refused as damaged instead of predicting
other masks. Checkpoints written before the hash existed still load; their zip CRCs are
checked instead, and one line says so.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bfaseg import __version__
from bfaseg.errors import BfasegError
from bfaseg.io.files import atomic_write_bytes

SCHEMA_VERSION = 1
HASH_KEY = "content_hash"
_HASH_ALGORITHM = "blake2b"
log = logging.getLogger(__name__)
_said_unhashed: set[str] = set()


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def _to_tuple(x):
    return tuple(_to_tuple(i) for i in x) if isinstance(x, (list, tuple)) else x


def content_hash(state: dict[str, Any]) -> str:
    """``"blake2b:<hex>"`` over every value of ``state`` but its own ``content_hash``: tensors by dtype,
    shape and bytes, plain values by type and repr, dict keys in sorted order. Deterministic, one pass."""
    h = hashlib.blake2b(digest_size=16)
    _feed(h, {k: v for k, v in state.items() if k != HASH_KEY})
    return f"{_HASH_ALGORITHM}:{h.hexdigest()}"


def _feed(h, value: Any) -> None:
    if torch.is_tensor(value):
        t = value.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for key in sorted(value, key=repr):
            _feed(h, key)
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}".encode())
        for item in value:
            _feed(h, item)
    else:
        h.update(f"{type(value).__name__}:{value!r};".encode())


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    state = {"schema": SCHEMA_VERSION, "bfaseg_version": __version__,
             **{k: v for k, v in state.items() if k != HASH_KEY}}
    state[HASH_KEY] = content_hash(state)
    atomic_write_bytes(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise BfasegError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise BfasegError(f"checkpoint not found: {path}")
    _check_container(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(exc)
        if "global" in detail.lower():  # a class or function the file wants called on loading
            raise BfasegError(
                f"{path}: refused to load: the checkpoint contains objects other than tensors and plain values "
                f"({detail}); it may be unsafe"
            ) from None
        raise BfasegError(
            f"{path}: refused to load: not a checkpoint of tensors and plain values ({detail}); "
            "the file is corrupt or unsafe"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        text = str(exc).strip()
        first = text.splitlines()[0][:80] if text else f"{exc.__class__.__name__}: empty or truncated file"
        raise BfasegError(f"{path}: not a readable checkpoint ({first}); the file is truncated or corrupt") from None
    if not isinstance(state, dict) or "student" not in state:
        raise BfasegError(f"{path}: not a bfaseg checkpoint (no 'student' weights)")
    if state.get("schema", 0) > SCHEMA_VERSION:
        raise BfasegError(f"{path}: checkpoint schema {state['schema']} is newer than this bfaseg supports")
    _check_content(path, state)
    return state


def _check_content(path: Path, state: dict[str, Any]) -> None:
    """The stored content hash against the loaded values; without one (older files), the zip CRCs."""
    stored = state.get(HASH_KEY)
    if stored is None:
        if zipfile.is_zipfile(path):
            try:
                with zipfile.ZipFile(path) as z:
                    bad = z.testzip()
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                bad = f"({exc})"
            if bad is not None:
                raise BfasegError(f"{path}: damaged: the stored bytes of {bad} no longer match their zip checksum; "
                                  "use another checkpoint")
        key = str(path.resolve())
        if key not in _said_unhashed:
            _said_unhashed.add(key)
            log.warning(f"{path}: written by an older bfaseg without a content hash; "
                        "its zip checksums were checked instead (re-save it to add one)")
        return
    if not isinstance(stored, str) or content_hash(state) != stored:
        raise BfasegError(f"{path}: damaged: its tensors or values no longer match the content hash written "
                          "when it was saved (changed in place or corrupted on disk); use another checkpoint")


def _check_container(path: Path) -> None:
    """A torch checkpoint is a zip archive (or, from torch < 1.6, a pickle); anything else is refused
    by name before torch.load, whose errors on text or truncated files say nothing (KeyError: 101, Errno 22)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise BfasegError(f"{path}: not a readable checkpoint (empty file)")
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            raise BfasegError(f"{path}: not a readable checkpoint (incomplete zip archive); the file is truncated")
    elif head[0] != 0x80:  # the pickle protocol opcode of torch's legacy format
        raise BfasegError(f"{path}: not a PyTorch checkpoint (the file starts with {head!r}, not a zip archive)")


def _unpickler_detail(exc: Exception) -> str:
    """The one useful sentence of torch's multi-paragraph weights-only error (e.g. 'Unsupported global: ...')."""
    text = " ".join(str(exc).split())
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip()
    text = text.split(" Check the documentation", 1)[0].split(". ", 1)[0].strip().rstrip(".")
    return text[:120] or "unsupported object"


def checkpoint_digest(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
