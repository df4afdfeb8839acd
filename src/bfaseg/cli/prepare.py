"""``bfaseg prepare {la,pancreas,acdc} RAW OUT``: raw public releases -> the standard h5 layouts."""

from __future__ import annotations

import argparse

# dataset -> (converter in bfaseg.data.prepare, its options taken from the parsed arguments)
CONVERTERS = {
    "la": ("prepare_la", ("label_crop", "margin", "min_size", "crop_size", "seed", "test_fraction")),
    "pancreas": ("prepare_pancreas", ("spacing", "expand", "min_size", "test_fraction")),
    "acdc": ("prepare_acdc", ("val_fraction", "test_fraction", "seed", "all_slices")),
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="convert a raw public release (LA, Pancreas-CT, ACDC) into the standard h5 layout",
        description="Convert a raw public release into the layout the benchmarks read.",
    )
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET")
    sub.required = True

    la = _dataset_parser(
        sub,
        "la",
        help="2018 LA challenge: RAW/<ID>/lgemri.nrrd + laendo.nrrd",
        description="RAW/<ID>/lgemri.nrrd and laendo.nrrd -> OUT/2018LA_Seg_Training Set/<ID>/mri_norm2.h5, "
        "OUT/train.list, OUT/test.list (split in sorted ID order).",
    )
    la.add_argument(
        "--no-label-crop",
        dest="label_crop",
        action="store_false",
        help="crop x/y around the image centre to --crop-size instead of around the ground-truth box "
        "(the standard label crop leaks the object's position)",
    )
    la.add_argument("--margin", type=int, nargs=2, default=[10, 19], metavar=("MIN", "MAX"),
                    help="random margin around the label box in x/y, voxels, inclusive (default 10 19)")
    la.add_argument("--min-size", type=int, nargs=2, default=[112, 112], metavar=("X", "Y"),
                    help="label crop at least this wide in x/y (default 112 112, the training patch)")
    la.add_argument("--crop-size", type=int, nargs=2, default=[192, 192], metavar=("X", "Y"),
                    help="window for --no-label-crop, padded if the image is smaller (default 192 192)")
    la.add_argument("--seed", type=int, default=0, help="seed of the random margins (default 0)")
    la.add_argument("--test-fraction", type=float, default=0.2, help="share of IDs in test.list (default 0.2)")

    pa = _dataset_parser(
        sub,
        "pancreas",
        help="NIH Pancreas-CT: RAW/images/<case>/ (DICOM) or <case>.nii.gz, RAW/labels/label<NNNN>.nii.gz",
        description="RAW/images/<case>/ DICOM series or RAW/images/<case>.nii.gz, labels in RAW/labels/ "
        "(label<NNNN>.nii.gz or <case>.nii.gz) -> OUT/Pancreas_h5/<case>_norm.h5, OUT/train.list, OUT/test.list.",
    )
    pa.add_argument("--spacing", type=float, nargs=3, default=[1.0, 1.0, 1.0], metavar=("SX", "SY", "SZ"),
                    help="output voxel spacing in mm (default 1 1 1)")
    pa.add_argument("--expand", type=int, default=25, help="voxels added around the label box (default 25)")
    pa.add_argument("--min-size", type=int, default=96, help="minimum crop size per axis (default 96)")
    pa.add_argument("--test-fraction", type=float, default=20 / 82,
                    help="share of cases in test.list (default 20/82: 62/20 of 82)")

    ac = _dataset_parser(
        sub,
        "acdc",
        help="ACDC: RAW/[training/|testing/]<patientXXX>/patientXXX_frameYY[_gt].nii.gz",
        description="ACDC NIfTI release -> OUT/data/slices/<case>_slice_<k>.h5 (training patients), "
        "OUT/data/<case>.h5, OUT/train_slices.list, OUT/val.list, OUT/test.list (split by patient).",
    )
    ac.add_argument("--val-fraction", type=float, default=0.1, help="share of patients for val.list (default 0.1)")
    ac.add_argument("--test-fraction", type=float, default=0.2, help="share of patients for test.list (default 0.2)")
    ac.add_argument("--seed", type=int, default=None,
                    help="shuffle patients with this seed before splitting (default: sorted order)")
    ac.add_argument("--all-slices", action="store_true",
                    help="also write 2-D slices of the val/test patients")


def _dataset_parser(sub, name: str, *, help: str, description: str) -> argparse.ArgumentParser:
    """``prepare <name>`` with what every converter takes: RAW, OUT, --no-progress."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("raw", metavar="RAW", help="folder of the raw release")
    p.add_argument("out", metavar="OUT", help="output folder (created if needed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from bfaseg.data import prepare

    from bfaseg.io.output import check_output_dir, removed_if_failed

    name, options = CONVERTERS[args.dataset]
    convert = getattr(prepare, name)
    with removed_if_failed(check_output_dir(args.out, option="OUT")):  # garbage input: no empty folder left
        convert(args.raw, args.out, show_progress=not args.no_progress, **{k: getattr(args, k) for k in options})
    return 0
