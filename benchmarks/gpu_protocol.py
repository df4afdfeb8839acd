"""The GPU protocol of issue 17: every method at the published input size, one time budget, one results folder.

    bash benchmarks/gpu_protocol.sh --data ../shared/data --output gpu_protocol      # on one CUDA GPU
    bash benchmarks/gpu_protocol.sh --smoke --output /tmp/gpu_smoke                  # CPU check, seconds

1. Throughput: each (benchmark, method) trains ``--warmup`` + ``--measure`` iterations at the published
   input size and batch (ACDC 256x256, batch 12+12; LA 112x112x80, batch 2+2; configs/*/bfa_10.yaml) in
   the method's full step (BCP/BFA pre-training off, so the teacher and the mixing are in the step);
   iterations/s over the measured iterations and the peak GPU memory are recorded.
2. Budget: the training budget (``--budget-min``, default 8 minutes, all runs together) is shared among
   the benchmarks in proportion to their number of methods; each benchmark gets the largest iteration
   count (a multiple of 20) whose estimated training time of all its methods fits its share. Data
   loading, validation and evaluation come on top.
3. Runs: ``bfaseg experiment`` on each benchmark (ACDC 10 %: supervised, mean_teacher, ua_mt, bcp, bfa,
   full; LA 10 %: supervised, bcp, bfa, full), seed 1, validation every quarter of the run, evaluation
   of the checkpoints on the validation split on the GPU, in the run's precision (auto: bf16 on CUDA).

Output folder: ``acdc/`` and ``la/`` (``bfaseg experiment`` folders: results.json, results.md,
val_curves.png, one run folder per method), ``throughput.json`` / ``throughput.md``, ``protocol.json``
(budget, iterations, device) and ``results.md`` (all of it on one page).

``--smoke``: the same code path on the CPU in fp32 with synthetic stand-ins (2-D 4-class for ACDC,
3-D 2-class for LA), tiny sizes and a few iterations (tests/test_gpu_protocol.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = {
    "acdc": {"config": "configs/acdc/bfa_10.yaml", "data": "acdc",
             "methods": ["supervised", "mean_teacher", "ua_mt", "bcp", "bfa", "full"]},
    "la": {"config": "configs/la/bfa_10.yaml", "data": "la", "methods": ["supervised", "bcp", "bfa", "full"]},
}
SMOKE = {  # synthetic stand-ins with the benchmarks' dimensionality and classes, tiny sizes
    "acdc": {"data": {"dataset": "synthetic", "synthetic_ndim": 2, "synthetic_size": [32, 32], "patch_size": [32, 32],
                      "synthetic_cases": 8, "synthetic_val_cases": 2, "synthetic_classes": 4, "labeled_fraction": 0.25},
             "model": {"name": "unet2d", "num_classes": 4}},
    # 32 along one axis: BCP's train-mode teacher sees one image per half, and BatchNorm needs two values
    "la": {"data": {"dataset": "synthetic", "synthetic_ndim": 3, "synthetic_size": [20, 20, 36],
                    "patch_size": [16, 16, 32], "synthetic_cases": 6, "synthetic_val_cases": 1, "synthetic_classes": 2,
                    "labeled_fraction": 0.34},
           "model": {"name": "vnet", "num_classes": 2, "base_channels": 4}},
}


def base_config(bench: str, args, out: Path) -> str:
    if not args.smoke:
        return str(REPO / BENCHMARKS[bench]["config"])
    raw = {**SMOKE[bench], "train": {"batch_labeled": 2, "batch_unlabeled": 2, "precision": "fp32", "device": "cpu",
                                     "threads": 1},
           "eval": {"mode": "fast"}, "method": {"name": "bfa"}}
    path = out / f"smoke_{bench}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def common_overrides(bench: str, args) -> list[str]:
    if args.smoke:
        return []
    return [f"data.root={Path(args.data) / BENCHMARKS[bench]['data']}", "train.device=cuda"]


def measure(bench: str, method: str, args, out: Path) -> dict:
    """Iterations/s of the method's full step and peak GPU memory (training + one validation case)."""
    import torch

    from bfaseg.config import load_yaml
    from bfaseg.experiments import images_per_step, variant_config
    from bfaseg.training.trainer import Trainer

    base_raw = load_yaml(base_config(bench, args, out))
    total = args.warmup + args.measure
    overrides = common_overrides(bench, args) + [
        f"train.iterations={total}", f"train.log_every={args.warmup}", f"train.val_every={total}",
        f"train.checkpoint_every={total}", "eval.max_cases=1"]
    if method in ("bcp", "bfa"):
        overrides.append("method.pretrain=0")  # measure the step with teacher and mixing, the slower one
    cfg = variant_config(base_raw, method, 1, overrides)
    run_dir = out / "throughput_runs" / f"{bench}_{method}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cuda = cfg.train.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(cfg, run_dir, progress=False)
    trainer.fit()
    times = {r["iteration"]: r["time"] for r in trainer.history if "time" in r}
    rate = args.measure / max(times[total] - times[args.warmup], 1e-9)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    shutil.rmtree(run_dir)  # the numbers are kept, the weights are not
    return {"benchmark": bench, "method": method, "iterations_per_s": rate, "peak_memory_gib": peak,
            "precision": trainer.precision,
            # as trained in the runs (with pre-training), not as measured here
            "images_per_step": images_per_step(variant_config(base_raw, method, 1, common_overrides(bench, args)))}


def plan_iterations(throughput: list[dict], budget_s: float, smoke_iterations: int | None) -> dict[str, int]:
    """Per benchmark: the largest multiple of 20 iterations whose training time (all its methods,
    at the measured rates, 10 % margin) fits its share of the budget."""
    runs = {b: [t for t in throughput if t["benchmark"] == b] for b in BENCHMARKS}
    n_runs = sum(len(v) for v in runs.values())
    plan = {}
    for bench, items in runs.items():
        if smoke_iterations:
            plan[bench] = smoke_iterations
            continue
        share = budget_s * len(items) / n_runs
        seconds_per_iteration = sum(1 / t["iterations_per_s"] for t in items)
        plan[bench] = max(20, int(0.9 * share / seconds_per_iteration) // 20 * 20)
    return plan


def throughput_table(throughput: list[dict], plan: dict[str, int]) -> str:
    lines = ["| benchmark | method | student images/step | teacher images/step | precision | iterations/s "
             "| peak GPU memory (GiB) | iterations run | est. training time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in throughput:
        n = plan[t["benchmark"]]
        mem = "n/a (CPU)" if t["peak_memory_gib"] is None else f"{t['peak_memory_gib']:.2f}"
        ims = t["images_per_step"]
        lines.append(f"| {t['benchmark']} | {t['method']} | {ims['student']} | {ims['teacher']} | {t['precision']} "
                     f"| {t['iterations_per_s']:.2f} | {mem} | {n} | {n / t['iterations_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("BFASEG_DATA"), help="folder holding acdc/ and la/ "
                   "(default: $BFASEG_DATA)")
    p.add_argument("--output", required=True, help="results folder (created)")
    p.add_argument("--budget-min", type=float, default=8.0, help="training time of all runs together (minutes)")
    p.add_argument("--warmup", type=int, default=10, help="throughput: iterations before timing")
    p.add_argument("--measure", type=int, default=20, help="throughput: timed iterations")
    p.add_argument("--smoke", action="store_true", help="CPU, fp32, synthetic tiny data, a few iterations")
    args = p.parse_args(argv)
    from bfaseg.errors import BfasegError
    from bfaseg.experiments import run_experiment

    try:
        if args.smoke:
            args.warmup, args.measure = 1, 2
        else:
            import torch

            if not torch.cuda.is_available():
                raise BfasegError("no CUDA device: this protocol runs on a GPU (--smoke checks it on the CPU)")
            if not args.data or not Path(args.data).is_dir():
                raise BfasegError(f"--data: folder not found: {args.data} (it holds acdc/ and la/)")
        if args.budget_min <= 0 or args.warmup < 1 or args.measure < 1:
            raise BfasegError("--budget-min, --warmup and --measure must be positive")
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        throughput = [measure(b, m, args, out) for b, spec in BENCHMARKS.items() for m in spec["methods"]]
        plan = plan_iterations(throughput, args.budget_min * 60, 2 if args.smoke else None)
        print(f"iterations per benchmark: {plan}", flush=True)
        t_train = time.perf_counter()
        for bench, spec in BENCHMARKS.items():
            n = plan[bench]
            quarter = max(1, n // 4)
            overrides = common_overrides(bench, args) + [
                # a checkpoint per quarter on the GPU (an interrupted protocol resumes); one in the smoke test
                f"train.iterations={n}", f"train.val_every={quarter}",
                f"train.checkpoint_every={n if args.smoke else quarter}",
                f"train.log_every={max(1, min(50, quarter))}"]
            run_experiment(base_config(bench, args, out), spec["methods"], [1], str(out / bench),
                           overrides=overrides, progress=False)
        wall = {"throughput_s": round(t_train - t0), "runs_s": round(time.perf_counter() - t_train)}
    except BfasegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    import torch

    protocol = {"budget_min": args.budget_min, "iterations": plan, "smoke": args.smoke, "wall": wall,
                "device": torch.cuda.get_device_name(0) if not args.smoke else "cpu (smoke)",
                "command": "bash benchmarks/gpu_protocol.sh " + " ".join(sys.argv[1:] if argv is None else argv)}
    (out / "protocol.json").write_text(json.dumps(protocol, indent=1))
    (out / "throughput.json").write_text(json.dumps(throughput, indent=1))
    table = throughput_table(throughput, plan)
    (out / "throughput.md").write_text(table)
    page = [f"# GPU protocol ({protocol['device']})", "",
            f"Budget {args.budget_min:g} min of training for all runs; iterations: "
            + ", ".join(f"{b} {n}" for b, n in plan.items()) + f". Wall time: throughput {wall['throughput_s']} s, "
            f"runs with evaluation {wall['runs_s']} s. Command: `{protocol['command']}`.", "",
            "## Throughput at the published input size", "", table]
    for bench in BENCHMARKS:
        page += [f"## {bench} 10 %, last/best checkpoint on the validation split", "",
                 (out / bench / "results.md").read_text()]
    (out / "results.md").write_text("\n".join(page))
    print("\n".join(page))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
