"""``bfaseg metrics PRED GT``: Dice, Jaccard, HD95, ASD, ASSD, HD of two mask files.

Files: ``.nii``/``.nii.gz`` (nibabel), ``.h5`` (dataset ``label``), ``.npy``.
Distances are in mm when a spacing is known (``--spacing``, else the NIfTI header
zooms), in voxels otherwise. ``--json`` prints exactly one JSON object with the
keys dice, jaccard, hd95, asd, assd, hd (per class: an object keyed by the class
as a string); NaN is printed as null.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from bfaseg.errors import BfasegError
from bfaseg.io.h5 import H5_SUFFIXES, read_h5
from bfaseg.metrics.core import BOTH_EMPTY, EMPTY_CLASS_HELP, EMPTY_CLASS_POLICIES, FAILED, METRICS, POLICIES, compute_case

def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "metrics",
        help="Dice, Jaccard, HD95, ASD, ASSD, HD of a prediction against a reference mask",
        description="Score a predicted mask or label map against a reference one "
        "(medpy-compatible numbers; ASD is directed PRED -> GT as in the papers, ASSD symmetric).",
    )
    parser.add_argument("pred", metavar="PRED", help="predicted mask: .nii/.nii.gz, .h5 (key 'label') or .npy")
    parser.add_argument("gt", metavar="GT", help="reference mask, same formats and shape as PRED")
    parser.add_argument("--spacing", type=float, nargs="+", metavar="S",
                        help="voxel size per axis in mm (SX SY SZ); default: NIfTI header zooms, "
                        "else distances in voxels")
    parser.add_argument("--policy", choices=POLICIES, default="strict",
                        help="empty-mask policy: strict (default; one mask empty -> NaN distances, failed), "
                        "worst (image diagonal instead of NaN), paper (reference code: empty prediction "
                        "scored 0 everywhere)")
    parser.add_argument("--empty-class-policy", choices=EMPTY_CLASS_POLICIES, default="nan", help=EMPTY_CLASS_HELP)
    parser.add_argument("--classes", type=int, metavar="N",
                        help="score classes 1..N (default: binary if only 0/1, else 1..max label); "
                        "a mask value above N is an error")
    parser.add_argument("--json", action="store_true", help="print one JSON object and nothing else")
    parser.add_argument("--resample", action="store_true",
                        help="two NIfTI files whose affines differ: resample PRED onto GT's grid (nearest neighbour) "
                        "instead of refusing to compare them")
    parser.set_defaults(func=run)


def _load(path_str: str) -> tuple[np.ndarray, tuple[float, ...] | None, object]:
    """Read a label array and, for NIfTI, the header zooms (mm) and the nibabel image (its geometry)."""
    path = Path(path_str)
    if not path.exists():
        raise BfasegError(f"{path}: file not found")
    if path.is_dir():
        raise BfasegError(f"{path}: is a directory, expected a mask file")
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.load(str(path))
            if 0 in img.shape:  # nibabel would read it as shape (0,): say what the header says, as io.nifti does
                raise BfasegError(f"{path}: the volume is empty (shape {tuple(img.shape)})")
            data = np.asanyarray(img.dataobj)
            zooms = tuple(float(z) for z in img.header.get_zooms()[: data.ndim])
            return data, zooms, img
        if name.endswith(H5_SUFFIXES):
            return read_h5(path, ("label",), required=("label",))[0]["label"], None, None
        if name.endswith(".npy"):
            return np.load(path, allow_pickle=False), None, None
    except BfasegError:
        raise
    except Exception as exc:  # corrupt or unreadable file: one line naming it
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BfasegError(f"{path}: cannot read ({reason})") from exc
    raise BfasegError(f"{path}: unsupported file type; use .nii, .nii.gz, .h5 or .npy")


def _same_grid(pred: np.ndarray, a, b, args) -> np.ndarray:
    """Two NIfTI files are compared voxel by voxel only in the same space: affines that differ (mirrored,
    shifted, another voxel size) are refused, or with --resample PRED is resampled onto GT's grid
    (nearest neighbour, nibabel.processing); outside PRED's grid is background."""
    if args.resample and (a is None or b is None):  # an option that would change nothing is refused (issue 30)
        raise BfasegError("--resample: applies to two NIfTI files only (.npy and .h5 masks have no geometry)")
    if a is None or b is None or np.allclose(a.affine, b.affine, atol=1e-4, rtol=0):
        return pred  # .npy / .h5 (no geometry), or the same space: shapes are compared next
    import nibabel as nib

    if not args.resample:
        diff = float(np.abs(np.asarray(a.affine) - np.asarray(b.affine)).max())
        raise BfasegError(
            f"PRED {args.pred} and GT {args.gt} differ in affine (max difference {diff:.4g}; PRED axes "
            f"{''.join(nib.aff2axcodes(a.affine))}, GT axes {''.join(nib.aff2axcodes(b.affine))}): voxel-wise "
            "scores would compare other places; pass --resample to resample PRED onto GT's grid")
    from nibabel.processing import resample_from_to

    moved = resample_from_to(nib.Nifti1Image(pred.astype(np.int32), a.affine), (b.shape[:3], b.affine), order=0,
                             mode="constant", cval=0)
    return np.asarray(moved.dataobj).astype(pred.dtype)


def _check_labels(arr: np.ndarray, path: str) -> np.ndarray:
    if arr.ndim not in (2, 3):
        raise BfasegError(f"{path}: expected a 2-D or 3-D mask, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise BfasegError(f"{path}: expected integer labels, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise BfasegError(f"{path}: holds non-integer values; expected a label map")
        arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise BfasegError(f"{path}: holds negative labels")
    return arr


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _fmt(value: float, key: str) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.4f}" if key in ("dice", "jaccard") else f"{value:.3f}"


def run(args: argparse.Namespace) -> int:
    pred, pred_zooms, pred_img = _load(args.pred)
    gt, gt_zooms, gt_img = _load(args.gt)
    pred = _check_labels(pred, args.pred)
    gt = _check_labels(gt, args.gt)
    pred = _same_grid(pred, pred_img, gt_img, args)
    if pred.shape != gt.shape:
        raise BfasegError(f"shape mismatch: PRED {args.pred} has shape {pred.shape}, GT {args.gt} has {gt.shape}")

    if args.spacing is not None:
        if len(args.spacing) != gt.ndim:
            raise BfasegError(f"--spacing has {len(args.spacing)} values but {args.gt} is {gt.ndim}-D")
        if any(not math.isfinite(s) or s <= 0 for s in args.spacing):
            raise BfasegError(f"--spacing must be positive, got {' '.join(map(str, args.spacing))}")
        spacing, source = tuple(args.spacing), "--spacing"
    elif gt_zooms is not None or pred_zooms is not None:
        spacing, source = (gt_zooms or pred_zooms), "NIfTI header"
        if gt_zooms and pred_zooms and not np.allclose(gt_zooms, pred_zooms, rtol=1e-3):
            print(f"warning: header zooms differ (PRED {pred_zooms}, GT {gt_zooms}); using GT's",
                  file=sys.stderr)
    else:
        spacing, source = None, None

    if args.classes is not None:
        if args.classes < 1:
            raise BfasegError(f"--classes must be >= 1, got {args.classes}")
        for arr, path in ((pred, args.pred), (gt, args.gt)):
            if arr.size and arr.max() > args.classes:
                raise BfasegError(f"{path}: holds label {int(arr.max())}, outside 0..{args.classes} (--classes "
                                  f"{args.classes})")
    try:
        result = compute_case(pred, gt, spacing=spacing, classes=args.classes, policy=args.policy,
                              empty_class=args.empty_class_policy)
    except ValueError as exc:
        raise BfasegError(f"{args.pred} vs {args.gt}: {exc}") from exc

    status = result["status"]
    statuses = status if isinstance(status, dict) else {None: status}
    failed = [c for c, s in statuses.items() if s in FAILED]

    if args.json:
        print(json.dumps({k: _jsonable(result[k]) for k in METRICS}))
        for c, s in statuses.items():
            if s != "ok":
                print(f"note: {'class ' + str(c) + ': ' if c is not None else ''}{s} (policy {args.policy}, "
                      f"empty-class policy {args.empty_class_policy})",
                      file=sys.stderr)
        return 0

    units = "voxels" if spacing is None else "mm"
    where = "" if spacing is None else f", spacing {' '.join(f'{s:g}' for s in spacing)} from {source}"
    print(f"PRED {args.pred}\nGT   {args.gt}")
    print(f"distances in {units}{where}; policy {args.policy}; empty-class policy {args.empty_class_policy}; "
          f"ASD is directed PRED -> GT")
    print(f"{'class':<6}" + "".join(f"{k:>10}" for k in METRICS) + "  status")
    rows = [(c, {k: result[k][c] for k in METRICS}) for c in statuses] if isinstance(status, dict) \
        else [(None, {k: result[k] for k in METRICS})]
    for c, values in rows:
        label = "fg" if c is None else str(c)
        print(f"{label:<6}" + "".join(f"{_fmt(values[k], k):>10}" for k in METRICS) + f"  {statuses[c]}")
    if isinstance(status, dict) and len(rows) > 1:
        means = {k: float(np.nanmean([v[k] for _, v in rows])) if any(not math.isnan(v[k]) for _, v in rows)
                 else math.nan for k in METRICS}
        print(f"{'mean':<6}" + "".join(f"{_fmt(means[k], k):>10}" for k in METRICS))
    if failed:
        print(f"failed: {len(failed)} (one mask empty; see --policy)")
    both = [c for c, s in statuses.items() if s == BOTH_EMPTY]
    if both:
        how = "NaN, left out of the mean" if args.empty_class_policy == "nan" else "scored by --policy"
        print(f"empty in both masks: {len(both)} ({how}; see --empty-class-policy)")
    return 0
