"""Sliding-window inference on real LA volumes: ``paper`` mode vs ``fast`` mode.

    python benchmarks/inference_fast_vs_paper.py --data ../shared/data/la             # train, then time
    python benchmarks/inference_fast_vs_paper.py --data ... --checkpoint runs/x/checkpoints/best.pt

Without ``--checkpoint`` a supervised V-Net is trained on the first ``40 - cases`` IDs of
``train.list`` at half resolution (``data.downsample 2``, patch 64x64x48; or reused from
``--output`` when a previous run left ``checkpoints/last.pt`` there). The last ``--cases``
IDs of ``train.list`` are held out (they are the run's validation split) and predicted twice:

* ``paper``: the reference protocol, one window per forward pass, uniform averaging, fp32,
  strides = the published LA strides (18, 18, 4) divided by the downsample factor (9, 9, 2);
* ``fast``: overlap 0.5, 4 windows per forward pass, Gaussian blending, bf16 where bf16 is
  fast (CUDA, CPUs with AVX512-BF16/AMX), fp32 otherwise (``--fast-precision`` to force).

Prints per-case times and Dice, the speed ratio and the mean Dice of each mode (in
half-resolution voxels) plus their difference, and writes ``OUTPUT/benchmark.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bfaseg.data.readers import load_cases, read_list
from bfaseg.data.transforms import downsample_case_arrays
from bfaseg.inference.checkpoints import load_model_from_checkpoint
from bfaseg.inference.predictor import inference_fn, model_ndim, paper_stride, predict_array
from bfaseg.io.checkpoint import checkpoint_digest
from bfaseg.metrics import compute
from bfaseg.precision import resolve_precision


def default_data() -> str:
    env = os.environ.get("BFASEG_DATA")
    return str(Path(env) / "la") if env else "../shared/data/la"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=default_data(), help="LA root (with train.list); default $BFASEG_DATA/la")
    p.add_argument("--checkpoint", help="use this checkpoint instead of training one")
    p.add_argument("--untrained", action="store_true",
                   help="timing only: a randomly initialised V-Net (--base-channels, --patch, --downsample); "
                   "no training, Dice not meaningful (e.g. the full-resolution protocol: --downsample 1 "
                   "--patch 112 112 80)")
    p.add_argument("--output", default="runs/bench_inference_fast_vs_paper", help="run folder for the training")
    p.add_argument("--cases", type=int, default=4, help="held-out volumes (the last N of train.list)")
    p.add_argument("--train-iterations", type=int, default=300)
    p.add_argument("--batch", type=int, default=4, help="labeled batch size of the training run")
    p.add_argument("--base-channels", type=int, default=16, help="V-Net width (16 = the paper's V-Net)")
    p.add_argument("--downsample", type=float, default=2.0)
    p.add_argument("--patch", type=int, nargs=3, default=[64, 64, 48])
    p.add_argument("--train-precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--paper-stride", type=int, nargs=3, help="default: 18 18 4 / downsample")
    p.add_argument("--paper-precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--fast-precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--fast-batch", type=int, default=4)
    p.add_argument("--fast-overlap", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def train_checkpoint(args) -> Path:
    from bfaseg.config import validate_config
    from bfaseg.training.trainer import Trainer

    out = Path(args.output)
    last = out / "checkpoints" / "last.pt"
    if last.is_file():
        print(f"reusing {last}", flush=True)
        return last
    precision = resolve_precision(None if args.train_precision == "auto" else args.train_precision, "fast", args.device)
    raw = {
        "data": {
            "dataset": "la", "root": args.data, "train_list": "train.list", "val_cases": args.cases,
            "patch_size": list(args.patch), "downsample": args.downsample,
        },
        "model": {"name": "vnet", "num_classes": 2, "base_channels": args.base_channels},
        "train": {
            "iterations": args.train_iterations, "batch_labeled": args.batch, "batch_unlabeled": 0,
            "precision": precision, "device": args.device, "threads": args.threads,
            "val_every": args.train_iterations, "log_every": 20, "checkpoint_every": args.train_iterations,
            "keep_checkpoints": 0,
        },
        "eval": {"mode": "fast"},
        "method": {"name": "supervised"},
    }
    cfg = validate_config(raw, source="benchmark config")
    t0 = time.perf_counter()
    summary = Trainer(cfg, out, progress=True).fit()
    print(f"trained {args.train_iterations} iterations in {time.perf_counter() - t0:.0f} s "
          f"(val Dice {summary['best_dice']:.4f}, {precision})", flush=True)
    return last


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    if args.untrained:
        from bfaseg.config import validate_config
        from bfaseg.models import build_model

        cfg = validate_config({
            "data": {"dataset": "la", "patch_size": list(args.patch), "downsample": args.downsample},
            "model": {"name": "vnet", "num_classes": 2, "base_channels": args.base_channels},
        })
        torch.manual_seed(0)
        model, state, ckpt_path = build_model(cfg.model).eval(), {"data": {"train_ndim": 3}}, None
    else:
        ckpt_path = Path(args.checkpoint) if args.checkpoint else train_checkpoint(args)
        model, cfg, state = load_model_from_checkpoint(ckpt_path, args.device, which="student")
    t_trained = time.perf_counter()
    if model_ndim(cfg, state) != 3:
        sys.exit(f"{ckpt_path}: a 3-D (V-Net) checkpoint is needed")
    ids = read_list(Path(args.data) / "train.list")[-args.cases:]
    cases = load_cases("la", args.data, ids, kind="eval", num_classes=2)
    for c in cases:
        c.image, c.label = downsample_case_arrays(c.image, c.label, cfg.data.downsample)
    fwd = inference_fn(model, 3, args.device)
    patch = tuple(cfg.data.patch_size)
    stride = list(args.paper_stride) if args.paper_stride else paper_stride(cfg, patch)
    fast_prec = resolve_precision(None if args.fast_precision == "auto" else args.fast_precision, "fast", args.device)
    with torch.inference_mode():  # warm-up (allocator, oneDNN kernels) outside the timings
        fwd(torch.zeros((1, 1, *patch), device=args.device))
        fwd(torch.zeros((args.fast_batch, 1, *patch), device=args.device))

    rows = []
    print(f"{'case':<22} {'shape':<14} {'paper s':>8} {'fast s':>8} {'ratio':>6} {'Dice paper':>10} "
          f"{'Dice fast':>9} {'agree':>6}", flush=True)
    for c in cases:
        t = time.perf_counter()
        lp, _, sp = predict_array(model, cfg, c.image, ndim=3, mode="paper", stride=stride,
                                  precision=args.paper_precision, device=args.device, forward=fwd)
        t_paper = time.perf_counter() - t
        t = time.perf_counter()
        lf, _, sf = predict_array(model, cfg, c.image, ndim=3, mode="fast", overlap=args.fast_overlap,
                                  batch_size=args.fast_batch, precision=fast_prec, device=args.device, forward=fwd)
        t_fast = time.perf_counter() - t
        d_paper = compute(lp, c.label)["dice"]
        d_fast = compute(lf, c.label)["dice"]
        agree = compute(lf, lp)["dice"]  # overlap of the two predictions
        rows.append({"case": c.case_id, "shape": list(c.image.shape), "paper_s": t_paper, "fast_s": t_fast,
                     "dice_paper": d_paper, "dice_fast": d_fast, "dice_fast_vs_paper": agree})
        print(f"{c.case_id:<22} {'x'.join(map(str, c.image.shape)):<14} {t_paper:8.2f} {t_fast:8.2f} "
              f"{t_paper / t_fast:6.2f} {d_paper:10.4f} {d_fast:9.4f} {agree:6.4f}", flush=True)

    paper_total = sum(r["paper_s"] for r in rows)
    fast_total = sum(r["fast_s"] for r in rows)
    dp = float(np.mean([r["dice_paper"] for r in rows]))
    df = float(np.mean([r["dice_fast"] for r in rows]))
    result = {
        "checkpoint": None if ckpt_path is None else {
            "path": str(ckpt_path), "iteration": state.get("iteration"),
            "sha256": checkpoint_digest(ckpt_path), "method": state.get("method_name")},
        "untrained": bool(args.untrained),
        "data": {"root": args.data, "held_out": ids, "downsample": cfg.data.downsample,
                 "units": "Dice on half-resolution voxels" if cfg.data.downsample == 2 else "Dice on model voxels"},
        "model": {"base_channels": cfg.model.base_channels, "patch_size": list(patch)},
        "paper": {k: v for k, v in sp.items()},
        "fast": {k: v for k, v in sf.items()},
        "per_case": rows,
        "paper_seconds": paper_total,
        "fast_seconds": fast_total,
        "speedup": paper_total / fast_total,
        "dice_paper": dp,
        "dice_fast": df,
        "dice_difference_points": 100 * (df - dp),
        "threads": args.threads,
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "load_average_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "training_seconds": t_trained - t_start if not (args.checkpoint or args.untrained) else 0.0,
        "total_seconds": time.perf_counter() - t_start,
    }
    print(f"\npaper ({args.paper_precision}, stride {stride}, batch 1, uniform): {paper_total:.1f} s total, "
          f"mean Dice {dp:.4f}")
    print(f"fast  ({fast_prec}, overlap {args.fast_overlap}, batch {args.fast_batch}, gaussian): "
          f"{fast_total:.1f} s total, mean Dice {df:.4f}")
    print(f"speed-up {result['speedup']:.2f}x; Dice fast - paper = {result['dice_difference_points']:+.2f} points"
          + (" (untrained network: timing only, Dice meaningless)" if args.untrained else ""))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'benchmark.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
