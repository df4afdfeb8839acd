"""ACDC NIfTI release -> ``data/slices/<case>_slice_<k>.h5`` and ``data/<case>.h5``.

Raw layout: ``RAW/<patientXXX>/patientXXX_frameYY.nii.gz`` with ``patientXXX_frameYY_gt.nii.gz``,
possibly under ``RAW/training/`` and ``RAW/testing/`` (any depth up to 3 is searched; the
``_4d`` cine files are ignored). A case is ``patientXXX_frameYY``.

Output (the SSL4MIS layout): volumes ``data/<case>.h5`` with ``image`` (Z, Y, X) float32
min-max scaled to [0, 1] per volume, ``label`` (Z, Y, X) uint8 0..3 and attribute ``spacing``
(z, y, x) mm, for every case; slices ``data/slices/<case>_slice_<k>.h5`` (k = 1..Z, as in the
distributed data) with ``image``/``label`` (Y, X), attribute ``spacing`` (y, x) and
``volume_spacing`` (z, y, x), for the training patients (all patients with ``all_slices``).
Lists, split by patient: ``train_slices.list`` (slices of the training patients, grouped by
patient, so the first K lines are whole patients), ``val.list`` and ``test.list`` (cases).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from bfaseg.data.prepare.common import (
    PrepareSummary,
    check_h5,
    finish,
    make_out_dir,
    minmax_scale,
    progress,
    published,
    read_image_label,
    require_dir,
    split_counts,
    staged,
)
from bfaseg.errors import BfasegError

_FRAME_RE = re.compile(r"^(?P<patient>patient\d+)_frame(?P<frame>\d+)\.nii(\.gz)?$")
ACDC_LABELS = {0, 1, 2, 3}


def _gt_path(image: Path) -> Path:
    name = image.name
    suffix = ".nii.gz" if name.endswith(".nii.gz") else ".nii"
    base = name[: -len(suffix)]
    for s in (suffix, ".nii.gz", ".nii"):
        p = image.with_name(f"{base}_gt{s}")
        if p.is_file():
            return p
    return image.with_name(f"{base}_gt{suffix}")


def find_acdc_cases(raw: Path) -> dict[str, dict[str, Path]]:
    """patient -> {case: image path}, sorted."""
    raw = require_dir(raw, "ACDC raw")
    found: dict[str, dict[str, Path]] = {}
    for depth in range(0, 4):
        for p in sorted(raw.glob("/".join(["*"] * depth + ["patient*_frame*.nii*"]))):
            m = _FRAME_RE.match(p.name)
            if not m or not p.is_file():
                continue
            case = f"{m.group('patient')}_frame{m.group('frame')}"
            frames = found.setdefault(m.group("patient"), {})
            if case in frames and frames[case] != p:
                raise BfasegError(f"ACDC case {case} appears twice: {frames[case]} and {p}")
            frames[case] = p
    if not found:
        raise BfasegError(
            f"no ACDC cases in {raw}: expected <patientXXX>/patientXXX_frameYY.nii.gz (+ _gt.nii.gz)"
        )
    return {pat: dict(sorted(frames.items())) for pat, frames in sorted(found.items())}


def convert_acdc_case(image_path: Path, label_path: Path):
    """-> (image (Z,Y,X) float32 [0,1], label (Z,Y,X) uint8, spacing (z,y,x))."""
    img, image, label = read_image_label(image_path, label_path, "ACDC")
    values = set(np.unique(label).tolist())
    if not values <= ACDC_LABELS:
        raise BfasegError(f"ACDC label {label_path} has values {sorted(values)}; expected 0..3")
    if not np.all(np.isfinite(image)):
        raise BfasegError(f"ACDC image {image_path} contains NaN or Inf values")
    image = minmax_scale(image)
    spacing = tuple(float(s) for s in reversed(img.GetSpacing()))
    return image, label.astype(np.uint8), spacing


def prepare_acdc(
    raw: str | Path,
    out: str | Path,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int | None = None,
    all_slices: bool = False,
    show_progress: bool = True,
) -> PrepareSummary:
    """Convert the ACDC release under ``raw`` into ``out/data`` + lists.

    Patients are split 70/10/20 (``val_fraction``/``test_fraction``) in sorted order, or in
    an order shuffled with ``seed`` when given.
    """
    raw, out = Path(raw), Path(out)
    patients = find_acdc_cases(raw)
    for frames in patients.values():
        for case, image in frames.items():
            if not _gt_path(image).is_file():
                raise BfasegError(f"ACDC case {case} has no label: {_gt_path(image)} not found")

    order = list(patients)
    if seed is not None:
        order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    n_val, n_test = split_counts(len(order), [val_fraction, test_fraction], ["val", "test"])
    n_train = len(order) - n_val - n_test
    train_p, val_p, test_p = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    slice_patients = set(order) if all_slices else set(train_p)

    def cases_of(pats):
        return [case for pat in pats for case in patients[pat]]

    with staged(out) as stage:  # all or nothing: a bad case leaves none of the ones before it
        data = make_out_dir(stage / "data")
        slices_dir = make_out_dir(data / "slices")
        summary = PrepareSummary("ACDC", stage)
        n_slices: dict[str, int] = {}
        jobs = [(pat, case, img) for pat in sorted(patients) for case, img in patients[pat].items()]
        for pat, case, image_path in progress(jobs, "ACDC", show_progress):
            image, label, spacing = convert_acdc_case(image_path, _gt_path(image_path))
            attrs = {"spacing": np.asarray(spacing, dtype=np.float64)}
            summary.write_case(data / f"{case}.h5", image, label, attrs)
            n_slices[case] = image.shape[0]
            if pat in slice_patients:
                sattrs = {
                    "spacing": np.asarray(spacing[1:], dtype=np.float64),
                    "volume_spacing": np.asarray(spacing, dtype=np.float64),
                }
                for k in range(image.shape[0]):
                    summary.write_case(slices_dir / f"{case}_slice_{k + 1}.h5", image[k].copy(), label[k].copy(),
                                       sattrs)

        summary.lists = {
            "train_slices.list": [
                f"{case}_slice_{k}" for case in cases_of(train_p) for k in range(1, n_slices[case] + 1)
            ],
            "val.list": cases_of(val_p),
            "test.list": cases_of(test_p),
        }
        summary.cases = [case for _, case, _ in jobs]

        def check_file(path: Path):
            ndim = 2 if path.parent == slices_dir else 3
            return check_h5(path, ndim=ndim, label_values=ACDC_LABELS, value_range=(0.0, 1.0), attrs=("spacing",))

        finish(
            summary,
            check_file,
            lambda name, entry: (slices_dir if name == "train_slices.list" else data) / f"{entry}.h5",
        )
    return published(summary, stage, out, f" [patients: train {len(train_p)}, val {len(val_p)}, test {len(test_p)}]")
