"""What a semi-supervised method is: one ``training_step`` on the shared trainer.

A method receives the trainer (student, teacher, precision, helpers) and a
two-stream batch (``image_l``, ``label_l``, ``image_u``), and returns the loss and
a dict of its loss terms (tensors; logged without a host sync per step).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict


class MethodParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Method:
    name = "base"
    needs_teacher = False
    uses_unlabeled = False
    may_leave_parameters_unused = False  # tells DDP to look for unused parameters
    # how the EMA teacher predicts when train.teacher_mode is not set: "eval" (BatchNorm running statistics,
    # no dropout) or "train" (batch statistics, dropout); the trainer resolves it once (resolve_teacher_mode)
    teacher_mode = "eval"
    Params = MethodParams

    def __init__(self, params: MethodParams, trainer: Any):
        # trainer: the shared bfaseg.training.trainer.Trainer; not imported, as training sits above methods
        self.p = params
        self.t = trainer

    # hooks ---------------------------------------------------------------
    def configure_model(self, model: torch.nn.Module) -> None:
        """Add method-specific modules (e.g. BFA's boundary head) before the teacher is copied."""

    @classmethod
    def restore_modules(cls, model: torch.nn.Module, cfg: Any, weights: dict[str, torch.Tensor]) -> None:
        """Loading for inference: re-add what ``configure_model`` added, shaped to fit the saved ``weights``.

        ``cfg`` is the run's config (``RunConfig``); raises ``ValueError`` when the weights cannot fit.
        """

    def on_iteration_start(self, iteration: int) -> None:
        pass

    def ema_active(self, iteration: int) -> bool:
        return True

    def teacher_decay(self, configured: float) -> float:
        """The teacher's EMA decay: ``train.ema_decay`` unless the method sets its own."""
        return configured

    def training_step(self, batch: dict[str, torch.Tensor], iteration: int) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # shared helpers ---------------------------------------------------------
    def fraction_to_iterations(self, value: float) -> int:
        """Config values <= 1 are fractions of the run; larger values are iteration counts."""
        return int(round(value * self.t.total_iterations)) if value <= 1 else int(value)

    @classmethod
    def images_per_step(cls, params: MethodParams, batch_labeled: int, batch_unlabeled: int) -> dict[str, int]:
        """Images one training step forwards through the student and the teacher (the compute a
        comparison must state). Methods with a pre-training phase add ``*_pretrain`` counts."""
        return {"student": batch_labeled, "teacher": 0}

    def student(self, x: torch.Tensor, return_extras: bool = False):
        return self.t.forward_model(x, return_extras=return_extras)


def sigmoid_rampup(iteration: int, length: int) -> float:
    """exp(-5 (1 - t)^2), t = iteration / length clipped to [0, 1] (Laine & Aila)."""
    if length <= 0:
        return 1.0
    t = min(max(iteration / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def noisy(x: torch.Tensor, sigma: float, clip: float) -> torch.Tensor:
    """The teacher-input noise of the reference code: N(0, sigma) clipped to +-clip."""
    return x + torch.clamp(torch.randn_like(x) * sigma, -clip, clip)


def cuboid_mask(
    shape: tuple[int, ...], batch: int, fraction: float, device, same_for_batch: bool = False
) -> torch.Tensor:
    """Boxes of ``fraction`` of each side (rounded down, as the reference's ``int(s * ratio)``) at a random
    offset, one per sample (or one for the whole batch, as the BCP reference's): 1 inside, 0 outside."""
    mask = torch.zeros((batch, *shape), device=device)
    for n in range(1 if same_for_batch else batch):
        sl = [slice(None) if same_for_batch else n]
        for s in shape:
            size = max(1, int(s * fraction))
            start = int(torch.randint(0, s - size + 1, (1,)))
            sl.append(slice(start, start + size))
        mask[tuple(sl)] = 1.0
    return mask


def paste(outer: torch.Tensor, inner: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``inner`` inside the box, ``outer`` elsewhere; mask is (N, *spatial), inputs (N, [C,] *spatial)."""
    m = mask if mask.ndim == outer.ndim else mask.unsqueeze(1)
    m = m.to(outer.dtype) if outer.is_floating_point() else m.bool()
    if outer.is_floating_point():
        return outer * (1 - m) + inner * m
    return torch.where(m, inner, outer)


def split_pairs(n_labeled: int, n_unlabeled: int) -> tuple[slice, slice]:
    """Halves used for the two copy-paste directions (BCP's a/b split); one sample serves both if alone."""
    n = min(n_labeled, n_unlabeled)
    h = max(1, n // 2)
    return slice(0, h), (slice(h, 2 * h) if n >= 2 else slice(0, 1))
