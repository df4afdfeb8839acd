"""Writing a label map or probabilities as NIfTI in the grid of their source file
(:class:`~bfaseg.io.geometry.Geometry`: shape, affine, voxel sizes, header codes), atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bfaseg.errors import BfasegError
from bfaseg.io.geometry import Geometry, restore_geometry
from bfaseg.io.nifti import NIFTI_SUFFIXES, import_nibabel

__all__ = ["save_nifti_mask", "save_probabilities"]


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
