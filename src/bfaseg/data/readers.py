"""Readers for the community layouts of LA, Pancreas-CT and ACDC (see PROTOCOL.md).

Every reader validates what it loads (keys, dimensions, finite values, label range)
and raises a one-line :class:`BfasegError` naming the file otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bfaseg.data.cases import Case
from bfaseg.errors import BfasegError
from bfaseg.io.h5 import read_h5_image

LA_FOLDER = "2018LA_Seg_Training Set"
DEFAULT_LISTS = {
    "la": ("train.list", "test.list"),
    "pancreas": ("train.list", "test.list"),
    "acdc": ("train_slices.list", "val.list"),
}


def read_list(path: str | Path) -> list[str]:
    """Read a list file: one id per line; blank lines, CRLF and a UTF-8 BOM ignored.

    Duplicates and ids that are paths (``/``, ``..``) are errors: ``./case_a`` would read
    ``case_a`` again under another id, unseen by the duplicate check.
    """
    path = Path(path)
    if path.is_dir():
        raise BfasegError(f"{path}: is a folder, not a list file")
    if not path.is_file():
        raise BfasegError(f"list file not found: {path}")
    try:
        ids = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise BfasegError(f"{path}: cannot read list file ({exc.__class__.__name__})") from None
    if not ids:
        raise BfasegError(f"{path}: list file is empty")
    seen = set()
    for i in ids:
        if "/" in i or "\\" in i or i in (".", ".."):
            raise BfasegError(f"{path}: id {i!r} is a path; give plain case ids (folder or file names)")
        if i in seen:
            raise BfasegError(f"{path}: duplicate id {i!r}")
        seen.add(i)
    return ids


def read_h5_case(
    path: str | Path,
    case_id: str,
    *,
    ndim: int,
    need_label: bool = True,
    num_classes: int | None = None,
) -> Case:
    """Read ``image`` (+ ``label``) from an h5 file, validating everything a loader relies on."""
    path = Path(path)
    if not path.is_file():
        raise BfasegError(f"case {case_id!r}: file not found: {path}")
    image, label, spacing = read_h5_image(path, need_label=need_label)
    if image.ndim != ndim:
        raise BfasegError(f"{path}: 'image' has {image.ndim} dimensions {image.shape}, expected {ndim}")
    if label is not None:
        if label.dtype.kind not in "biuf":
            raise BfasegError(f"{path}: 'label' must hold integer labels, got dtype {label.dtype}")
        if label.shape != image.shape:
            raise BfasegError(f"{path}: 'label' shape {label.shape} differs from 'image' shape {image.shape}")
        if label.size and (label.min() < 0 or (num_classes is not None and label.max() >= num_classes)):
            raise BfasegError(
                f"{path}: label values {int(label.min())}..{int(label.max())} outside 0..{(num_classes or 1) - 1}"
            )
        if np.issubdtype(label.dtype, np.floating) and not np.array_equal(label, np.round(label)):
            raise BfasegError(f"{path}: 'label' has non-integer values")
        label = label.astype(np.uint8)
    return Case(case_id=case_id, image=image, label=label, spacing=spacing)


def la_path(root: Path, case_id: str) -> Path:
    return root / LA_FOLDER / case_id / "mri_norm2.h5"


def pancreas_path(root: Path, case_id: str) -> Path:
    for name in (f"{case_id}_norm.h5", f"{case_id}.h5", f"{case_id}"):
        p = root / "Pancreas_h5" / name
        if p.is_file():
            return p
    return root / "Pancreas_h5" / f"{case_id}_norm.h5"


def acdc_slice_path(root: Path, name: str) -> Path:
    return root / "data" / "slices" / f"{name}.h5"


def acdc_volume_path(root: Path, name: str) -> Path:
    return root / "data" / f"{name}.h5"


def load_cases(
    dataset: str,
    root: str | Path,
    ids: list[str],
    *,
    kind: str = "train",
    need_label: bool = True,
    num_classes: int | None = None,
    progress: bool = False,
) -> list[Case]:
    """Load cases of a benchmark layout. ``kind`` is 'train' or 'eval' (ACDC: slices vs volumes)."""
    root = Path(root)
    if not root.is_dir():
        raise BfasegError(f"data root not found: {root}")
    if dataset == "la":
        paths, ndim = [la_path(root, i) for i in ids], 3
    elif dataset == "pancreas":
        paths, ndim = [pancreas_path(root, i) for i in ids], 3
    elif dataset == "acdc" and kind == "train":
        paths, ndim = [acdc_slice_path(root, i) for i in ids], 2
    elif dataset == "acdc":
        paths, ndim = [acdc_volume_path(root, i) for i in ids], 3
    else:
        raise BfasegError(f"unknown dataset {dataset!r}")
    iterator = zip(ids, paths)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(list(iterator), desc=f"loading {dataset} {kind}", leave=False, unit="case")
    return [read_h5_case(p, i, ndim=ndim, need_label=need_label, num_classes=num_classes) for i, p in iterator]
