"""`bfaseg report` and bfaseg.reporting on fake run folders (no training; CPU, seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bfaseg.cli.main import main
from bfaseg.errors import BfasegError
from bfaseg.reporting import comparison_table, overlay_figure, pick_slice, read_run, save_figure


def _fake_run(path, val, losses, torn=False):
    path.mkdir(parents=True)
    lines = []
    for i, loss in enumerate(losses, start=1):
        lines.append(json.dumps({"iteration": 10 * i, "loss": loss, "loss_sup": loss, "lr": 0.01, "time": i}))
    for it, d in val:
        lines.append(json.dumps({"iteration": it, "val_dice": d, "val_dice_class1": d, "best_dice": d}))
    text = "\n".join(lines) + "\n"
    if torn:
        text += '{"iteration": 70, "lo'  # a run killed mid-write
    (path / "log.jsonl").write_text(text)
    return path


def test_report_two_runs(tmp_path, capsys):
    a = _fake_run(tmp_path / "runA", [(20, 0.5), (40, 0.7), (60, 0.65)], [1.0, 0.8, 0.6, 0.5, 0.4, 0.35])
    b = _fake_run(tmp_path / "runB", [(20, 0.4), (40, 0.45)], [1.1, 0.9, 0.7, 0.6], torn=True)
    out = tmp_path / "report"
    assert main(["report", str(a), str(b), "--output", str(out)]) == 0
    for name in ("loss.png", "val_dice.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    md = (out / "comparison.md").read_text()
    assert "| runA | ? | 0.7000 @ 40 | 0.6500 @ 60 | 60 |" in md
    assert "| runB | ? | 0.4500 @ 40 | 0.4500 @ 40 | 40 |" in md
    assert "![loss](loss.png)" in md
    captured = capsys.readouterr()
    assert "runA" in captured.out and "skipped 1 unreadable line" in captured.err


def test_read_run_errors(tmp_path):
    with pytest.raises(BfasegError, match="not found"):
        read_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BfasegError, match="log.jsonl"):
        read_run(tmp_path / "empty")
    assert main(["report", str(tmp_path / "empty"), "--output", str(tmp_path / "r")]) == 2


def test_table_without_validation(tmp_path):
    run = read_run(_fake_run(tmp_path / "r", [], [1.0, 0.5]))
    assert run.best is None and run.iterations == 20
    assert "| r | ? | - | - | 20 |" in comparison_table([run])


def test_overlay_figure_binary_and_multiclass(tmp_path):
    img = np.random.default_rng(0).normal(size=(24, 20)).astype(np.float32)
    gt = np.zeros((24, 20), np.uint8)
    gt[5:15, 4:12] = 1
    pred = np.roll(gt, 2, axis=0)
    p = save_figure(overlay_figure(img, gt, pred, title="t"), tmp_path / "o.png")
    assert p.read_bytes()[:4] == b"\x89PNG"
    gt3 = gt.copy()
    gt3[8:10, 6:8] = 2
    save_figure(overlay_figure(img, gt3, pred, num_classes=4), tmp_path / "m.png")
    vol = np.zeros((3, 4, 5), np.uint8)
    vol[..., 3] = 1
    assert pick_slice(vol, 2) == 3 and pick_slice(np.zeros((3, 4, 5)), 2) == 2


def test_report_overlays_from_checkpoint(tmp_path):
    """A run on synthetic 2-D data with a checkpoint: overlays need no --data."""
    import torch

    from bfaseg.config import validate_config
    from bfaseg.models import build_model
    from bfaseg.io.checkpoint import save_checkpoint

    cfg = validate_config({
        "data": {"dataset": "synthetic", "synthetic_ndim": 2, "synthetic_size": [32, 32], "patch_size": [32, 32],
                 "synthetic_classes": 3, "synthetic_val_cases": 2},
        "model": {"name": "unet2d", "num_classes": 3, "base_channels": 4},
        "method": {"name": "supervised"},
    })
    torch.manual_seed(0)
    model = build_model(cfg.model)
    run = _fake_run(tmp_path / "synth", [(4, 0.3)], [1.0])
    (run / "checkpoints").mkdir()
    save_checkpoint(run / "checkpoints" / "best.pt", {
        "iteration": 4, "method_name": "supervised", "student": model.state_dict(), "teacher": None,
        "config": cfg.model_dump(), "best": {"dice": 0.3, "iteration": 4},
        "data": {"train_ndim": 2, "val_split": "synthetic validation phantoms"},
    })
    out = tmp_path / "report"
    assert main(["report", str(run), "--output", str(out), "--overlay-cases", "2", "--device", "cpu",
                 "--tensorboard"]) == 0
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == 2
    md = (out / "comparison.md").read_text()
    assert "| synth | supervised | 0.3000 @ 4 |" in md and "overlays/" in md
    assert list((run / "tensorboard").glob("events.*"))


def _contents(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} \
        if folder.exists() else None


def _fail_second_figure(monkeypatch):
    """A plot that fails half-way: the first figure is written, the second raises (as matplotlib might)."""
    import bfaseg.reporting as reporting

    real, calls = reporting.save_figure, []

    def save_figure(fig, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("plot failed half-way")
        return real(fig, path, *a, **k)

    monkeypatch.setattr(reporting, "save_figure", save_figure)
    return 1  # an unexpected exception: exit 1, one line


def _ctrl_c_at_second_figure(monkeypatch):
    """Ctrl-C half-way: a report is one output, so nothing of it is kept (predict keeps finished files)."""
    import bfaseg.reporting as reporting

    real, calls = reporting.save_figure, []

    def save_figure(fig, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(fig, path, *a, **k)

    monkeypatch.setattr(reporting, "save_figure", save_figure)
    return 130


def _fail_moving_in(monkeypatch):
    """The disk fails while the finished report moves into place: comparison.md and loss.png are already in
    (the earlier ones moved aside), the rename of val_dice.png fails."""
    import errno
    import os

    from bfaseg.io.output import STAGING_PREFIX

    real = os.replace

    def replace(src, dst):
        if STAGING_PREFIX in str(src) and str(dst).endswith("val_dice.png"):
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return 2


@pytest.mark.parametrize("earlier", [False, True], ids=["fresh", "over_an_earlier_report"])
@pytest.mark.parametrize("fail", [_fail_second_figure, _ctrl_c_at_second_figure, _fail_moving_in],
                         ids=["while_plotting", "ctrl_c", "while_moving_in"])
def test_report_is_all_or_nothing(fail, earlier, tmp_path, monkeypatch, capsys):
    """A report that fails while it writes leaves no file of its own (not even a new --output folder) and an
    earlier report in the same place exactly as it was, with the user's own files beside it."""
    a = _fake_run(tmp_path / "runA", [(20, 0.5), (40, 0.7)], [1.0, 0.8, 0.6, 0.5])
    b = _fake_run(tmp_path / "runB", [(20, 0.4), (40, 0.45)], [1.1, 0.9])
    out = tmp_path / "report"
    if earlier:
        assert main(["report", str(a), "--output", str(out)]) == 0
        (out / "notes.txt").write_text("mine\n")
    before = _contents(out)
    capsys.readouterr()
    code = fail(monkeypatch)
    assert main(["report", str(a), str(b), "--output", str(out)]) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert _contents(out) == before  # None: no --output folder; else byte for byte, no hidden leftovers
    if earlier:
        assert sorted(p.name for p in out.iterdir()) == ["comparison.md", "loss.png", "notes.txt", "val_dice.png"]
    # the same report without the failure replaces the earlier one whole and leaves nothing hidden
    monkeypatch.undo()
    assert main(["report", str(a), str(b), "--output", str(out)]) == 0
    assert "| runB |" in (out / "comparison.md").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert (out / "notes.txt").exists() == earlier
