"""``bfaseg prepare``: tiny synthetic raw releases in each raw format, converted and read back."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from bfaseg.cli.main import main
from bfaseg.data.prepare import prepare_acdc, prepare_la, prepare_pancreas
from bfaseg.errors import BfasegError

# --------------------------------------------------------------------------- helpers


def _write_sitk_xyz(arr_xyz: np.ndarray, path: Path, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr_xyz.transpose(2, 1, 0)))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return img


def _no_temp_files(root: Path):
    leftovers = [p for p in root.rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers


def _read(path: Path):
    with h5py.File(path, "r") as f:
        return f["image"][()], f["label"][()], dict(f.attrs)


# --------------------------------------------------------------------------- LA

LA_SHAPE = (80, 70, 8)  # x, y, z
LA_BOX = (slice(30, 45), slice(25, 40), slice(2, 6))


def _make_la_raw(root: Path, ids=("CASE_B", "CASE_A", "CASE_C")) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    images = {}
    for cid in ids:
        image = rng.normal(100, 20, LA_SHAPE).astype(np.float32)
        label = np.zeros(LA_SHAPE, np.uint8)
        label[LA_BOX] = 255
        image[LA_BOX] += 200
        _write_sitk_xyz(image, root / cid / "lgemri.nrrd", spacing=(0.625, 0.625, 0.625))
        _write_sitk_xyz(label, root / cid / "laendo.nrrd", spacing=(0.625, 0.625, 0.625))
        images[cid] = image
    return images


def test_la_label_crop(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    images = _make_la_raw(raw)
    summary = prepare_la(raw, out, min_size=(0, 0), seed=3, show_progress=False)

    assert (out / "train.list").read_text() == "CASE_A\nCASE_B\n"
    assert (out / "test.list").read_text() == "CASE_C\n"
    assert len(summary.files) == 3
    for cid, src in images.items():
        image, label, attrs = _read(out / "2018LA_Seg_Training Set" / cid / "mri_norm2.h5")
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.shape == label.shape and image.shape[2] == LA_SHAPE[2]  # full z
        assert set(np.unique(label)) == {0, 1}
        np.testing.assert_allclose(attrs["spacing"], [0.625] * 3)
        # margins of 10..19 voxels around the box on each side in x and y
        idx = np.nonzero(label)
        for ax in (0, 1):
            before, after = idx[ax].min(), image.shape[ax] - 1 - idx[ax].max()
            assert 10 <= before <= 19 and 10 <= after <= 19
        # z-scored over the whole volume, (x, y, z) axis order, crop offset
        z = (src - src.mean()) / src.std()
        x0 = LA_BOX[0].start - idx[0].min()
        y0 = LA_BOX[1].start - idx[1].min()
        np.testing.assert_allclose(image, z[x0 : x0 + image.shape[0], y0 : y0 + image.shape[1]], atol=1e-4)
    _no_temp_files(out)

    # the seed makes the margins reproducible
    prepare_la(raw, tmp_path / "again", min_size=(0, 0), seed=3, show_progress=False)
    a = _read(out / "2018LA_Seg_Training Set" / "CASE_A" / "mri_norm2.h5")[0]
    b = _read(tmp_path / "again" / "2018LA_Seg_Training Set" / "CASE_A" / "mri_norm2.h5")[0]
    assert a.shape == b.shape


def test_la_min_size_and_no_label_crop_cli(tmp_path):
    raw = tmp_path / "raw"
    _make_la_raw(raw, ids=("X1", "X2"))
    out = tmp_path / "out"
    assert main(["prepare", "la", str(raw), str(out), "--no-progress", "--min-size", "64", "64"]) == 0
    image, _, _ = _read(out / "2018LA_Seg_Training Set" / "X1" / "mri_norm2.h5")
    assert image.shape[0] >= 64 and image.shape[1] >= 64
    assert (out / "train.list").read_text() == "X1\n" and (out / "test.list").read_text() == "X2\n"

    out2 = tmp_path / "out2"
    rc = main(["prepare", "la", str(raw), str(out2), "--no-progress", "--no-label-crop", "--crop-size", "96", "64"])
    assert rc == 0
    image, label, attrs = _read(out2 / "2018LA_Seg_Training Set" / "X1" / "mri_norm2.h5")
    assert image.shape == (96, 64, LA_SHAPE[2])  # x padded (80 -> 96), y cropped (70 -> 64)
    assert label.sum() == 15 * 15 * 4  # the atrium lies inside the centre window
    assert not bool(attrs["label_crop"])


def test_la_errors(tmp_path, capsys):
    with pytest.raises(BfasegError, match="not found"):
        prepare_la(tmp_path / "missing", tmp_path / "out", show_progress=False)
    raw = tmp_path / "raw"
    _make_la_raw(raw, ids=("A", "B"))
    (raw / "B" / "laendo.nrrd").unlink()
    with pytest.raises(BfasegError, match=r"B has no label.*laendo\.nrrd"):
        prepare_la(raw, tmp_path / "out", show_progress=False)
    (raw / "B" / "laendo.nrrd").write_bytes(b"not an nrrd file")
    with pytest.raises(BfasegError, match=r"cannot read LA label .*laendo\.nrrd"):
        prepare_la(raw, tmp_path / "out", show_progress=False)
    # through the CLI: one line, non-zero exit
    assert main(["prepare", "la", str(raw), str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: cannot read LA label")


# --------------------------------------------------------------------------- Pancreas

PA_SHAPE = (40, 30, 12)  # x, y, z
PA_ZOOMS = (0.8, 0.8, 2.5)


def _pancreas_volume(seed: int):
    rng = np.random.default_rng(seed)
    hu = rng.uniform(-1000, 600, PA_SHAPE).astype(np.int16)
    label = np.zeros(PA_SHAPE, np.uint8)
    label[15:25, 10:20, 4:8] = 1
    return hu, label


def _write_dicom_series(hu_xyz: np.ndarray, folder: Path, spacing, origin):
    folder.mkdir(parents=True)
    img = sitk.GetImageFromArray(np.ascontiguousarray(hu_xyz.transpose(2, 1, 0)))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series, study = "1.2.826.0.1.3680043.2.1125.1.77", "1.2.826.0.1.3680043.2.1125.1.78"
    for i in range(img.GetSize()[2]):
        sl = img[:, :, i]
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series}.{i + 1}",
            "0020|000d": study,
            "0020|000e": series,
            "0020|0013": str(i + 1),
            "0020|0032": "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, i))),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": str(spacing[2]),
            "0028|0030": f"{spacing[1]}\\{spacing[0]}",
        }
        for k, v in tags.items():
            sl.SetMetaData(k, v)
        writer.SetFileName(str(folder / f"IM{i:04d}.dcm"))
        writer.Execute(sl)
    return img


def _make_pancreas_raw(raw: Path):
    affine = np.diag(list(PA_ZOOMS) + [1.0])
    vols = {}
    for name, seed in (("PANCREAS_0002", 2), ("PANCREAS_0003", 3)):
        hu, lab = _pancreas_volume(seed)
        (raw / "images").mkdir(parents=True, exist_ok=True)
        (raw / "labels").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(hu, affine), str(raw / "images" / f"{name}.nii.gz"))
        label_name = f"{name}.nii.gz" if seed == 2 else "label0003.nii.gz"
        nib.save(nib.Nifti1Image(lab, affine), str(raw / "labels" / label_name))
        vols[name] = (hu, lab)
    # a duplicate of case 2 under another name
    nib.save(nib.Nifti1Image(vols["PANCREAS_0002"][0], affine), str(raw / "images" / "PANCREAS_0009.nii.gz"))
    nib.save(nib.Nifti1Image(vols["PANCREAS_0002"][1], affine), str(raw / "labels" / "label0009.nii.gz"))
    # one DICOM case (nested below the case folder like the TCIA download)
    hu, lab = _pancreas_volume(1)
    img = _write_dicom_series(hu, raw / "images" / "PANCREAS_0001" / "study" / "series", PA_ZOOMS, (-5.0, 3.0, 7.0))
    limg = sitk.GetImageFromArray(np.ascontiguousarray(lab.transpose(2, 1, 0)))
    limg.CopyInformation(img)
    sitk.WriteImage(limg, str(raw / "labels" / "label0001.nii.gz"))
    vols["PANCREAS_0001"] = (hu, lab)
    return vols


def test_pancreas(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    vols = _make_pancreas_raw(raw)
    summary = prepare_pancreas(raw, out, spacing=(1.6, 1.6, 2.5), expand=2, min_size=8, show_progress=False)
    assert "PANCREAS_0009" in capsys.readouterr().err  # duplicate dropped, with a message
    assert summary.dropped == ["PANCREAS_0009"]
    assert not (out / "Pancreas_h5" / "PANCREAS_0009_norm.h5").exists()
    assert (out / "train.list").read_text() == "PANCREAS_0001\nPANCREAS_0002\n"
    assert (out / "test.list").read_text() == "PANCREAS_0003\n"
    for name in ("PANCREAS_0001", "PANCREAS_0002", "PANCREAS_0003"):
        image, label, attrs = _read(out / "Pancreas_h5" / f"{name}_norm.h5")
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > 0.9
        assert set(np.unique(label)) == {0, 1}
        np.testing.assert_allclose(attrs["spacing"], [1.6, 1.6, 2.5])
        # label box 10x10x4 voxels at 0.8x0.8x2.5 -> 5x5x4 at 1.6x1.6x2.5, plus 2 each side
        idx = np.nonzero(label)
        assert [int(a.max() - a.min() + 1) for a in idx] == [5, 5, 4]
        assert image.shape == (9, 9, 8)
    _no_temp_files(out)


def test_pancreas_axis_order_and_padding(tmp_path, capsys):
    raw = tmp_path / "raw"
    vols = _make_pancreas_raw(raw)
    # a label whose header disagrees with its image (same grid size) is taken voxel-for-voxel
    shifted = np.diag(list(PA_ZOOMS) + [1.0])
    shifted[:3, 3] = (4.0, -3.0, 20.0)
    nib.save(nib.Nifti1Image(vols["PANCREAS_0003"][1], shifted), str(raw / "labels" / "label0003.nii.gz"))
    # same spacing, huge expansion: the whole volume in (x, y, z) order, clipped and min-max scaled
    out = tmp_path / "same"
    prepare_pancreas(raw, out, spacing=PA_ZOOMS, expand=100, min_size=1, show_progress=False)
    assert "label0003.nii.gz: origin/direction differ" in capsys.readouterr().err
    for name in ("PANCREAS_0001", "PANCREAS_0002", "PANCREAS_0003"):
        image, label, _ = _read(out / "Pancreas_h5" / f"{name}_norm.h5")
        hu, lab = vols[name]
        clipped = np.clip(hu.astype(np.float32), -125, 275)
        expect = (clipped - clipped.min()) / (clipped.max() - clipped.min())
        assert image.shape == PA_SHAPE
        np.testing.assert_allclose(image, expect, atol=1e-5)
        np.testing.assert_array_equal(label, lab)
    # default minimum size: padded to 96 per axis
    out = tmp_path / "default"
    prepare_pancreas(raw, out, spacing=(2.0, 2.0, 2.0), show_progress=False)
    image, label, _ = _read(out / "Pancreas_h5" / "PANCREAS_0002_norm.h5")
    assert image.shape == (96, 96, 96) and label.shape == (96, 96, 96)


def test_pancreas_errors(tmp_path):
    with pytest.raises(BfasegError, match="not found"):
        prepare_pancreas(tmp_path / "nope", tmp_path / "out", show_progress=False)
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "labels").mkdir()
    hu, lab = _pancreas_volume(0)
    nib.save(nib.Nifti1Image(hu, np.eye(4)), str(raw / "images" / "case7.nii.gz"))
    with pytest.raises(BfasegError, match=r"case7 has no label.*label0007\.nii\.gz"):
        prepare_pancreas(raw, tmp_path / "out", show_progress=False)
    nib.save(nib.Nifti1Image(lab[:-1], np.eye(4)), str(raw / "labels" / "label0007.nii.gz"))
    with pytest.raises(BfasegError, match=r"label0007\.nii\.gz has size"):
        prepare_pancreas(raw, tmp_path / "out", show_progress=False)
    (raw / "images" / "case8").mkdir()
    (raw / "images" / "case8" / "x.dcm").write_bytes(b"garbage")
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(raw / "labels" / "case8.nii.gz"))
    (raw / "labels" / "label0007.nii.gz").unlink()
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(raw / "labels" / "label0007.nii.gz"))
    with pytest.raises(BfasegError, match=r"no readable DICOM series in .*case8"):
        prepare_pancreas(raw, tmp_path / "out", show_progress=False)


# --------------------------------------------------------------------------- ACDC

AC_SHAPE = (20, 24, 4)  # x, y, z as stored in the NIfTI


def _make_acdc_raw(raw: Path):
    rng = np.random.default_rng(5)
    vols = {}
    for sub, pat in (("training", "patient001"), ("training", "patient002"), ("testing", "patient003")):
        folder = raw / sub / pat
        folder.mkdir(parents=True)
        for frame in ("01", "12"):
            image = rng.uniform(0, 700, AC_SHAPE).astype(np.int16)
            label = rng.integers(0, 4, AC_SHAPE).astype(np.uint8)
            affine = np.diag([1.5, 1.25, 10.0, 1.0])
            nib.save(nib.Nifti1Image(image, affine), str(folder / f"{pat}_frame{frame}.nii.gz"))
            nib.save(nib.Nifti1Image(label, affine), str(folder / f"{pat}_frame{frame}_gt.nii.gz"))
            vols[f"{pat}_frame{frame}"] = (image, label)
        nib.save(nib.Nifti1Image(np.zeros(AC_SHAPE + (3,), np.int16), np.eye(4)), str(folder / f"{pat}_4d.nii.gz"))
    return vols


def test_acdc(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    vols = _make_acdc_raw(raw)
    prepare_acdc(raw, out, show_progress=False)

    train = (out / "train_slices.list").read_text().split()
    assert train == [f"patient001_frame{f}_slice_{k}" for f in ("01", "12") for k in range(1, 5)]
    assert (out / "val.list").read_text().split() == ["patient002_frame01", "patient002_frame12"]
    assert (out / "test.list").read_text().split() == ["patient003_frame01", "patient003_frame12"]
    slices = sorted(p.name for p in (out / "data" / "slices").iterdir())
    assert slices == sorted(f"{e}.h5" for e in train)  # slices of training patients only

    for case, (src_img, src_lab) in vols.items():
        image, label, attrs = _read(out / "data" / f"{case}.h5")
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.shape == (4, 24, 20)  # (Z, Y, X)
        expect = src_img.transpose(2, 1, 0).astype(np.float32)
        expect = (expect - expect.min()) / (expect.max() - expect.min())
        np.testing.assert_allclose(image, expect, atol=1e-6)
        np.testing.assert_array_equal(label, src_lab.transpose(2, 1, 0))
        np.testing.assert_allclose(attrs["spacing"], [10.0, 1.25, 1.5])
    image, label, attrs = _read(out / "data" / "slices" / "patient001_frame12_slice_3.h5")
    vimage, vlabel, _ = _read(out / "data" / "patient001_frame12.h5")
    assert image.shape == (24, 20) and image.dtype == np.float32 and label.dtype == np.uint8
    np.testing.assert_array_equal(image, vimage[2])
    np.testing.assert_array_equal(label, vlabel[2])
    np.testing.assert_allclose(attrs["spacing"], [1.25, 1.5])
    np.testing.assert_allclose(attrs["volume_spacing"], [10.0, 1.25, 1.5])
    _no_temp_files(out)


def test_acdc_seeded_split_cli_and_errors(tmp_path, capsys):
    raw = tmp_path / "raw"
    _make_acdc_raw(raw)
    out = tmp_path / "out"
    assert main(["prepare", "acdc", str(raw), str(out), "--no-progress", "--seed", "4", "--all-slices"]) == 0
    lists = [(out / n).read_text().split() for n in ("train_slices.list", "val.list", "test.list")]
    patients = [{e[:10] for e in items} for items in lists]
    assert all(len(p) == 1 for p in patients) and set.union(*patients) == {"patient001", "patient002", "patient003"}
    assert len(list((out / "data" / "slices").iterdir())) == 3 * 2 * 4

    bad = raw / "testing" / "patient003" / "patient003_frame12_gt.nii.gz"
    nib.save(nib.Nifti1Image(np.full(AC_SHAPE, 7, np.uint8), np.eye(4)), str(bad))
    with pytest.raises(BfasegError, match=r"patient003_frame12_gt\.nii\.gz has values \[7\]"):
        prepare_acdc(raw, tmp_path / "o2", show_progress=False)
    bad.unlink()
    with pytest.raises(BfasegError, match=r"patient003_frame12 has no label"):
        prepare_acdc(raw, tmp_path / "o2", show_progress=False)
    assert main(["prepare", "acdc", str(tmp_path / "missing"), str(tmp_path / "o3")]) == 2
    assert "ACDC raw folder not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- all or nothing (issue 30, kind 6)


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("existing", [False, True])
def test_a_bad_case_half_way_leaves_nothing_of_the_cases_before_it(existing, tmp_path, capsys):
    """`prepare` writes all or nothing: a scan that cannot be read after others converted leaves none of their
    files (not even a new OUT folder), and an OUT an earlier prepare filled keeps exactly what it held."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    _make_acdc_raw(raw)
    if existing:
        assert main(["prepare", "acdc", str(raw), str(out), "--no-progress"]) == 0
        (out / "notes.txt").write_text("mine\n")
        capsys.readouterr()
    before = _tree(out) if existing else None
    bad = raw / "testing" / "patient003" / "patient003_frame12.nii.gz"  # the last patient: the others converted
    good = bad.read_bytes()
    bad.write_bytes(b"not a NIfTI file" * 20)
    assert main(["prepare", "acdc", str(raw), str(out), "--no-progress", "--seed", "4"]) == 2
    assert f"cannot read ACDC image {bad}" in capsys.readouterr().err
    assert (_tree(out) == before and not [p for p in out.iterdir() if p.name.startswith(".")]) if existing \
        else not out.exists()

    # the library converters alike (LA: the second of three cases is unreadable)
    la_raw, la_out = tmp_path / "la_raw", tmp_path / "la_out"
    _make_la_raw(la_raw)
    (la_raw / "CASE_B" / "lgemri.nrrd").write_bytes(b"garbage")
    with pytest.raises(BfasegError, match="CASE_B"):
        prepare_la(la_raw, la_out, min_size=(0, 0), show_progress=False)
    assert not la_out.exists()

    bad.write_bytes(good)  # a complete run moves everything in, with the summary line naming OUT
    summary = prepare_acdc(raw, out, show_progress=False)
    assert summary.out == out and all(p.is_file() and out in p.parents for p in summary.files)
    assert f"-> {out} [patients" in capsys.readouterr().err
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
