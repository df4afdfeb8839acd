"""The catalogue of bad inputs (docs/ERRORS.md): every case fails with a non-zero exit code,
one ``error: ...`` line naming the file, key or option, and no partial output.

The datasets are written in their real layouts into tmp_path with tiny arrays:
LA ``<root>/2018LA_Seg_Training Set/<ID>/mri_norm2.h5`` + ``train.list``; ACDC
``data/slices/<name>.h5`` + ``train_slices.list``, ``val.list`` and ``data/<case>.h5`` volumes;
NIfTI ``imagesTr/`` + ``labelsTr/``.
"""

from __future__ import annotations

import errno
import json
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import torch
import yaml

from bfaseg.cli.main import main
from bfaseg.io import checkpoint as ckpt
from conftest import TEST_PRECISION, signal_when_ready

DOCS = Path(__file__).resolve().parents[1] / "docs" / "ERRORS.md"

TRAIN = {"iterations": 4, "batch_labeled": 2, "batch_unlabeled": 2, "val_every": 4, "log_every": 2,
         "checkpoint_every": 2, "threads": 1, "precision": TEST_PRECISION}
SYNTH = {
    "data": {"dataset": "synthetic", "synthetic_ndim": 2, "synthetic_size": [32, 32], "patch_size": [32, 32],
             "labeled_fraction": 0.2, "synthetic_cases": 10, "synthetic_val_cases": 2},
    "model": {"name": "unet2d", "num_classes": 3, "base_channels": 4},
    "train": TRAIN,
    "method": {"name": "supervised"},
}
LA_IDS = ["case_a", "case_b", "case_c", "case_d"]


# --------------------------------------------------------------------------- tiny datasets in real layouts


def write_h5(path: Path, image=None, label=None, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        if image is not None:
            f["image"] = image
        if label is not None:
            f["label"] = label
        for k, v in extra.items():
            f[k] = v
    return path


def volume(shape=(20, 20, 12), seed=0, num_classes=2):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[tuple(slice(s // 4, 3 * s // 4) for s in shape)] = num_classes - 1
    return image, label


def la_dataset(root: Path, ids=LA_IDS, shape=(20, 20, 12)) -> Path:
    for n, case in enumerate(ids):
        write_h5(root / "2018LA_Seg_Training Set" / case / "mri_norm2.h5", *volume(shape, n))
    (root / "train.list").write_text("\n".join(ids) + "\n")
    return root


def la_case(root: Path, case: str) -> Path:
    return root / "2018LA_Seg_Training Set" / case / "mri_norm2.h5"


def la_config(root: Path, **data) -> dict:
    return {
        "data": {"dataset": "la", "root": str(root), "patch_size": [16, 16, 16], "labeled": 2, "val_cases": 1,
                 **data},
        "model": {"name": "vnet", "num_classes": 2, "base_channels": 4},
        "train": TRAIN,
        "method": {"name": "supervised"},
    }


def acdc_dataset(root: Path) -> Path:
    slices = []
    for case in ("patient001", "patient002"):
        for z in range(2):
            name = f"{case}_frame01_slice_{z}"
            img, lab = volume((24, 24), z, num_classes=4)
            write_h5(root / "data" / "slices" / f"{name}.h5", img, lab)
            slices.append(name)
    write_h5(root / "data" / "patient003_frame01.h5", *volume((2, 24, 24), 9, num_classes=4))
    (root / "train_slices.list").write_text("\n".join(slices) + "\n")
    (root / "val.list").write_text("patient003_frame01\n")
    return root


def acdc_config(root: Path, **data) -> dict:
    return {
        "data": {"dataset": "acdc", "root": str(root), "patch_size": [32, 32], "labeled": 2, **data},
        "model": {"name": "unet2d", "num_classes": 4, "base_channels": 4},
        "train": TRAIN,
        "method": {"name": "supervised"},
    }


AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def nifti_dataset(root: Path, label_affine=AFFINE, garbage_image: str | None = None) -> Path:
    import nibabel as nib

    for n in range(3):
        img, lab = volume((12, 12, 8), n)
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (root / "labelsTr").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(img, AFFINE), str(root / "imagesTr" / f"case{n}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(lab, label_affine if n == 1 else AFFINE), str(root / "labelsTr" / f"case{n}.nii.gz"))
    if garbage_image:
        (root / "imagesTr" / garbage_image).write_bytes(b"\x1f\x8b this is not a NIfTI file" * 20)
    return root


def nifti_config(root: Path) -> dict:
    return {
        "data": {"dataset": "nifti", "root": str(root), "patch_size": [8, 8, 8], "labeled": 1, "val_cases": 1},
        "model": {"name": "vnet", "num_classes": 2, "base_channels": 4},
        "train": TRAIN,
        "method": {"name": "supervised"},
    }


# --------------------------------------------------------------------------- the catalogue


@dataclass
class Case:
    """``make(tmp_path)`` writes the inputs and returns (config dict or text or None, extra argv)."""

    id: str
    make: Callable[[Path], tuple[object, list[str]]]
    expect: list[str]  # substrings of the one error line; "{tmp}" is replaced by tmp_path
    code: int = 2
    fresh_output: bool = True  # the --output folder does not exist before the command


def cfg_with(base: dict, section: str, **values) -> dict:
    out = json.loads(json.dumps(base))
    out.setdefault(section, {}).update(values)
    return out


def synth(section: str | None = None, **values):
    return lambda tmp: (cfg_with(SYNTH, section, **values) if section else SYNTH, [])


def la(mutate: Callable[[Path], None] | None = None, **data):
    def make(tmp):
        root = la_dataset(tmp / "LA")
        if mutate:
            mutate(root)
        return la_config(root, **data), []

    return make


def acdc(mutate: Callable[[Path], None] | None = None, **data):
    def make(tmp):
        root = acdc_dataset(tmp / "ACDC")
        if mutate:
            mutate(root)
        return acdc_config(root, **data), []

    return make


def _existing_run(tmp: Path, last_bytes: bytes | None = None):
    run = tmp / "out"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(last_bytes or b"not a checkpoint at all" * 10)
    (run / "log.jsonl").write_text('{"iteration": 2, "loss": 1.0}\n')


def _with_run(tmp, *argv, last_bytes=None):
    _existing_run(tmp, last_bytes)
    return SYNTH, list(argv)


def _rewrite_la(case: str, **arrays):
    def mutate(root):
        path = la_case(root, case)
        path.unlink()
        write_h5(path, **arrays)

    return mutate


def _garbage_la(root):
    la_case(root, "case_b").write_bytes(b"garbage, not HDF5 " * 50)


img, lab = volume()
nan_img = img.copy()
nan_img[3, 4, 5] = np.nan
bad_lab = lab.copy()
bad_lab[0, 0, 0] = 5

CASES = [
    # config file and options
    Case("missing_config", lambda tmp: (None, []), ["config file not found: {tmp}/config.yaml"]),
    Case("invalid_yaml", lambda tmp: ("data: {dataset: la\ntrain: [1, 2\n", []), ["{tmp}/config.yaml: invalid YAML"]),
    Case("config_not_mapping", lambda tmp: ("- data\n- train\n", []),
         ["{tmp}/config.yaml: the config must be a mapping"]),
    Case("unknown_top_key", lambda tmp: ({**SYNTH, "trian": {"iterations": 3}}, []),
         ["{tmp}/config.yaml: trian: unknown key"]),
    Case("unknown_nested_key", synth("train", iteratons=10), ["{tmp}/config.yaml: train.iteratons: unknown key"]),
    Case("negative_iterations", synth("train", iterations=-5),
         ["{tmp}/config.yaml: train.iterations: Input should be greater than or equal to 1"]),
    Case("bad_precision", synth("train", precision="fp8"),
         ["{tmp}/config.yaml: train.precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16'"]),
    Case("unknown_method", synth("method", name="fancy"),
         ["{tmp}/config.yaml: method.name: unknown method 'fancy' (choose from"]),
    Case("bad_method_param", synth("method", name="bfa", lambda_boundry=1.0),
         ["{tmp}/config.yaml: method.lambda_boundry: unknown key"]),
    Case("bfa_per_direction_forward", synth("method", name="bfa", per_direction_forward=True),
         ["{tmp}/config.yaml: method.per_direction_forward: BCP only"]),
    Case("bad_method_value", synth("method", name="bcp", pseudo_weight="lots"),
         ["{tmp}/config.yaml: method.pseudo_weight: Input should be a valid number"]),
    Case("set_without_value", lambda tmp: (SYNTH, ["--set", "train.iterations"]),
         ["--set 'train.iterations': expected key=value"]),
    Case("set_bad_value", lambda tmp: (SYNTH, ["--set", "train.iterations=many"]),
         ["{tmp}/config.yaml: train.iterations: Input should be a valid integer"]),
    Case("set_into_value", lambda tmp: (SYNTH, ["--set", "train.iterations.max=3"]),
         ["--set 'train.iterations.max=3': 'iterations' is not a section"]),
    Case("unknown_device", synth("train", device="tpu"), ["train.device: unknown device 'tpu'"]),
    Case("fp16_on_cpu", synth("train", precision="fp16", device="cpu"), ["train.precision: fp16 needs a CUDA device"]),
    Case("vnet_with_2d_data", synth("model", name="vnet"), ["model.name: vnet is 3-D but the data trains 2-D"]),
    Case("patch_too_small", synth("data", patch_size=[4, 4]),
         ["{tmp}/config.yaml: data.patch_size: Value error, every size must be >= 8"]),
    Case("synthetic_classes_mismatch", synth("model", num_classes=4),
         ["data.synthetic_classes (3) must equal model.num_classes (4)"]),
    Case("zero_labeled", synth("data", labeled=0, labeled_fraction=None),
         ["{tmp}/config.yaml: data.labeled: Input should be greater than or equal to 1"]),
    Case("labeled_more_than_cases", la(labeled=5),
         ["data.labeled: 5 labeled cases requested but the training list has 3"]),
    Case("needs_unlabeled",
         lambda tmp: (cfg_with(cfg_with(SYNTH, "method", name="bcp"), "data", labeled_fraction=1.0), []),
         ["method 'bcp' needs unlabeled data but every training case is labeled"]),
    # data folders and list files
    Case("data_root_unset", lambda tmp: (cfg_with(la_config(tmp), "data", root=None), []),
         ["data.root: required for dataset 'la'"]),
    Case("data_root_missing", lambda tmp: (la_config(tmp / "nowhere"), []),
         ["data.root: folder not found: {tmp}/nowhere"]),
    Case("missing_list_file", la(lambda root: (root / "train.list").unlink()),
         ["list file not found: {tmp}/LA/train.list"]),
    Case("empty_list_file", la(lambda root: (root / "train.list").write_text("\n\n")),
         ["{tmp}/LA/train.list: list file is empty"]),
    Case("duplicate_id_in_list", la(lambda root: (root / "train.list").write_text("case_a\ncase_b\ncase_a\n")),
         ["{tmp}/LA/train.list: duplicate id 'case_a'"]),
    Case("unknown_id_in_list", la(lambda root: (root / "train.list").write_text("case_a\nghost\ncase_b\ncase_c\n")),
         ["case 'ghost': file not found: {tmp}/LA/2018LA_Seg_Training Set/ghost/mri_norm2.h5"]),
    Case("val_cases_too_many", la(val_cases=4), ["data.val_cases: 4 leaves no training cases out of 4"]),
    Case("acdc_missing_val_list", acdc(lambda root: (root / "val.list").unlink()),
         ["list file not found: {tmp}/ACDC/val.list"]),
    Case("acdc_3d_patch", acdc(patch_size=[16, 16, 16]), ["data.patch_size: ACDC trains 2-D slices"]),
    Case("slice_resize_not_acdc", la(slice_resize="nearest"),
         ["data.slice_resize: only ACDC resizes its 2-D slices, not 'la' (keep 'linear')"]),
    # h5 contents
    Case("corrupt_h5", la(_garbage_la),
         ["{tmp}/LA/2018LA_Seg_Training Set/case_b/mri_norm2.h5: cannot read h5 file"]),
    Case("h5_missing_image", la(_rewrite_la("case_a", label=lab)),
         ["{tmp}/LA/2018LA_Seg_Training Set/case_a/mri_norm2.h5: missing key 'image' (keys: ['label'])"]),
    Case("h5_missing_label", la(_rewrite_la("case_a", image=img)),
         ["{tmp}/LA/2018LA_Seg_Training Set/case_a/mri_norm2.h5: missing key 'label' (keys: ['image'])"]),
    Case("shape_mismatch", la(_rewrite_la("case_b", image=img, label=lab[:, :, :10])),
         ["case_b/mri_norm2.h5: 'label' shape (20, 20, 10) differs from 'image' shape (20, 20, 12)"]),
    Case("label_out_of_range", la(_rewrite_la("case_a", image=img, label=bad_lab)),
         ["case_a/mri_norm2.h5: label values 0..5 outside 0..1"]),
    Case("nan_in_image", la(_rewrite_la("case_b", image=nan_img, label=lab)),
         ["case_b/mri_norm2.h5: 'image' contains NaN or Inf values"]),
    Case("wrong_dimensions", la(_rewrite_la("case_a", image=img[0], label=lab[0])),
         ["case_a/mri_norm2.h5: 'image' has 2 dimensions (20, 12), expected 3"]),
    Case("acdc_slice_is_3d", acdc(lambda root: _rewrite_slice(root)),
         ["patient001_frame01_slice_0.h5: 'image' has 3 dimensions (2, 24, 24), expected 2"]),
    # NIfTI folders
    Case("corrupt_nifti", lambda tmp: (nifti_config(nifti_dataset(tmp / "nii", garbage_image="case9_0000.nii.gz")), []),
         ["cannot read NIfTI file {tmp}/nii/imagesTr/case9_0000.nii.gz"]),
    Case("nifti_affine_mismatch", lambda tmp: (nifti_config(nifti_dataset(tmp / "nii", label_affine=np.eye(4))), []),
         ["label {tmp}/nii/labelsTr/case1.nii.gz and image", "differ in affine"]),
    Case("truncated_nifti",
         lambda tmp: (nifti_config(_truncate(nifti_dataset(tmp / "nii"), "imagesTr/case2_0000.nii.gz")), []),
         ["cannot read the voxel data of {tmp}/nii/imagesTr/case2_0000.nii.gz"]),
    # output folder and runs
    Case("output_not_writable", lambda tmp: (SYNTH, ["--output", str(_a_file(tmp)) + "/sub"]),
         ["--output {tmp}/a_file/sub: not writable (Not a directory: {tmp}/a_file is a file)"]),
    Case("existing_run_without_resume", lambda tmp: _with_run(tmp),
         ["{tmp}/out: a run already exists here; pass --resume"], fresh_output=False),
    Case("train_force_with_resume", lambda tmp: _with_run(tmp, "--resume", "--force"),
         ["--force: starts the run over, which --resume contradicts; give one of them"], fresh_output=False),
    Case("resume_without_run", lambda tmp: (SYNTH, ["--resume"]),
         ["--resume: no checkpoint to resume at {tmp}/out/checkpoints/last.pt"]),
    Case("resume_garbage_checkpoint", lambda tmp: _with_run(tmp, "--resume"),
         ["{tmp}/out/checkpoints/last.pt: not a PyTorch checkpoint (the file starts with b'not ', not a zip archive)"],
         fresh_output=False),
    Case("resume_changed_config", lambda tmp: _with_run(tmp, "--resume", last_bytes=_checkpoint_of(lr=0.5)),
         ["--resume: the config differs from the run's in train.lr"], fresh_output=False),
    Case("resume_incomplete_checkpoint", lambda tmp: _with_run(tmp, "--resume", last_bytes=_checkpoint_of()),
         ["{tmp}/out/checkpoints/last.pt: cannot resume from this checkpoint (Error(s) in loading state_dict"],
         fresh_output=False),
    # second adversarial pass (docs/ERRORS.md, "Adversarial pass (second round)")
    Case("duplicate_yaml_key", lambda tmp: (yaml.safe_dump(SYNTH) + "train:\n  iterations: 3\n", []),
         ["{tmp}/config.yaml: invalid YAML (line", "duplicate key 'train'"]),
    Case("set_empty_key_part", lambda tmp: (SYNTH, ["--set", "train..iterations=3"]),
         ["--set 'train..iterations=3': the key has an empty part"]),
    Case("config_is_folder", lambda tmp: ((tmp / "config.yaml").mkdir() and None, []),
         ["{tmp}/config.yaml: is a folder, not a config file"]),
    Case("list_is_folder", la(lambda root: ((root / "train.list").unlink(), (root / "train.list").mkdir())),
         ["{tmp}/LA/train.list: is a folder, not a list file"]),
    Case("id_is_path", la(lambda root: (root / "train.list").write_text("case_a\n./case_a\ncase_b\ncase_c\n")),
         ["{tmp}/LA/train.list: id './case_a' is a path"]),
    Case("h5_complex_image", la(_rewrite_la("case_b", image=img.astype(np.complex64), label=lab)),
         ["case_b/mri_norm2.h5: 'image' must hold real numbers, got dtype complex64"]),
    Case("h5_empty_image", la(_rewrite_la("case_b", image=img[:0], label=lab[:0])),
         ["case_b/mri_norm2.h5: 'image' is empty (shape (0, 20, 12))"]),
    Case("h5_beyond_float32", la(_rewrite_la("case_b", image=img.astype(np.float64) * 1e300, label=lab)),
         ["case_b/mri_norm2.h5: 'image' contains NaN or Inf values"]),
    Case("resume_truncated_checkpoint", lambda tmp: _with_run(tmp, "--resume", last_bytes=_truncated_checkpoint()),
         ["{tmp}/out/checkpoints/last.pt: not a readable checkpoint (incomplete zip archive); the file is truncated"],
         fresh_output=False),
]


def _truncate(root: Path, rel: str) -> Path:
    path = root / rel
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return root


def _checkpoint_of(**train) -> bytes:
    """A minimal valid checkpoint of SYNTH with some train values changed."""
    import io

    from bfaseg.config import validate_config

    cfg = validate_config(cfg_with(SYNTH, "train", **train)).model_dump()
    buf = io.BytesIO()
    state = {"schema": 1, "student": {}, "iteration": 2, "config": cfg}
    torch.save({**state, "content_hash": ckpt.content_hash(state)}, buf)  # as save_checkpoint writes it
    return buf.getvalue()


def _truncated_checkpoint() -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"student": {"w": torch.zeros(1000)}, "iteration": 2}, buf)
    return buf.getvalue()[:3000]


def _rewrite_slice(root: Path):
    path = root / "data" / "slices" / "patient001_frame01_slice_0.h5"
    path.unlink()
    write_h5(path, *volume((2, 24, 24), num_classes=4))


def _a_file(tmp: Path) -> Path:
    f = tmp / "a_file"
    f.write_text("I am a file, not a folder\n")
    return f


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, capsys):
    cfg, extra = case.make(tmp_path)
    cfg_path = tmp_path / "config.yaml"
    if isinstance(cfg, dict):
        cfg_path.write_text(yaml.safe_dump(cfg))
    elif isinstance(cfg, str):
        cfg_path.write_text(cfg)
    out = tmp_path / "out"
    before = snapshot(out)
    argv = ["train", str(cfg_path), "--no-progress"]
    if "--output" not in extra:
        argv += ["--output", str(out)]
    code = main(argv + extra)
    captured = capsys.readouterr()
    err = captured.err
    assert code == case.code, err
    assert captured.out == ""
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert err.startswith("error: "), err
    for s in case.expect:
        assert s.replace("{tmp}", str(tmp_path)) in err, err
    # no partial output: nothing created for a fresh run, nothing touched in an existing one
    if case.fresh_output:
        assert not out.exists(), sorted(snapshot(out))
        assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.tmp"))
    else:
        assert snapshot(out) == before


def test_catalogue_is_documented():
    """Every case of the catalogue has its row in docs/ERRORS.md (the id in backticks)."""
    text = DOCS.read_text(encoding="utf-8")
    missing = [c.id for c in CASES if f"`{c.id}`" not in text]
    assert not missing, f"cases not in docs/ERRORS.md: {missing}"


# --------------------------------------------------------------------------- cases that need a run


def test_patch_larger_than_volume_is_padded_not_an_error(tmp_path, capsys):
    """LA volumes smaller than the patch (here 12 slices for a 16-slice patch) are zero-padded."""
    root = la_dataset(tmp_path / "LA", shape=(20, 20, 12))
    cfg = la_config(root)
    cfg["train"] = {**TRAIN, "iterations": 2, "val_every": 2, "checkpoint_every": 2}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    code = main(["train", str(tmp_path / "c.yaml"), "--output", str(tmp_path / "run"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["iterations"] == 2 and summary["val_split"] == "last 1 of train.list"


def test_disk_full_while_writing_a_checkpoint(tmp_path, capsys, monkeypatch):
    real_save = torch.save

    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("iteration", 0) >= 4:
            f.write(b"half a checkpoint")  # some bytes reach the temp file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", save)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(cfg_with(SYNTH, "train", iterations=6, val_every=100)))
    run = tmp_path / "run"
    code = main(["train", str(cfg), "--output", str(run), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: cannot write {run}/checkpoints/last.pt: No space left")
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    state = ckpt.load_checkpoint(run / "checkpoints" / "last.pt")  # the previous one, intact
    assert state["iteration"] == 2
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert not (run / "train_summary.json").exists()


def test_ctrl_c_keeps_a_checkpoint_and_says_how_to_resume(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(cfg_with(SYNTH, "train", iterations=100000, val_every=100000, log_every=1)))
    run = tmp_path / "run"
    log = run / "log.jsonl"
    code, err = signal_when_ready([sys.executable, "-m", "bfaseg", "train", str(cfg), "--output", str(run), "--no-progress"],
                                  lambda: log.exists() and bool(log.read_text().strip()), signal.SIGINT, start_timeout=120,
                                  stop_timeout=60)
    assert code == 130, err
    assert err.count("\n") == 1 and err.startswith("error: interrupted at iteration "), err
    assert "--resume" in err and str(run / "checkpoints" / "last.pt") in err
    it = int(re.search(r"iteration (\d+)", err).group(1))
    assert ckpt.load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == it
    assert not list((run / "checkpoints").glob(".*.tmp"))


# --------------------------------------------------------------------------- second adversarial pass: library checks


def test_list_file_with_bom_and_crlf_is_read(tmp_path):
    from bfaseg.data.readers import read_list

    path = tmp_path / "train.list"
    path.write_bytes(b"\xef\xbb\xbfcase_a\r\ncase_b\r\n\r\n")  # written by Windows Notepad
    assert read_list(path) == ["case_a", "case_b"]


def test_data_root_with_tilde_is_the_home_folder(monkeypatch, tmp_path):
    from bfaseg.config import DataConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    assert DataConfig(root="~/LA").root == str(tmp_path / "LA")


def test_image_beyond_float32_is_one_error_and_no_warning(tmp_path):
    import warnings

    from bfaseg.data.readers import read_h5_case
    from bfaseg.errors import BfasegError

    path = write_h5(tmp_path / "x.h5", img.astype(np.float64) * 1e300, lab)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow RuntimeWarning would be a second stderr line
        with pytest.raises(BfasegError, match="'image' contains NaN or Inf values"):
            read_h5_case(path, "x", ndim=3, num_classes=2)


# --------------------------------------------------------------------------- second adversarial pass: other commands


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A 1-iteration 3-D supervised run on a tiny LA layout and a 1-iteration 2-D synthetic run."""
    tmp = tmp_path_factory.mktemp("runs")
    root = la_dataset(tmp / "LA")
    one = {**TRAIN, "iterations": 1, "val_every": 1, "checkpoint_every": 1}
    for name, cfg in (("la", {**la_config(root), "train": one}), ("syn", {**SYNTH, "train": one})):
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["train", str(tmp / f"{name}.yaml"), "--output", str(tmp / name), "--no-progress"]) == 0
    return tmp


def _text_checkpoint(tmp: Path) -> Path:
    (tmp / "notes.pt").write_text("hello\n")
    return tmp / "notes.pt"


def _predict_into_input(tmp: Path, runs: Path) -> list[str]:
    import nibabel as nib

    (tmp / "in").mkdir()
    nib.save(nib.Nifti1Image(volume()[0], AFFINE), str(tmp / "in" / "x_0000.nii.gz"))
    return ["predict", "--checkpoint", str(runs / "la/checkpoints/last.pt"), "--input", str(tmp / "in"),
            "--output", str(tmp / "in"), "--device", "cpu", "--no-progress"]


def _evaluate(runs: Path, *extra, checkpoint=None) -> list[str]:
    return ["evaluate", "--checkpoint", str(checkpoint or runs / "la/checkpoints/last.pt"), "--data",
            str(runs / "LA"), "--split", "train.list", "--device", "cpu", "--no-progress", *extra]


def _experiment(tmp: Path, runs: Path, *extra) -> list[str]:
    return ["experiment", str(runs / "syn.yaml"), "--methods", "supervised", "--seeds", "1",
            "--output", str(tmp / "out"), "--no-progress", *extra]


# (id, argv from (tmp, runs), substrings of the one error line; "{tmp}"/"{runs}" replaced)
COMMAND_CASES = [
    ("checkpoint_text_file", lambda tmp, runs: _evaluate(runs, "--output", str(tmp / "out"),
                                                         checkpoint=_text_checkpoint(tmp)),
     ["{tmp}/notes.pt: not a PyTorch checkpoint (the file starts with b'hell', not a zip archive)"]),
    ("checkpoint_is_folder", lambda tmp, runs: _evaluate(runs, "--output", str(tmp / "out"), checkpoint=tmp),
     ["{tmp}: is a folder, not a checkpoint file"]),
    ("teacher_of_a_supervised_run", lambda tmp, runs: _evaluate(runs, "--output", str(tmp / "out"), "--model", "teacher"),
     ["--model teacher: {runs}/la/checkpoints/last.pt has no teacher weights (method supervised)"]),
    ("predict_output_is_input", _predict_into_input,
     ["--output {tmp}/in: is the input folder {tmp}/in; a second run would read the outputs as inputs"]),
    ("report_run_twice", lambda tmp, runs: ["report", str(runs / "syn"), str(runs / "syn"), "--output", str(tmp / "out")],
     ["RUN_DIR {runs}/syn: given twice"]),
    ("report_plateau_nan", lambda tmp, runs: ["report", str(runs / "syn"), "--plateau", "--plateau-points", "nan",
                                              "--output", str(tmp / "out")],
     ["--plateau-points: must be a positive number of Dice points, got nan"]),
    ("experiment_iterations_zero", lambda tmp, runs: _experiment(tmp, runs, "--iterations", "0"),
     ["--iterations: must be >= 1, got 0"]),
    ("experiment_labeled_zero", lambda tmp, runs: _experiment(tmp, runs, "--labeled", "0"),
     ["--labeled: must be >= 1, got 0"]),
]


@pytest.mark.parametrize("make,expect", [c[1:] for c in COMMAND_CASES], ids=[c[0] for c in COMMAND_CASES])
def test_bad_input_other_commands(make, expect, tiny_runs, tmp_path, capsys):
    argv = make(tmp_path, tiny_runs)
    before = snapshot(tmp_path)
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, f"not one line: {err!r}"
    for s in expect:
        assert s.replace("{tmp}", str(tmp_path)).replace("{runs}", str(tiny_runs)) in err, err
    assert snapshot(tmp_path) == before  # nothing written, not even an empty --output


def test_other_commands_cases_are_documented():
    text = DOCS.read_text(encoding="utf-8")
    missing = [c[0] for c in COMMAND_CASES if f"`{c[0]}`" not in text]
    assert not missing, f"cases not in docs/ERRORS.md: {missing}"


def test_paper_mode_on_a_2d_network_says_so(tiny_runs, tmp_path, capsys):
    """--mode paper has no windows for a 2-D network: one warning line, then the slice-wise prediction."""
    import nibabel as nib

    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(volume((32, 32, 3))[0], AFFINE), str(tmp_path / "in" / "x_0000.nii.gz"))
    code = main(["predict", "--checkpoint", str(tiny_runs / "syn/checkpoints/last.pt"), "--input", str(tmp_path / "in"),
                 "--output", str(tmp_path / "out"), "--mode", "paper", "--device", "cpu", "--no-progress", "--no-quality"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err == ("warning: --mode paper: the checkpoint is a 2-D network, predicted slice by slice "
                   "(no sliding window; for ACDC this is the reference protocol)\n")


def test_ctrl_c_in_a_command_is_one_error_line(monkeypatch, capsys):
    import bfaseg.cli.metrics as metrics_cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(metrics_cli, "run", interrupted)
    assert main(["metrics", "p.npy", "g.npy"]) == 130
    err = capsys.readouterr().err
    assert err == "error: interrupted by Ctrl-C; files being written were removed, finished outputs kept\n"


def test_split_file_with_a_key_twice(tmp_path, capsys):
    """The second `labeled:` would silently replace the first."""
    split = tmp_path / "split.yaml"
    split.write_text("labeled: [synth_000]\nunlabeled: [synth_001]\nlabeled: [synth_002]\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(cfg_with(SYNTH, "data", split_file=str(split))))
    out = tmp_path / "out"
    assert main(["train", str(cfg), "--output", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {split}: cannot parse split file (duplicate key 'labeled'"), err
    assert err.count("\n") == 1 and not out.exists()
