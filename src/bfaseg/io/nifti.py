"""NIfTI files: names, reading and checking one file.

Suffix rules (``.nii.gz`` / ``.nii``; the nnU-Net channel suffix ``_0000``), case ids,
finding a case's file in a folder, opening a file (one :class:`BfasegError` naming it for a
missing or corrupt file, a 4-D or 2-D array, a singular affine) and reading its voxels. Writing is :mod:`bfaseg.io.nifti_write`.
Datasets of such files (``dataset.json``, ``imagesTr`` ...) are read by ``bfaseg.data``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from bfaseg.errors import BfasegError
from bfaseg.io.geometry import Geometry

NIFTI_SUFFIXES = (".nii.gz", ".nii")
CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")

__all__ = [
    "NIFTI_SUFFIXES",
    "case_id_from_path",
    "check_real_dtype",
    "find_nifti",
    "is_nifti",
    "load_nifti",
    "read_nifti_array",
    "read_nifti_label_raw",
    "read_source_label",
    "strip_nifti_suffix",
]


def import_nibabel():
    import nibabel  # local import keeps `import bfaseg` light

    return nibabel


def strip_nifti_suffix(name: str) -> str | None:
    """``name`` without ``.nii.gz`` / ``.nii``; None when it has neither."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def is_nifti(path: Path) -> bool:
    # "._name.nii.gz" files are macOS resource forks shipped inside the MSD archives
    return path.is_file() and not path.name.startswith(".") and strip_nifti_suffix(path.name) is not None


def case_id_from_path(path: Path) -> str:
    """``case_0000.nii.gz`` (nnU-Net) and ``case.nii.gz`` (MSD) both name case ``case``."""
    stem = strip_nifti_suffix(path.name) or path.stem
    m = CHANNEL_RE.match(stem)
    return m.group("case") if m else stem


def find_nifti(folder: Path, case_id: str, channel: bool) -> Path | None:
    """The file of ``case_id`` in ``folder``: ``<case>_0000`` first when ``channel``, then ``<case>``."""
    names = ([f"{case_id}_0000"] if channel else []) + [case_id]
    for n in names:
        for suffix in NIFTI_SUFFIXES:
            p = folder / f"{n}{suffix}"
            if p.is_file():
                return p
    return None


def load_nifti(path: Path):
    """The nibabel image of a 3-D NIfTI file (a trailing axis of length 1 dropped), checked."""
    path = Path(path)
    if not path.exists():
        raise BfasegError(f"NIfTI file not found: {path}")
    try:
        img = import_nibabel().load(str(path))
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, OSError ...)
        raise BfasegError(f"cannot read NIfTI file {path}: {exc}") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
        shape = shape[:3]
    if len(shape) == 4:
        raise BfasegError(f"{path}: expected a 3-D volume, got shape {shape} "
                          "(multi-channel images are not supported; use one file per case)")
    if len(shape) != 3:
        raise BfasegError(f"{path}: expected a 3-D volume, got a {len(shape)}-D array of shape {shape}")
    if 0 in shape:
        raise BfasegError(f"{path}: the volume is empty (shape {shape})")
    check_real_dtype(img.get_data_dtype(), path)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise BfasegError(f"{path}: the affine is singular or not finite (voxel size 0 or axes collinear); "
                          "fix the header (qform/sform)")
    return img


def check_real_dtype(dtype, path) -> None:
    """Voxels must be real numbers: a complex (or RGB, structured) volume would lose its imaginary part
    (or channels) when read as float, with only a numpy warning."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise BfasegError(f"{path}: voxels must be real numbers, got dtype {dtype}")


def read_nifti_array(img, path: Path, *, as_label: bool) -> np.ndarray:
    """The voxels of ``img``: float32 for images (finite), the stored integers for labels."""
    try:
        if as_label:
            data = np.asanyarray(img.dataobj)
            scaled = getattr(img.dataobj, "slope", 1) != 1 or getattr(img.dataobj, "inter", 0) != 0
            if data.dtype.kind == "f" or scaled:
                data = np.asarray(img.get_fdata(dtype=np.float32))
        else:
            data = img.get_fdata(dtype=np.float32)
    except Exception as exc:
        raise BfasegError(f"cannot read the voxel data of {path}: {exc}") from None
    data = np.asarray(data)
    if data.ndim == 4:
        data = data[..., 0]
    if not as_label and not np.all(np.isfinite(data)):
        raise BfasegError(f"{path}: image contains NaN or Inf values")
    return data


def read_nifti_label_raw(path: Path, num_classes: int | None = None) -> tuple[np.ndarray, tuple[float, ...]]:
    """A NIfTI label file with no image beside it, values checked (``check_label_array``), and its zooms."""
    from bfaseg.io.labels import check_label_array

    try:
        img = import_nibabel().load(str(path))
        data = np.asanyarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except Exception as exc:
        raise BfasegError(f"cannot read label {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return check_label_array(data, path, num_classes).astype(np.int32), zooms


def read_source_label(path: str | os.PathLike, geometry: Geometry, num_classes: int | None = None) -> np.ndarray:
    """The label file of an image of ``geometry``, in the source grid, checked as in training: the
    image's shape and affine (to 1e-4), finite integer values, 0..255 (0..num_classes-1 when given).
    Returns uint8; any failure is a :class:`BfasegError`.
    """
    from bfaseg.io.labels import check_label_array

    path = Path(path)
    img = load_nifti(path)
    shape = tuple(int(s) for s in img.shape[:3])
    if shape != tuple(geometry.shape):
        raise BfasegError(f"label {path} and image {geometry.source} differ in shape: {shape} vs {tuple(geometry.shape)}")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.allclose(affine, geometry.affine, atol=1e-4, rtol=0):
        diff = float(np.abs(affine - geometry.affine).max())
        raise BfasegError(
            f"label {path} and image {geometry.source} differ in affine (max difference {diff:.4g}; "
            f"label axes {''.join(import_nibabel().aff2axcodes(affine))}, image axes {''.join(geometry.axcodes)})"
        )
    return check_label_array(read_nifti_array(img, path, as_label=True), path, num_classes)
