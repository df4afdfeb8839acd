"""Each loss term's share of the gradient, for a checkpoint of a method that exposes its loss terms (BFA).

    python benchmarks/gradient_shares.py RUN/checkpoints/iter_2000.pt                # 4 batches from there on
    python benchmarks/gradient_shares.py RUN --batches 8 --json                      # RUN = checkpoints/last.pt
    python benchmarks/gradient_shares.py CKPT --set align_form=contrast --set align_target=memory
    python benchmarks/gradient_shares.py CKPT --boundary-errors --batches 16    # errors near pseudo boundaries

For the training batches of the iterations after the checkpoint's (drawn as the run drew them), the
gradient of every weighted, ramped loss term is taken on its own: its norm on the decoder features the
boundary head and the alignment read, and on the whole network, each also as a share of the gradient of
the whole loss. ``--set`` changes method parameters (another alignment form) on the same weights. The
data comes from the checkpoint's config (``data.root``); ``--data`` points it elsewhere.

``--boundary-errors`` instead scores, on the unlabeled images of those batches (with their true labels,
which training never sees), the teacher's pseudo-labels, the student's segmentation and its boundary
head near the pseudo-label boundaries (within 2 voxels) and away from them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a checkpoint file, or a run folder (its checkpoints/last.pt)")
    ap.add_argument("--batches", type=int, default=4, help="training batches to average over (default 4)")
    ap.add_argument("--iteration", type=int, help="first iteration (default: the checkpoint's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method parameter override")
    ap.add_argument("--data", help="override data.root")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--boundary-errors", action="store_true",
                    help="errors of teacher, student and boundary head near pseudo-label boundaries")
    args = ap.parse_args(argv)

    import torch

    from bfaseg.errors import BfasegError
    from bfaseg.training.diagnostics import gradient_shares, pseudo_boundary_errors, trainer_from_checkpoint

    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    overrides = {}
    for item in args.set:
        if "=" not in item:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        overrides[key.removeprefix("method.")] = yaml.safe_load(value)
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trainer, ckpt_iteration = trainer_from_checkpoint(path, tmp, overrides, data_root=args.data)
            first = ckpt_iteration if args.iteration is None else args.iteration
            iterations = list(range(first, first + args.batches))
            if args.boundary_errors:
                result = pseudo_boundary_errors(trainer, iterations)
            else:
                result = gradient_shares(trainer, iterations)
    except BfasegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result.update(checkpoint=str(path), overrides=overrides)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if args.boundary_errors:
        print(f"{path}: unlabeled images of iterations {result['iterations'][0]}-{result['iterations'][-1]}, "
              f"true labels; 'near' = within {result['band']} voxels of a pseudo-label boundary")
        print(f"{'region':<8}{'voxels %':>9}{'teacher err %':>15}{'student err %':>15}{'head F1':>9}")
        for name in ("near", "far"):
            r = result[name]
            f1 = f"{r['head_f1']:>9.3f}" if "head_f1" in r else f"{'-':>9}"
            print(f"{name:<8}{100 * r['voxel_share']:>9.1f}{100 * r['teacher_error']:>15.2f}{100 * r['student_error']:>15.2f}{f1}")
        return 0
    print(f"{path}: iterations {result['iterations'][0]}-{result['iterations'][-1]}, decoder stage {result['stage']}"
          + (f", overrides {overrides}" if overrides else ""))
    print(f"{'term':<16}{'value':>9}{'|g| features':>14}{'share':>8}{'|g| network':>13}{'share':>8}")
    for name, r in result["terms"].items():
        print(f"{name:<16}{r['value']:>9.4f}{r['features']:>14.3e}{r['share_features']:>8.3f}"
              f"{r['network']:>13.3e}{r['share_network']:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
