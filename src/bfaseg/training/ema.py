"""Exponential moving average of the student's weights (the mean teacher)."""

from __future__ import annotations

import torch
from torch import nn


def ema_decay(iteration: int, decay: float) -> float:
    """Warm-up of the reference code: min(1 - 1/(t + 1), decay)."""
    return min(1.0 - 1.0 / (iteration + 1), decay)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher = decay * teacher + (1 - decay) * student, for parameters (fused foreach lerp);
    BatchNorm running statistics are averaged the same way, counters copied."""
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    torch._foreach_lerp_(t_params, s_params, 1.0 - decay)
    t_float, s_float = [], []
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        if tb.dtype.is_floating_point:
            t_float.append(tb)
            s_float.append(sb)
        else:
            tb.copy_(sb)
    if t_float:
        torch._foreach_lerp_(t_float, s_float, 1.0 - decay)
