"""Mixed precision: bf16 autocast steps (fp32 losses and weights), fp16 refused on CPU, bf16 ~ fp32 quality.

Tiny synthetic 2-D runs, one thread. bf16 is exercised whatever the CPU: without native bf16
(AVX512-BF16/AMX) it is emulated and slow, so the networks here are small.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from bfaseg.cli.main import main
from bfaseg.config import validate_config
from bfaseg.errors import BfasegError
from bfaseg.training import trainer as trainer_mod
from bfaseg.training.trainer import Trainer


def _raw(method: str = "supervised", **train) -> dict:
    raw = {
        "data": {"dataset": "synthetic", "synthetic_ndim": 2, "synthetic_size": [32, 32], "patch_size": [32, 32],
                 "synthetic_cases": 10, "synthetic_val_cases": 2, "labeled_fraction": 0.4},
        "model": {"name": "unet2d", "num_classes": 3, "base_channels": 8},
        "train": {"iterations": 4, "batch_labeled": 2, "batch_unlabeled": 2, "val_every": 4, "log_every": 1,
                  "checkpoint_every": 4, "threads": 1, "device": "cpu"},
        "method": {"name": method},
    }
    raw["train"].update(train)
    return raw


def _quiet_trainer(raw: dict, out, **kw) -> Trainer:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="train.precision: bf16 on a CPU")
        return Trainer(validate_config(raw), out, progress=False, **kw)


@pytest.mark.parametrize("method, params", [
    ("supervised", {}),
    ("mean_teacher", {}),
    ("bfa", {"pretrain": 0.25}),  # iteration 0 pre-training, 1..3 the full step (teacher, boundaries, alignment)
])
def test_bf16_step_runs_with_fp32_loss(tmp_path, method, params):
    raw = _raw(method, precision="bf16")
    raw["method"].update(params)
    t = _quiet_trainer(raw, tmp_path / method)
    seen = {"logits": [], "loss": [], "logs": []}
    t.student.register_forward_hook(
        lambda m, args, out: seen["logits"].append((out["logits"] if isinstance(out, dict) else out).dtype)
    )
    step = t.method.training_step

    def recording_step(batch, iteration):
        loss, logs = step(batch, iteration)
        seen["loss"].append(loss.dtype)
        seen["logs"].extend(v.dtype for v in logs.values())
        return loss, logs

    t.method.training_step = recording_step
    t.fit()
    assert set(seen["logits"]) == {torch.bfloat16}  # autocast covers the student forward
    assert set(seen["loss"]) == {torch.float32}  # losses are computed in float32
    assert set(seen["logs"]) == {torch.float32}
    assert all(p.dtype == torch.float32 for p in t.student.parameters())  # master weights stay fp32
    if t.teacher is not None:
        assert all(p.dtype == torch.float32 for p in t.teacher.parameters())  # so does the EMA
    records = [r for r in t.history if "loss" in r]
    assert len(records) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)


def test_fp16_on_cpu_is_a_clear_error(tmp_path, capsys):
    raw = _raw(precision="fp16")
    with pytest.raises(BfasegError, match=r"fp16 needs a CUDA device \(use bf16 on CPU\)"):
        Trainer(validate_config(raw), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything is created
    import yaml

    cfg = tmp_path / "fp16.yaml"
    cfg.write_text(yaml.safe_dump(_raw()))
    code = main(["train", str(cfg), "--output", str(tmp_path / "cli"), "--set", "train.precision=fp16", "--no-progress"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: train.precision: fp16 needs a CUDA device (use bf16 on CPU)"


@pytest.mark.parametrize("native", [False, True])
def test_bf16_warns_where_the_cpu_emulates_it(tmp_path, monkeypatch, native):
    monkeypatch.setattr(trainer_mod, "native_bf16_on_cpu", lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(validate_config(_raw(precision="bf16")), tmp_path / "run", progress=False)
    messages = [str(w.message) for w in caught if "bf16 on a CPU" in str(w.message)]
    assert len(messages) == (0 if native else 1)
    if messages:
        assert "train.precision=fp32" in messages[0]


def test_bf16_and_fp32_reach_similar_dice(tmp_path):
    """60 supervised iterations on synthetic phantoms: both precisions learn, and land close.

    Measured: Dice 0.52 (fp32) vs 0.54 (bf16) at base_channels 4; loose bounds for other CPUs/BLAS.
    """
    dice = {}
    for precision in ("fp32", "bf16"):
        raw = _raw(iterations=60, val_every=60, log_every=60, checkpoint_every=60, batch_labeled=4,
                   precision=precision)
        raw["data"].update(labeled_fraction=1.0, synthetic_cases=16)
        raw["model"]["base_channels"] = 4
        dice[precision] = _quiet_trainer(raw, tmp_path / precision).fit()["best_dice"]
    assert min(dice.values()) > 0.35, dice
    assert abs(dice["bf16"] - dice["fp32"]) < 0.1, dice
