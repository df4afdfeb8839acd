"""`bfaseg evaluate` / `bfaseg predict` on tiny datasets in the real layouts (CPU, seconds).

Checkpoints come from 4-iteration Trainer runs on tiny LA-format (V-Net, downsample 2) and
ACDC-format (2-D U-Net) datasets written into a temporary folder.
"""

from __future__ import annotations

import json
import math

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from bfaseg.cli.main import main
from bfaseg.config import validate_config
from bfaseg.data.synthetic import make_phantom
from bfaseg.errors import BfasegError
from bfaseg.training.checkpoint import load_checkpoint, save_checkpoint
from conftest import TEST_PRECISION

LA_IDS = ["CASEA01", "CASEB02", "CASEC03", "CASED04"]
ACDC_PATIENTS = ["patient001_frame01", "patient002_frame01", "patient003_frame01"]


def _write_h5(path, image, label, spacing=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image.astype(np.float32))
        f.create_dataset("label", data=label.astype(np.uint8))
        if spacing is not None:
            f.attrs["spacing"] = np.asarray(spacing, dtype=np.float64)


def _train(cfg_raw, out):
    from bfaseg.training.trainer import Trainer

    cfg = validate_config(cfg_raw)
    Trainer(cfg, out, progress=False).fit()
    return out / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def la_run(tmp_path_factory):
    """LA layout: <root>/2018LA_Seg_Training Set/<ID>/mri_norm2.h5 + train.list / test.list."""
    root = tmp_path_factory.mktemp("la")
    rng = np.random.default_rng(0)
    for i, cid in enumerate(LA_IDS):
        image, label = make_phantom((40, 36, 20), 2, rng)
        _write_h5(root / "2018LA_Seg_Training Set" / cid / "mri_norm2.h5", image, label, spacing=(0.625,) * 3)
    (root / "train.list").write_text("\n".join(LA_IDS[:3]) + "\n")
    (root / "test.list").write_text(LA_IDS[3] + "\n")
    cfg = {
        "data": {"dataset": "la", "root": str(root), "val_cases": 1, "patch_size": [16, 16, 16], "downsample": 2},
        "model": {"name": "vnet", "num_classes": 2, "base_channels": 4},
        "train": {"iterations": 4, "batch_labeled": 2, "batch_unlabeled": 0, "device": "cpu", "threads": 1, "precision": TEST_PRECISION,
                  "val_every": 4, "log_every": 2, "checkpoint_every": 4, "keep_checkpoints": 0},
        "method": {"name": "supervised"},
    }
    ckpt = _train(cfg, tmp_path_factory.mktemp("la_run") / "run")
    return root, ckpt


@pytest.fixture(scope="module")
def acdc_run(tmp_path_factory):
    """ACDC layout: data/slices/<case>_slice_<k>.h5 (2-D), data/<case>.h5 (3-D), lists."""
    root = tmp_path_factory.mktemp("acdc")
    rng = np.random.default_rng(1)
    slices = []
    for p in ACDC_PATIENTS:
        image, label = make_phantom((4, 40, 36), 4, rng)  # (Z, Y, X)
        _write_h5(root / "data" / f"{p}.h5", image, label, spacing=(10.0, 1.5, 1.5))
        for k in range(image.shape[0]):
            _write_h5(root / "data" / "slices" / f"{p}_slice_{k}.h5", image[k], label[k])
            slices.append(f"{p}_slice_{k}")
    (root / "train_slices.list").write_text("\n".join(s for s in slices if not s.startswith(ACDC_PATIENTS[-1])))
    (root / "val.list").write_text(ACDC_PATIENTS[-1] + "\n")
    cfg = {
        "data": {"dataset": "acdc", "root": str(root), "patch_size": [32, 32]},
        "model": {"name": "unet2d", "num_classes": 4, "base_channels": 4},
        "train": {"iterations": 4, "batch_labeled": 2, "batch_unlabeled": 0, "device": "cpu", "threads": 1, "precision": TEST_PRECISION,
                  "val_every": 4, "log_every": 2, "checkpoint_every": 4, "keep_checkpoints": 0},
        "method": {"name": "supervised"},
    }
    ckpt = _train(cfg, tmp_path_factory.mktemp("acdc_run") / "run")
    return root, ckpt


def _nifti(path, data, affine):
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


# a non-identity affine: axes permuted and flipped, anisotropic voxels, an origin offset
AFFINE = np.array([[0.0, -1.2, 0.0, 40.0], [0.0, 0.0, 2.0, -15.0], [0.8, 0.0, 0.0, 7.5], [0, 0, 0, 1.0]])


# ----------------------------------------------------------------------------- load_model_from_checkpoint
def test_load_model_from_checkpoint_rebuilds_boundary_head(la_run, tmp_path):
    from bfaseg.inference.checkpoints import load_model_from_checkpoint

    _, ckpt = la_run
    model, cfg, state = load_model_from_checkpoint(ckpt)
    assert cfg.model.name == "vnet" and not model.training
    # a BFA-style checkpoint: add a boundary head to the weights and a bfa method to the config
    model.add_boundary_head(1, 1, fuse=True)
    state["student"] = model.state_dict()
    state["config"]["method"] = {"name": "bfa", "boundary_stage": 1}
    path = tmp_path / "bfa.pt"
    save_checkpoint(path, {k: v for k, v in state.items() if k not in ("schema", "bfaseg_version", "_loaded_weights")})
    m2, _, _ = load_model_from_checkpoint(path)
    assert hasattr(m2, "boundary_head")
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert m2(x).shape == (1, 2, 16, 16, 16)


def test_load_model_from_checkpoint_errors(tmp_path):
    from bfaseg.inference.checkpoints import load_model_from_checkpoint

    with pytest.raises(BfasegError, match="not found"):
        load_model_from_checkpoint(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- evaluate
def test_evaluate_la_layout(la_run, tmp_path, capsys):
    root, ckpt = la_run
    out = tmp_path / "eval"
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--data", str(root), "--split", "test.list",
               "--mode", "paper", "--output", str(out), "--no-progress", "--device", "cpu"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    for key in ("mean", "std", "per_case", "policy", "units", "n_failed", "mode", "checkpoint", "split", "inference"):
        assert key in s, key
    for key in ("dice", "jaccard", "hd95", "asd"):
        assert key in s["mean"]
    assert s["mode"] == "paper" and s["inference"]["stride"] == [9, 9, 2]  # 18,18,4 / downsample 2
    assert s["units"] == "voxel" and s["policy"] == "strict" and s["downsample"] == 2
    assert "downsampled voxels" in s["resolution"]
    assert s["checkpoint"]["iteration"] == 4 and len(s["checkpoint"]["sha256"]) == 16
    assert s["checkpoint"]["method"] == "supervised"
    assert s["split"]["name"] == "test.list" and s["split"]["ids"] == [LA_IDS[3]]
    assert [r["case"] for r in s["per_case"]] == [LA_IDS[3]]
    assert 0.0 <= s["per_case"][0]["dice"] <= 1.0
    assert s["warnings"] == []
    printed = capsys.readouterr().out
    assert "mean" in printed and LA_IDS[3] in printed


def test_evaluate_spacing_auto_and_training_warning(la_run, tmp_path, capsys):
    root, ckpt = la_run
    out = tmp_path / "eval"
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--data", str(root), "--split", "train.list",
               "--spacing", "auto", "--output", str(out), "--no-progress", "--device", "cpu", "--max-cases", "2"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["units"] == "mm"
    # h5 spacing 0.625 mm scaled by the x2 downsampling
    assert np.allclose(s["per_case"][0]["spacing"], [1.25, 1.25, 1.25])
    assert s["warnings"] and "training list" in s["warnings"][0]
    assert "warning" in capsys.readouterr().err


def test_evaluate_acdc_layout_multiclass(acdc_run, tmp_path):
    root, ckpt = acdc_run
    out = tmp_path / "eval"
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--data", str(root), "--split", "val.list",
               "--spacing", "auto", "--policy", "worst", "--largest-component", "--output", str(out),
               "--no-progress", "--device", "cpu"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["inference"]["mode"] == "slice-wise" and s["inference"]["largest_component"] is True
    assert s["policy"] == "worst" and s["units"] == "mm" and s["classes"] == [1, 2, 3]
    assert set(s["mean"]["per_class"]["dice"]) == {"1", "2", "3"}
    row = s["per_case"][0]
    assert set(row["dice"]) == {"1", "2", "3"} and "dice_mean" in row
    # worst policy: no NaN anywhere, failed cases get the image diagonal
    for k in ("hd95", "asd"):
        assert all(v is not None and math.isfinite(v) for v in row[k].values())
    assert s["checkpoint"]["val_split"] == "val.list"


def test_evaluate_user_errors(la_run, tmp_path):
    root, ckpt = la_run
    base = ["evaluate", "--checkpoint", str(ckpt), "--data", str(root), "--no-progress", "--device", "cpu"]
    assert main(base + ["--split", "nope.list"]) == 2
    assert main(base + ["--split", "test.list", "--spacing", "1", "2"]) == 2
    assert main(base + ["--split", "test.list", "--stride", "0", "1", "1"]) == 2
    assert main(["evaluate", "--checkpoint", str(tmp_path / "x.pt"), "--data", str(root), "--split", "test.list"]) == 2


# ----------------------------------------------------------------------------- predict
def test_predict_nifti_roundtrips_geometry(la_run, tmp_path):
    _, ckpt = la_run
    rng = np.random.default_rng(3)
    image, label = make_phantom((26, 22, 14), 2, rng)
    src = tmp_path / "imagesTs"
    src.mkdir()
    _nifti(src / "case7_0000.nii.gz", (image * 100).astype(np.float32), AFFINE)
    labels = tmp_path / "labelsTs"
    labels.mkdir()
    _nifti(labels / "case7.nii.gz", label.astype(np.uint8), AFFINE)
    out = tmp_path / "pred"
    rc = main(["predict", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(out),
               "--probabilities", "--labels", str(labels), "--no-progress", "--device", "cpu"])
    assert rc == 0
    pred = nib.load(str(out / "case7.nii.gz"))
    assert pred.shape == image.shape
    assert np.allclose(pred.affine, AFFINE, atol=1e-5)
    assert np.allclose(pred.header.get_zooms(), (0.8, 1.2, 2.0), atol=1e-5)
    assert np.asanyarray(pred.dataobj).dtype == np.uint8
    probs = nib.load(str(out / "case7_probs.nii.gz"))
    assert probs.shape == image.shape + (2,)
    assert np.allclose(probs.affine, AFFINE, atol=1e-5)
    s = json.loads((out / "summary.json").read_text())
    assert s["units"] == "mm" and "dice" in s["mean"] and s["per_case"][0]["case"] == "case7"


def test_predict_nifti_with_resampling_and_2d_model(acdc_run, tmp_path):
    """A run with data.target_spacing resamples the input; the mask still comes back on the input grid."""
    _, ckpt = acdc_run
    state = load_checkpoint(ckpt)
    state["config"]["data"]["target_spacing"] = [1.0, 1.0, 1.0]
    resampled = tmp_path / "resampled.pt"
    save_checkpoint(resampled, {k: v for k, v in state.items() if k not in ("schema", "bfaseg_version")})
    image, _ = make_phantom((30, 28, 5), 4, np.random.default_rng(4))
    f = _nifti(tmp_path / "vol.nii", image.astype(np.float32), AFFINE)
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(resampled), "--input", str(f), "--output", str(out),
                 "--no-progress", "--device", "cpu"]) == 0
    pred = nib.load(str(out / "vol.nii.gz"))
    assert pred.shape == image.shape and np.allclose(pred.affine, AFFINE, atol=1e-5)
    assert np.asanyarray(pred.dataobj).max() <= 3


def test_predict_h5_folder(la_run, tmp_path):
    root, ckpt = la_run
    out = tmp_path / "pred"
    rc = main(["predict", "--checkpoint", str(ckpt), "--input", str(root / "2018LA_Seg_Training Set"),
               "--output", str(out), "--labels", "input", "--probabilities", "--no-progress", "--device", "cpu"])
    assert rc == 0
    for cid in LA_IDS:  # LA files are all mri_norm2.h5: named by their folder
        with h5py.File(out / f"{cid}_pred.h5", "r") as f:
            assert f["label"].shape == (40, 36, 20) and f["label"].dtype == np.uint8
            assert f["probabilities"].shape == (2, 40, 36, 20)
    s = json.loads((out / "summary.json").read_text())
    assert s["n_cases"] == 4 and s["units"] == "mm" and "dice" in s["mean"]
    assert not list(out.glob(".*tmp*"))  # no temporary files left behind


def test_predict_h5_as_nifti_and_errors(acdc_run, tmp_path):
    root, ckpt = acdc_run
    out = tmp_path / "pred"
    f = root / "data" / f"{ACDC_PATIENTS[0]}.h5"
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(f), "--output", str(out),
                 "--h5-format", "nifti", "--no-progress", "--device", "cpu"]) == 0
    img = nib.load(str(out / f"{ACDC_PATIENTS[0]}.nii.gz"))
    assert img.shape == (4, 40, 36) and np.allclose(img.header.get_zooms(), (10.0, 1.5, 1.5))
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "missing"),
                 "--output", str(out)]) == 2
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(f), "--output", str(out),
                 "--labels", str(tmp_path / "nolabels"), "--no-progress"]) == 2


def test_evaluate_nifti_folder(la_run, tmp_path):
    """--dataset nifti: nnU-Net folder, metrics on the source grid with the header spacing."""
    _, ckpt = la_run
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(5)
    for cid in ("c1", "c2"):
        image, label = make_phantom((24, 20, 12), 2, rng)
        _nifti(root / "imagesTr" / f"{cid}_0000.nii.gz", image.astype(np.float32), AFFINE)
        _nifti(root / "labelsTr" / f"{cid}.nii.gz", label.astype(np.uint8), AFFINE)
    split = tmp_path / "split.list"
    split.write_text("c1\nc2\n")
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(root), "--split", str(split),
                 "--dataset", "nifti", "--spacing", "auto", "--output", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["units"] == "mm" and s["n_cases"] == 2 and s["split"]["dataset"] == "nifti"
    assert np.allclose(s["per_case"][0]["spacing"], [0.8, 1.2, 2.0])
    assert "source NIfTI grid" in s["resolution"]
