"""Connected components of label maps: one definition for the whole package.

Components use FULL connectivity by default (diagonal neighbours connect: the 26-neighbourhood
in 3-D, 8 in 2-D), as ``skimage.measure.label``'s default in the reference code (BCP's
``getLargestCC``), through ``scipy.ndimage.label`` with the equivalent structuring element.
Used by inference (:func:`largest_connected_component`, the BCP post-processing), by the
methods' pseudo-label filter (:func:`drop_small_components`) and by the annotation suggestions
(:func:`count_components`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from bfaseg.errors import BfasegError

__all__ = ["components", "count_components", "drop_small_components", "largest_connected_component"]


def components(mask: np.ndarray, connectivity: int | None = None) -> tuple[np.ndarray, int]:
    """``(component ids, count)`` of a boolean mask; ``connectivity`` 1 (faces) .. ndim (full, default)."""
    rank = mask.ndim if connectivity is None else int(connectivity)
    if not 1 <= rank <= mask.ndim:
        raise BfasegError(f"connectivity must be in 1..{mask.ndim}, got {connectivity!r}")
    return ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, rank))


def count_components(labels: np.ndarray, num_classes: int) -> dict[int, int]:
    """Number of connected components per foreground class 1..K-1."""
    return {c: components(labels == c)[1] for c in range(1, num_classes)}


def drop_small_components(labels: np.ndarray, num_classes: int, min_fraction: float) -> np.ndarray:
    """A copy of ``labels`` without the components smaller than ``min_fraction`` of their class's largest."""
    out = labels.copy()
    for k in range(1, num_classes):
        mask = labels == k
        if not mask.any():
            continue
        comps, count = components(mask)
        if count <= 1:
            continue
        sizes = np.bincount(comps.ravel())[1:]
        small = np.flatnonzero(sizes < min_fraction * sizes.max()) + 1
        out[np.isin(comps, small)] = 0
    return out


def largest_connected_component(
    labels: np.ndarray,
    classes: Iterable[int] | None = None,
    *,
    connectivity: int | None = None,
    background: int = 0,
) -> np.ndarray:
    """Keep, for each class in ``classes``, only its largest connected component.

    ``classes`` defaults to every label present except ``background``.  Voxels of a
    filtered class outside its largest component become ``background``; the other
    classes are unchanged; a class that is absent stays absent.  ``connectivity`` is
    the scipy/skimage rank (1 = faces only ... ``ndim`` = full, the default, as the
    reference's skimage call).  Ties between equally large components keep the one
    met first in C (raster) order, as ``np.argmax`` over the component sizes in the
    reference.  Returns a new array of the input's dtype and shape.
    """
    arr = np.asarray(labels)
    if arr.ndim < 1:
        raise BfasegError("largest_connected_component needs an array with at least one axis")
    if arr.dtype.kind not in "biu":
        raise BfasegError(f"labels must be an integer or boolean array, got dtype {arr.dtype}")
    if arr.dtype == bool:
        out = arr.copy()
        todo = [True] if classes is None else [bool(c) for c in classes]
        bg = False
    else:
        out = arr.copy()
        todo = [c for c in np.unique(arr) if c != background] if classes is None else list(classes)
        bg = background

    for cls in todo:
        if cls == bg:
            continue
        mask = arr == cls
        if not mask.any():
            continue
        ids, count = components(mask, connectivity)
        if count <= 1:
            continue
        sizes = np.bincount(ids.ravel())
        sizes[0] = 0  # outside the mask
        keep = int(np.argmax(sizes))
        out[mask & (ids != keep)] = bg
    return out
