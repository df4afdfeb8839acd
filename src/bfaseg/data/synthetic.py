"""Synthetic 2-D/3-D phantoms for the demo and the tests.

Each phantom has smooth blobs of several classes (an outer shell class around an
inner class, like myocardium around a ventricle), a thin boundary structure, a
smooth intensity inhomogeneity (bias field) and noise, so that boundaries matter.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bfaseg.data.cases import Case


def make_phantom(
    shape: tuple[int, ...], num_classes: int = 3, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    rng = rng or np.random.default_rng(0)
    shape = tuple(int(s) for s in shape)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    label = np.zeros(shape, np.uint8)
    intensity = np.zeros(shape, np.float32)
    # a smooth random deformation makes the blobs non-spherical
    warp = [ndimage.gaussian_filter(rng.normal(size=shape), sigma=max(shape) / 6) for _ in shape]
    warp = [w / (np.abs(w).max() + 1e-6) * 0.15 for w in warp]
    centre = rng.uniform(-0.3, 0.3, size=len(shape))
    radii = rng.uniform(0.35, 0.6, size=len(shape))
    r = np.sqrt(sum(((g + w - c) / rr) ** 2 for g, w, c, rr in zip(grids, warp, centre, radii)))
    # class 1: outer shell; class 2: inner core; further classes: small satellite blobs
    class_levels = np.linspace(0.35, 1.0, num_classes)  # intensities per class
    if num_classes >= 3:
        label[r < 1.0] = 1
        label[r < 0.65] = 2
    else:
        label[r < 0.8] = 1
    for k in range(3, num_classes):
        c2 = rng.uniform(-0.6, 0.6, size=len(shape))
        r2 = np.sqrt(sum(((g - c) / 0.18) ** 2 for g, c in zip(grids, c2)))
        label[(r2 < 1.0) & (label == 0)] = k
    for k in range(1, num_classes):
        intensity[label == k] = class_levels[k]
    # thin boundary structure: a dark rim just outside the object (1-2 voxels)
    fg = label > 0
    rim = ndimage.binary_dilation(fg, iterations=1) & ~fg
    intensity[rim] = 0.1
    # per-case appearance varies (contrast, bias strength, noise), so a few labeled cases do not
    # cover the population and unlabeled cases carry real information
    contrast = rng.uniform(0.5, 1.5)
    intensity = intensity ** rng.uniform(0.6, 1.6) * contrast
    bias = 1.0 + rng.uniform(0.1, 0.6) * sum(g * b for g, b in zip(grids, rng.uniform(-1, 1, size=len(shape))))
    image = intensity * bias + rng.normal(0, rng.uniform(0.08, 0.3), size=shape).astype(np.float32)
    image = ndimage.gaussian_filter(image, 0.7)
    image = (image - image.mean()) / (image.std() + 1e-6)
    return image.astype(np.float32), label


def make_synthetic_cases(
    n: int, shape: tuple[int, ...], num_classes: int = 3, seed: int = 0, prefix: str = "synth"
) -> list[Case]:
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        image, label = make_phantom(shape, num_classes, rng)
        cases.append(Case(case_id=f"{prefix}_{i:03d}", image=image, label=label))
    return cases
