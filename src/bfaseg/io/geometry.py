"""Where a case's array came from, and the way back: the :class:`Geometry` record.

A NIfTI image is read in three steps, all recorded in its :class:`Geometry`:

1. reorientation to the closest canonical orientation (RAS; nibabel's ``io_orientation``);
   the array axis order is then (x, y, z);
2. optional resampling to a target spacing (:func:`~bfaseg.io.resample.resample`; linear for
   images, nearest for labels); the first voxel centre stays where it was;
3. (intensity normalisation, in ``bfaseg.data``: it does not change the grid).

:meth:`Geometry.to_array_grid` applies 1 and 2 to any array in the source grid (image, label),
:func:`restore_geometry` undoes them, so a prediction can be written in the source file's grid.
Both reorient with nibabel's ``apply_orientation`` and take the canonical affine from
``inv_ornt_aff``, exactly what nibabel's ``as_reoriented`` does for a whole image; bfaseg
reorients bare arrays (images, labels and predictions alike), so it calls those two directly.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bfaseg.errors import BfasegError
from bfaseg.io.resample import resample

__all__ = ["Geometry", "array_geometry", "restore_geometry"]

IDENTITY = np.array([[0, 1], [1, 1], [2, 1]], dtype=np.float64)


def _orientations():
    from nibabel import orientations  # local import keeps `import bfaseg` light

    return orientations


@dataclass(frozen=True, eq=False)
class Geometry:
    """The source grid of a case's array and the steps from it to the array.

    ``affine``, ``shape``, ``spacing`` (header voxel sizes) and the header codes are the source
    file's; ``orientation`` the nibabel orientation applied (identity: none); ``step`` the resampling
    step in reoriented source voxels per array voxel, ``array_shape`` the shape of the array.
    """

    source: str
    affine: np.ndarray
    shape: tuple[int, int, int]
    spacing: tuple[float, ...]
    orientation: np.ndarray = dataclasses.field(default_factory=IDENTITY.copy)
    step: tuple[float, float, float] = (1.0, 1.0, 1.0)
    array_shape: tuple[int, ...] | None = None
    qform_code: int = 1
    sform_code: int = 1
    xyzt_units: int = 2

    def __post_init__(self) -> None:
        if self.array_shape is None:
            object.__setattr__(self, "array_shape", self.canonical_shape)

    # ------------------------------------------------------------ from the source file
    @classmethod
    def of_nifti(cls, img, source: str | os.PathLike, *, canonical: bool = True) -> Geometry:
        """The geometry of a nibabel image, reoriented to RAS when ``canonical``, not resampled."""

        def code(key: str) -> int:
            try:
                return int(img.header[key])
            except (KeyError, ValueError, TypeError):
                return 0

        affine = np.asarray(img.affine, dtype=np.float64)
        try:  # a reader error names the file (nibabel's OrientationError does not)
            orientation = _orientations().io_orientation(affine) if canonical else IDENTITY.copy()
        except Exception as exc:
            raise BfasegError(f"{source}: cannot tell the axis orientation from its affine ({exc})") from None
        return cls(
            source=str(source), affine=affine, shape=tuple(int(s) for s in img.shape[:3]),
            spacing=tuple(float(z) for z in img.header.get_zooms()[:3]),
            orientation=orientation,
            qform_code=code("qform_code"), sform_code=code("sform_code"), xyzt_units=code("xyzt_units"),
        )

    def resampled_to(self, target_spacing: Sequence[float] | None) -> Geometry:
        """This geometry with resampling of the reoriented grid to ``target_spacing`` (mm); None: none."""
        if target_spacing is None:
            return dataclasses.replace(self, step=(1.0, 1.0, 1.0), array_shape=self.canonical_shape)
        spacing = self.canonical_spacing
        out_shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(self.canonical_shape, spacing, target_spacing))
        step = tuple(float(t / s) for s, t in zip(spacing, target_spacing))
        return dataclasses.replace(self, step=step, array_shape=out_shape)

    # ------------------------------------------------------------ derived
    @property
    def reoriented(self) -> bool:
        return not np.array_equal(self.orientation, IDENTITY)

    @property
    def canonical_shape(self) -> tuple[int, ...]:
        """The source shape after reorientation."""
        out = [0, 0, 0]
        for axis, (new, _) in enumerate(np.asarray(self.orientation, dtype=int)):
            out[new] = self.shape[axis]
        return tuple(out)

    @property
    def canonical_affine(self) -> np.ndarray:
        return self.affine @ _orientations().inv_ornt_aff(self.orientation, self.shape)

    @property
    def canonical_spacing(self) -> tuple[float, ...]:
        from nibabel.affines import voxel_sizes

        return tuple(float(v) for v in voxel_sizes(self.canonical_affine))

    @property
    def array_affine(self) -> np.ndarray:
        """The affine of the array (reoriented and resampled)."""
        out = self.canonical_affine.copy()
        out[:3, :3] = out[:3, :3] * np.asarray(self.step)[None, :]
        return out

    @property
    def resampled(self) -> bool:
        return tuple(self.array_shape) != self.canonical_shape or not np.allclose(self.step, 1.0)

    @property
    def axcodes(self) -> tuple[str, ...]:
        from nibabel import aff2axcodes

        return tuple(aff2axcodes(self.affine))

    # ------------------------------------------------------------ the way there
    def to_array_grid(self, array: np.ndarray, order: int) -> np.ndarray:
        """An array in the source grid (e.g. a label file) -> the case array's grid (reoriented, resampled)."""
        out = np.ascontiguousarray(_orientations().apply_orientation(array, self.orientation))
        if self.resampled:
            out = resample(out, self.array_shape, order, self.step)
        return out


def array_geometry(shape: Sequence[int], spacing: Sequence[float] | None, source: str | os.PathLike) -> Geometry:
    """The geometry of a plain array, e.g. an h5 volume, for writing it as NIfTI: a diagonal affine
    from ``spacing`` (1 mm if unknown), no reorientation, no resampling."""
    sp = tuple(float(s) for s in spacing) if spacing is not None and len(spacing) == 3 else (1.0, 1.0, 1.0)
    return Geometry(source=str(source), affine=np.diag([*sp, 1.0]), shape=tuple(int(s) for s in shape), spacing=sp)


def restore_geometry(array: np.ndarray, geometry: Geometry, order: int = 0) -> np.ndarray:
    """Map an array in the grid of the case array back to the source file's voxel grid.

    Undoes the resampling (``order`` 0 = nearest for labels, 1 = linear for probabilities) to
    exactly the reoriented shape, then the reorientation, so the result has the source shape.
    A 4-D array is treated as channels-last (X, Y, Z, C).
    """
    ornt = _orientations()
    array = np.asarray(array)
    res_shape = tuple(geometry.array_shape)
    if array.ndim == 4:
        if tuple(array.shape[:3]) != res_shape:
            raise BfasegError(f"array shape {array.shape[:3]} does not match the case geometry {res_shape}")
        return np.stack([restore_geometry(array[..., c], geometry, order=order) for c in range(array.shape[3])], axis=-1)
    if tuple(array.shape) != res_shape:
        raise BfasegError(
            f"array shape {tuple(array.shape)} does not match the case geometry {res_shape} (source {geometry.source})"
        )
    out = array
    if geometry.resampled:
        inv_step = tuple(1.0 / s for s in geometry.step)
        out = resample(out if order == 0 else out.astype(np.float32), geometry.canonical_shape, order, inv_step)
    if geometry.reoriented:
        back = ornt.ornt_transform(ornt.axcodes2ornt(("R", "A", "S")), np.asarray(geometry.orientation))
        out = ornt.apply_orientation(out, back)
    out = np.ascontiguousarray(out)
    if tuple(out.shape) != tuple(geometry.shape):  # pragma: no cover - internal consistency
        raise BfasegError(f"restored shape {out.shape} != original shape {tuple(geometry.shape)}")
    return out
