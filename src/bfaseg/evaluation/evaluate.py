"""Evaluating a checkpoint on a labeled split: read each case as in training, predict it with a
:class:`~bfaseg.inference.predictor.Predictor`, score it, write ``summary.json``.

Cases are read in the benchmark layouts (LA / Pancreas h5 volumes, ACDC 3-D volumes
``data/<case>.h5``, or an nnU-Net NIfTI folder with ``dataset="nifti"``):

* LA / Pancreas: the run's ``data.downsample`` is applied to the image AND the label, so a
  model trained at half resolution is scored at half resolution (metrics in DOWNSAMPLED
  voxels; with ``spacing="auto"`` the h5 spacing is scaled by the factor).
* ACDC: 2-D networks predict each slice of the (Z, Y, X) volume resized to the run's patch size.
* NIfTI: the prediction is mapped back to the source grid and scored against the label file there.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bfaseg.errors import BfasegError
from bfaseg.evaluation.scoring import case_row, score_case, summary_metrics
from bfaseg.inference.predictor import Predictor
from bfaseg.io.files import write_json_atomic
from bfaseg.io.geometry import restore_geometry
from bfaseg.io.nifti import find_nifti, read_source_label
from bfaseg.io.output import check_output_dir

log = logging.getLogger(__name__)

DATASETS = ("la", "pancreas", "acdc", "nifti")


def progress_iter(items, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="case", dynamic_ncols=True, file=sys.stderr)


def resolve_split(root: Path, split: str) -> Path:
    cand = root / split
    if cand.is_file():
        return cand
    p = Path(split)
    if p.is_file():
        return p
    raise BfasegError(f"--split: list file not found: {cand}" + ("" if p.is_absolute() else f" (nor {p.resolve()})"))


def training_ids(cfg, root: Path, data_state: dict | None = None) -> tuple[set[str], str | None]:
    """Ids the run trained on (labeled + unlabeled), as volume ids; and the training list's name.

    From the ids stored in the checkpoint (``data_state["train_ids"]``); checkpoints written before
    they were stored get the split recomputed by the function training uses.
    """
    from bfaseg.data.build import benchmark_split_ids
    from bfaseg.data.readers import DEFAULT_LISTS

    dataset = cfg.data.dataset
    if dataset not in DEFAULT_LISTS:
        return set(), None
    name = cfg.data.train_list or DEFAULT_LISTS[dataset][0]
    ids = (data_state or {}).get("train_ids")
    if ids is None:
        try:
            labeled, unlabeled, _, _ = benchmark_split_ids(cfg.data, root)
        except BfasegError:  # the run's lists are not under this root: nothing to compare against
            return set(), name
        ids = labeled + unlabeled
    if dataset == "acdc":  # slices patientXXX_frameYY_slice_K -> volumes patientXXX_frameYY
        ids = [re.sub(r"_slice_\d+$", "", i) for i in ids]
    return set(ids), name


def evaluate_split(
    predictor: Predictor,
    root: str | Path,
    split: str,
    *,
    dataset: str | None = None,
    spacing: tuple[float, ...] | str | None = None,
    policy: str = "strict",
    empty_class: str = "nan",
    max_cases: int | None = None,
    output: str | Path | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], Path]:
    """Score ``predictor`` on the cases of the list ``split`` under ``root``; returns ``(summary, path)``.

    ``spacing``: None (distances in voxels), ``"auto"`` (h5 ``spacing`` / NIfTI header) or a tuple.
    ``output``: the folder of ``summary.json`` (default ``<run>/eval_<split>_<mode>``).
    """
    import torch

    from bfaseg.data.readers import load_cases, read_list
    from bfaseg.data.transforms import downsample_case_arrays

    root = Path(root)
    if not root.is_dir():
        raise BfasegError(f"--data: folder not found: {root}")
    split_path = resolve_split(root, split)
    ids = read_list(split_path)
    if max_cases is not None:
        if max_cases < 1:
            raise BfasegError("--max-cases: must be at least 1")
        ids = ids[:max_cases]
    cfg = predictor.cfg
    dataset = dataset or cfg.data.dataset
    if dataset not in DATASETS:
        raise BfasegError(f"--dataset: the checkpoint was trained on {dataset!r} data; pass --dataset "
                          f"({', '.join(DATASETS)}) to say how {root} is laid out")
    ndim = predictor.ndim
    num_classes = cfg.model.num_classes
    downsample = cfg.data.downsample if dataset in ("la", "pancreas") else 1.0

    warn: list[str] = list(predictor.warnings)  # options that changed nothing, said on the console too
    train_set, train_name = training_ids(cfg, root, predictor.state.get("data"))
    overlap_ids = [i for i in ids if i in train_set]
    if overlap_ids:
        msg = (f"{len(overlap_ids)} of the {len(ids)} cases of {split_path.name} were in the run's training list "
               f"({train_name}); these scores are not held-out")
        if set(ids) == train_set:
            msg = (f"the split {split_path.name} is the run's training list ({train_name}); "
                   f"these scores are not held-out")
        warn.append(msg)
        log.warning(msg)

    if output is None:
        output = predictor.checkpoint.resolve().parent.parent / f"eval_{split_path.stem}_{predictor.mode}"
    output = check_output_dir(output)  # before any case is predicted
    if dataset == "nifti":  # the images are read as training read its own
        from bfaseg.data.nifti_dataset import inference_modality

        modality, declared_by = inference_modality(cfg.data.modality, predictor.state.get("data"), root)
    rows, results, times = [], [], []
    units = "voxel"
    settings: dict[str, Any] = {}
    for case_id in progress_iter(ids, f"evaluate {split_path.name}", progress):
        t0 = time.perf_counter()
        if dataset == "nifti":
            from bfaseg.data.nifti import load_nifti_image

            img_path = find_nifti(root / "imagesTr", case_id, True) or find_nifti(root / "imagesTs", case_id, True)
            if img_path is None:
                raise BfasegError(f"case {case_id!r}: no image {case_id}_0000.nii.gz or {case_id}.nii.gz in "
                                  f"{root / 'imagesTr'} or {root / 'imagesTs'}")
            lab_path = find_nifti(root / "labelsTr", case_id, False) or find_nifti(root / "labelsTs", case_id, False)
            if lab_path is None:
                raise BfasegError(f"case {case_id!r}: no label {case_id}.nii.gz in {root / 'labelsTr'}")
            case = load_nifti_image(img_path, cfg.data.target_spacing, modality, case_id=case_id,
                                    declared_by=declared_by)
            gt = read_source_label(lab_path, case.geometry, num_classes)  # as training: shape, affine, values
            zooms = tuple(case.geometry.spacing)
            labels, _, settings = predictor.predict(case.image, xyz=True, downsample=cfg.data.downsample)
            pred = restore_geometry(labels, case.geometry, order=0)
            if pred.shape != gt.shape:
                raise BfasegError(f"label {lab_path}: shape {gt.shape} differs from image {img_path} {pred.shape}")
            case_spacing = zooms if spacing == "auto" else spacing
        else:
            case = load_cases(dataset, root, [case_id], kind="eval", need_label=True, num_classes=num_classes)[0]
            image, gt = case.image, case.label
            if ndim == 3 and image.ndim != 3:
                raise BfasegError(f"case {case_id!r}: a 3-D network needs 3-D volumes, got shape {image.shape}")
            orig_shape = image.shape
            if downsample != 1:
                image, gt = downsample_case_arrays(image, gt, downsample)
            pred, _, settings = predictor.predict(image)
            if spacing == "auto":
                if case.spacing is None:
                    raise BfasegError(f"--spacing auto: case {case_id!r} has no 'spacing' attribute in its h5 file; "
                                      f"give --spacing SX SY SZ")
                case_spacing = tuple(s * o / n for s, o, n in zip(case.spacing, orig_shape, image.shape))
            else:
                case_spacing = spacing
        result = score_case(pred, gt, num_classes, case_spacing, policy, empty_class)
        units = result["units"]
        results.append(result)
        row = case_row(case_id, result)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        if case_spacing is not None:
            row["spacing"] = [float(s) for s in case_spacing]
        rows.append(row)
        times.append(row["seconds"])

    resolution = None
    if downsample != 1:
        resolution = (f"images and labels downsampled x{downsample:g} as in training "
                      f"(data.downsample); metrics are in downsampled voxels")
    elif dataset == "nifti":
        resolution = "prediction mapped back to the source NIfTI grid; metrics in the label file's geometry"
    doc = {
        **summary_metrics(results, policy, units, empty_class),
        "per_case": rows,
        "spacing": "auto" if spacing == "auto" else (list(spacing) if spacing else None),
        "resolution": resolution,
        "downsample": downsample,
        "classes": list(range(1, num_classes)),
        **predictor.describe(settings),
        "split": {"list": str(split_path), "name": split_path.name, "dataset": dataset, "root": str(root),
                  "n_cases": len(ids), "ids": ids},
        "warnings": warn,
        "seconds_per_case": float(np.mean(times)) if times else None,
        "torch": torch.__version__,
    }
    output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output / "summary.json", doc)
    return doc, output / "summary.json"


def metric_row(case_id: str, result: dict) -> dict[str, Any]:
    """One case's row: ``<metric>`` (mean over the classes with a value) and ``<metric>_<class>``, ``None``
    where a metric is undefined (an empty prediction or reference)."""
    from bfaseg.metrics import METRICS

    row: dict[str, Any] = {"case": case_id}
    for m in METRICS:
        vals = result[m] if isinstance(result[m], dict) else {1: result[m]}
        finite = {c: float(v) for c, v in vals.items() if v is not None and np.isfinite(v)}
        for c in vals:
            row[f"{m}_{c}"] = finite.get(c)
        row[m] = float(np.mean(list(finite.values()))) if finite else None
    return row


def mean_of_rows(per_case: list[dict]) -> dict[str, float | None]:
    """Each key's mean over the cases that have a value."""
    mean = {}
    for key in per_case[0] if per_case else []:
        if key != "case":
            vals = [r[key] for r in per_case if r[key] is not None]
            mean[key] = float(np.mean(vals)) if vals else None
    return mean


def evaluate_cases(predictor: Predictor, cases, *, spacing=None, policy: str = "strict") -> dict[str, Any]:
    """Per-case and mean metrics of ``predictor`` on in-memory cases (already preprocessed as in
    training), classes 1..K-1; the rows of ``bfaseg experiment``'s ``results.json``.

    Row keys: ``case``, ``<metric>`` (mean over the classes with a value) and ``<metric>_<class>``;
    ``None`` where a metric is undefined (an empty prediction or reference).
    """
    k = predictor.cfg.model.num_classes
    per_case = []
    for case in cases:
        labels, _, _ = predictor.predict(case.image)
        per_case.append(metric_row(case.case_id, score_case(labels, case.label, k, spacing, policy)))
    mean = mean_of_rows(per_case)
    n_failed = sum(1 for r in per_case if r["hd95"] is None)
    return {"iteration": predictor.state.get("iteration"), "mean": mean, "per_case": per_case, "n_failed": n_failed,
            "inference": {"device": predictor.device, "precision": predictor.precision, "mode": predictor.mode,
                          "weights": predictor.state.get("_loaded_weights")}}
