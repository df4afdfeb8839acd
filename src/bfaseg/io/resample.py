"""The one resampler of bfaseg: NIfTI target spacing and the way back, ``data.downsample``,
2-D slices resized to the patch size, the Pancreas converter.

Why no separate thick-slice axis (nnU-Net resamples a thick axis apart, with nearest
neighbour, when the spacing ratio exceeds 3): nnU-Net needs it because its in-plane
interpolation is a third-order spline, which overshoots and rings when it reaches across
slices several millimetres apart. bfaseg interpolates images linearly (order 1, no spline
prefilter) on every axis, which never leaves the range of the two neighbouring slices, and
labels with nearest neighbour on every axis; a separate axis would change no label and
would only replace a linear blend of two slices by a copy of one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["resample"]


def resample(array: np.ndarray, out_shape: Sequence[int], order: int, step: Sequence[float] | None = None,
             *, mode: str = "nearest") -> np.ndarray:
    """``array`` sampled on an ``out_shape`` grid: output index ``i`` reads input coordinate ``i * step``
    per axis (the first voxel centres coincide), interpolation ``order`` (0 nearest, 1 linear).

    ``step=None`` aligns the corners, ``(n_in - 1) / (n_out - 1)``, as ``scipy.ndimage.zoom(grid_mode=False)``.
    ``mode`` says what lies beyond the last voxel: ``"nearest"`` repeats it; ``"constant"`` (0) gives
    exactly ``scipy.ndimage.zoom``'s values, which the training pipeline and the public reference code use
    (zoom can put a coordinate a rounding error past the edge, and it reads 0 there).
    The output has the input's dtype.
    """
    from scipy import ndimage

    out_shape = tuple(int(s) for s in out_shape)
    if step is None:
        # an axis of length 1 is repeated (step 0 would make scipy divide 0 by 0)
        flat = [n == 1 and m > 1 for n, m in zip(array.shape, out_shape)]
        if any(flat):
            once = resample(array, [1 if f else m for f, m in zip(flat, out_shape)], order, mode=mode)
            return np.ascontiguousarray(np.broadcast_to(once, out_shape))
        step = [(n - 1) / (m - 1) if m > 1 else 1.0 for n, m in zip(array.shape, out_shape)]
    if out_shape == array.shape and np.allclose(step, 1.0):
        return array.copy()
    return ndimage.affine_transform(array, np.asarray(step, dtype=np.float64), offset=0.0, output_shape=out_shape,
                                    order=order, mode=mode, prefilter=False)
