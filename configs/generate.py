"""Write the protocol configs (configs/<benchmark>/<method>_<percent>.yaml) from one table.

Run `python configs/generate.py` after changing a protocol setting; the YAML files are
committed so users can read and copy them.
"""

from pathlib import Path

import yaml

HERE = Path(__file__).parent
METHODS = ["supervised", "mean_teacher", "ua_mt", "bcp", "bfa"]

BASE = {
    "la": {
        "data": {"dataset": "la", "root": "data/LA", "patch_size": [112, 112, 80], "val_cases": 8},
        "model": {"name": "vnet", "num_classes": 2},
        "train": {"iterations": 6000, "batch_labeled": 2, "batch_unlabeled": 2, "lr": 0.01, "schedule": "step",
                  "step_milestones": [2500, 5000], "val_every": 500, "checkpoint_every": 500, "precision": "auto"},
        "eval": {"mode": "fast", "stride": [18, 18, 4]},
        "percents": {5: 4, 10: 8, 20: 16, 100: 72},
    },
    "pancreas": {
        "data": {"dataset": "pancreas", "root": "data/Pancreas", "patch_size": [96, 96, 96], "val_cases": 6},
        "model": {"name": "vnet", "num_classes": 2},
        "train": {"iterations": 6000, "batch_labeled": 2, "batch_unlabeled": 2, "lr": 0.01, "schedule": "step",
                  "step_milestones": [2500, 5000], "val_every": 500, "checkpoint_every": 500, "precision": "auto"},
        "eval": {"mode": "fast", "stride": [16, 16, 16]},
        "percents": {10: 6, 20: 12, 100: 56},
    },
    "acdc": {
        "data": {"dataset": "acdc", "root": "data/ACDC", "patch_size": [256, 256]},
        "model": {"name": "unet2d", "num_classes": 4},
        "train": {"iterations": 30000, "batch_labeled": 12, "batch_unlabeled": 12, "lr": 0.01, "schedule": "poly",
                  "val_every": 200, "checkpoint_every": 1000, "precision": "auto"},
        "eval": {"mode": "fast"},
        "percents": {5: 68, 10: 136, 100: 1312},
    },
}

# the CPU budget shared by every method in the archived tables (docs/results/archive_0_1.md). fp32: the project machine is an AVX2-only
# CPU without bf16 hardware, where bf16 autocast is ~10x SLOWER than fp32 (benchmarks/train_step.py)
CPU = {
    "acdc": {
        "data": {"dataset": "acdc", "root": "../shared/data/acdc", "patch_size": [64, 64], "labeled": 136},
        "model": {"name": "unet2d", "num_classes": 4},
        "train": {"iterations": 600, "batch_labeled": 8, "batch_unlabeled": 8, "lr": 0.01, "schedule": "poly",
                  "precision": "fp32", "val_every": 150, "log_every": 50, "checkpoint_every": 150},
        "method": {"name": "bfa"},
    },
    # LA: half resolution and 400 iterations: a BFA step takes ~4 s on one core, so five methods fit in ~1.5 h
    "la": {
        "data": {"dataset": "la", "root": "../shared/data/la", "patch_size": [64, 64, 32], "downsample": 2,
                 "labeled": 8, "val_cases": 8},
        "model": {"name": "vnet", "num_classes": 2},
        "train": {"iterations": 400, "batch_labeled": 2, "batch_unlabeled": 2, "lr": 0.01, "schedule": "poly",
                  "precision": "fp32", "val_every": 100, "log_every": 50, "checkpoint_every": 100},
        "eval": {"mode": "fast", "overlap": 0.5},
        "method": {"name": "bfa"},
    },
}


def main() -> None:
    for bench, spec in BASE.items():
        out = HERE / bench
        out.mkdir(exist_ok=True)
        for percent, n in spec["percents"].items():
            methods = ["supervised"] if percent == 100 else METHODS
            for method in methods:
                cfg = {k: dict(v) for k, v in spec.items() if k in ("data", "model", "train", "eval")}
                cfg["data"] = {**cfg["data"], "labeled": n}
                cfg["method"] = {"name": method}
                if method in ("bcp", "bfa") and bench != "acdc":
                    # BCP's own LA/Pancreas protocol: 4 + 4 per batch, pre-training inside the same budget;
                    # BFA extends BCP and gets the same batches (a fair comparison of the two)
                    cfg["train"] = {**cfg["train"], "batch_labeled": 4, "batch_unlabeled": 4}
                name = f"{method}_{percent}.yaml" if percent != 100 else "supervised_full.yaml"
                header = f"# {bench.upper()} {percent}% labeled ({n} {'slices' if bench == 'acdc' else 'cases'}), {method}; paper protocol (PROTOCOL.md)\n"
                (out / name).write_text(header + yaml.safe_dump(cfg, sort_keys=False))
        if bench in CPU:
            (out / "cpu.yaml").write_text(
                f"# {bench.upper()} CPU budget shared by every method (fp32, small input); `bfaseg experiment` varies the method\n"
                + yaml.safe_dump(CPU[bench], sort_keys=False)
            )
    synth = {
        "data": {"dataset": "synthetic", "synthetic_ndim": 2, "synthetic_size": [64, 64], "patch_size": [64, 64],
                 "synthetic_cases": 40, "synthetic_classes": 3, "labeled_fraction": 0.1},
        "model": {"name": "unet2d", "num_classes": 3},
        "train": {"iterations": 300, "batch_labeled": 4, "batch_unlabeled": 4, "precision": "fp32",
                  "val_every": 100, "log_every": 20, "checkpoint_every": 100},
        "method": {"name": "bfa"},
    }
    (HERE / "synthetic").mkdir(exist_ok=True)
    (HERE / "synthetic" / "bfa_10.yaml").write_text("# synthetic 2-D phantoms, 10% labeled\n" + yaml.safe_dump(synth, sort_keys=False))


if __name__ == "__main__":
    main()
