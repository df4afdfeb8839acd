"""``bfaseg demo``: supervised-only vs BFA with 10 % labels on built-in synthetic phantoms (CPU, minutes)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

DEMO_CONFIG = {
    # 24 phantoms whose contrast, bias and noise vary per case; 10 % (2 cases) labeled
    "data": {"dataset": "synthetic", "synthetic_ndim": 2, "synthetic_size": [32, 32], "patch_size": [32, 32],
             "synthetic_cases": 24, "synthetic_classes": 3, "synthetic_val_cases": 6, "labeled_fraction": 0.1},
    "model": {"name": "unet2d", "num_classes": 3},
    "train": {"iterations": 200, "batch_labeled": 4, "batch_unlabeled": 4, "precision": "fp32", "lr": 0.01,
              "val_every": 100, "log_every": 20, "checkpoint_every": 200, "keep_checkpoints": 0, "threads": 1},
}


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train supervised-only and BFA on synthetic phantoms (10%% labels) and print both rows",
        description="Generates synthetic 2-D phantoms, trains a supervised baseline and BFA with 10% of the "
        "cases labeled on the CPU, evaluates both on held-out phantoms and prints Dice and HD95 side by side.",
    )
    p.add_argument("--iterations", type=int, default=DEMO_CONFIG["train"]["iterations"], help="per method")
    p.add_argument("--output", help="keep the runs here (default: a temporary folder); a second demo with the "
                   "same settings reuses them, other settings need --overwrite")
    p.add_argument("--overwrite", action="store_true", help="retrain in --output although it holds a demo "
                   "with other settings (its supervised/ and bfa/ runs are replaced)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def prepare_demo_folder(root: Path, settings: dict, overwrite: bool) -> Path:
    """Refuse to report runs of other settings: ``demo.json`` records what the folder's runs are."""
    import shutil

    from bfaseg.errors import BfasegError
    from bfaseg.io.output import check_output_dir
    from bfaseg.io.files import atomic_write_bytes

    check_output_dir(root)
    record = root / "demo.json"
    kept = [root / m for m in ("supervised", "bfa") if (root / m).exists()]
    if record.is_file():
        try:
            old = json.loads(record.read_text())
        except ValueError:
            old = None
        if old != settings:
            if not overwrite:
                raise BfasegError(f"--output {root}: holds a demo with other settings ({old}); pass --overwrite "
                                  f"to retrain it with {settings}, or choose another --output")
            for d in kept:
                shutil.rmtree(d)
    elif root.is_dir() and any(root.iterdir()):
        raise BfasegError(f"--output {root}: not empty and not a demo folder (no demo.json); choose another --output")
    atomic_write_bytes(record, lambda f: f.write((json.dumps(settings) + "\n").encode()))
    return root


def run(args) -> int:
    import numpy as np

    from bfaseg.config import validate_config
    from bfaseg.data.build import build_data
    from bfaseg.experiments import evaluate_checkpoint
    from bfaseg.training.trainer import Trainer

    from bfaseg.errors import BfasegError

    if args.iterations < 1:
        raise BfasegError(f"--iterations: must be >= 1, got {args.iterations}")
    from bfaseg.cli.main import refuse_inapplicable

    refuse_inapplicable(args, [("--overwrite", "overwrite", lambda a: None if a.output else
                                "applies only with --output (without it the demo trains in a new temporary folder)")])
    tmp = None
    if args.output:
        root = prepare_demo_folder(Path(args.output), {"iterations": args.iterations, "seed": args.seed},
                                   args.overwrite)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bfaseg-demo-")
        root = Path(tmp.name)
    rows = []
    for method in ("supervised", "bfa"):
        raw = json.loads(json.dumps(DEMO_CONFIG))
        raw["train"].update(iterations=args.iterations, seed=args.seed)
        raw["method"] = {"name": method}
        cfg = validate_config(raw, source="demo")
        data = build_data(cfg.data, cfg.model.num_classes, progress=False)
        run_dir = root / method
        resume = (run_dir / "checkpoints" / "last.pt").exists()
        if not (run_dir / "train_summary.json").exists():
            Trainer(cfg, run_dir, resume=resume, data=data, progress=not args.no_progress).fit()
        result = evaluate_checkpoint(run_dir / "checkpoints" / "last.pt", data.val)
        rows.append((method, result["mean"]))
    print()
    print(f"Synthetic phantoms, {int(DEMO_CONFIG['data']['labeled_fraction'] * 100)}% labeled "
          f"({args.iterations} iterations each, last checkpoint, {len(data.val)} held-out phantoms)")
    print(f"{'method':<12} {'Dice %':>8} {'HD95 (vox)':>11} {'ASD (vox)':>10}")
    for method, m in rows:
        fmt = lambda v, s=1.0: f"{v * s:.2f}" if v is not None and np.isfinite(v) else "n/a"  # noqa: E731
        print(f"{method:<12} {fmt(m['dice'], 100):>8} {fmt(m['hd95']):>11} {fmt(m['asd']):>10}")
    if args.output:
        print(f"runs kept in {root}")
    if tmp is not None:
        tmp.cleanup()
    return 0
