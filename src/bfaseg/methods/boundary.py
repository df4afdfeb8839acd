"""The boundary extractor of BFA: class-wise morphological boundaries of label maps.

Works the same on ground truth and on teacher pseudo-labels, in 2-D and 3-D, on
the device: dilation and erosion of the one-hot mask are max-pools.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _max_pool(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Max over the (2r+1)^d cube around each voxel, voxels outside the image ignored
    (= ``max_poolNd(kernel 2r+1, stride 1, padding r)``, bit for bit).

    Separable, one axis at a time, with shifted maxima: 2r comparisons per axis instead of
    (2r+1)^d, and no pooling indices (the CPU max_pool3d kernel computes them even without
    autograd). 8x faster on a 4x112x112x80 label batch, 3.5x on 24x256x256.
    """
    out = x
    for dim in range(2, x.ndim):
        n = out.shape[dim]
        acc = out.clone()
        for s in range(1, min(radius, n - 1) + 1):
            lo = acc.narrow(dim, 0, n - s)
            lo.copy_(torch.maximum(lo, out.narrow(dim, s, n - s)))
            hi = acc.narrow(dim, s, n - s)
            hi.copy_(torch.maximum(hi, out.narrow(dim, 0, n - s)))
        out = acc
    return out


def class_boundaries(label: torch.Tensor, num_classes: int, thickness: int = 1) -> torch.Tensor:
    """Boundary maps of foreground classes 1..K-1: dilation(onehot) - erosion(onehot).

    ``label`` (N, *spatial) integer; returns float (N, K-1, *spatial) in {0, 1}.
    ``thickness`` is the pooling radius (a 1-voxel radius gives a 2-voxel-wide band
    straddling the contour: one voxel inside, one outside). Voxels outside the image are
    treated as "same class" (no boundary is invented at the image border).
    """
    onehot = F.one_hot(label.long(), num_classes).movedim(-1, 1).float()[:, 1:]
    dilated = _max_pool(onehot, thickness)
    eroded = -_max_pool(-onehot, thickness)
    return dilated - eroded  # in {0, 1}: the dilation is >= the map >= the erosion


def downsample_boundaries(boundary: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Boundary target at a decoder stage's resolution: max-pool so thin contours survive."""
    if tuple(boundary.shape[2:]) == tuple(size):
        return boundary
    return F.adaptive_max_pool3d(boundary, size) if boundary.ndim == 5 else F.adaptive_max_pool2d(boundary, size)


def downsample_weights(weight: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Per-voxel weights at a lower resolution (average pooling)."""
    if tuple(weight.shape[1:]) == tuple(size):
        return weight
    pool = F.adaptive_avg_pool3d if weight.ndim == 4 else F.adaptive_avg_pool2d
    return pool(weight.unsqueeze(1), size).squeeze(1)


def remove_small_components(label: torch.Tensor, num_classes: int, min_fraction: float) -> torch.Tensor:
    """Drop connected components smaller than ``min_fraction`` of the class's largest one.

    Runs per sample on the CPU (pseudo-labels are small); the rest stays on device. Components
    use full connectivity, as everywhere in the package (:mod:`bfaseg.data.components`).
    """
    import numpy as np

    from bfaseg.data.components import drop_small_components

    out = label.detach().cpu().numpy()
    out = np.stack([drop_small_components(sample, num_classes, min_fraction) for sample in out])
    return torch.from_numpy(out).to(label.device)


def signed_distance_maps(label: torch.Tensor, num_classes: int, scale: float = 10.0, clip: float = 5.0) -> torch.Tensor:
    """Signed distance to each foreground class's boundary, in units of ``scale`` voxels.

    ``label`` (N, *spatial) integer -> float (N, K-1, *spatial): positive outside the class
    (distance to its nearest voxel), negative inside (distance to the nearest voxel outside),
    clipped to [-clip, clip]. A class absent from a sample gets ``+clip`` everywhere: any
    prediction of it there is a far-away false positive. Computed per sample on the CPU
    with scipy's exact Euclidean distance transform (labels are small patches).
    """
    import numpy as np
    from scipy import ndimage

    lab = label.detach().cpu().numpy()
    out = np.full((lab.shape[0], num_classes - 1) + lab.shape[1:], clip, dtype=np.float32)
    for n in range(lab.shape[0]):
        for k in range(1, num_classes):
            mask = lab[n] == k
            if not mask.any():
                continue
            outside = ndimage.distance_transform_edt(~mask)
            inside = ndimage.distance_transform_edt(mask) if not mask.all() else np.full(mask.shape, clip * scale)
            out[n, k - 1] = np.clip((outside - inside) / scale, -clip, clip)
    return torch.from_numpy(out).to(label.device)
