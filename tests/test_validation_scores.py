"""Per-class scores used for model selection and logging follow bfaseg.metrics' empty-class policy.

Validation Dice (best checkpoint, val curves) and suggest's teacher-student / true Dice: a class absent
from both maps is NaN and left out of the means (not a free 1, not a 0); absent from one side scores 0.
The synthetic phantoms hold every class, so these tests build label maps by hand: an "oracle" network
returns the label map encoded in its input image, so validation runs through the real Predictor.
"""

from __future__ import annotations

import json
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_config

from bfaseg.config import validate_config
from bfaseg.data.cases import Case
from bfaseg.training.validation import summarize, validate

K = 3  # background + two classes, as tiny_config


class Oracle(nn.Module):
    """Predicts exactly the labels written into its input image (rounded)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        lab = x[:, 0].round().long().clamp(0, K - 1)
        return F.one_hot(lab, K).permute(0, 3, 1, 2).float() * 10 + self.w


def _case(name: str, pred: np.ndarray, label: np.ndarray) -> Case:
    """A validation case (one-slice volume) whose prediction by :class:`Oracle` is ``pred``."""
    return Case(name, pred[None].astype(np.float32), label[None].astype(np.uint8))


def _maps(class2: str) -> tuple[np.ndarray, np.ndarray]:
    """(pred, label) 32x32: class 1 predicted perfectly; class 2 ``"absent"`` from both, ``"half"``
    (Dice 0.5), ``"missed"`` (label only) or ``"spurious"`` (prediction only)."""
    pred = np.zeros((32, 32), np.uint8)
    pred[2:10, 2:10] = 1
    label = pred.copy()
    if class2 in ("half", "missed"):
        label[20:24, 20:28] = 2  # 32 pixels
    if class2 == "half":
        pred[20:24, 24:32] = 2  # 32 pixels, 16 of them shared: Dice 2 * 16 / 64
    if class2 == "spurious":
        pred[20:24, 20:28] = 2
    return pred, label


def _validate(*kinds: str) -> dict:
    cfg = validate_config(tiny_config())
    cases = [_case(f"c{i}", *_maps(k)) for i, k in enumerate(kinds)]
    model = Oracle().train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "mean of empty slice" on the way
        out = validate(model, cases, cfg=cfg, train_ndim=2, precision="fp32", device="cpu")
    assert model.training  # validate restores the mode
    return out


def test_validation_leaves_a_class_absent_from_both_out_of_the_mean():
    out = _validate("absent", "half")
    # class 2 is defined in one case (0.5); as 1 it would be 0.75, as 0 it would be 0.25
    assert out["dice_per_class"] == pytest.approx([1.0, 0.5])
    assert out["dice"] == pytest.approx(0.75)  # mean of the class means (the ACDC protocol)
    assert out["n_cases"] == 2 and out["n_both_empty"] == 1


def test_validation_scores_a_class_absent_from_one_side_as_zero():
    missed = _validate("half", "missed")
    assert missed["dice_per_class"] == pytest.approx([1.0, 0.25]) and missed["n_both_empty"] == 0
    spurious = _validate("spurious", "absent")
    assert spurious["dice_per_class"] == pytest.approx([1.0, 0.0]) and spurious["dice"] == pytest.approx(0.5)


def test_validation_with_every_class_absent_is_nan_not_an_error():
    cfg = validate_config(tiny_config())
    blank = np.zeros((32, 32), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = validate(Oracle(), [_case("blank", blank, blank)], cfg=cfg, train_ndim=2, precision="fp32",
                       device="cpu")
    assert math.isnan(out["dice"]) and all(math.isnan(d) for d in out["dice_per_class"])
    assert len(out["dice_per_class"]) == K - 1 and out["n_both_empty"] == K - 1
    none = summarize([], K)
    assert math.isnan(none["dice"]) and len(none["dice_per_class"]) == K - 1
    assert all(map(math.isnan, none["dice_per_class"]))
    assert {k: none[k] for k in ("n_cases", "n_both_empty")} == {"n_cases": 0, "n_both_empty": 0} and len(none) == 4


def test_a_nan_validation_dice_is_logged_as_null_and_never_the_best(tmp_path, monkeypatch):
    import bfaseg.training.trainer as trainer_module
    from bfaseg.reporting import read_run

    scores = iter([math.nan, 0.4])

    def fake_validate(*args, **kwargs):
        d = next(scores)
        return {"dice": d, "dice_per_class": [d, math.nan], "n_cases": 1, "n_both_empty": 1}

    monkeypatch.setattr(trainer_module, "validate", fake_validate)
    out = tmp_path / "run"
    summary = trainer_module.Trainer(validate_config(tiny_config()), out, progress=False).fit()  # val at 3, 6
    assert summary["best_iteration"] == 6 and summary["best_dice"] == pytest.approx(0.4)
    lines = (out / "log.jsonl").read_text().splitlines()
    strict = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in log.jsonl")) for line in lines]
    val = [r for r in strict if "val_dice" in r]
    assert [(r["iteration"], r["val_dice"], r["val_dice_class2"]) for r in val] == [(3, None, None), (6, 0.4, None)]
    assert read_run(out, with_method=False).best == (0.4, 6)  # the null record is no point on the curve


# ----------------------------------------------------------------------------- suggest


def test_teacher_student_agreement_leaves_classes_neither_predicts_out():
    from bfaseg.suggest.scoring import label_agreement

    a, b = _maps("half")
    dice, assd = label_agreement(a, b, K)
    assert dice == pytest.approx(0.75) and assd > 0
    a, b = _maps("absent")
    assert label_agreement(a, b, K)[0] == 1.0  # class 1 identical; class 2 in neither: left out, not NaN
    a, b = _maps("half")
    a[a == 1] = 0
    b[b == 1] = 0
    assert label_agreement(a, b, K)[0] == pytest.approx(0.5)  # a free 1 for class 1 would give 0.75
    a, b = _maps("missed")
    assert label_agreement(a, b, K)[0] == pytest.approx(0.5)  # one side only: 0, counted
    blank = np.zeros((8, 8), np.uint8)
    dice, assd = label_agreement(blank, blank, K)  # no foreground at all: complete agreement
    assert dice == 1.0 and math.isnan(assd)


def test_true_dice_of_the_quality_reference_follows_the_metrics_policy():
    from bfaseg.suggest.quality import case_record

    def record(pred, truth):
        score = SimpleNamespace(components={"mean_entropy": 0.1}, labels=pred)
        scorer = SimpleNamespace(score=lambda case_id, view: score, num_classes=K, teacher=None)
        return case_record(scorer, "c", np.zeros_like(pred, np.float32), truth=truth)

    assert record(*_maps("absent"))["true_dice"] == 1.0
    assert record(*_maps("half"))["true_dice"] == pytest.approx(0.75)
    assert record(*_maps("missed"))["true_dice"] == pytest.approx(0.5)
    blank = np.zeros((8, 8), np.uint8)
    assert math.isnan(record(blank, blank)["true_dice"])  # nothing to score (null in the cache)


def test_scores_for_selection_share_one_dice():
    """Validation, agreement and evaluation give the same per-class Dice (one implementation)."""
    from bfaseg.metrics import compute_case, compute_overlap

    rng = np.random.default_rng(0)
    statuses = set()
    for i in range(12):
        # prediction labels 0..4, reference 0..3, classes 1..5: every status, both ways round
        pred = rng.integers(0, 5, (6, 7, 5)) * (rng.random((6, 7, 5)) < 0.4)
        gt = rng.integers(0, 4, (6, 7, 5)) * (rng.random((6, 7, 5)) < 0.4)
        pred, gt = (gt, pred) if i % 2 else (pred, gt)
        for policy in ("strict", "worst", "paper"):
            for empty_class in ("nan", "one"):
                full = compute_case(pred, gt, classes=5, policy=policy, empty_class=empty_class)
                fast = compute_overlap(pred, gt, classes=5, policy=policy, empty_class=empty_class)
                for key in ("dice", "jaccard", "status", "policy", "empty_class"):
                    assert _same(fast[key], full[key]), (key, policy, empty_class)
                statuses |= set(fast["status"].values())
        binary = compute_overlap(pred == 1, gt == 1)
        assert _same(binary, {k: compute_case(pred == 1, gt == 1)[k] for k in binary})
    assert statuses == {"ok", "both_empty", "pred_empty", "gt_empty"}


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


def test_mean_over_classes_leaves_nan_out():
    from bfaseg.metrics import mean_over_classes

    assert mean_over_classes({1: 0.5, 2: math.nan, 3: 1.0}) == 0.75
    assert mean_over_classes([0.0, math.nan]) == 0.0  # a 0 counts; only NaN is left out
    assert math.isnan(mean_over_classes({1: math.nan}))
    assert mean_over_classes([], empty=1.0) == 1.0 and mean_over_classes([math.nan], empty=0.25) == 0.25
