"""Figures for docs/RESULTS.md from an experiment folder made by `bfaseg experiment`.

    python docs/make_results_figures.py runs/acdc10 --data ../shared/data/acdc --name acdc10 \
        --methods supervised_s1,bcp_s1,bfa_s1

    python docs/make_results_figures.py runs/la10 --name la10 --methods ""   # curves only

Writes docs/figures/<name>_curves.png (validation Dice vs iteration, every run) and
docs/figures/<name>_predictions.png (ground truth and each method's prediction on a few validation slices).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from bfaseg.data.readers import load_cases, read_list
from bfaseg.inference.predictor import Predictor

CMAP = matplotlib.colors.ListedColormap([(0, 0, 0, 0), (1, 0.2, 0.2, 0.55), (0.2, 1, 0.2, 0.55), (0.2, 0.5, 1, 0.55)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("experiment")
    ap.add_argument("--data", default="../shared/data/acdc")
    ap.add_argument("--name", default="acdc10")
    ap.add_argument("--methods", default="supervised_s1,bcp_s1,bfa_s1")
    ap.add_argument("--cases", type=int, default=3)
    args = ap.parse_args()
    exp = Path(args.experiment)
    figs = Path("docs/figures")
    figs.mkdir(parents=True, exist_ok=True)
    if (exp / "val_curves.png").exists():
        shutil.copy(exp / "val_curves.png", figs / f"{args.name}_curves.png")
    runs = [m for m in args.methods.split(",") if m and (exp / m / "checkpoints" / "last.pt").exists()]
    if not runs:  # e.g. LA (3-D): only the curves
        print(f"wrote {figs / f'{args.name}_curves.png'} (no prediction figure: --methods names no finished run)")
        return
    root = Path(args.data)
    ids = read_list(root / "val.list")
    picks = ids[:: max(1, len(ids) // args.cases)][: args.cases]
    cases = load_cases("acdc", root, picks, kind="eval", num_classes=4)
    fig, axes = plt.subplots(len(cases), len(runs) + 1, figsize=(2.6 * (len(runs) + 1), 2.6 * len(cases)), squeeze=False)
    preds = {}
    for r in runs:
        predictor = Predictor.from_checkpoint(exp / r / "checkpoints" / "last.pt", device="cpu", precision="fp32",
                                              which="student")
        with torch.no_grad():
            preds[r] = [predictor.predict(c.image)[0] for c in cases]
    for i, c in enumerate(cases):
        z = int(np.argmax((c.label > 0).sum((1, 2))))
        panels = [("ground truth", c.label[z])] + [(r.rsplit("_s", 1)[0], preds[r][i][z]) for r in runs]
        for j, (title, lab) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(c.image[z], cmap="gray")
            ax.imshow(lab, cmap=CMAP, vmin=0, vmax=3, interpolation="nearest")
            ax.set_title(f"{title}" + (f"\n{c.case_id} z={z}" if j == 0 else ""), fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    out = figs / f"{args.name}_predictions.png"
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
