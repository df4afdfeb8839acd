"""`bfaseg suggest` and the quality flags of `bfaseg predict` on tiny synthetic data (CPU, seconds)."""

from __future__ import annotations

import csv
import json

import h5py
import nibabel as nib
import numpy as np
import pytest

from bfaseg.cli.main import main
from bfaseg.config import validate_config
from bfaseg.data.synthetic import make_phantom
from bfaseg.suggest import STRATEGIES, rank
from bfaseg.io.checkpoint import load_checkpoint, save_checkpoint
from conftest import tiny_config

PATIENTS = ["patient001_frame01", "patient001_frame12", "patient002_frame01", "patient003_frame01"]
NOISY, CLEAN = "patient004_frame01", "patient005_frame01"  # the same phantom, buried in noise / clean


def _train(tmp_path_factory, method: str, iterations: int, name: str):
    from bfaseg.training.trainer import Trainer

    raw = tiny_config(method, iterations=iterations, precision="fp32", device="cpu", val_every=1000,
                      checkpoint_every=1000)
    raw["model"]["base_channels"] = 4
    out = tmp_path_factory.mktemp(name) / "run"
    Trainer(validate_config(raw), out, progress=False).fit()
    return out / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def mt_ckpt(tmp_path_factory):
    """Mean teacher, 30 iterations: confident enough on phantoms that noise stands out."""
    return _train(tmp_path_factory, "mean_teacher", 30, "mt")


@pytest.fixture(scope="module")
def bfa_ckpt(tmp_path_factory):
    return _train(tmp_path_factory, "bfa", 2, "bfa")


def _h5(path, image, label=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image.astype(np.float32))
        if label is not None:
            f.create_dataset("label", data=label.astype(np.uint8))


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory):
    """ACDC layout: data/<patient>_<frame>.h5 volumes (Z, Y, X), a pool list with a planted noisy case."""
    root = tmp_path_factory.mktemp("acdc")
    rng = np.random.default_rng(5)
    for p in PATIENTS:
        image, label = make_phantom((2, 40, 36), 3, rng)
        _h5(root / "data" / f"{p}.h5", image, label)
    image, label = make_phantom((2, 40, 36), 3, rng)
    _h5(root / "data" / f"{CLEAN}.h5", image, label)
    _h5(root / "data" / f"{NOISY}.h5", image + 2.0 * rng.normal(size=image.shape), label)
    (root / "pool.list").write_text("\n".join(PATIENTS + [CLEAN, NOISY]) + "\n")
    (root / "clean.list").write_text("\n".join(PATIENTS + [CLEAN]) + "\n")
    (root / "empty.list").write_text("\n")
    return root


def _suggest(tmp_path, ckpt, *extra):
    out = tmp_path / "sugg"
    rc = main(["suggest", "--checkpoint", str(ckpt), "--output", str(out), "--no-progress", "--device", "cpu", *extra])
    assert rc == 0
    doc = json.loads((out / "suggestions.json").read_text())
    rows = list(csv.DictReader((out / "suggestions.csv").open()))
    return out, doc, rows


@pytest.mark.parametrize("strategy", ["entropy", "mc_dropout"])
def test_planted_noise_ranks_first(mt_ckpt, acdc_root, tmp_path, strategy):
    passes = ["--passes", "3"] if strategy == "mc_dropout" else []  # refused where it does not apply
    args = ["--data", str(acdc_root), "--dataset", "acdc", "--strategy", strategy, "--top", "3", *passes]
    _, doc, _ = _suggest(tmp_path / "a", mt_ckpt, *args, "--split", "pool.list")
    assert doc["selected"][0] == NOISY
    scores = {r["case"]: r["score"] for r in doc["ranking"]}
    assert scores[NOISY] > scores[CLEAN]
    _, clean_doc, _ = _suggest(tmp_path / "b", mt_ckpt, *args, "--split", "clean.list")
    assert NOISY not in clean_doc["selected"] and clean_doc["selected"][0] != doc["selected"][0]


def test_diversity_one_per_patient(mt_ckpt, acdc_root, tmp_path):
    rows = [{"case": c, "score": s, "components": {}} for c, s in
            [("patient001_frame01", 0.9), ("patient001_frame12", 0.8), ("patient002_frame01", 0.7),
             ("patient003_frame01", 0.1)]]
    assert [r["case"] for r in rank(rows, 2, 1) if r["selected"]] == ["patient001_frame01", "patient002_frame01"]
    assert [r["case"] for r in rank(rows, 2, 0) if r["selected"]] == ["patient001_frame01", "patient001_frame12"]
    _, doc, _ = _suggest(tmp_path, mt_ckpt, "--data", str(acdc_root), "--dataset", "acdc", "--split", "pool.list",
                         "--top", "6", "--strategy", "random")
    patients = [r["patient"] for r in doc["ranking"] if r["selected"]]
    assert len(patients) == len(set(patients)) == 5  # 6 cases of 5 patients: only 5 can be suggested


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_on_the_runs_unlabeled_pool(mt_ckpt, bfa_ckpt, tmp_path, strategy):
    ckpt = bfa_ckpt if strategy == "boundary" else mt_ckpt
    passes = ["--passes", "2"] if strategy == "mc_dropout" else []  # refused where it does not apply
    out, doc, rows = _suggest(tmp_path, ckpt, "--strategy", strategy, "--top", "3", *passes)
    assert doc["n_scored"] == 8 == len(rows)  # 10 synthetic cases, 20 % labeled
    assert [r["case"] for r in rows[:3]] == doc["selected"] and [r["rank"] for r in rows[:3]] == ["1", "2", "3"]
    assert {"case", "score", "selected", "volume_1", "volume_2", "mean_entropy"} <= set(rows[0])
    scores = [float(r["score"]) for r in rows[:3]]
    assert scores == sorted(scores, reverse=True)
    first = doc["ranking"][0]
    assert set(first["volume"]) == {"1", "2"} and first["components"] and first["selected"]
    assert (out / "suggestions.png").stat().st_size > 1000


def test_random_is_seeded(mt_ckpt, tmp_path):
    picks = [_suggest(tmp_path / str(i), mt_ckpt, "--strategy", "random", "--seed", str(s))[1]["selected"]
             for i, s in enumerate((1, 1, 2))]
    assert picks[0] == picks[1] != picks[2]


def test_nifti_and_la_layouts(mt_ckpt, tmp_path):
    rng = np.random.default_rng(3)
    nifti = tmp_path / "nifti"
    (nifti / "imagesTs").mkdir(parents=True)
    la = tmp_path / "la"
    for i in range(2):
        image, _ = make_phantom((36, 40, 3), 3, rng)
        nib.save(nib.Nifti1Image(image, np.diag([0.8, 0.8, 2.5, 1.0])), str(nifti / "imagesTs" / f"scan_{i}_0000.nii.gz"))
        _h5(la / "2018LA_Seg_Training Set" / f"CASE{i}" / "mri_norm2.h5", image)
    (nifti / "todo.list").write_text("scan_0\nscan_1\n")
    (la / "todo.list").write_text("CASE0\nCASE1\n")
    for root, layout in ((nifti, "nifti"), (la, "la")):
        _, doc, _ = _suggest(tmp_path / layout, mt_ckpt, "--data", str(root), "--dataset", layout,
                             "--split", "todo.list", "--top", "1")
        assert doc["n_scored"] == 2 and len(doc["selected"]) == 1
    assert doc["ranking"][0]["volume_units"] == "voxels"


def test_default_pools_of_benchmark_layouts(acdc_root, tmp_path):
    """The unlabeled pool of an ACDC run: volumes none of whose slices is labeled."""
    from bfaseg.suggest.pool import run_cases

    slices = [f"{p}_slice_{k}" for p in PATIENTS for k in range(2)]
    (acdc_root / "train_slices.list").write_text("\n".join(slices) + "\n")
    (acdc_root / "val.list").write_text(CLEAN + "\n")
    cfg = validate_config({"data": {"dataset": "acdc", "root": "elsewhere", "labeled": 3, "patch_size": [32, 32]},
                           "model": {"num_classes": 3}})
    pool = run_cases(cfg, acdc_root, "acdc", "unlabeled")
    assert [c.case_id for c in pool] == PATIENTS[2:]  # patient001_frame12 holds labeled slice 3
    val = run_cases(cfg, acdc_root, "acdc", "val")
    assert [c.case_id for c in val] == [CLEAN] and val[0].load().label is not None


def test_acdc_pool_volume_from_its_slices(tmp_path):
    """Distributions that ship only data/slices/ for training patients (as ../shared/data does): a pool
    volume is its slices stacked in slice order (10 after 2), the volume file is used where it exists."""
    from bfaseg.suggest.pool import run_cases

    rng = np.random.default_rng(0)
    volume = rng.normal(size=(11, 20, 18)).astype(np.float32)
    for k in range(11):
        _h5(tmp_path / "data" / "slices" / f"patient005_frame01_slice_{k}.h5", volume[k], np.zeros((20, 18)))
        _h5(tmp_path / "data" / "slices" / f"patient004_frame01_slice_{k}.h5", volume[k], np.zeros((20, 18)))
    whole, _ = make_phantom((2, 20, 18), 3, rng)
    _h5(tmp_path / "data" / "patient005_frame01.h5", whole, None)
    order = [f"_slice_{k}" for k in (0, 10, 1, 2, 3, 4, 5, 6, 7, 8, 9)]  # a list in string order
    (tmp_path / "train_slices.list").write_text(
        "\n".join(["patient003_frame01_slice_0"] + [f"patient004_frame01{s}" for s in order] + [f"patient005_frame01{s}" for s in order]) + "\n")
    (tmp_path / "val.list").write_text("patient009_frame01\n")
    cfg = validate_config({"data": {"dataset": "acdc", "root": "elsewhere", "labeled": 1, "patch_size": [16, 16]},
                           "model": {"num_classes": 3}})
    pool = {c.case_id: c.load() for c in run_cases(cfg, tmp_path, "acdc", "unlabeled")}
    assert set(pool) == {"patient004_frame01", "patient005_frame01"}
    np.testing.assert_array_equal(pool["patient004_frame01"].image, volume)  # stacked from slices, in order
    np.testing.assert_array_equal(pool["patient005_frame01"].image, whole)  # the volume file itself


def test_predict_writes_quality_json(mt_ckpt, acdc_root, tmp_path):
    out = tmp_path / "pred"
    rc = main(["predict", "--checkpoint", str(mt_ckpt), "--input", str(acdc_root / "data"), "--output", str(out),
               "--no-progress", "--device", "cpu", "--precision", "fp32"])
    assert rc == 0
    q = json.loads((out / "quality.json").read_text())
    assert len(q["cases"]) == 6 and q["quality_score"] == "teacher-student Dice"
    ref = q["reference"]
    assert ref["n_cases"] == 2 and "teacher_dice_p5" in ref and "entropy_p95" in ref  # synthetic validation phantoms
    case = q["cases"][0]
    assert {"mean_entropy", "teacher_dice", "components", "voxels", "flags", "quality_score"} <= set(case)
    assert mt_ckpt.with_name("last.pt.quality.json").is_file()  # the reference is cached beside the checkpoint
    assert str(out / "quality.json") in json.loads((out / "summary.json").read_text())["outputs"]


def test_quality_flags():
    from bfaseg.suggest.quality import flags

    rec = {"voxels": {"1": 10, "2": 0}, "components": {"1": 3, "2": 0}, "mean_entropy": 0.5, "teacher_dice": 0.2}
    ref = {"classes_always_present": [1, 2], "max_components": {"1": 2, "2": 1}, "entropy_p95": 0.4,
           "teacher_dice_p5": 0.6}
    assert flags(rec, ref, 3) == ["missing_class:2", "fragmented:1", "low_agreement", "high_uncertainty"]
    assert flags(rec, None, 3) == ["missing_class:2", "fragmented:1"]


def _one_line_error(capsys, argv, out):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert not out.exists()
    return err


def test_bad_inputs_one_line_no_output(mt_ckpt, acdc_root, tmp_path, capsys):
    out = tmp_path / "never"
    base = ["suggest", "--output", str(out), "--no-progress", "--device", "cpu"]
    ck = ["--checkpoint", str(mt_ckpt)]
    assert "--checkpoint" in _one_line_error(capsys, base + ["--checkpoint", str(tmp_path / "no.pt")], out)
    assert "unknown strategy" in _one_line_error(capsys, base + ck + ["--strategy", "magic"], out)
    assert "no boundary head" in _one_line_error(capsys, base + ck + ["--strategy", "boundary"], out)
    assert "--top" in _one_line_error(capsys, base + ck + ["--top", "0"], out)
    assert "empty" in _one_line_error(capsys, base + ck + ["--data", str(acdc_root), "--dataset", "acdc",
                                                          "--split", "empty.list"], out)
    assert "--split" in _one_line_error(capsys, base + ck + ["--split", "missing.list"], out)
    # a checkpoint without a teacher cannot disagree with itself
    state = load_checkpoint(mt_ckpt)
    state["teacher"] = None
    lone = tmp_path / "lone.pt"
    save_checkpoint(lone, {k: v for k, v in state.items() if k not in ("schema", "bfaseg_version")})
    assert "no teacher" in _one_line_error(capsys, base + ["--checkpoint", str(lone), "--strategy", "disagreement"], out)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["suggest", "--output", str(blocker), "--checkpoint", str(mt_ckpt), "--no-progress"]) == 2
    assert blocker.read_text() == "x"


def test_annotation_loop_smoke(tmp_path, capsys):
    """benchmarks/annotation_loop.py --smoke: rounds train, labels are revealed, curves and Spearman written."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "annotation_loop.py"
    spec = importlib.util.spec_from_file_location("annotation_loop", path)
    loop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loop)
    out = tmp_path / "loop"
    assert loop.main(["--smoke", "--strategies", "random,entropy", "--seeds", "1,2", "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"random_s1", "random_s2", "entropy_s1", "entropy_s2"}
    rounds = results["entropy_s1"]["rounds"]
    assert [r["n_labeled"] for r in rounds] == [2, 4] and len(rounds[0]["chosen"]) == 2
    assert set(rounds[0]["chosen"]) <= set(rounds[1]["labeled"]) and "spearman_quality_vs_dice" in rounds[1]
    split = yaml_load(out / "entropy_s1" / "round1" / "split.yaml")
    assert not set(split["labeled"]) & set(split["unlabeled"])  # the pool's labels stay hidden
    assert (out / "dice_vs_labeled.png").is_file() and "| entropy |" in (out / "summary.md").read_text()
    # round 0 (same split, same seed) is trained once per seed and shared by the strategies
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["entropy_s1", "entropy_s2", "random_s1",
                                                                    "random_s2", "start_s1", "start_s2"]
    assert results["random_s1"]["rounds"][0]["dice"] == rounds[0]["dice"]
    assert capsys.readouterr().err.count("round 0") == 4  # each strategy ranks the pool with that start model
    assert loop.main(["--smoke", "--strategies", "random,entropy", "--seeds", "1,2", "--output", str(out)]) == 0
    assert "[run]" not in capsys.readouterr().err  # a second call reuses the finished rounds

    # a round cut short (its checkpoint written, no summary yet) resumes instead of refusing the folder
    (out / "start_s1" / "round0" / "train_summary.json").unlink()
    del results["random_s1"]
    (out / "results.json").write_text(json.dumps(results))
    assert loop.main(["--smoke", "--strategies", "random", "--seeds", "1", "--output", str(out)]) == 0
    assert (out / "start_s1" / "round0" / "train_summary.json").is_file()


def yaml_load(path):
    import yaml

    return yaml.safe_load(path.read_text())
