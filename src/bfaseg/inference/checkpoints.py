"""Rebuild a trained network from a bfaseg checkpoint, ready for inference.

A checkpoint (``bfaseg.training.trainer.Trainer.state_dict``) holds the student's
weights, the run's config (``RunConfig.model_dump()``), the iteration, the best
validation score and, for methods with a teacher, the teacher's weights. Modules a
method added to the network (BFA's boundary head) are re-added by the method's
``restore_modules`` hook, so the state dict loads strictly and the forward pass is
the one that was trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bfaseg.config import RunConfig, validate_config
from bfaseg.errors import BfasegError
from bfaseg.io.checkpoint import load_checkpoint
from bfaseg.methods import get_method_class
from bfaseg.models import build_model

__all__ = ["load_model_from_checkpoint", "checkpoint_config", "strip_prefixes", "describe_checkpoint"]

_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) key prefixes."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = value
    return out


def checkpoint_config(state: dict[str, Any], path: str | Path) -> RunConfig:
    """The run's validated config stored in a checkpoint."""
    raw = state.get("config")
    if not isinstance(raw, dict):
        raise BfasegError(f"{path}: the checkpoint has no run config; cannot rebuild the model")
    # the one config validation, whose errors name the key path (not pydantic's "1 validation error for RunConfig")
    return validate_config(raw, source=f"{path}: the checkpoint's config is not valid for this bfaseg")


def load_model_from_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    which: str | None = None,
) -> tuple[torch.nn.Module, RunConfig, dict[str, Any]]:
    """``(model, cfg, state)``: the network in eval mode on ``device``, the run config, the raw checkpoint.

    ``which`` picks ``"student"`` or ``"teacher"`` weights; default: the network the run
    validated (``eval.model``), falling back to the student when the checkpoint has no teacher.
    """
    state = load_checkpoint(path, map_location="cpu")
    cfg = checkpoint_config(state, path)
    asked = which
    which = which or cfg.eval.model
    if which not in ("student", "teacher"):
        raise BfasegError(f"--model: expected 'student' or 'teacher', got {which!r}")
    weights = state.get(which)
    if weights is None:
        if asked == "teacher":  # asked for by name: scoring the student instead would be a silent swap
            raise BfasegError(f"--model teacher: {path} has no teacher weights (method {cfg.method.name}); "
                              "use --model student")
        weights = state["student"]
        which = "student"
    weights = strip_prefixes(weights)
    bad = [k for k, v in weights.items()
           if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # such a network predicts background everywhere and scores 0 without a word
        raise BfasegError(f"{path}: the {which} weights hold NaN/Inf ({len(bad)} tensors, first {bad[0]}); "
                          f"the run diverged: use an earlier checkpoint")

    # SyncBatchNorm needs a process group; for inference plain BatchNorm has the same keys and maths
    model = build_model(cfg.model.model_copy(update={"sync_batchnorm": False}))
    try:  # modules a method added to the network (e.g. BFA's boundary head)
        get_method_class(cfg.method.name, source=str(path)).restore_modules(model, cfg, weights)
    except ValueError as exc:
        raise BfasegError(f"{path}: cannot rebuild the {cfg.method.name} modules ({exc})") from None
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])[:160]
        raise BfasegError(f"{path}: the weights do not fit the model in its config ({detail})") from None
    model.to(torch.device(device)).eval()
    state["_loaded_weights"] = which
    return model, cfg, state


def describe_checkpoint(path: str | Path, state: dict[str, Any]) -> dict[str, Any]:
    """Provenance for summaries: path, iteration, sha256 digest, method, best validation score."""
    from bfaseg.io.checkpoint import checkpoint_digest

    cfg = state.get("config") or {}
    return {
        "path": str(Path(path).resolve()),
        "iteration": state.get("iteration"),
        "sha256": checkpoint_digest(path),
        "method": state.get("method_name") or (cfg.get("method") or {}).get("name"),
        "weights": state.get("_loaded_weights", "student"),
        "best": state.get("best"),
        "val_split": (state.get("data") or {}).get("val_split"),
        "bfaseg_version": state.get("bfaseg_version"),
    }
