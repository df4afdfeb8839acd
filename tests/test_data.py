import h5py
import numpy as np
import pytest

from bfaseg.config import DataConfig
from bfaseg.data.batches import TwoStreamBatches, shard
from bfaseg.data.build import build_data
from bfaseg.data.cases import Case
from bfaseg.data.readers import load_cases, read_list
from bfaseg.data.synthetic import make_phantom, make_synthetic_cases
from bfaseg.data.transforms import augment, random_crop, random_rot90_flip, random_rotate
from bfaseg.errors import BfasegError


def write_h5(path, image, label=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["image"] = image
        if label is not None:
            f["label"] = label


def make_la(root, ids, shape=(40, 36, 24)):
    rng = np.random.default_rng(0)
    for i in ids:
        lab = np.zeros(shape, np.uint8)
        lab[10:25, 8:20, 5:15] = 1
        write_h5(root / "2018LA_Seg_Training Set" / i / "mri_norm2.h5", rng.normal(size=shape).astype(np.float32), lab)
    (root / "train.list").write_text("\n".join(ids) + "\n")


def make_acdc(root, patients=3, slices=4, vol_shape=(4, 30, 26)):
    rng = np.random.default_rng(0)
    names, vols = [], []
    for p in range(patients):
        case = f"patient{p:03d}_frame01"
        vols.append(case)
        lab = rng.integers(0, 4, size=vol_shape).astype(np.uint8)
        img = rng.random(vol_shape).astype(np.float32)
        write_h5(root / "data" / f"{case}.h5", img, lab)
        for k in range(1, slices + 1):
            names.append(f"{case}_slice_{k}")
            write_h5(root / "data" / "slices" / f"{case}_slice_{k}.h5", img[k - 1], lab[k - 1])
    (root / "train_slices.list").write_text("\n".join(names) + "\n")
    (root / "val.list").write_text("\n".join(vols[-1:]) + "\n")
    return names, vols


def make_pancreas(root, ids, shape=(30, 30, 20)):
    rng = np.random.default_rng(0)
    for i in ids:
        lab = np.zeros(shape, np.uint8)
        lab[5:15, 5:15, 5:10] = 1
        write_h5(root / "Pancreas_h5" / f"{i}_norm.h5", rng.random(shape).astype(np.float32), lab)
    (root / "train.list").write_text("\n".join(ids) + "\n")


def test_la_reader_and_split(tmp_path):
    ids = [f"CASE{i}" for i in range(6)]
    make_la(tmp_path, ids)
    cfg = DataConfig(dataset="la", root=str(tmp_path), patch_size=[32, 32, 16], labeled=2, val_cases=1)
    bundle = build_data(cfg, num_classes=2, progress=False)
    assert [c.case_id for c in bundle.labeled] == ids[:2]  # the first N of the list are labeled
    assert [c.case_id for c in bundle.unlabeled] == ids[2:5]
    assert [c.case_id for c in bundle.val] == ids[5:]
    assert all(c.label is None for c in bundle.unlabeled)
    assert bundle.labeled[0].image.dtype == np.float32 and bundle.labeled[0].label.dtype == np.uint8
    assert bundle.train_ndim == 3


def test_la_downsample(tmp_path):
    make_la(tmp_path, ["A", "B", "C"])
    cfg = DataConfig(dataset="la", root=str(tmp_path), patch_size=[16, 16, 8], labeled=1, val_cases=1, downsample=2)
    bundle = build_data(cfg, num_classes=2, progress=False)
    assert bundle.labeled[0].image.shape == (20, 18, 12)
    assert set(np.unique(bundle.labeled[0].label)) <= {0, 1}


def test_pancreas_reader(tmp_path):
    make_pancreas(tmp_path, ["p1", "p2", "p3"])
    (tmp_path / "Pancreas_h5" / "p3_norm.h5").rename(tmp_path / "Pancreas_h5" / "p3.h5")  # both namings
    cases = load_cases("pancreas", tmp_path, ["p1", "p3"])
    assert [c.image.shape for c in cases] == [(30, 30, 20)] * 2


def test_acdc_slices_and_volumes(tmp_path):
    names, vols = make_acdc(tmp_path)
    cfg = DataConfig(dataset="acdc", root=str(tmp_path), patch_size=[32, 32], labeled=4)
    bundle = build_data(cfg, num_classes=4, progress=False)
    assert len(bundle.labeled) == 4 and len(bundle.unlabeled) == len(names) - 4
    assert bundle.labeled[0].image.shape == (32, 32)  # resized once to the network input
    assert bundle.val[0].image.shape == (4, 30, 26)  # volumes keep their size for evaluation
    assert bundle.train_ndim == 2


def test_split_file(tmp_path):
    names, _ = make_acdc(tmp_path)
    split = tmp_path / "split.yaml"
    split.write_text(f"labeled: [{names[3]}, {names[5]}]\nunlabeled: [{names[0]}]\n")
    cfg = DataConfig(dataset="acdc", root=str(tmp_path), patch_size=[32, 32], split_file=str(split))
    bundle = build_data(cfg, num_classes=4, progress=False)
    assert [c.case_id for c in bundle.labeled] == [names[3], names[5]]
    assert [c.case_id for c in bundle.unlabeled] == [names[0]]


def test_read_list_errors(tmp_path):
    with pytest.raises(BfasegError, match="not found"):
        read_list(tmp_path / "nope.list")
    (tmp_path / "e.list").write_text("\n\n")
    with pytest.raises(BfasegError, match="empty"):
        read_list(tmp_path / "e.list")


@pytest.mark.parametrize("ndim", [2, 3])
def test_synthetic_phantoms(ndim):
    shape = (32,) * ndim
    image, label = make_phantom(shape, 4, np.random.default_rng(0))
    assert image.shape == label.shape == shape
    assert set(np.unique(label)) >= {0, 1, 2}
    assert np.isfinite(image).all()
    # classes are distinguishable by intensity on average
    assert image[label == 2].mean() > image[label == 0].mean()


def _marker_volume(shape):
    """An image whose voxels encode their own coordinates, and a label = image thresholded."""
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    label = (image.astype(np.int64) % 3).astype(np.uint8)
    return image, label


@pytest.mark.parametrize("shape,patch", [((20, 18, 10), (12, 12, 8)), ((10, 8, 6), (12, 12, 8)),
                                         ((20, 18, 10), (16, 8, 8))])  # x-y not square: no quarter turns
def test_3d_augment_keeps_alignment(shape, patch):
    image, label = _marker_volume(shape)
    rng = np.random.default_rng(3)
    for _ in range(10):
        img, lab = augment([image, label], patch, rng)
        assert img.shape == lab.shape == patch
        inside = img > 0  # zero = padding
        assert np.array_equal((img[inside].astype(np.int64) % 3).astype(np.uint8), lab[inside])


def test_2d_rotation_keeps_alignment():
    image = np.zeros((40, 40), np.float32)
    image[10:30, 15:25] = 1.0
    label = (image > 0.5).astype(np.uint8)
    rng = np.random.default_rng(0)
    for _ in range(5):
        img, lab = random_rotate([image, label], rng)
        assert ((img > 0.5) == (lab > 0)).mean() > 0.97
        img, lab = random_rot90_flip([image, label], rng)
        assert np.array_equal(img > 0.5, lab > 0)


def test_crop_pads_small_volumes():
    img = np.ones((5, 6), np.float32)
    out = random_crop([img], (8, 8), np.random.default_rng(0))[0]
    assert out.shape == (8, 8) and out.sum() == 30


def test_two_stream_batches_are_deterministic_and_sharded():
    cases = make_synthetic_cases(6, (24, 24), 3)
    unl = [Case(c.case_id, c.image, None) for c in make_synthetic_cases(6, (24, 24), 3, seed=5)]
    kw = dict(batch_labeled=2, batch_unlabeled=3, patch_size=(16, 16), seed=7, total_iterations=10)
    a, b = TwoStreamBatches(cases, unl, **kw), TwoStreamBatches(cases, unl, **kw)
    x, y = a[4], b[4]
    assert x["image_l"].shape == (2, 1, 16, 16) and x["image_u"].shape == (3, 1, 16, 16)
    assert x["label_l"].dtype.is_floating_point is False
    assert all((x[k] == y[k]).all() for k in x)
    assert not (a[4]["image_l"] == a[5]["image_l"]).all()
    r0, r1 = shard(cases, 0, 2), shard(cases, 1, 2)
    assert {c.case_id for c in r0}.isdisjoint({c.case_id for c in r1})


def test_real_data_files(real_data):
    """Read every real LA and ACDC file once; check shapes, dtypes and label values."""
    la = real_data / "la"
    ids = read_list(la / "train.list")
    cases = load_cases("la", la, ids, num_classes=2)
    for c in cases:
        assert c.image.ndim == 3 and c.image.shape[2] == 88 and c.image.dtype == np.float32
        assert set(np.unique(c.label)) <= {0, 1}
    acdc = real_data / "acdc"
    names = read_list(acdc / "train_slices.list")
    assert len(names) == 1312
    slices = load_cases("acdc", acdc, names, num_classes=4)
    assert all(s.image.ndim == 2 and s.label.max() <= 3 for s in slices)
    vols = load_cases("acdc", acdc, read_list(acdc / "val.list"), kind="eval", num_classes=4)
    assert len(vols) == 20 and all(v.image.ndim == 3 and v.label.max() <= 3 for v in vols)
