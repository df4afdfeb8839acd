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


def _experiment(tmp_path, cfg: dict, out: Path, *extra, seeds: str = "1") -> int:
    import yaml

    from bfaseg.cli.main import main

    path = tmp_path / f"c{abs(hash(repr(cfg))) % 10**6}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return main(["experiment", str(path), "--methods", "supervised", "--seeds", seeds, "--output", str(out),
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
    # a run recorded before a key existed used its default: no difference in that key
    from bfaseg.config import validate_config

    full = validate_config(_tiny()).model_dump()
    older = {section: dict(values) if isinstance(values, dict) else values for section, values in full.items()}
    del older["train"]["channels_last"], older["eval"]["largest_component"]
    assert config_diff(older, full) == []
    older["train"]["lr"] = 0.5
    assert config_diff(older, full) == ["train.lr"]


def test_a_changed_method_default_is_a_difference_for_runs_recorded_with_their_parameters():
    """Runs record every method parameter (resolved_config); a default that changed since is then a difference,
    while a record from before (method name only) is compared with today's defaults."""
    from conftest import tiny_config
    from bfaseg.config import validate_config
    from bfaseg.training.run_record import config_diff, resolved_config

    cfg = validate_config(tiny_config("ua_mt"))
    recorded = resolved_config(cfg)
    assert recorded["method"]["mc_passes"] == 8 and "entropy_bound_classes" in recorded["method"]
    assert config_diff(recorded, cfg.model_dump()) == []
    recorded["method"]["mc_passes"] = 4  # as if the default had been 4 when the run was made
    assert config_diff(recorded, cfg.model_dump()) == ["method.mc_passes"]
    assert config_diff({**recorded, "method": {"name": "ua_mt"}}, cfg.model_dump()) == []


def test_a_finished_run_whose_teacher_mode_was_another_default_is_not_reused(tmp_path):
    """A finished run records the mode its teacher predicted in (train_summary.json); when the config leaves the
    mode to the method and the method's default has changed since, the run is not the same config."""
    import json
    from conftest import tiny_config
    from bfaseg.experiments import PlannedRun, reused_runs
    from bfaseg.config import validate_config
    from bfaseg.training.run_record import resolved_config, write_run_config

    base = tiny_config("mean_teacher")
    cfg = validate_config(base)
    run = tmp_path / "mean_teacher_s1"
    run.mkdir()
    write_run_config(run, resolved_config(cfg))
    planned = [PlannedRun("mean_teacher_s1", "mean_teacher", 1, cfg)]
    for made, stale in (("train", {}), ("eval", {"mean_teacher_s1": ["train.teacher_mode"]})):
        (run / "train_summary.json").write_text(json.dumps({"teacher_mode": made}))
        assert reused_runs(tmp_path, planned, {}, base, []) == stale


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
    code = _experiment(tmp_path, _tiny(synthetic_cases=12), out, seeds="2")
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
                                       "(it differs in data.synthetic_cases); pass --force to start over (the run "
                                       "is moved aside) or choose another --output\n")
    assert main(["train", str(tmp_path / "b.yaml"), "--output", str(run), "--no-progress", "--resume"]) == 2
    assert "--resume: the config differs from the run's in data.synthetic_cases" in capsys.readouterr().err


def _contents(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_force_moves_the_old_run_aside_and_starts_fresh(tmp_path, capsys):
    """`train --force` as `experiment --force`: the old run folder goes to a sibling, intact (nothing is deleted),
    one line says where, and a fresh run starts; a start-up that fails puts the old run back."""
    import json

    import yaml

    from bfaseg.cli.main import main
    from bfaseg.training.run_record import recorded_config

    (tmp_path / "a.yaml").write_text(yaml.safe_dump(_tiny()))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(_tiny(synthetic_cases=12)))
    run = tmp_path / "run"
    train = lambda cfg, *extra: main(["train", str(tmp_path / cfg), "--output", str(run), "--no-progress", *extra])  # noqa: E731
    assert train("a.yaml") == 0
    (run / "notes.txt").write_text("mine\n")  # whatever the user put there goes along
    old = _contents(run)
    capsys.readouterr()
    assert train("b.yaml", "--force") == 0
    err = capsys.readouterr().err
    aside = tmp_path / "run.replaced-1"
    assert [line for line in err.splitlines() if "replaced" in line] == [
        f"[replaced] {run}: moved the earlier run (another config: differs in data.synthetic_cases) to {aside}; "
        "a fresh run starts here"], err
    assert _contents(aside) == old
    assert recorded_config(run)["data"]["synthetic_cases"] == 12 and not (run / "notes.txt").exists()
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "loss" in r] == [1, 2]  # a fresh log, not the old one continued
    assert json.loads((run / "train_summary.json").read_text())["iterations"] == 2
    # the same config again: the next free sibling, the first one untouched
    new = _contents(run)
    assert train("b.yaml", "--force") == 0
    assert _contents(tmp_path / "run.replaced-2") == new and _contents(aside) == old
    capsys.readouterr()
    # a start-up that fails after the move (a 3-D network on 2-D data) leaves the folder as it was
    before = _contents(run)
    assert train("b.yaml", "--force", "--set", "model.name=vnet") == 2
    assert capsys.readouterr().err == "error: model.name: vnet is 3-D but the data trains 2-D\n"
    assert _contents(run) == before and not (tmp_path / "run.replaced-3").exists()


# --------------------------------------------------------------------------- 3. options that contradict or do not apply


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("mode", ["fast", "paper"])
def test_every_window_option_combination_is_used_or_refused(ndim, mode):
    """All 8 combinations of --stride/--overlap/--batch-size per network and mode: an option either changes the
    prediction or is refused by name; none is dropped."""
    import itertools

    from bfaseg.inference.predictor import check_window_options

    for stride, overlap, batch in itertools.product([None, [4, 4, 4]], [None, 0.5], [None, 2]):
        given = {"--stride": stride is not None, "--overlap": overlap is not None, "--batch-size": batch is not None}
        unused = {o for o, g in given.items() if g and (
            ndim == 2 or (mode == "paper" and o != "--stride") or (mode == "fast" and o == "--overlap" and stride))}
        if unused:
            with pytest.raises(BfasegError) as err:
                check_window_options(ndim, mode, stride, overlap, batch)
            assert str(err.value).split(":")[0] in unused
        else:
            check_window_options(ndim, mode, stride, overlap, batch)


@pytest.fixture(scope="module")
def run3d(tmp_path_factory):
    import yaml

    from bfaseg.cli.main import main

    tmp = tmp_path_factory.mktemp("run3d")
    cfg = _tiny()
    cfg["data"].update(synthetic_ndim=3, synthetic_size=[24, 24, 16], patch_size=[16, 16, 16], synthetic_cases=6,
                       synthetic_val_cases=1)
    cfg["model"].update(name="vnet", num_classes=3)
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp / "c.yaml"), "--output", str(tmp / "run"), "--no-progress"]) == 0
    import nibabel as nib

    (tmp / "in").mkdir()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(24, 24, 16)).astype(np.float32), np.eye(4)),
             str(tmp / "in" / "x_0000.nii.gz"))
    return tmp


def test_summary_records_what_was_used_and_every_warning(run3d, tmp_path, capsys):
    import json

    from bfaseg.cli.main import main

    argv = ["predict", "--checkpoint", str(run3d / "run/checkpoints/last.pt"), "--input", str(run3d / "in"),
            "--device", "cpu", "--no-progress", "--no-quality"]
    assert main([*argv, "--output", str(tmp_path / "a"), "--stride", "8", "8", "8", "--h5-format", "nifti"]) == 0
    err = capsys.readouterr().err
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["inference"]["stride"] == [8, 8, 8] and summary["inference"]["overlap"] is None  # not used
    assert summary["warnings"] == [err.removeprefix("warning: ").strip()]
    assert "--h5-format nifti: applies to h5 inputs only" in err


@pytest.mark.parametrize("command,argv,expect", [
    ("evaluate", ["--mode", "fast", "--stride", "4", "4", "4", "--overlap", "0.9"], "--overlap: --stride sets the windows"),
    ("evaluate", ["--mode", "paper", "--overlap", "0.9"], "--overlap: applies to --mode fast only"),
    ("evaluate", ["--mode", "paper", "--batch-size", "2"], "--batch-size: applies to --mode fast only"),
    ("predict", ["--policy", "worst"], "--policy: applies only with --labels"),
    ("predict", ["--empty-class-policy", "one"], "--empty-class-policy: applies only with --labels"),
])
def test_evaluate_predict_options_that_would_be_dropped_are_refused(command, argv, expect, run3d, tmp_path, capsys):
    from bfaseg.cli.main import main

    out = tmp_path / "out"
    data = ["--input", str(run3d / "in")] if command == "predict" else ["--data", str(run3d), "--split", "x.list"]
    code = main([command, "--checkpoint", str(run3d / "run/checkpoints/last.pt"), *data,
                 "--output", str(out), "--device", "cpu", "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {expect}") and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("argv,expect", [
    (["report", "{run}", "--plateau-points", "2"], "--plateau-points: applies only with --plateau"),
    (["report", "{run}", "--overlay-cases", "0", "--checkpoint", "last"], "--checkpoint: applies to the overlays"),
    (["report", "{run}", "--overlay-cases", "0", "--tensorboard"], "--tensorboard: applies to the overlays"),
    (["suggest", "--checkpoint", "{ckpt}", "--passes", "4"], "--passes: applies to --strategy mc_dropout only"),
    (["suggest", "--checkpoint", "{ckpt}", "--strategy", "entropy", "--seed", "3"], "--seed: applies to --strategy"),
    (["demo", "--overwrite"], "--overwrite: applies only with --output"),
    (["experiment", "{cfg}", "--force", "--no-train"], "--force: starts runs over, which --no-train forbids"),
    (["experiment", "{cfg}", "--iterations", "3", "--set", "train.iterations=4"],
     "--set train.iterations=4: --iterations 3 sets train.iterations too"),
    (["experiment", "{cfg}", "--jobs", "2", "--set", "train.threads=4"], "--set train.threads=4: --jobs 2 sets"),
    (["train", "{cfg}", "--set", "train.lr=0.1", "--set", "train.lr=0.2"], "--set train.lr: given twice"),
    (["train", "{cfg}", "--deterministic", "--set", "train.deterministic=false"],
     "--set train.deterministic=false: --deterministic sets train.deterministic too"),
])
def test_other_commands_refuse_options_that_do_not_apply(argv, expect, run3d, tmp_path, capsys):
    from bfaseg.cli.main import main

    argv = [a.format(run=run3d / "run", ckpt=run3d / "run/checkpoints/last.pt", cfg=run3d / "c.yaml") for a in argv]
    out = tmp_path / "out"
    extra = [] if argv[0] == "demo" else ["--output", str(out)]  # demo: --overwrite without --output
    if argv[0] != "report":  # report has no progress bar
        extra.append("--no-progress")
    code = main([*argv, *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {expect}") and err.count("\n") == 1, err
    assert not out.exists()


def test_an_option_given_twice_is_refused_not_the_last_one_kept(capsys):
    from bfaseg.cli.main import main, refuse_repeated_options

    assert main(["metrics", "p.npy", "g.npy", "--policy", "worst", "--policy=paper"]) == 2
    assert capsys.readouterr().err == ("error: --policy: given twice; the last one would silently replace the first, "
                                       "give it once\n")
    refuse_repeated_options(["train", "c.yaml", "--set", "a.b=1", "--set", "a.c=2"])  # --set collects its values
    refuse_repeated_options(["metrics", "--", "--x", "--x"])  # after --, file names


# --------------------------------------------------------------------------- 4. data that disagrees with what it declares


def _ct_like(rng, shape=(24, 24, 16)):
    """Hounsfield units: air around the body, fat, soft tissue, some bone."""
    img = np.full(shape, -1000.0) + rng.normal(0, 20, shape)
    body = np.zeros(shape, bool)
    body[4:20, 4:20, :] = True
    img[body] = rng.normal(40, 30, body.sum())
    img[4:20, 4:6, :] = rng.normal(-100, 20, (16, 2, shape[2]))  # fat
    img[10:12, 10:12, :] = 700  # bone
    return img.astype(np.float32)


@pytest.mark.parametrize("name,make,outcome", [
    ("ct", _ct_like, "ok"),
    ("ct_crop_no_air", lambda rng: _ct_like(rng)[5:19, 5:19], "ok"),
    ("ct_mostly_air", lambda rng: rng.normal(-900, 30, (24, 24, 16)).astype(np.float32), "ok"),  # below the window
    ("mr_195_1056", lambda rng: (195 + rng.random((24, 24, 16)) * 861).astype(np.float32), "refused"),
    ("mr_0_1", lambda rng: rng.random((24, 24, 16)).astype(np.float32) * 0.2 + 300, "refused"),
    # raw scanner values (0..4095, rescale not applied): air lands inside the window, so only a warning
    ("ct_not_rescaled", lambda rng: np.clip(_ct_like(rng) + 1024, 0, None), "warned"),
    ("ct_not_rescaled_small_body", lambda rng: np.clip(_ct_like(rng) + 1024, 0, None)[2:22, 2:22], "refused"),
    ("mr_zscored", lambda rng: rng.normal(0, 1, (24, 24, 16)).astype(np.float32), "ok"),  # inside the window
    ("positive_mostly_inside", lambda rng: (rng.random((24, 24, 16)) * 300).astype(np.float32), "warned"),
])
def test_declared_ct_is_checked_against_the_voxels(name, make, outcome, tmp_path, caplog):
    from bfaseg.data import nifti

    nifti._warned.clear()
    data = make(np.random.default_rng(0))
    with caplog.at_level(logging.WARNING, logger="bfaseg"):
        if outcome == "refused":
            with pytest.raises(BfasegError, match=r"x\.nii\.gz: declared CT by d\.json, but .* lie outside the CT "
                                                  r"window \[-125, 275\] HU"):
                nifti.check_declared_modality(data, "CT", nifti.DEFAULT_CT_WINDOW, tmp_path / "x.nii.gz", "d.json")
            return
        nifti.check_declared_modality(data, "CT", nifti.DEFAULT_CT_WINDOW, tmp_path / "x.nii.gz", "d.json")
    assert ("no voxel is below 0 HU" in caplog.text) == (outcome == "warned"), caplog.text


def test_declared_mr_with_air_in_hounsfield_units_warns(tmp_path, caplog):
    from bfaseg.data import nifti

    nifti._warned.clear()
    with caplog.at_level(logging.WARNING, logger="bfaseg"):
        for i in range(2):  # once per folder
            nifti.check_declared_modality(_ct_like(np.random.default_rng(i)), "MR", nifti.DEFAULT_CT_WINDOW,
                                          tmp_path / f"x{i}.nii.gz", "data.modality")
    assert caplog.text.count("declared MR by data.modality, but values go down to") == 1


def _ct_declared_dataset(tmp_path, cases):
    """A nnU-Net-style folder whose dataset.json declares CT, holding ``cases`` ((image, label) pairs), and the
    path of a 2-iteration supervised config on it; returns (dataset root, config dict, config path)."""
    import json

    import nibabel as nib
    import yaml

    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i, (img, lab) in enumerate(cases):
        nib.save(nib.Nifti1Image(img, np.eye(4)), str(root / "imagesTr" / f"c{i}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(root / "labelsTr" / f"c{i}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "x": 1}}))
    cfg = {"data": {"dataset": "nifti", "root": str(root), "patch_size": [16, 16, 16], "labeled": 1, "val_cases": 1},
           "model": {"name": "vnet", "num_classes": 2, "base_channels": 4},
           "train": {"iterations": 2, "threads": 1, "precision": "fp32"}, "method": {"name": "supervised"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return root, cfg, tmp_path / "c.yaml"


def test_training_on_mr_images_declared_ct_is_refused_naming_file_and_declaration(tmp_path, capsys):
    import yaml

    from bfaseg.cli.main import main

    rng = np.random.default_rng(0)
    cases = []
    for _ in range(3):
        lab = np.zeros((24, 24, 16), np.uint8)
        lab[6:18, 6:18, 4:12] = 1
        cases.append(((195 + rng.random(lab.shape) * 400 + lab * 450.0).astype(np.float32), lab))
    root, cfg, _ = _ct_declared_dataset(tmp_path, cases)
    out = tmp_path / "out"
    assert main(["train", str(tmp_path / "c.yaml"), "--output", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {root}/imagesTr/c0_0000.nii.gz: declared CT by {root}/dataset.json, but ")
    assert err.count("\n") == 1 and not out.exists()
    # the same images declared MR (data.modality overrides dataset.json) train
    cfg["data"]["modality"] = "MR"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "--output", str(out), "--no-progress"]) == 0


def test_inference_reads_images_as_training_did_and_checks_them_against_it(tmp_path, capsys, monkeypatch):
    """With ``data.modality: auto`` training reads every image with dataset.json's CT; an image read on its own
    decides by its minimum, so a CT crop without air was windowed in training and z-scored by predict and
    evaluate. The checkpoint records what training read; inference reads alike and checks new images against it."""
    import nibabel as nib

    from bfaseg.cli.main import main
    from bfaseg.data.nifti_dataset import inference_modality
    from bfaseg.evaluation import predict as predict_module

    rng = np.random.default_rng(0)
    crops = [_ct_like(rng)[5:19, 5:19] for _ in range(3)]  # a crop of the body: fat and bone, no air (minimum above -500 HU)
    root, cfg, _ = _ct_declared_dataset(tmp_path, [(img, (img > 0).astype(np.uint8)) for img in crops])
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "c.yaml"), "--output", str(run), "--no-progress"]) == 0
    state = ckpt.load_checkpoint(run / "checkpoints/last.pt")
    assert (state["data"]["modality"], state["data"]["modality_declared_by"]) == ("CT", f"{root}/dataset.json")

    read = []  # the normalisation predict applies to each image
    real = predict_module.load_nifti_image
    monkeypatch.setattr(predict_module, "load_nifti_image",
                        lambda *a, **k: read.append(real(*a, **k)) or read[-1])
    argv = ["predict", "--checkpoint", str(run / "checkpoints/last.pt"), "--device", "cpu", "--no-progress"]
    assert main([*argv, "--input", str(root / "imagesTr" / "c0_0000.nii.gz"), "--output", str(tmp_path / "p")]) == 0
    assert read[-1].meta["normalization"]["kind"] == "ct_window"  # as in training; z-scored before
    mr = tmp_path / "mr"
    mr.mkdir()
    nib.save(nib.Nifti1Image((195 + rng.random((24, 24, 16)) * 861).astype(np.float32), np.eye(4)),
             str(mr / "m_0000.nii.gz"))
    capsys.readouterr()
    assert main([*argv, "--input", str(mr), "--output", str(tmp_path / "p2")]) == 2
    assert capsys.readouterr().err.startswith(
        f"error: {mr}/m_0000.nii.gz: declared CT by the checkpoint's training data ({root}/dataset.json), but ")
    assert not (tmp_path / "p2").exists()

    # evaluate and suggest --split read through the same rule: the config's modality when it names one, the
    # checkpoint's record, else (checkpoints before the record) dataset.json of --data, else per image
    assert inference_modality("MR", state["data"], root) == ("MR", "data.modality")
    assert inference_modality("auto", {"modality": None}, root) == ("auto", None)  # training decided per image
    assert inference_modality("auto", {}, root) == ("CT", f"{root}/dataset.json")
    assert inference_modality("auto", {}, None) == ("auto", None)


def _mask_pair(tmp_path, affine_b, shape=(20, 20, 10)):
    import nibabel as nib

    m = np.zeros(shape, np.uint8)
    m[3:9, 4:12, 2:6] = 1
    nib.save(nib.Nifti1Image(m, np.eye(4)), str(tmp_path / "a.nii.gz"))
    nib.save(nib.Nifti1Image(m, affine_b), str(tmp_path / "b.nii.gz"))
    return str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")


def _affine(flip=False, shift=0.0, zoom=1.0):
    a = np.diag([zoom, zoom, zoom, 1.0])
    if flip:
        a[0, 0] = -zoom
    a[0, 3] = shift
    return a


@pytest.mark.parametrize("affine", [_affine(flip=True, shift=100), _affine(shift=100), _affine(zoom=2),
                                    _affine(flip=True, shift=19)])
def test_metrics_refuses_masks_in_different_spaces(affine, tmp_path, capsys):
    from bfaseg.cli.main import main

    a, b = _mask_pair(tmp_path, affine)
    assert main(["metrics", a, b]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: PRED {a} and GT {b} differ in affine") and "--resample" in err, err


def test_metrics_resample_applies_to_nifti_only(tmp_path, capsys):
    from bfaseg.cli.main import main

    np.save(tmp_path / "a.npy", np.zeros((4, 4, 4), np.uint8))
    assert main(["metrics", str(tmp_path / "a.npy"), str(tmp_path / "a.npy"), "--resample"]) == 2
    assert capsys.readouterr().err.startswith("error: --resample: applies to two NIfTI files only")


def test_metrics_resample_compares_in_world_space(tmp_path, capsys):
    import json

    from bfaseg.cli.main import main

    # mirrored along x with the origin at x = 19: every voxel lands on the same place as its mirror image;
    # the mask (x 3..8) maps to x 11..16, so it does not overlap itself
    a, b = _mask_pair(tmp_path, _affine(flip=True, shift=19))
    assert main(["metrics", a, b, "--resample", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dice"] == 0.0
    # the same mask on a shifted grid, placed at the same world position: identical
    import nibabel as nib

    m = np.asanyarray(nib.load(a).dataobj)
    nib.save(nib.Nifti1Image(np.roll(m, 2, axis=0), _affine(shift=-2)), str(tmp_path / "c.nii.gz"))
    assert main(["metrics", str(tmp_path / "c.nii.gz"), a, "--resample", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dice"] == 1.0


# --------------------------------------------------------------------------- 5. sizes that cannot work


def _nifti(path: Path, shape=(24, 24, 16), affine=None) -> Path:
    import nibabel as nib

    data = np.random.default_rng(0).normal(-900, 30, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def test_a_target_spacing_that_cannot_fit_is_refused_before_resampling(tmp_path):
    from bfaseg.data.nifti import load_nifti_image

    path = _nifti(tmp_path / "x.nii.gz")
    with pytest.raises(BfasegError, match=rf"^data\.target_spacing \[0\.001, 0\.001, 0\.001\]: resampling {path} from "
                                          r"\(24, 24, 16\) to \(24000, 24000, 16000\) voxels needs 67\.1 TiB, more than"):
        load_nifti_image(path, target_spacing=0.001)
    assert load_nifti_image(path, target_spacing=0.5).image.shape == (48, 48, 32)  # finer, but it fits


def test_every_size_is_checked_against_memory_before_allocating(tmp_path, monkeypatch):
    """With a machine of 1 MiB, each allocation that depends on an input size is refused, naming the key or file."""
    import h5py

    from bfaseg import precision
    from bfaseg.config import validate_config
    from bfaseg.data.build import build_data
    from bfaseg.data.nifti import load_nifti_image
    from bfaseg.io.h5 import read_h5_image
    from bfaseg.training.trainer import Trainer

    path = _nifti(tmp_path / "x.nii.gz", shape=(80, 80, 80))  # 2 MiB of float32
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("image", data=np.zeros((80, 80, 80), np.float32), compression="gzip")  # tiny on disk
    monkeypatch.setattr(precision, "memory_bytes", lambda device="cpu": 2**20)
    with pytest.raises(BfasegError, match=rf"^{path}: reading its \(80, 80, 80\) voxels needs 1\.95 MiB, more than "
                                          r"the 1 MiB of memory of this machine; crop or downsample"):
        load_nifti_image(path)
    with pytest.raises(BfasegError, match=rf"^{tmp_path}/x\.h5: 'image' of shape \(80, 80, 80\) needs 1\.95 MiB"):
        read_h5_image(tmp_path / "x.h5")
    raw = _tiny()
    raw["data"].update(synthetic_size=[256, 256], patch_size=[256, 256])
    cfg = validate_config(raw)
    with pytest.raises(BfasegError, match=r"^data\.synthetic_size \[256, 256\] x data\.synthetic_cases 10 needs"):
        build_data(cfg.data, cfg.model.num_classes)
    with pytest.raises(BfasegError, match=r"^data\.patch_size \[256, 256\]: the first feature map of a batch"):
        Trainer(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method, batch", [("supervised", {"batch_labeled": 1}), ("bfa", {})])
def test_a_patch_too_small_for_batchnorm_names_the_keys(method, batch, tmp_path, capsys):
    """A patch whose deepest feature map is one voxel (16 per side: four 2x poolings) in a forward of one image
    cannot train (BatchNorm needs two values per channel): the keys, not torch's ValueError as an unexpected
    error. Methods that forward labeled and unlabeled images together train on the same patch."""
    import yaml

    from bfaseg.cli.main import main

    raw = _tiny(synthetic_size=[16, 16], patch_size=[16, 16])
    raw["method"]["name"] = method
    raw["train"].update(batch)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    code = main(["train", str(tmp_path / "c.yaml"), "--output", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    if method == "supervised":
        assert code == 2 and err.strip().splitlines()[-1] == (
            "error: data.patch_size [16, 16]: the network's deepest feature map is [1, 1] voxels per image, and a "
            "forward of supervised's training step (iteration 1) held a single image there (train.batch_labeled 1, "
            "train.batch_unlabeled 2); BatchNorm needs more than one value per channel: choose a patch of at least "
            "32 along one axis or a larger batch")
    else:
        assert code == 0, err


def test_nifti_with_an_empty_axis_or_an_unreadable_orientation_names_the_file(tmp_path, capsys):
    from bfaseg.io.geometry import Geometry
    from bfaseg.io.nifti import load_nifti

    path = _nifti(tmp_path / "e.nii.gz", shape=(24, 0, 16))
    with pytest.raises(BfasegError, match=rf"^{path}: the volume is empty \(shape \(24, 0, 16\)\)"):
        load_nifti(path)
    from bfaseg.cli.main import main  # bfaseg metrics reads masks itself: the same line, not nibabel's shape (0,)

    assert main(["metrics", str(path), str(path)]) == 2
    assert capsys.readouterr().err == f"error: {path}: the volume is empty (shape (24, 0, 16))\n"

    class Img:  # an affine nibabel cannot orient
        affine = np.full((4, 4), np.nan)
        shape = (4, 4, 4)
        header = {"qform_code": 1}

    Img.header = type("H", (dict,), {"get_zooms": lambda self: (1.0, 1.0, 1.0)})(qform_code=1)
    with pytest.raises(BfasegError, match=r"^src\.nii: cannot tell the axis orientation from its affine"):
        Geometry.of_nifti(Img(), "src.nii")


# --------------------------------------------------------------------------- 6. messages and leftovers


def test_ctrl_c_while_the_commands_are_importing_is_one_line(tmp_path):
    """Ctrl-C lands during `import torch` (simulated by an import hook, so the test does not depend on timing)."""
    import subprocess
    import sys

    code = ("import builtins, sys\n"
            "real = builtins.__import__\n"
            "def imp(name, *a, **k):\n"
            "    if name.split('.')[0] == 'torch':\n"
            "        raise KeyboardInterrupt\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = imp\n"
            "from bfaseg.cli.main import main\n"
            "sys.exit(main(['evaluate', '--help']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 130
    assert proc.stderr == "error: interrupted by Ctrl-C; files being written were removed, finished outputs kept\n"
    # before main() runs (importing bfaseg.cli.main itself): the package's hook, the same line, killed by SIGINT
    proc = subprocess.run([sys.executable, "-c", "import bfaseg.cli\nraise KeyboardInterrupt"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode in (130, -2) and proc.stderr == \
        "error: interrupted by Ctrl-C; files being written were removed, finished outputs kept\n"


def test_a_checkpoint_with_an_invalid_config_names_the_key(run3d, tmp_path, capsys):
    from bfaseg.cli.main import main

    state = ckpt.load_checkpoint(run3d / "run/checkpoints/last.pt")
    state["config"]["train"]["lr"] = "fast"
    ckpt.save_checkpoint(tmp_path / "bad.pt", state)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(tmp_path / "bad.pt"), "--input", str(run3d / "in"),
                 "--output", str(out), "--device", "cpu", "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path}/bad.pt: the checkpoint's config is not valid for this "
                                       "bfaseg: train.lr: Input should be a valid number, unable to parse string as a "
                                       "number\n")
    assert not out.exists()


def _inputs(folder: Path, bad_at: int, n: int = 3) -> Path:
    import nibabel as nib

    folder.mkdir()
    for i in range(n):
        path = folder / f"c{i}_0000.nii.gz"
        if i == bad_at:
            path.write_bytes(b"not a NIfTI file" * 20)
        else:
            nib.save(nib.Nifti1Image(np.random.default_rng(i).normal(size=(24, 24, 16)).astype(np.float32),
                                     np.eye(4)), str(path))
    return folder


@pytest.mark.parametrize("existing", [False, True])
def test_predict_writes_all_or_nothing(existing, run3d, tmp_path, capsys):
    """A failure on the second file of a folder leaves nothing of the first: not in a new --output (not even
    the folder), and an existing one keeps exactly what it held."""
    from bfaseg.cli.main import main

    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "c0.nii.gz").write_bytes(b"an earlier prediction")
        (out / "notes.txt").write_text("mine\n")
    before = _snapshot(out) if existing else None
    src = _inputs(tmp_path / "in", bad_at=1)
    argv = ["predict", "--checkpoint", str(run3d / "run/checkpoints/last.pt"), "--input", str(src), "--output",
            str(out), "--device", "cpu", "--no-progress"]
    assert main(argv) == 2
    assert f"cannot read NIfTI file {src}/c1_0000.nii.gz" in capsys.readouterr().err
    assert (_snapshot(out) == before) if existing else not out.exists()
    (src / "c1_0000.nii.gz").unlink()
    assert main(argv) == 0
    assert {p.name for p in out.iterdir()} >= {"c0.nii.gz", "c2.nii.gz", "summary.json"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_staged_outputs_keep_finished_files_on_ctrl_c_and_stale_stages_are_removed(tmp_path):
    from bfaseg.io.files import atomic_write_text
    from bfaseg.io.output import remove_stale_temporaries, staged_outputs

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with staged_outputs(out) as stage:
            atomic_write_text(stage / "a.txt", "done\n")
            raise KeyboardInterrupt  # Ctrl-C is not a bad input: what was finished is kept, as the message says
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    with pytest.raises(BfasegError):
        with staged_outputs(out) as stage:
            atomic_write_text(stage / "b.txt", "done\n")
            raise BfasegError("bad second input")
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    (out / ".staging.x1y2.tmp").mkdir()  # left by SIGKILL
    (out / ".staging.x1y2.tmp" / "c.txt").write_text("half a run\n")
    assert [p.name for p in remove_stale_temporaries(out)] == [".staging.x1y2.tmp"]
    assert [p.name for p in out.iterdir()] == ["a.txt"]
