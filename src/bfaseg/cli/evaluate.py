"""``bfaseg evaluate``: score a checkpoint on a labeled split, write ``summary.json``.

    bfaseg evaluate --checkpoint runs/la/checkpoints/best.pt --data /data/LA --split test.list

This module only parses the options: prediction is :class:`bfaseg.inference.predictor.Predictor`,
reading, scoring and ``summary.json`` are :func:`bfaseg.evaluation.evaluate_split` (its
docstring says how each layout is preprocessed). Metrics (``bfaseg.metrics``): Dice, Jaccard,
HD95, ASD (directed, as the papers), ASSD, HD, per class for multi-class runs; distances in
voxels unless ``--spacing`` is given.
"""

from __future__ import annotations

import math

from bfaseg.errors import BfasegError
from bfaseg.evaluation import DATASETS
from bfaseg.metrics import EMPTY_CLASS_HELP, EMPTY_CLASS_POLICIES


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a checkpoint on a labeled split (Dice, Jaccard, HD95, ASD, ...)",
        description="Predict every case of a split with a checkpoint and score it; writes OUTPUT/summary.json.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file (runs/<run>/checkpoints/best.pt)")
    p.add_argument("--data", required=True, metavar="ROOT", help="dataset root folder")
    p.add_argument("--split", required=True, metavar="LIST",
                   help="list file of case ids, relative to ROOT (e.g. test.list, val.list) or a path")
    p.add_argument("--dataset", choices=DATASETS, help="layout of ROOT (default: the checkpoint's data.dataset)")
    p.add_argument("--mode", choices=("fast", "paper"), default="fast",
                   help="3-D sliding window: fast (overlap, batched, Gaussian; default) or paper (reference protocol)")
    p.add_argument("--stride", type=int, nargs="+", metavar="S",
                   help="window stride per axis (paper default: LA 18 18 4 / Pancreas 16 16 16, divided by "
                   "data.downsample; fast default: from --overlap)")
    p.add_argument("--overlap", type=float, help="fast mode window overlap (default: the run's eval.overlap)")
    p.add_argument("--batch-size", type=int, help="fast mode windows per forward pass (default: eval.batch_size)")
    p.add_argument("--spacing", nargs="+", metavar="S",
                   help="voxel size SX SY SZ in mm for HD95/ASD, or 'auto' (h5 'spacing' attribute / NIfTI "
                   "header); default: distances in voxels, as the reference code")
    p.add_argument("--policy", choices=("strict", "worst", "paper"), default="strict",
                   help="empty-mask policy of the metrics (see `bfaseg metrics --help`)")
    p.add_argument("--empty-class-policy", choices=EMPTY_CLASS_POLICIES, default="nan", help=EMPTY_CLASS_HELP)
    p.add_argument("--largest-component", action="store_true", help="keep the largest connected component per class")
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="auto",
                   help="forward-pass precision (auto: fp32 for paper; bf16 for fast where it is fast)")
    p.add_argument("--model", choices=("student", "teacher"),
                   help="which weights to use (default: the network the run validated, eval.model)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--output", metavar="DIR", help="where summary.json goes (default: beside the checkpoint, "
                   "<run>/eval_<split>_<mode>)")
    p.add_argument("--max-cases", type=int, help="evaluate only the first N cases of the split")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_spacing(values: list[str] | None, ndim: int = 3) -> tuple[float, ...] | str | None:
    """None, ``"auto"`` or a tuple of positive floats (one value = isotropic)."""
    if not values:
        return None
    if len(values) == 1 and values[0].lower() == "auto":
        return "auto"
    try:
        nums = [float(v) for v in values]
    except ValueError:
        raise BfasegError(f"--spacing: expected {ndim} numbers (SX SY SZ) or 'auto', got {' '.join(values)}") from None
    if len(nums) == 1:
        nums = nums * ndim
    if len(nums) != ndim or not all(math.isfinite(v) and v > 0 for v in nums):
        raise BfasegError(f"--spacing: expected {ndim} positive numbers (SX SY SZ) or 'auto', got {' '.join(values)}")
    return tuple(nums)


# ----------------------------------------------------------------------------- command


def run(args) -> int:
    from bfaseg.evaluation import evaluate_split, format_table
    from bfaseg.inference.predictor import Predictor

    if args.overlap is not None and not 0 <= args.overlap < 1:
        raise BfasegError(f"--overlap: must be in [0, 1), got {args.overlap}")
    if args.batch_size is not None and args.batch_size < 1:
        raise BfasegError("--batch-size: must be at least 1")
    if args.max_cases is not None and args.max_cases < 1:
        raise BfasegError("--max-cases: must be at least 1")
    spacing = parse_spacing(args.spacing)
    doc, path = evaluate_split(
        Predictor.from_args(args), args.data, args.split, dataset=args.dataset, spacing=spacing,
        policy=args.policy, empty_class=args.empty_class_policy, max_cases=args.max_cases, output=args.output, progress=not args.no_progress,
    )
    print(format_table(doc["per_case"], doc, doc["units"]))
    print(f"wrote {path}")
    return 0
