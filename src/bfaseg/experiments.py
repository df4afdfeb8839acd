"""Comparison tables under one shared budget: train each (variant, seed), evaluate the last and
the best checkpoint on an evaluation list, write results.json / results.md / plots.

Every run lives in ``<output>/<variant>_s<seed>``; finished runs are skipped and
interrupted ones resumed, so the whole table can be rebuilt by re-running the command.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from bfaseg.config import apply_overrides, load_yaml, validate_config
from bfaseg.errors import BfasegError
from bfaseg.methods import check_method_params

# name -> config overrides; every variant shares the base config's budget
VARIANTS: dict[str, dict] = {
    "supervised": {"method": {"name": "supervised"}},
    "full": {"method": {"name": "supervised"}, "data": {"labeled": None, "labeled_fraction": None}},
    "mean_teacher": {"method": {"name": "mean_teacher"}},
    "ua_mt": {"method": {"name": "ua_mt"}},
    "bcp": {"method": {"name": "bcp"}},
    "bfa": {"method": {"name": "bfa"}},
    "bfa_no_head": {"method": {"name": "bfa", "boundary_head": False}},
    "bfa_no_mixing": {"method": {"name": "bfa", "boundary_mixing": False}},
    "bfa_no_align": {"method": {"name": "bfa", "alignment": False}},
    "bfa_all_off": {"method": {"name": "bfa", "boundary_head": False, "boundary_mixing": False, "alignment": False}},
    # improvement tried on the validation data: pseudo-labels keep only each class's largest component
    "bfa_lcc_pseudo": {"method": {"name": "bfa", "component_filter": 1.0}},
    # improvement tried on the validation data: a boundary-distance loss against far-away false positives
    "bfa_distance": {"method": {"name": "bfa", "lambda_distance": 0.5}},
    # improvement tried on the validation data: confident pseudo-labels only (fights wrong-side RV islands)
    "bfa_confident": {"method": {"name": "bfa", "confidence": 0.9}},
    # both pseudo-label filters together
    "bfa_lcc_confident": {"method": {"name": "bfa", "component_filter": 1.0, "confidence": 0.9}},
}
METRICS = ("dice", "jaccard", "hd95", "asd")
EVALUATIONS = ("last", "best", "last_lcc")


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def variant_config(base_raw: dict, variant: str, seed: int, overrides: list[str]):
    if variant not in VARIANTS:
        raise BfasegError(f"--methods: unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
    raw = _merge(base_raw, VARIANTS[variant])
    raw = _merge(raw, {"train": {"seed": seed}})
    if variant == "full":  # all labeled, but keep the method's own params off
        raw["method"] = {"name": "supervised"}
    raw = apply_overrides(raw, overrides)
    cfg = validate_config(raw, source=f"variant {variant}")
    check_method_params(cfg, source=f"variant {variant}")
    return cfg


def evaluate_checkpoint(path: Path, cases, eval_cfg_override=None) -> dict:
    """Metrics (voxels) of one checkpoint on in-memory cases, predicted as the run validated:
    on the run's device, in the run's precision, with the network it validated (``eval.model``)."""
    import dataclasses

    from bfaseg.evaluation import evaluate_cases
    from bfaseg.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(path, device="run", precision="run")
    ev = eval_cfg_override or predictor.cfg.eval
    predictor = dataclasses.replace(
        predictor, mode=ev.mode, stride=ev.stride, overlap=ev.overlap, batch_size=ev.batch_size,
        largest_component=ev.largest_component,
    )
    return evaluate_cases(predictor, cases)


def run_experiment(
    base_config: str,
    variants: list[str],
    seeds: list[int],
    output: str,
    *,
    overrides: list[str] | None = None,
    eval_list: str | None = None,
    progress: bool = True,
    train: bool = True,
    reevaluate: bool = False,
) -> dict:
    from bfaseg.data.build import build_data
    from bfaseg.data.readers import load_cases, read_list
    from bfaseg.training.trainer import Trainer

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    base_raw = load_yaml(base_config)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    eval_cases = None
    for variant in variants:
        for seed in seeds:
            name = f"{variant}_s{seed}"
            cfg = variant_config(base_raw, variant, seed, overrides or [])
            run_dir = out / name
            if reevaluate and name in results:
                results[name] = {k: v for k, v in results[name].items() if k not in EVALUATIONS}
            if name in results and (run_dir / "train_summary.json").exists() and all(
                w in results[name] for w in EVALUATIONS
            ):
                print(f"[skip] {name}: done")
                continue
            if not train and not (run_dir / "train_summary.json").exists():
                print(f"[skip] {name}: not trained (--no-train)")
                continue
            print(f"[run] {name}")
            if not (run_dir / "train_summary.json").exists():
                resume = (run_dir / "checkpoints" / "last.pt").exists()
                Trainer(cfg, run_dir, resume=resume, progress=progress).fit()
            if eval_cases is None:
                if eval_list:
                    ids = read_list(Path(cfg.data.root) / eval_list)
                    kind = "eval"
                    eval_cases = load_cases(cfg.data.dataset, cfg.data.root, ids, kind=kind,
                                            num_classes=cfg.model.num_classes)
                    from bfaseg.data.transforms import downsample_case_arrays

                    for c in eval_cases:
                        c.image, c.label = downsample_case_arrays(c.image, c.label, cfg.data.downsample)
                    eval_split = eval_list
                else:
                    bundle = build_data(cfg.data, cfg.model.num_classes, progress=False)
                    eval_cases, eval_split = bundle.val, bundle.val_split
            entry = dict(results.get(name, {}), variant=variant, seed=seed, eval_split=eval_split)
            for which in EVALUATIONS:
                path = run_dir / "checkpoints" / f"{which.split('_')[0]}.pt"
                if path.exists() and which not in entry:
                    # "_lcc": the same checkpoint, largest connected component per class kept (3-D), all methods alike
                    eval_cfg = cfg.eval.model_copy(update={"largest_component": which.endswith("_lcc")})
                    entry[which] = evaluate_checkpoint(path, eval_cases, eval_cfg)
            entry["train_summary"] = json.loads((run_dir / "train_summary.json").read_text())
            # several experiment processes may share one folder: merge into what is on disk now
            results = json.loads(results_path.read_text()) if results_path.exists() else {}
            results[name] = entry
            tmp = results_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(results, indent=1))
            tmp.replace(results_path)
    write_tables(results, out)
    return results


def _fmt(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    vals = [v * scale for v in values if v is not None]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals):.{digits}f}"


def _ordered_variants(results: dict) -> list[str]:
    """Variants in VARIANTS order (baselines, BFA, its ablations, then the improvements tried)."""
    present = {e["variant"] for e in results.values()}
    order = list(VARIANTS)
    return sorted(present, key=lambda v: (order.index(v) if v in order else len(order), v))


def _ordered_runs(results: dict) -> list[tuple[str, dict]]:
    """(run name, entry) pairs by method (VARIANTS order), then seed."""
    variants = _ordered_variants(results)
    return sorted(results.items(), key=lambda kv: (variants.index(kv[1]["variant"]), kv[1]["seed"]))


def write_tables(results: dict, out: Path) -> None:
    """results.md: mean ± std over seeds of the LAST and the BEST (validation-selected) checkpoints."""
    variants = _ordered_variants(results)
    lines = []
    titles = {
        "last": "last checkpoint",
        "best": "best checkpoint (selected by validation Dice during training, on the same split: optimistic)",
        "last_lcc": "last checkpoint + largest connected component per class (post-processing, every method alike)",
    }
    for which in EVALUATIONS:
        if not any(which in e for e in results.values()):
            continue
        title = titles[which]
        lines += [f"### {title}", "",
                  "| method | seeds | Dice % | Jaccard % | 95HD (vox) | ASD (vox) | per-class Dice % | missed |",
                  "|---|---|---|---|---|---|---|---|"]
        for v in variants:
            entries = [e for e in results.values() if e["variant"] == v and which in e]
            if not entries:
                continue
            means = [e[which]["mean"] for e in entries]
            classes = sorted({k.split("_")[1] for k in means[0] if k.startswith("dice_")})
            per_class = " / ".join(_fmt([m.get(f"dice_{c}") for m in means], 100, 1) for c in classes)
            # (case, class) pairs with one mask empty: no distance exists, so they are left out of
            # the 95HD/ASD means (policy strict) and counted here instead
            missed = sum(
                1 for e in entries for row in e[which]["per_case"] for key, val in row.items()
                if key.startswith("hd95_") and val is None
            )
            lines.append(
                f"| {v} | {len(entries)} | {_fmt([m['dice'] for m in means], 100)} | {_fmt([m['jaccard'] for m in means], 100)} "
                f"| {_fmt([m['hd95'] for m in means])} | {_fmt([m['asd'] for m in means])} | {per_class} | {missed} |"
            )
        lines.append("")
    # each run on its own (last checkpoint): one-seed ablations compare against the same seed here
    lines += ["### each run, last checkpoint", "",
              "| run | Dice % | 95HD (vox) | ASD (vox) | + LCC: Dice % | + LCC: 95HD | + LCC: ASD |", "|---|---|---|---|---|---|---|"]
    for name, e in _ordered_runs(results):
        if "last" not in e:
            continue
        m, lcc = e["last"]["mean"], e.get("last_lcc", {}).get("mean", {})
        lines.append(f"| {name} | {_fmt([m['dice']], 100)} | {_fmt([m['hd95']])} | {_fmt([m['asd']])} "
                     f"| {_fmt([lcc.get('dice')], 100)} | {_fmt([lcc.get('hd95')])} | {_fmt([lcc.get('asd')])} |")
    lines.append("")
    split = next(iter(results.values()))["eval_split"] if results else "?"
    lines.insert(0, f"Evaluated on: {split}. Metrics in voxels (medpy definitions; ASD directed pred->gt). "
                    "'missed' = (case, class) pairs where prediction or reference is empty: excluded from the "
                    "distance means (strict policy), so compare distances together with this count.\n")
    (out / "results.md").write_text("\n".join(lines))
    _plot_curves(results, out)


def _plot_curves(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one colour per method, one line style per seed, so two seeds of a method read as a pair
    variants = _ordered_variants(results)
    colours = plt.get_cmap("tab20" if len(variants) > 10 else "tab10")
    styles = ["-", "--", ":", "-."]
    seeds = sorted({e["seed"] for e in results.values()})
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for name, entry in _ordered_runs(results):
        log = out / name / "log.jsonl"
        if not log.exists():
            continue
        pts = [json.loads(line) for line in log.read_text().splitlines() if '"val_dice"' in line]
        if pts:
            ax.plot([p["iteration"] for p in pts], [p["val_dice"] for p in pts], marker="o", ms=3, label=name,
                    color=colours(variants.index(entry["variant"]) % colours.N),
                    linestyle=styles[seeds.index(entry["seed"]) % len(styles)])
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation Dice (mean over classes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=1 if len(results) <= 14 else 2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out / "val_curves.png", dpi=120)
    plt.close(fig)
