"""Where and in which precision a network runs: one policy for training and inference.

``auto`` picks bf16 where it is fast (CUDA, CPUs with native bf16: AVX512-BF16/AMX) and
right, fp32 elsewhere. "Right" is not a given on the CPU: with torch 2.13.0, oneDNN's bf16
Conv3d *weight gradient* is garbage (relative error 0.7 to inf, different from call to call)
for some small feature maps; seen on an AVX512-BF16 AMD EPYC whenever the first spatial axis
of the map is 2 (2x2x2, 2x16x16, 2x64x32, 2x1x8), and in the issue's table for 2x2x1
(``benchmarks/bf16_conv3d_check.py`` prints the table for the running CPU). A V-Net whose
patch runs into such a map diverges within a few steps. Forward passes (inference) and
Conv2d are unaffected.

So before a 3-D model trains in bf16 on the CPU, every encoder level's feature-map shape is
checked: against the shapes known to be wrong, and by a one-time numerical probe (one small
convolution's weight gradient, bf16 vs fp32, at that exact shape). ``auto`` then falls back
to fp32 with a one-line notice; an explicit ``bf16`` is refused with an error naming the
patch size and the safe minimum, unless ``train.force_precision`` is set.
"""

from __future__ import annotations

import functools
import logging
import warnings

import torch

from bfaseg.errors import BfasegError

log = logging.getLogger(__name__)

# relative error of a bf16 weight gradient against fp32 above which it is wrong (rounding gives ~0.004)
PROBE_TOLERANCE = 0.05
KERNEL = 3  # the V-Net's convolutions are 3x3x3


@functools.lru_cache(maxsize=1)
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
    """Inference precision: ``fp32``/``bf16`` as requested; ``None``/``auto``: paper -> fp32 (the
    reference), fast -> bf16 where it is fast (:func:`bf16_is_fast`), else fp32. (Forward passes
    are unaffected by the bf16 weight-gradient fault described above.)"""
    if requested in ("fp32", "bf16"):
        return requested
    if requested not in (None, "auto"):
        raise BfasegError(f"--precision: expected fp32, bf16 or auto, got {requested!r}")
    return "bf16" if mode == "fast" and bf16_is_fast(device) else "fp32"


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


def level_shapes(patch_size: tuple[int, ...], depth: int = 4) -> list[tuple[int, ...]]:
    """Feature-map shapes of an encoder with ``depth`` 2x downsamplings (stride-2, floor)."""
    shapes = [tuple(int(s) for s in patch_size)]
    for _ in range(depth):
        shapes.append(tuple(max(1, s // 2) for s in shapes[-1]))
    return shapes


def known_bad_conv3d_shape(shape: tuple[int, ...]) -> bool:
    """Map shapes measured to give wrong bf16 Conv3d weight gradients on a CPU (see module doc):
    first axis 2, whatever the others (2x2x2, 2x1x1, 2x64x32, ...). Other shapes are left to the probe."""
    return len(shape) == 3 and shape[0] == 2


@functools.lru_cache(maxsize=64)
def conv3d_bf16_grad_error(shape: tuple[int, ...], channels: int = 8, repeats: int = 2) -> float:
    """Worst relative error of a bf16-autocast Conv3d weight gradient against fp32 at ``shape``
    on the CPU (NaN/Inf count as infinite); cached per shape for the process."""
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv3d(channels, channels, KERNEL, padding=KERNEL // 2)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.1)
    x = torch.randn((1, channels, *shape), generator=gen)
    worst = 0.0
    for _ in range(repeats):  # the wrong results come from uninitialised memory: they differ per call
        grads = []
        for bf16 in (False, True):
            conv.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = conv(x)
            out.float().square().mean().backward()
            grads.append(conv.weight.grad.detach().clone())
        err = float((grads[1] - grads[0]).norm() / grads[0].norm().clamp_min(1e-30))
        worst = max(worst, err if err == err else float("inf"))
    return worst


def unsafe_bf16_level(patch_size: tuple[int, ...], depth: int = 4) -> tuple[int, ...] | None:
    """The first encoder feature-map shape of a 3-D model whose bf16 weight gradient is wrong
    on this CPU (known bad, or failing the numerical probe), or None if all are right."""
    if len(patch_size) != 3:
        return None  # Conv2d's bf16 weight gradient was right at every shape measured
    for shape in level_shapes(patch_size, depth):
        if known_bad_conv3d_shape(shape) or conv3d_bf16_grad_error(shape) > PROBE_TOLERANCE:
            return shape
    return None


def safe_minimum(depth: int = 4) -> int:
    """Smallest per-axis patch size whose deepest map is at least the kernel (48 for four levels)."""
    return KERNEL * 2**depth


def resolve_training_precision(
    requested: str, device: torch.device, patch_size: tuple[int, ...], *, force: bool = False, depth: int = 4
) -> tuple[str, str]:
    """The precision a training run uses and a one-line reason.

    ``requested`` is the config's ``train.precision``. Raises BfasegError for an explicit
    bf16 (or fp16) that is wrong or unavailable here, unless ``force``.
    """
    if requested == "fp16" and device.type != "cuda":
        raise BfasegError("train.precision: fp16 needs a CUDA device (use bf16 on CPU)")
    if requested == "fp32":
        return "fp32", "requested"
    if device.type == "cuda":
        if requested == "auto":
            return "bf16", "CUDA"
        return requested, "requested"
    # CPU
    if requested == "auto" and not native_bf16_on_cpu():
        return "fp32", "this CPU has no native bf16 (AVX512-BF16/AMX): emulated bf16 is ~10x slower"
    bad = unsafe_bf16_level(tuple(patch_size), depth)
    if bad is not None:
        shape = "x".join(map(str, bad))
        why = (
            f"bf16 Conv3d weight gradients are wrong on this CPU at the {shape} feature map of "
            f"data.patch_size {list(patch_size)} (benchmarks/bf16_conv3d_check.py)"
        )
        if requested == "auto":
            return "fp32", why
        if not force:
            m = safe_minimum(depth)
            raise BfasegError(
                f"train.precision: bf16 refused: {why}; use a patch of at least {m} voxels per axis "
                f"(e.g. {[max(m, int(s)) for s in patch_size]}), train.precision: fp32, or "
                f"train.force_precision: true to train anyway"
            )
        return "bf16", f"forced (train.force_precision) although {why}"
    if requested == "auto":
        return "bf16", "native bf16 CPU"
    if not native_bf16_on_cpu():
        warnings.warn(
            "train.precision: bf16 on a CPU without native bf16 (AVX512-BF16/AMX): convolutions are emulated "
            "and a training step runs ~5x (2-D U-Net) to ~13x (V-Net) slower than in fp32; "
            "use --set train.precision=fp32 on this machine",
            stacklevel=3,
        )
    return "bf16", "requested"


# --------------------------------------------------------------------------- memory: sizes checked before allocating


def memory_bytes(device: str | torch.device = "cpu") -> int | None:
    """The memory of ``device`` in bytes: the GPU's total memory, or the machine's physical memory; None
    where the system does not say."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        import os

        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


def check_fits_in_memory(nbytes: int, what: str, fix: str, device: str | torch.device = "cpu") -> None:
    """Refuse, before allocating, an array (or working set) larger than the memory of ``device``: one line
    naming ``what`` (the key or file and the shape), the bytes, the memory, and ``fix``, instead of numpy's
    MemoryError (or the kernel's OOM killer) half-way through."""
    total = memory_bytes(device)
    if total is not None and nbytes > total:
        where = "this GPU" if torch.device(device).type == "cuda" else "this machine"
        raise BfasegError(f"{what} needs {format_bytes(nbytes)}, more than the {format_bytes(total)} of memory "
                          f"of {where}; {fix}")
