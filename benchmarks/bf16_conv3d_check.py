"""Minimal reproduction: is the bf16 weight gradient of a 3x3(x3) convolution right on this CPU?

One convolution, the same inputs in fp32 and under bf16 autocast, repeated: the relative error of
``weight.grad`` against fp32 (normal bf16 rounding gives ~0.003). On some oneDNN builds (seen with
torch 2.13.0 on an AVX512-BF16 AMD EPYC) the bf16 Conv3d weight gradient is garbage (0.9 .. inf,
different on every repeat) when the feature map is smaller than the kernel in two or more axes.
bfaseg's precision policy (``bfaseg.precision``) refuses bf16 for such shapes on the CPU.

    python benchmarks/bf16_conv3d_check.py            # the table for this CPU
    python benchmarks/bf16_conv3d_check.py --repeats 10

Prints the CPU, torch version, whether oneDNN reports native bf16, then one row per shape.
"""

from __future__ import annotations

import argparse
import platform

import torch
from torch import nn

# (channels, spatial): 3-D shapes of the table, then 2-D shapes for the U-Net's Conv2d
SHAPES = [
    (32, (2, 2, 2)), (128, (2, 2, 1)), (64, (1, 1, 1)), (64, (2, 1, 1)), (64, (3, 3, 1)), (256, (4, 4, 2)),
    (256, (7, 7, 5)), (128, (8, 8, 4)), (16, (64, 64, 32)),
    (256, (2, 2)), (256, (1, 1)), (128, (4, 4)), (16, (64, 64)),
]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def weight_grad_error(channels: int, spatial: tuple[int, ...], seed: int) -> float:
    """Relative L2 error of the bf16-autocast weight gradient against fp32, same inputs.

    Deliberately torch-only (bfaseg.precision.conv3d_bf16_grad_error is the project's probe): this
    script is the reproduction to attach to an upstream PyTorch/oneDNN report, runnable without bfaseg.
    """
    conv_cls = nn.Conv3d if len(spatial) == 3 else nn.Conv2d
    torch.manual_seed(seed)
    conv = conv_cls(channels, channels, 3, padding=1)
    x = torch.randn(2, channels, *spatial)
    grads = []
    for bf16 in (False, True):
        conv.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = conv(x)
        out.float().square().mean().backward()
        grads.append(conv.weight.grad.detach().clone())
    ref, got = grads
    return float((got - ref).norm() / ref.norm().clamp_min(1e-30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    print(f"CPU: {cpu_name()}; torch {torch.__version__}; oneDNN native bf16: {native}")
    print("| conv | channels, spatial | relative error of weight.grad (repeats) | verdict |")
    print("|---|---|---|---|")
    for channels, spatial in SHAPES:
        errors = [weight_grad_error(channels, spatial, seed=0) for _ in range(args.repeats)]
        worst = max(e if e == e else float("inf") for e in errors)  # NaN counts as the worst
        verdict = "ok" if worst < 0.02 else "WRONG"
        shown = ", ".join(f"{e:.4g}" for e in errors)
        kind = f"Conv{len(spatial)}d"
        print(f"| {kind} | {channels}, {'x'.join(map(str, spatial))} | {shown} | {verdict} |")


if __name__ == "__main__":
    main()
