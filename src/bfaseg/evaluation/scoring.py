"""Scoring predictions: per-case metrics, aggregation over cases, the summary fields and table."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MAIN_METRICS = ("dice", "jaccard", "hd95", "asd")


def score_case(pred: np.ndarray, gt: np.ndarray, num_classes: int, spacing, policy: str,
               empty_class: str = "nan") -> dict:
    """Metrics of one case (``compute_case``): binary floats for 2 classes, ``{class: value}`` otherwise."""
    from bfaseg.metrics import compute_case

    classes = None if num_classes <= 2 else list(range(1, num_classes))
    if num_classes <= 2:
        pred, gt = pred > 0, gt > 0
    return compute_case(pred, gt, spacing=spacing, classes=classes, policy=policy, empty_class=empty_class)


def case_row(case_id: str, result: dict) -> dict:
    from bfaseg.metrics import METRICS

    row: dict[str, Any] = {"case": case_id}
    for k in METRICS:
        v = result[k]
        if isinstance(v, dict):
            row[k] = {str(c): float(x) for c, x in v.items()}
            vals = [x for x in v.values() if not math.isnan(x)]
            row[f"{k}_mean"] = float(np.mean(vals)) if vals else math.nan
        else:
            row[k] = float(v)
    status = result["status"]
    row["status"] = {str(c): s for c, s in status.items()} if isinstance(status, dict) else status
    return row


def summarize(results: list[dict]) -> dict:
    """``mean``, ``std`` (per metric; ``per_class`` for multi-class), ``n_failed``, ``n_cases``."""
    from bfaseg.metrics import METRICS, aggregate

    agg = aggregate(results)
    mean: dict[str, Any] = {k: agg[k]["mean"] for k in METRICS}
    std: dict[str, Any] = {k: agg[k]["std"] for k in METRICS}
    if "per_class" in agg["dice"]:
        mean["per_class"] = {k: {str(c): s["mean"] for c, s in agg[k]["per_class"].items()} for k in METRICS}
        std["per_class"] = {k: {str(c): s["std"] for c, s in agg[k]["per_class"].items()} for k in METRICS}
    out = {"mean": mean, "std": std, "n_cases": agg["n_cases"], "n_failed": agg["n_failed"],
           "n_both_empty": agg["n_both_empty"]}
    for key in ("n_failed_per_class", "n_both_empty_per_class"):
        if key in agg:
            out[key] = {str(c): n for c, n in agg[key].items()}
    return out


def summary_metrics(results: list[dict], policy: str, units: str, empty_class: str = "nan") -> dict:
    """The metric fields of ``summary.json``: mean, std, case counts, empty-mask policy, units."""
    summary = summarize(results)
    fields = {k: summary[k] for k in ("mean", "std", "n_cases", "n_failed", "n_both_empty")}
    for key in ("n_failed_per_class", "n_both_empty_per_class"):
        if key in summary:
            fields[key] = summary[key]
    fields.update(policy=policy, empty_class_policy=empty_class, units=units)
    return fields


def format_table(rows: list[dict], summary: dict, units: str) -> str:
    def f(v, digits=4):
        return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    def line(name: str, vals, per_class=None) -> str:
        """name, dice, jaccard, hd95, asd (+ Dice per class)."""
        text = f"{name[:28]:<28} {f(vals[0]):>7} {f(vals[1]):>7} {f(vals[2], 2):>8} {f(vals[3], 2):>8}"
        if multi and per_class is not None:
            text += "  " + " ".join(f"{f(per_class[c]):>7}" for c in classes)
        return text

    multi = rows and isinstance(rows[0]["dice"], dict)
    classes = list(rows[0]["dice"]) if multi else []
    head = f"{'case':<28} {'dice':>7} {'jaccard':>7} {'hd95':>8} {'asd':>8}"
    if multi:
        head += "  " + " ".join(f"{'dice' + c:>7}" for c in classes)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(line(r["case"], [r[f"{k}_mean"] if multi else r[k] for k in MAIN_METRICS], r["dice"]))
    lines.append("-" * len(head))
    m, s = summary["mean"], summary["std"]
    lines.append(line("mean", [m[k] for k in MAIN_METRICS], m.get("per_class", {}).get("dice")))
    lines.append(line("std", [s[k] for k in MAIN_METRICS]))
    lines.append(f"{summary['n_cases']} cases, {summary['n_failed']} failed (empty prediction or reference), "
                 f"{summary['n_both_empty']} empty in both (empty-class policy "
                 f"{summary.get('empty_class_policy', 'nan')}); distances in {units}")
    return "\n".join(lines)
