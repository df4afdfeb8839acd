"""``bfaseg predict``: segment new images with a checkpoint.

    bfaseg predict --checkpoint best.pt --input imagesTs/ --output preds/
    bfaseg predict --checkpoint best.pt --input case.nii.gz --output preds/ --probabilities --labels labelsTs/

Reading, predicting, writing and scoring are :func:`bfaseg.evaluation.predict.predict_files`
(inputs, outputs and ``--labels`` are described there); this module parses the options.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bfaseg.cli.main import refuse_inapplicable
from bfaseg.metrics import EMPTY_CLASS_HELP, EMPTY_CLASS_POLICIES


def register(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="segment NIfTI or h5 images with a checkpoint",
        description="Predict label maps for new images; outputs keep the input's geometry.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file (runs/<run>/checkpoints/best.pt)")
    p.add_argument("--input", required=True, metavar="FILE_OR_DIR",
                   help="a .nii/.nii.gz/.h5 file or a folder of them (e.g. imagesTs/)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the predictions")
    p.add_argument("--mode", choices=("fast", "paper"), default="fast", help="3-D sliding-window mode")
    p.add_argument("--stride", type=int, nargs="+", metavar="S", help="window stride per axis (3-D)")
    p.add_argument("--probabilities", action="store_true", help="also write the softmax probabilities")
    p.add_argument("--largest-component", action="store_true", help="keep the largest connected component per class")
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="auto",
                   help="forward-pass precision (auto: fp32 for paper; bf16 for fast where it is fast)")
    p.add_argument("--model", choices=("student", "teacher"), help="which weights (default: the run's eval.model)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--h5-format", choices=("h5", "nifti"), default="h5",
                   help="output format for h5 inputs: <case>_pred.h5 (default) or <case>.nii.gz")
    p.add_argument("--labels", metavar="DIR",
                   help="reference labels (<case>.nii.gz/.nii/.h5) to score the predictions, or 'input' for "
                   "the 'label' dataset of input h5 files; metrics go to OUTPUT/summary.json")
    p.add_argument("--policy", choices=("strict", "worst", "paper"), default="strict", help="empty-mask policy")
    p.add_argument("--empty-class-policy", choices=EMPTY_CLASS_POLICIES, default="nan", help=EMPTY_CLASS_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-quality", action="store_true", help="skip quality.json (per-case scores and flags, bfaseg.suggest)")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------- command
def run(args) -> int:
    from bfaseg.evaluation import predict_files
    from bfaseg.inference.predictor import Predictor
    from bfaseg.suggest import QualityMonitor  # quality.json: scores and flags per case

    refuse_inapplicable(args, [
        (option, dest, lambda a: None if a.labels else "applies only with --labels (without reference labels "
                                                        "nothing is scored)")
        for option, dest in (("--policy", "policy"), ("--empty-class-policy", "empty_class_policy"))])
    predictor = Predictor.from_args(args)
    quality = None if args.no_quality else QualityMonitor(args.checkpoint, device=predictor.device,
                                                          precision=predictor.precision, which=args.model)
    doc, written = predict_files(
        predictor, args.input, args.output, labels=args.labels, probabilities=args.probabilities,
        h5_format=args.h5_format, policy=args.policy, empty_class=args.empty_class_policy, quality=quality,
        progress=not args.no_progress,
    )
    msg = f"wrote {len(written)} file(s) to {Path(args.output)}"
    if "mean" in doc:
        m = doc["mean"]
        msg += f"; mean Dice {m['dice']:.4f}, HD95 {m['hd95']:.2f} {doc['units']}"
    print(msg, file=sys.stdout)
    return 0
