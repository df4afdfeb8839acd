"""Write a small nnU-Net-style NIfTI dataset of synthetic 3-D phantoms, for trying bfaseg on
"your own" data: imagesTr/ + labelsTr/ (labeled), imagesTr without a label (unlabeled pool),
imagesTs/ (new scans), dataset.json. Scans have anisotropic spacing and a flipped, shifted affine,
like real scanner output.

    python docs/make_synthetic_nifti.py my_dataset --labeled 6 --unlabeled 10 --test 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from bfaseg.data.synthetic import make_phantom


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output")
    ap.add_argument("--labeled", type=int, default=6)
    ap.add_argument("--unlabeled", type=int, default=10)
    ap.add_argument("--test", type=int, default=2)
    ap.add_argument("--shape", type=int, nargs=3, default=[56, 48, 20])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--annotator", metavar="DIR",
                    help="also write the labels of the unlabeled scans here (an annotator to ask, see OWN_DATA.md)")
    args = ap.parse_args()
    out = Path(args.output)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    spacing = (0.8, 0.8, 2.5)
    # LPS-like: x and y flipped, an offset origin; MR-like intensities (arbitrary scale)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [60.0, 45.0, -30.0]
    n_total = args.labeled + args.unlabeled + args.test
    for i in range(n_total):
        image, label = make_phantom(tuple(args.shape), 3, rng)
        image = (image * 120 + 400).astype(np.float32)
        case = f"case_{i:03d}"
        if i < args.labeled + args.unlabeled:
            nib.save(nib.Nifti1Image(image, affine), out / "imagesTr" / f"{case}_0000.nii.gz")
            if i < args.labeled:
                nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), out / "labelsTr" / f"{case}.nii.gz")
            elif args.annotator:
                Path(args.annotator).mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), Path(args.annotator) / f"{case}.nii.gz")
        else:
            nib.save(nib.Nifti1Image(image, affine), out / "imagesTs" / f"{case}_0000.nii.gz")
            nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), out / "labelsTs" / f"{case}.nii.gz")
    meta = {
        "name": "SyntheticPhantoms",
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "shell": 1, "core": 2},
        "numTraining": args.labeled + args.unlabeled,
        "file_ending": ".nii.gz",
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {n_total} synthetic scans to {out} ({args.labeled} labeled, {args.unlabeled} unlabeled, {args.test} test)")


if __name__ == "__main__":
    main()
