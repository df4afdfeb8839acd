"""Seeded fuzzing of configs and small input files (issue 16).

Every mutated input must give one of two outcomes: success, or one ``error: ...`` line on
stderr with exit code 2 (3 for a diverged run), no traceback, and no new file in the
output folder. The generator is seeded, so a failure names a reproducible case id.
Everything is tiny (32x32 phantoms, 2 iterations) so that the whole file runs in seconds.
"""

from __future__ import annotations

import copy
import random

import h5py
import numpy as np
import pytest
import yaml

from bfaseg.cli.main import main

SEED = 16
SYNTH = {
    "data": {"dataset": "synthetic", "synthetic_ndim": 2, "synthetic_size": [32, 32], "patch_size": [32, 32],
             "labeled_fraction": 0.3, "synthetic_cases": 6, "synthetic_val_cases": 1},
    "model": {"name": "unet2d", "num_classes": 3, "base_channels": 4},
    "train": {"iterations": 2, "batch_labeled": 2, "batch_unlabeled": 2, "val_every": 2, "log_every": 1,
              "checkpoint_every": 2, "threads": 1, "precision": "fp32", "device": "cpu"},
    "method": {"name": "supervised"},
}
# values an adversarial user types: wrong types, signs, sizes, NaN, lists where numbers go
VALUES = [-1, 0, True, "abc", None, [], [8, 8, 8, 8], 2.5, float("nan"), {"a": 1}, [0, 1], -0.5, 7]
KEYS = [(s, k) for s in ("data", "model", "train") for k in SYNTH[s]] + [
    ("train", "poly_power"), ("train", "seed"), ("train", "ema_decay"), ("train", "step_milestones"),
    ("eval", "stride"), ("eval", "max_cases"), ("eval", "overlap"), ("data", "val_cases"), ("data", "downsample"),
    ("method", "name"), ("data", "labeled"),
]


def _snapshot(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def run_checked(argv, out_dir, capsys) -> int:
    """Run ``bfaseg argv``; assert success or one clear line and nothing new in ``out_dir``."""
    before = _snapshot(out_dir)
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    if code == 0:
        return code
    assert code in (2, 3), f"exit {code}: {err!r}"
    assert err.startswith("error: ") and err.count("\n") == 1, f"not one line: {err!r}"
    assert "unexpected" not in err, err
    if code == 2:
        assert _snapshot(out_dir) == before, f"{argv}: left {set(_snapshot(out_dir)) - set(before)}"
    return code


def mutated_configs(n: int):
    rng = random.Random(SEED)
    for i in range(n):
        cfg = copy.deepcopy(SYNTH)
        for _ in range(rng.choice((1, 1, 2))):
            section, key = rng.choice(KEYS)
            cfg.setdefault(section, {})[key] = copy.deepcopy(rng.choice(VALUES))
        yield f"cfg{i}", cfg


@pytest.mark.parametrize("name,cfg", list(mutated_configs(24)))
def test_train_mutated_config(name, cfg, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    run_checked(["train", str(path), "--output", str(out), "--no-progress"], out, capsys)
    capsys.readouterr()


def test_train_mutated_yaml_text(tmp_path, capsys):
    """Whole-file mutations: empty, a scalar, a list, truncated YAML, a section that is a number."""
    base = yaml.safe_dump(SYNTH)
    for n, text in enumerate(["", "3\n", "- a\n", base[: len(base) // 2] + "[", base.replace("model:", "model: 3\nx:"),
                              "data: 3\n"]):
        path = tmp_path / f"c{n}.yaml"
        path.write_text(text)
        out = tmp_path / f"out{n}"
        assert run_checked(["train", str(path), "--output", str(out), "--no-progress"], out, capsys) == 2


# --------------------------------------------------------------------------- metrics


def _masks(rng):
    gt = np.zeros((12, 12, 6), np.uint8)
    gt[2:7, 3:8, 1:4] = 1
    gt[7:10, 2:6, 2:5] = 2
    return np.roll(gt, int(rng.integers(0, 2)), axis=0), gt


MASK_MUTATIONS = {
    "negative": lambda a: a.astype(np.int16) - 1,
    "fractional": lambda a: a.astype(np.float32) * 0.5,
    "nan": lambda a: np.where(a == 1, np.nan, a).astype(np.float32),
    "value_300": lambda a: np.where(a == 2, 300, a).astype(np.int16),
    "one_d": lambda a: a.ravel(),
    "four_d": lambda a: a[..., None],
    "cropped": lambda a: a[:-1],
    "strings": lambda a: a.astype(str),
    "empty": lambda a: np.zeros_like(a),
    "bool": lambda a: a > 0,
}


@pytest.mark.parametrize("mutation", sorted(MASK_MUTATIONS))
@pytest.mark.parametrize("suffix", [".npy", ".nii.gz"])
def test_metrics_mutated_masks(mutation, suffix, tmp_path, capsys):
    rng = np.random.default_rng(SEED)
    pred, gt = _masks(rng)
    bad = MASK_MUTATIONS[mutation](pred)
    paths = []
    for name, arr in (("pred", bad), ("gt", gt)):
        path = tmp_path / f"{name}{suffix}"
        if suffix == ".npy":
            np.save(path, arr)
        else:
            import nibabel as nib

            if arr.dtype.kind not in "biuf" or arr.dtype == bool or arr.ndim < 2:
                pytest.skip("NIfTI cannot hold this array")
            nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
        paths.append(str(path))
    for extra in ([], ["--classes", "2"], ["--json"], ["--empty-class-policy", "one", "--policy", "paper"]):
        run_checked(["metrics", *paths, *extra], tmp_path / "none", capsys)


def test_metrics_empty_class_is_nan_and_value_above_classes_is_an_error(tmp_path, capsys):
    """Issue 16, reproduction 1: a class absent from both masks no longer lifts the mean."""
    pred, gt = _masks(np.random.default_rng(0))
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "g.npy", gt)
    assert main(["metrics", str(tmp_path / "p.npy"), str(tmp_path / "g.npy"), "--classes", "4", "--json"]) == 0
    import json

    result = json.loads(capsys.readouterr().out)
    assert result["dice"]["3"] is None and result["dice"]["4"] is None
    np.save(tmp_path / "p300.npy", np.where(pred == 2, 300, pred).astype(np.int16))
    code = run_checked(["metrics", str(tmp_path / "p300.npy"), str(tmp_path / "g.npy"), "--classes", "4"],
                       tmp_path / "none", capsys)
    assert code == 2


# --------------------------------------------------------------------------- predict / evaluate / splits


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz_run")
    (tmp / "c.yaml").write_text(yaml.safe_dump(SYNTH))
    assert main(["train", str(tmp / "c.yaml"), "--output", str(tmp / "run"), "--no-progress"]) == 0
    return tmp / "run" / "checkpoints" / "last.pt"


def _h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            if isinstance(v, str):
                f.create_group(k)
            else:
                f[k] = v


IMAGE = np.random.default_rng(SEED).normal(size=(2, 32, 32)).astype(np.float32)
LABEL = (IMAGE > 0.5).astype(np.uint8)
H5_MUTATIONS = {
    "ok": dict(image=IMAGE, label=LABEL),
    "image_group": dict(image="group", label=LABEL),
    "label_group": dict(image=IMAGE, label="group"),
    "label_7": dict(image=IMAGE, label=LABEL * 7),
    "label_probabilities": dict(image=IMAGE, label=LABEL * 0.4),
    "label_shape": dict(image=IMAGE, label=LABEL[:, :-1]),
    "image_nan": dict(image=np.where(IMAGE > 1, np.nan, IMAGE), label=LABEL),
    "image_1d": dict(image=IMAGE.ravel(), label=LABEL.ravel()),
    "no_image": dict(label=LABEL),
}


@pytest.mark.parametrize("mutation", sorted(H5_MUTATIONS))
def test_predict_mutated_h5(mutation, checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _h5(src / "case1.h5", **H5_MUTATIONS[mutation])
    out = tmp_path / "out"
    code = run_checked(["predict", "--checkpoint", str(checkpoint), "--input", str(src), "--output", str(out),
                        "--labels", "input", "--no-progress", "--device", "cpu", "--precision", "fp32"], out, capsys)
    assert (code == 0) == (mutation == "ok")


# --------------------------------------------------------------------------- issue 30: the six kinds


@pytest.mark.parametrize("n", range(4))
def test_kind1_checkpoint_damaged_in_place_at_a_random_spot(n, checkpoint, tmp_path, capsys):
    """Kind 1, damaged files: a few bytes of any stored tensor changed in place (zip CRCs no longer match)."""
    import zipfile

    rng = random.Random(SEED * 100 + n)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(checkpoint.read_bytes())
    with zipfile.ZipFile(damaged) as z:
        info = rng.choice([i for i in z.infolist() if "/data/" in i.filename])
    with open(damaged, "r+b") as f:
        f.seek(info.header_offset + 26)
        lengths = f.read(4)
        start = info.header_offset + 30 + int.from_bytes(lengths[:2], "little") + int.from_bytes(lengths[2:], "little")
        at = start + rng.randrange(info.file_size)
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ rng.randrange(1, 256)]))
    src = tmp_path / "in"
    src.mkdir()
    _h5(src / "case1.h5", image=IMAGE, label=LABEL)
    out = tmp_path / "out"
    assert run_checked(["predict", "--checkpoint", str(damaged), "--input", str(src), "--output", str(out),
                        "--no-progress", "--device", "cpu"], out, capsys) == 2
    assert not out.exists()


@pytest.mark.parametrize("dtype", ["complex64", "complex128", "rgb"])
def test_kind1_nifti_image_that_is_not_real_numbers(dtype, checkpoint, tmp_path, capsys):
    import nibabel as nib

    src = tmp_path / "in"
    src.mkdir()
    if dtype == "rgb":
        arr = np.zeros((32, 32, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    else:
        arr = (IMAGE.transpose(1, 2, 0) * (1 + 1j)).astype(dtype)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(src / "x_0000.nii.gz"))
    out = tmp_path / "out"
    assert run_checked(["predict", "--checkpoint", str(checkpoint), "--input", str(src), "--output", str(out),
                        "--no-progress", "--device", "cpu"], out, capsys) == 2


# valid changes of a config: each makes another experiment than SYNTH's
CONFIG_CHANGES = [("data", "synthetic_cases", 8), ("data", "labeled_fraction", 0.5), ("model", "base_channels", 8),
                  ("train", "lr", 0.02), ("train", "seed", 3), ("train", "batch_labeled", 3), ("data", "rotation", True),
                  ("train", "iterations", 3), ("train", "optimizer", "adam"), ("train", "weight_decay", 0.0)]


@pytest.fixture(scope="module")
def experiment_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz_experiment")
    (tmp / "c.yaml").write_text(yaml.safe_dump(SYNTH))
    assert main(["experiment", str(tmp / "c.yaml"), "--methods", "supervised", "--seeds", "1", "--output",
                 str(tmp / "exp"), "--no-progress"]) == 0
    return tmp / "exp"


@pytest.mark.parametrize("n", range(4))
def test_kind2_experiment_folder_reused_with_another_config(n, experiment_folder, tmp_path, capsys):
    """Kind 2, a folder reused by another run: any config change on a finished folder is refused, naming the key."""
    import shutil

    rng = random.Random(SEED * 200 + n)
    out = tmp_path / "exp"
    shutil.copytree(experiment_folder, out)
    cfg = copy.deepcopy(SYNTH)
    changes = rng.sample(CONFIG_CHANGES, rng.choice((1, 2)))
    for section, key, value in changes:
        cfg[section][key] = value
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert run_checked(["experiment", str(tmp_path / "c.yaml"), "--methods", "supervised", "--seeds", "1",
                        "--output", str(out), "--no-progress"], out, capsys) == 2


# options an adversarial user combines; on the 2-D checkpoint no window option applies, and the policies
# apply only with reference labels
OPTION_CHOICES = [["--mode", "paper"], ["--mode", "fast"], ["--stride", "8", "8", "8"], ["--policy", "worst"],
                  ["--empty-class-policy", "one"], ["--labels", "input"], ["--h5-format", "nifti"],
                  ["--largest-component"], ["--precision", "fp32"]]


@pytest.mark.parametrize("n", range(9))
def test_kind3_predict_option_combinations_are_used_or_refused(n, checkpoint, tmp_path, capsys):
    """Kind 3, options that contradict or do not apply: never silently dropped, and warnings reach summary.json."""
    import json

    rng = random.Random(SEED * 300 + n)
    picked = rng.sample(OPTION_CHOICES, rng.randint(1, 4))
    src = tmp_path / "in"
    src.mkdir()
    _h5(src / "case1.h5", image=IMAGE, label=LABEL)
    out = tmp_path / "out"
    argv = [a for option in picked for a in option]
    code = run_checked(["predict", "--checkpoint", str(checkpoint), "--input", str(src), "--output", str(out),
                        "--no-progress", "--device", "cpu", "--no-quality", *argv], out, capsys)
    repeated = len({option[0] for option in picked}) < len(picked)  # --mode paper ... --mode fast
    inapplicable = repeated or "--stride" in argv or ("--labels" not in argv and ("--policy" in argv or
                                                                                  "--empty-class-policy" in argv))
    assert code == (2 if inapplicable else 0), argv
    if code == 0:
        warnings = json.loads((out / "summary.json").read_text())["warnings"]
        assert any("--mode paper" in w for w in warnings) == ("paper" in argv)


@pytest.mark.parametrize("n", range(4))
def test_kind4_nifti_masks_in_another_space(n, tmp_path, capsys):
    """Kind 4, data that disagrees with what it declares: two masks whose affines differ are not scored voxel
    by voxel (the same array, flipped, permuted, shifted or rescaled in space), unless resampled by flag."""
    import nibabel as nib

    rng = np.random.default_rng(SEED * 400 + n)
    pred, gt = _masks(rng)
    affine = np.eye(4)
    while np.allclose(affine, np.eye(4), atol=1e-3):
        affine = np.eye(4)
        affine[:3, :3] = np.diag(rng.choice([-1.0, 1.0], 3) * rng.choice([1.0, 1.0, 2.0, 0.5], 3))[rng.permutation(3)]
        affine[:3, 3] = rng.choice([0.0, 0.0, 5.0, -100.0], 3)
    nib.save(nib.Nifti1Image(pred, affine), str(tmp_path / "pred.nii.gz"))
    nib.save(nib.Nifti1Image(gt, np.eye(4)), str(tmp_path / "gt.nii.gz"))
    argv = ["metrics", str(tmp_path / "pred.nii.gz"), str(tmp_path / "gt.nii.gz")]
    assert run_checked(argv, tmp_path / "none", capsys) == 2
    assert run_checked([*argv, "--resample"], tmp_path / "none", capsys) == 0


@pytest.mark.parametrize("n", range(3))
def test_kind4_images_declared_ct_that_are_not_hounsfield_units(n, tmp_path, capsys):
    import json

    import nibabel as nib

    rng = np.random.default_rng(SEED * 500 + n)
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    low, span = rng.uniform(300, 3000), rng.uniform(50, 3000)  # MR-like, or CT without its rescale
    for i in range(3):
        lab = np.zeros((16, 16, 16), np.uint8)
        lab[4:12, 4:12, 4:12] = 1
        img = (low + rng.random(lab.shape) * span).astype(rng.choice(["float32", "int16", "uint16"]))
        nib.save(nib.Nifti1Image(img, np.eye(4)), str(root / "imagesTr" / f"c{i}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(root / "labelsTr" / f"c{i}.nii.gz"))
    key = rng.choice(["channel_names", "modality"])
    (root / "dataset.json").write_text(json.dumps({key: {"0": "CT"}}))
    cfg = {"data": {"dataset": "nifti", "root": str(root), "patch_size": [16, 16, 16], "labeled": 1, "val_cases": 1},
           "model": {"name": "vnet", "num_classes": 2, "base_channels": 4},
           "train": {**SYNTH["train"], "iterations": 1}, "method": {"name": "supervised"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert run_checked(["train", str(tmp_path / "c.yaml"), "--output", str(out), "--no-progress"], out, capsys) == 2


@pytest.mark.parametrize("n", range(6))
def test_kind5_sizes_that_cannot_fit_are_refused_before_allocating(n, tmp_path, capsys):
    """Kind 5, sizes that cannot work: a patch, a phantom or a resampled volume beyond any machine's memory
    (terabytes) is one line naming the key, before anything is allocated."""
    import nibabel as nib

    rng = random.Random(SEED * 600 + n)
    cfg = copy.deepcopy(SYNTH)
    what = rng.choice(["patch_size", "synthetic_size", "target_spacing"])
    if what == "target_spacing":
        root = tmp_path / "ds"
        for folder in ("imagesTr", "labelsTr"):
            (root / folder).mkdir(parents=True)
        for i in range(3):
            lab = np.zeros((16, 16, 16), np.uint8)
            lab[4:12, 4:12, 4:12] = 1
            nib.save(nib.Nifti1Image((lab * 1000.0 - 900).astype(np.float32), np.eye(4)),
                     str(root / "imagesTr" / f"c{i}_0000.nii.gz"))
            nib.save(nib.Nifti1Image(lab, np.eye(4)), str(root / "labelsTr" / f"c{i}.nii.gz"))
        cfg["data"] = {"dataset": "nifti", "root": str(root), "patch_size": [16, 16, 16], "labeled": 1,
                       "val_cases": 1, "target_spacing": [10 ** -rng.uniform(3, 6)] * 3}
        cfg["model"].update(name="vnet", num_classes=2)
    else:
        side = 2 ** rng.randint(18, 22)  # terabytes for one batch of patches or one phantom
        cfg["data"][what] = [side, side]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert run_checked(["train", str(tmp_path / "c.yaml"), "--output", str(out), "--no-progress"], out, capsys) == 2
    assert not out.exists()


BAD_INPUTS = {
    "garbage": lambda path: path.write_bytes(b"\x1f\x8b not a NIfTI file" * 20),
    "complex": lambda path: _nii(path, (IMAGE.transpose(1, 2, 0) * 1j).astype(np.complex64)),
    "empty_axis": lambda path: _nii(path, np.zeros((32, 0, 2), np.float32)),
    "nan": lambda path: _nii(path, np.full((32, 32, 2), np.nan, np.float32)),
    "two_channels": lambda path: _nii(path, np.zeros((32, 32, 2, 2), np.float32)),
    "truncated": lambda path: (_nii(path, IMAGE.transpose(1, 2, 0)), path.write_bytes(path.read_bytes()[:400])),
}


def _nii(path, array):
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


@pytest.mark.parametrize("n", range(4))
@pytest.mark.parametrize("existing", [False, True])
def test_kind6_a_bad_input_anywhere_in_a_folder_leaves_no_output(n, existing, checkpoint, tmp_path, capsys):
    """Kind 6, leftovers: a predict folder with one bad input at a random place writes nothing (all or nothing),
    into a new or an existing --output."""
    rng = random.Random(SEED * 700 + n + 100 * existing)
    src = tmp_path / "in"
    src.mkdir()
    count = rng.randint(2, 4)
    bad_at, bad = rng.randrange(count), rng.choice(sorted(BAD_INPUTS))
    for i in range(count):
        path = src / f"c{i}_0000.nii.gz"
        BAD_INPUTS[bad](path) if i == bad_at else _nii(path, IMAGE.transpose(1, 2, 0))
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "c0.nii.gz").write_text("an earlier prediction, kept unless a run succeeds\n")
    assert run_checked(["predict", "--checkpoint", str(checkpoint), "--input", str(src), "--output", str(out),
                        "--no-progress", "--device", "cpu"], out, capsys) == 2, (bad, bad_at)
    assert (out / "c0.nii.gz").read_text().startswith("an earlier") if existing else not out.exists()


@pytest.mark.parametrize("output", ["file", "file_parent"])
@pytest.mark.parametrize("command", ["predict", "report", "experiment", "train"])
def test_bad_output_is_one_line_before_any_work(command, output, checkpoint, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file in the way\n")
    out = blocker if output == "file" else blocker / "sub"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(SYNTH))
    src = tmp_path / "in"
    src.mkdir()
    _h5(src / "case1.h5", image=IMAGE, label=LABEL)
    argv = {
        "predict": ["predict", "--checkpoint", str(checkpoint), "--input", str(src), "--device", "cpu"],
        "report": ["report", str(checkpoint.parent.parent)],
        "experiment": ["experiment", str(cfg), "--methods", "supervised", "--seeds", "1"],
        "train": ["train", str(cfg)],
    }[command]
    progress = [] if command == "report" else ["--no-progress"]
    assert run_checked([*argv, "--output", str(out), *progress], tmp_path / "nothing", capsys) == 2
    assert blocker.read_text() == "a file in the way\n"


@pytest.mark.parametrize("argv,expect", [
    (["--seeds", "1,x"], "--seeds: expected comma-separated integers"),
    (["--methods", "supervised,nope"], "--methods: unknown variant 'nope'"),
])
def test_experiment_options_rejected_before_training(argv, expect, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(SYNTH))
    out = tmp_path / "exp"
    assert main(["experiment", str(cfg), "--output", str(out), "--no-progress", *argv]) == 2
    assert expect in capsys.readouterr().err
    assert not out.exists()


SPLITS = {
    "duplicate": {"labeled": ["synth_000", "synth_000"], "unlabeled": ["synth_001"]},
    "overlap": {"labeled": ["synth_000"], "unlabeled": ["synth_000", "synth_001"]},
    "nested": {"labeled": [["synth_000"]]},
    "not_a_list": {"labeled": "synth_000"},
    "unknown": {"labeled": ["ghost"]},
}


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_bad_split_file(split, tmp_path, capsys):
    (tmp_path / "split.yaml").write_text(yaml.safe_dump(SPLITS[split]))
    cfg = copy.deepcopy(SYNTH)
    cfg["data"].pop("labeled_fraction")
    cfg["data"]["split_file"] = str(tmp_path / "split.yaml")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert run_checked(["train", str(tmp_path / "c.yaml"), "--output", str(out), "--no-progress"], out, capsys) == 2


def test_demo_refuses_other_settings(tmp_path, capsys, monkeypatch):
    """Issue 16, reproduction 4: a second demo with other settings does not report the old runs."""
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo.json").write_text('{"iterations": 2, "seed": 1}\n')
    assert main(["demo", "--output", str(out), "--iterations", "3", "--no-progress"]) == 2
    assert "holds a demo with other settings" in capsys.readouterr().err
