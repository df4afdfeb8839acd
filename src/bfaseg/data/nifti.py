"""One NIfTI image (and its label) as a :class:`~bfaseg.data.cases.Case`, preprocessed for a network.

Folders of such files (nnU-Net / MSD layout, ``dataset.json``) are read by
:mod:`bfaseg.data.nifti_dataset`. Every image goes through the same steps, recorded in ``case.geometry``
(:class:`bfaseg.io.geometry.Geometry`) so that a prediction can be written back in the
geometry of the source file:

1. reorientation to the closest canonical orientation (RAS); the array axis order is then (x, y, z);
2. optional resampling to ``target_spacing`` (linear for images, nearest for labels),
   the first voxel centre stays where it was;
3. intensity normalisation: CT is clipped to a window (default [-125, 275] HU) and scaled
   to [0, 1]; MR is z-scored over the volume (recorded in ``case.meta``).

:func:`bfaseg.io.geometry.restore_geometry` undoes 2 and 1; :func:`bfaseg.io.nifti.save_nifti_mask`
writes the result with the original affine and voxel sizes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bfaseg.data.cases import Case
from bfaseg.errors import BfasegError
from bfaseg.io.geometry import Geometry
from bfaseg.io.nifti import case_id_from_path, load_nifti, read_nifti_array, read_source_label
from bfaseg.precision import check_fits_in_memory

DEFAULT_CT_WINDOW = (-125.0, 275.0)
log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CT_WINDOW", "load_nifti_image", "load_nifti_label", "parse_modality"]


# --------------------------------------------------------------------------- helpers


def _parse_spacing(target_spacing, what: str = "target_spacing") -> tuple[float, float, float] | None:
    if target_spacing is None:
        return None
    if np.isscalar(target_spacing):
        values = [float(target_spacing)] * 3
    else:
        values = [float(v) for v in target_spacing]
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise BfasegError(f"{what} must be one positive number or three (x, y, z), got {target_spacing!r}")
    return tuple(values)


def parse_modality(modality: str) -> str:
    """"CT", "MR" or "auto" from a config or dataset.json modality name."""
    if modality is None:
        return "auto"
    key = str(modality).strip().upper()
    if key == "AUTO":
        return "auto"
    if key == "CT":
        return "CT"
    if key in {"MR", "MRI"} or key.startswith(("T1", "T2", "MR", "FLAIR", "ADC", "DWI", "LGE", "CINE", "PD")):
        return "MR"
    raise BfasegError(f"modality must be 'auto', 'CT' or 'MR', got {modality!r}")


# a declared modality is checked against the voxels (issue 30): MR intensities declared CT are clipped away
# almost entirely by the CT window, and the network trains on a blank image without a word
# refused: half the voxels above the window (denser than bone: MR intensities, or CT without its rescale), or
# half outside it in a volume without any value below 0 HU (no fat, no air). Mostly below the window is air
# (a small field of view, lungs): plausible Hounsfield units, not refused.
CT_CLIPPED_REFUSED = 0.5
HU_AIR = -500.0  # below: air in Hounsfield units (the "auto" rule's threshold too)
_warned: set[tuple[str, str]] = set()


def check_declared_modality(data: np.ndarray, modality: str, window: tuple[float, float], path: Path,
                            declared_by: str | None) -> None:
    """Refuse a CT image whose voxels mostly lie outside the CT window (half of them above it, or half outside
    it with no value below 0: MR, or CT not in Hounsfield units); warn (once per folder) for other CT without
    any value below 0 and for MR with air-like values below -500 HU."""
    if declared_by is None or data.size == 0:
        return
    lo, hi = float(window[0]), float(window[1])
    vmin, vmax = float(data.min()), float(data.max())
    fix = (f"the model was trained on images read as {modality}: give it images of that kind"
           if declared_by.startswith("the checkpoint's") else
           f"set data.modality to what the images are, or fix {declared_by}")
    if modality == "CT":
        above = float(np.count_nonzero(data > hi)) / data.size
        outside = above + float(np.count_nonzero(data < lo)) / data.size
        if above >= CT_CLIPPED_REFUSED or (vmin >= 0 and outside >= CT_CLIPPED_REFUSED):
            raise BfasegError(
                f"{path}: declared CT by {declared_by}, but {outside:.1%} of its voxels lie outside the CT window "
                f"[{lo:g}, {hi:g}] HU (values {vmin:g}..{vmax:g}), so clipping would flatten most of the image; "
                f"is it MR, or CT not in Hounsfield units? {fix}")
        if vmin >= 0:
            _warn_once(path, "ct", f"{path}: declared CT by {declared_by}, but no voxel is below 0 HU (values "
                                   f"{vmin:g}..{vmax:g}; real CT has fat and air below 0): are these Hounsfield units? {fix}")
    elif modality == "MR" and vmin < HU_AIR:
        _warn_once(path, "mr", f"{path}: declared MR by {declared_by}, but values go down to {vmin:g} (air in "
                               f"Hounsfield units): is it CT? it is z-scored as MR; {fix}")


def _warn_once(path: Path, kind: str, message: str) -> None:
    key = (str(Path(path).parent), kind)
    if key not in _warned:
        _warned.add(key)
        log.warning(message + " (said once per folder)")


def _normalise(data: np.ndarray, modality: str, window: tuple[float, float]) -> tuple[np.ndarray, dict]:
    if modality == "CT":
        lo, hi = float(window[0]), float(window[1])
        out = (np.clip(data, lo, hi) - lo) / (hi - lo)
        return out.astype(np.float32), {"kind": "ct_window", "window": (lo, hi)}
    mean = float(data.mean(dtype=np.float64))
    std = float(data.std(dtype=np.float64))
    out = (data - mean) / (std if std > 1e-8 else 1.0)
    return out.astype(np.float32), {"kind": "zscore", "mean": mean, "std": std}


# --------------------------------------------------------------------------- images / labels


def load_nifti_image(
    path: str | os.PathLike,
    target_spacing: float | Sequence[float] | None = None,
    modality: str = "auto",
    canonical: bool = True,
    *,
    ct_window: tuple[float, float] = DEFAULT_CT_WINDOW,
    case_id: str | None = None,
    declared_by: str | None = None,
) -> Case:
    """Read one NIfTI image into a :class:`Case` (image only, ``label`` None).

    ``modality``: "CT" (clip to ``ct_window``, scale to [0, 1]), "MR" (z-score) or "auto"
    (CT when the raw minimum is below -500, i.e. air in Hounsfield units; MR otherwise).
    The array axis order is the canonical (x, y, z) one when ``canonical`` is true, else the
    file's own. ``case.spacing`` is the spacing of the returned array (mm). A CT or MR ``modality`` is
    checked against the voxels (:func:`check_declared_modality`); ``declared_by`` names where it was declared
    (default ``data.modality``).
    """
    path = Path(path)
    spacing_req = _parse_spacing(target_spacing)
    mod = parse_modality(modality)
    lo, hi = (float(ct_window[0]), float(ct_window[1]))
    if not hi > lo:
        raise BfasegError(f"ct_window must be (low, high) with low < high, got {ct_window!r}")

    img = load_nifti(path)
    geometry = Geometry.of_nifti(img, path, canonical=canonical).resampled_to(spacing_req)
    # float32 voxels: the source as read, then the resampled array and its normalised copy (checked before reading)
    check_fits_in_memory(int(np.prod(geometry.shape)) * 4, f"{path}: reading its {tuple(geometry.shape)} voxels",
                         "crop or downsample the image first")
    if spacing_req is not None:
        check_fits_in_memory(
            int(np.prod(geometry.array_shape)) * 4 * 2,
            f"data.target_spacing {list(spacing_req)}: resampling {path} from {tuple(geometry.canonical_shape)} "
            f"to {tuple(geometry.array_shape)} voxels", "choose a coarser target spacing")
    data = geometry.to_array_grid(read_nifti_array(img, path, as_label=False), order=1)
    spacing = spacing_req or geometry.canonical_spacing

    if mod == "auto":
        mod = "CT" if float(data.min()) < HU_AIR else "MR"
    else:
        check_declared_modality(data, mod, (lo, hi), path, declared_by or "data.modality")
    image, norm = _normalise(data, mod, (lo, hi))

    meta: dict[str, Any] = {"source": str(path), "format": "nifti", "modality": mod, "normalization": norm}
    return Case(
        case_id=case_id or case_id_from_path(path),
        image=image,
        label=None,
        spacing=tuple(float(s) for s in spacing),
        meta=meta,
        geometry=geometry,
    )


def load_nifti_label(path: str | os.PathLike, reference_case: Case) -> np.ndarray:
    """Read the label map of ``reference_case`` with the same reorientation and resampling
    (nearest neighbour); returns a uint8 array shaped like ``reference_case.image``.

    The label file must have the same shape and affine (to 1e-4) as the image file, else
    :class:`BfasegError`. The caller assigns the result to ``reference_case.label``.
    """
    geometry = reference_case.geometry
    if geometry is None:
        raise BfasegError(f"{path}: reference case {reference_case.case_id!r} was not read by load_nifti_image")
    return geometry.to_array_grid(read_source_label(path, geometry), order=0).astype(np.uint8, copy=False)
