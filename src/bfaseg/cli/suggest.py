"""``bfaseg suggest``: which unlabeled scans to annotate next.

    bfaseg suggest --checkpoint runs/acdc_bfa/checkpoints/last.pt --data ../shared/data/acdc \
        --strategy disagreement --top 5 --output runs/acdc_bfa/suggest

Scores every unlabeled case of the run (the training-list entries its config leaves unlabeled) or
the cases of ``--split LIST``, ranks them and writes ``suggestions.csv``, ``suggestions.json`` and
``suggestions.png`` (the top cases' most uncertain slices, uncertainty overlaid). Strategies and
scores: :mod:`bfaseg.suggest.scoring`.
"""

from __future__ import annotations

import sys

from bfaseg.cli.main import refuse_inapplicable
from bfaseg.errors import BfasegError


def register(sub) -> None:
    from bfaseg.suggest import STRATEGIES

    p = sub.add_parser(
        "suggest",
        help="rank unlabeled scans by how much annotating them should help",
        description="Score the unlabeled pool (or a list) with a checkpoint; write ranked suggestions.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file (runs/<run>/checkpoints/last.pt)")
    p.add_argument("--data", metavar="ROOT", help="dataset root (not needed for synthetic runs)")
    p.add_argument("--split", metavar="LIST", help="list file of case ids to score (relative to ROOT or a path); "
                   "default: the run's unlabeled pool")
    p.add_argument("--dataset", choices=("la", "pancreas", "acdc", "nifti"),
                   help="layout of ROOT (default: the checkpoint's data.dataset)")
    p.add_argument("--strategy", default="entropy", help=f"one of {', '.join(STRATEGIES)} (default: entropy)")
    p.add_argument("--top", type=int, default=5, help="how many cases to suggest (default: 5)")
    p.add_argument("--max-per-patient", type=int, default=1,
                   help="diversity: at most this many suggestions per patient (0 = no limit; default: 1)")
    p.add_argument("--passes", type=int, default=8, help="mc_dropout: forward passes (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of random and mc_dropout (default: 0)")
    p.add_argument("--reference", action="store_true",
                   help="also compute the validation reference of the quality flags (cached beside the checkpoint)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="forward-pass precision")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for suggestions.csv/.json/.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from bfaseg.precision import resolve_device
    from bfaseg.suggest import suggest

    if args.passes < 2:
        raise BfasegError(f"--passes: must be at least 2, got {args.passes}")
    refuse_inapplicable(args, [
        ("--passes", "passes", lambda a: None if a.strategy == "mc_dropout" else
         f"applies to --strategy mc_dropout only, not {a.strategy}"),
        ("--seed", "seed", lambda a: None if a.strategy in ("mc_dropout", "random") else
         f"applies to --strategy random and mc_dropout only, not {a.strategy}")])
    device = str(resolve_device(args.device, option="--device"))
    doc = suggest(
        args.checkpoint, args.data, strategy=args.strategy, top=args.top, output=args.output, split=args.split,
        dataset=args.dataset, max_per_patient=args.max_per_patient, mc_passes=args.passes, seed=args.seed,
        device=device, precision=args.precision, reference=args.reference, progress=not args.no_progress,
    )
    print(f"{doc['n_scored']} cases scored ({args.strategy}); suggested: {', '.join(doc['selected'])}", file=sys.stdout)
    print(f"wrote {args.output}/suggestions.csv, suggestions.json, suggestions.png", file=sys.stdout)
    return 0
