"""NIH Pancreas-CT -> ``Pancreas_h5/<case>_norm.h5``.

Raw layout::

    RAW/images/<case>/...          one DICOM series (any depth below the case folder), or
    RAW/images/<case>.nii.gz       a NIfTI volume (``.nii`` also accepted)
    RAW/labels/label<NNNN>.nii.gz  NNNN = the trailing number of <case>, 4 digits (NIH naming),
                                   or RAW/labels/<case>.nii.gz

Per case: resampling to ``spacing`` (default 1 mm isotropic; image linear, label nearest,
:func:`bfaseg.io.resample.resample`; the first voxel centre stays, an edge voxel is repeated where
the new grid reaches past the old one), HU clipped to [-125, 275], min-max to [0, 1], crop to the label
box expanded by 25 voxels (at least 96 per axis; zero-padded where the volume is smaller), axis
order (x, y, z), attribute ``spacing`` (x, y, z). Cases whose image array is identical to an
earlier one (the NIH release has two such duplicates) are dropped with a message.

Label geometry: when the label's origin/direction/spacing agree with the image's, the label
is resampled in physical space; when they disagree but the voxel grids have the same size,
the label is taken voxel-for-voxel in the image's geometry and a message says so.
"""

from __future__ import annotations

import hashlib
import os
import re
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
    minmax_scale,
    progress,
    published,
    read_sitk,
    require_dir,
    staged,
    warn,
    sitk_array,
    sitk_error_detail,
    split_counts,
    train_test_lists,
)
from bfaseg.errors import BfasegError
from bfaseg.io.resample import resample

H5_FOLDER = "Pancreas_h5"
HU_WINDOW = (-125.0, 275.0)
DEFAULT_TEST_FRACTION = 20 / 82
_NIFTI = (".nii.gz", ".nii")


def _strip(name: str) -> str | None:
    for s in _NIFTI:
        if name.endswith(s):
            return name[: -len(s)]
    return None


def find_pancreas_cases(raw: Path) -> dict[str, Path]:
    """case -> DICOM folder or NIfTI file under RAW/images."""
    raw = require_dir(raw, "Pancreas raw")
    images = raw / "images"
    if not images.is_dir():
        raise BfasegError(f"Pancreas raw folder {raw} has no images/ subfolder")
    cases: dict[str, Path] = {}
    for p in sorted(images.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            name = p.name
        elif p.is_file() and _strip(p.name):
            name = _strip(p.name)
        else:
            continue
        if name in cases:
            raise BfasegError(f"Pancreas case {name!r} appears twice: {cases[name]} and {p}")
        cases[name] = p
    if not cases:
        raise BfasegError(f"no Pancreas cases in {images}: expected <case>/ DICOM folders or <case>.nii.gz")
    return cases


def find_pancreas_label(raw: Path, case: str) -> Path:
    labels = raw / "labels"
    names = [f"{case}{s}" for s in _NIFTI]
    m = re.search(r"(\d+)$", case)
    if m:
        names += [f"label{int(m.group(1)):04d}{s}" for s in _NIFTI]
    for name in names:
        if (labels / name).is_file():
            return labels / name
    tried = ", ".join(n for n in names if n.endswith(".nii.gz"))
    raise BfasegError(f"Pancreas case {case} has no label: none of {tried} in {labels}")


def read_dicom_series(folder: Path):
    """The largest DICOM series found in ``folder`` or below, as a SimpleITK image (HU)."""
    import SimpleITK as sitk

    best: list[str] = []
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # "No Series were found" for every plain folder
    try:
        for dirpath, _dirs, files in sorted(os.walk(folder)):
            if not files:
                continue
            try:
                for sid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(dirpath) or ():
                    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(dirpath, sid)
                    if len(names) > len(best):
                        best = list(names)
            except RuntimeError:
                continue
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
    if not best:
        raise BfasegError(f"no readable DICOM series in {folder}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(best)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise BfasegError(f"cannot read the DICOM series in {folder}: {sitk_error_detail(exc)}") from None


def _same_geometry(a, b) -> bool:
    tol = 1e-3 * min(a.GetSpacing())
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-4, atol=1e-6)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=max(tol, 1e-4))
    )


def crop_window(lo: int, hi: int, n: int, expand: int, min_size: int) -> tuple[int, int]:
    """(start, size) around the inclusive box [lo, hi]; may reach outside [0, n) only when n < min_size."""
    start, stop = max(lo - expand, 0), min(hi + 1 + expand, n)
    short = min_size - (stop - start)
    if short > 0:
        start -= short // 2
        stop += short - short // 2
        if start < 0:
            stop, start = stop - start, 0
        if stop > n:
            start, stop = start - (stop - n), n
        if start < 0:  # volume smaller than min_size: centre it in a padded window
            start = (n - min_size) // 2
            return start, min_size
    return start, stop - start


def convert_pancreas_case(
    source: Path,
    label_path: Path,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    expand: int = 25,
    min_size: int = 96,
    image=None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One case -> (image (x,y,z) float32 in [0,1], label (x,y,z) uint8, messages)."""
    import SimpleITK as sitk

    notes: list[str] = []
    if image is None:
        image = read_pancreas_image(source)
    label = read_sitk(label_path, "Pancreas label")
    if label.GetDimension() != 3:
        raise BfasegError(f"Pancreas label {label_path} is not a 3-D image")
    if label.GetSize() != image.GetSize():
        raise BfasegError(
            f"Pancreas label {label_path} has size {label.GetSize()} but image {source} has {image.GetSize()}"
        )
    if not _same_geometry(image, label):
        notes.append(
            f"{label_path.name}: origin/direction differ from {source.name}; label taken voxel-for-voxel"
        )
    # both grids share the image's origin and direction, so resampling in physical space is resampling
    # the voxel grid: output voxel i reads input coordinate i * target / spacing (first voxel centres kept)
    img = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32)).transpose(2, 1, 0)
    lab = binarize_label(sitk_array(label, label_path, "Pancreas label"), label_path).transpose(2, 1, 0)
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(img.shape, image.GetSpacing(), spacing)]
    step = [t / s for s, t in zip(image.GetSpacing(), spacing)]
    img = resample(np.ascontiguousarray(img), size, 1, step).astype(np.float32)
    lab = resample(np.ascontiguousarray(lab.astype(np.uint8)), size, 0, step)
    if not lab.any():
        raise BfasegError(f"Pancreas label {label_path} is empty (after resampling to {tuple(spacing)} mm)")

    img = minmax_scale(np.clip(img, *HU_WINDOW))

    windows = [crop_window(a, b, n, expand, min_size) for (a, b), n in zip(bbox(lab), lab.shape)]
    starts, sizes = [w[0] for w in windows], [w[1] for w in windows]
    return crop_or_pad(img, starts, sizes, 0.0), crop_or_pad(lab, starts, sizes, 0), notes


def read_pancreas_image(source: Path):
    if source.is_dir():
        image = read_dicom_series(source)
    else:
        image = read_sitk(source, "Pancreas image")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise BfasegError(f"Pancreas image {source} is not a scalar 3-D volume")
    return image


def prepare_pancreas(
    raw: str | Path,
    out: str | Path,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    expand: int = 25,
    min_size: int = 96,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    show_progress: bool = True,
) -> PrepareSummary:
    """Convert NIH Pancreas-CT under ``raw`` into ``out/Pancreas_h5`` + lists.

    Split (after dropping duplicates, sorted case order): the last ``test_fraction``
    (20/82 by default: 62/20 for 82 cases) -> ``test.list``, the rest -> ``train.list``.
    """
    import SimpleITK as sitk

    raw, out = Path(raw), Path(out)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise BfasegError(f"--spacing must be three positive numbers SX SY SZ, got {spacing}")
    if expand < 0 or min_size < 1:
        raise BfasegError("--expand must be >= 0 and --min-size >= 1")
    cases = find_pancreas_cases(raw)
    labels = {c: find_pancreas_label(raw, c) for c in cases}
    split_counts(len(cases), [test_fraction], ["test"])  # validate early

    def check_file(path: Path) -> None:
        shape = check_h5(path, ndim=3, label_values={0, 1}, value_range=(0.0, 1.0), attrs=("spacing",))
        if min(shape) < min_size:
            raise BfasegError(f"integrity check failed for {path}: shape {shape} smaller than {min_size}")

    with staged(out) as stage:  # all or nothing: a bad case leaves none of the ones before it
        summary = PrepareSummary("Pancreas", stage)
        seen: dict[str, str] = {}
        kept: list[str] = []
        for case in progress(list(cases), "Pancreas", show_progress):
            image = read_pancreas_image(cases[case])
            arr = sitk.GetArrayViewFromImage(image)
            digest = hashlib.sha1(np.ascontiguousarray(arr).tobytes() + str(arr.shape).encode()).hexdigest()
            if digest in seen:
                warn(f"Pancreas: dropping {case}: its image is identical to {seen[digest]} (duplicate)")
                summary.dropped.append(case)
                continue
            seen[digest] = case
            img, lab, notes = convert_pancreas_case(
                cases[case], labels[case], spacing=spacing, expand=expand, min_size=min_size, image=image
            )
            for note in notes:
                warn(f"Pancreas: {note}")
            attrs = {"spacing": np.asarray(spacing, dtype=np.float64)}
            summary.write_case(stage / H5_FOLDER / f"{case}_norm.h5", img, lab, attrs)
            kept.append(case)
        summary.cases, summary.lists = kept, train_test_lists(kept, test_fraction)
        finish(summary, check_file, lambda _list, case: stage / H5_FOLDER / f"{case}_norm.h5")
    return published(summary, stage, out)
