"""Object surfaces and surface-to-surface distances (medpy-compatible, fast).

Definitions follow medpy (``medpy.metric.binary``), so the numbers are the same:

* the *surface* of a mask is ``mask XOR erosion(mask)`` with the connectivity-1
  structure (the 4-/6-neighbour cross), where everything outside the array
  counts as background: a foreground voxel on the array edge is a surface voxel;
* the *directed surface distances* A -> B are, for every surface voxel of A (in
  C order), the Euclidean distance to the nearest surface voxel of B, in the
  units of ``spacing`` (voxels when ``spacing`` is None).

How it is made fast, without changing a number:

1. Both masks are cropped to the bounding box of their union and padded with
   zeros. Outside that box both masks are background, so the zero padding is
   exactly what the full volume holds there (or what the erosion assumes beyond
   the array edge): the surfaces inside the crop are identical to the surfaces
   of the full volume. Every surface voxel of both masks lies inside the box,
   so every nearest partner is inside the crop as well and the distances are
   exact.
2. ``method="edt"``: one ``scipy.ndimage.distance_transform_edt`` (with
   ``sampling=spacing``) per direction on the padded crop -- the computation
   medpy does, on a smaller array and once instead of once per metric.
3. ``method="fast"`` (default): most surface voxels have their partner a few
   voxels away. Offsets are tried in order of increasing length inside a small
   ball (``radius``, in units of the smallest spacing); the first offset that
   lands on a partner surface voxel gives the exact distance. Voxels with no
   partner inside the ball (outliers) get theirs from an exact k-d tree
   nearest-neighbour query. Distances are computed with the same formula as
   scipy's EDT, ``sqrt(sum_i (d_i * s_i)**2)``.

All distance metrics (HD, HD95, ASD, ASSD) are then derived from the two
arrays returned by :func:`surface_distances`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.ndimage import distance_transform_edt
from scipy.spatial import cKDTree

METHODS = ("fast", "edt")


def as_spacing(spacing: float | Sequence[float] | None, ndim: int) -> np.ndarray | None:
    """Return ``spacing`` as a float64 array of length ``ndim`` (None stays None).

    A single number is used for every axis, as in medpy and scipy.
    """
    if spacing is None:
        return None
    arr = np.asarray(spacing, dtype=np.float64).ravel()
    if arr.size == 1:
        arr = np.repeat(arr, ndim)
    if arr.size != ndim:
        raise ValueError(f"spacing has {arr.size} values but the masks are {ndim}-D")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"spacing must be positive and finite, got {arr.tolist()}")
    return arr


def _norm(delta: np.ndarray, spacing: np.ndarray | None) -> np.ndarray:
    """Euclidean length of integer offsets ``delta`` (n, ndim), as scipy's EDT computes it."""
    d = delta.astype(np.float64)
    if spacing is not None:
        d *= spacing
    d *= d
    return np.sqrt(np.add.reduce(d, axis=1))


def _surface_in_padded(mask: np.ndarray) -> np.ndarray:
    """Surface of a boolean ``mask`` whose outermost layer is all background."""
    core = (slice(1, -1),) * mask.ndim
    inner = mask[core].copy()
    for axis in range(mask.ndim):
        lower = list(core)
        lower[axis] = slice(0, -2)
        upper = list(core)
        upper[axis] = slice(2, None)
        inner &= mask[tuple(lower)]
        inner &= mask[tuple(upper)]
    out = np.zeros_like(mask)
    out[core] = mask[core] & ~inner
    return out


def mask_surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a binary mask, as medpy extracts them.

    ``mask ^ binary_erosion(mask, generate_binary_structure(ndim, 1))`` with
    background beyond the array edge.
    """
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1)
    return _surface_in_padded(padded)[(slice(1, -1),) * mask.ndim]


def _union_crop(a: np.ndarray, b: np.ndarray, pad: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of ``a | b`` and zero-pad by ``pad`` per axis."""
    union = a | b
    box = []
    for axis in range(union.ndim):
        others = tuple(i for i in range(union.ndim) if i != axis)
        hits = np.flatnonzero(union.any(axis=others)) if others else np.flatnonzero(union)
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    width = [(int(p), int(p)) for p in pad]
    return np.pad(a[tuple(box)], width), np.pad(b[tuple(box)], width)


def _search_offsets(ndim: int, spacing: np.ndarray | None, radius: float):
    """Integer offsets inside a ball of ``radius`` smallest-spacing units, shortest first."""
    s = np.ones(ndim) if spacing is None else spacing
    limit = radius * float(s.min())
    reach = np.floor(limit / s + 1e-9).astype(int)
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)
    lengths = _norm(offsets, spacing)
    keep = lengths <= limit * (1 + 1e-12)
    offsets, lengths = offsets[keep], lengths[keep]
    order = np.argsort(lengths, kind="stable")
    return offsets[order], lengths[order], reach


def _shell_hits(dst_mask: np.ndarray, points: np.ndarray, steps: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
    """For each flat index in ``points``: is ``dst_mask`` set at any ``point + step``?

    Works on blocks of points so the (points x steps) index array stays small.
    """
    rows = max(1, chunk // steps.size)
    if points.size <= rows:
        return np.take(dst_mask, points[:, None] + steps).any(axis=1)
    return np.concatenate([_shell_hits(dst_mask, points[i:i + rows], steps, chunk)
                           for i in range(0, points.size, rows)])


def _directed_fast(shape, src, dst, dst_mask, shells, spacing) -> np.ndarray:
    """Distances from surface voxels ``src`` to the nearest surface voxel in ``dst``.

    ``src`` and ``dst`` are flat indices into an array of ``shape`` (``dst_mask``
    is that array's surface mask, raveled), padded so that ``voxel + offset`` stays
    inside it. ``shells`` lists (flat offsets, length) from the shortest length on.
    """
    dist = np.empty(src.size, dtype=np.float64)
    todo = np.arange(src.size)
    current = src
    for steps, length in shells:
        hit = _shell_hits(dst_mask, current, steps)
        if hit.any():
            dist[todo[hit]] = length
            miss = ~hit
            todo, current = todo[miss], current[miss]
            if todo.size == 0:
                return dist
    # No partner inside the ball: exact nearest neighbour among all dst surface voxels.
    src_pts = np.stack(np.unravel_index(current, shape), axis=1)
    dst_pts = np.stack(np.unravel_index(dst, shape), axis=1)
    scale = np.ones(len(shape)) if spacing is None else spacing
    tree = cKDTree(dst_pts * scale, balanced_tree=False, compact_nodes=False)
    _, nearest = tree.query(src_pts * scale)
    dist[todo] = _norm(dst_pts[nearest] - src_pts, spacing)
    return dist


def _directed_edt(src, dst, spacing) -> np.ndarray:
    """Same as :func:`_directed_fast`, with scipy's exact EDT of the crop."""
    dt = distance_transform_edt(~dst, sampling=spacing)
    return dt[src]


def surface_distances(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    method: str = "fast",
    radius: float = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances of two non-empty binary masks, in both directions.

    Returns ``(pred_to_gt, gt_to_pred)``: float64 arrays holding, for every
    surface voxel of ``pred`` (resp. ``gt``) in C order, the distance to the
    nearest surface voxel of the other mask, in the units of ``spacing``
    (voxels when None). ``pred_to_gt`` is what medpy's ``asd(pred, gt)``
    averages; medpy's ``hd95`` takes the 95th percentile of both pooled.

    ``method`` is ``"fast"`` (ball search + k-d tree, default) or ``"edt"``
    (distance transform of the padded crop); both give the same numbers.
    ``radius`` (``"fast"`` only) is the search ball in units of the smallest
    spacing; it changes the speed, never the result.
    Raises ValueError for empty masks or mismatched shapes.
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs gt {gt.shape}")
    if pred.ndim == 0:
        pred, gt = pred.reshape(1), gt.reshape(1)
    if not pred.any() or not gt.any():
        raise ValueError("surface distances need two non-empty masks")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    spacing = as_spacing(spacing, pred.ndim)

    if method == "edt":
        p, g = _union_crop(pred, gt, [1] * pred.ndim)
        sp, sg = _surface_in_padded(p), _surface_in_padded(g)
        return _directed_edt(sp, sg, spacing), _directed_edt(sg, sp, spacing)

    offsets, lengths, reach = _search_offsets(pred.ndim, spacing, radius)
    p, g = _union_crop(pred, gt, np.maximum(reach, 1))
    sp, sg = _surface_in_padded(p).ravel(), _surface_in_padded(g).ravel()
    # Group the offsets into shells of equal length, shortest first.
    index = np.int32 if p.size < 2**31 - 1 else np.int64
    flat_offsets = (offsets @ (np.array(p.strides) // p.itemsize)).astype(index)
    cuts = np.flatnonzero(np.diff(lengths)) + 1
    shells = [(f, float(l[0])) for f, l in zip(np.split(flat_offsets, cuts), np.split(lengths, cuts))]
    fp, fg = np.flatnonzero(sp).astype(index), np.flatnonzero(sg).astype(index)
    return (
        _directed_fast(p.shape, fp, fg, sg, shells, spacing),
        _directed_fast(p.shape, fg, fp, sp, shells, spacing),
    )


def distance_metrics(pred_to_gt: np.ndarray, gt_to_pred: np.ndarray) -> dict[str, float]:
    """HD95, ASD, ASSD and HD from the two arrays of :func:`surface_distances`.

    * ``hd95``: 95th percentile (numpy's default linear interpolation) of both
      directions pooled -- medpy ``hd95``;
    * ``asd``: mean of ``pred_to_gt`` only (directed) -- medpy ``asd``;
    * ``assd``: mean of both directions pooled -- medpy ``assd`` (medpy >= 0.5;
      medpy 0.4 averaged the two directed means instead, which differs when the
      two surfaces have different voxel counts);
    * ``hd``: the largest distance of either direction -- medpy ``hd``.
    """
    pooled = np.concatenate([pred_to_gt, gt_to_pred])
    return {
        "hd95": float(np.percentile(pooled, 95)),
        "asd": float(pred_to_gt.mean()),
        "assd": float(pooled.mean()),
        "hd": float(max(pred_to_gt.max(), gt_to_pred.max())),
    }
