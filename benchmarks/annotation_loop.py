"""Simulated annotation loop: does labeling the suggested scans help more than labeling random ones?

    # the study in docs/results/annotation_loop.md (ACDC at the CPU budget of configs/acdc/cpu.yaml: BFA, 64x64, 600 iterations)
    python benchmarks/annotation_loop.py --config configs/acdc/cpu.yaml --set train.threads=1 \
        --strategies random,entropy,disagreement,boundary --seeds 1,2 --rounds 2 --add 3 \
        --output runs/annotation_loop_acdc
    # LA (configs/la/cpu.yaml: V-Net, half resolution, 400 iterations; 2 volumes per round)
    python benchmarks/annotation_loop.py --config configs/la/cpu.yaml --set train.threads=1 \
        --strategies random,entropy --seeds 1,2 --rounds 2 --add 2 \
        --output runs/annotation_loop_la
    # a check that the whole loop runs (tiny synthetic data, seconds; tested in CI)
    python benchmarks/annotation_loop.py --smoke --output /tmp/annotation_loop_smoke

For each strategy and seed: start from the config's labeled split (e.g. the 10 % split); the labels of
the rest of the training list are hidden (the run's split file lists them as unlabeled, so training
never reads them). Each round trains a fresh run at the config's budget (round 0 once per seed: every strategy starts
from the same model), scores its validation Dice
(``last.pt``, the run's validation cases), ranks the unlabeled pool with ``bfaseg.suggest`` (at most
one suggestion per patient) and reveals the labels of the top ``--add`` cases (ACDC: every slice of a
suggested volume). Written to ``--output``: ``results.json`` (per round: labeled ids, counts, Dice;
per run: the Spearman correlation between the quality score and the true Dice of the validation
cases at the last round), ``dice_vs_labeled.png`` and ``summary.md``. Finished rounds are reused when
the command is run again with the same output folder; processes with different ``--seeds`` may share
one output folder (each writes only its own runs into results.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

from bfaseg.config import apply_overrides, load_yaml, validate_config
from bfaseg.errors import BfasegError

SMOKE = {
    "data": {"dataset": "synthetic", "synthetic_ndim": 2, "synthetic_size": [32, 32], "patch_size": [32, 32],
             "synthetic_cases": 10, "synthetic_val_cases": 3, "labeled": 2},
    "model": {"name": "unet2d", "num_classes": 3, "base_channels": 4},
    "train": {"iterations": 3, "batch_labeled": 2, "batch_unlabeled": 2, "val_every": 1000, "log_every": 1000,
              "checkpoint_every": 1000, "threads": 1, "precision": "fp32", "device": "cpu"},
    "method": {"name": "mean_teacher"},
}


def initial_split(cfg) -> tuple[list[str], list[str]]:
    """The config's labeled / unlabeled training ids (ACDC: slice ids)."""
    from bfaseg.data.build import benchmark_split_ids, build_data

    if cfg.data.dataset == "synthetic":
        bundle = build_data(cfg.data, cfg.model.num_classes, progress=False)
        return [c.case_id for c in bundle.labeled], [c.case_id for c in bundle.unlabeled]
    if cfg.data.dataset == "nifti":
        raise BfasegError("the annotation loop needs a benchmark layout (la, pancreas, acdc) or --smoke")
    labeled, unlabeled, _, _ = benchmark_split_ids(cfg.data, Path(cfg.data.root))
    return labeled, unlabeled


def reveal(labeled: list[str], unlabeled: list[str], chosen: list[str]) -> tuple[list[str], list[str]]:
    """Move the chosen cases (ACDC volumes: all their slices) from the pool to the labeled ids."""
    from bfaseg.suggest.pool import acdc_volume_id

    picked = [i for i in unlabeled if i in chosen or acdc_volume_id(i) in chosen]
    return labeled + picked, [i for i in unlabeled if i not in picked]


def n_cases(ids: list[str]) -> int:
    """Labeled count in annotation units (ACDC: volumes, not slices)."""
    from bfaseg.suggest.pool import acdc_volume_id

    return len({acdc_volume_id(i) for i in ids})


def one_round(cfg, run_dir: Path, strategy: str, seed: int, add: int, last: bool, progress: bool) -> dict:
    from bfaseg.experiments import evaluate_checkpoint
    from bfaseg.suggest import Scorer, rank, score_cases
    from bfaseg.suggest.pool import run_cases
    from bfaseg.suggest.quality import spearman, validation_reference
    from bfaseg.training.trainer import Trainer

    if not (run_dir / "train_summary.json").exists():  # a round cut short resumes from its checkpoint
        Trainer(cfg, run_dir, resume=(run_dir / "checkpoints" / "last.pt").exists(), progress=progress).fit()
    ckpt = run_dir / "checkpoints" / "last.pt"
    root = Path(cfg.data.root) if cfg.data.root else None
    val = [pc.load() for pc in run_cases(cfg, root, cfg.data.dataset, "val")]
    if cfg.data.dataset in ("la", "pancreas"):
        from bfaseg.data.transforms import downsample_case_arrays

        for c in val:
            c.image, c.label = downsample_case_arrays(c.image, c.label, cfg.data.downsample)
    out = {"dice": evaluate_checkpoint(ckpt, val)["mean"]["dice"]}
    if last:
        ref, _ = validation_reference(Scorer(ckpt, "entropy", seed=seed), root)
        cases = (ref or {}).get("cases", [])
        out["spearman_quality_vs_dice"] = spearman([r["quality_score"] for r in cases], [r["true_dice"] for r in cases])
        return out
    scorer = Scorer(ckpt, strategy, seed=seed)
    rows, _ = score_cases(scorer, run_cases(cfg, root, cfg.data.dataset, "unlabeled"), progress=False)
    out["chosen"] = [r["case"] for r in rank(rows, add, 1) if r["selected"]]
    return out


def run_loop(base_raw: dict, strategies: list[str], seeds: list[int], rounds: int, add: int, output: Path,
             progress: bool = True) -> dict:
    output.mkdir(parents=True, exist_ok=True)
    results_path = output / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    base_cfg = validate_config(base_raw)
    labeled0, pool0 = initial_split(base_cfg)
    for strategy in strategies:
        for seed in seeds:
            name = f"{strategy}_s{seed}"
            entry = results.setdefault(name, {"strategy": strategy, "seed": seed, "rounds": []})
            labeled, pool = labeled0, pool0
            for r in range(rounds):
                last = r == rounds - 1
                if r < len(entry["rounds"]) and ("chosen" in entry["rounds"][r] or last):
                    done = entry["rounds"][r]
                else:
                    # round 0 trains on the same split with the same seed for every strategy: train it once
                    run_dir = output / (f"start_s{seed}" if r == 0 else name) / f"round{r}"
                    run_dir.mkdir(parents=True, exist_ok=True)
                    split = run_dir / "split.yaml"
                    split.write_text(yaml.safe_dump({"labeled": labeled, "unlabeled": pool}))
                    raw = apply_overrides(base_raw, [f"data.split_file={split}", "data.labeled=null",
                                                     "data.labeled_fraction=null", f"train.seed={seed}"])
                    print(f"[run] {name} round {r}: {n_cases(labeled)} labeled", file=sys.stderr)
                    done = one_round(validate_config(raw), run_dir, strategy, seed, add, last, progress)
                    done.update(round=r, n_labeled=n_cases(labeled), labeled=labeled)
                    entry["rounds"][r:] = [done]
                    _save_entry(results_path, name, entry)
                if not last:
                    labeled, pool = reveal(labeled, pool, done["chosen"])
    results = json.loads(results_path.read_text()) if results_path.exists() else results
    write_summary(results, output)
    return results


def _save_entry(results_path: Path, name: str, entry: dict) -> None:
    """Write one run's entry into results.json, keeping the others as the file has them now, so
    processes that share an output folder (one per seed, say) do not overwrite each other's runs."""
    import os

    current = json.loads(results_path.read_text()) if results_path.exists() else {}
    current[name] = entry
    tmp = results_path.with_name(f".{results_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(current, indent=1))
    tmp.replace(results_path)


def write_summary(results: dict, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    strategies = list(dict.fromkeys(e["strategy"] for e in results.values()))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    lines = ["| strategy | labeled cases per round | Dice per round (mean over seeds) | seeds | "
             "Spearman(quality, Dice) |", "|---|---|---|---|---|"]
    for s in strategies:
        runs = [e for e in results.values() if e["strategy"] == s and e["rounds"]]
        n = min(len(e["rounds"]) for e in runs)
        xs = [runs[0]["rounds"][r]["n_labeled"] for r in range(n)]
        dice = np.array([[e["rounds"][r]["dice"] for r in range(n)] for e in runs])
        line = ax.errorbar(xs, dice.mean(0), yerr=dice.std(0) if len(runs) > 1 else None, marker="o", capsize=3,
                           label=f"{s} (mean of {len(runs)})")
        for seed_dice in dice:  # each seed faintly: two seeds can disagree in direction
            ax.plot(xs, seed_dice, color=line[0].get_color(), alpha=0.3, linewidth=1)
        rho = [e["rounds"][-1].get("spearman_quality_vs_dice") for e in runs]
        rho = [x for x in rho if x is not None and np.isfinite(x)]
        lines.append(f"| {s} | {', '.join(map(str, xs))} | {', '.join(f'{d:.4f}' for d in dice.mean(0))} | "
                     f"{len(runs)} | {np.mean(rho):.3f} |" if rho else
                     f"| {s} | {', '.join(map(str, xs))} | {', '.join(f'{d:.4f}' for d in dice.mean(0))} | "
                     f"{len(runs)} | n/a |")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("labeled cases")
    ax.set_ylabel("validation Dice (last.pt)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output / "dice_vs_labeled.png", dpi=120)
    plt.close(fig)
    (output / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="base run config (its labeled split is the start)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--strategies", default="random,entropy,disagreement")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--rounds", type=int, default=4, help="training rounds (labels revealed between rounds)")
    p.add_argument("--add", type=int, default=3, help="cases revealed per round")
    p.add_argument("--output", required=True)
    p.add_argument("--smoke", action="store_true", help="tiny synthetic loop (2 rounds) to check that it runs")
    args = p.parse_args(argv)
    try:
        if args.smoke:
            base, rounds, add = SMOKE, 2, 2
        elif args.config:
            base, rounds, add = load_yaml(args.config), args.rounds, args.add
        else:
            raise BfasegError("--config: a base run config is needed (or --smoke)")
        base = apply_overrides(base, args.set)
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise BfasegError(f"--seeds: expected integers separated by commas, got {args.seeds!r}") from None
        if rounds < 2 or add < 1:
            raise BfasegError("--rounds must be at least 2 and --add at least 1")
        results = run_loop(base, args.strategies.split(","), seeds, rounds, add, Path(args.output),
                           progress=not args.smoke)
    except BfasegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((Path(args.output) / "summary.md").read_text())
    return 0 if results else 1


if __name__ == "__main__":
    raise SystemExit(main())
