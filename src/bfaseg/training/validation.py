"""Validation during training: predict the validation cases, score Dice per class.

Dice comes from :func:`bfaseg.metrics.compute_overlap` and its mean from :func:`bfaseg.metrics.aggregate`,
so validation scores exactly as ``bfaseg evaluate`` does under its defaults (``policy="strict"``,
``empty_class="nan"``): a class absent from both the prediction and the label (ACDC's apical and basal
slices) is NaN and left out of the means, a class absent from one side only scores 0.
"""

from __future__ import annotations

import math

import torch

from bfaseg.data.cases import Case
from bfaseg.inference.predictor import Predictor
from bfaseg.metrics import aggregate, compute_overlap


def summarize(results: list[dict], num_classes: int) -> dict:
    """``{"dice", "dice_per_class", "n_cases", "n_both_empty"}`` of :func:`compute_overlap` results.

    ``dice_per_class[k-1]`` is class k's mean over the cases where it is defined; ``dice`` the mean of
    the defined class means (the ACDC protocol, :func:`bfaseg.metrics.aggregate`). A class absent from
    every case on both sides is NaN, and so is ``dice`` when every class is (or there are no cases): the
    trainer's ``dice > best`` is then False, so a NaN never becomes the best checkpoint, and the
    curves (reporting, TensorBoard) skip it. A validation set with nothing to score selects nothing
    rather than crowning whichever checkpoint came first.
    """
    if not results:
        return {"dice": math.nan, "dice_per_class": [math.nan] * (num_classes - 1), "n_cases": 0, "n_both_empty": 0}
    agg = aggregate(results, metrics=("dice",))
    per_class = [agg["dice"]["per_class"][c]["mean"] for c in range(1, num_classes)]
    return {"dice": agg["dice"]["mean"], "dice_per_class": per_class, "n_cases": agg["n_cases"],
            "n_both_empty": agg["n_both_empty"]}


@torch.no_grad()
def validate(model, cases: list[Case], *, cfg, train_ndim: int, precision: str, device) -> dict:
    """Mean Dice over the validation cases (:func:`summarize`), predicted through the same
    :class:`Predictor` as ``bfaseg evaluate`` with the run's ``eval`` settings."""
    predictor = Predictor.for_validation(model, cfg, ndim=train_ndim, precision=precision, device=device)
    was_training = model.training
    model.eval()
    results = []
    try:
        for case in cases[: cfg.eval.max_cases or None]:
            labels, _, _ = predictor.predict(case.image)
            results.append(compute_overlap(labels, case.label, classes=cfg.model.num_classes - 1))
    finally:
        model.train(was_training)
    return summarize(results, cfg.model.num_classes)
