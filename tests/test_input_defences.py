"""Defences by construction against the six kinds of bad input of issue 30 (docs/ERRORS.md,
"Defences by kind"): damaged files, reused folders, options that contradict, data that disagrees
with what it declares, sizes that cannot work, messages and leftovers.

Each test checks a whole kind through the one place that guards it (the checkpoint loader, the
folder record, the option check, ...), not one example.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bfaseg.errors import BfasegError
from bfaseg.io import checkpoint as ckpt


# --------------------------------------------------------------------------- 1. damaged files


def damage_in_place(path: Path, member_index: int = 0, value: float = 0.5) -> str:
    """Overwrite the stored bytes of one tensor of a zip checkpoint with other valid floats, in place
    (as a bad disk sector or a careless editor would): the zip CRC no longer matches, torch.load does not care."""
    with zipfile.ZipFile(path) as z:
        members = [i for i in z.infolist() if "/data/" in i.filename and i.file_size >= 64]
    info = members[member_index]
    with open(path, "r+b") as f:
        f.seek(info.header_offset)
        head = f.read(30)
        start = info.header_offset + 30 + int.from_bytes(head[26:28], "little") + int.from_bytes(head[28:30], "little")
        f.seek(start)
        f.write(np.full(16, value, np.float32).tobytes())
    return info.filename


def _state():
    g = torch.Generator().manual_seed(0)
    return {"student": {"w": torch.randn(8, 4, generator=g), "b": torch.zeros(8, dtype=torch.bfloat16),
                        "n": torch.tensor(3)},
            "teacher": None, "iteration": 7, "config": {"train": {"lr": 0.01}}, "rng": {"python": (3, (1, 2), None)}}


def test_content_hash_is_written_and_a_clean_checkpoint_loads(tmp_path):
    ckpt.save_checkpoint(tmp_path / "a.pt", _state())
    state = ckpt.load_checkpoint(tmp_path / "a.pt")
    assert state["content_hash"].startswith("blake2b:")
    assert ckpt.content_hash(state) == state["content_hash"]
    # deterministic, and every part counts: values, dtype, shape, plain values, key names
    assert ckpt.content_hash(_state()) == ckpt.content_hash(_state())
    for change in (lambda s: s["student"]["w"].__setitem__((0, 0), 1.0),
                   lambda s: s["student"].__setitem__("b", s["student"]["b"].float()),
                   lambda s: s["student"].__setitem__("w", s["student"]["w"].reshape(4, 8)),
                   lambda s: s.__setitem__("iteration", 8),
                   lambda s: s["config"]["train"].__setitem__("lr", 0.02),
                   lambda s: s["student"].__setitem__("w2", s["student"].pop("w"))):
        other = _state()
        change(other)
        assert ckpt.content_hash(other) != ckpt.content_hash(_state())


@pytest.mark.parametrize("member", [0, 1])
def test_a_checkpoint_changed_in_place_is_refused_as_damaged(tmp_path, member):
    path = tmp_path / "a.pt"
    ckpt.save_checkpoint(path, {"student": {"w": torch.randn(64, 4), "v": torch.randn(32)}, "iteration": 1})
    damage_in_place(path, member)
    with pytest.raises(BfasegError, match=rf"^{path}: damaged: "):
        ckpt.load_checkpoint(path)


def test_resaving_a_loaded_checkpoint_writes_a_fresh_hash(tmp_path):
    ckpt.save_checkpoint(tmp_path / "a.pt", _state())
    state = ckpt.load_checkpoint(tmp_path / "a.pt")
    state["iteration"] = 99
    ckpt.save_checkpoint(tmp_path / "b.pt", state)
    assert ckpt.load_checkpoint(tmp_path / "b.pt")["iteration"] == 99


def test_old_checkpoint_without_hash_loads_once_noted_and_its_zip_crcs_are_checked(tmp_path, caplog):
    path = tmp_path / "old.pt"
    torch.save({"schema": 1, "student": {"w": torch.randn(64, 4)}, "iteration": 1}, path)
    with caplog.at_level(logging.WARNING, logger="bfaseg"):
        ckpt.load_checkpoint(path)
        ckpt.load_checkpoint(path)
    notes = [r.getMessage() for r in caplog.records if "without a content hash" in r.getMessage()]
    assert len(notes) == 1 and str(path) in notes[0]
    damage_in_place(path)
    with pytest.raises(BfasegError, match=rf"^{path}: damaged: the stored bytes of .*data/0 no longer match"):
        ckpt.load_checkpoint(path)


# --------------------------------------------------------------------------- 1. complex and other non-real images


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_nifti_image_of_complex_values_is_refused(tmp_path, dtype):
    import nibabel as nib

    from bfaseg.io.nifti import load_nifti

    a = np.ones((6, 6, 4))
    path = tmp_path / "c.nii.gz"
    nib.save(nib.Nifti1Image((a + 1j * a).astype(dtype), np.eye(4)), str(path))
    with pytest.raises(BfasegError, match=rf"^{path}: voxels must be real numbers, got dtype complex"):
        load_nifti(path)


def test_nifti_rgb_image_is_refused(tmp_path):
    import nibabel as nib

    from bfaseg.io.nifti import load_nifti

    rgb = np.zeros((6, 6, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = tmp_path / "rgb.nii"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(path))
    with pytest.raises(BfasegError, match=rf"^{path}: voxels must be real numbers"):
        load_nifti(path)


# --------------------------------------------------------------------------- 2. a folder reused by another run


def _experiment(tmp_path, cfg: dict, out: Path, *extra) -> tuple[int, str]:
    import yaml

    from bfaseg.cli.main import main

    path = tmp_path / f"c{abs(hash(repr(cfg))) % 10**6}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return main(["experiment", str(path), "--methods", "supervised", "--seeds", "1", "--output", str(out),
                 "--no-progress", *extra])


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _tiny(**data):
    from conftest import tiny_config

    cfg = tiny_config("supervised", iterations=2, val_every=2, checkpoint_every=2, log_every=1)
    cfg["model"]["base_channels"] = 4
    cfg["data"].update(data)
    return cfg


def test_config_diff_compares_as_json_and_leaves_out_what_may_change():
    from bfaseg.training.run_record import config_diff

    old = {"data": {"patch_size": (32, 32), "root": "a"}, "train": {"iterations": 4, "threads": 2, "lr": 0.01}}
    assert config_diff(old, {"data": {"patch_size": [32, 32], "root": "a"},
                             "train": {"iterations": 8, "threads": 1, "lr": 0.01}}) == []
    assert config_diff(old, {"data": {"patch_size": [32, 32], "root": "b"}, "train": {"lr": 0.02}}) == \
        ["data.root", "train.lr"]
    assert config_diff(old, {**old, "train": {**old["train"], "iterations": 8}}, allowed=set()) == ["train.iterations"]


def test_experiment_folder_of_another_config_is_refused_then_replaced_with_force(tmp_path, capsys):
    out = tmp_path / "exp"
    assert _experiment(tmp_path, _tiny(), out) == 0
    assert (out / "supervised_s1" / "config.json").is_file()
    capsys.readouterr()
    before = _snapshot(out)
    # another dataset (here: other phantoms) in the same folder: refused, naming the run and the key
    assert _experiment(tmp_path, _tiny(synthetic_cases=12), out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --output {out}: run supervised_s1 was made with another "
                                                   "config (it differs in data.synthetic_cases); pass --force"), err
    assert _snapshot(out) == before
    # a finished run asked for more iterations: its results are those of 2 iterations, refused as well
    assert _experiment(tmp_path, _tiny(), out, "--iterations", "3") == 2
    assert "differs in train.iterations" in capsys.readouterr().err
    # --force starts over; the old run is moved aside, not deleted, and its row leaves the table
    old_ckpt = (out / "supervised_s1" / "checkpoints" / "last.pt").read_bytes()
    assert _experiment(tmp_path, _tiny(synthetic_cases=12), out, "--force") == 0
    assert (out / "replaced" / "supervised_s1-1" / "checkpoints" / "last.pt").read_bytes() == old_ckpt
    from bfaseg.training.run_record import recorded_config

    assert recorded_config(out / "supervised_s1")["data"]["synthetic_cases"] == 12
    assert "[replaced] supervised_s1" in capsys.readouterr().err
    # the same config again: nothing to refuse, the run is skipped
    assert _experiment(tmp_path, _tiny(synthetic_cases=12), out) == 0
    assert "[skip] supervised_s1: done" in capsys.readouterr().err


def test_experiment_checks_runs_in_the_table_that_this_command_does_not_plan(tmp_path, capsys):
    import json

    out = tmp_path / "exp"
    assert _experiment(tmp_path, _tiny(), out) == 0
    capsys.readouterr()
    # the new command plans only seed 2, but seed 1's row (another config) would share its table
    code = _experiment(tmp_path, _tiny(synthetic_cases=12), out, "--seeds", "2")
    err = capsys.readouterr().err
    assert code == 2 and "run supervised_s1 was made with another config" in err, err
    assert not (out / "supervised_s2").exists()
    # evaluations made on another list are not presented as this command's
    results = json.loads((out / "results.json").read_text())
    results["supervised_s1"]["eval_list"] = "test.list"
    (out / "results.json").write_text(json.dumps(results))
    assert _experiment(tmp_path, _tiny(), out) == 2
    assert "run supervised_s1 was evaluated on test.list; pass --reevaluate" in capsys.readouterr().err


def test_train_on_a_run_of_another_config_names_the_keys(tmp_path, capsys):
    import yaml

    from bfaseg.cli.main import main

    (tmp_path / "a.yaml").write_text(yaml.safe_dump(_tiny()))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(_tiny(synthetic_cases=12)))
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "a.yaml"), "--output", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["train", str(tmp_path / "b.yaml"), "--output", str(run), "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"error: {run}: a run with another config already exists here "
                                       "(it differs in data.synthetic_cases); choose another --output\n")
    assert main(["train", str(tmp_path / "b.yaml"), "--output", str(run), "--no-progress", "--resume"]) == 2
    assert "--resume: the config differs from the run's in data.synthetic_cases" in capsys.readouterr().err
