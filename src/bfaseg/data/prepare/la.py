"""2018 Left Atrium challenge release -> ``2018LA_Seg_Training Set/<ID>/mri_norm2.h5``.

Raw layout: ``RAW/<ID>/lgemri.nrrd`` and ``RAW/<ID>/laendo.nrrd`` (label 255 = atrium); the
case folders may also sit one level deeper (e.g. ``RAW/Training Set/<ID>``).

Output per case (as distributed by UA-MT and followers): ``image`` float32 z-scored over the
whole volume (before cropping), ``label`` uint8 {0, 1}, axis order (x, y, z), attribute
``spacing`` (x, y, z) in mm. Standard crop: the ground-truth box in x/y plus a random margin of
10-19 voxels on each side (and at least ``min_size`` voxels wide, centred, as the reference
code pads the box to the 112 x 112 training patch), all of z. That crop uses the label, so it
leaks the object's position; ``label_crop=False`` crops a fixed ``crop_size`` window around the
image centre instead (padded with the volume minimum where the image is smaller).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from bfaseg.data.prepare.common import (
    PrepareSummary,
    bbox,
    binarize_label,
    check_h5,
    crop_or_pad,
    finish,
    progress,
    published,
    read_image_label,
    require_dir,
    staged,
    train_test_lists,
)
from bfaseg.errors import BfasegError

LA_FOLDER = "2018LA_Seg_Training Set"
IMAGE_NAME = "lgemri.nrrd"
LABEL_NAME = "laendo.nrrd"


def find_la_cases(raw: Path) -> dict[str, Path]:
    """ID -> case folder (folders holding ``lgemri.nrrd``), searched at depth 1 then 2."""
    raw = require_dir(raw, "LA raw")
    cases = {p.name: p for p in sorted(raw.iterdir()) if (p / IMAGE_NAME).is_file()}
    if not cases:
        for sub in sorted(p for p in raw.iterdir() if p.is_dir()):
            for p in sorted(sub.iterdir()):
                if (p / IMAGE_NAME).is_file():
                    if p.name in cases:
                        raise BfasegError(f"LA case ID {p.name} appears twice: {cases[p.name]} and {p}")
                    cases[p.name] = p
    if not cases:
        raise BfasegError(f"no LA cases in {raw}: expected {raw}/<ID>/{IMAGE_NAME} and {LABEL_NAME}")
    return dict(sorted(cases.items()))


def _xy_window(lo: int, hi: int, n: int, margin_lo: int, margin_hi: int, min_size: int) -> tuple[int, int]:
    """[start, stop) around the inclusive box [lo, hi] with margins, widened to min_size, in [0, n)."""
    start, stop = lo - margin_lo, hi + 1 + margin_hi
    short = min_size - (stop - start)
    if short > 0:  # widen around the centre, shifted back inside the volume where possible
        start -= short // 2
        stop += short - short // 2
        if start < 0:
            start, stop = 0, stop - start
        if stop > n:
            start, stop = start - (stop - n), n
    return max(start, 0), min(stop, n)


def convert_la_case(
    image_path: Path,
    label_path: Path,
    rng: np.random.Generator,
    *,
    label_crop: bool = True,
    margin: tuple[int, int] = (10, 19),
    min_size: tuple[int, int] = (112, 112),
    crop_size: tuple[int, int] = (192, 192),
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One case -> (image (x,y,z) float32, label (x,y,z) uint8, spacing (x,y,z))."""
    img, image, label = read_image_label(image_path, label_path, "LA", xyz=True)
    label = binarize_label(label, label_path)
    spacing = tuple(float(s) for s in img.GetSpacing())

    std = float(image.std(dtype=np.float64))
    image = ((image - float(image.mean(dtype=np.float64))) / (std if std > 1e-8 else 1.0)).astype(np.float32)

    w, h, d = image.shape
    if label_crop:
        if not label.any():
            raise BfasegError(f"LA label {label_path} is empty; use --no-label-crop to crop without labels")
        (x0, x1), (y0, y1), _ = bbox(label)
        m = [int(v) for v in rng.integers(margin[0], margin[1] + 1, size=4)]
        xs, xe = _xy_window(x0, x1, w, m[0], m[1], min_size[0])
        ys, ye = _xy_window(y0, y1, h, m[2], m[3], min_size[1])
        return image[xs:xe, ys:ye].copy(), label[xs:xe, ys:ye].copy(), spacing
    cx, cy = crop_size
    starts = (w // 2 - cx // 2, h // 2 - cy // 2, 0)
    sizes = (cx, cy, d)
    return (
        crop_or_pad(image, starts, sizes, float(image.min())),
        crop_or_pad(label, starts, sizes, 0),
        spacing,
    )


def prepare_la(
    raw: str | Path,
    out: str | Path,
    *,
    label_crop: bool = True,
    margin: Sequence[int] = (10, 19),
    min_size: Sequence[int] = (112, 112),
    crop_size: Sequence[int] = (192, 192),
    seed: int = 0,
    test_fraction: float = 0.2,
    show_progress: bool = True,
) -> PrepareSummary:
    """Convert the LA release under ``raw`` into the standard layout under ``out``.

    Split: the first (1 - ``test_fraction``) of the sorted IDs -> ``train.list``, the rest
    -> ``test.list`` (80/20 for the 100 challenge cases; at least one of each when possible).
    """
    raw, out = Path(raw), Path(out)
    margin = (int(margin[0]), int(margin[1]))
    if not 0 <= margin[0] <= margin[1]:
        raise BfasegError(f"--margin must be MIN MAX with 0 <= MIN <= MAX, got {margin}")
    min_size = (int(min_size[0]), int(min_size[1]))
    crop_size = (int(crop_size[0]), int(crop_size[1]))
    if min(crop_size) < 1:
        raise BfasegError(f"--crop-size must be positive, got {crop_size}")
    cases = find_la_cases(raw)
    for cid, folder in cases.items():
        if not (folder / LABEL_NAME).is_file():
            raise BfasegError(f"LA case {cid} has no label: {folder / LABEL_NAME} not found")

    ids = list(cases)
    lists = train_test_lists(ids, test_fraction)

    rng = np.random.default_rng(seed)
    with staged(out) as stage:  # all or nothing: a bad case leaves none of the ones before it
        summary = PrepareSummary("LA", stage, cases=ids, lists=lists)
        for cid in progress(ids, "LA", show_progress):
            folder = cases[cid]
            image, label, spacing = convert_la_case(
                folder / IMAGE_NAME,
                folder / LABEL_NAME,
                rng,
                label_crop=label_crop,
                margin=margin,
                min_size=min_size,
                crop_size=crop_size,
            )
            attrs = {"spacing": np.asarray(spacing, dtype=np.float64), "label_crop": bool(label_crop)}
            summary.write_case(stage / LA_FOLDER / cid / "mri_norm2.h5", image, label, attrs)

        finish(
            summary,
            lambda path: check_h5(path, ndim=3, label_values={0, 1}, attrs=("spacing",)),
            lambda _list, cid: stage / LA_FOLDER / cid / "mri_norm2.h5",
        )
    return published(summary, stage, out)
