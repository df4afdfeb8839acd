"""Per-case quality flags: how a prediction compares with the predictions on the run's validation cases.

For every case: the mean predictive entropy, the teacher-student Dice and ASSD (runs with a teacher),
the connected components and volume of each class, and the **quality score** (higher = a prediction
more likely to be good): the teacher-student Dice when the run has a teacher, else ``1 - mean entropy``.

The **validation reference** is the same record for every validation case of the run (its
``val_cases`` / ``val.list`` / synthetic validation phantoms), plus the true Dice where labels exist.
It is computed once per checkpoint and cached beside it as ``<checkpoint>.quality.json``, keyed by the
checkpoint's sha256 (``bfaseg suggest`` and ``bfaseg predict`` both compute it when the cache is
missing or stale and the run's data can be found; ``bfaseg predict`` looks at ``data.root`` of the
run's config).

Flags (a case may have several; ``[]`` = nothing unusual):

``missing_class:C``
    class C is absent although every validation prediction has it (without reference: any absent class).
``fragmented:C``
    class C has more connected components than any validation prediction of it (without reference: > 1).
``low_agreement``
    teacher-student Dice below the 5th percentile of the validation cases.
``high_uncertainty``
    mean entropy above the 95th percentile of the validation cases.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from bfaseg.data.components import count_components
from bfaseg.errors import BfasegError
from bfaseg.suggest.scoring import Scorer, model_view

REFERENCE_VERSION = 1


def case_record(scorer: Scorer, case_id: str, view: np.ndarray, labels: np.ndarray | None = None,
                truth: np.ndarray | None = None) -> dict[str, Any]:
    """Scores of one image (model view). Structural numbers come from ``labels`` when given (the masks
    a user receives, in any geometry), else from the scorer's own prediction."""
    s = scorer.score(case_id, view)
    labels = s.labels if labels is None else labels
    k = scorer.num_classes
    rec: dict[str, Any] = {"case": case_id, "mean_entropy": s.components["mean_entropy"],
                           "components": {str(c): n for c, n in count_components(labels, k).items()},
                           "voxels": {str(c): int(np.count_nonzero(labels == c)) for c in range(1, k)}}
    if scorer.teacher is not None:
        agree = scorer.agreement(s.labels, view)
        agree.pop("_teacher_labels")
        rec.update(agree)
    rec["quality_score"] = rec["teacher_dice"] if "teacher_dice" in rec else 1.0 - rec["mean_entropy"]
    if truth is not None:  # the metrics' policy: a class absent from both is left out; NaN (null) if all are
        from bfaseg.metrics import compute_overlap, mean_over_classes

        rec["true_dice"] = mean_over_classes(compute_overlap(s.labels, truth, classes=k - 1)["dice"])
    return rec


def summarize_reference(records: list[dict], num_classes: int) -> dict[str, Any]:
    ent = [r["mean_entropy"] for r in records]
    ref: dict[str, Any] = {
        "n_cases": len(records),
        "entropy_p95": float(np.percentile(ent, 95)),
        "classes_always_present": [c for c in range(1, num_classes) if all(r["voxels"][str(c)] > 0 for r in records)],
        "max_components": {str(c): max(r["components"][str(c)] for r in records) for c in range(1, num_classes)},
    }
    dice = [r["teacher_dice"] for r in records if "teacher_dice" in r]
    if dice:
        ref["teacher_dice_p5"] = float(np.percentile(dice, 5))
    return ref


def flags(rec: dict, reference: dict | None, num_classes: int) -> list[str]:
    out = []
    present = [c for c in range(1, num_classes) if rec["voxels"][str(c)] > 0]
    expected = reference["classes_always_present"] if reference else list(range(1, num_classes))
    out += [f"missing_class:{c}" for c in expected if c not in present]
    for c in present:
        limit = reference["max_components"][str(c)] if reference else 1
        if rec["components"][str(c)] > max(limit, 1):
            out.append(f"fragmented:{c}")
    if reference and "teacher_dice_p5" in reference and rec.get("teacher_dice") is not None \
            and rec["teacher_dice"] < reference["teacher_dice_p5"]:
        out.append("low_agreement")
    if reference and rec["mean_entropy"] > reference["entropy_p95"]:
        out.append("high_uncertainty")
    return out


def reference_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".quality.json")


def validation_reference(scorer: Scorer, root: Path | None, dataset: str | None = None,
                         progress: bool = False) -> tuple[dict | None, str]:
    """``(reference or None, where it came from / why there is none)``; cached beside the checkpoint."""
    import json

    from bfaseg.suggest.pool import run_cases
    from bfaseg.io.files import write_json_atomic
    from bfaseg.io.checkpoint import checkpoint_digest

    cfg = scorer.cfg
    dataset = dataset or cfg.data.dataset
    digest = checkpoint_digest(scorer.checkpoint)
    cache = reference_path(scorer.checkpoint)
    if cache.is_file():
        try:
            doc = json.loads(cache.read_text())
            if doc.get("sha256") == digest and doc.get("version") == REFERENCE_VERSION:
                return doc, f"cached in {cache}"
        except (OSError, ValueError):
            pass
    if dataset != cfg.data.dataset:
        return None, f"the run's validation cases are in the {cfg.data.dataset} layout, not {dataset}"
    if dataset != "synthetic" and (root is None or not Path(root).is_dir()):
        return None, f"the run's data root {root} was not found; run `bfaseg suggest --data ROOT` to compute it"
    try:
        cases = run_cases(cfg, Path(root) if root else None, dataset, "val")
    except BfasegError as exc:
        return None, f"the validation cases could not be read ({exc})"
    records = []
    items = cases
    if progress:
        from tqdm import tqdm

        items = tqdm(cases, desc="validation reference", unit="case", leave=False)
    for pc in items:
        c = pc.load()
        image = c.image if c.image.ndim == 3 else c.image[None]
        view = model_view(image, cfg, scorer.ndim, xyz=pc.xyz)
        truth = None
        if c.label is not None:
            label = c.label if c.label.ndim == 3 else c.label[None]
            truth = model_view(label, cfg, scorer.ndim, xyz=pc.xyz, order=0)
        records.append(case_record(scorer, pc.case_id, view, truth=truth))
    doc = {"version": REFERENCE_VERSION, "sha256": digest, "checkpoint": str(scorer.checkpoint),
           **summarize_reference(records, scorer.num_classes), "cases": records}
    try:
        write_json_atomic(cache, doc)
        where = f"computed on {len(records)} validation cases, cached in {cache}"
    except OSError:
        where = f"computed on {len(records)} validation cases (not cached: {cache.parent} is not writable)"
    return doc, where


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN for fewer than 3 pairs or a constant input."""
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(spearmanr(x, y).statistic)


class QualityMonitor:
    """``bfaseg predict``'s quality.json: create once, ``add`` each predicted case, ``write`` at the end."""

    def __init__(self, checkpoint: str | Path, *, device: str = "cpu", precision: str = "fp32", which=None):
        self.scorer = Scorer(checkpoint, "entropy", device=device, precision=precision, which=which)
        root = self.scorer.cfg.data.root
        self.reference, self.source = validation_reference(self.scorer, Path(root) if root else None)
        self.rows: list[dict] = []

    def add(self, case_id: str, image: np.ndarray, labels: np.ndarray, *, xyz: bool) -> None:
        """``image`` as read (file geometry after NIfTI preprocessing), ``labels`` the written prediction."""
        image3 = image if image.ndim == 3 else image[None]
        view = model_view(image3, self.scorer.cfg, self.scorer.ndim, xyz=xyz)
        rec = case_record(self.scorer, case_id, view, labels=labels)
        rec["flags"] = flags(rec, self.reference, self.scorer.num_classes)
        self.rows.append(rec)

    def write(self, out_dir: Path) -> Path:
        from bfaseg.io.files import write_json_atomic

        ref = None
        if self.reference:
            ref = {k: v for k, v in self.reference.items() if k != "cases"}
        doc = {"quality_score": "teacher-student Dice" if self.scorer.teacher is not None else "1 - mean entropy",
               "reference": ref, "reference_source": self.source,
               "n_flagged": sum(bool(r["flags"]) for r in self.rows), "cases": self.rows}
        path = Path(out_dir) / "quality.json"
        write_json_atomic(path, doc)
        return path
