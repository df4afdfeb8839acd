"""Post-processing of label maps.

:func:`largest_connected_component` is the filter BCP applies to its LA predictions
(``getLargestCC``: ``skimage.measure.label`` with its default connectivity, which is
FULL connectivity, ``ndim`` — 26-neighbourhood in 3-D, 8 in 2-D).  We use
``scipy.ndimage.label`` with the equivalent full structuring element by default.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from bfaseg.errors import BfasegError

__all__ = ["largest_connected_component"]


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
    rank = arr.ndim if connectivity is None else int(connectivity)
    if not 1 <= rank <= arr.ndim:
        raise BfasegError(f"connectivity must be in 1..{arr.ndim}, got {connectivity!r}")
    structure = ndimage.generate_binary_structure(arr.ndim, rank)

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
        components, count = ndimage.label(mask, structure=structure)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0  # outside the mask
        keep = int(np.argmax(sizes))
        out[mask & (components != keep)] = bg
    return out
