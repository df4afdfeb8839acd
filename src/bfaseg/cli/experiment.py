"""``bfaseg experiment``: the comparison tables of docs/RESULTS.md, resumable."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "experiment",
        help="train and evaluate several methods/seeds under one budget; write a results table",
        description="Train each method variant with each seed from one base config (same budget for all), "
        "evaluate the last and best checkpoints, write results.json, results.md and val_curves.png. "
        "Re-running skips finished runs and resumes interrupted ones (also in another session); the tables are "
        "rewritten as each run finishes. Every table states the images per step of each method.",
    )
    p.add_argument("config", help="base config shared by every run, e.g. configs/acdc/cpu.yaml")
    p.add_argument("--methods", default="supervised,mean_teacher,ua_mt,bcp,bfa,full",
                   help="comma-separated variants (also supervised_matched and full_matched: batch_labeled = BFA's "
                        "student images per step; bfa_no_head, bfa_no_mixing, bfa_no_align, bfa_all_off, "
                        "mean_teacher_no_consistency; the variants tried on val: bfa_fast_teacher, bfa_confident, "
                        "bcp_slow_teacher, ...; an unknown name lists them all)")
    p.add_argument("--seeds", default="1,2", help="comma-separated seeds")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run up to N independent (method, seed) runs at once, in separate processes of one "
                        "thread each (train.threads=1); default 1: one run at a time")
    p.add_argument("--iterations", type=int, help="override train.iterations for every run")
    p.add_argument("--data", help="override data.root")
    p.add_argument("--labeled", type=int, help="override data.labeled (first N of the training list)")
    p.add_argument("--eval-list", help="list (relative to the data root) to evaluate on; default: the validation split")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--output", required=True, help="experiment folder (one sub-folder per run)")
    p.add_argument("--no-train", action="store_true",
                   help="only evaluate finished runs and rewrite the tables (unfinished runs are skipped)")
    p.add_argument("--reevaluate", action="store_true",
                   help="evaluate finished runs again (after a change to inference or metrics) instead of "
                        "reusing the evaluations stored in results.json")
    p.add_argument("--force", action="store_true",
                   help="start over the runs in --output that were made with another config (they are moved to "
                        "OUTPUT/replaced/, not deleted); without it such a folder is refused")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from bfaseg.errors import BfasegError
    from bfaseg.experiments import run_experiment

    for option, value in (("--iterations", args.iterations), ("--labeled", args.labeled)):
        if value is not None and value < 1:  # 0 must not read as "not given"
            raise BfasegError(f"{option}: must be >= 1, got {value}")
    from bfaseg.cli.main import check_set_keys, refuse_inapplicable

    refuse_inapplicable(args, [("--force", "force", lambda a: "starts runs over, which --no-train forbids; "
                                "give one of them" if a.no_train else None)])
    check_set_keys(args.overrides, {key: f"{option} {value}" for key, option, value in (
        ("train.iterations", "--iterations", args.iterations), ("data.root", "--data", args.data),
        ("data.labeled", "--labeled", args.labeled), ("train.threads", "--jobs", args.jobs if args.jobs > 1 else None))
        if value is not None})
    overrides = list(args.overrides)
    if args.iterations is not None:
        overrides.append(f"train.iterations={args.iterations}")
    if args.data:
        overrides.append(f"data.root={args.data}")
    if args.labeled is not None:
        overrides.append(f"data.labeled={args.labeled}")
    variants = [v.strip() for v in args.methods.split(",") if v.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise BfasegError(f"--seeds: expected comma-separated integers (e.g. 1,2), got {args.seeds!r}") from None
    # empty or repeated entries: checked with every config by experiments.plan_runs
    run_experiment(args.config, variants, seeds, args.output, overrides=overrides, eval_list=args.eval_list,
                   progress=not args.no_progress and args.jobs == 1, train=not args.no_train,
                   reevaluate=args.reevaluate, jobs=args.jobs, force=args.force)
    print((Path(args.output) / "results.md").read_text(encoding="utf-8"))
    return 0
