"""``bfaseg train CONFIG.yaml``: train any method from a validated YAML config."""

from __future__ import annotations

import json
from pathlib import Path

from bfaseg.config import load_config


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a YAML config",
        description="Train a segmentation model with any method (supervised, mean_teacher, ua_mt, bcp, bfa). "
        "Works under torchrun for multi-process DDP.",
    )
    p.add_argument("config", help="YAML config file, or a packaged config by name (e.g. acdc/bfa_10; see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.iterations=100 (repeatable)")
    p.add_argument("--output", help="run folder (default: the config's `output`, else runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--force", action="store_true",
                   help="start over when --output already holds a run: the old run folder is moved aside to "
                        "OUTPUT.replaced-N (not deleted) and a fresh run starts; without it such a folder is refused")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (bit-exact reruns on CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to log.jsonl)")
    p.set_defaults(func=run)


def run(args) -> int:
    from bfaseg.cli.main import check_set_keys, refuse_inapplicable

    refuse_inapplicable(args, [("--force", "force", lambda a: "starts the run over, which --resume contradicts; "
                                "give one of them" if a.resume else None)])
    check_set_keys(args.overrides, {"train.deterministic": "--deterministic"} if args.deterministic else {})
    overrides = list(args.overrides)
    if args.deterministic:
        overrides.append("train.deterministic=true")
    cfg = load_config(args.config, overrides)
    from bfaseg.methods import check_method_params

    check_method_params(cfg, source=str(args.config))
    output = Path(args.output or cfg.output or Path("runs") / Path(args.config).stem)
    from bfaseg.io.output import check_output_dir

    check_output_dir(output)
    from bfaseg.training.distributed import shutdown
    from bfaseg.training.trainer import Trainer

    trainer = Trainer(cfg, output, resume=args.resume, force=args.force, progress=not args.no_progress)
    try:
        summary = trainer.fit()
    finally:
        shutdown(trainer.dist)
    if trainer.dist.is_main:
        print(json.dumps(summary, indent=2))
    return 0
