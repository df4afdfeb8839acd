"""Nothing lost, nothing unsafe: checkpoints, exact resume, safe loading, training guards, determinism.

Tiny synthetic 2-D runs (32x32, one thread); the kill-and-resume runs use a real subprocess
(``python -m bfaseg train``) killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from bfaseg import __version__
from bfaseg.cli.main import main
from bfaseg.errors import BfasegError
from bfaseg.training import checkpoint as ckpt
from conftest import TEST_PRECISION

BASE = {
    "data": {
        "dataset": "synthetic", "synthetic_ndim": 2, "synthetic_size": [32, 32], "patch_size": [32, 32],
        "labeled_fraction": 0.2, "synthetic_cases": 10, "synthetic_val_cases": 2,
    },
    "model": {"name": "unet2d", "num_classes": 3, "base_channels": 8},
    "train": {
        "iterations": 12, "batch_labeled": 2, "batch_unlabeled": 2, "val_every": 6, "log_every": 3,
        "checkpoint_every": 3, "threads": 1, "precision": TEST_PRECISION,
    },
    "method": {"name": "supervised"},
}


@pytest.fixture
def no_fsync(monkeypatch):
    """In-process runs skip fsync (durability is not what they test; the disk here is shared and slow).

    The killed subprocess runs keep the real fsync.
    """
    monkeypatch.setattr(ckpt.os, "fsync", lambda fd: None)


def write_cfg(path: Path, method: str = "supervised", **sections) -> Path:
    cfg = json.loads(json.dumps(BASE))
    cfg["method"] = {"name": method}
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def train(cfg: Path, out: Path, *extra: str) -> int:
    return main(["train", str(cfg), "--output", str(out), "--no-progress", *extra])


def records(run: Path) -> list[dict]:
    """log.jsonl without the wall-clock ``time`` field."""
    out = []
    for line in (run / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        r.pop("time", None)
        out.append(r)
    return out


def assert_same_weights(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs"


# --------------------------------------------------------------------------- checkpoint schema and retention


def test_checkpoint_schema_last_best_and_retention(tmp_path, capsys, no_fsync):
    cfg = write_cfg(tmp_path / "c.yaml", "mean_teacher", train={"keep_checkpoints": 2})
    assert train(cfg, tmp_path / "run", "--deterministic") == 0
    ckdir = tmp_path / "run" / "checkpoints"
    names = sorted(p.name for p in ckdir.iterdir())
    # periodic at 3, 6, 9, 12 with keep_checkpoints=2 -> only the two newest survive; no temp files
    assert names == ["best.pt", "iter_0000009.pt", "iter_0000012.pt", "last.pt"]

    state = ckpt.load_checkpoint(ckdir / "last.pt")
    for key in ("student", "teacher", "optimizer", "scheduler", "scaler", "iteration", "rng", "config",
                "bfaseg_version", "schema", "method", "best", "running"):
        assert key in state, key
    assert state["iteration"] == 12
    assert state["bfaseg_version"] == __version__
    assert state["teacher"] is not None and state["teacher"].keys() == state["student"].keys()
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    assert state["config"]["train"]["iterations"] == 12 and state["config"]["method"]["name"] == "mean_teacher"
    assert state["optimizer"]["state"], "optimizer momentum buffers are saved"
    assert state["scheduler"]["last_epoch"] == 12

    # best.pt is chosen by validation only: its iteration is a validation iteration and the best one
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    best = ckpt.load_checkpoint(ckdir / "best.pt")
    assert best["iteration"] == summary["best_iteration"] == best["best"]["iteration"]
    assert best["iteration"] % 6 == 0
    vals = [r for r in records(tmp_path / "run") if "val_dice" in r]
    assert [r["iteration"] for r in vals] == [6, 12]
    assert best["best"]["dice"] == max(r["val_dice"] for r in vals) == summary["best_dice"]
    # honest evaluation: the summary says which split selected the model
    assert summary["val_split"] == "synthetic validation phantoms"

    # the periodic checkpoint is the state at its iteration
    it9 = ckpt.load_checkpoint(ckdir / "iter_0000009.pt")
    assert it9["iteration"] == 9

    # keep_checkpoints: 0 -> only last and best
    cfg0 = write_cfg(tmp_path / "c0.yaml", "supervised", train={"keep_checkpoints": 0, "iterations": 6})
    assert train(cfg0, tmp_path / "run0") == 0
    assert sorted(p.name for p in (tmp_path / "run0" / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    capsys.readouterr()


# --------------------------------------------------------------------------- exact resume after SIGKILL

# log_every is not a multiple of checkpoint_every: a checkpoint falls between two log records,
# so the loss sums accumulated since the last record must be part of the checkpoint
RESUME_TRAIN = {"iterations": 16, "checkpoint_every": 3, "val_every": 6, "log_every": 4, "keep_checkpoints": 1}


def _logged_iteration(run: Path) -> int:
    try:
        lines = (run / "log.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    its = []
    for line in lines:
        try:
            its.append(json.loads(line)["iteration"])
        except ValueError:  # a line being written
            pass
    return max(its, default=0)


def _kill_run(cfg: Path, out: Path, rng: random.Random) -> tuple[int, int]:
    """Start a run in a subprocess; SIGKILL it at a random iteration once a checkpoint exists.

    The moment is picked after a random log record, so usually log records exist beyond the
    last checkpoint (which a resume must drop). Returns (checkpoint iteration, last logged iteration).
    """
    target = rng.choice([4, 8])
    proc = subprocess.Popen(
        [sys.executable, "-m", "bfaseg", "train", str(cfg), "--output", str(out), "--deterministic", "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    last = out / "checkpoints" / "last.pt"
    try:
        deadline = time.monotonic() + 120
        while not (last.exists() and _logged_iteration(out) >= target):
            assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no progress within 120 s"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.1))
        assert proc.poll() is None, "run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    return ckpt.load_checkpoint(last)["iteration"], _logged_iteration(out)


@pytest.mark.parametrize("method", ["supervised", "bfa"])
def test_sigkill_then_resume_is_bit_exact(tmp_path, method, capsys, no_fsync):
    rng = random.Random()
    cfg = write_cfg(tmp_path / "c.yaml", method, train=RESUME_TRAIN)

    killed = tmp_path / "killed"
    at, logged = _kill_run(cfg, killed, rng)
    at = f"{at} (log.jsonl reached {logged})"
    # the folder is a run now: training into it again without --resume is refused, nothing touched
    before = {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()}
    assert train(cfg, killed, "--deterministic") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "a run already exists here; pass --resume" in err and str(killed) in err
    assert {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()} == before

    # resume with a changed config (other than train.iterations): refused naming the key
    assert train(cfg, killed, "--deterministic", "--resume", "--set", "train.lr=0.05") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume" in err and "train.lr" in err

    assert train(cfg, killed, "--deterministic", "--resume") == 0
    assert not list((killed / "checkpoints").glob(".*.tmp")), "temp files of the killed write are cleaned up"

    ref = tmp_path / "ref"
    assert train(cfg, ref, "--deterministic") == 0
    capsys.readouterr()

    a = ckpt.load_checkpoint(ref / "checkpoints" / "last.pt")
    b = ckpt.load_checkpoint(killed / "checkpoints" / "last.pt")
    assert a["iteration"] == b["iteration"] == 16
    assert_same_weights(a["student"], b["student"], f"student (killed at {at})")
    if method == "bfa":
        assert_same_weights(a["teacher"], b["teacher"], f"teacher (killed at {at})")
    # the log is complete and has no duplicates: records after the checkpoint were dropped on resume
    assert records(killed) == records(ref), f"log.jsonl differs (killed at {at})"
    sa = json.loads((ref / "train_summary.json").read_text())
    sb = json.loads((killed / "train_summary.json").read_text())
    assert (sa["best_dice"], sa["best_iteration"]) == (sb["best_dice"], sb["best_iteration"])
    assert_same_weights(
        ckpt.load_checkpoint(ref / "checkpoints" / "best.pt")["student"],
        ckpt.load_checkpoint(killed / "checkpoints" / "best.pt")["student"],
        "best.pt",
    )


def test_resume_extends_iterations_and_drops_torn_log_line(tmp_path, capsys, no_fsync):
    """train.iterations may change on resume; a torn last log line (killed mid-write) is dropped."""
    cfg = write_cfg(tmp_path / "c.yaml", "supervised", train={"iterations": 6})
    run = tmp_path / "run"
    assert train(cfg, run) == 0
    with open(run / "log.jsonl", "a") as f:
        f.write('{"iteration": 7, "lo')  # a line cut short
    assert train(cfg, run, "--resume", "--set", "train.iterations=9") == 0
    capsys.readouterr()
    its = [r["iteration"] for r in records(run)]
    assert its == sorted(its) and its[-1] == 9
    assert ckpt.load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 9


# --------------------------------------------------------------------------- safe loading


class _Payload:
    """Unpickling this calls open(marker, 'w'): code execution on load."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted_checkpoints(tmp_path: Path, marker: Path) -> list[Path]:
    zipped = tmp_path / "zipped.pt"
    torch.save({"student": {"w": torch.zeros(1)}, "iteration": 1, "evil": _Payload(marker)}, zipped)
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"student": _Payload(marker)}))
    return [zipped, legacy]


def test_payload_would_run_without_safe_loading(tmp_path):
    """Sanity check of the payload itself: plain pickle does execute it."""
    marker = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_checkpoint_refuses_crafted_pickles(tmp_path):
    marker = tmp_path / "pwned"
    for path in _crafted_checkpoints(tmp_path, marker):
        with pytest.raises(BfasegError) as exc:
            ckpt.load_checkpoint(path)
        msg = str(exc.value)
        assert "\n" not in msg and str(path) in msg and "refused" in msg, msg
        assert not marker.exists()


def test_resume_and_evaluate_refuse_crafted_checkpoint(tmp_path, capsys):
    marker = tmp_path / "pwned"
    zipped, _ = _crafted_checkpoints(tmp_path, marker)
    cfg = write_cfg(tmp_path / "c.yaml")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(zipped.read_bytes())
    assert train(cfg, run, "--resume") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(last) in err and "refused" in err
    assert not marker.exists()
    assert sorted(p.name for p in run.rglob("*")) == ["checkpoints", "last.pt"], "nothing written on refusal"

    # the inference loader (used by evaluate/predict) goes through the same safe loader
    try:
        from bfaseg.inference.checkpoints import load_model_from_checkpoint
    except ImportError:
        load_model_from_checkpoint = None
    if load_model_from_checkpoint is not None:
        with pytest.raises(BfasegError, match="refused"):
            load_model_from_checkpoint(last)
        assert not marker.exists()

    # evaluate / predict, where those commands exist: same refusal, one error line, no payload run
    from bfaseg.cli.main import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    data = tmp_path / "data"
    h5 = data / "2018LA_Seg_Training Set" / "case_a" / "mri_norm2.h5"
    h5.parent.mkdir(parents=True)
    import h5py

    with h5py.File(h5, "w") as f:
        f["image"] = torch.zeros(8, 8, 8).numpy()
        f["label"] = torch.zeros(8, 8, 8, dtype=torch.uint8).numpy()
    (data / "test.list").write_text("case_a\n")
    argvs = {
        "evaluate": ["evaluate", "--checkpoint", str(last), "--data", str(data), "--split", "test.list",
                     "--dataset", "la", "--output", str(tmp_path / "eval"), "--no-progress"],
        "predict": ["predict", "--checkpoint", str(last), "--input", str(h5), "--output", str(tmp_path / "pred")],
    }
    for name, argv in argvs.items():
        if name not in commands:
            continue
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (name, err)
        assert str(last) in err and "refused" in err, (name, err)
        assert not marker.exists()


def test_config_yaml_python_tags_are_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"train:\n  iterations: !!python/object/apply:os.mkdir ['{marker}']\n")
    assert main(["train", str(cfg), "--output", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(cfg) in err and "invalid YAML" in err
    assert not marker.exists() and not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- training guards


def test_nan_loss_stops_with_iteration_and_term_keeping_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    from bfaseg.methods.supervised import Supervised

    real = Supervised.training_step

    def step(self, batch, iteration):
        loss, logs = real(self, batch, iteration)
        if iteration == 6:  # the 7th iteration (log.jsonl counts 1-based)
            logs["sup"] = loss * float("nan")
            loss = loss + logs["sup"]
        return loss, logs

    monkeypatch.setattr(Supervised, "training_step", step)
    cfg = write_cfg(tmp_path / "c.yaml")
    run = tmp_path / "run"
    assert train(cfg, run) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: iteration 7: loss term 'sup'") and "last.pt" in err
    state = ckpt.load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["iteration"] == 6
    assert all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())
    assert not (run / "train_summary.json").exists()


def test_nan_between_sparse_checks_never_reaches_a_checkpoint(tmp_path, capsys, monkeypatch):
    """On GPU the loss is checked only every log_every steps; the checkpoint guard still catches it."""
    from bfaseg.methods.supervised import Supervised
    from bfaseg.training.trainer import Trainer

    real = Supervised.training_step

    def step(self, batch, iteration):
        loss, logs = real(self, batch, iteration)
        if iteration == 6:
            logs["sup"] = loss * float("nan")
            loss = loss + logs["sup"]
        return loss, logs

    monkeypatch.setattr(Supervised, "training_step", step)
    monkeypatch.setattr(Trainer, "_check_finite", lambda self, *a: None)  # as if no check this step
    cfg = write_cfg(tmp_path / "c.yaml", train={"log_every": 4, "val_every": 100})
    run = tmp_path / "run"
    assert train(cfg, run) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "iteration 9" in err and "NaN" in err
    state = ckpt.load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["iteration"] == 6
    assert all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())


def test_nan_teacher_is_detected(tmp_path, capsys, monkeypatch):
    from bfaseg.training import trainer as trainer_mod

    real = trainer_mod.ema_update
    calls = {"n": 0}

    def corrupting_ema(teacher, student, decay):
        real(teacher, student, decay)
        calls["n"] += 1
        if calls["n"] == 5:  # after the 5th step's EMA update
            with torch.no_grad():
                next(teacher.parameters()).fill_(float("nan"))

    monkeypatch.setattr(trainer_mod, "ema_update", corrupting_ema)
    cfg = write_cfg(tmp_path / "c.yaml", "mean_teacher", train={"log_every": 5, "checkpoint_every": 4})
    run = tmp_path / "run"
    assert train(cfg, run) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: iteration 5: the teacher's weights are NaN")
    state = ckpt.load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in state["teacher"].values() if v.is_floating_point())


# --------------------------------------------------------------------------- determinism


def test_same_seed_deterministic_runs_give_identical_logs(tmp_path, capsys, no_fsync):
    cfg = write_cfg(tmp_path / "c.yaml", "bfa", train={"iterations": 8, "log_every": 2, "val_every": 4})
    assert train(cfg, tmp_path / "a", "--deterministic") == 0
    assert train(cfg, tmp_path / "b", "--deterministic") == 0
    capsys.readouterr()
    ra, rb = records(tmp_path / "a"), records(tmp_path / "b")
    assert len(ra) == 6 and ra == rb  # 4 loss records, 2 validation records
    a = ckpt.load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = ckpt.load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert_same_weights(a["student"], b["student"], "student")
    assert_same_weights(a["teacher"], b["teacher"], "teacher")
