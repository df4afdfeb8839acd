"""Device and precision policy: where a network runs and in which floating-point format.

Training (``train.device``, ``train.precision``) and inference (``--device``, ``--precision``)
both ask this module, so ``auto`` means the same thing everywhere.
"""

from __future__ import annotations

import torch

from bfaseg.errors import BfasegError


def resolve_device(name: str | torch.device, option: str = "train.device") -> torch.device:
    """``auto``: CUDA when available, else the CPU; a clear error naming ``option`` for bad names."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BfasegError(f"{option}: unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BfasegError(f"{option}: {name!r} requested but no CUDA device is available")
    return device


def native_bf16_on_cpu() -> bool:
    """Whether this CPU runs bf16 matmul/convolution natively (AVX512-BF16 or AMX via oneDNN)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_is_fast(device: str | torch.device) -> bool:
    """bf16 autocast pays off on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX).

    Without it (e.g. AVX2-only CPUs) oneDNN emulates bf16 and a V-Net forward pass is
    ~20x SLOWER than fp32, so ``auto`` precision picks fp32 there.
    """
    return torch.device(device).type == "cuda" or native_bf16_on_cpu()


def resolve_precision(requested: str | None, mode: str, device: str | torch.device) -> str:
    """``fp32``/``bf16`` as requested; ``None``/``auto``: paper -> fp32 (the reference),
    fast -> bf16 where it is fast (:func:`bf16_is_fast`), else fp32."""
    if requested in ("fp32", "bf16"):
        return requested
    if requested not in (None, "auto"):
        raise BfasegError(f"--precision: expected fp32, bf16 or auto, got {requested!r}")
    return "bf16" if mode == "fast" and bf16_is_fast(device) else "fp32"
