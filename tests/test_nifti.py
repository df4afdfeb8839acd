"""NIfTI datasets: canonical reorientation, resampling, normalisation and the way back."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bfaseg.data.nifti import load_nifti_image, load_nifti_label
from bfaseg.data.nifti_dataset import load_nifti_dataset, load_nifti_test
from bfaseg.io.geometry import restore_geometry
from bfaseg.io.nifti_write import save_nifti_mask, save_probabilities
from bfaseg.errors import BfasegError

SHAPE = (36, 30, 10)
# no obliquity, but axes permuted and flipped (array axis 0 runs posterior, axis 1 left: "PLS")
AFFINE = np.array(
    [
        [0.0, -0.8, 0.0, 40.0],
        [-0.8, 0.0, 0.0, 25.0],
        [0.0, 0.0, 2.5, -12.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _phantom(seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    # ellipsoid in millimetres (0.8 x 0.8 x 2.5 voxels), class 2 core inside class 1
    r = ((i - 17) * 0.8 / 9.0) ** 2 + ((j - 14) * 0.8 / 8.0) ** 2 + ((k - 5) * 2.5 / 9.0) ** 2
    label = np.zeros(shape, np.uint8)
    label[r <= 1.0] = 1
    label[r <= 0.3] = 2
    hu = rng.normal(-900, 30, shape) + 950 * (label > 0)
    return hu.astype(np.int16), label


def _save(arr, path: Path, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path


def _dice(a, b):
    a, b = a > 0, b > 0
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_canonical_no_resampling_exact_roundtrip(tmp_path):
    hu, label = _phantom()
    hu[3, 4, 5] = 3000  # a marker voxel to follow through the reorientation
    ip, lp = _save(hu, tmp_path / "img.nii.gz"), _save(label, tmp_path / "lab.nii.gz")
    case = load_nifti_image(ip)
    assert case.case_id == "img"
    assert case.meta["modality"] == "CT"  # auto: air at about -900 HU
    assert case.image.dtype == np.float32 and 0.0 <= case.image.min() and case.image.max() <= 1.0
    assert case.image.shape == (30, 36, 10)  # canonical (x, y, z): the two in-plane axes swap
    assert case.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert nib.aff2axcodes(case.geometry.canonical_affine) == ("R", "A", "S")
    # the marker sits at the same world position in both arrays
    marker = np.argwhere(case.image == case.image.max())
    assert len(marker) == 1
    world_src = AFFINE @ np.array([3, 4, 5, 1.0])
    world_can = case.geometry.canonical_affine @ np.append(marker[0], 1.0)
    np.testing.assert_allclose(world_can, world_src, atol=1e-6)

    lab = load_nifti_label(lp, case)
    assert lab.dtype == np.uint8 and lab.shape == case.image.shape
    np.testing.assert_array_equal(restore_geometry(lab, case.geometry), label)


def test_resampled_roundtrip_and_saved_mask(tmp_path):
    hu, label = _phantom()
    ip, lp = _save(hu, tmp_path / "ct_0000.nii.gz"), _save(label, tmp_path / "ct.nii.gz")
    case = load_nifti_image(ip, target_spacing=1.0)
    assert case.case_id == "ct"
    assert case.spacing == (1.0, 1.0, 1.0)
    assert case.image.shape == (24, 29, 25)  # round(30*.8), round(36*.8), 10*2.5
    np.testing.assert_allclose(nib.affines.voxel_sizes(case.geometry.array_affine), 1.0)
    lab = load_nifti_label(lp, case)
    assert set(np.unique(lab)) == {0, 1, 2}
    back = restore_geometry(lab, case.geometry)
    assert back.shape == SHAPE
    assert _dice(back, label) > 0.95
    assert _dice(back == 2, label == 2) > 0.9

    out = tmp_path / "pred" / "ct.nii.gz"
    save_nifti_mask(lab, case.geometry, out)
    src, saved = nib.load(str(ip)), nib.load(str(out))
    assert saved.shape == src.shape
    np.testing.assert_allclose(saved.affine, src.affine, atol=1e-6)
    np.testing.assert_allclose(saved.header.get_zooms(), src.header.get_zooms())
    assert saved.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), back)
    assert [p.name for p in out.parent.iterdir()] == ["ct.nii.gz"]  # no temp file left
    with open(out, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # gzip

    probs = np.stack([lab == c for c in range(3)]).astype(np.float32)  # (C, X, Y, Z)
    pp = save_probabilities(probs, case.geometry, tmp_path / "pred" / "ct_probs.nii.gz")
    saved = nib.load(str(pp))
    assert saved.shape == SHAPE + (3,) and saved.get_data_dtype() == np.float32
    np.testing.assert_allclose(saved.affine, src.affine, atol=1e-6)

    with pytest.raises(BfasegError, match="does not match the case geometry"):
        save_nifti_mask(lab[:-1], case.geometry, tmp_path / "bad.nii.gz")
    with pytest.raises(BfasegError, match=r"must end with \.nii\.gz or \.nii"):
        save_nifti_mask(lab, case.geometry, tmp_path / "bad.h5")


def test_mr_normalisation_and_non_canonical(tmp_path):
    rng = np.random.default_rng(3)
    mr = rng.uniform(0, 500, SHAPE).astype(np.float32)
    ip = _save(mr, tmp_path / "mr.nii.gz")
    case = load_nifti_image(ip, canonical=False)
    assert case.meta["modality"] == "MR"
    assert case.image.shape == SHAPE
    assert abs(float(case.image.mean())) < 1e-4 and abs(float(case.image.std()) - 1) < 1e-4
    lab = (case.image > 0).astype(np.uint8)
    np.testing.assert_array_equal(restore_geometry(lab, case.geometry), lab)
    ct = load_nifti_image(ip, modality="CT", ct_window=(10, 400))
    assert ct.image.min() == 0.0 and ct.image.max() == 1.0
    with pytest.raises(BfasegError, match=r"mr\.nii\.gz: declared CT by data\.modality, but 8\d\.\d% of its voxels"):
        load_nifti_image(ip, modality="CT", ct_window=(10, 100))  # MR declared CT: most voxels clipped away
    with pytest.raises(BfasegError, match="modality"):
        load_nifti_image(ip, modality="PET")


def test_geometry_mismatch(tmp_path):
    hu, label = _phantom()
    ip = _save(hu, tmp_path / "img.nii.gz")
    case = load_nifti_image(ip, target_spacing=1.0)
    shifted = AFFINE.copy()
    shifted[0, 3] += 1.0
    lp = _save(label, tmp_path / "shifted.nii.gz", affine=shifted)
    with pytest.raises(BfasegError, match=r"label .*shifted\.nii\.gz and image .*img\.nii\.gz differ in affine"):
        load_nifti_label(lp, case)
    lp = _save(label[:, :, :-1], tmp_path / "short.nii.gz")
    with pytest.raises(BfasegError, match=r"short\.nii\.gz and image .*img\.nii\.gz differ in shape"):
        load_nifti_label(lp, case)
    with pytest.raises(BfasegError, match="not found"):
        load_nifti_image(tmp_path / "missing.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"junk")
    with pytest.raises(BfasegError, match=r"cannot read NIfTI file .*junk\.nii\.gz"):
        load_nifti_image(tmp_path / "junk.nii.gz")


def _small(seed):
    hu, label = _phantom(seed, shape=(12, 10, 4))
    label[:] = 0
    label[4:8, 3:7, 1:3] = 1
    return hu, label


def test_dataset_nnunet_layout_with_unlabeled_pool(tmp_path):
    root = tmp_path / "Dataset001"
    for name in ("a", "b", "c"):
        hu, lab = _small(ord(name))
        _save(hu, root / "imagesTr" / f"{name}_0000.nii.gz")
        if name != "c":
            _save(lab, root / "labelsTr" / f"{name}.nii.gz")
    _save(_small(9)[0], root / "imagesUnlabeled" / "u_0000.nii.gz")
    _save(_small(10)[0], root / "imagesTs" / "t_0000.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz"})
    )
    labeled, unlabeled = load_nifti_dataset(root, target_spacing=(1.0, 1.0, 2.5))
    assert [c.case_id for c in labeled] == ["a", "b"]
    assert [c.case_id for c in unlabeled] == ["c", "u"]
    assert all(c.label is not None and c.label.shape == c.image.shape for c in labeled)
    assert all(c.label is None for c in unlabeled)
    assert all(c.meta["modality"] == "CT" for c in labeled + unlabeled)
    assert labeled[0].spacing == (1.0, 1.0, 2.5)
    test = load_nifti_test(root)
    assert [c.case_id for c in test] == ["t"]

    # label values must be declared in dataset.json
    bad = _small(1)[1] * 3
    _save(bad, root / "labelsTr" / "b.nii.gz")
    with pytest.raises(BfasegError, match=r"labelsTr/b\.nii\.gz has values \[3\] not declared in .*dataset\.json"):
        load_nifti_dataset(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(BfasegError, match=r"dataset\.json: invalid JSON"):
        load_nifti_dataset(root)
    # a second channel is refused rather than silently ignored
    (root / "dataset.json").unlink()
    _save(_small(1)[0], root / "imagesTr" / "a_0001.nii.gz")
    with pytest.raises(BfasegError, match="only single-channel"):
        load_nifti_dataset(root)


def test_dataset_msd_layout(tmp_path):
    root = tmp_path / "Task02_Heart"
    rng = np.random.default_rng(0)
    for name in ("la_003", "la_004"):
        _, lab = _small(1)
        _save(rng.uniform(0, 300, lab.shape).astype(np.float32), root / "imagesTr" / f"{name}.nii.gz")
        _save(lab, root / "labelsTr" / f"{name}.nii.gz")
    (root / "imagesTr" / "._la_003.nii.gz").write_bytes(b"macOS resource fork")  # shipped in MSD tars
    _save(rng.uniform(0, 300, (12, 10, 4)).astype(np.float32), root / "imagesTr" / "la_0005.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps({"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "left atrium"}})
    )
    labeled, unlabeled = load_nifti_dataset(root)
    assert [c.case_id for c in labeled] == ["la_003", "la_004"]
    assert [c.case_id for c in unlabeled] == ["la_0005"]
    assert all(c.meta["modality"] == "MR" for c in labeled)
    assert abs(float(labeled[0].image.mean())) < 1e-4
    with pytest.raises(BfasegError, match="dataset folder not found"):
        load_nifti_dataset(tmp_path / "nope")
