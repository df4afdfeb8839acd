"""Protocol augmentations on numpy arrays; image and label always move together.

Every function takes an explicit ``np.random.Generator`` so that a batch is a pure
function of (seed, iteration, rank): resumed runs and worker processes see exactly
the same samples as an uninterrupted run.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bfaseg.io.resample import resample


def pad_to(arrays: list[np.ndarray], size: tuple[int, ...]) -> list[np.ndarray]:
    """Zero-pad (symmetrically) where an array is smaller than ``size``."""
    shape = arrays[0].shape
    pads = [max(p - s, 0) for s, p in zip(shape, size)]
    if not any(pads):
        return arrays
    widths = [(p // 2, p - p // 2) for p in pads]
    return [np.pad(a, widths, mode="constant") for a in arrays]


def random_crop(arrays: list[np.ndarray], size: tuple[int, ...], rng: np.random.Generator) -> list[np.ndarray]:
    arrays = pad_to(arrays, size)
    shape = arrays[0].shape
    starts = [int(rng.integers(0, s - p + 1)) for s, p in zip(shape, size)]
    sl = tuple(slice(st, st + p) for st, p in zip(starts, size))
    return [a[sl] for a in arrays]


def random_rot90_flip(arrays: list[np.ndarray], rng: np.random.Generator, keep_shape: bool = False) -> list[np.ndarray]:
    """Random rot90 in the first two axes (x-y for LA) then a flip of axis 0 or 1 (as the reference).
    ``keep_shape`` (after the 3-D crop, where a changed shape would mix shapes in a batch): where those axes
    differ in length the turn is by 0 or 180 degrees; the same draws either way."""
    k = int(rng.integers(0, 4))
    axis = int(rng.integers(0, 2))
    if keep_shape and arrays[0].shape[0] != arrays[0].shape[1]:
        k = k // 2 * 2
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(0, 1))
        a = np.flip(a, axis=axis)
        out.append(a)
    return out


def random_rotate(
    arrays: list[np.ndarray], rng: np.random.Generator, max_degrees: float = 20.0, style: str = "bfaseg"
) -> list[np.ndarray]:
    """Rotation in the first two axes, labels nearest. ``bfaseg``: a real angle in [-max, max], image linear;
    ``reference``: an integer angle in [-max, max), image nearest (SSL4MIS's and BCP's ``random_rotate``)."""
    if style == "reference":
        angle, image_order = float(rng.integers(-int(max_degrees), int(max_degrees))), 0
    else:
        angle, image_order = float(rng.uniform(-max_degrees, max_degrees)), 1
    image, *labels = arrays
    image = ndimage.rotate(image, angle, axes=(1, 0), reshape=False, order=image_order, mode="constant")
    labels = [ndimage.rotate(lb, angle, axes=(1, 0), reshape=False, order=0, mode="constant") for lb in labels]
    return [image, *labels]


def augment(
    arrays: list[np.ndarray], patch_size: tuple[int, ...], rng: np.random.Generator, rotation: str = "both",
    rotation_style: str = "bfaseg", resize_after: bool = False,
) -> list[np.ndarray]:
    """The protocol augmentation: 3-D = crop + rot90/flip; 2-D = rot90/flip or a small rotation (``rotation``:
    which, see ``DataConfig.rotation``), then crop; ``resize_after`` (2-D): first resize every array to
    ``patch_size`` with nearest interpolation, as the references' RandomGenerator."""
    if arrays[0].ndim == 3:
        arrays = random_crop(arrays, patch_size, rng)
        arrays = random_rot90_flip(arrays, rng, keep_shape=True)
    else:
        if rotation == "rot90_flip":
            branch = "rot90"
        elif rotation == "rotate":
            branch = "rotate"
        elif rotation == "both":
            branch = "rot90" if rng.random() < 0.5 else "rotate"
        else:  # both_or_none, BCP's RandomGenerator: `if random() > 0.5: rot_flip elif random() > 0.5: rotate`
            branch = "rot90" if rng.random() < 0.5 else ("rotate" if rng.random() < 0.5 else "none")
        if branch == "rot90":
            arrays = random_rot90_flip(arrays, rng)
        elif branch == "rotate":
            arrays = random_rotate(arrays, rng, style=rotation_style)
        if resize_after:
            arrays = [resize(a, tuple(patch_size), order=0) for a in arrays]
        arrays = random_crop(arrays, patch_size, rng)
    return [np.ascontiguousarray(a) for a in arrays]


def resize(array: np.ndarray, size: tuple[int, ...], order: int) -> np.ndarray:
    """Resize to exactly ``size`` (order 1 images, 0 labels) with corners aligned: the values of
    ``scipy.ndimage.zoom(grid_mode=False)``, which the protocol's training pipeline uses."""
    if tuple(array.shape) == tuple(size):
        return array
    return resample(array, size, order, mode="constant").astype(array.dtype, copy=False)


def downsample_case_arrays(image: np.ndarray, label: np.ndarray | None, factor: float):
    if factor == 1:
        return image, label
    size = tuple(max(1, int(round(s / factor))) for s in image.shape)
    image = resize(image, size, order=1)
    if label is not None:
        label = resize(label, size, order=0)
    return image, label
