"""NIfTI files: names, reading and checking one file, writing in a source geometry.

Suffix rules (``.nii.gz`` / ``.nii``; the nnU-Net channel suffix ``_0000``), case ids,
finding a case's file in a folder, opening a file (one :class:`BfasegError` naming it for a
missing or corrupt file, a 4-D or 2-D array, a singular affine) and reading its voxels; writing a label map or probabilities in the
grid of a source file (:class:`~bfaseg.io.geometry.Geometry`), atomically.
Datasets of such files (``dataset.json``, ``imagesTr`` ...) are read by ``bfaseg.data``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from bfaseg.errors import BfasegError
from bfaseg.io.geometry import Geometry, restore_geometry

NIFTI_SUFFIXES = (".nii.gz", ".nii")
CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")

__all__ = [
    "NIFTI_SUFFIXES",
    "case_id_from_path",
    "find_nifti",
    "is_nifti",
    "load_nifti",
    "read_nifti_array",
    "read_nifti_label_raw",
    "read_source_label",
    "save_nifti_mask",
    "save_probabilities",
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
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise BfasegError(f"{path}: the affine is singular or not finite (voxel size 0 or axes collinear); "
                          "fix the header (qform/sform)")
    return img


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


# --------------------------------------------------------------------------- writing in the source geometry


def _atomic_nifti_save(img, out_path: Path) -> None:
    """``nib.save`` through ``atomic_write_bytes``; gzip-compressed for ``.nii.gz``, as nibabel writes it."""
    import gzip

    from bfaseg.io.files import atomic_write_bytes

    nib = import_nibabel()
    if not out_path.name.endswith(NIFTI_SUFFIXES):
        raise BfasegError(f"output file {out_path} must end with .nii.gz or .nii")

    def write(f) -> None:
        if out_path.name.endswith(".nii.gz"):
            level = nib.openers.Opener.default_compresslevel
            with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=level, mtime=0) as gz:
                img.to_file_map({"image": nib.FileHolder(fileobj=gz)})
        else:
            img.to_file_map({"image": nib.FileHolder(fileobj=f)})

    atomic_write_bytes(out_path, write)


def _make_nifti(data: np.ndarray, geometry: Geometry, dtype):
    img = import_nibabel().Nifti1Image(data, geometry.affine)
    hdr = img.header
    hdr.set_data_dtype(dtype)
    if geometry.qform_code == 0 and geometry.sform_code == 0:
        # the source had no orientation: nibabel rebuilds the same base affine from the zooms
        hdr.set_qform(None, code=0)
        hdr.set_sform(None, code=0)
    else:
        hdr.set_qform(geometry.affine, code=geometry.qform_code)
        hdr.set_sform(geometry.affine, code=geometry.sform_code)
    hdr.set_zooms(tuple(geometry.spacing)[:3] + (1.0,) * (data.ndim - 3))
    if geometry.xyzt_units:
        hdr["xyzt_units"] = int(geometry.xyzt_units)
    return img


def save_nifti_mask(array: np.ndarray, geometry: Geometry, out_path: str | os.PathLike) -> Path:
    """Write a label map given in the case array's grid as a uint8 NIfTI in the source image's
    geometry (original shape, affine and voxel sizes); atomic."""
    array = np.asarray(array)
    if array.dtype.kind == "f":
        array = np.rint(array)
    if array.size and (array.min() < 0 or array.max() > 255):
        raise BfasegError(f"mask for {out_path} has values outside 0..255")
    return _save_in_source_geometry(array.astype(np.uint8), geometry, out_path, order=0, dtype=np.uint8)


def save_probabilities(probs: np.ndarray, geometry: Geometry, out_path: str | os.PathLike, *,
                       channel_axis: int = 0) -> Path:
    """Write class probabilities (C, X, Y, Z) (``channel_axis=0``, the model layout) or
    (X, Y, Z, C) (``channel_axis=-1``) or a single 3-D map as a float32 NIfTI with channels
    last, resampled (linear) back to the source geometry; atomic."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim == 4:
        probs = np.moveaxis(probs, channel_axis, -1)
    elif probs.ndim != 3:
        raise BfasegError(f"probabilities for {out_path} must be 3-D or 4-D, got shape {probs.shape}")
    return _save_in_source_geometry(probs, geometry, out_path, order=1, dtype=np.float32)


def _save_in_source_geometry(array: np.ndarray, geometry: Geometry, out_path, *, order: int, dtype) -> Path:
    """``restore_geometry`` (interpolation ``order``), then an atomic NIfTI write as ``dtype``."""
    restored = restore_geometry(array, geometry, order=order).astype(dtype)
    out_path = Path(out_path)
    _atomic_nifti_save(_make_nifti(restored, geometry, dtype), out_path)
    return out_path
