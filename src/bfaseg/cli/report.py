"""``bfaseg report RUN_DIR [RUN_DIR ...]``: training curves, a comparison table, overlays.

Writes to ``--output`` (default ``report/``):

* ``loss.png`` and ``val_dice.png``: training loss and validation Dice vs iteration, one line per run;
* ``comparison.md``: run, method, best validation Dice @ iteration, last validation Dice, iterations;
* with ``--data ROOT`` (or for runs on synthetic data) and a checkpoint in the run:
  ``overlays/<run>_<case>.png`` for the first ``--overlay-cases`` cases of the run's validation
  split: the slice with the most ground truth, image in gray, ground truth solid, prediction dashed.
  ``--tensorboard`` also adds these figures to the run's TensorBoard log (tag ``overlay/<case>``).

All or nothing (``bfaseg.io.output.staged_outputs``): the whole report is built in a hidden staging folder
inside ``--output`` and its files move into place only once every one is written; a failure (a plot that
fails, a full disk, Ctrl-C) leaves no new file and an earlier report in the same place as it was. The
TensorBoard figures are added only after that.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from bfaseg.errors import BfasegError


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="training curves, comparison table and prediction overlays of runs",
        description="Summarise one or more run folders (log.jsonl, checkpoints) into PNG figures and markdown.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by `bfaseg train`")
    p.add_argument("--output", default="report", metavar="DIR", help="output folder (default: report/)")
    p.add_argument("--data", metavar="ROOT", help="dataset root for prediction overlays of validation cases")
    p.add_argument("--overlay-cases", type=int, default=3, metavar="N", help="validation cases per run (default 3)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="checkpoint for the overlays")
    p.add_argument("--device", default="auto", help="device for the overlay predictions")
    p.add_argument("--tensorboard", action="store_true", help="also add the overlays to each run's TensorBoard log")
    p.add_argument("--plateau", action="store_true",
                   help="apply the plateau rule to each run's validation curve: plateaued when less than "
                        "--plateau-points Dice points were gained over the last quarter of the run; prints the gain")
    p.add_argument("--plateau-points", type=float, default=1.0, metavar="P", help="threshold of --plateau (default 1)")
    p.set_defaults(func=run)


def make_overlays(run_log, args, out_dir: Path, tensorboard: list | None = None) -> list[Path]:
    """Overlay PNGs of the run's first validation cases in ``out_dir/overlays``; with ``tensorboard`` (a list)
    each figure is also rendered and appended as ``(run folder, tag, iteration, HxWx3 image)``, for
    :func:`add_to_tensorboard` once the report is in place."""
    from bfaseg.data.build import stored_validation_cases
    from bfaseg.inference.predictor import Predictor
    from bfaseg.reporting import overlay_figure, pick_slice, save_figure

    ckpt = run_log.path / "checkpoints" / f"{args.checkpoint}.pt"
    if not ckpt.is_file():
        alt = run_log.path / "checkpoints" / "last.pt"
        if not alt.is_file():
            print(f"note: {run_log.name}: no checkpoint, no overlays", file=sys.stderr)
            return []
        ckpt = alt
    predictor = Predictor.from_checkpoint(ckpt, device=args.device, precision="auto", mode="fast")
    cfg, state = predictor.cfg, predictor.state
    # the validation ids stored in the checkpoint (older checkpoints: the split recomputed from the config)
    cases = stored_validation_cases(cfg, state.get("data") or {}, Path(args.data) if args.data else None,
                                    args.overlay_cases)
    slices_2d = cfg.data.dataset == "acdc" or (cfg.data.dataset == "synthetic" and cfg.data.synthetic_ndim == 2)
    axis = 0 if slices_2d else 2
    written = []
    for c in cases:
        labels, _, _ = predictor.predict(c.image)
        idx = pick_slice(c.label, axis)
        take = lambda a: np.take(a, idx, axis=axis)  # noqa: E731
        img, gt, pred = take(c.image), take(c.label), take(labels)
        if axis == 2:  # (x, y) slices: show y down, x across (radiological-ish view)
            img, gt, pred = img.T, gt.T, pred.T
        title = f"{run_log.name} / {c.case_id} (slice {idx}, iteration {state.get('iteration')})"
        fig = overlay_figure(img, gt, pred, num_classes=cfg.model.num_classes, title=title)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{run_log.name}_{c.case_id}")
        if tensorboard is not None:  # rendered as TensorBoard's add_figure would, written after the report
            tensorboard.append((run_log.path, f"overlay/{c.case_id}", int(state.get("iteration") or 0),
                                _figure_pixels(fig)))
        written.append(save_figure(fig, out_dir / "overlays" / f"{safe}.png"))
    return written


def _figure_pixels(fig) -> np.ndarray:
    """The figure as an RGB array (H, W, 3), drawn as ``SummaryWriter.add_figure`` draws it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def add_to_tensorboard(figures: list) -> None:
    """``--tensorboard``: add the overlay figures to each run's TensorBoard log (run folder -> its own writer)."""
    from torch.utils.tensorboard import SummaryWriter

    by_run: dict = {}
    for run_path, tag, step, pixels in figures:
        by_run.setdefault(run_path, []).append((tag, step, pixels))
    for run_path, items in by_run.items():
        tb = SummaryWriter(str(run_path / "tensorboard"))
        try:
            for tag, step, pixels in items:
                tb.add_image(tag, pixels, global_step=step, dataformats="HWC")
        finally:
            tb.close()


def run(args) -> int:
    from bfaseg.reporting import check_plateau_points, comparison_table, plot_curves, read_runs
    from bfaseg.io.files import atomic_write_bytes

    from bfaseg.io.output import check_output_dir, remove_stale_temporaries, staged_outputs
    from bfaseg.cli.main import refuse_inapplicable

    if args.overlay_cases < 0:
        raise BfasegError("--overlay-cases: must be >= 0")
    no_overlays = lambda a: None if a.overlay_cases else "applies to the overlays, which --overlay-cases 0 turns off"  # noqa: E731
    refuse_inapplicable(args, [
        ("--plateau-points", "plateau_points", lambda a: None if a.plateau else "applies only with --plateau"),
        *((option, dest, no_overlays) for option, dest in (("--data", "data"), ("--checkpoint", "checkpoint"),
                                                           ("--device", "device"), ("--tensorboard", "tensorboard")))])
    check_plateau_points(args.plateau_points)
    check_output_dir(args.output)
    runs = read_runs(args.runs)
    for d, r in zip(args.runs, runs):
        if r.n_bad_lines:
            print(f"note: {d}/log.jsonl: skipped {r.n_bad_lines} unreadable line(s)", file=sys.stderr)
    out = Path(args.output)
    tensorboard = None
    if args.tensorboard and args.overlay_cases:
        try:
            import torch.utils.tensorboard  # noqa: F401
            tensorboard = []  # figures for the runs' logs, added once the report is in place
        except ImportError:
            print("note: tensorboard is not installed; overlays only as PNG", file=sys.stderr)
    # --output may be a run folder a training writes into right now: only staging folders are stale here
    remove_stale_temporaries(out, atomic_files=False)
    # all or nothing: built in a staging folder inside `out`, moved into place only when complete
    with staged_outputs(out, keep_finished_on_interrupt=False) as stage:
        written = plot_curves(runs, stage)
        table = comparison_table(runs)
        md = "# Run comparison\n\n" + table
        if written:
            md += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in written) + "\n"
        overlays = []
        if args.overlay_cases:
            for r in runs:
                figures = [] if tensorboard is not None else None
                try:
                    overlays += make_overlays(r, args, stage, figures)
                except BfasegError as exc:
                    print(f"note: {r.name}: no overlays ({exc})", file=sys.stderr)
                    for p in (stage / "overlays").glob("*.png"):  # none of this run's, not even the first ones
                        if p not in overlays:
                            p.unlink()
                else:
                    if figures:
                        tensorboard += figures
        if overlays:
            md += "\n## Validation overlays (GT solid, prediction dashed)\n\n"
            md += "\n".join(f"![{p.stem}](overlays/{p.name})" for p in overlays) + "\n"
        if args.plateau:
            from bfaseg.reporting import plateau_line

            lines = [plateau_line(r, points=args.plateau_points) for r in runs]
            md += "\n## Plateau rule\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"
        atomic_write_bytes(stage / "comparison.md", lambda f: f.write(md.encode()))
    if tensorboard:
        add_to_tensorboard(tensorboard)
    print(table, end="")
    if args.plateau:
        print("\n".join(lines))
    print(f"wrote {out / 'comparison.md'}, {len(written)} curve figure(s), {len(overlays)} overlay(s)")
    return 0
