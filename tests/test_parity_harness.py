"""The reference-parity harness (benchmarks/parity.py) on a stand-in checkout with SSL4MIS's interface:
it runs the script with only the documented run-time changes and scores both sides with one scorer."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from test_data import make_acdc

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "benchmarks" / "parity.py"
STANDIN = Path(__file__).resolve().parent / "parity_standin"


def _run(*args, cwd):
    return subprocess.run([sys.executable, str(HARNESS), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture()
def acdc_data(tmp_path):
    root = tmp_path / "acdc"
    make_acdc(root, patients=2, slices=4, vol_shape=(4, 30, 26))
    return root


def _config(tmp_path, root, **train):
    cfg = {"data": {"dataset": "acdc", "root": str(root), "patch_size": [32, 32], "labeled": 68},
           "model": {"name": "unet2d", "num_classes": 4, "base_channels": 4},
           "train": {"iterations": 2, "batch_labeled": 2, "batch_unlabeled": 2, "precision": "fp32", **train},
           "method": {"name": "supervised"}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_applies_only_the_documented_changes_and_keeps_the_last_model(tmp_path, acdc_data):
    cfg = _config(tmp_path, acdc_data)
    out = tmp_path / "parity"
    r = _run("train", "--reference", str(STANDIN), "--method", "supervised", "--seed", "3", "--config", str(cfg),
             "--data", str(acdc_data), "--output", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    run = out / "supervised_s3"
    seen = json.loads((run / "cwd" / "seen.json").read_text())
    assert seen["patch_size"] == [32, 32]  # the config's input size reached the script's args
    assert seen["num_workers"] == 0 and seen["dtypes"] == ["torch.float32"]
    assert seen["metrics"] == [[0.0, 0.0]] * 3  # in-loop validation replaced (the stand-in's would raise)
    argv = seen["argv"]
    assert (argv["max_iterations"], argv["batch_size"], argv["seed"], argv["labeled_num"]) == (2, 2, 3, 3)
    assert argv["root_path"].endswith("/ACDC")  # the link that makes the scripts pick ACDC's slice table
    record = json.loads((run / "run.json").read_text())
    assert record["precision"] == "fp32" and len(record["changes"]) >= 7 and record["seconds"] > 0
    sys.path.insert(0, str(STANDIN / "code"))
    try:
        from networks.unet import UNet
    finally:
        sys.path.remove(str(STANDIN / "code"))
    UNet(1, 4).load_state_dict(torch.load(run / "final.pth", weights_only=True))
    again = _run("train", "--reference", str(STANDIN), "--method", "supervised", "--seed", "3", "--config", str(cfg),
                 "--data", str(acdc_data), "--output", str(out), cwd=tmp_path)
    assert again.returncode == 0 and "[skip]" in again.stdout  # a finished run is kept


def test_train_refuses_a_checkout_without_the_script_and_a_labeled_count_off_the_table(tmp_path, acdc_data):
    r = _run("train", "--reference", str(tmp_path), "--method", "mean_teacher", "--config", str(_config(tmp_path, acdc_data)),
             "--data", str(acdc_data), "--output", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2 and "train_mean_teacher_2D.py" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    cfg = yaml.safe_load(_config(tmp_path, acdc_data).read_text())
    cfg["data"]["labeled"] = 70
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    r = _run("train", "--reference", str(STANDIN), "--method", "supervised", "--config", str(tmp_path / "bad.yaml"),
             "--data", str(acdc_data), "--output", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2 and "data.labeled" in r.stderr


def test_score_puts_both_sides_through_one_scorer(tmp_path, acdc_data):
    from bfaseg.config import validate_config
    from bfaseg.training.trainer import Trainer

    cfg = _config(tmp_path, acdc_data)
    out = tmp_path / "parity"
    assert _run("train", "--reference", str(STANDIN), "--method", "supervised", "--seed", "1", "--config", str(cfg),
                "--data", str(acdc_data), "--output", str(out), cwd=tmp_path).returncode == 0
    raw = yaml.safe_load(cfg.read_text())
    raw["data"]["labeled"] = 4
    raw["train"].update(val_every=2, seed=1)
    Trainer(validate_config(raw), tmp_path / "ours", progress=False).fit()
    scores = tmp_path / "scores.json"
    r = _run("score", str(out / "supervised_s1"), str(tmp_path / "ours"), "--data", str(acdc_data),
             "--output", str(scores), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads(scores.read_text())
    ref, ours = result["ssl4mis_supervised_s1"], result["ours_s1"]  # results.json entries: <variant>_s<seed>
    assert (ref["side"], ref["image_resize"], ref["variant"]) == ("reference", "zoom_nearest", "ssl4mis_supervised")
    assert (ours["side"], ours["image_resize"]) == ("bfaseg", "zoom_linear")
    assert ref["train_summary"]["iterations"] == 2 and ours["train_summary"]["iterations"] == 2
    for side in (ref, ours):
        assert [row["case"] for row in side["last"]["per_case"]] == ["patient001_frame01"]
        assert set(side["last"]["mean"]) >= {"dice", "jaccard", "hd95", "asd", "dice_1", "dice_3"}
        assert side["eval_split"] == "val.list" and side["seed"] == 1


def test_train_full_runs_the_supervised_script_on_every_training_slice(tmp_path):
    """--method full (issue 29): the supervised script and arguments, the labeled count of bfaseg's ``full``
    variant: every slice of the training list (1312 = ACDC's 70 training patients), SSL4MIS's key 140."""
    from bfaseg.config import load_config
    from bfaseg.experiments import VARIANTS

    root = tmp_path / "acdc_full"
    make_acdc(root, patients=82, slices=16, vol_shape=(16, 6, 6))  # 1312 slices, as ACDC's train_slices.list
    cfg = _config(tmp_path, root)  # data.labeled 68: full ignores it, as bfaseg's full variant does
    raw = yaml.safe_load(cfg.read_text())
    raw["method"] = {"name": "bfa"}
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "parity"
    r = _run("train", "--reference", str(STANDIN), "--method", "full", "--seed", "5", "--config", str(cfg),
             "--data", str(root), "--output", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    run = out / "full_s5"
    seen = json.loads((run / "cwd" / "seen.json").read_text())
    assert seen["argv"]["labeled_num"] == 140  # SSL4MIS's patients_to_slices for ACDC: 140 -> 1312
    assert seen["labeled_slices"] == seen["slices_listed"] == 1312  # the script reads every listed slice
    assert (seen["argv"]["max_iterations"], seen["argv"]["batch_size"], seen["argv"]["seed"]) == (2, 2, 5)
    record = json.loads((run / "run.json").read_text())
    assert (record["method"], record["variant"], record["rampup"]) == ("full", "ssl4mis_full", None)
    assert record["variant"].removeprefix("ssl4mis_") in VARIANTS  # its row pairs with bfaseg's `full`
    labeled = record["budget"]["--labeled_num"]
    assert labeled["value"] == 140 and "full variant" in labeled["from"] and "1312 slices" in labeled["from"]
    # one code path: the supervised method's arguments but for the labeled count
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from parity_references import script_args
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    loaded = load_config(cfg)
    full, supervised = (script_args(loaded, m, 5, str(root), "scaled", "e", str(cfg)) for m in ("full", "supervised"))
    assert supervised["--labeled_num"][0] == 3 and set(full) == set(supervised)
    assert {k: v for k, v in full.items() if k != "--labeled_num"} == \
        {k: v for k, v in supervised.items() if k != "--labeled_num"}
    scores = tmp_path / "scores.json"
    r = _run("score", str(run), "--data", str(root), "--output", str(scores), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(scores.read_text())["ssl4mis_full_s5"]["side"] == "reference"


STANDIN_BCP = Path(__file__).resolve().parent / "parity_standin_bcp"


@pytest.fixture()
def acdc_bcp_data(tmp_path):
    root = tmp_path / "acdc_bcp"
    make_acdc(root, patients=3, slices=12, vol_shape=(12, 30, 26))  # 36 slices: 32 labeled (1 patient) + 4
    return root


def _fingerprint(state: dict) -> float:
    return float(sum(v.double().sum() for v in state.values() if v.is_floating_point()))


def test_train_bcp_maps_both_stages_and_keeps_the_last_self_training_student(tmp_path, acdc_bcp_data):
    # the config's method is BFA (pretrain 0.3); the budget is that of bfaseg's bcp variant (pretrain 0.2)
    cfg = _config(tmp_path, acdc_bcp_data, iterations=10)
    raw = yaml.safe_load(cfg.read_text())
    raw["data"]["labeled"], raw["method"] = 32, {"name": "bfa"}
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "parity"
    r = _run("train", "--reference", str(STANDIN_BCP), "--method", "bcp", "--seed", "2", "--config", str(cfg),
             "--data", str(acdc_bcp_data), "--output", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    run = out / "bcp_s2"
    seen = json.loads((run / "cwd" / "seen.json").read_text())
    argv = seen["argv"]
    assert (argv["pre_iterations"], argv["max_iterations"]) == (2, 8)  # 0.2 x 10, then the rest
    assert (argv["batch_size"], argv["labeled_bs"], argv["labelnum"], argv["seed"]) == (4, 2, 1, 2)
    assert argv["patch_size"] == [32, 32] and argv["root_path"].endswith("/ACDC")
    assert (seen["pre_train"]["iterations"], seen["self_train"]["iterations"]) == (2, 8)
    assert seen["num_workers"] == [0, 0] and seen["dtypes"] == ["torch.float32"]
    assert seen["saved_on_validation"] == []  # in-loop validation replaced (the stand-in's would raise)
    snapshots = run / "cwd" / "model" / "BCP" / "ACDC_bcp_s2_1_labeled"
    # the hand-over: self-training started from the LAST pre-training model, written where the script loads it
    handed = torch.load(snapshots / "pre_train" / "unet_best_model.pth", weights_only=True)
    assert set(handed) == {"net", "opt"}
    assert _fingerprint(handed["net"]) == pytest.approx(seen["pre_train"]["last"], rel=1e-12)
    assert seen["self_train"]["started_from"] == pytest.approx(seen["pre_train"]["last"], rel=1e-12)
    assert (snapshots / "self_train" / "ACDC_BCP_train.py").is_file()  # the script's copy of ../code/ found it
    assert sorted(p.name for p in (snapshots / "self_train").iterdir()) == ["ACDC_BCP_train.py"]
    # the model kept: the last self-training student, not the teacher
    final = torch.load(run / "final.pth", weights_only=True)
    assert _fingerprint(final) == pytest.approx(seen["self_train"]["last"], rel=1e-12)
    assert _fingerprint(final) != pytest.approx(seen["self_train"]["teacher"], rel=1e-6)
    record = json.loads((run / "run.json").read_text())
    assert (record["repository"], record["variant"]) == ("BCP", "bcp_reference")
    assert record["network"] == "networks.unet.UNet_2d"
    assert record["iterations"] == 10 and record["rampup"] is None and record["image_resize"] == "zoom_nearest"
    budget = record["budget"]
    assert budget["--pre_iterations"]["value"] == 2 and "method.pretrain 0.2" in budget["--pre_iterations"]["from"]
    assert budget["--max_iterations"]["value"] == 8 and budget["--labelnum"]["value"] == 1
    assert budget["--patch_size"]["value"] == [32, 32]
    assert any("hand-over" in c for c in record["changes"]) and any("final.pth" in c for c in record["changes"])
    # score loads BCP's network class from the checkout the run recorded, as a reference run
    scores = tmp_path / "scores.json"
    r = _run("score", str(run), "--data", str(acdc_bcp_data), "--output", str(scores), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    entry = json.loads(scores.read_text())["bcp_reference_s2"]
    assert (entry["side"], entry["image_resize"]) == ("reference", "zoom_nearest")
    assert entry["train_summary"]["iterations"] == 10 and len(entry["last"]["per_case"]) == 1


def test_train_refuses_a_checkout_of_the_other_repository(tmp_path, acdc_data):
    cfg = str(_config(tmp_path, acdc_data))
    r = _run("train", "--reference", str(STANDIN), "--method", "bcp", "--config", cfg, "--data", str(acdc_data),
             "--output", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "no code/ACDC_BCP_train.py (BCP's ACDC script); --method bcp needs a BCP checkout" in r.stderr
    r = _run("train", "--reference", str(STANDIN_BCP), "--method", "supervised", "--config", cfg, "--data",
             str(acdc_data), "--output", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "needs an SSL4MIS checkout" in r.stderr and "is a BCP checkout" in r.stderr
    uneven = _config(tmp_path, acdc_data, batch_unlabeled=3)  # BCP mixes halves of equal size: refused before it runs
    r = _run("train", "--reference", str(STANDIN_BCP), "--method", "bcp", "--config", str(uneven), "--data",
             str(acdc_data), "--output", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2 and "train.batch_unlabeled 3" in r.stderr
