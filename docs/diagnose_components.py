"""Where are a model's predicted components, against the ground truth? (ACDC validation volumes)

    python docs/diagnose_components.py runs/acdc10/bfa_s2 patient039_frame02 patient028_frame01

For each volume and each class (1 RV, 2 Myo, 3 LV): the ground-truth centroid (z, y, x) and voxel
count, and the largest predicted connected components (3-D) with their voxel counts and centroids.
A large component far from the ground-truth centroid is a misplaced structure (e.g. an RV on the
wrong side of the LV), which is what drives 95HD and ASD up in the archived tables (docs/results/archive_0_1.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from bfaseg.data.readers import load_cases
from bfaseg.inference.checkpoints import load_model_from_checkpoint
from bfaseg.inference.predictor import predict_array

NAMES = {1: "RV", 2: "Myo", 3: "LV"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="run folder with checkpoints/last.pt")
    ap.add_argument("cases", nargs="+", help="validation volume names, e.g. patient039_frame02")
    ap.add_argument("--data", default="../shared/data/acdc")
    ap.add_argument("--top", type=int, default=4, help="components listed per class")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, cfg, _ = load_model_from_checkpoint(Path(args.run) / "checkpoints" / "last.pt", which="student")
    for case in load_cases("acdc", args.data, args.cases, kind="eval", num_classes=4):
        pred, _, _ = predict_array(model, cfg, case.image, ndim=2)
        print(f"{case.case_id} {case.image.shape}")
        for k, name in NAMES.items():
            gt = case.label == k
            where = tuple(int(v) for v in np.argwhere(gt).mean(0).round()) if gt.any() else None
            comps, n = ndimage.label(pred == k)
            sizes = ndimage.sum(np.ones_like(comps), comps, range(1, n + 1)) if n else []
            centres = ndimage.center_of_mass(np.ones_like(comps), comps, range(1, n + 1)) if n else []
            top = sorted(zip(sizes, centres), key=lambda sc: -sc[0])[: args.top]
            listed = ", ".join(f"{int(s)} at {tuple(int(round(c)) for c in ce)}" for s, ce in top) or "none"
            print(f"  {name:3s} truth {int(gt.sum())} voxels at {where}; predicted: {listed}")


if __name__ == "__main__":
    main()
