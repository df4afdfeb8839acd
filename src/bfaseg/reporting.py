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
    1-3 Dice points between neighbours (measured on ACDC full supervision, docs/RESULTS.md), so an
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
