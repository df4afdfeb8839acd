"""Comparison tables under one shared budget: train each (variant, seed), evaluate the last and
the best checkpoint on an evaluation list, write results.json / results.md / plots.

Every run lives in ``<output>/<variant>_s<seed>``; finished runs are skipped and
interrupted ones resumed (from ``checkpoints/last.pt``), so the whole table can be rebuilt by
re-running the command, in another session or on another machine. ``jobs`` > 1 runs independent
runs in parallel processes of one thread each; the tables are rewritten whenever a run finishes.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from bfaseg.config import apply_overrides, load_yaml, validate_config
from bfaseg.errors import BfasegError, Interrupted
from bfaseg.io.files import atomic_write_text
from bfaseg.methods import check_method_params, resolve_teacher_mode

log = logging.getLogger(__name__)

# a variant key (not a config key): train.batch_labeled := the student images per step of that variant,
# so a supervised control gets the same number of student forward images per step (equal compute)
MATCH = "match_student_images_of"

# BFA's first alignment form (its default until the contrastive form replaced it)
PROTOTYPE = {"align_form": "prototype", "align_target": "gt"}

# teacher modes pinned by variants: the eval mode the mean teacher and BCP had until train mode (their references')
# became their default, so the variants measured with it keep their meaning; train mode to try it elsewhere
EVAL_TEACHER = "eval"
TRAIN_TEACHER = "train"

# the references' 2-D data pipeline, for parity runs (docs/METHOD.md, "Differences from the reference code"): each
# labeled slice once per cycle (TwoStreamBatchSampler / a shuffled DataLoader), integer rotation angles with a nearest
# image interpolation, slices resized with nearest (as in the references' training and test_single_volume)
REFERENCE_DATA = {"sampler": "epoch", "rotation_style": "reference", "slice_resize": "nearest"}

# name -> config overrides; every variant shares the base config's budget
VARIANTS: dict[str, dict] = {
    "supervised": {"method": {"name": "supervised"}},
    "supervised_matched": {"method": {"name": "supervised"}, MATCH: "bfa"},
    "full": {"method": {"name": "supervised"}, "data": {"labeled": None, "labeled_fraction": None}},
    "full_matched": {"method": {"name": "supervised"}, "data": {"labeled": None, "labeled_fraction": None},
                     MATCH: "bfa"},
    # the teacher predicts in train mode (BatchNorm on its own noisy unlabeled batch, dropout), as the SSL4MIS
    # reference's: the mean teacher's default since it beat eval mode (earlier runs: mean_teacher_teacher_train)
    # supervised-only with SSL4MIS's data pipeline (its RandomGenerator's split is bfaseg's: rot90+flip or rotate)
    "supervised_reference_data": {"method": {"name": "supervised"}, "data": REFERENCE_DATA},
    "mean_teacher": {"method": {"name": "mean_teacher"}},
    # the mean teacher as it was before: its teacher in eval mode (EMA-averaged BatchNorm statistics, no dropout)
    "mean_teacher_teacher_eval": {"method": {"name": "mean_teacher"}, "train": {"teacher_mode": EVAL_TEACHER}},
    # control: the mean teacher's batches (labeled and unlabeled images through one BatchNorm) without
    # its consistency term, to tell a weak teacher signal from the batch composition; made (and pinned)
    # with the eval-mode teacher of its time (the term is off, but the teacher still runs)
    "mean_teacher_no_consistency": {"method": {"name": "mean_teacher", "consistency": 0.0},
                                    "train": {"teacher_mode": EVAL_TEACHER}},
    # UA-MT with the reference's constants (entropy bound ln 2, consistency / (2 x certain voxels), also at K = 4, as
    # SSL4MIS's 2-D port) and its train-mode teacher: the default since it scored above the reference on ACDC val
    # (earlier runs: ua_mt_ssl4mis_2d)
    "ua_mt": {"method": {"name": "ua_mt"}},
    # UA-MT as it was before: bound ln K, consistency / (K x certain voxels), eval-mode teacher
    "ua_mt_ln_k_teacher_eval": {"method": {"name": "ua_mt", "entropy_bound_classes": None, "consistency_classes": None},
                                "train": {"teacher_mode": EVAL_TEACHER}},
    # the default minus one of its three changes at a time
    "ua_mt_teacher_eval": {"method": {"name": "ua_mt"}, "train": {"teacher_mode": EVAL_TEACHER}},
    "ua_mt_entropy_ln_k": {"method": {"name": "ua_mt", "entropy_bound_classes": None}},
    "ua_mt_consistency_div_k": {"method": {"name": "ua_mt", "consistency_classes": None}},
    # BCP's teacher predicts in train mode, as both references' (ema_model.train()): its default since it beat
    # eval mode by 11 points on ACDC val (earlier runs: bcp_teacher_train)
    "bcp": {"method": {"name": "bcp"}},
    # BCP as it was before: its teacher in eval mode
    "bcp_teacher_eval": {"method": {"name": "bcp"}, "train": {"teacher_mode": EVAL_TEACHER}},
    # BCP with the reference's constant learning rate (its two stages never decay it; bfaseg's poly schedule does)
    "bcp_constant_lr": {"method": {"name": "bcp"}, "train": {"schedule": "constant"}},
    # BCP with its reference's data pipeline (its RandomGenerator: half rot90+flip, a quarter rotation, a quarter
    # unaugmented), its one paste box per batch, and its one student forward per mixing direction, one at a time
    "bcp_reference_data": {"method": {"name": "bcp"}, "data": {**REFERENCE_DATA, "rotation": "both_or_none"}},
    "bcp_box_per_batch": {"method": {"name": "bcp", "box_per_batch": True}},
    "bcp_per_direction": {"method": {"name": "bcp", "per_direction_forward": True}},
    # both of the two that each moved seed 1 toward the reference: its data pipeline and its per-direction forward
    "bcp_reference_data_per_direction": {"method": {"name": "bcp", "per_direction_forward": True},
                                         "data": {**REFERENCE_DATA, "rotation": "both_or_none"}},
    # the references' resize after each draw's augmentation (a quarter turn of a non-square slice changes its aspect
    # ratio), alone; then BCP with every switch to its reference's choice at once (data pipeline with that resize,
    # per-direction forward, one box per batch, constant lr)
    "bcp_resize_after_augment": {"method": {"name": "bcp"}, "data": {"slice_resize": "nearest_after_augment"}},
    "bcp_as_reference": {"method": {"name": "bcp", "per_direction_forward": True, "box_per_batch": True},
                         "data": {**REFERENCE_DATA, "rotation": "both_or_none", "slice_resize": "nearest_after_augment"},
                         "train": {"schedule": "constant"}},
    # control for BFA's slow teacher: BCP (which BFA extends) with the same teacher EMA decay, 0.999; made (and
    # pinned) with the eval-mode teacher of its time, as BFA's
    "bcp_slow_teacher": {"method": {"name": "bcp"}, "train": {"ema_decay": 0.999, "teacher_mode": EVAL_TEACHER}},
    "bfa": {"method": {"name": "bfa"}},
    # BFA (built on BCP) with its teacher in train mode, as BCP's reference runs its teacher
    "bfa_teacher_train": {"method": {"name": "bfa"}, "train": {"teacher_mode": TRAIN_TEACHER}},
    # the ablation: today's default minus one part (alignment off: its form is unused)
    "bfa_no_head": {"method": {"name": "bfa", "boundary_head": False}},
    "bfa_no_mixing": {"method": {"name": "bfa", "boundary_mixing": False}},
    "bfa_no_align": {"method": {"name": "bfa", "alignment": False}},
    "bfa_all_off": {"method": {"name": "bfa", "boundary_head": False, "boundary_mixing": False, "alignment": False}},
    # BFA with the first alignment form (one cosine between two class prototypes), the default until the
    # contrastive form beat it on two seeds (docs/RESULTS.md, "BFA ablation, alignment and mixing forms"), and its ablation
    "bfa_align_prototype": {"method": {"name": "bfa", **PROTOTYPE}},
    "bfa_align_prototype_no_head": {"method": {"name": "bfa", "boundary_head": False, **PROTOTYPE}},
    "bfa_align_prototype_no_mixing": {"method": {"name": "bfa", "boundary_mixing": False, **PROTOTYPE}},
    # improvements tried on the validation data, all with the prototype form of their time:
    # pseudo-labels keep only each class's largest component
    "bfa_lcc_pseudo": {"method": {"name": "bfa", "component_filter": 1.0, **PROTOTYPE}},
    # a boundary-distance loss against far-away false positives
    "bfa_distance": {"method": {"name": "bfa", "lambda_distance": 0.5, **PROTOTYPE}},
    # confident pseudo-labels only (fights wrong-side RV islands)
    "bfa_confident": {"method": {"name": "bfa", "confidence": 0.9, **PROTOTYPE}},
    # both pseudo-label filters together
    "bfa_lcc_confident": {"method": {"name": "bfa", "component_filter": 1.0, "confidence": 0.9, **PROTOTYPE}},
    # alignment forms that cannot be met by two batch means agreeing (issue: alignment that carries a signal):
    # every pseudo-origin boundary voxel pulled to its class's ground-truth boundary prototype (cosine)
    "bfa_align_voxel": {"method": {"name": "bfa", "align_form": "voxel", "align_target": "gt", "lambda_align": 0.5}},
    # a boundary-mixing form that carries information the pseudo-label does not: in pseudo-label regions the
    # head learns the teacher's boundary-head probabilities (a head trained on ground-truth boundaries)
    "bfa_teacher_boundary": {"method": {"name": "bfa", "pseudo_boundary": "teacher_head", **PROTOTYPE}},
    # BFA with BCP's teacher (EMA 0.99): the default before the slow teacher was chosen on val (docs/RESULTS.md)
    "bfa_fast_teacher": {"method": {"name": "bfa", "teacher_ema_decay": 0.99, **PROTOTYPE}},
}
METRICS = ("dice", "jaccard", "hd95", "asd")
EVALUATIONS = ("last", "best", "last_lcc")


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def variant_config(base_raw: dict, variant: str, seed: int, overrides: list[str]):
    if variant not in VARIANTS:
        raise BfasegError(f"--methods: unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
    spec = dict(VARIANTS[variant])
    match = spec.pop(MATCH, None)
    raw = _merge(base_raw, spec)
    raw = _merge(raw, {"train": {"seed": seed}})
    if (base_raw.get("method") or {}).get("name") != spec["method"]["name"]:
        raw["method"] = dict(spec["method"])  # the base's method params belong to another method
    raw = apply_overrides(raw, overrides)
    if match:
        student = images_per_step(variant_config(base_raw, match, seed, overrides))["student"]
        raw = _merge(raw, {"train": {"batch_labeled": student}})
    cfg = validate_config(raw, source=f"variant {variant}")
    check_method_params(cfg, source=f"variant {variant}")
    return cfg


def images_per_step(cfg) -> dict[str, int]:
    """Student and teacher forward images of one training step of this config (``*_pretrain``: during
    the method's pre-training phase, where it differs)."""
    from bfaseg.methods import get_method_class

    cls = get_method_class(cfg.method.name)
    unlabeled = cfg.train.batch_unlabeled if cls.uses_unlabeled else 0
    return cls.images_per_step(cls.Params.model_validate(cfg.method_params()), cfg.train.batch_labeled, unlabeled)


def evaluate_checkpoint(path: Path, cases, eval_cfg_override=None) -> dict:
    """Metrics (voxels) of one checkpoint on in-memory cases, predicted as the run validated:
    on the run's device, in the run's precision, with the network it validated (``eval.model``)."""
    import dataclasses

    from bfaseg.evaluation import evaluate_cases
    from bfaseg.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(path, device="run", precision="run")
    ev = eval_cfg_override or predictor.cfg.eval
    predictor = dataclasses.replace(
        predictor, mode=ev.mode, stride=ev.stride, overlap=ev.overlap, batch_size=ev.batch_size,
        largest_component=ev.largest_component,
    )
    return evaluate_cases(predictor, cases)


@dataclass
class PlannedRun:
    name: str
    variant: str
    seed: int
    cfg: object  # RunConfig

    @property
    def images(self) -> dict[str, int]:
        return images_per_step(self.cfg)


def plan_runs(base_config: str, variants: list[str], seeds: list[int], overrides: list[str],
              eval_list: str | None = None) -> list[PlannedRun]:
    """Every (variant, seed) run's validated config, built before anything trains: a typo in the last
    variant fails at once, not after hours of training."""
    if not variants:
        raise BfasegError("--methods: no variant given")
    if not seeds:
        raise BfasegError("--seeds: no seed given")
    for what, values in (("--methods", variants), ("--seeds", seeds)):
        dup = sorted({str(v) for v in values if values.count(v) > 1})
        if dup:
            raise BfasegError(f"{what}: given twice: {', '.join(dup)}")
    base_raw = load_yaml(base_config)
    runs = [PlannedRun(f"{v}_s{s}", v, s, variant_config(base_raw, v, s, overrides)) for v in variants for s in seeds]
    data = runs[0].cfg.data
    if data.dataset != "synthetic":
        if not data.root or not Path(data.root).is_dir():
            raise BfasegError(f"data.root: folder not found: {data.root} (set it with --data)")
        if eval_list and not (Path(data.root) / eval_list).is_file():
            raise BfasegError(f"--eval-list: {Path(data.root) / eval_list} not found")
    return runs


_EVAL_CASES: dict[str, tuple] = {}  # evaluation cases per (data, list), loaded once per process


def _eval_cases(cfg, eval_list: str | None):
    from bfaseg.data.build import build_data
    from bfaseg.data.readers import load_cases, read_list
    from bfaseg.data.transforms import downsample_case_arrays

    # the labeled part of the training list does not change the evaluation cases
    key = json.dumps([cfg.data.model_dump(exclude={"labeled", "labeled_fraction", "split_file"}), eval_list],
                     sort_keys=True)
    if key not in _EVAL_CASES:
        if eval_list:
            ids = read_list(Path(cfg.data.root) / eval_list)
            cases = load_cases(cfg.data.dataset, cfg.data.root, ids, kind="eval", num_classes=cfg.model.num_classes)
            for c in cases:
                c.image, c.label = downsample_case_arrays(c.image, c.label, cfg.data.downsample)
            _EVAL_CASES[key] = (cases, eval_list)
        else:
            bundle = build_data(cfg.data, cfg.model.num_classes, progress=False)
            _EVAL_CASES[key] = (bundle.val, bundle.val_split)
    return _EVAL_CASES[key]


def train_and_evaluate(run: PlannedRun, run_dir: Path, previous: dict, eval_list: str | None,
                       progress: bool) -> dict:
    """Train (or resume) one run and evaluate the checkpoints ``previous`` has no evaluation of.
    Returns the run's results entry. Runs in the experiment's process or in a worker process."""
    from bfaseg.training.trainer import Trainer

    cfg = run.cfg
    if not (run_dir / "train_summary.json").exists():
        last = run_dir / "checkpoints" / "last.pt"
        if last.exists():
            from bfaseg.io.checkpoint import load_checkpoint

            log.info(f"[resume] {run.name} from iteration {int(load_checkpoint(last)['iteration'])}")
        Trainer(cfg, run_dir, resume=last.exists(), progress=progress).fit()
    cases, eval_split = _eval_cases(cfg, eval_list)
    entry = dict(previous, variant=run.variant, seed=run.seed, eval_split=eval_split, eval_list=eval_list)
    for which in EVALUATIONS:
        path = run_dir / "checkpoints" / f"{which.split('_')[0]}.pt"
        if path.exists() and which not in entry:
            # "_lcc": the same checkpoint, largest connected component per class kept (3-D), all methods alike
            eval_cfg = cfg.eval.model_copy(update={"largest_component": which.endswith("_lcc")})
            entry[which] = evaluate_checkpoint(path, cases, eval_cfg)
    entry["train_summary"] = json.loads((run_dir / "train_summary.json").read_text())
    return entry


def _one_thread_worker() -> None:
    """Worker start-up: one intra-op thread (the runs share the machine's cores); the worker's
    progress notes ([resume], [done]) go to stderr, as the parent's do."""
    logger = logging.getLogger("bfaseg")
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler())
        logger.setLevel(logging.INFO)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    import torch

    torch.set_num_threads(1)


def _worker(run: PlannedRun, run_dir: Path, previous: dict, eval_list: str | None) -> dict:
    t0 = time.perf_counter()
    entry = train_and_evaluate(run, run_dir, previous, eval_list, progress=False)
    log.info(f"[done] {run.name} ({time.perf_counter() - t0:.0f} s)")
    return entry


REPLACED = "replaced"


def reused_runs(out: Path, runs: list[PlannedRun], results: dict, base_raw: dict, overrides: list[str]) -> dict:
    """run name -> the config keys in which a run already in ``out`` differs from the config this command
    gives it (``bfaseg.training.run_record``): the planned runs and every other run in results.json, whose
    rows the tables would show beside the new ones. A finished run must match in ``train.iterations`` too
    (its results are those of its iterations); an unfinished one is resumed, as ``train --resume`` allows."""
    from bfaseg.training.run_record import RESUMABLE_CHANGES, config_diff, recorded_config

    planned = {r.name: r.cfg for r in runs}
    stale = {}
    for name in sorted(set(planned) | set(results)):
        run_dir = out / name
        recorded = recorded_config(run_dir) if run_dir.is_dir() else None
        if recorded is None:
            continue
        cfg = planned.get(name)
        if cfg is None:
            entry = results[name]
            if entry.get("variant") not in VARIANTS or not isinstance(entry.get("seed"), int):
                continue
            cfg = variant_config(base_raw, entry["variant"], entry["seed"], overrides)
        finished = (run_dir / "train_summary.json").exists()
        allowed = RESUMABLE_CHANGES - {("train", "iterations")} if finished else RESUMABLE_CHANGES
        diffs = config_diff(recorded, cfg.model_dump(), allowed)
        # a finished run's recorded teacher mode must be the one its config gives today (a config that leaves the
        # mode to the method resolves it with today's default, which config_diff cannot tell from the run's)
        if finished and "train.teacher_mode" not in diffs:
            made = json.loads((run_dir / "train_summary.json").read_text()).get("teacher_mode")
            if made is not None and made != resolve_teacher_mode(cfg)[0]:
                diffs.append("train.teacher_mode")
        if diffs:
            stale[name] = diffs
    return stale


def _replace_runs(out: Path, results_path: Path, results: dict, stale: dict) -> dict:
    """--force: move each stale run folder to ``out/replaced/<run>-<n>`` (nothing is deleted) and drop its row."""
    from bfaseg.io.output import move_aside

    for name, diffs in stale.items():
        target = move_aside(out / name, out / REPLACED, name)
        log.info(f"[replaced] {name}: made with another config (differs in {', '.join(diffs)}); moved to {target}")
    kept = {k: v for k, v in results.items() if k not in stale}
    atomic_write_text(results_path, json.dumps(kept, indent=1))
    return kept


def _update_results(results_path: Path, updates: dict) -> dict:
    """Merge entries into results.json as it is on disk now (several experiment processes may share one
    folder) and write it atomically; returns the merged results."""
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.update(updates)
    atomic_write_text(results_path, json.dumps(results, indent=1))
    return results


def run_experiment(
    base_config: str,
    variants: list[str],
    seeds: list[int],
    output: str,
    *,
    overrides: list[str] | None = None,
    eval_list: str | None = None,
    progress: bool = True,
    train: bool = True,
    reevaluate: bool = False,
    jobs: int = 1,
    force: bool = False,
) -> dict:
    from bfaseg.io.output import check_output_dir

    if jobs < 1:
        raise BfasegError(f"--jobs: must be >= 1, got {jobs}")
    overrides = list(overrides or [])
    if jobs > 1:
        overrides.append("train.threads=1")  # resumable change: a run started with other threads continues
    runs = plan_runs(base_config, variants, seeds, overrides, eval_list)  # every config valid before any training
    out = check_output_dir(output)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    # a folder reused by another experiment: every run in it must have been made with this command's config
    stale = reused_runs(out, runs, results, load_yaml(base_config), overrides)
    stale_eval = [] if reevaluate else [
        (name, e.get("eval_list", e.get("eval_split"))) for name, e in results.items()
        if name not in stale and any(w in e for w in EVALUATIONS)
        and ("eval_list" in e or eval_list is not None) and e.get("eval_list", e.get("eval_split")) != eval_list]
    if stale and not force:
        (name, diffs), more = next(iter(stale.items())), len(stale) - 1
        raise BfasegError(
            f"--output {out}: run {name} was made with another config (it differs in {', '.join(diffs)})"
            + (f", and {more} more run(s)" if more else "")
            + f"; pass --force to start them over (the old runs are moved to {out / REPLACED}) or choose another --output")
    if stale_eval:
        name, was = stale_eval[0]
        raise BfasegError(f"--eval-list {eval_list}: run {name} was evaluated on {was}; pass --reevaluate to "
                          "evaluate every run again, or choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    if stale:
        results = _replace_runs(out, results_path, results, stale)
    images = {r.name: r.images for r in runs}
    todo = []
    for run in runs:
        entry = results.get(run.name, {})
        if reevaluate:
            entry = {k: v for k, v in entry.items() if k not in EVALUATIONS}
        trained = (out / run.name / "train_summary.json").exists()
        if trained and all(w in entry for w in EVALUATIONS):
            log.info(f"[skip] {run.name}: done")
        elif not train and not trained:
            log.info(f"[skip] {run.name}: not trained (--no-train)")
        else:
            todo.append((run, entry))
    # runs already in the table get their images per step (tables written before they were recorded)
    results = _update_results(results_path, {n: dict(results[n], images_per_step=images[n])
                                             for n in images if n in results})
    failed: list[str] = []

    def finished(run: PlannedRun, entry: dict | None, error: BaseException | None) -> None:
        nonlocal results
        if error is not None:
            detail = str(error) if isinstance(error, BfasegError) else "".join(
                traceback.format_exception(type(error), error, error.__traceback__))
            log.warning(f"[failed] {run.name}: {detail}")
            failed.append(run.name)
            return
        results = _update_results(results_path, {run.name: dict(entry, images_per_step=images[run.name])})
        write_tables(results, out)  # partial tables: the finished runs so far

    if jobs == 1:
        for run, entry in todo:
            log.info(f"[run] {run.name}")
            try:
                finished(run, train_and_evaluate(run, out / run.name, entry, eval_list, progress), None)
            except Interrupted:
                raise
            except BfasegError as exc:  # e.g. a diverged run: the other runs still go into the table
                finished(run, None, exc)
    elif todo:
        _run_parallel(todo, out, eval_list, jobs, finished)
    write_tables(results, out)
    if failed:
        raise BfasegError(f"{len(failed)} run(s) failed: {', '.join(failed)} (the tables hold the others; "
                          "re-run the command to retry them)")
    return results


def _run_parallel(todo, out: Path, eval_list, jobs: int, finished) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: a forked child would inherit the parent's OpenMP/torch thread state
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx, initializer=_one_thread_worker)
    try:
        futures = {}
        for run, entry in todo:
            log.info(f"[run] {run.name} (parallel, {jobs} jobs)")
            futures[pool.submit(_worker, run, out / run.name, entry, eval_list)] = run
        for fut in as_completed(futures):
            run = futures[fut]
            error = fut.exception()
            if isinstance(error, Interrupted):
                raise error
            finished(run, None if error else fut.result(), error)
    except BaseException:
        # Ctrl-C reaches the workers too (one process group), but a SIGTERM sent to this process alone
        # (kill PID, a job scheduler) does not: pass it on, so each trainer checkpoints and stops instead
        # of this process waiting for whole runs to finish; start no queued run
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            if proc.is_alive():
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _fmt(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """Mean ± sample standard deviation (ddof=1) over seeds: the one aggregation of docs/RESULTS.md."""
    from bfaseg.reporting import format_mean_sd

    return format_mean_sd(values, scale, digits)


def _images(entry: dict, role: str) -> str:
    """'16' or '16 (12 in pre-training)': forward images per step of the student or the teacher."""
    counts = entry.get("images_per_step")
    if not counts:
        return "?"
    main, pre = counts[role], counts.get(f"{role}_pretrain")
    return f"{main}" if pre is None or pre == main else f"{main} ({pre} in pre-training)"


def _ordered_variants(results: dict) -> list[str]:
    """Variants in VARIANTS order (baselines, BFA, its ablations, then the improvements tried)."""
    present = {e["variant"] for e in results.values()}
    order = list(VARIANTS)
    return sorted(present, key=lambda v: (order.index(v) if v in order else len(order), v))


def _ordered_runs(results: dict) -> list[tuple[str, dict]]:
    """(run name, entry) pairs by method (VARIANTS order), then seed."""
    variants = _ordered_variants(results)
    return sorted(results.items(), key=lambda kv: (variants.index(kv[1]["variant"]), kv[1]["seed"]))


def write_tables(results: dict, out: Path) -> None:
    """results.md: mean ± sample sd (ddof=1) over seeds of the LAST and the BEST (validation-selected)
    checkpoints, and each run on its own."""
    variants = _ordered_variants(results)
    lines = []
    titles = {
        "last": "last checkpoint",
        "best": "best checkpoint (selected by validation Dice during training, on the same split: optimistic)",
        "last_lcc": "last checkpoint + largest connected component per class (post-processing, every method alike)",
    }
    for which in EVALUATIONS:
        if not any(which in e for e in results.values()):
            continue
        title = titles[which]
        lines += [f"### {title}", "",
                  "| method | seeds | student images/step | teacher images/step | Dice % | Jaccard % | 95HD (vox) "
                  "| ASD (vox) | per-class Dice % | missed |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for v in variants:
            entries = [e for e in results.values() if e["variant"] == v and which in e]
            if not entries:
                continue
            means = [e[which]["mean"] for e in entries]
            classes = sorted({k.split("_")[1] for k in means[0] if k.startswith("dice_")})
            per_class = " / ".join(_fmt([m.get(f"dice_{c}") for m in means], 100, 1) for c in classes)
            # (case, class) pairs with one mask empty: no distance exists, so they are left out of
            # the 95HD/ASD means (policy strict) and counted here instead
            missed = sum(
                1 for e in entries for row in e[which]["per_case"] for key, val in row.items()
                if key.startswith("hd95_") and val is None
            )
            lines.append(
                f"| {v} | {len(entries)} | {_images(entries[0], 'student')} | {_images(entries[0], 'teacher')} "
                f"| {_fmt([m['dice'] for m in means], 100)} | {_fmt([m['jaccard'] for m in means], 100)} "
                f"| {_fmt([m['hd95'] for m in means])} | {_fmt([m['asd'] for m in means])} | {per_class} | {missed} |"
            )
        lines.append("")
    # each run on its own (last checkpoint): one-seed ablations compare against the same seed here
    # the last column applies the plateau rule to the run's validation curve (bfaseg.reporting.plateau)
    lines += ["### each run, last checkpoint", "",
              "| run | Dice % | 95HD (vox) | ASD (vox) | + LCC: Dice % | + LCC: 95HD | + LCC: ASD "
              "| val Dice gained over the last quarter |",
              "|---|---|---|---|---|---|---|---|"]
    for name, e in _ordered_runs(results):
        if "last" not in e:
            continue
        m, lcc = e["last"]["mean"], e.get("last_lcc", {}).get("mean", {})
        lines.append(f"| {name} | {_fmt([m['dice']], 100)} | {_fmt([m['hd95']])} | {_fmt([m['asd']])} "
                     f"| {_fmt([lcc.get('dice')], 100)} | {_fmt([lcc.get('hd95')])} | {_fmt([lcc.get('asd')])} "
                     f"| {_plateau_cell(out / name)} |")
    lines.append("")
    split = next(iter(results.values()))["eval_split"] if results else "?"
    lines.insert(0, f"Evaluated on: {split}. Metrics in voxels (medpy definitions; ASD directed pred->gt). "
                    "Images/step: images one training step forwards through the student / the teacher "
                    "(validation excluded). "
                    "'missed' = (case, class) pairs where prediction or reference is empty: excluded from the "
                    "distance means (strict policy), so compare distances together with this count.\n")
    atomic_write_text(out / "results.md", "\n".join(lines))  # readers never see half a table
    _plot_curves(results, out)


def _plateau_cell(run_dir: Path) -> str:
    from bfaseg.reporting import plateau, read_run

    try:
        p = plateau(read_run(run_dir, with_method=False).val)
    except BfasegError:
        return "n/a"
    if p is None:
        return "n/a"
    verdict = ", plateau" if p["plateau"] else ""
    return f"{p['gain'] * 100:+.2f} points ({p['from_iteration']}→{p['to_iteration']}{verdict})"


def _plot_curves(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one colour per method, one line style per seed, so two seeds of a method read as a pair
    variants = _ordered_variants(results)
    colours = plt.get_cmap("tab20" if len(variants) > 10 else "tab10")
    styles = ["-", "--", ":", "-."]
    seeds = sorted({e["seed"] for e in results.values()})
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for name, entry in _ordered_runs(results):
        log_path = out / name / "log.jsonl"
        if not log_path.exists():
            continue
        pts = [json.loads(line) for line in log_path.read_text().splitlines() if '"val_dice"' in line]
        if pts:
            ax.plot([p["iteration"] for p in pts], [p["val_dice"] for p in pts], marker="o", ms=3, label=name,
                    color=colours(variants.index(entry["variant"]) % colours.N),
                    linestyle=styles[seeds.index(entry["seed"]) % len(styles)])
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation Dice (mean over classes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=1 if len(results) <= 14 else 2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out / "val_curves.png", dpi=120)
    plt.close(fig)
