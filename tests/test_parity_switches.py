"""The switches that reproduce a reference's choice where bfaseg differs on purpose (docs/METHOD.md,
"Differences from the reference code"): the epoch sampler, the references' rotation and branch split,
the nearest slice resize, BCP's one paste box per batch and one student forward per direction.
Each is off by default and leaves the default's draws unchanged."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from bfaseg.config import DataConfig, validate_config
from bfaseg.data.batches import TwoStreamBatches
from bfaseg.data.build import build_data
from bfaseg.data.cases import Case
from bfaseg.data.readers import load_cases
from bfaseg.data.transforms import augment, random_rotate
from bfaseg.errors import BfasegError
from bfaseg.inference.predictor import predict_array
from bfaseg.methods.base import cuboid_mask
from bfaseg.training.trainer import Trainer

from conftest import tiny_config
from test_data import make_acdc


def _numbered_cases(n, size=8, labeled=True):
    """Cases told apart by their constant image value (1 .. n): a batch says which cases it drew."""
    return [Case(f"c{i}", np.full((size, size), float(i + 1), np.float32),
                 np.zeros((size, size), np.uint8) if labeled else None) for i in range(n)]


def _drawn(x):
    return [int(v) - 1 for v in x[:, 0].amax(dim=(1, 2))]


def _batches(sampler, n_lab=12, n_unl=10, bl=4, bu=3, **kw):
    return TwoStreamBatches(_numbered_cases(n_lab), _numbered_cases(n_unl, labeled=False), batch_labeled=bl,
                            batch_unlabeled=bu, patch_size=(8, 8), seed=5, total_iterations=40, sampler=sampler,
                            rotation="rot90_flip", **kw)


def test_epoch_sampler_draws_every_labeled_case_once_per_cycle_and_no_unlabeled_twice():
    b = _batches("epoch")
    for cycle in range(3):  # 12 labeled / 4 per step = 3 steps per cycle
        steps = [b[cycle * 3 + j] for j in range(3)]
        labeled = sum((_drawn(s["image_l"]) for s in steps), [])
        unlabeled = sum((_drawn(s["image_u"]) for s in steps), [])
        assert sorted(labeled) == list(range(12))
        assert len(set(unlabeled)) == 9  # 3 steps x 3 from a fresh permutation of 10
    first = [_drawn(b[j]["image_l"]) for j in range(3)]
    second = [_drawn(b[3 + j]["image_l"]) for j in range(3)]
    assert first != second  # a new permutation each cycle
    again = _batches("epoch")
    assert _drawn(again[7]["image_l"]) == _drawn(b[7]["image_l"])  # still a pure function of the iteration


def test_epoch_sampler_wraps_when_a_stream_is_smaller_than_a_cycle_needs():
    b = _batches("epoch", n_lab=12, n_unl=4, bl=4, bu=3)  # 3 steps x 3 unlabeled > 4
    unlabeled = sum((_drawn(b[j]["image_u"]) for j in range(3)), [])
    assert len(unlabeled) == 9 and set(unlabeled) == set(range(4))


def test_random_sampler_keeps_its_draws():
    """The default draws independent indices first from the iteration's generator, as before the switch."""
    b = _batches("random")
    rng = np.random.default_rng([5, 6, 0])
    assert _drawn(b[6]["image_l"]) == list(rng.integers(0, 12, size=4))


def test_unknown_sampler_is_refused():
    with pytest.raises(ValueError, match="sampler"):
        _batches("shuffled")


def test_reference_rotation_is_an_integer_angle_with_a_nearest_image():
    image = np.random.default_rng(0).random((24, 24)).astype(np.float32)
    label = (image > 0.5).astype(np.uint8)
    for seed in range(5):
        img, lab = random_rotate([image, label], np.random.default_rng(seed), style="reference")
        angle = int(np.random.default_rng(seed).integers(-20, 20))  # the reference's np.random.randint(-20, 20)
        assert np.array_equal(img, ndimage.rotate(image, angle, axes=(1, 0), reshape=False, order=0))
        assert np.array_equal(lab, ndimage.rotate(label, angle, axes=(1, 0), reshape=False, order=0))
    img, _ = random_rotate([image, label], np.random.default_rng(1), style="bfaseg")
    assert len(set(np.unique(img)) - set(np.unique(image)) - {0.0}) > 10  # linear: new values


def test_both_or_none_leaves_a_quarter_unaugmented():
    image = np.arange(64, dtype=np.float32).reshape(8, 8) + 1
    label = np.zeros((8, 8), np.uint8)
    rng = np.random.default_rng(0)
    same = sum(np.array_equal(augment([image, label], (8, 8), rng, "both_or_none")[0], image) for _ in range(800))
    assert 160 < same < 240  # 25 %; "both" never leaves an image as it was
    rng = np.random.default_rng(0)
    assert not any(np.array_equal(augment([image, label], (8, 8), rng, "both")[0], image) for _ in range(200))


def test_nearest_slice_resize_in_training_and_at_inference(tmp_path):
    make_acdc(tmp_path, patients=2, slices=2, vol_shape=(2, 30, 26))
    linear = build_data(DataConfig(dataset="acdc", root=str(tmp_path), patch_size=[32, 32], labeled=2), 4, False)
    nearest = build_data(DataConfig(dataset="acdc", root=str(tmp_path), patch_size=[32, 32], labeled=2,
                                    slice_resize="nearest"), 4, False)
    stored = load_cases("acdc", tmp_path, [linear.labeled[0].case_id])[0].image
    assert nearest.labeled[0].image.shape == linear.labeled[0].image.shape == (32, 32)
    assert set(np.unique(nearest.labeled[0].image)) <= set(np.unique(stored))  # nearest: stored values only
    assert len(set(np.unique(linear.labeled[0].image)) - set(np.unique(stored))) > 100
    raw = tiny_config("supervised", iterations=1, precision="fp32")
    raw["data"].update(slice_resize="nearest")
    with pytest.raises(BfasegError, match=r"^data\.slice_resize: only ACDC"):
        build_data(validate_config(raw).data, 3, False)
    cfg = validate_config({**raw, "data": {**raw["data"], "slice_resize": "linear"}})
    model = torch.nn.Conv2d(1, 3, 1)
    seen = {}
    for mode in ("linear", "nearest"):
        cfg.data.slice_resize = mode
        _, _, settings = predict_array(model, cfg, np.random.default_rng(0).random((2, 20, 20)).astype(np.float32),
                                       ndim=2)
        seen[mode] = settings["image_resize"]
    assert seen == {"linear": "zoom_linear", "nearest": "zoom_nearest"}


def test_nearest_resize_after_augment_keeps_native_slices_and_resizes_every_draw(tmp_path):
    """The references' RandomGenerator: augment the native slice, then zoom it (order 0) to the patch, so a quarter
    turn of a non-square slice changes its aspect ratio; inference zooms with nearest as for ``nearest``."""
    make_acdc(tmp_path, patients=2, slices=2, vol_shape=(2, 30, 26))
    dc = DataConfig(dataset="acdc", root=str(tmp_path), patch_size=[32, 32], labeled=2,
                    slice_resize="nearest_after_augment", rotation="rot90_flip")
    data = build_data(dc, 4, False)
    stored = load_cases("acdc", tmp_path, [data.labeled[0].case_id])[0]
    assert data.labeled[0].image.shape == (30, 26) and np.array_equal(data.labeled[0].image, stored.image)
    cfg = validate_config({**tiny_config("bcp", iterations=3, precision="fp32"), "data": dc.model_dump()})
    batches = TwoStreamBatches.from_config(cfg, data.labeled, data.unlabeled, patch_size=(32, 32), total_iterations=3)
    assert batches.resize_after_augment
    batch = batches[1]
    assert batch["image_l"].shape[-2:] == (32, 32) and batch["label_l"].shape[-2:] == (32, 32)
    # the same draws by hand: the iteration's generator picks the cases, turns and flips each native slice, then zooms
    rng = np.random.default_rng([cfg.train.seed, 1, 0])
    idx = rng.integers(0, len(data.labeled), size=cfg.train.batch_labeled)
    for row, i in enumerate(idx):
        case = data.labeled[int(i)]
        k, axis = int(rng.integers(0, 4)), int(rng.integers(0, 2))
        turned = [np.flip(np.rot90(a, k), axis=axis) for a in (case.image, case.label)]
        zoomed = [ndimage.zoom(a, (32 / a.shape[0], 32 / a.shape[1]), order=0, grid_mode=False) for a in turned]
        rng.integers(0, 1, size=2)  # the crop of an exact-size slice still draws its (zero) offsets
        assert np.array_equal(batch["image_l"][row, 0].numpy(), zoomed[0].astype(np.float32))
        assert np.array_equal(batch["label_l"][row].numpy(), zoomed[1])
    model = torch.nn.Conv2d(1, 3, 1)
    _, _, settings = predict_array(model, cfg, np.random.default_rng(0).random((2, 20, 20)).astype(np.float32), ndim=2)
    assert settings["image_resize"] == "zoom_nearest"


def test_one_box_for_the_whole_batch():
    torch.manual_seed(0)
    box = cuboid_mask((12, 12), 5, 2 / 3, "cpu", same_for_batch=True)
    assert all(torch.equal(box[0], box[i]) for i in range(5)) and box[0].sum() == 8 * 8
    torch.manual_seed(0)
    per_sample = cuboid_mask((12, 12), 5, 2 / 3, "cpu")
    torch.manual_seed(0)
    assert torch.equal(per_sample[0], cuboid_mask((12, 12), 1, 2 / 3, "cpu")[0])  # the default's draws unchanged
    assert not all(torch.equal(per_sample[0], per_sample[i]) for i in range(5))


def _bcp(tmp_path, **params):
    raw = tiny_config("bcp", iterations=10, precision="fp32")
    raw["model"].update(base_channels=4)
    raw["method"].update(pretrain=0.0, **params)
    return Trainer(validate_config(raw), tmp_path / "bcp", progress=False)


@pytest.mark.parametrize("per_direction,sizes", [(False, [4]), (True, [2, 2])])
def test_bcp_student_forwards_per_direction(tmp_path, per_direction, sizes):
    t = _bcp(tmp_path, per_direction_forward=per_direction)
    t.copy_student_to_teacher()
    g = torch.Generator().manual_seed(0)
    batch = {"image_l": torch.rand(4, 1, 32, 32, generator=g), "label_l": torch.randint(0, 3, (4, 32, 32), generator=g),
             "image_u": torch.rand(4, 1, 32, 32, generator=g)}
    seen = []
    handle = t.student.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    torch.manual_seed(1)
    loss, _ = t.method.training_step(batch, 3)
    handle.remove()
    assert seen == sizes
    t.student.eval()  # without batch statistics and dropout the split changes nothing
    losses = []
    for flag in (False, True):
        t.method.p.per_direction_forward = flag
        torch.manual_seed(1)
        losses.append(t.method.training_step(batch, 3)[0].item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_bfa_refuses_per_direction_forward():
    raw = tiny_config("bfa", iterations=2)
    raw["method"].update(per_direction_forward=True)
    from bfaseg.methods import check_method_params

    with pytest.raises(BfasegError, match="per_direction_forward"):
        check_method_params(validate_config(raw), "run.yaml")
