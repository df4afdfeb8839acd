"""Validation during training: predict the validation cases, score Dice per class."""

from __future__ import annotations

import numpy as np
import torch

from bfaseg.data.cases import Case


def dice_per_class(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> list[float]:
    """Dice of classes 1..K-1; both empty counts as 1 (no false positive), one empty as 0."""
    out = []
    for k in range(1, num_classes):
        p, g = pred == k, gt == k
        denom = p.sum() + g.sum()
        out.append(1.0 if denom == 0 else float(2 * np.logical_and(p, g).sum() / denom))
    return out


def predict_case(
    model: torch.nn.Module,
    image: np.ndarray,
    *,
    train_ndim: int,
    patch_size: tuple[int, ...],
    num_classes: int,
    eval_cfg,
    precision: str = "fp32",
    device: str = "cpu",
    return_probs: bool = False,
):
    """Label map (uint8, same shape as ``image``) from a 2-D (slice-wise) or 3-D (sliding window) model.

    Returns ``(labels, probs or None)``.
    """
    from bfaseg.inference import largest_connected_component, predict_slices, predict_volume

    prec = "bf16" if precision == "bf16" else "fp32"
    if train_ndim == 2:
        labels, probs = predict_slices(
            image, model, input_size=tuple(patch_size), batch_size=16, precision=prec, device=device,
            return_probs=return_probs, num_classes=num_classes,
        )
    else:
        kw = dict(mode=eval_cfg.mode, precision=prec, device=device, num_classes=num_classes)
        if eval_cfg.mode == "paper":
            kw["stride"] = eval_cfg.stride or [max(1, p // 4) for p in patch_size]
        else:
            kw.update(overlap=eval_cfg.overlap, batch_size=eval_cfg.batch_size)
        labels, probs = predict_volume(image, model, tuple(patch_size), return_probs=return_probs, **kw)
    if eval_cfg.largest_component:
        labels = largest_connected_component(labels)
    return labels, probs


@torch.no_grad()
def validate(model, cases: list[Case], *, train_ndim, patch_size, num_classes, eval_cfg, precision, device) -> dict:
    was_training = model.training
    model.eval()
    per_case = []
    try:
        for case in cases[: eval_cfg.max_cases or None]:
            labels, _ = predict_case(
                model, case.image, train_ndim=train_ndim, patch_size=patch_size, num_classes=num_classes,
                eval_cfg=eval_cfg, precision=precision, device=device,
            )
            per_case.append(dice_per_class(labels, case.label, num_classes))
    finally:
        model.train(was_training)
    arr = np.asarray(per_case, dtype=np.float64)
    per_class = arr.mean(0).tolist()
    return {"dice": float(np.mean(per_class)), "dice_per_class": per_class, "n_cases": len(per_case)}
