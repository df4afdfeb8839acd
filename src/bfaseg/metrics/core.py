"""Segmentation metrics per case, with an explicit empty-mask policy, and their aggregation.

Metrics (same numbers as medpy ``dc``, ``jc``, ``hd95``, ``asd``, ``assd``, ``hd``
to 1e-6 whenever both masks are non-empty; see :mod:`bfaseg.metrics.surface`):

* ``dice`` = 2|P&G| / (|P|+|G|), ``jaccard`` = |P&G| / |P|G|;
* ``hd95``: 95th percentile of the surface distances of both directions pooled;
* ``asd``: mean surface distance prediction -> reference (DIRECTED, as medpy ``asd``
  and as the papers report it);
* ``assd``: mean of the surface distances of both directions pooled (symmetric);
* ``hd``: Hausdorff distance (largest surface distance of either direction).

Distances are in the units of ``spacing`` (mm when the voxel size in mm is given),
in voxels when ``spacing`` is None (what the reference code reports).

Empty-mask policies (``policy=``). Each case gets a status: ``"ok"``,
``"both_empty"``, ``"pred_empty"`` or ``"gt_empty"``; the last two are *failed*
cases and are counted by :func:`aggregate` as ``n_failed``.

=============  ==========================  ====================================  ===============================
policy         both empty                  one of the two empty                  gt empty, prediction not
=============  ==========================  ====================================  ===============================
``"strict"``   dice 1, jaccard 1,          dice 0, jaccard 0, distances NaN      same as left
               distances 0                 (never a perfect 0)
``"worst"``    same as strict              dice 0, jaccard 0, distances = the    same as left
                                           image diagonal (worst case)
``"paper"``    all six 0 (reference code)  prediction empty: all six 0 -- the    dice 0, jaccard 0, distances NaN
                                           reference code's (0, 0, 0, 0), i.e.   (the reference code crashes)
                                           a PERFECT HD95/ASD; for comparison
                                           with published numbers only
=============  ==========================  ====================================  ===============================

Classes empty in BOTH masks (``empty_class=``). ``"nan"`` (the default, as nnU-Net): all
six metrics are NaN, so the class is left out of every mean, and :func:`aggregate` counts it
in ``n_both_empty``. ``"one"``: the old behaviour, scored by the table above (Dice 1 and
distances 0 under ``"strict"``/``"worst"``, the reference code's 0 under ``"paper"``), which
lifts a mean with classes that were never there.

The image diagonal of ``"worst"`` is ``sqrt(sum((n_i * s_i)**2))`` over the array
shape ``n`` and spacing ``s`` (1 per axis without spacing): no distance inside
the image can exceed it.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from bfaseg.metrics.surface import as_spacing, distance_metrics, surface_distances

METRICS = ("dice", "jaccard", "hd95", "asd", "assd", "hd")
DISTANCES = ("hd95", "asd", "assd", "hd")
POLICIES = ("strict", "worst", "paper")
EMPTY_CLASS_POLICIES = ("nan", "one")
EMPTY_CLASS_HELP = ("a class empty in BOTH masks: nan (default, as nnU-Net: all metrics NaN, left out of the "
                    "mean and counted as both_empty) or one (the old behaviour: Dice 1, distances 0, which "
                    "lifts the mean with classes that are not there)")
OK, BOTH_EMPTY, PRED_EMPTY, GT_EMPTY = "ok", "both_empty", "pred_empty", "gt_empty"
FAILED = (PRED_EMPTY, GT_EMPTY)


def _checked_inputs(pred, gt, policy: str, empty_class: str) -> tuple[np.ndarray, np.ndarray]:
    """``(pred, gt)`` as arrays of one shape, the two policies known; ValueError otherwise."""
    if policy not in POLICIES:
        raise ValueError(f"unknown empty-mask policy {policy!r}; choose from {', '.join(POLICIES)}")
    if empty_class not in EMPTY_CLASS_POLICIES:
        raise ValueError(f"unknown empty-class policy {empty_class!r}; choose from {', '.join(EMPTY_CLASS_POLICIES)}")
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs gt {gt.shape}")
    return pred, gt


def image_diagonal(shape: Sequence[int], spacing=None) -> float:
    """Length of the image diagonal, ``sqrt(sum((n_i * s_i)**2))``: the ``"worst"`` distance."""
    s = as_spacing(spacing, len(shape))
    s = np.ones(len(shape)) if s is None else s
    return float(math.sqrt(sum((n * si) ** 2 for n, si in zip(shape, s))))


def binary_metrics(pred, gt, spacing=None, policy: str = "strict", method: str = "fast",
                   empty_class: str = "nan") -> dict:
    """All six metrics of two binary masks (nonzero = object), plus ``"status"``.

    Returns ``{"dice", "jaccard", "hd95", "asd", "assd", "hd": float, "status": str}``.
    ``status`` is ``"ok"``, ``"both_empty"``, ``"pred_empty"`` or ``"gt_empty"``;
    what the metrics are for empty masks is set by ``policy`` (``"strict"``,
    ``"worst"`` or ``"paper"``, see the module docstring). ``spacing`` is the voxel
    size per axis (distances in its units), or None for voxel units.
    ``method`` (``"fast"`` or ``"edt"``) picks the surface-distance algorithm of
    :func:`bfaseg.metrics.surface.surface_distances`; both give the same numbers.
    ``empty_class`` (``"nan"`` or ``"one"``) scores masks empty in both (module docstring).
    """
    pred, gt = _checked_inputs(pred, gt, policy, empty_class)
    pred = pred.astype(bool, copy=False)
    gt = gt.astype(bool, copy=False)
    spacing = as_spacing(spacing, max(pred.ndim, 1))
    n_pred, n_gt, inter, status = _mask_counts(pred, gt)
    out = _overlap(n_pred, n_gt, inter, status, policy, empty_class)
    if status == OK:
        out.update(distance_metrics(*surface_distances(pred, gt, spacing, method=method)))
    elif status == BOTH_EMPTY and empty_class == "nan":
        out.update({k: math.nan for k in DISTANCES})
    elif policy == "paper" and not n_pred:
        # The reference code: ``if pred.sum() > 0: ... else: return 0, 0, 0, 0``.
        out.update({k: 0.0 for k in DISTANCES})
    elif status == BOTH_EMPTY:
        out.update({k: 0.0 for k in DISTANCES})
    else:
        worst = image_diagonal(pred.shape, spacing) if policy == "worst" else math.nan
        out.update({k: worst for k in DISTANCES})
    out["status"] = status
    return out


def _mask_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, str]:
    """``(|P|, |G|, |P & G|, status)`` of two boolean masks."""
    n_pred = int(np.count_nonzero(pred))
    n_gt = int(np.count_nonzero(gt))
    if n_pred and n_gt:
        return n_pred, n_gt, int(np.count_nonzero(pred & gt)), OK
    if not n_pred and not n_gt:
        return 0, 0, 0, BOTH_EMPTY
    return n_pred, n_gt, 0, PRED_EMPTY if not n_pred else GT_EMPTY


def _overlap(n_pred: int, n_gt: int, inter: int, status: str, policy: str, empty_class: str) -> dict:
    """``{"dice", "jaccard"}`` from the counts under the two policies: the one place they are scored."""
    if status == OK:
        return {"dice": 2.0 * inter / float(n_pred + n_gt), "jaccard": inter / float(n_pred + n_gt - inter)}
    if status == BOTH_EMPTY and empty_class == "nan":
        return {"dice": math.nan, "jaccard": math.nan}
    if policy == "paper" and not n_pred:
        return {"dice": 0.0, "jaccard": 0.0}
    if status == BOTH_EMPTY:
        return {"dice": 1.0, "jaccard": 1.0}
    return {"dice": 0.0, "jaccard": 0.0}


def _label_classes(pred: np.ndarray, gt: np.ndarray, classes) -> list[int] | None:
    """Classes to score, or None when both maps are binary and ``classes`` is None."""
    if classes is not None:
        if isinstance(classes, (int, np.integer)):
            if classes < 1:
                raise ValueError(f"classes must be >= 1, got {classes}")
            return list(range(1, int(classes) + 1))
        out = [int(c) for c in classes]
        if not out:
            raise ValueError("classes is empty")
        return out
    if pred.dtype == bool and gt.dtype == bool:
        return None
    for name, arr in (("pred", pred), ("gt", gt)):
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{name} must hold integer labels, got dtype {arr.dtype}")
        if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name} holds non-integer values; expected a label map")
    low = min(pred.min(), gt.min())
    if low < 0:
        raise ValueError(f"label maps must not hold negative labels (found {low})")
    top = int(max(pred.max(), gt.max()))
    return None if top <= 1 else list(range(1, top + 1))


def _per_label(pred: np.ndarray, gt: np.ndarray, classes, score) -> dict:
    """``score(pred, gt)`` of binary maps, else ``{key: {class: value}}`` of ``score`` per class."""
    label_list = _label_classes(pred, gt, classes)
    if label_list is None:
        return score(pred, gt)
    per_class = {c: score(pred == c, gt == c) for c in label_list}
    keys = per_class[label_list[0]]
    return {k: {c: r[k] for c, r in per_class.items()} for k in keys}


def compute_case(pred, gt, spacing=None, classes=None, policy: str = "strict", method: str = "fast",
                 empty_class: str = "nan") -> dict:
    """:func:`compute` plus bookkeeping: ``status``, ``policy``, ``units``, ``spacing``.

    ``status`` has the shape of the metrics (a string for binary inputs, else
    ``{class: str}``); see :func:`binary_metrics`. Pass these results to
    :func:`aggregate` for exact failure counts.
    """
    pred, gt = _checked_inputs(pred, gt, policy, empty_class)
    if pred.size == 0:
        raise ValueError("empty arrays (size 0)")
    spacing = as_spacing(spacing, pred.ndim)
    out = _per_label(pred, gt, classes, lambda p, g: binary_metrics(p, g, spacing, policy, method, empty_class))
    out["policy"] = policy
    out["empty_class"] = empty_class
    out["units"] = "voxel" if spacing is None else "mm"
    out["spacing"] = None if spacing is None else [float(s) for s in spacing]
    return out


def compute_overlap(pred, gt, classes=None, policy: str = "strict", empty_class: str = "nan") -> dict:
    """Dice and Jaccard only, without surface distances: ``{"dice", "jaccard", "status", "policy",
    "empty_class"}``, each value exactly as :func:`compute_case` gives it (same
    arguments, same policies: a class empty in both maps is NaN by default). For callers that need
    Dice fast, such as validation during training; aggregate a list of these with
    ``aggregate(results, metrics=("dice", "jaccard"))``.
    """
    pred, gt = _checked_inputs(pred, gt, policy, empty_class)
    if pred.size == 0:
        raise ValueError("empty arrays (size 0)")

    def score(p, g):
        n_pred, n_gt, inter, status = _mask_counts(p.astype(bool, copy=False), g.astype(bool, copy=False))
        return {**_overlap(n_pred, n_gt, inter, status, policy, empty_class), "status": status}

    return {**_per_label(pred, gt, classes, score), "policy": policy, "empty_class": empty_class}


def compute(pred, gt, spacing=None, classes=None, policy: str = "strict", empty_class: str = "nan") -> dict:
    """Dice, Jaccard, HD95, ASD, ASSD and HD of a prediction against a reference.

    ``pred``, ``gt``: 2-D or 3-D arrays of the same shape, binary masks or label
    maps (0 = background). ``spacing``: voxel size per axis (or one number);
    distances are then in its units (mm), else in voxels. ``classes``: None,
    an int K (score classes 1..K) or a list of class labels. ``policy``: the
    empty-mask policy, ``"strict"`` (default), ``"worst"`` or ``"paper"`` (see
    the module docstring). ``empty_class``: ``"nan"`` (default; a class empty in both
    maps is NaN, left out of means) or ``"one"`` (the old Dice 1 / distance 0).

    Returns exactly the keys ``dice, jaccard, hd95, asd, assd, hd``. For binary
    inputs (only labels 0/1 and ``classes`` None) each is a float; otherwise each
    is ``{class (int): float}`` for classes 1..K, K the largest label in either
    map (or ``classes``). Failed cases (one mask empty) hold NaN distances under
    ``"strict"``; use :func:`compute_case` to get the status as well.
    """
    result = compute_case(pred, gt, spacing, classes, policy, empty_class=empty_class)
    return {k: result[k] for k in METRICS}


def _stats(values: list[float]) -> dict:
    """Mean and population std (ddof=0) ignoring NaN, and ``n`` = the non-NaN count."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


def mean_over_classes(values, empty: float = math.nan) -> float:
    """Mean of per-class values (a ``{class: value}`` dict or a sequence) leaving NaN out: a class empty in
    both maps (``empty_class="nan"``) does not count. ``empty`` when no value is left (NaN by default)."""
    arr = np.asarray(list(values.values()) if isinstance(values, dict) else list(values), dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float(empty)


def _status_of(result: dict, cls=None) -> str:
    """Status of one result (or one class of it); inferred from NaN when absent."""
    status = result.get("status")
    if status is not None:
        return status if cls is None else status[cls]
    dice = result["dice"] if cls is None else result["dice"][cls]
    if isinstance(dice, float) and math.isnan(dice):
        return BOTH_EMPTY  # the "nan" empty-class policy
    values = [result[k] if cls is None else result[k][cls] for k in DISTANCES]
    return GT_EMPTY if any(isinstance(v, float) and math.isnan(v) for v in values) else OK


def aggregate(results: Iterable[dict], metrics: Sequence[str] = METRICS) -> dict:
    """Mean and std over cases of results of :func:`compute` or :func:`compute_case`
    (or of :func:`compute_overlap` with ``metrics=("dice", "jaccard")``: the metrics to aggregate).

    NaN values (failed cases under ``"strict"``) are left out of the means; ``n``
    says how many values each mean has. Returns::

        {metric: {"mean", "std", "n"}, ...,            # binary results
         "n_cases", "n_failed", "n_both_empty"}

    For per-class results each metric also has ``"per_class": {class: {"mean",
    "std", "n"}}``; its ``"mean"`` is the mean of the class means (the ACDC
    protocol) and its ``"std"`` the std over cases of each case's class mean.
    ``n_failed``/``n_both_empty`` count (case, class) pairs, with
    ``n_failed_per_class`` beside them. Failures are read from ``status``
    (:func:`compute_case`); for plain :func:`compute` results a NaN distance marks a
    failure (so failures under ``"worst"``/``"paper"`` need ``compute_case``).
    """
    results = list(results)
    if not results:
        raise ValueError("no results to aggregate")
    per_class = isinstance(results[0]["dice"], dict)
    if any(isinstance(r["dice"], dict) != per_class for r in results):
        raise ValueError("cannot aggregate binary and per-class results together")

    out: dict = {}
    if not per_class:
        for k in metrics:
            out[k] = _stats([r[k] for r in results])
        statuses = [_status_of(r) for r in results]
        out["n_cases"] = len(results)
        out["n_failed"] = sum(s in FAILED for s in statuses)
        out["n_both_empty"] = statuses.count(BOTH_EMPTY)
        return out

    classes = sorted({c for r in results for c in r["dice"]})
    for k in metrics:
        cls_stats = {c: _stats([r[k].get(c, math.nan) for r in results]) for c in classes}
        case_means = [mean_over_classes(r[k].get(c, math.nan) for c in classes) for r in results]
        out[k] = {
            "mean": mean_over_classes(s["mean"] for s in cls_stats.values()),
            "std": _stats(case_means)["std"],
            "per_class": cls_stats,
        }
    failed = {c: 0 for c in classes}
    both_empty = {c: 0 for c in classes}
    for r in results:
        for c in r["dice"]:
            s = _status_of(r, c)
            failed[c] += s in FAILED
            both_empty[c] += s == BOTH_EMPTY
    out["n_cases"] = len(results)
    out["n_failed"] = sum(failed.values())
    out["n_failed_per_class"] = failed
    out["n_both_empty"] = sum(both_empty.values())
    out["n_both_empty_per_class"] = both_empty
    return out
