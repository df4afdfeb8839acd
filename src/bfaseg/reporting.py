"""Reports of training runs: curves, comparison tables, prediction overlays.

Everything draws with matplotlib's non-interactive Agg backend (no display needed) and
writes files atomically. A run folder is what ``bfaseg train`` writes::

    RUN/log.jsonl               one JSON record per line: training records carry ``loss``
                                (and ``loss_<term>``), validation records ``val_dice``
                                (and ``val_dice_class<k>``, ``best_dice``)
    RUN/train_summary.json      optional
    RUN/checkpoints/{best,last}.pt
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from bfaseg.errors import BfasegError

__all__ = [
    "RunLog",
    "read_run",
    "plot_curves",
    "comparison_table",
    "plateau",
    "overlay_figure",
    "save_figure",
    "pick_slice",
    "mean_sd",
    "format_mean_sd",
    "load_results",
    "seed_groups",
    "seed_table",
    "run_table",
    "benchmark_table",
    "render_table",
    "refresh_tables",
]


@dataclass
class RunLog:
    name: str
    path: Path
    train: list[dict] = field(default_factory=list)  # records with loss*
    val: list[dict] = field(default_factory=list)  # records with val_dice
    method: str | None = None
    n_bad_lines: int = 0

    @property
    def best(self) -> tuple[float, int] | None:
        """(best val Dice, its iteration); the first iteration on ties."""
        if not self.val:
            return None
        rec = max(self.val, key=lambda r: (r["val_dice"], -r["iteration"]))
        return float(rec["val_dice"]), int(rec["iteration"])

    @property
    def last(self) -> tuple[float, int] | None:
        if not self.val:
            return None
        rec = self.val[-1]
        return float(rec["val_dice"]), int(rec["iteration"])

    @property
    def iterations(self) -> int | None:
        its = [int(r["iteration"]) for r in self.train + self.val if "iteration" in r]
        return max(its) if its else None


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _method_of(run_dir: Path) -> str | None:
    for name in ("config.json", "config.yaml", "config.yml"):
        p = run_dir / name
        if p.is_file():
            try:
                import yaml

                raw = yaml.safe_load(p.read_text())
                m = (raw or {}).get("method", {})
                if isinstance(m, dict) and m.get("name"):
                    return str(m["name"])
            except Exception:
                pass
    for name in ("last.pt", "best.pt"):
        p = run_dir / "checkpoints" / name
        if p.is_file():
            try:
                from bfaseg.io.checkpoint import load_checkpoint

                state = load_checkpoint(p)
                return state.get("method_name") or (state.get("config") or {}).get("method", {}).get("name")
            except BfasegError:
                continue
    return None


def read_run(run_dir: str | Path, name: str | None = None, *, with_method: bool = True) -> RunLog:
    """Parse ``RUN/log.jsonl``. A torn last line (run killed mid-write) is skipped and counted.
    ``with_method``: also look up the run's method (may load a checkpoint)."""
    run_dir = Path(run_dir)
    log = run_dir / "log.jsonl"
    if not run_dir.is_dir():
        raise BfasegError(f"run folder not found: {run_dir}")
    if not log.is_file():
        raise BfasegError(f"{run_dir}: no log.jsonl (is it a bfaseg run folder?)")
    run = RunLog(name=name or run_dir.resolve().name, path=run_dir)
    try:
        lines = log.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BfasegError(f"{log}: cannot read ({exc.__class__.__name__})") from None
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            run.n_bad_lines += 1
            continue
        if not isinstance(rec, dict) or not _finite(rec.get("iteration")):
            run.n_bad_lines += 1
            continue
        if "val_dice" in rec:
            if _finite(rec["val_dice"]):
                run.val.append(rec)
        elif any(k == "loss" or k.startswith("loss_") for k in rec):
            run.train.append(rec)
    run.train.sort(key=lambda r: r["iteration"])
    run.val.sort(key=lambda r: r["iteration"])
    run.method = _method_of(run_dir) if with_method else None
    return run


# ----------------------------------------------------------------------------- figures
def read_runs(run_dirs: Sequence[str | Path]) -> list[RunLog]:
    """:func:`read_run` of each folder; a folder given twice is an error (it would be a row twice),
    two folders of the same name are told apart by their parent folder."""
    seen: dict[Path, str] = {}
    runs: list[RunLog] = []
    for d in run_dirs:
        key = Path(d).resolve()
        if key in seen:
            raise BfasegError(f"RUN_DIR {d}: given twice (also as {seen[key]})")
        seen[key] = str(d)
        r = read_run(d)
        if any(o.name == r.name for o in runs):
            r.name = f"{key.parent.name}/{r.name}"
        runs.append(r)
    return runs


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    from bfaseg.io.files import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _plt().close(fig)
    path = Path(path)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))
    return path


def plot_curves(runs: Sequence[RunLog], out_dir: str | Path) -> list[Path]:
    """``loss.png`` (training loss vs iteration) and ``val_dice.png`` (validation Dice vs
    iteration), one line per run; a figure is skipped when no run has such records."""
    plt = _plt()
    out_dir = Path(out_dir)
    written = []
    if any(r.train for r in runs):
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in runs:
            pts = [(rec["iteration"], rec["loss"]) for rec in r.train if _finite(rec.get("loss"))]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, label=r.name, linewidth=1.2)
        written.append(_save_curves(fig, ax, "training loss", "Training loss", out_dir / "loss.png"))
    if any(r.val for r in runs):
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in runs:
            if r.val:
                x = [rec["iteration"] for rec in r.val]
                y = [rec["val_dice"] for rec in r.val]
                (line,) = ax.plot(x, y, marker="o", markersize=3, label=r.name, linewidth=1.2)
                best = r.best
                if best is not None:
                    ax.plot([best[1]], [best[0]], marker="*", markersize=10, color=line.get_color())
        written.append(_save_curves(fig, ax, "validation Dice", "Validation Dice (star: best)", out_dir / "val_dice.png"))
    return written


def _save_curves(fig, ax, ylabel: str, title: str, path: Path) -> Path:
    """Label the axes of a per-iteration plot (one line per run), then save it."""
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def comparison_table(runs: Sequence[RunLog]) -> str:
    """Markdown table: run, method, best val Dice @ iteration, last val Dice @ iteration, iterations."""
    lines = [
        "| run | method | best val Dice @ iteration | last val Dice @ iteration | iterations |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        best = f"{r.best[0]:.4f} @ {r.best[1]}" if r.best else "-"
        last = f"{r.last[0]:.4f} @ {r.last[1]}" if r.last else "-"
        name = r.name.replace("|", "\\|")
        lines.append(f"| {name} | {r.method or '?'} | {best} | {last} | {r.iterations if r.iterations else '-'} |")
    return "\n".join(lines) + "\n"


PLATEAU_POINTS = 1.0  # Dice points
PLATEAU_FRACTION = 0.25  # of the run


def check_plateau_points(points: float) -> float:
    """The plateau threshold: a positive finite number of Dice points (NaN would never plateau)."""
    if not math.isfinite(points) or points <= 0:
        raise BfasegError(f"--plateau-points: must be a positive number of Dice points, got {points:g}")
    return points


def plateau(val: Sequence[dict], fraction: float = PLATEAU_FRACTION, points: float = PLATEAU_POINTS) -> dict | None:
    """The plateau rule on a validation curve: the run has plateaued when the best validation Dice
    rose by less than ``points`` Dice points during its last ``fraction`` (best value of the last
    quarter minus the best value up to ``(1 - fraction)`` of the final iteration).

    The best value, not the last one: single validation points of a CPU-budget run fluctuate by
    1-3 Dice points between neighbours (ACDC full supervision, docs/results/acdc_converged_runs.md), so an
    endpoint difference measures that noise; the running best only rises when training finds a
    better model. ``endpoint_gain`` (last value minus the last value at or before ``1 - fraction``) is
    returned too, for the record. ``val``: records with ``iteration`` and ``val_dice``
    (``RunLog.val``). None when the curve has no point before the last quarter."""
    check_plateau_points(points)
    if len(val) < 2:
        return None
    last = val[-1]
    cut = (1 - fraction) * last["iteration"]
    earlier = [r for r in val[:-1] if r["iteration"] <= cut]
    later = [r for r in val if r["iteration"] > cut]
    if not earlier:
        return None
    best_before = max(float(r["val_dice"]) for r in earlier)
    gain = max(float(r["val_dice"]) for r in later) - best_before
    return {"gain": gain, "endpoint_gain": float(last["val_dice"]) - float(earlier[-1]["val_dice"]),
            "best_before": best_before, "from_iteration": int(earlier[-1]["iteration"]),
            "to_iteration": int(last["iteration"]), "plateau": gain * 100 < points}


def plateau_line(run: RunLog, fraction: float = PLATEAU_FRACTION, points: float = PLATEAU_POINTS) -> str:
    """One printable line: the plateau rule applied to ``run``'s validation curve."""
    p = plateau(run.val, fraction, points)
    if p is None:
        return f"{run.name}: plateau rule n/a (no validation point before the last {fraction:.0%} of the run)"
    verdict = "plateaued" if p["plateau"] else "still rising"
    return (f"{run.name}: best val Dice {p['best_before']:.4f} up to iteration {p['from_iteration']}, "
            f"{p['best_before'] + p['gain']:.4f} by {p['to_iteration']}: {p['gain'] * 100:+.2f} points over the "
            f"last {fraction:.0%}: {verdict} (rule: < {points:g} point; last point vs iteration "
            f"{p['from_iteration']}: {p['endpoint_gain'] * 100:+.2f})")


def pick_slice(label: np.ndarray, axis: int) -> int:
    """Index along ``axis`` with the most foreground (the middle slice when there is none)."""
    other = tuple(i for i in range(label.ndim) if i != axis)
    area = (np.asarray(label) > 0).sum(axis=other)
    return int(np.argmax(area)) if area.max() > 0 else label.shape[axis] // 2


_CLASS_COLORS = ["#ffd700", "#00bfff", "#ff69b4", "#7fff00", "#ff8c00", "#ba55d3"]


def overlay_figure(image: np.ndarray, gt: np.ndarray | None, pred: np.ndarray, title: str = "",
                   num_classes: int | None = None):
    """A 2-D overlay: image in gray, ground-truth contours solid green, prediction contours dashed red
    (binary), or one colour per class with GT solid / prediction dashed (multi-class)."""
    plt = _plt()
    from matplotlib.lines import Line2D

    image = np.asarray(image, dtype=np.float32)
    pred = np.asarray(pred)
    k = int(num_classes or max(int(pred.max()), int(gt.max()) if gt is not None else 0, 1) + 1)
    fig, ax = plt.subplots(figsize=(5, 5 * image.shape[0] / max(image.shape[1], 1)))
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0, 1)
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
    handles = []
    for c in range(1, k):
        binary = k <= 2
        g_col, p_col = ("#00ff00", "#ff3030") if binary else (_CLASS_COLORS[(c - 1) % 6],) * 2
        for mask, col, style, what in ((gt, g_col, "solid", "GT"), (pred, p_col, "dashed", "prediction")):
            if mask is None:
                continue
            m = (np.asarray(mask) == c).astype(np.float32)
            if m.any() and 0 < m.sum() < m.size:
                ax.contour(m, levels=[0.5], colors=[col], linewidths=1.3, linestyles=style)
            label = what if binary else f"{what} class {c}"
            handles.append(Line2D([], [], color=col, linestyle=style, label=label))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=6, framealpha=0.6)
    return fig


# ----------------------------------------------------------------------------------------------
# Seed aggregation: the tables of docs/RESULTS.md and of `bfaseg experiment`'s results.md.
# A results file is what `bfaseg experiment` writes (results.json): run name -> entry, each entry
# with ``variant``, ``seed`` and per evaluation (``last``, ``best``, ``last_lcc``) a ``mean`` dict of
# metrics (Dice/Jaccard as fractions, distances in voxels). Optional entry fields that the tables
# show: ``images_per_step``, ``cpu``, ``plateau`` (``plateau()``'s dict), ``wall_minutes``, ``note``;
# per evaluation, ``missed`` ((case, class) pairs with an empty mask) where ``per_case`` is absent.
# ----------------------------------------------------------------------------------------------


def mean_sd(values: Sequence) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation with ddof=1, count) of the finite values: a spread over seeds
    estimates the run-to-run spread of a new seed, hence ddof=1. sd is None below two values, mean too
    for none."""
    vals = [float(v) for v in values if _finite(v)]
    if not vals:
        return None, None, 0
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None), len(vals)


def format_mean_sd(values: Sequence, scale: float = 1.0, digits: int = 2) -> str:
    """``"72.64 ± 1.24"`` (mean ± sample sd), ``"73.52"`` for one value, ``"n/a"`` for none. When some
    seeds lack the metric (an older record), the cell says over how many it is: ``"79.41 (1 of 2 seeds)"``,
    so a one-seed number never reads as the mean of its row's seeds."""
    values = list(values)
    mean, sd, n = mean_sd([v * scale if _finite(v) else None for v in values])
    if n == 0:
        return "n/a"
    text = f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"
    return text if n == len(values) else f"{text} ({n} of {len(values)} seeds)"


def load_results(path: str | Path) -> dict:
    """A results file (``bfaseg experiment``'s results.json, or one committed under docs/results/):
    run name -> entry; every entry must name its ``variant`` and integer ``seed``."""
    path = Path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BfasegError(f"{path}: not a readable results file ({exc})") from None
    if not isinstance(results, dict):
        raise BfasegError(f"{path}: expected an object run name -> entry")
    for name, entry in results.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("variant"), str) \
                or not isinstance(entry.get("seed"), int) or isinstance(entry.get("seed"), bool):
            raise BfasegError(f"{path}: run {name!r} has no variant and integer seed")
    return results


def seed_groups(results: dict, variants: Sequence[str] | None = None,
                evaluation: str = "last", missing_ok: bool = False) -> list[tuple[str, list[dict]]]:
    """(variant, its entries by seed) for each variant with an ``evaluation``, in the order of
    ``variants`` (default: first appearance); a variant asked for but absent is an error, or left out
    with ``missing_ok``."""
    present: dict[str, list[dict]] = {}
    for entry in results.values():
        if evaluation in entry:
            present.setdefault(entry["variant"], []).append(entry)
    order = list(variants) if variants is not None else list(present)
    missing = [v for v in order if v not in present]
    if missing_ok:
        order = [v for v in order if v in present]
    elif missing:
        raise BfasegError(f"no run with a {evaluation!r} evaluation for {', '.join(missing)}")
    groups = []
    for v in order:
        entries = sorted(present[v], key=lambda e: e["seed"])
        seeds = [e["seed"] for e in entries]
        if len(set(seeds)) != len(seeds):
            raise BfasegError(f"variant {v}: seed given twice ({seeds})")
        groups.append((v, entries))
    return groups


def _values(entries: list[dict], evaluation: str, metric: str) -> list:
    return [(e.get(evaluation) or {}).get("mean", {}).get(metric) for e in entries]


def _missed(entry: dict, evaluation: str) -> int | None:
    """(case, class) pairs with an empty prediction or reference: no distance, left out of the means."""
    ev = entry.get(evaluation) or {}
    if "per_case" in ev:
        return sum(1 for row in ev["per_case"] for k, v in row.items() if k.startswith("hd95_") and v is None)
    return ev.get("missed")


def _cpu_short(cpu: str | None) -> str:
    """``"AMD EPYC, AVX512-BF16, 2 cores"`` -> ``"EPYC"``."""
    return cpu.split(",")[0].split()[-1] if cpu else "?"


def _images_cell(entries: list[dict]) -> str:
    """``"16 / 8 (12 / 0 in pre-training)"``: student / teacher forward images of one step."""
    counts = [e.get("images_per_step") for e in entries]
    if not counts[0] or any(c != counts[0] for c in counts):
        return "?"
    c = counts[0]
    main = f"{c['student']} / {c['teacher']}"
    pre = (c.get("student_pretrain"), c.get("teacher_pretrain"))
    if pre[0] is None or pre == (c["student"], c["teacher"]):
        return main
    return f"{main} ({pre[0]} / {pre[1]} in pre-training)"


def _plateau_text(p: dict | None) -> str:
    if not p:
        return "n/a"
    verdict = ", plateau" if p["plateau"] else ""
    return f"{p['gain'] * 100:+.2f} points ({p['from_iteration']}→{p['to_iteration']}{verdict})"


def _metric_column(header: str, evaluation: str, metric: str, scale: float = 1.0):
    return header, lambda entries, ev: format_mean_sd(_values(entries, evaluation or ev, metric), scale)


def _per_class_cell(entries: list[dict], ev: str) -> str:
    keys = sorted({k for e in entries for k in (e.get(ev) or {}).get("mean", {}) if k.startswith("dice_")},
                  key=lambda k: int(k.split("_")[1]) if k.split("_")[1].isdigit() else k)
    return " / ".join(format_mean_sd(_values(entries, ev, k), 100, 1) for k in keys) or "n/a"


def _cpu_cell(entries: list[dict], ev: str) -> str:
    cpus = [_cpu_short(e.get("cpu")) for e in entries]
    if len(set(cpus)) == 1:
        return cpus[0]
    return ", ".join(f"s{e['seed']} {c}" for e, c in zip(entries, cpus))


def _missed_cell(entries: list[dict], ev: str) -> str:
    counts = [_missed(e, ev) for e in entries]
    return "?" if any(c is None for c in counts) else str(sum(counts))


# column key -> (header, cell(entries of one row, evaluation) -> text); a row is one variant's seeds
# (seed_table) or one run (run_table)
TABLE_COLUMNS = {
    "seeds": ("seeds", lambda entries, ev: str(len(entries))),
    "seed": ("seed", lambda entries, ev: ", ".join(str(e["seed"]) for e in entries)),
    "cpu": ("CPU", _cpu_cell),
    "cpu_full": ("CPU", lambda entries, ev: "; ".join(sorted({e.get("cpu") or "?" for e in entries}))),
    "images": ("images/step, student / teacher", lambda entries, ev: _images_cell(entries)),
    "dice": _metric_column("Dice %", "", "dice", 100),
    "jaccard": _metric_column("Jaccard %", "", "jaccard", 100),
    "hd95": _metric_column("95HD (vox)", "", "hd95"),
    "asd": _metric_column("ASD (vox)", "", "asd"),
    "per_class": ("per-class Dice %", _per_class_cell),
    "missed": ("missed", _missed_cell),
    "lcc_dice": _metric_column("+ LCC: Dice %", "last_lcc", "dice", 100),
    "lcc_hd95": _metric_column("+ LCC: 95HD", "last_lcc", "hd95"),
    "lcc_asd": _metric_column("+ LCC: ASD", "last_lcc", "asd"),
    "plateau": ("val Dice gained over the last quarter",
                lambda entries, ev: "; ".join(_plateau_text(e.get("plateau")) for e in entries)),
    "minutes": ("minutes", lambda entries, ev: ", ".join(
        str(e["wall_minutes"]) if _finite(e.get("wall_minutes")) else "?" for e in entries)),
    "note": ("how it was run", lambda entries, ev: "; ".join(e.get("note") or "" for e in entries)),
}


def _check_columns(columns: Sequence[str]) -> None:
    unknown = [c for c in columns if c not in TABLE_COLUMNS]
    if unknown:
        raise BfasegError(f"unknown table column(s) {', '.join(unknown)} (choose from {', '.join(TABLE_COLUMNS)})")


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def seed_table(results: dict, variants: Sequence[str] | None = None,
               columns: Sequence[str] = ("seeds", "dice", "jaccard", "hd95", "asd"),
               evaluation: str = "last", labels: dict[str, str] | None = None, missing: str | None = None) -> str:
    """Markdown table, one row per variant: each column's mean ± sample sd over the variant's seeds
    (the ``seeds`` column counts them). A variant without runs is an error, or a row that says ``missing``."""
    _check_columns(columns)
    labels = labels or {}
    groups = dict(seed_groups(results, variants, evaluation, missing_ok=missing is not None))
    order = list(variants) if variants is not None else list(groups)
    rows = [[labels.get(v, v)] + ([TABLE_COLUMNS[c][1](groups[v], evaluation) for c in columns] if v in groups
                                  else [missing] + ["-"] * (len(columns) - 1))
            for v in order]
    return _markdown(["method"] + [TABLE_COLUMNS[c][0] for c in columns], rows)


def run_table(results: dict, variants: Sequence[str] | None = None,
              columns: Sequence[str] = ("cpu_full", "dice", "jaccard", "hd95", "asd"),
              evaluation: str = "last") -> str:
    """Markdown table, one row per run (by variant in the order of ``variants``, then seed)."""
    _check_columns(columns)
    names = {id(e): n for n, e in results.items()}
    rows = [[names[id(e)]] + [TABLE_COLUMNS[c][1]([e], evaluation) for c in columns]
            for _, entries in seed_groups(results, variants, evaluation) for e in entries]
    return _markdown(["run"] + [TABLE_COLUMNS[c][0] for c in columns], rows)


def benchmark_table(sources: Sequence[tuple[str, dict]], variants: Sequence[str], metric: str = "dice",
                    corner: str = "", labels: dict[str, str] | None = None,
                    extra: Sequence[tuple[str, str]] = (), evaluation: str = "last", missing: str | None = None) -> str:
    """Markdown table, one row per variant and one column per results file: ``metric``'s mean ± sample
    sd over seeds and the seed count; ``extra`` rows (label, text) repeat one text in every column.
    A variant absent from a results file is an error, or the text ``missing`` in that cell when given."""
    labels = labels or {}
    header, cell = TABLE_COLUMNS[metric]
    groups = [dict(seed_groups(results, variants, evaluation, missing_ok=missing is not None)) for _, results in sources]
    rows = []
    for v in variants:
        rows.append([labels.get(v, v)] + [
            f"{cell(g[v], evaluation)} ({len(g[v])} seed{'s' if len(g[v]) > 1 else ''})" if v in g else missing
            for g in groups])
    rows += [[label] + [text] * len(sources) for label, text in extra]
    return _markdown([corner] + [f"{name} {header}" for name, _ in sources], rows)


TABLE_MARK = re.compile(r"^<!-- table (?P<spec>.*?) -->\n(?P<body>.*?)^<!-- /table -->$", re.M | re.S)


def _parse_spec(spec: str) -> dict[str, str]:
    import shlex

    out = {}
    for item in shlex.split(spec):
        key, sep, value = item.partition("=")
        if not sep:
            raise BfasegError(f"table marker: {item!r} is not key=value")
        if key in out:
            raise BfasegError(f"table marker: {key} given twice")
        out[key] = value
    return out


def _pairs(text: str) -> list[tuple[str, str]]:
    """``"a:b,c:d"`` -> [("a", "b"), ("c", "d")]."""
    return [tuple(item.split(":", 1)) for item in text.split(",") if item] if text else []


def render_table(spec: dict[str, str], base: Path) -> str:
    """The table a marker describes (``refresh_tables``); result files are relative to ``base``."""
    known = {"kind", "source", "rows", "seeds", "columns", "evaluation", "labels", "metric", "corner", "extra", "missing"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise BfasegError(f"table marker: unknown key(s) {', '.join(unknown)}")
    kind = spec.get("kind", "seeds")
    rows = spec["rows"].split(",") if spec.get("rows") else None
    evaluation = spec.get("evaluation", "last")
    labels = dict(_pairs(spec.get("labels", "")))
    if kind == "benchmarks":
        sources = [(name, load_results(base / path)) for name, path in _pairs(spec["source"])]
        extra = [tuple(item.split("|", 1)) for item in spec.get("extra", "").split(";") if item]
        return benchmark_table(sources, rows, spec.get("metric", "dice"), spec.get("corner", ""), labels, extra,
                               evaluation, spec.get("missing"))
    results = load_results(base / spec["source"])
    if spec.get("seeds"):
        seeds = {int(x) for x in spec["seeds"].split(",")}
        results = {name: e for name, e in results.items() if e["seed"] in seeds}
    columns = spec["columns"].split(",") if spec.get("columns") else None
    if kind == "seeds":
        return seed_table(results, rows, columns or ("seeds", "dice", "jaccard", "hd95", "asd"), evaluation, labels,
                          spec.get("missing"))
    if kind == "runs":
        return run_table(results, rows, columns or ("cpu_full", "dice", "jaccard", "hd95", "asd"), evaluation)
    raise BfasegError(f"table marker: unknown kind {kind!r} (seeds, runs, benchmarks)")


def refresh_tables(text: str, base: str | Path) -> str:
    """``text`` with every marked table rewritten from its results files::

        <!-- table source=results/acdc.json rows=supervised,bfa columns=seeds,dice,hd95 -->
        (the table, rewritten)
        <!-- /table -->

    Marker keys: ``kind`` (``seeds``: one row per variant, mean ± sample sd over seeds, the default;
    ``runs``: one row per run; ``benchmarks``: one column per results file, ``source=NAME:PATH,...``),
    ``source`` (a results file relative to ``base``), ``rows`` (variants, in order), ``seeds`` (only
    these seeds, e.g. ``1``), ``columns``
    (keys of ``TABLE_COLUMNS``), ``evaluation`` (``last``, ``best``, ``last_lcc``), ``labels``
    (``variant:label,...``); for ``benchmarks`` also ``metric``, ``corner`` (the first header cell) and
    ``extra`` (``label|text;...``: rows with one text in every column); for ``seeds`` and ``benchmarks``
    also ``missing`` (the text shown for a variant its results file has no run of: otherwise an error).
    Values with spaces in quotes."""
    base = Path(base)
    return TABLE_MARK.sub(lambda m: f"<!-- table {m['spec']} -->\n{render_table(_parse_spec(m['spec']), base)}"
                                    "<!-- /table -->", text)
