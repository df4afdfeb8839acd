"""Speed and agreement of bfaseg.metrics against medpy on real LA volumes.

For each LA case (the first N of train.list) a prediction is made by perturbing
the label: dilation or erosion by 1-2 voxels, a shift of up to 2 voxels per axis,
and on every other case a small false-positive blob away from the atrium.
Then it times

* medpy: ``dc``, ``jc``, ``hd95``, ``asd`` called separately, as the papers do;
* bfaseg: one ``bfaseg.metrics.compute`` call (which also gives ASSD and HD);

each as the best of ``--repeat`` runs, checks that the four values agree to 1e-6
and prints the per-case and overall speed-up.

    python benchmarks/metrics_vs_medpy.py --data ../shared/data --cases 10
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage as ndi

from bfaseg.metrics import compute

TOL = 1e-6


def perturb(label: np.ndarray, rng: np.random.Generator, outlier: bool) -> np.ndarray:
    mask = label.astype(bool)
    k = int(rng.integers(1, 3))
    mask = ndi.binary_dilation(mask, iterations=k) if rng.random() < 0.5 else ndi.binary_erosion(mask, iterations=k)
    mask = np.roll(mask, tuple(int(s) for s in rng.integers(-2, 3, size=3)), axis=(0, 1, 2))
    if outlier:  # a 5x5x5 false positive at least 20 voxels from the object
        dist = ndi.distance_transform_cdt(~label.astype(bool))
        far = np.argwhere(dist[2:-3, 2:-3, 2:-3] > 20) + 2
        if len(far):
            x, y, z = far[rng.integers(len(far))]
            mask[x - 2:x + 3, y - 2:y + 3, z - 2:z + 3] = True
    return mask.astype(np.uint8)


def best_time(fn, repeat: int):
    best, value = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("BFASEG_DATA", "../shared/data"),
                        help="folder holding la/ (default: $BFASEG_DATA or ../shared/data)")
    parser.add_argument("--cases", type=int, default=10, help="number of LA cases (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case, best kept (default 3)")
    parser.add_argument("--spacing", type=float, default=None,
                        help="isotropic voxel size in mm for the distances (default: voxels, as the papers)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    try:
        from medpy.metric import binary as mb
    except ImportError:
        print("medpy is not installed (pip install medpy)", file=sys.stderr)
        return 2
    la = Path(args.data) / "la"
    if not (la / "train.list").exists():
        print(f"no LA data: {la / 'train.list'} not found", file=sys.stderr)
        return 2
    ids = (la / "train.list").read_text().split()[: args.cases]
    spacing = None if args.spacing is None else (args.spacing,) * 3
    rng = np.random.default_rng(args.seed)

    print(f"{'case':<22}{'shape':>16}{'dice':>8}{'hd95':>8}{'medpy s':>10}{'bfaseg ms':>11}{'speed-up':>10}{'max |diff|':>12}")
    total_medpy = total_ours = 0.0
    ratios, worst = [], 0.0
    for i, case in enumerate(ids):
        with h5py.File(la / "2018LA_Seg_Training Set" / case / "mri_norm2.h5", "r") as f:
            gt = f["label"][()]
        pred = perturb(gt, rng, outlier=i % 2 == 1)

        def with_medpy():
            return {
                "dice": mb.dc(pred, gt),
                "jaccard": mb.jc(pred, gt),
                "hd95": mb.hd95(pred, gt, voxelspacing=spacing),
                "asd": mb.asd(pred, gt, voxelspacing=spacing),
            }

        t_medpy, ref = best_time(with_medpy, args.repeat)
        t_ours, ours = best_time(lambda: compute(pred, gt, spacing=spacing), args.repeat)
        diff = max(abs(ours[k] - ref[k]) for k in ref)
        worst = max(worst, diff)
        total_medpy += t_medpy
        total_ours += t_ours
        ratios.append(t_medpy / t_ours)
        print(f"{case:<22}{str(gt.shape):>16}{ours['dice']:>8.4f}{ours['hd95']:>8.3f}{t_medpy:>10.3f}"
              f"{t_ours * 1e3:>11.1f}{ratios[-1]:>9.1f}x{diff:>12.1e}")

    print(f"\n{len(ids)} cases, units {'voxels' if spacing is None else 'mm'}, best of {args.repeat} runs each")
    print(f"medpy dc+jc+hd95+asd: {total_medpy:.2f} s total, {total_medpy / len(ids):.3f} s per case")
    print(f"bfaseg compute:       {total_ours:.3f} s total, {total_ours / len(ids) * 1e3:.1f} ms per case")
    print(f"speed-up: {total_medpy / total_ours:.1f}x overall (total time), "
          f"per case median {np.median(ratios):.1f}x, min {min(ratios):.1f}x, max {max(ratios):.1f}x")
    print(f"largest |bfaseg - medpy| over dice, jaccard, hd95, asd: {worst:.1e} "
          f"({'OK' if worst <= TOL else 'MISMATCH'}, tolerance {TOL:g})")
    return 0 if worst <= TOL else 1


if __name__ == "__main__":
    raise SystemExit(main())
