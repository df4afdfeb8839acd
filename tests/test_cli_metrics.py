"""``bfaseg metrics PRED GT``: JSON output, table output, spacing, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bfaseg.cli.main import main
from bfaseg.metrics import METRICS, compute

KEYS = set(METRICS)


@pytest.fixture
def masks():
    gt = np.zeros((20, 18, 10), np.uint8)
    gt[4:14, 5:12, 2:8] = 1
    pred = np.roll(gt, 2, axis=0)
    return pred, gt


def _run(capsys, *argv):
    code = main(["metrics", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_npy_binary(tmp_path, capsys, masks):
    pred, gt = masks
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "g.npy", gt)
    code, out, _ = _run(capsys, tmp_path / "p.npy", tmp_path / "g.npy", "--json")
    assert code == 0
    result = json.loads(out)  # the whole of stdout is one JSON object
    assert set(result) == KEYS
    expected = compute(pred, gt)
    for k in METRICS:
        assert result[k] == pytest.approx(expected[k])


def test_json_h5_multiclass_and_spacing(tmp_path, capsys, masks):
    h5py = pytest.importorskip("h5py")
    pred, gt = masks
    gt = gt.copy()
    gt[6:9, 6:9, 3:6] = 2
    pred = np.roll(gt, 1, axis=1)
    for name, arr in (("p.h5", pred), ("g.h5", gt)):
        with h5py.File(tmp_path / name, "w") as f:
            f["label"] = arr
            f["image"] = arr.astype(np.float32)
    code, out, _ = _run(capsys, tmp_path / "p.h5", tmp_path / "g.h5", "--json", "--classes", "3",
                        "--spacing", "0.5", "0.5", "2")
    assert code == 0
    result = json.loads(out)
    assert set(result) == KEYS
    assert set(result["dice"]) == {"1", "2", "3"}
    expected = compute(pred, gt, spacing=(0.5, 0.5, 2), classes=3)
    assert result["hd95"]["1"] == pytest.approx(expected["hd95"][1])
    assert result["dice"]["3"] is None  # absent from both: NaN (printed as null), left out of the mean


def test_json_nan_is_null(tmp_path, capsys, masks):
    _, gt = masks
    np.save(tmp_path / "empty.npy", np.zeros_like(gt))
    np.save(tmp_path / "g.npy", gt)
    code, out, err = _run(capsys, tmp_path / "empty.npy", tmp_path / "g.npy", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["dice"] == 0.0 and result["hd95"] is None and result["asd"] is None
    assert "pred_empty" in err
    code, out, _ = _run(capsys, tmp_path / "empty.npy", tmp_path / "g.npy", "--json", "--policy", "paper")
    assert json.loads(out)["hd95"] == 0.0


def test_nifti_uses_header_zooms(tmp_path, capsys, masks):
    nib = pytest.importorskip("nibabel")
    pred, gt = masks
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    nib.save(nib.Nifti1Image(pred, affine), tmp_path / "p.nii.gz")
    nib.save(nib.Nifti1Image(gt, affine), tmp_path / "g.nii")
    code, out, _ = _run(capsys, tmp_path / "p.nii.gz", tmp_path / "g.nii", "--json")
    assert code == 0
    assert json.loads(out)["hd"] == pytest.approx(compute(pred, gt, spacing=(0.5, 0.5, 2.0))["hd"])
    code, out, _ = _run(capsys, tmp_path / "p.nii.gz", tmp_path / "g.nii")
    assert code == 0 and "mm" in out and "NIfTI header" in out


def test_table_output(tmp_path, capsys, masks):
    pred, gt = masks
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "g.npy", gt)
    code, out, _ = _run(capsys, tmp_path / "p.npy", tmp_path / "g.npy")
    assert code == 0
    assert "voxels" in out and "hd95" in out and "strict" in out
    row = [line for line in out.splitlines() if line.startswith("fg")][0].split()
    assert float(row[1]) == pytest.approx(compute(pred, gt)["dice"], abs=1e-4)


def _error(capsys, *argv):
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_errors_name_the_file(tmp_path, capsys, masks):
    h5py = pytest.importorskip("h5py")
    pred, gt = masks
    p, g = tmp_path / "p.npy", tmp_path / "g.npy"
    np.save(p, pred)
    np.save(g, gt)

    assert "missing.npy" in _error(capsys, p, tmp_path / "missing.npy")

    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"not an hdf5 file")
    assert "corrupt.h5" in _error(capsys, corrupt, g)

    bad_npy = tmp_path / "bad.npy"
    bad_npy.write_bytes(b"\x93NUMPY garbage")
    assert "bad.npy" in _error(capsys, p, bad_npy)

    nolabel = tmp_path / "nolabel.h5"
    with h5py.File(nolabel, "w") as f:
        f["image"] = gt.astype(np.float32)
    msg = _error(capsys, p, nolabel)
    assert "nolabel.h5" in msg and "label" in msg

    small = tmp_path / "small.npy"
    np.save(small, gt[:10])
    msg = _error(capsys, p, small)
    assert "p.npy" in msg and "small.npy" in msg and "(20, 18, 10)" in msg and "(10, 18, 10)" in msg

    msg = _error(capsys, p, g, "--spacing", "1", "1")
    assert "--spacing" in msg and "g.npy" in msg

    text = tmp_path / "mask.txt"
    text.write_text("0 1")
    assert "mask.txt" in _error(capsys, text, g)


def test_policy_choices_are_validated(tmp_path, capsys, masks):
    pred, gt = masks
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "g.npy", gt)
    with pytest.raises(SystemExit) as exc:
        main(["metrics", str(tmp_path / "p.npy"), str(tmp_path / "g.npy"), "--policy", "lenient"])
    assert exc.value.code != 0
