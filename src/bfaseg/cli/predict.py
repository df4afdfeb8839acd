"""``bfaseg predict``: segment new images with a checkpoint.

    bfaseg predict --checkpoint best.pt --input imagesTs/ --output preds/
    bfaseg predict --checkpoint best.pt --input case.nii.gz --output preds/ --probabilities --labels labelsTs/

Inputs: NIfTI files (``.nii``/``.nii.gz``; a folder such as an nnU-Net ``imagesTs/`` with
``<case>_0000.nii.gz``) and h5 files (dataset ``image``; a folder is searched recursively,
e.g. an LA root). Preprocessing follows the run's config (NIfTI: reorientation,
``data.target_spacing``, ``data.modality`` normalisation; LA/Pancreas-style runs:
``data.downsample``), and every prediction is mapped back to the input's grid:

* NIfTI in -> ``<case>.nii.gz`` (uint8 labels) with the input's affine, voxel size and shape;
  ``--probabilities`` adds ``<case>_probs.nii.gz`` (float32, classes last);
* h5 in -> ``<case>_pred.h5`` (dataset ``label``, uint8, the input's shape; ``probabilities``
  (K, ...) float32 with ``--probabilities``), or ``<case>.nii.gz`` with ``--h5-format nifti``.

2-D (slice-wise) networks predict the slices of axis 0 of h5 volumes (ACDC (Z, Y, X)) and the
z-slices of NIfTI volumes. Every file is written atomically. With ``--labels DIR`` (label files
named ``<case>.nii.gz`` / ``<case>.nii`` / ``<case>.h5``; or ``--labels input`` for the ``label``
dataset of input h5 files) each case is scored and ``summary.json`` gets the metrics.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bfaseg.errors import BfasegError
from bfaseg.evaluation.evaluate import progress_iter, read_nifti_label_raw
from bfaseg.evaluation.scoring import case_row, score_case, summary_metrics
from bfaseg.inference.predictor import Predictor
from bfaseg.io.files import jsonable, write_json_atomic
from bfaseg.metrics import EMPTY_CLASS_HELP, EMPTY_CLASS_POLICIES

NIFTI_SUFFIXES = (".nii.gz", ".nii")
H5_SUFFIXES = (".h5", ".hdf5")


def register(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="segment NIfTI or h5 images with a checkpoint",
        description="Predict label maps for new images; outputs keep the input's geometry.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file (runs/<run>/checkpoints/best.pt)")
    p.add_argument("--input", required=True, metavar="FILE_OR_DIR",
                   help="a .nii/.nii.gz/.h5 file or a folder of them (e.g. imagesTs/)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the predictions")
    p.add_argument("--mode", choices=("fast", "paper"), default="fast", help="3-D sliding-window mode")
    p.add_argument("--stride", type=int, nargs="+", metavar="S", help="window stride per axis (3-D)")
    p.add_argument("--probabilities", action="store_true", help="also write the softmax probabilities")
    p.add_argument("--largest-component", action="store_true", help="keep the largest connected component per class")
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="auto",
                   help="forward-pass precision (auto: fp32 for paper; bf16 for fast where it is fast)")
    p.add_argument("--model", choices=("student", "teacher"), help="which weights (default: the run's eval.model)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--h5-format", choices=("h5", "nifti"), default="h5",
                   help="output format for h5 inputs: <case>_pred.h5 (default) or <case>.nii.gz")
    p.add_argument("--labels", metavar="DIR",
                   help="reference labels (<case>.nii.gz/.nii/.h5) to score the predictions, or 'input' for "
                   "the 'label' dataset of input h5 files; metrics go to OUTPUT/summary.json")
    p.add_argument("--policy", choices=("strict", "worst", "paper"), default="strict", help="empty-mask policy")
    p.add_argument("--empty-class-policy", choices=EMPTY_CLASS_POLICIES, default="nan", help=EMPTY_CLASS_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-quality", action="store_true", help="skip quality.json (per-case scores and flags, bfaseg.suggest)")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------- inputs
def _strip(name: str, suffixes) -> str | None:
    low = name.lower()
    for s in suffixes:
        if low.endswith(s):
            return name[: -len(s)]
    return None


def _nifti_case_id(path: Path) -> str:
    stem = _strip(path.name, NIFTI_SUFFIXES) or path.stem
    if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit():  # nnU-Net channel suffix _0000
        if stem[-4:] != "0000":
            raise BfasegError(f"{path}: only single-channel images are supported (channel {stem[-4:]})")
        stem = stem[:-5]
    return stem


def collect_inputs(path: Path) -> list[tuple[str, Path, str]]:
    """``(case_id, file, "nifti"|"h5")`` for a file or a folder (h5 searched recursively)."""
    if not path.exists():
        raise BfasegError(f"--input: not found: {path}")
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.iterdir() if p.is_file() and _strip(p.name, NIFTI_SUFFIXES) is not None)
        files += sorted(p for p in path.rglob("*") if p.is_file() and _strip(p.name, H5_SUFFIXES) is not None)
        files = [p for p in files if not p.name.startswith(".")]
        if not files:
            raise BfasegError(f"--input: no .nii/.nii.gz/.h5 files in {path}")
    out: list[tuple[str, Path, str]] = []
    for f in files:
        if _strip(f.name, NIFTI_SUFFIXES) is not None:
            out.append((_nifti_case_id(f), f, "nifti"))
        elif _strip(f.name, H5_SUFFIXES) is not None:
            out.append((_strip(f.name, H5_SUFFIXES), f, "h5"))
        else:
            raise BfasegError(f"--input: {f}: unsupported file type (use .nii, .nii.gz or .h5)")
    # h5 files of the LA layout are all called mri_norm2.h5: name them by their folder
    ids = [c for c, _, _ in out]
    if len(set(ids)) != len(ids):
        out = [(f.parent.name if ids.count(c) > 1 else c, f, k) for c, f, k in out]
        ids = [c for c, _, _ in out]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise BfasegError(f"--input: two inputs map to the same case id {dup!r}; predict them separately")
    return out


@contextmanager
def _open_h5(path: Path):
    """``h5py.File(path, "r")``; read errors become a :class:`BfasegError` naming the file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            yield f
    except BfasegError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise BfasegError(f"{path}: cannot read h5 file ({str(exc).splitlines()[0][:80]})") from None


def _spacing_attr(f) -> tuple[float, ...] | None:
    spacing = f.attrs.get("spacing")
    return tuple(float(s) for s in spacing) if spacing is not None else None


def _read_h5(path: Path) -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...] | None]:
    with _open_h5(path) as f:
        if "image" not in f:
            raise BfasegError(f"{path}: missing dataset 'image' (keys: {sorted(f.keys())})")
        for key in ("image", "label"):
            if key in f and not isinstance(f[key], __import__("h5py").Dataset):
                raise BfasegError(f"{path}: '{key}' is a group, not a dataset")
        image = np.asarray(f["image"][()], dtype=np.float32)
        label = np.asarray(f["label"][()]) if "label" in f else None
        spacing = _spacing_attr(f)
    if image.ndim not in (2, 3):
        raise BfasegError(f"{path}: 'image' must be 2-D or 3-D, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise BfasegError(f"{path}: 'image' contains NaN or Inf values")
    return image, label, spacing


def _find_label(labels_dir: Path, case_id: str) -> Path | None:
    for name in (f"{case_id}.nii.gz", f"{case_id}.nii", f"{case_id}.h5", f"{case_id}_gt.nii.gz"):
        p = labels_dir / name
        if p.is_file():
            return p
    return None


def _read_label_file(path: Path, num_classes: int, meta: dict | None = None):
    """``(label, spacing)`` checked as in training; ``meta`` of a NIfTI image adds its shape and affine."""
    from bfaseg.data.labels import check_label_array

    if _strip(path.name, NIFTI_SUFFIXES) is not None:
        if meta is not None:
            from bfaseg.data.nifti import read_source_label

            return read_source_label(path, meta, num_classes), tuple(meta["original_spacing"])
        return read_nifti_label_raw(path, num_classes)
    with _open_h5(path) as f:
        if "label" not in f:
            raise BfasegError(f"{path}: missing dataset 'label'")
        if not isinstance(f["label"], __import__("h5py").Dataset):
            raise BfasegError(f"{path}: 'label' is a group, not a dataset")
        return check_label_array(f["label"][()], path, num_classes), _spacing_attr(f)


# ----------------------------------------------------------------------------- writing
def _write_h5_atomic(path: Path, label: np.ndarray, probs: np.ndarray | None, attrs: dict) -> None:
    import h5py

    from bfaseg.io.files import atomic_write_bytes

    def write(stream) -> None:
        with h5py.File(stream, "w") as f:
            f.create_dataset("label", data=label.astype(np.uint8), compression="gzip")
            if probs is not None:
                f.create_dataset("probabilities", data=probs.astype(np.float32), compression="gzip")
            for k, v in attrs.items():
                if v is not None:
                    f.attrs[k] = v

    atomic_write_bytes(path, write)


# ----------------------------------------------------------------------------- command
def run(args) -> int:
    from bfaseg.data.labels import check_label_array
    from bfaseg.io.output import check_output_dir, remove_stale_temporaries

    inputs = collect_inputs(Path(args.input))
    source = Path(args.input)
    out_dir = check_output_dir(args.output, input_dir=source if source.is_dir() else None)
    remove_stale_temporaries(out_dir)  # left by an earlier predict killed with SIGKILL
    labels_dir = None
    if args.labels and args.labels != "input":
        labels_dir = Path(args.labels)
        if not labels_dir.is_dir():
            raise BfasegError(f"--labels: folder not found: {labels_dir}")
    predictor = Predictor.from_args(args)
    cfg, ndim = predictor.cfg, predictor.ndim
    num_classes = cfg.model.num_classes
    downsample = cfg.data.downsample if ndim == 3 else 1.0
    from bfaseg.suggest import QualityMonitor  # quality.json: scores and flags per case

    quality = None if args.no_quality else QualityMonitor(args.checkpoint, device=predictor.device,
                                                          precision=predictor.precision, which=args.model)

    def predict(image: np.ndarray, xyz: bool):
        return predictor.predict(image, xyz=xyz, downsample=downsample, probabilities=args.probabilities)

    def reference_label(case_id: str, path: Path, meta: dict | None):
        """``(label, spacing)`` from --labels DIR, checked as in training BEFORE the case's outputs are written."""
        if labels_dir is None:
            return None, None
        lab_path = _find_label(labels_dir, case_id)
        if lab_path is None:
            raise BfasegError(f"--labels: no label for case {case_id!r} in {labels_dir} "
                              f"({case_id}.nii.gz, {case_id}.nii or {case_id}.h5)")
        return _read_label_file(lab_path, num_classes, meta)

    rows, results, written = [], [], []
    settings: dict[str, Any] = {}
    units = None
    for case_id, path, kind in progress_iter(inputs, "predict", not args.no_progress):
        t0 = time.perf_counter()
        gt = gt_spacing = None
        if kind == "nifti":
            from bfaseg.data.nifti import load_nifti_image, restore_geometry, save_nifti_mask, save_probabilities

            case = load_nifti_image(path, cfg.data.target_spacing, cfg.data.modality, case_id=case_id)
            gt, gt_spacing = reference_label(case_id, path, case.meta)
            if args.labels == "input":
                raise BfasegError(f"--labels input: {path} is not an h5 file with a 'label' dataset")
            labels, probs, settings = predict(case.image, xyz=True)
            out = save_nifti_mask(labels, case.meta, out_dir / f"{case_id}.nii.gz")
            written.append(str(out))
            if probs is not None:
                written.append(str(save_probabilities(probs, case.meta, out_dir / f"{case_id}_probs.nii.gz")))
            if labels_dir is not None:
                pred = restore_geometry(labels, case.meta, order=0)
                spacing = tuple(case.meta["original_spacing"])
        else:
            image, inline_label, spacing = _read_h5(path)
            if args.labels == "input":  # checked before anything is written
                if inline_label is None:
                    raise BfasegError(f"--labels input: {path} has no 'label' dataset")
                gt = check_label_array(inline_label, f"{path} 'label'", num_classes, shape=image.shape)
            else:
                gt, gt_spacing = reference_label(case_id, path, None)
                if gt is not None:
                    gt = check_label_array(gt, f"of case {case_id!r} (--labels)", num_classes, shape=image.shape)
                    if gt_spacing is not None and spacing is None:
                        spacing = gt_spacing
            if image.ndim == 2:
                if ndim == 3:
                    raise BfasegError(f"{path}: a 3-D network needs 3-D images, got shape {image.shape}")
                image = image[None]
                squeeze = True
            else:
                squeeze = False
            labels, probs, settings = predict(image, xyz=False)
            if squeeze:
                labels, probs = labels[0], (probs[:, 0] if probs is not None else None)
                image = image[0]
            if args.h5_format == "nifti":
                if labels.ndim != 3:
                    raise BfasegError(f"{path}: --h5-format nifti needs 3-D volumes")
                from bfaseg.data.nifti import array_geometry, save_nifti_mask, save_probabilities

                meta = array_geometry(labels.shape, spacing, path)
                written.append(str(save_nifti_mask(labels, meta, out_dir / f"{case_id}.nii.gz")))
                if probs is not None:
                    written.append(str(save_probabilities(probs, meta, out_dir / f"{case_id}_probs.nii.gz")))
            else:
                out = out_dir / f"{case_id}_pred.h5"
                _write_h5_atomic(out, labels, probs, {"spacing": spacing, "source": str(path)})
                written.append(str(out))
            pred = labels
        if quality:
            quality.add(case_id, case.image if kind == "nifti" else image, labels, xyz=kind == "nifti")
        if args.labels is not None:
            gt = check_label_array(gt, f"of case {case_id!r} (--labels)", num_classes, shape=pred.shape)
            result = score_case(pred, gt.astype(np.int32), num_classes, spacing, args.policy, args.empty_class_policy)
            units = result["units"]
            results.append(result)
            row = case_row(case_id, result)
        else:
            row = {"case": case_id}
        row.update(input=str(path), seconds=round(time.perf_counter() - t0, 3))
        rows.append(row)

    doc: dict[str, Any] = {
        "n_cases": len(rows),
        "per_case": rows,
        "outputs": written,
        **predictor.describe(settings),
        "input": str(Path(args.input)),
    }
    if results:
        units_note = "mm (NIfTI header / h5 spacing)" if units == "mm" else "voxel"
        doc.update(summary_metrics(results, args.policy, units, args.empty_class_policy), units_source=units_note)
    out_dir.mkdir(parents=True, exist_ok=True)
    if quality:
        written.append(str(quality.write(out_dir)))
    write_json_atomic(out_dir / "summary.json", jsonable(doc))
    msg = f"wrote {len(written)} file(s) to {out_dir}"
    if results:
        m = doc["mean"]
        msg += f"; mean Dice {m['dice']:.4f}, HD95 {m['hd95']:.2f} {units}"
    print(msg, file=sys.stdout)
    return 0
