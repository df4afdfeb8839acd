"""One check for every reference label map, in training and in evaluation alike.

A label must hold finite integer values in 0..K-1 (K = ``model.num_classes``) and have
the shape of its image; a probability map, a value 7 in a 3-class run or a label of
another grid is refused with one line naming the file, never rounded or ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bfaseg.errors import BfasegError


def check_label_array(label, path: str | Path, num_classes: int | None = None,
                      shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``label`` as uint8 if it is a valid label map of ``num_classes`` classes (and ``shape``)."""
    label = np.asarray(label)
    if label.dtype.kind not in "biuf":
        raise BfasegError(f"label {path}: expected integer labels, got dtype {label.dtype}")
    if shape is not None and tuple(label.shape) != tuple(shape):
        raise BfasegError(f"label {path}: shape {tuple(label.shape)} differs from the image's {tuple(shape)}")
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)):
            raise BfasegError(f"label {path} contains NaN or Inf values")
        if not np.array_equal(label, np.rint(label)):
            raise BfasegError(f"label {path} has non-integer values (is it a probability map?)")
    top = 255 if num_classes is None else num_classes - 1
    if label.size and (label.min() < 0 or label.max() > top):
        what = f"model.num_classes {num_classes}" if num_classes is not None else "uint8"
        raise BfasegError(f"label {path} has values {int(label.min())}..{int(label.max())} outside 0..{top} ({what})")
    return label.astype(np.uint8)
