"""bfaseg.metrics: medpy equality, empty-mask policies, aggregation."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from bfaseg.metrics import (
    METRICS,
    aggregate,
    binary_metrics,
    compute,
    compute_case,
    compute_overlap,
    image_diagonal,
    mask_surface,
    surface_distances,
)

TOL = 1e-6


def _medpy(pred, gt, spacing=None):
    mb = pytest.importorskip("medpy.metric.binary")
    return {
        "dice": mb.dc(pred, gt),
        "jaccard": mb.jc(pred, gt),
        "hd95": mb.hd95(pred, gt, voxelspacing=spacing),
        "asd": mb.asd(pred, gt, voxelspacing=spacing),
        "assd": mb.assd(pred, gt, voxelspacing=spacing),
        "hd": mb.hd(pred, gt, voxelspacing=spacing),
    }


def _assert_same(ours: dict, ref: dict, keys=METRICS):
    for k in keys:
        assert ours[k] == pytest.approx(ref[k], abs=TOL), k


def _check_all_methods(pred, gt, spacing=None):
    ref = _medpy(pred, gt, spacing)
    _assert_same(compute(pred, gt, spacing=spacing), ref)
    _assert_same(binary_metrics(pred, gt, spacing, method="edt"), ref)
    # a tiny search ball sends most voxels to the k-d tree fallback
    from bfaseg.metrics.surface import distance_metrics

    _assert_same(distance_metrics(*surface_distances(pred, gt, spacing, radius=1)), ref, ("hd95", "asd", "assd", "hd"))


def _blobs(rng, shape, sigma=2.0, fill=0.3):
    field = ndi.gaussian_filter(rng.random(shape), sigma)
    return field > np.quantile(field, 1 - fill)


# ---------------------------------------------------------------- medpy equality


@pytest.mark.parametrize("seed", range(4))
def test_random_blobs_3d(seed):
    rng = np.random.default_rng(seed)
    gt = _blobs(rng, (30, 26, 20))
    pred = np.roll(ndi.binary_dilation(gt, iterations=int(rng.integers(0, 3))) if seed % 2 else gt, 2, axis=seed % 3)
    pred ^= rng.random(gt.shape) < 0.01  # salt-and-pepper outliers
    _check_all_methods(pred.astype(np.uint8), gt.astype(np.uint8))


@pytest.mark.parametrize("seed", range(3))
def test_random_blobs_2d(seed):
    rng = np.random.default_rng(10 + seed)
    gt = _blobs(rng, (64, 48), sigma=3)
    pred = _blobs(rng, (64, 48), sigma=3)
    _check_all_methods(pred, gt)
    _check_all_methods(pred, gt, spacing=(0.7, 1.9))


@pytest.mark.parametrize("spacing", [(0.625, 0.625, 0.625), (0.5, 1.0, 2.5), (10.0, 1.5, 1.5), (1.0, 1.0, 0.1)])
def test_anisotropic_spacing(spacing):
    rng = np.random.default_rng(3)
    gt = _blobs(rng, (24, 28, 22))
    pred = np.roll(gt, (1, -2, 1), axis=(0, 1, 2)) | (rng.random(gt.shape) < 0.005)
    _check_all_methods(pred, gt, spacing=spacing)


def test_scalar_spacing_equals_per_axis():
    rng = np.random.default_rng(4)
    gt = _blobs(rng, (20, 20, 20))
    pred = np.roll(gt, 2, axis=1)
    assert compute(pred, gt, spacing=0.5) == compute(pred, gt, spacing=(0.5, 0.5, 0.5))


def test_thin_structures():
    gt = np.zeros((20, 20, 20), bool)
    gt[10, 2:18, 5] = True  # a 1-voxel line
    gt[2:18, 2:18, 15] = True  # a 1-voxel plane
    pred = np.zeros_like(gt)
    pred[11, 3:17, 6] = True
    pred[2:18, 2:18, 13] = True
    _check_all_methods(pred, gt)
    _check_all_methods(pred, gt, spacing=(1.0, 0.8, 3.0))


def test_touching_structures():
    gt = np.zeros((24, 24, 12), np.uint8)
    gt[2:10, 2:10, 2:8] = 1
    gt[10:18, 2:10, 2:8] = 1  # touches the first along a face
    pred = np.zeros_like(gt)
    pred[3:11, 3:11, 2:8] = 1
    pred[11:20, 3:11, 3:9] = 1
    pred[11, 11, 9] = 1  # touches diagonally only
    _check_all_methods(pred, gt)


def test_masks_touching_volume_edge():
    gt = np.zeros((16, 18, 14), bool)
    gt[:6, :, :] = True  # a slab filling three faces of the volume
    pred = np.zeros_like(gt)
    pred[:5, 2:, :] = True
    pred[-1, -1, -1] = True  # corner voxel
    _check_all_methods(pred, gt)
    _check_all_methods(pred, gt, spacing=(2.0, 1.0, 0.5))
    full = np.ones((8, 9, 7), bool)  # whole volume: its surface is the volume border
    _check_all_methods(full, gt[:8, :9, :7])


def test_single_voxels_and_far_apart():
    gt = np.zeros((40, 30, 20), bool)
    pred = np.zeros_like(gt)
    gt[5, 5, 5] = True
    pred[5, 5, 5] = True
    _check_all_methods(pred, gt)
    pred[:] = False
    pred[35, 25, 15] = True  # far beyond the search ball: k-d tree path
    _check_all_methods(pred, gt)
    _check_all_methods(pred, gt, spacing=(0.3, 0.7, 1.1))


def test_surface_matches_medpy_definition():
    rng = np.random.default_rng(5)
    mask = _blobs(rng, (15, 16, 17), fill=0.5)
    mask[0] = True
    cross = ndi.generate_binary_structure(3, 1)
    expected = mask ^ ndi.binary_erosion(mask, structure=cross, iterations=1)
    np.testing.assert_array_equal(mask_surface(mask), expected)


# ---------------------------------------------------------------- multi-class


def test_multiclass_keys_and_classes():
    gt = np.zeros((12, 12, 6), np.uint8)
    gt[2:6, 2:6, 1:4] = 1
    gt[6:10, 6:10, 1:4] = 3
    pred = np.roll(gt, 1, axis=0)
    out = compute(pred, gt)
    assert set(out) == set(METRICS)
    assert sorted(out["dice"]) == [1, 2, 3]
    assert all(isinstance(c, int) for c in out["dice"])
    assert math.isnan(out["dice"][2]) and math.isnan(out["hd95"][2])  # class absent in both: NaN (nnU-Net)
    old = compute(pred, gt, empty_class="one")
    assert old["dice"][2] == 1.0 and old["hd95"][2] == 0.0  # the old behaviour, by name only
    for c in (1, 3):
        _assert_same({k: out[k][c] for k in METRICS}, _medpy(pred == c, gt == c))
    assert sorted(compute(pred, gt, classes=[3])["dice"]) == [3]
    binary_as_classes = compute(pred == 1, gt == 1, classes=1)
    assert binary_as_classes["dice"] == {1: out["dice"][1]}


def test_binary_inputs_give_floats():
    gt = np.zeros((10, 10), np.int32)
    gt[2:6, 2:6] = 1
    for pred in (gt.copy(), gt.astype(bool), gt.astype(np.float32)):
        out = compute(pred, gt)
        assert set(out) == set(METRICS)
        assert all(isinstance(v, float) for v in out.values())
        assert out["dice"] == 1.0 and out["hd"] == 0.0


def test_invalid_inputs():
    a = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        compute(a, np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="policy"):
        compute(a, a, policy="lenient")
    with pytest.raises(ValueError, match="spacing"):
        compute(a, a, spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="non-integer"):
        compute(a + 0.5, a)
    with pytest.raises(ValueError, match="negative"):
        compute(a.astype(np.int8) - 1, a)


# ---------------------------------------------------------------- empty-mask policies


def _masks():
    some = np.zeros((10, 12, 8), bool)
    some[3:6, 3:7, 2:5] = True
    return some, np.zeros_like(some)


def test_strict_policy():
    some, empty = _masks()
    both = compute_case(empty, empty)
    assert both["status"] == "both_empty"
    assert all(math.isnan(both[k]) for k in METRICS)  # nnU-Net: NaN, left out of means
    old = compute_case(empty, empty, empty_class="one")
    assert [old[k] for k in METRICS] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    for pred, gt, status in ((empty, some, "pred_empty"), (some, empty, "gt_empty")):
        r = compute_case(pred, gt)
        assert r["status"] == status
        assert r["dice"] == 0.0 and r["jaccard"] == 0.0
        assert all(math.isnan(r[k]) for k in ("hd95", "asd", "assd", "hd"))  # never a perfect 0


def test_worst_policy_uses_image_diagonal():
    some, empty = _masks()
    spacing = (0.5, 1.0, 2.0)
    r = compute_case(empty, some, spacing=spacing, policy="worst")
    diag = math.sqrt((10 * 0.5) ** 2 + 12**2 + (8 * 2.0) ** 2)
    assert image_diagonal(some.shape, spacing) == pytest.approx(diag)
    assert r["status"] == "pred_empty" and r["dice"] == 0.0
    assert all(r[k] == pytest.approx(diag) for k in ("hd95", "asd", "assd", "hd"))
    assert compute(empty, empty, policy="worst", empty_class="one")["hd"] == 0.0


def test_paper_policy_reproduces_reference_code():
    some, empty = _masks()
    r = compute_case(empty, some, policy="paper")
    assert [r[k] for k in METRICS] == [0.0] * 6 and r["status"] == "pred_empty"
    r = compute_case(some, empty, policy="paper")  # the reference code crashes here
    assert r["dice"] == 0.0 and math.isnan(r["hd95"]) and r["status"] == "gt_empty"
    ok = compute(some, np.roll(some, 1, axis=0), policy="paper")
    assert ok == compute(some, np.roll(some, 1, axis=0))


def test_aggregate_binary_counts_failures():
    some, empty = _masks()
    shifted = np.roll(some, 1, axis=1)
    results = [compute_case(shifted, some), compute_case(empty, some), compute_case(empty, empty)]
    agg = aggregate(results)
    assert agg["n_cases"] == 3 and agg["n_failed"] == 1 and agg["n_both_empty"] == 1
    assert agg["hd95"]["n"] == 1  # the NaN of the failed and of the both-empty case are left out
    assert agg["hd95"]["mean"] == pytest.approx(results[0]["hd95"])
    assert agg["dice"]["mean"] == pytest.approx((results[0]["dice"] + 0) / 2)
    old = aggregate([compute_case(shifted, some), compute_case(empty, empty, empty_class="one")])
    assert old["n_both_empty"] == 1 and old["dice"]["mean"] == pytest.approx((results[0]["dice"] + 1) / 2)
    # plain compute() results: failures inferred from NaN
    assert aggregate([compute(empty, some), compute(some, some)])["n_failed"] == 1
    # paper policy: the failure is still counted although its numbers look perfect
    paper = aggregate([compute_case(empty, some, policy="paper"), compute_case(some, some, policy="paper")])
    assert paper["n_failed"] == 1 and paper["hd95"]["mean"] == 0.0


def _two_classes():
    """A two-class label map, the same shifted by a voxel, and the same with class 2 missed (a failure)."""
    gt = np.zeros((12, 12, 6), np.uint8)
    gt[2:6, 2:6, 1:4] = 1
    gt[6:10, 6:10, 1:4] = 2
    return gt, np.roll(gt, 1, axis=0), np.where(gt == 2, 0, gt)


def test_aggregate_per_class():
    gt, pred_a, pred_b = _two_classes()
    agg = aggregate([compute_case(pred_a, gt), compute_case(pred_b, gt)])
    assert agg["n_failed"] == 1 and agg["n_failed_per_class"] == {1: 0, 2: 1}
    d = agg["dice"]
    assert set(d["per_class"]) == {1, 2}
    assert d["mean"] == pytest.approx((d["per_class"][1]["mean"] + d["per_class"][2]["mean"]) / 2)
    assert agg["hd95"]["per_class"][2]["n"] == 1
    with pytest.raises(ValueError):
        aggregate([compute_case(pred_a, gt), compute_case(pred_a == 1, gt == 1)])


# ---------------------------------------------------------------- real data


def _data_root() -> Path:
    root = os.environ.get("BFASEG_DATA")
    if not root:
        pytest.skip("BFASEG_DATA is not set (folder holding la/ and acdc/)")
    return Path(root)


@pytest.mark.realdata
def test_real_la_volume_matches_medpy():
    h5py = pytest.importorskip("h5py")
    la = _data_root() / "la"
    if not (la / "train.list").exists():
        pytest.skip(f"no LA data under {la}")
    case = (la / "train.list").read_text().split()[0]
    with h5py.File(la / "2018LA_Seg_Training Set" / case / "mri_norm2.h5", "r") as f:
        gt = f["label"][()]
    pred = np.roll(ndi.binary_erosion(gt, iterations=1), (2, -1, 1), axis=(0, 1, 2)).astype(np.uint8)
    pred[5:9, 5:9, 5:9] = 1  # a false-positive blob far from the atrium
    mb = pytest.importorskip("medpy.metric.binary")
    ours = compute(pred, gt)
    ref = {"dice": mb.dc(pred, gt), "jaccard": mb.jc(pred, gt), "hd95": mb.hd95(pred, gt), "asd": mb.asd(pred, gt)}
    _assert_same(ours, ref, ref.keys())
    spacing = (0.625, 0.625, 0.625)
    ours_mm = compute(pred, gt, spacing=spacing)
    assert ours_mm["hd95"] == pytest.approx(mb.hd95(pred, gt, voxelspacing=spacing), abs=TOL)
    assert ours_mm["hd95"] == pytest.approx(0.625 * ours["hd95"], abs=TOL)


@pytest.mark.realdata
def test_real_acdc_multiclass_matches_medpy():
    h5py = pytest.importorskip("h5py")
    acdc = _data_root() / "acdc"
    if not (acdc / "val.list").exists():
        pytest.skip(f"no ACDC data under {acdc}")
    case = (acdc / "val.list").read_text().split()[0]
    with h5py.File(acdc / "data" / f"{case}.h5", "r") as f:
        gt = f["label"][()]
    pred = np.roll(gt, 2, axis=2)
    pred[ndi.binary_erosion(gt == 2)] = 3  # class confusion inside the myocardium
    spacing = (10.0, 1.5, 1.5)  # (Z, Y, X), anisotropic as ACDC
    for sp in (None, spacing):
        out = compute(pred, gt, spacing=sp)
        assert sorted(out["dice"]) == [1, 2, 3]
        for c in (1, 2, 3):
            _assert_same({k: out[k][c] for k in METRICS}, _medpy(pred == c, gt == c, sp))


# ---------------------------------------------------------------- bookkeeping, messages, aggregation
# (what the mutation pass found untested once metrics/core.py joined it, issue 32)


def test_compute_case_bookkeeping_and_size_checks():
    gt = np.zeros((6, 6), np.uint8)
    gt[1:4, 1:4] = 1
    r = compute_case(gt, gt)
    assert (r["units"], r["spacing"], r["policy"], r["empty_class"]) == ("voxel", None, "strict", "nan")
    r = compute_case(gt, gt, spacing=(0.5, 2), policy="worst", empty_class="one")
    assert (r["units"], r["spacing"], r["policy"], r["empty_class"]) == ("mm", [0.5, 2.0], "worst", "one")
    for fn in (compute_case, compute_overlap):
        with pytest.raises(ValueError, match=r"^empty arrays \(size 0\)$"):
            fn(np.zeros((0, 3), np.uint8), np.zeros((0, 3), np.uint8))
        assert fn(np.ones((1, 1), np.uint8), np.ones((1, 1), np.uint8))["dice"] == 1.0  # one voxel is not empty


def test_input_messages_name_the_choices_and_the_array():
    a = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match=r"^unknown empty-mask policy 'lenient'; choose from strict, worst, paper$"):
        compute(a, a, policy="lenient")
    with pytest.raises(ValueError, match=r"^unknown empty-class policy 'zero'; choose from nan, one$"):
        compute(a, a, empty_class="zero")
    with pytest.raises(ValueError, match=r"^classes must be >= 1, got 0$"):
        compute(a, a, classes=0)
    with pytest.raises(ValueError, match=r"^classes is empty$"):
        compute(a, a, classes=[])
    with pytest.raises(ValueError, match=r"^pred must hold integer labels, got dtype complex128$"):
        compute(a.astype(complex), a)
    with pytest.raises(ValueError, match=r"^gt must hold integer labels, got dtype <U\d+$"):
        compute(a, a.astype(str))


def test_a_bool_mask_against_a_label_map_is_scored_per_class():
    labels = np.zeros((8, 8), np.uint8)
    labels[1:3, 1:3] = 1
    labels[5:7, 5:7] = 2
    for pred, gt in ((labels == 1, labels), (labels, labels == 1)):
        for fn in (compute, compute_overlap):
            dice = fn(pred, gt)["dice"]
            assert dice == {1: 1.0, 2: 0.0}


def test_paper_policy_scores_a_class_empty_in_both_as_the_reference_code_under_one():
    _, empty = _masks()
    r = compute_case(empty, empty, policy="paper", empty_class="one")
    assert [r[k] for k in METRICS] == [0.0] * 6 and r["status"] == "both_empty"
    assert compute_overlap(empty, empty, policy="paper", empty_class="one")["dice"] == 0.0
    assert compute_overlap(empty, empty, empty_class="one")["dice"] == 1.0


def test_one_dimensional_masks_take_a_scalar_spacing():
    a = np.zeros(10, bool)
    a[2:5] = True
    b = np.zeros(10, bool)
    b[4:8] = True
    vox, mm = binary_metrics(a, b), binary_metrics(a, b, spacing=2.0)
    assert all(mm[k] == pytest.approx(2 * vox[k]) and vox[k] > 0 for k in ("hd95", "asd", "assd", "hd"))


def test_binary_metrics_passes_the_surface_method_on(monkeypatch):
    import bfaseg.metrics.core as core

    seen, real = [], core.surface_distances
    monkeypatch.setattr(core, "surface_distances", lambda *a, **kw: seen.append(kw.get("method")) or real(*a, **kw))
    some, _ = _masks()
    binary_metrics(some, np.roll(some, 1, axis=0), method="edt")
    assert seen == ["edt"]


def test_aggregate_plain_per_class_results_counts_and_std():
    gt, shifted, missed = _two_classes()
    # plain compute() results (no status: inferred from NaN); class 3 is in neither map: NaN
    results = [compute(shifted, gt, classes=3), compute(missed, gt, classes=3), compute(missed, gt, classes=3)]
    agg = aggregate(results)
    assert agg["n_failed"] == 2 and agg["n_failed_per_class"] == {1: 0, 2: 2, 3: 0}
    assert agg["n_both_empty"] == 3 and agg["n_both_empty_per_class"] == {1: 0, 2: 0, 3: 3}
    case_means = [np.mean([r["dice"][1], r["dice"][2]]) for r in results]
    assert agg["dice"]["std"] == pytest.approx(np.std(case_means)) and agg["dice"]["std"] > 0
    assert agg["dice"]["per_class"][3]["n"] == 0 and math.isnan(agg["dice"]["per_class"][3]["mean"])
    assert agg["hd95"]["per_class"][2]["n"] == 1
    with pytest.raises(ValueError, match=r"^no results to aggregate$"):
        aggregate([])
    with pytest.raises(ValueError, match=r"^cannot aggregate binary and per-class results together$"):
        aggregate([results[0], compute(gt == 1, gt == 1)])
    binary = aggregate([compute_case(gt == 3, gt == 3)])  # nothing defined at all
    assert binary["dice"]["n"] == 0 and binary["n_both_empty"] == 1
