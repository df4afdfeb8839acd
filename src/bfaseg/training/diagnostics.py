"""What each loss term contributes to the gradient: the diagnostic behind "is this term doing anything?".

For a method that exposes ``loss_terms(batch, iteration)`` (each term weighted and ramped as in training,
their sum the loss, plus the student's outputs), the gradient of every term is taken separately, on the
shared decoder features that the boundary head reads (and, through its fusion, the alignment) and on all of
the student's parameters, and set against the gradient of the whole loss. A term whose share stays near 0
moves nothing, however large its value looks in the log.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from bfaseg.config import RunConfig
from bfaseg.data.batches import TwoStreamBatches
from bfaseg.errors import BfasegError


def term_gradient_norms(method, batch: dict[str, torch.Tensor], iteration: int, stage: int) -> dict[str, dict[str, float]]:
    """Per term (and ``total``): gradient norm on ``features[stage]`` and on the student's parameters."""
    if not hasattr(method, "loss_terms"):
        raise BfasegError(f"method {method.name!r} does not expose its loss terms (loss_terms)")
    with method.t.autocast():
        terms, _, out = method.loss_terms(batch, iteration)
    if "features" not in out:
        raise BfasegError(f"method {method.name!r}: no decoder features in this configuration (boundary head and alignment off)")
    # the boundary stage's decoder features as the head reads them (before its fusion): the tensor that the
    # segmentation, the boundary terms and the alignment (through the fusion) all reach; without a head,
    # the features of ``stage``
    feats = out["head_input"] if out.get("head_input") is not None else out["features"][stage]
    params = [p for p in method.t.student.parameters() if p.requires_grad]
    result = {}
    for name, term in {**terms, "total": sum(terms.values())}.items():
        grads = torch.autograd.grad(term.float(), [feats, *params], retain_graph=True, allow_unused=True)
        norm = lambda gs: math.sqrt(sum(float(g.float().pow(2).sum()) for g in gs if g is not None))  # noqa: E731
        result[name] = {"value": float(term.detach()), "features": norm(grads[:1]), "network": norm(grads[1:])}
    return result


def gradient_shares(trainer, iterations: list[int], stage: int | None = None) -> dict:
    """Mean gradient norms of each term over the training batches of ``iterations`` (as the run drew them),
    and each term's share: its norm over the total loss's norm (shares need not sum to 1: terms can
    point in different directions)."""
    method, cfg = trainer.method, trainer.cfg
    p = method.p
    if stage is None:
        stage = getattr(p, "align_stage", None)
        stage = getattr(p, "boundary_stage", 1) if stage is None else stage
    batches = TwoStreamBatches.from_config(
        cfg, trainer.data.labeled, trainer.data.unlabeled if method.uses_unlabeled else [],
        patch_size=trainer.patch_size, total_iterations=trainer.total_iterations)
    trainer.student.train()
    sums: dict[str, dict[str, float]] = {}
    for it in iterations:
        torch.manual_seed((cfg.train.seed * 1_000_003 + it * 131) % 2**63)  # the run's per-iteration randomness
        batch = {k: trainer.to_device(v) for k, v in batches[it].items()}
        for name, rec in term_gradient_norms(method, batch, it, stage).items():
            acc = sums.setdefault(name, {"value": 0.0, "features": 0.0, "network": 0.0})
            for k, v in rec.items():
                acc[k] += v / len(iterations)
    total = sums["total"]
    rows = {
        name: {**rec, "share_features": rec["features"] / max(total["features"], 1e-12),
               "share_network": rec["network"] / max(total["network"], 1e-12)}
        for name, rec in sums.items()
    }
    return {"iterations": list(iterations), "stage": stage, "terms": rows}


def trainer_from_checkpoint(path: str | Path, output_dir: str | Path, overrides: dict | None = None,
                            data_root: str | None = None):
    """A Trainer holding a checkpoint's student, teacher and method state (not its optimizer), for
    diagnostics; ``overrides`` (method params) evaluate another loss on the same weights."""
    from bfaseg.io.checkpoint import load_checkpoint
    from bfaseg.training.trainer import Trainer

    state = load_checkpoint(path)
    raw = dict(state.get("config") or {})
    if not raw:
        raise BfasegError(f"{path}: the checkpoint has no run config")
    raw["method"] = {**raw["method"], **(overrides or {})}
    if data_root:
        raw["data"] = {**raw["data"], "root": data_root}
    cfg = RunConfig.model_validate(raw)
    trainer = Trainer(cfg, output_dir, progress=False)
    trainer.student.load_state_dict(state["student"])
    if trainer.teacher is not None and state.get("teacher") is not None:
        trainer.teacher.load_state_dict(state["teacher"])
    trainer.method.load_state_dict(state.get("method") or {})
    return trainer, int(state["iteration"])


@torch.no_grad()
def pseudo_boundary_errors(trainer, iterations: list[int], band: int = 2) -> dict:
    """Where the student and its boundary head go wrong on UNLABELED training images (their true labels,
    which the method never sees, come from the data): near the teacher's pseudo-label boundaries (within
    ``band`` voxels) and away from them.

    Per region: the teacher's pseudo-label error rate, the student's segmentation error rate (eval mode),
    and the boundary head's F1 against the TRUE boundaries (probability > 0.5, at the head's resolution
    upsampled to the image). If learning pseudo-label boundaries (boundary mixing) teaches the student
    something, its errors near those boundaries fall below the teacher's.
    """
    import torch.nn.functional as F

    from bfaseg.methods.boundary import _max_pool, class_boundaries

    from bfaseg.data.build import build_data

    method, cfg = trainer.method, trainer.cfg
    k = trainer.num_classes
    # the unlabeled pool with its true labels: the same ids, read as if every case were labeled
    everything = build_data(cfg.data.model_copy(update={"labeled": None, "labeled_fraction": None}), k, progress=False)
    by_id = {c.case_id: c for c in everything.labeled}
    missing = [c.case_id for c in trainer.data.unlabeled if c.case_id not in by_id]
    if missing:
        raise BfasegError(f"no true label for unlabeled case {missing[0]}")
    pool = [by_id[c.case_id] for c in trainer.data.unlabeled]
    batches = TwoStreamBatches.from_config(
        cfg, trainer.data.labeled, pool, patch_size=trainer.patch_size, total_iterations=trainer.total_iterations,
        unlabeled_targets=True)
    sums: dict[str, float] = {}

    def add(key, value):
        sums[key] = sums.get(key, 0.0) + float(value)

    trainer.student.eval()
    for it in iterations:
        batch = batches[it]
        x, truth = trainer.to_device(batch["image_u"]), batch["label_u"].to(trainer.device)
        pseudo, _ = method.pseudo_labels(x)
        with trainer.autocast():
            out = trainer.student(x, return_extras=True)
        pred = out["logits"].float().argmax(1)
        near = _max_pool(class_boundaries(pseudo, k).amax(1, keepdim=True), band).squeeze(1) > 0
        for name, region in (("near", near), ("far", ~near)):
            n = region.sum()
            add(f"{name}_voxels", n)
            add(f"{name}_teacher_errors", ((pseudo != truth) & region).sum())
            add(f"{name}_student_errors", ((pred != truth) & region).sum())
        if out.get("boundary") is not None:
            mode = "trilinear" if x.ndim == 5 else "bilinear"
            head = F.interpolate(out["boundary"].float(), size=tuple(x.shape[2:]), mode=mode, align_corners=False) > 0
            true_b = class_boundaries(truth, k) > 0.5
            for name, region in (("near", near), ("far", ~near)):
                r = region.unsqueeze(1)
                add(f"{name}_head_tp", (head & true_b & r).sum())
                add(f"{name}_head_fp", (head & ~true_b & r).sum())
                add(f"{name}_head_fn", (~head & true_b & r).sum())
    trainer.student.train()
    result = {"iterations": list(iterations), "band": band}
    for name in ("near", "far"):
        n = max(sums[f"{name}_voxels"], 1.0)
        row = {"voxel_share": sums[f"{name}_voxels"] / max(sums["near_voxels"] + sums["far_voxels"], 1.0),
               "teacher_error": sums[f"{name}_teacher_errors"] / n, "student_error": sums[f"{name}_student_errors"] / n}
        if f"{name}_head_tp" in sums:
            tp, fp, fn = (sums[f"{name}_head_{x}"] for x in ("tp", "fp", "fn"))
            row["head_f1"] = 2 * tp / max(2 * tp + fp + fn, 1.0)
        result[name] = row
    return result
