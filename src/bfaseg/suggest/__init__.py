"""Which scan to label next (``bfaseg suggest``) and per-case quality flags (``bfaseg predict``).

Import direction: this part uses ``inference``, ``models``, ``metrics`` and ``data``; only the CLI
imports it. See :mod:`bfaseg.suggest.scoring` for the strategies, :mod:`bfaseg.suggest.quality`
for the flags and the validation reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bfaseg.errors import BfasegError
from bfaseg.suggest.quality import QualityMonitor, validation_reference
from bfaseg.suggest.ranking import patient_id, rank
from bfaseg.suggest.scoring import STRATEGIES, Scorer

__all__ = ["STRATEGIES", "Scorer", "QualityMonitor", "validation_reference", "patient_id", "rank", "suggest",
           "score_cases"]


def _split_file(root: Path | None, split: str) -> Path:
    for cand in ([root / split] if root else []) + [Path(split)]:
        if cand.is_file():
            return cand
    raise BfasegError(f"--split: list file not found: {split}" + (f" (in {root} or the current folder)" if root else ""))


def score_cases(scorer: Scorer, cases, progress: bool = True) -> tuple[list[dict], dict[str, dict]]:
    """Score every :class:`~bfaseg.suggest.pool.PoolCase`: rows (case, score, components, volume) and,
    per case, its most uncertain slice (for the PNG strip)."""
    from bfaseg.suggest.ranking import class_volumes, most_uncertain_slice, voxel_volume
    from bfaseg.suggest.scoring import model_view, slice_axis

    items = cases
    if progress:
        import sys

        from tqdm import tqdm

        items = tqdm(cases, desc=f"suggest ({scorer.strategy})", unit="case", dynamic_ncols=True, file=sys.stderr)
    rows, slices = [], {}
    for pc in items:
        c = pc.load()
        image = c.image if c.image.ndim == 3 else c.image[None]  # a 2-D image is a one-slice volume
        view = model_view(image, scorer.cfg, scorer.ndim, xyz=pc.xyz)
        s = scorer.score(pc.case_id, view)
        vv = voxel_volume(c.spacing, image.shape, view.shape)
        rows.append({"case": pc.case_id, "score": s.score, "components": s.components,
                     "volume": class_volumes(s.labels, scorer.num_classes, vv),
                     "volume_units": "mm3" if vv else "voxels"})
        slices[pc.case_id] = most_uncertain_slice(view, s.labels, s.uncertainty, slice_axis(scorer.ndim, view.shape))
    return rows, slices


def suggest(
    checkpoint: str | Path,
    data: str | Path | None,
    *,
    strategy: str,
    top: int,
    output: str | Path,
    split: str | None = None,
    dataset: str | None = None,
    max_per_patient: int = 1,
    mc_passes: int = 8,
    seed: int = 0,
    device: str = "cpu",
    precision: str = "fp32",
    reference: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the unlabeled pool (or ``split``), rank it and write suggestions.csv/.json/.png to ``output``.
    Every input is checked before anything is written; returns the JSON document."""
    from bfaseg.data.readers import read_list
    from bfaseg.suggest.pool import list_cases, run_cases
    from bfaseg.suggest.ranking import strip_png, write_suggestions

    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise BfasegError(f"--top: must be a positive integer, got {top!r}")
    if max_per_patient < 0:
        raise BfasegError(f"--max-per-patient: must be 0 (no limit) or more, got {max_per_patient}")
    out_dir = Path(output)
    if out_dir.exists() and not out_dir.is_dir():
        raise BfasegError(f"--output: {out_dir} exists and is not a folder")
    root = Path(data) if data is not None else None
    if root is not None and not root.is_dir():
        raise BfasegError(f"--data: folder not found: {root}")
    scorer = Scorer(checkpoint, strategy, device=device, precision=precision, mc_passes=mc_passes, seed=seed)
    cfg = scorer.cfg
    dataset = dataset or cfg.data.dataset
    if split is not None:
        split_path = _split_file(root, split)
        cases = list_cases(cfg, root, dataset, read_list(split_path), scorer.state.get("data"))
        source = str(split_path)
    else:
        cases = run_cases(cfg, root, dataset, "unlabeled")
        source = "the run's unlabeled pool (training entries not labeled in its config)"
        if not cases:
            raise BfasegError(f"{checkpoint}: the run has no unlabeled cases to score; give --split LIST")

    rows, slices = score_cases(scorer, cases, progress)
    ranked = rank(rows, top, max_per_patient)
    selected = [r for r in ranked if r["selected"]]
    doc: dict[str, Any] = {
        "strategy": strategy, "top": top, "max_per_patient": max_per_patient, "seed": seed,
        "mc_passes": mc_passes if strategy == "mc_dropout" else None,
        "checkpoint": str(checkpoint), "method": cfg.method.name, "dataset": dataset, "cases_from": source,
        "n_scored": len(rows), "n_selected": len(selected), "score": _SCORE_DOC[strategy],
        "selected": [r["case"] for r in selected],
        "ranking": [{**r, "slice": {"axis": slices[r["case"]]["axis"], "index": slices[r["case"]]["index"]}}
                    for r in ranked],
    }
    if reference:
        ref, where = validation_reference(scorer, root, dataset, progress=progress)
        doc["quality_reference"] = where if ref else f"not computed: {where}"
    png = strip_png([(r["case"], r["score"], slices[r["case"]]) for r in selected],
                    f"{strategy}: top {len(selected)} of {len(rows)} ({cfg.method.name} checkpoint)")
    write_suggestions(out_dir, ranked, doc, png, scorer.num_classes)
    return doc


_SCORE_DOC = {
    "entropy": "mean predictive entropy / log K (higher = less certain)",
    "mc_dropout": "mean mutual information over MC-dropout passes / log K",
    "disagreement": "1 - teacher-student Dice (mean over foreground classes)",
    "boundary": "mean boundary-head binary entropy in a 2-voxel band around the predicted contours",
    "random": "uniform random number from the seed and the case id (control)",
}
