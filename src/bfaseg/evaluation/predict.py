"""Predicting files with a :class:`~bfaseg.inference.predictor.Predictor`: read each input, predict it,
write the prediction in the input's own grid, score it when reference labels are given, write
``summary.json`` (``bfaseg predict``).

Inputs: NIfTI files (``.nii``/``.nii.gz``; a folder such as an nnU-Net ``imagesTs/`` with
``<case>_0000.nii.gz``) and h5 files (dataset ``image``; a folder is searched recursively,
e.g. an LA root). Preprocessing follows the run's config (NIfTI: reorientation,
``data.target_spacing``, ``data.modality`` normalisation; LA/Pancreas-style runs:
``data.downsample``), and every prediction is mapped back to the input's grid:

* NIfTI in -> ``<case>.nii.gz`` (uint8 labels) with the input's affine, voxel size and shape;
  ``probabilities`` adds ``<case>_probs.nii.gz`` (float32, classes last);
* h5 in -> ``<case>_pred.h5`` (dataset ``label``, uint8, the input's shape; ``probabilities``
  (K, ...) float32), or ``<case>.nii.gz`` with ``h5_format="nifti"``.

2-D (slice-wise) networks predict the slices of axis 0 of h5 volumes (ACDC (Z, Y, X)) and the
z-slices of NIfTI volumes. Every file is written atomically. With ``labels`` (a folder of label
files named ``<case>.nii.gz`` / ``<case>.nii`` / ``<case>.h5``; or ``"input"`` for the ``label``
dataset of input h5 files) each case is scored and ``summary.json`` gets the metrics.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from bfaseg.data.nifti import load_nifti_image
from bfaseg.errors import BfasegError
from bfaseg.evaluation.evaluate import progress_iter
from bfaseg.evaluation.scoring import case_row, score_case, summary_metrics
from bfaseg.inference.predictor import Predictor
from bfaseg.io.files import jsonable, write_json_atomic
from bfaseg.io.geometry import array_geometry, restore_geometry
from bfaseg.io.h5 import H5_SUFFIXES, read_h5, read_h5_image, write_h5_atomic
from bfaseg.io.labels import check_label_array
from bfaseg.io.nifti import NIFTI_SUFFIXES, read_nifti_label_raw, read_source_label
from bfaseg.io.nifti_write import save_nifti_mask, save_probabilities
from bfaseg.io.output import check_output_dir, remove_stale_temporaries, staged_outputs

__all__ = ["collect_inputs", "predict_files"]

log = logging.getLogger(__name__)


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


def _read_h5(path: Path) -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...] | None]:
    image, label, spacing = read_h5_image(path)
    if image.ndim not in (2, 3):
        raise BfasegError(f"{path}: 'image' must be 2-D or 3-D, got shape {image.shape}")
    return image, label, spacing


def _find_label(labels_dir: Path, case_id: str) -> Path | None:
    for name in (f"{case_id}.nii.gz", f"{case_id}.nii", f"{case_id}.h5", f"{case_id}_gt.nii.gz"):
        p = labels_dir / name
        if p.is_file():
            return p
    return None


def _read_label_file(path: Path, num_classes: int, geometry=None):
    """``(label, spacing)`` checked as in training; the ``geometry`` of a NIfTI image adds its shape and affine."""
    if _strip(path.name, NIFTI_SUFFIXES) is not None:
        if geometry is not None:
            return read_source_label(path, geometry, num_classes), tuple(geometry.spacing)
        return read_nifti_label_raw(path, num_classes)
    arrays, spacing = read_h5(path, ("label",), required=("label",))
    return check_label_array(arrays["label"], path, num_classes), spacing


# ----------------------------------------------------------------------------- predicting a folder
def predict_files(
    predictor: Predictor,
    inputs: str | Path,
    output: str | Path,
    *,
    labels: str | Path | None = None,
    probabilities: bool = False,
    h5_format: str = "h5",
    policy: str = "strict",
    empty_class: str = "nan",
    quality=None,
    progress: bool = False,
) -> tuple[dict[str, Any], list[str]]:
    """Predict every input file of ``inputs`` (a file or a folder) into the folder ``output``;
    returns ``(summary, written files)``. ``labels``: a folder of reference labels, ``"input"`` or None.
    ``quality``: an optional monitor (``add(case_id, image, labels, xyz=...)``, ``write(folder)``), e.g.
    :class:`bfaseg.suggest.QualityMonitor`, whose file is written beside ``summary.json``.
    """
    input_files = collect_inputs(Path(inputs))
    source = Path(inputs)
    out_dir = check_output_dir(output, input_dir=source if source.is_dir() else None)  # not among the inputs
    remove_stale_temporaries(out_dir)  # left by an earlier predict killed with SIGKILL
    reference = None if labels is None else str(labels)  # `labels` below are the predicted ones
    labels_dir = None
    if reference is not None and reference != "input":
        labels_dir = Path(reference)
        if not labels_dir.is_dir():
            raise BfasegError(f"--labels: folder not found: {labels_dir}")
    warnings = list(predictor.warnings)  # options that changed nothing, said on the console too
    if h5_format != "h5" and not any(kind == "h5" for _, _, kind in input_files):
        warnings.append(f"--h5-format {h5_format}: applies to h5 inputs only; {source} holds none "
                        "(NIfTI inputs are always written as NIfTI)")
        log.warning(warnings[-1])
    cfg, ndim = predictor.cfg, predictor.ndim
    num_classes = cfg.model.num_classes
    downsample = cfg.data.downsample if ndim == 3 else 1.0
    from bfaseg.data.nifti_dataset import inference_modality

    modality, declared_by = inference_modality(cfg.data.modality, predictor.state.get("data"))  # as training read

    def predict(image: np.ndarray, xyz: bool):
        return predictor.predict(image, xyz=xyz, downsample=downsample, probabilities=probabilities)

    def reference_label(case_id: str, path: Path, geometry):
        """``(label, spacing)`` from --labels DIR, checked as in training BEFORE the case's outputs are written."""
        if labels_dir is None:
            return None, None
        lab_path = _find_label(labels_dir, case_id)
        if lab_path is None:
            raise BfasegError(f"--labels: no label for case {case_id!r} in {labels_dir} "
                              f"({case_id}.nii.gz, {case_id}.nii or {case_id}.h5)")
        return _read_label_file(lab_path, num_classes, geometry)

    rows, results, written = [], [], []
    settings: dict[str, Any] = {}
    units = None
    final_dir = out_dir
    # every output goes to a staging folder first and moves into --output only when all inputs are done:
    # a failure on the second file leaves nothing of the first (all or nothing, io.output.staged_outputs)
    with staged_outputs(final_dir) as out_dir:
        for case_id, path, kind in progress_iter(input_files, "predict", progress):
            t0 = time.perf_counter()
            gt = gt_spacing = None
            if kind == "nifti":
                case = load_nifti_image(path, cfg.data.target_spacing, modality, case_id=case_id,
                                        declared_by=declared_by)
                gt, gt_spacing = reference_label(case_id, path, case.geometry)
                if reference == "input":
                    raise BfasegError(f"--labels input: {path} is not an h5 file with a 'label' dataset")
                labels, probs, settings = predict(case.image, xyz=True)
                out = save_nifti_mask(labels, case.geometry, out_dir / f"{case_id}.nii.gz")
                written.append(str(out))
                if probs is not None:
                    written.append(str(save_probabilities(probs, case.geometry, out_dir / f"{case_id}_probs.nii.gz")))
                if labels_dir is not None:
                    pred = restore_geometry(labels, case.geometry, order=0)
                    spacing = tuple(case.geometry.spacing)
            else:
                image, inline_label, spacing = _read_h5(path)
                if reference == "input":  # checked before anything is written
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
                if h5_format == "nifti":
                    if labels.ndim != 3:
                        raise BfasegError(f"{path}: --h5-format nifti needs 3-D volumes")
                    geometry = array_geometry(labels.shape, spacing, path)
                    written.append(str(save_nifti_mask(labels, geometry, out_dir / f"{case_id}.nii.gz")))
                    if probs is not None:
                        written.append(str(save_probabilities(probs, geometry, out_dir / f"{case_id}_probs.nii.gz")))
                else:
                    out = out_dir / f"{case_id}_pred.h5"
                    write_h5_atomic(out, {"label": labels.astype(np.uint8), "probabilities": None if probs is None else probs.astype(np.float32)},
                                    {"spacing": spacing, "source": str(path)}, compression="gzip")
                    written.append(str(out))
                pred = labels
            if quality:
                quality.add(case_id, case.image if kind == "nifti" else image, labels, xyz=kind == "nifti")
            if reference is not None:
                gt = check_label_array(gt, f"of case {case_id!r} (--labels)", num_classes, shape=pred.shape)
                result = score_case(pred, gt.astype(np.int32), num_classes, spacing, policy, empty_class)
                units = result["units"]
                results.append(result)
                row = case_row(case_id, result)
            else:
                row = {"case": case_id}
            row.update(input=str(path), seconds=round(time.perf_counter() - t0, 3))
            rows.append(row)

        written = [str(final_dir / Path(w).name) for w in written]  # where they are once moved in
        doc: dict[str, Any] = {
            "n_cases": len(rows),
            "per_case": rows,
            "outputs": written,
            **predictor.describe(settings),
            "input": str(Path(inputs)),
            "warnings": warnings,
        }
        if results:
            units_note = "mm (NIfTI header / h5 spacing)" if units == "mm" else "voxel"
            doc.update(summary_metrics(results, policy, units, empty_class), units_source=units_note)
        if quality:
            written.append(str(final_dir / Path(quality.write(out_dir)).name))
        write_json_atomic(out_dir / "summary.json", jsonable(doc))
    return doc, written
