"""Validation during training: predict the validation cases, score Dice per class."""

from __future__ import annotations

import numpy as np
import torch

from bfaseg.data.cases import Case
from bfaseg.inference.predictor import Predictor


def dice_per_class(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> list[float]:
    """Dice of classes 1..K-1; both empty counts as 1 (no false positive), one empty as 0."""
    out = []
    for k in range(1, num_classes):
        p, g = pred == k, gt == k
        denom = p.sum() + g.sum()
        out.append(1.0 if denom == 0 else float(2 * np.logical_and(p, g).sum() / denom))
    return out


@torch.no_grad()
def validate(model, cases: list[Case], *, cfg, train_ndim: int, precision: str, device) -> dict:
    """Mean Dice over the validation cases, predicted through the same :class:`Predictor` as
    ``bfaseg evaluate`` with the run's ``eval`` settings."""
    predictor = Predictor.for_validation(model, cfg, ndim=train_ndim, precision=precision, device=device)
    was_training = model.training
    model.eval()
    per_case = []
    try:
        for case in cases[: cfg.eval.max_cases or None]:
            labels, _, _ = predictor.predict(case.image)
            per_case.append(dice_per_class(labels, case.label, cfg.model.num_classes))
    finally:
        model.train(was_training)
    arr = np.asarray(per_case, dtype=np.float64)
    per_class = arr.mean(0).tolist()
    return {"dice": float(np.mean(per_class)), "dice_per_class": per_class, "n_cases": len(per_case)}
