"""Sliding-window inference for 2-D and 3-D volumes, independent of the network.

A *model* here is any callable mapping a float32 batch ``(N, C, *patch)`` to logits
``(N, K, *patch)`` as a :class:`torch.Tensor`.  Networks that return a tuple or a dict
in some modes must be wrapped by the caller (e.g. ``lambda x: net(x)[0]``).  The model
is used as it is: put it on ``device`` and in ``eval()`` mode before calling.

Two modes share the same window grid (:func:`window_starts`):

``paper``
    The protocol of the public reference code (UA-MT / BCP ``test_single_case``):
    zero-pad only along axes where the volume is smaller than the patch (half before,
    the rest after), per axis ``ceil((D - P) / s) + 1`` windows with the last one flush
    with the edge, ONE window per forward pass, softmax averaged uniformly over the
    windows, argmax, crop back.  The stride must be given (LA: 18/18/4,
    Pancreas: 16/16/16).  With ``precision="fp32"`` the probabilities equal the
    reference's float32 numbers exactly (same summation order, same division).

``fast``
    The same padding and grid formula, but the stride defaults to
    ``round(patch * (1 - overlap))`` (half-up, at least 1), ``batch_size`` windows go
    through the model per forward pass, and windows are blended with a Gaussian
    importance map (sigma = patch / 8 per axis, as nnU-Net; maximum 1, strictly
    positive everywhere), so that voxels near window borders, where zero padding
    inside the network hurts most, count less.

Accumulation is always in float32 on ``device``; the optional ``bf16`` precision only
affects the forward pass (``torch.autocast``).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bfaseg.errors import BfasegError

Model = Callable[[torch.Tensor], torch.Tensor]

MODES = ("fast", "paper")
BLENDS = ("gaussian", "uniform")
PRECISIONS = ("fp32", "bf16")

__all__ = [
    "Model",
    "window_starts",
    "pad_amounts",
    "gaussian_importance_map",
    "sliding_window_probs",
    "predict_volume",
    "probs_to_labels",
    "autocast_context",
    "forward_logits",
]


# --------------------------------------------------------------------------- grid
def _check_positive_int(name: str, value) -> int:
    try:
        ivalue = int(value)
    except (TypeError, ValueError):
        raise BfasegError(f"{name} must be a positive integer, got {value!r}") from None
    if ivalue != value or ivalue < 1:
        raise BfasegError(f"{name} must be a positive integer, got {value!r}")
    return ivalue


def pad_amounts(size: int, patch: int) -> tuple[int, int]:
    """Zero padding ``(before, after)`` of one axis, as the reference code.

    Nothing when ``size >= patch``; otherwise ``pad = patch - size`` split as
    ``pad // 2`` before and ``pad - pad // 2`` after.
    """
    size = _check_positive_int("size", size)
    patch = _check_positive_int("patch", patch)
    pad = max(patch - size, 0)
    return pad // 2, pad - pad // 2


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Window start positions along one axis, in PADDED coordinates.

    The axis is first padded to ``D = max(size, patch)`` (see :func:`pad_amounts`);
    then there are ``ceil((D - P) / s) + 1`` windows starting at
    ``min(s * i, D - P)``, so the last window is flush with the edge.  Positions are
    strictly increasing (no duplicate windows).
    """
    size = _check_positive_int("size", size)
    patch = _check_positive_int("patch", patch)
    stride = _check_positive_int("stride", stride)
    padded = max(size, patch)
    span = padded - patch
    n = -(-span // stride) + 1  # integer ceil(span / stride) + 1
    return [min(stride * i, span) for i in range(n)]


def _per_axis(value, ndim: int, name: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        values = (int(value),) * ndim
    else:
        values = tuple(value)
        if len(values) != ndim:
            raise BfasegError(f"{name} must have {ndim} entries (one per spatial axis), got {value!r}")
    return tuple(_check_positive_int(name, v) for v in values)


def _fast_stride(patch: Sequence[int], overlap: float) -> tuple[int, ...]:
    if not 0.0 <= float(overlap) < 1.0:
        raise BfasegError(f"overlap must be in [0, 1), got {overlap!r}")
    return tuple(max(1, int(math.floor(p * (1.0 - overlap) + 0.5))) for p in patch)


# ------------------------------------------------------------------- weighting
def gaussian_importance_map(
    patch_size: Sequence[int],
    sigma_scale: float = 1.0 / 8.0,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Separable Gaussian weights of shape ``patch_size`` (float32).

    Centred on the patch centre ``(P - 1) / 2`` (symmetric under flips), sigma
    ``P * sigma_scale`` per axis, scaled to a maximum of 1; any value that underflows
    to zero is raised to the smallest positive weight, so every voxel is covered.
    """
    weight = None
    for p in patch_size:  # in float64, rounded to float32 once at the end
        coords = torch.arange(p, dtype=torch.float64) - (p - 1) / 2.0
        sigma = max(p * sigma_scale, 1e-6)
        axis_w = torch.exp(-0.5 * (coords / sigma) ** 2)
        weight = axis_w if weight is None else weight[..., None] * axis_w
    weight = (weight / weight.max()).to(torch.float32)  # the maximum is 1: some weight is positive
    return torch.clamp(weight, min=float(weight[weight > 0].min())).to(device)


# --------------------------------------------------------------------- forward
def autocast_context(precision: str, device: torch.device):
    """``torch.autocast`` in bfloat16 for ``"bf16"``, a no-op for ``"fp32"``."""
    if precision not in PRECISIONS:
        raise BfasegError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def forward_logits(model: Model, batch: torch.Tensor, precision: str, device: torch.device) -> torch.Tensor:
    """Run ``model`` on ``batch`` and return float32 logits, checking the output."""
    with autocast_context(precision, device):
        out = model(batch)
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"the model returned {type(out).__name__}, not a torch.Tensor; wrap it so that it "
            "returns the segmentation logits, e.g. `lambda x: net(x)[0]`"
        )
    if out.ndim != batch.ndim or out.shape[0] != batch.shape[0] or out.shape[2:] != batch.shape[2:]:
        raise ValueError(
            f"the model mapped an input of shape {tuple(batch.shape)} to {tuple(out.shape)}; "
            "expected (N, K, *same spatial shape)"
        )
    return out.float()


def _as_float_tensor(volume) -> torch.Tensor:
    if isinstance(volume, torch.Tensor):
        return volume.detach().to(torch.float32)
    return torch.from_numpy(np.ascontiguousarray(np.asarray(volume), dtype=np.float32))


# ---------------------------------------------------------------- main routine
def sliding_window_probs(
    volume: np.ndarray | torch.Tensor,
    model: Model,
    patch_size: int | Sequence[int],
    *,
    mode: str = "fast",
    stride: int | Sequence[int] | None = None,
    overlap: float = 0.5,
    batch_size: int | None = None,
    blend: str | None = None,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
) -> torch.Tensor:
    """Softmax probabilities ``(K, *spatial)`` (float32, on the CPU) of a whole volume.

    ``volume`` holds the spatial axes only, e.g. ``(X, Y, Z)`` or ``(Y, X)``; a volume
    with one more leading axis than ``patch_size`` is read as ``(C, *spatial)``.
    ``patch_size`` and ``stride`` are an int (all axes) or one value per axis.

    ``mode="paper"``: ``stride`` is required; ``batch_size`` defaults to (and must be) 1
    and ``blend`` to (and must be) ``"uniform"``.  ``mode="fast"``: ``stride`` defaults
    to ``round(patch * (1 - overlap))``, ``batch_size`` to 4 and ``blend`` to
    ``"gaussian"``.  ``num_classes``, when given, is checked against the model output.
    """
    if mode not in MODES:
        raise BfasegError(f"mode must be one of {MODES}, got {mode!r}")
    if precision not in PRECISIONS:
        raise BfasegError(f"precision must be one of {PRECISIONS}, got {precision!r}")

    x = _as_float_tensor(volume)
    if isinstance(patch_size, (int, np.integer)):
        patch_size = (int(patch_size),) * x.ndim
    nd = len(tuple(patch_size))
    if x.ndim == nd:
        x = x.unsqueeze(0)
    elif x.ndim != nd + 1:
        raise BfasegError(
            f"volume of shape {tuple(x.shape)} does not match a {nd}-D patch_size "
            f"{tuple(patch_size)}: give (*spatial) or (C, *spatial)"
        )
    patch = _per_axis(patch_size, nd, "patch_size")
    spatial = tuple(int(s) for s in x.shape[1:])
    if min(spatial) < 1:
        raise BfasegError(f"volume has an empty axis: shape {tuple(x.shape)}")

    if mode == "paper":
        if stride is None:
            raise BfasegError("mode='paper' needs an explicit stride (LA: (18, 18, 4), Pancreas: 16)")
        if batch_size not in (None, 1):
            raise BfasegError(f"mode='paper' runs one window per forward pass; got batch_size={batch_size}")
        if blend not in (None, "uniform"):
            raise BfasegError(f"mode='paper' averages windows uniformly; got blend={blend!r}")
        batch_size, blend = 1, "uniform"
    else:
        batch_size = 4 if batch_size is None else batch_size
        blend = "gaussian" if blend is None else blend
        if blend not in BLENDS:
            raise BfasegError(f"blend must be one of {BLENDS}, got {blend!r}")
        if stride is None:
            stride = _fast_stride(patch, overlap)
    strides = _per_axis(stride, nd, "stride")
    batch_size = _check_positive_int("batch_size", batch_size)
    if num_classes is not None:
        num_classes = _check_positive_int("num_classes", num_classes)

    dev = torch.device(device)
    pads = [pad_amounts(s, p) for s, p in zip(spatial, patch)]
    starts = [window_starts(s, p, st) for s, p, st in zip(spatial, patch, strides)]
    # x outermost, last axis innermost: the reference's loop order (and summation order).
    positions = list(itertools.product(*starts))

    with torch.inference_mode():
        xd = x.to(dev)
        if any(b or a for b, a in pads):
            flat: list[int] = []
            for before, after in reversed(pads):  # F.pad lists the last axis first
                flat += [before, after]
            xd = F.pad(xd, flat)  # zeros, as the reference
        padded_shape = tuple(int(s) for s in xd.shape[1:])
        weight = gaussian_importance_map(patch, device=dev) if blend == "gaussian" else None
        norm = xd.new_zeros(padded_shape)  # float32, on the device
        acc: torch.Tensor | None = None

        for i0 in range(0, len(positions), batch_size):
            chunk = positions[i0 : i0 + batch_size]
            windows = [tuple(slice(s, s + p) for s, p in zip(st, patch)) for st in chunk]
            batch = torch.stack([xd[(slice(None),) + w] for w in windows]).contiguous()
            probs = torch.softmax(forward_logits(model, batch, precision, dev), dim=1)
            if acc is None:
                k = int(probs.shape[1])
                if num_classes is not None and k != num_classes:
                    raise ValueError(f"the model produced {k} classes, expected num_classes={num_classes}")
                acc = xd.new_zeros((k,) + padded_shape)
            for j, w in enumerate(windows):
                if weight is None:
                    acc[(slice(None),) + w] += probs[j]
                    norm[w] += 1.0
                else:
                    acc[(slice(None),) + w] += probs[j] * weight
                    norm[w] += weight

        assert acc is not None  # there is always at least one window
        acc = acc / norm.unsqueeze(0)
        crop = tuple(slice(b, b + s) for (b, _), s in zip(pads, spatial))
        out = acc[(slice(None),) + crop].cpu()
    # Clone outside inference mode: callers get an ordinary tensor they may modify.
    return out.clone()


def probs_to_labels(probs: torch.Tensor | np.ndarray) -> np.ndarray:
    """Argmax over the class axis 0 as uint8 (ties: the lowest class, as ``np.argmax``)."""
    arr = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    if arr.shape[0] > 256:
        raise ValueError(f"{arr.shape[0]} classes do not fit a uint8 label map")
    return np.argmax(arr, axis=0).astype(np.uint8)


def predict_volume(
    volume: np.ndarray | torch.Tensor,
    model: Model,
    patch_size: int | Sequence[int],
    *,
    return_probs: bool = False,
    **kwargs,
) -> tuple[np.ndarray, torch.Tensor | None]:
    """Label map of a volume by sliding-window inference.

    Returns ``(labels, probs)``: ``labels`` is the uint8 argmax ``(*spatial)`` numpy
    array, ``probs`` the ``(K, *spatial)`` float32 tensor when ``return_probs`` is true,
    else ``None``.  Keyword arguments go to :func:`sliding_window_probs`.
    """
    probs = sliding_window_probs(volume, model, patch_size, **kwargs)
    labels = probs_to_labels(probs)
    return labels, (probs if return_probs else None)
