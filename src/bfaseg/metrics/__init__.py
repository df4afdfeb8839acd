"""Segmentation metrics: Dice, Jaccard, HD95, ASD, ASSD, HD (medpy-compatible, fast).

Public API::

    compute(pred, gt, spacing=None, classes=None, policy="strict") -> dict
    compute_case(pred, gt, spacing=None, classes=None, policy="strict") -> dict  # + status
    compute_overlap(pred, gt, classes=None, policy="strict") -> dict  # Dice, Jaccard, status only (fast)
    binary_metrics(pred_bool, gt_bool, spacing=None, policy="strict") -> dict
    aggregate(list_of_results, metrics=METRICS) -> dict   # mean/std per metric (and class), n_failed
    mean_over_classes({class: value}, empty=nan) -> float  # the mean over classes, NaN left out
    surface_distances(pred_bool, gt_bool, spacing=None) -> (pred_to_gt, gt_to_pred)

Empty-mask policies: ``"strict"`` (default), ``"worst"``, ``"paper"``; see
:mod:`bfaseg.metrics.core`. A class empty in both masks is NaN and left
out of means (``empty_class="nan"``, as nnU-Net); ``empty_class="one"`` gives the old Dice 1.
"""

from bfaseg.metrics.core import (
    EMPTY_CLASS_HELP,
    EMPTY_CLASS_POLICIES,
    FAILED,
    METRICS,
    POLICIES,
    aggregate,
    binary_metrics,
    compute,
    compute_case,
    compute_overlap,
    image_diagonal,
    mean_over_classes,
)
from bfaseg.metrics.surface import distance_metrics, mask_surface, surface_distances

__all__ = [
    "EMPTY_CLASS_HELP",
    "EMPTY_CLASS_POLICIES",
    "FAILED",
    "METRICS",
    "POLICIES",
    "aggregate",
    "binary_metrics",
    "compute",
    "compute_case",
    "compute_overlap",
    "distance_metrics",
    "image_diagonal",
    "mask_surface",
    "mean_over_classes",
    "surface_distances",
]
