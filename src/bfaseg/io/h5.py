"""The one h5 reader and writer.

Every h5 file bfaseg reads (benchmark cases, ``predict`` inputs, reference labels, the
converters' integrity check) is opened by :func:`open_h5` and its arrays taken by
:func:`read_h5`, so every failure is one :class:`BfasegError` line naming the file and
the key: not found, unreadable, a key missing (with the keys present) or a group where a
dataset belongs. The voxel size is the file attribute ``spacing`` (mm, the array's axis
order). Every h5 file bfaseg writes goes through :func:`write_h5_atomic`.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from bfaseg.errors import BfasegError

H5_SUFFIXES = (".h5", ".hdf5")

__all__ = ["H5_SUFFIXES", "open_h5", "read_h5", "read_h5_image", "spacing_attr", "write_h5_atomic"]


@contextmanager
def open_h5(path: str | Path) -> Iterator:
    """``h5py.File(path, "r")``; a missing or unreadable file is a :class:`BfasegError` naming it."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise BfasegError(f"{path}: h5 file not found")
    try:
        with h5py.File(path, "r") as f:
            yield f
    except BfasegError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise BfasegError(f"{path}: cannot read h5 file ({str(exc).splitlines()[0][:80]})") from None


def spacing_attr(f) -> tuple[float, ...] | None:
    """The ``spacing`` attribute of an open h5 file (mm per axis), None when absent."""
    spacing = f.attrs.get("spacing")
    return tuple(float(s) for s in spacing) if spacing is not None else None


def read_h5(
    path: str | Path, keys: Sequence[str], *, required: Sequence[str] = ()
) -> tuple[dict[str, np.ndarray | None], tuple[float, ...] | None]:
    """``({key: array or None}, spacing)`` for the datasets ``keys`` of an h5 file.

    A key in ``required`` that is absent, or any of ``keys`` that is a group, is a
    :class:`BfasegError` naming the file.
    """
    import h5py

    from bfaseg.precision import check_fits_in_memory  # imports torch: only when a file is read

    path = Path(path)
    with open_h5(path) as f:
        for key in required:
            if key not in f:
                raise BfasegError(f"{path}: missing key {key!r} (keys: {sorted(f.keys())})")
        for key in keys:
            if key in f and not isinstance(f[key], h5py.Dataset):
                raise BfasegError(f"{path}: {key!r} is a group, not a dataset")
            if key in f and f[key].dtype.kind in "biufc":  # its size, before reading it (compressed files grow)
                check_fits_in_memory(int(np.prod(f[key].shape)) * f[key].dtype.itemsize,
                                     f"{path}: {key!r} of shape {tuple(f[key].shape)}", "crop or split the file")
        arrays = {key: (np.asarray(f[key][()]) if key in f else None) for key in keys}
        return arrays, spacing_attr(f)


def read_h5_image(path: str | Path, *, need_label: bool = False
                  ) -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...] | None]:
    """``(image, label or None, spacing)`` of a case file: ``image`` float32 and finite, ``label`` as stored
    (required when ``need_label``); the caller checks dimensions and label values."""
    arrays, spacing = read_h5(path, ("image", "label"), required=("image", "label") if need_label else ("image",))
    image = np.asarray(arrays["image"])
    if image.dtype.kind not in "biuf":  # complex or non-numeric: an error, not a silent cast
        raise BfasegError(f"{path}: 'image' must hold real numbers, got dtype {image.dtype}")
    if image.size == 0:
        raise BfasegError(f"{path}: 'image' is empty (shape {image.shape})")
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 become Inf, reported below
        image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise BfasegError(f"{path}: 'image' contains NaN or Inf values")
    return image, arrays["label"], spacing


def write_h5_atomic(path: str | Path, datasets: dict[str, np.ndarray | None], attrs: dict | None = None,
                    *, compression: str | None = None) -> Path:
    """Write ``datasets`` (None values skipped) and ``attrs`` (None values skipped) as one h5 file,
    atomically (:func:`~bfaseg.io.files.atomic_write_bytes`)."""
    import h5py

    from bfaseg.io.files import atomic_write_bytes

    def write(stream) -> None:
        with h5py.File(stream, "w") as f:
            for key, value in datasets.items():
                if value is not None:
                    f.create_dataset(key, data=value, compression=compression)
            for key, value in (attrs or {}).items():
                if value is not None:
                    f.attrs[key] = value

    path = Path(path)
    atomic_write_bytes(path, write)
    return path
