"""Rank scored cases, keep the top N diverse, and write suggestions.csv / .json / .png atomically."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from bfaseg.errors import BfasegError

_PATIENT = re.compile(r"^(patient\d+)", re.IGNORECASE)
_SUFFIXES = re.compile(r"(_frame\d+)?(_slice_\d+)?$")


def patient_id(case_id: str) -> str:
    """The patient a case belongs to: ``patientNNN`` for ACDC (frames and slices of one patient), else the
    case id without ``_frameNN`` / ``_slice_K`` suffixes (each NIfTI / LA scan is its own patient)."""
    m = _PATIENT.match(case_id)
    return m.group(1) if m else _SUFFIXES.sub("", case_id) or case_id


def rank(rows: list[dict], top: int, max_per_patient: int) -> list[dict]:
    """Rows by decreasing score (ties: case id), the ``top`` selected first (``selected`` True, ``rank``
    1..top) skipping a case whose patient already has ``max_per_patient`` selected (0 = no limit); the
    rest follow in score order (``rank`` None)."""
    order = sorted(rows, key=lambda r: (-r["score"], r["case"]))
    chosen: list[dict] = []
    per: dict[str, int] = {}
    for r in order:
        if len(chosen) == top:
            break
        p = patient_id(r["case"])
        if max_per_patient and per.get(p, 0) >= max_per_patient:
            continue
        per[p] = per.get(p, 0) + 1
        chosen.append(r)
    ids = {r["case"] for r in chosen}
    out = [dict(r, rank=i + 1, selected=True, patient=patient_id(r["case"])) for i, r in enumerate(chosen)]
    out += [dict(r, rank=None, selected=False, patient=patient_id(r["case"])) for r in order if r["case"] not in ids]
    return out


def class_volumes(labels: np.ndarray, num_classes: int, voxel_volume: float | None) -> dict[str, float]:
    """Predicted volume per foreground class: mm^3 when the voxel size is known, else voxels."""
    scale = voxel_volume if voxel_volume else 1.0
    return {str(c): float(np.count_nonzero(labels == c) * scale) for c in range(1, num_classes)}


def voxel_volume(spacing, original_shape, view_shape) -> float | None:
    """Volume of one voxel of the model view (mm^3): the file's voxel volume times the shrink factor."""
    if spacing is None or len(spacing) != len(original_shape):
        return None
    return float(np.prod(spacing) * np.prod(original_shape) / np.prod(view_shape))


def most_uncertain_slice(image: np.ndarray, labels: np.ndarray, unc: np.ndarray, axis: int) -> dict[str, Any]:
    """The slice (along ``axis``) with the highest mean uncertainty, for the PNG strip."""
    means = unc.mean(axis=tuple(a for a in range(unc.ndim) if a != axis))
    k = int(np.argmax(means))
    take = lambda a: np.take(a, k, axis=axis)  # noqa: E731
    return {"index": k, "axis": axis, "image": take(image), "labels": take(labels), "uncertainty": take(unc)}


# ----------------------------------------------------------------------------- writing
def _atomic_text(path: Path, text: str) -> None:
    from bfaseg.training.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def _clean(value):
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, doc: dict) -> None:
    _atomic_text(path, json.dumps(_clean(doc), indent=2, allow_nan=False) + "\n")


def csv_text(rows: list[dict], num_classes: int) -> str:
    comp_keys = sorted({k for r in rows for k in r["components"]})
    header = ["rank", "case", "patient", "selected", "score", *comp_keys,
              *[f"volume_{c}" for c in range(1, num_classes)]]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        comps = [r["components"].get(k) for k in comp_keys]
        vols = [r["volume"][str(c)] for c in range(1, num_classes)]
        vals = [r["rank"] if r["rank"] is not None else "", r["case"], r["patient"], int(r["selected"]), r["score"],
                *comps, *vols]
        w.writerow(["" if v is None or (isinstance(v, float) and not math.isfinite(v)) else
                    (f"{v:.6g}" if isinstance(v, float) else v) for v in vals])
    return buf.getvalue()


def strip_png(slices: list[tuple[str, float, dict]], title: str) -> bytes:
    """One column per case: the slice, the predicted contours, the uncertainty overlaid (hot, 50 %)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(slices))
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.0), squeeze=False)
    for ax, (case_id, score, s) in zip(axes[0], slices):
        ax.imshow(s["image"].T if s["axis"] != 0 else s["image"], cmap="gray")
        unc = s["uncertainty"].T if s["axis"] != 0 else s["uncertainty"]
        lab = s["labels"].T if s["axis"] != 0 else s["labels"]
        ax.imshow(np.ma.masked_less(unc, 0.05), cmap="inferno", alpha=0.55, vmin=0, vmax=1)  # every map is in 0..1
        if lab.max() > 0:
            ax.contour(lab, levels=np.arange(0.5, lab.max() + 0.5), colors="cyan", linewidths=0.6)
        ax.set_title(f"{case_id}\nscore {score:.3g}, slice {s['index']}", fontsize=7)
        ax.axis("off")
    for ax in axes[0][len(slices):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_suggestions(out_dir: Path, rows: list[dict], doc: dict, png: bytes, num_classes: int) -> list[Path]:
    """suggestions.csv, suggestions.json, suggestions.png in ``out_dir`` (each written atomically)."""
    from bfaseg.training.checkpoint import atomic_write_bytes

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BfasegError(f"--output: cannot create {out_dir} ({exc.strerror})") from None
    paths = [out_dir / "suggestions.csv", out_dir / "suggestions.json", out_dir / "suggestions.png"]
    _atomic_text(paths[0], csv_text(rows, num_classes))
    write_json(paths[1], doc)
    atomic_write_bytes(paths[2], lambda f: f.write(png))
    return paths
