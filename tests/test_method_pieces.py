"""The methods' pieces with numbers: copy-paste mixing, boundary targets, alignment, the teacher's life.

Each test pins a behaviour that a small plausible bug would change (see docs/MUTATION.md); the exact
formulas of the BCP mixed loss, the pseudo-boundary scaling and UA-MT's threshold schedule have their
own reference tests and are not asserted here.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from bfaseg.config import RunConfig, validate_config
from bfaseg.errors import BfasegError
from bfaseg.methods import bcp as bcp_module
from bfaseg.methods import bfa as bfa_module
from bfaseg.methods import build_method, check_method_params, get_method_class
from bfaseg.methods.base import cuboid_mask, noisy, paste, sigmoid_rampup, split_pairs
from bfaseg.methods.boundary import (class_boundaries, downsample_boundaries, downsample_weights,
                                     signed_distance_maps)
from bfaseg.training.ema import ema_decay
from bfaseg.losses import boundary_loss, distance_loss
from bfaseg.training.trainer import Trainer

from conftest import tiny_config

K = 3  # classes of the tiny config
H = W = 32


def _trainer(tmp_path, method, train=None, model=None, **params):
    raw = tiny_config(method, **{"iterations": 10, "precision": "fp32", **(train or {})})
    raw["model"].update(base_channels=4, **(model or {}))
    raw["method"].update(params)
    return Trainer(validate_config(raw), tmp_path / method, progress=False)


def _box(n, rows, cols):
    box = torch.zeros(n, H, W)
    box[:, rows, cols] = 1.0
    return box


def _batch(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(n, H, W, dtype=torch.long)
    label[:, 4:20, 6:22] = 1
    label[:, 10:14, 10:16] = 2
    label = torch.roll(label, shifts=seed, dims=2)
    return {
        "image_l": torch.rand(n, 1, H, W, generator=g),
        "label_l": label,
        "image_u": torch.rand(n, 1, H, W, generator=g) + 2.0,  # unlabeled images are told apart by value
    }


def _fake_pseudo_labels(x_u):
    """A teacher whose answer depends on each voxel only: label and confidence from the image value."""
    label = torch.where(x_u[:, 0] > 2.5, 2, 1)
    keep = (x_u[:, 0] < 2.8).float()
    return label, keep


# ------------------------------------------------------------------ cuboid_mask


@pytest.mark.parametrize("shape,fraction", [((7, 5), 0.6), ((16, 16, 8), 2 / 3), ((4,), 0.2)])
def test_cuboid_mask_is_one_box_of_the_right_size_at_every_offset(shape, fraction):
    torch.manual_seed(0)
    sizes = [max(1, int(s * fraction)) for s in shape]  # rounded down, as the reference
    starts = [set() for _ in shape]
    mask = cuboid_mask(shape, 200, fraction, "cpu")
    assert mask.shape == (200, *shape) and set(mask.unique().tolist()) <= {0.0, 1.0}
    for m in mask:
        idx = m.nonzero()
        lo, hi = idx.min(0).values, idx.max(0).values
        assert (hi - lo + 1).tolist() == sizes and m.sum() == math.prod(sizes)  # one full box
        for d in range(len(shape)):
            starts[d].add(int(lo[d]))
    # every admissible offset is drawn, and no other
    assert starts == [set(range(s - z + 1)) for s, z in zip(shape, sizes)]


def test_paste_float_and_integer():
    box = _box(1, slice(2, 5), slice(3, 9))
    outer, inner = torch.zeros(1, 2, H, W), torch.ones(1, 2, H, W)
    out = paste(outer, inner, box)
    assert torch.equal(out[:, 0], box) and torch.equal(out[:, 1], box)
    lab = paste(torch.zeros(1, H, W, dtype=torch.long), torch.full((1, H, W), 2), box)
    assert lab.dtype == torch.long and torch.equal(lab, 2 * box.long())


# ------------------------------------------------------------------ mixed_batch


BOXES = [(slice(0, 21), slice(0, 21)), (slice(11, 32), slice(11, 32)), (slice(5, 26), slice(0, 21))]


@pytest.mark.parametrize("rows,cols", BOXES)
@pytest.mark.parametrize("teacher_mode", ["eval", "train"])
def test_mixed_batch_voxel_by_voxel_both_directions(tmp_path, monkeypatch, rows, cols, teacher_mode):
    t = _trainer(tmp_path, "bcp", train={"teacher_mode": teacher_mode}, pretrain=2, pseudo_weight=0.3)
    m = t.method
    box = _box(2, rows, cols)
    monkeypatch.setattr(bcp_module, "cuboid_mask", lambda shape, n, fraction, device, **kw: box[:n].clone())
    monkeypatch.setattr(m, "pseudo_labels", _fake_pseudo_labels)
    batch = _batch()
    x_l, y_l, x_u = batch["image_l"], batch["label_l"], batch["image_u"]
    pl, keep = _fake_pseudo_labels(x_u)
    inside = box.bool()
    mix = m.mixed_batch(batch, 5)  # after pre-training
    # direction 1: labeled 0,1 outside, unlabeled 0,1 in the box; direction 2: unlabeled 2,3 outside, labeled 2,3 inside
    exp_img = torch.cat([torch.where(inside[:, None], x_u[:2], x_l[:2]), torch.where(inside[:, None], x_l[2:], x_u[2:])])
    exp_tgt = torch.cat([torch.where(inside, pl[:2], y_l[:2]), torch.where(inside, y_l[2:], pl[2:])])
    exp_w = torch.cat([torch.where(inside, 0.3 * keep[:2], 1.0), torch.where(inside, 1.0, 0.3 * keep[2:])])
    exp_origin = torch.cat([(~inside).float(), inside.float()])
    assert torch.equal(mix["image"], exp_img)
    assert torch.equal(mix["target"], exp_tgt)
    assert torch.allclose(mix["weight"], exp_w)
    assert torch.equal(mix["gt_origin"], exp_origin)
    assert torch.equal(mix["box"], box)


def test_mixed_batch_in_pretraining_pastes_labeled_into_labeled(tmp_path, monkeypatch):
    t = _trainer(tmp_path, "bcp", pretrain=2)
    m = t.method
    box = _box(2, slice(3, 24), slice(8, 29))
    monkeypatch.setattr(bcp_module, "cuboid_mask", lambda shape, n, fraction, device, **kw: box[:n].clone())
    monkeypatch.setattr(m, "pseudo_labels", lambda x: pytest.fail("no teacher during pre-training"))
    batch = _batch()
    x_l, y_l = batch["image_l"], batch["label_l"]
    inside = box.bool()
    mix = m.mixed_batch(batch, 1)
    assert torch.equal(mix["image"], torch.where(inside[:, None], x_l[2:], x_l[:2]))
    assert torch.equal(mix["target"], torch.where(inside, y_l[2:], y_l[:2]))
    assert torch.equal(mix["weight"], torch.ones(2, H, W)) and torch.equal(mix["gt_origin"], torch.ones(2, H, W))
    assert m.in_pretrain(1) and not m.in_pretrain(2)


def test_box_size_follows_box_fraction(tmp_path, monkeypatch):
    t = _trainer(tmp_path, "bcp", pretrain=0.0, box_fraction=0.25)
    t.copy_student_to_teacher()
    seen = []
    monkeypatch.setattr(bcp_module, "cuboid_mask", lambda *a, **kw: seen.append(a[2]) or cuboid_mask(*a, **kw))
    mix = t.method.mixed_batch(_batch(), 3)
    assert seen == [0.25] and mix["box"].sum((1, 2)).tolist() == [64.0, 64.0]


def test_pseudo_labels_argmax_confidence_and_component_filter(tmp_path, monkeypatch):
    t = _trainer(tmp_path, "bcp", confidence=0.8, component_filter=0.5)
    logits = torch.zeros(1, K, H, W)
    logits[0, 1, 2:12, 2:12] = 5.0  # a large confident class-1 region
    logits[0, 1, 20, 20] = 5.0  # a one-voxel island of class 1: filtered out
    logits[0, 2, 25:28, 2:12] = 0.5  # class 2 but unsure (softmax max 0.45)
    monkeypatch.setattr(t, "teacher_forward", lambda x: logits)
    label, keep = t.method.pseudo_labels(torch.zeros(1, 1, H, W))
    expected = torch.zeros(1, H, W, dtype=torch.long)
    expected[0, 2:12, 2:12] = 1
    expected[0, 25:28, 2:12] = 2  # the only class-2 component: kept, however unsure
    assert torch.equal(label, expected)
    conf = torch.softmax(logits, 1).max(1).values
    assert torch.equal(keep, (conf >= 0.8).float()) and keep[0, 25:28, 2:12].sum() == 0 and keep[0, 5, 5] == 1
    t.method.p.component_filter = 0.0  # off: the island stays
    assert t.method.pseudo_labels(torch.zeros(1, 1, H, W))[0][0, 20, 20] == 1


def test_pseudo_weight_ramps_after_pretraining(tmp_path):
    m = _trainer(tmp_path, "bcp", pretrain=4, pseudo_weight=0.6, pseudo_rampup=4).method
    assert m.pseudo_weight(4) == pytest.approx(0.6 * math.exp(-5))
    assert m.pseudo_weight(6) == pytest.approx(0.6 * math.exp(-5 * 0.25))
    assert m.pseudo_weight(8) == pytest.approx(0.6) and m.pseudo_weight(9) == pytest.approx(0.6)


def test_supervised_weight_adds_the_unmixed_labeled_images(tmp_path, monkeypatch):
    t = _trainer(tmp_path, "bcp", pretrain=0.0, supervised_weight=0.7)
    t.copy_student_to_teacher()
    seen = []
    orig = t.method.student
    monkeypatch.setattr(t.method, "student", lambda x, **kw: seen.append(x) or orig(x, **kw))
    batch = _batch()
    loss, logs = t.method.training_step(batch, 3)
    assert set(logs) == {"seg", "sup"} and torch.equal(seen[0][4:], batch["image_l"])
    assert loss.item() == pytest.approx(logs["seg"].item() + 0.7 * logs["sup"].item(), rel=1e-5)
    t.method.p.supervised_weight = 0.0
    seen.clear()
    loss, logs = t.method.training_step(batch, 3)
    assert set(logs) == {"seg"} and seen[0].shape[0] == 4 and loss.item() == logs["seg"].item()


# -------------------------------------------------------- boundaries and pooling


def test_boundary_targets_have_no_band_on_the_paste_seam(tmp_path, monkeypatch):
    """Labels of class 1 everywhere on both sides: after pasting, the seam is no boundary; a real
    contour inside the pasted box survives exactly."""
    t = _trainer(tmp_path, "bfa", pretrain=0.0)
    box = _box(2, slice(8, 29), slice(0, 21))
    monkeypatch.setattr(bcp_module, "cuboid_mask", lambda shape, n, fraction, device, **kw: box[:n].clone())
    pl = torch.ones(4, H, W, dtype=torch.long)
    pl[:, 12:18, 4:10] = 2  # a pseudo-label contour inside the box (direction 1)
    monkeypatch.setattr(t.method, "pseudo_labels", lambda x: (pl[: x.shape[0]], torch.ones(x.shape[0], H, W)))
    batch = _batch()
    batch["label_l"] = torch.full((4, H, W), 2, dtype=torch.long)  # GT of another class: the seam is 1|2
    mix = t.method.mixed_batch(batch, 5)
    b = t.method.mixed_boundaries(mix)
    expected = torch.zeros(4, K - 1, H, W)
    expected[:2] = class_boundaries(pl[:2], K) * box[:, None]
    expected[2:] = class_boundaries(pl[:2], K) * (1 - box[:, None])  # direction 2: pseudo outside the box
    assert torch.equal(b, expected)
    assert b[0, :, 7:9].sum() == 0 and b[0, :, :, 20:22].sum() == 0  # nothing along the seam
    assert class_boundaries(mix["target"], K)[0, :, 7:9].sum() > 0  # (what extracting after pasting would give)


def test_training_step_feeds_the_premixed_boundaries_to_head_and_alignment(tmp_path, monkeypatch):
    t = _trainer(tmp_path, "bfa", pretrain=0.0, supervised_weight=0.5, min_boundary_voxels=1)
    t.copy_student_to_teacher()
    box = _box(2, slice(8, 30), slice(0, 21))  # rows 28-29 fill half a pooled cell: origin ties at 0.5
    monkeypatch.setattr(bcp_module, "cuboid_mask", lambda shape, n, fraction, device, **kw: box[:n].clone())
    monkeypatch.setattr(t.method, "pseudo_labels", _fake_pseudo_labels)
    calls, aligned = [], []
    monkeypatch.setattr(bfa_module, "boundary_loss", lambda *a: calls.append(a) or boundary_loss(*a))
    orig_align = t.method.alignment_loss
    monkeypatch.setattr(t.method, "alignment_loss", lambda *a: aligned.append(a) or orig_align(*a))
    batch = _batch()
    loss, logs = t.method.training_step(batch, 6)
    mix = t.method.mixed_batch(batch, 6)
    full = torch.cat([t.method.mixed_boundaries(mix), class_boundaries(batch["label_l"], K)])
    origin = torch.cat([mix["gt_origin"], torch.ones(4, H, W)])
    (lg, tg, w_gt), (lp, tp, w_ps) = calls
    size = tuple(lg.shape[2:])
    assert lg.shape[:2] == (8, K - 1) and size == (8, 8)  # stage 1 of the 2-D U-Net: 1/4 resolution
    assert torch.equal(tg, downsample_boundaries(full, size)) and torch.equal(tp, tg)
    keep_full = torch.cat([(mix["weight"] > 0).float(), torch.ones(4, H, W)])  # confident pseudo voxels and all GT
    o = downsample_weights(origin, size)
    kept = downsample_weights(keep_full, size)
    # the pseudo term sees only (confident) pseudo-label regions, the GT term only ground truth
    assert torch.equal(w_gt, (o > 0.5).float()) and torch.equal(w_ps, ((o <= 0.5) & (kept > 0.5)).float())
    assert (o == 0.5).any()  # a tie belongs to the pseudo-label side
    assert 0 < w_ps.sum() < w_ps.numel() and 0 < w_gt.sum()
    feats, b, g, keep = aligned[0][:4]  # (the contrast form also gets the mixed targets)
    assert torch.equal(b, full) and torch.equal(g, origin)
    assert torch.equal(keep, keep_full)
    assert feats.shape[2:] == (8, 8)  # the boundary stage's features
    assert set(logs) == {"seg", "sup", "boundary_gt", "boundary_pseudo", "align"}


def test_boundary_loss_ignores_voxels_of_weight_zero():
    """What keeps the pseudo-boundary term blind to ground-truth regions (their weight is 0)."""
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8)
    target = (torch.rand(2, 2, 8, 8) > 0.7).float()
    weight = torch.zeros(2, 8, 8)
    weight[:, :, 4:] = 1.0
    changed = logits.clone()
    changed[..., :4] = torch.randn(2, 2, 8, 4) * 10
    assert boundary_loss(changed, target, weight).item() == pytest.approx(boundary_loss(logits, target, weight).item())
    assert boundary_loss(changed, target).item() != pytest.approx(boundary_loss(logits, target).item())


def test_downsampled_boundaries_keep_a_one_voxel_contour():
    b = torch.zeros(1, 1, 32, 32)
    b[0, 0, 9, :] = 1  # a 1-voxel line on an odd row
    b[0, 0, 20, 31] = 1  # a single voxel in the corner region
    small = downsample_boundaries(b, (16, 16))
    assert torch.equal(small[0, 0, 4], torch.ones(16)) and small[0, 0, 10, 15] == 1
    assert small.sum() == 17
    b3 = torch.zeros(1, 1, 8, 8, 8)
    b3[0, 0, 3, 5, 7] = 1
    assert downsample_boundaries(b3, (4, 4, 4))[0, 0, 1, 2, 3] == 1 and downsample_boundaries(b3, (8, 8, 8)) is b3
    w = torch.zeros(1, 4, 4)
    w[0, 0, 0] = 1.0
    assert downsample_weights(w, (2, 2))[0, 0, 0] == 0.25  # weights average, boundaries do not
    assert downsample_weights(torch.ones(1, 4, 4, 4), (2, 2, 2)).shape == (1, 2, 2, 2)


# ------------------------------------------------------------------ alignment


def _align_inputs():
    """Two samples, features of 3 channels; class 1 and 2 boundary voxels in GT (left) and pseudo (right) halves."""
    feats = torch.zeros(2, 3, 8, 8)
    boundary = torch.zeros(2, 2, 8, 8)
    origin = torch.zeros(2, 8, 8)
    origin[:, :, :4] = 1.0
    keep = torch.ones(2, 8, 8)
    g1, p1 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0])
    g2, p2 = torch.tensor([0.0, 0.0, 2.0]), torch.tensor([1.0, 1.0, 1.0])
    boundary[:, 0, 0, 0:4], feats[:, :, 0, 0:4] = 1, g1[:, None]  # 8 GT voxels of class 1
    boundary[:, 0, 0, 4:8], feats[:, :, 0, 4:8] = 1, p1[:, None]  # 8 pseudo voxels of class 1
    boundary[:, 1, 5, 0:4], feats[:, :, 5, 0:4] = 1, g2[:, None]
    boundary[:, 1, 5, 4:8], feats[:, :, 5, 4:8] = 1, p2[:, None]
    boundary[0, 0, 3, 6], feats[0, :, 3, 6], keep[0, 3, 6] = 1, torch.tensor([-50.0, 3.0, 7.0]), 0.0  # unconfident
    feats[:, :, 7, :] = 9.0  # non-boundary voxels: never counted
    return feats, boundary, origin, keep, (g1, p1, g2, p2)


def _cos(a, b):
    return F.cosine_similarity(a, b, dim=0).item()


def test_alignment_loss_is_one_minus_cos_of_the_prototypes(tmp_path):
    m = _trainer(tmp_path, "bfa", align_form="prototype", align_target="gt", min_boundary_voxels=4).method
    feats, boundary, origin, keep, (g1, p1, g2, p2) = _align_inputs()
    feats.requires_grad_(True)
    loss = m.alignment_loss(feats, boundary, origin, keep)
    expected = ((1 - _cos(p1, g1)) + (1 - _cos(p2, g2))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6) and expected > 0.35
    loss.backward()
    grad = feats.grad.abs().sum(1)
    assert grad[:, :, :4].sum() == 0  # the ground-truth side is the target: no gradient into it
    assert grad[0, 3, 6] == 0 and grad[:, 7].sum() == 0  # unconfident and non-boundary voxels
    assert (grad[:, 0, 4:] > 0).all()


def test_alignment_excludes_classes_with_few_boundary_voxels(tmp_path):
    m = _trainer(tmp_path, "bfa", align_form="prototype", align_target="gt", min_boundary_voxels=9).method  # class 1 has 8 voxels per side, class 2 too
    feats, boundary, origin, keep, (g1, p1, g2, p2) = _align_inputs()
    boundary[1, 0, 1, 0:4], feats[1, :, 1, 0:4] = 1, g1[:, None]  # class 1 GT: 12 voxels
    boundary[1, 0, 1, 4:8], feats[1, :, 1, 4:8] = 1, p1[:, None]  # class 1 pseudo: 12 voxels
    assert m.alignment_loss(feats, boundary, origin, keep).item() == pytest.approx(1 - _cos(p1, g1), abs=1e-6)
    m.p.min_boundary_voxels = 13  # nothing valid: zero, but still part of the graph
    feats.requires_grad_(True)
    zero = m.alignment_loss(feats, boundary, origin, keep)
    assert zero.item() == 0.0 and zero.requires_grad


def test_alignment_pools_features_of_a_lower_stage(tmp_path):
    m = _trainer(tmp_path, "bfa", align_form="prototype", align_target="gt", min_boundary_voxels=1).method
    boundary = torch.zeros(1, 2, 8, 8)
    boundary[0, 0, 1, 1] = boundary[0, 0, 1, 6] = 1  # a 1-voxel contour at full resolution
    origin = torch.zeros(1, 8, 8)
    origin[0, :, :4] = 1
    feats = torch.zeros(1, 2, 4, 4)
    feats[0, :, 0, 0] = torch.tensor([1.0, 0.0])  # the GT voxel's pooled cell
    feats[0, :, 0, 3] = torch.tensor([1.0, 1.0])  # the pseudo voxel's pooled cell
    loss = m.alignment_loss(feats, boundary, origin, torch.ones(1, 8, 8))
    assert loss.item() == pytest.approx(1 - math.sqrt(0.5), abs=1e-6)


def test_alignment_memory_mode_update_and_resume(tmp_path):
    t = _trainer(tmp_path, "bfa", align_form="prototype", align_target="memory", memory_momentum=0.75, min_boundary_voxels=4)
    m = t.method
    feats, boundary, origin, keep, (g1, p1, g2, p2) = _align_inputs()
    loss = m.alignment_loss(feats, boundary, origin, keep)  # first call: the memory is the GT prototypes
    assert torch.allclose(m.memory, torch.stack([g1, g2]))
    assert loss.item() == pytest.approx(((1 - _cos(p1, g1)) + (1 - _cos(p2, g2))) / 2, abs=1e-6)
    g1b = torch.tensor([0.0, 1.0, 0.0])
    feats2 = feats.clone()
    feats2[:, :, 0, 0:4] = g1b[:, None]
    boundary2 = boundary.clone()
    boundary2[:, 1, 5, 1:4] = 0  # class 2 keeps 2 GT voxels: below the minimum, its memory stays
    feats2.requires_grad_(True)
    loss = m.alignment_loss(feats2, boundary2, origin, keep)
    mem1 = 0.75 * g1 + 0.25 * g1b
    assert torch.allclose(m.memory, torch.stack([mem1, g2]))
    # both sides pulled to the memory (class 2 excluded: too few GT voxels)
    assert loss.item() == pytest.approx((1 - _cos(p1, mem1)) + (1 - _cos(g1b, mem1)), abs=1e-6)
    loss.backward()
    assert feats2.grad[:, :, 0, 0:4].abs().sum() > 0  # memory mode moves the GT side too
    # the memory travels with the checkpoint and comes back on resume
    assert torch.equal(m.state_dict()["memory"], m.memory)
    t.save("last", 3)
    resumed = Trainer(t.cfg, t.output_dir, resume=True, progress=False)
    assert torch.equal(resumed.method.memory, m.memory) and resumed.start_iteration == 3
    fresh = _trainer(tmp_path / "fresh", "bfa", align_form="prototype", align_target="memory")
    assert fresh.method.memory is None and fresh.method.state_dict() == {"memory": None, "anchor_memory": None}


# ------------------------------------------------------------ teacher's life


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_teacher_decay_bfa_slow_by_default_others_follow_the_config(tmp_path):
    assert _trainer(tmp_path / "a", "bfa", train={"ema_decay": 0.9}).method.teacher_decay(0.9) == 0.999
    assert _trainer(tmp_path / "b", "bfa", teacher_ema_decay=None).method.teacher_decay(0.9) == 0.9
    assert _trainer(tmp_path / "c", "bfa", teacher_ema_decay=0.99).method.teacher_decay(0.9) == 0.99
    assert _trainer(tmp_path / "d", "bcp").method.teacher_decay(0.9) == 0.9  # BCP keeps the reference's config


@pytest.mark.parametrize("method,fraction,pretrain,mode", [
    ("bcp", 3, 3, None), ("bcp", 3, 3, "eval"), ("bfa", 1 / 7, 1, None), ("mean_teacher", None, 0, "eval"),
    ("mean_teacher", None, 0, None)])
def test_teacher_life_through_the_trainer(tmp_path, method, fraction, pretrain, mode):
    """Frozen during pre-training, a copy of the student when it ends, then closed-form EMA
    (decay min(1 - 1/(t+1), ema_decay)) on parameters AND BatchNorm running statistics. A teacher that
    predicts in train mode (the mean teacher's and BCP's default) moves its own running statistics in its forward
    pass before the EMA, as the reference's does: there only the parameters and counters follow the formula."""
    params = {"pretrain": fraction} if pretrain else {}  # > 1: iterations; <= 1: a fraction of the 7
    t = _trainer(tmp_path, method, train={"iterations": 7, "val_every": 7, "log_every": 7, "checkpoint_every": 7,
                                          "ema_decay": 0.6, **({"teacher_mode": mode} if mode else {})}, **params)
    own_statistics = t.teacher_mode == "train"
    assert own_statistics == (method in ("mean_teacher", "bcp") and mode is None)
    assert all(not p.requires_grad for p in t.teacher.parameters())
    assert getattr(t.method, "pretrain_iterations", 0) == pretrain
    snaps = []
    hook = t.method.on_iteration_start

    def record(iteration):
        hook(iteration)
        snaps.append((iteration, _snapshot(t.student), _snapshot(t.teacher)))

    t.method.on_iteration_start = record
    t.fit()
    snaps.append((7, _snapshot(t.student), _snapshot(t.teacher)))
    teacher0 = snaps[0][2]
    for i, student, teacher in snaps[1 : pretrain + 1]:
        if i < pretrain:
            assert all(torch.equal(teacher[k], teacher0[k]) for k in teacher), f"teacher moved at {i}"
    if pretrain:
        _, student_p, teacher_p = snaps[pretrain]
        assert all(torch.equal(teacher_p[k], student_p[k]) for k in teacher_p)  # handed over, buffers too
    bn_checked = False
    for (i, _, teacher), (_, student_next, teacher_next) in zip(snaps[pretrain:-1], snaps[pretrain + 1 :]):
        d = ema_decay(i, t.method.teacher_decay(0.6))  # BFA's own teacher decay, the others train.ema_decay
        for k, v in teacher_next.items():
            if v.is_floating_point() and "running" in k and own_statistics and d > 0:  # d 0: the student's
                assert not torch.allclose(v, d * teacher[k] + (1 - d) * student_next[k], atol=1e-6), (i, k)
            elif v.is_floating_point():
                assert torch.allclose(v, d * teacher[k] + (1 - d) * student_next[k], atol=1e-6), (i, k)
                if "running" in k and d > 0 and not torch.allclose(teacher[k], student_next[k]):
                    bn_checked = True
            else:
                assert torch.equal(v, student_next[k]), (i, k)  # counters copied
    assert bn_checked != own_statistics  # the BatchNorm statistics were averaged where it shows



@pytest.mark.parametrize("supervised_weight", [0.0, 0.5])
def test_bfa_loss_is_its_logged_terms_with_their_weights_and_ramps(tmp_path, monkeypatch, supervised_weight):
    # every ramp part-way up at iteration 2 of 10, so a ramp used wrongly changes the sum
    t = _trainer(tmp_path, "bfa", pretrain=0.1, supervised_weight=supervised_weight, lambda_distance=0.3,
                 distance_scale=4.0, distance_rampup=0.6, boundary_rampup=0.5, align_rampup=0.8, pseudo_rampup=0.7,
                 min_boundary_voxels=1)
    t.copy_student_to_teacher()
    box = _box(2, slice(8, 29), slice(0, 21))
    monkeypatch.setattr(bcp_module, "cuboid_mask", lambda shape, n, fraction, device, **kw: box[:n].clone())
    monkeypatch.setattr(t.method, "pseudo_labels", _fake_pseudo_labels)
    seen = []
    monkeypatch.setattr(bfa_module, "distance_loss", lambda *a: seen.append(a) or distance_loss(*a))
    batch = _batch()
    loss, logs = t.method.training_step(batch, 2)
    m, p = t.method, t.method.p

    def ramp(fraction, iteration=2):
        value = sigmoid_rampup(iteration, m.fraction_to_iterations(fraction))
        assert 0.01 < value < 1
        return value

    assert m.pretrain_iterations == 1  # the alignment ramp counts from the end of pre-training
    expected = (logs["seg"] + supervised_weight * logs.get("sup", 0.0)
                + p.lambda_distance * ramp(p.distance_rampup) * logs["distance"]
                + p.lambda_boundary * ramp(p.boundary_rampup) * (logs["boundary_gt"]
                                                                  + m.pseudo_weight(2) * logs["boundary_pseudo"])
                + p.lambda_align * ramp(p.align_rampup, 2 - m.pretrain_iterations) * logs["align"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert ("sup" in logs) == (supervised_weight > 0)

    # the distance term sees the mixed images' targets and weights, and the labeled images' GT (weight 1) if added
    mix = m.mixed_batch(batch, 2)
    logits, phi, weights = seen[0]
    targets, want_weights = mix["target"], mix["weight"]
    if supervised_weight > 0:
        targets = torch.cat([targets, batch["label_l"]])
        want_weights = torch.cat([want_weights, torch.ones(4, H, W)])
    assert logits.shape == (targets.shape[0], K, H, W)
    assert torch.equal(phi, signed_distance_maps(targets, K, 4.0)) and torch.equal(weights, want_weights)
    assert not torch.equal(phi, signed_distance_maps(targets, K))  # the scale matters here
    assert (weights < 1).any()  # pseudo-label weights are not all one


def test_bfa_without_head_or_alignment_asks_for_logits_only(tmp_path, monkeypatch):
    t = _trainer(tmp_path, "bfa", pretrain=0.0, boundary_head=False, alignment=False, lambda_distance=0.3)
    t.copy_student_to_teacher()
    asked = []
    orig = t.method.student
    monkeypatch.setattr(t.method, "student", lambda x, **kw: asked.append(kw) or orig(x, **kw))
    loss, logs = t.method.training_step(_batch(), 9)
    assert asked == [{"return_extras": False}] and set(logs) == {"seg", "sup", "distance"}
    assert loss.item() == pytest.approx((logs["seg"] + logs["sup"] + 0.3 * logs["distance"]).item(), rel=1e-5)


def test_teacher_forward_mode_follows_teacher_mode(tmp_path):
    for mode in ("eval", "train"):
        t = _trainer(tmp_path / mode, "bcp", train={"teacher_mode": mode})
        modes = []
        t.teacher.register_forward_pre_hook(lambda mod, inp: modes.append(mod.training))
        out = t.teacher_forward(torch.rand(2, 1, H, W))
        assert modes == [mode == "train"] and not out.requires_grad and out.dtype == torch.float32


# --------------------------------------------------------- mean teacher, UA-MT


def test_mean_teacher_noise_goes_to_the_teacher_only(tmp_path, monkeypatch):
    t = _trainer(tmp_path, "mean_teacher", noise_sigma=0.5, noise_clip=0.3, consistency=2.0, rampup=0)
    seen_student, seen_teacher = [], []
    orig_student, orig_teacher = t.method.student, t.teacher_forward
    monkeypatch.setattr(t.method, "student", lambda x, **kw: seen_student.append(x) or orig_student(x, **kw))
    monkeypatch.setattr(t, "teacher_forward", lambda x, **kw: seen_teacher.append(x) or orig_teacher(x, **kw))
    batch = _batch()
    torch.manual_seed(0)
    loss, logs = t.method.training_step(batch, 0)
    assert torch.equal(seen_student[0], torch.cat([batch["image_l"], batch["image_u"]]))
    noise = seen_teacher[0] - batch["image_u"]
    assert noise.abs().max() <= 0.3 + 1e-6 and (noise.abs() > 1e-3).float().mean() > 0.9
    assert 0.2 < noise.std() < 0.3  # sigma 0.5 clipped at 0.3
    assert loss.item() == pytest.approx(logs["sup"].item() + 2.0 * logs["consistency"].item(), rel=1e-5)


def test_noisy_is_clipped_gaussian():
    torch.manual_seed(0)
    x = torch.zeros(100000)
    n = noisy(x, 0.1, 0.2)
    assert n.abs().max() <= 0.2 and n.std().item() == pytest.approx(0.1, rel=0.05) and abs(n.mean().item()) < 0.005
    assert noisy(x, 1.0, 0.05).abs().max() == pytest.approx(0.05)


class _FixedTeacher(torch.nn.Module):
    """Whatever the input: confident (class 0) in the left half, fairly unsure (entropy 0.976) in the third
    quarter, uniform (entropy ln 3) in the last quarter."""

    def __init__(self):
        super().__init__()
        self.logits = torch.zeros(1, K, H, W)
        self.logits[:, 0, :, : W // 2] = 20.0
        self.logits[:, 0, :, W // 2 : 3 * W // 4] = 1.0
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x, return_extras=False):
        return self.logits.expand(x.shape[0], -1, -1, -1).clone()


def test_ua_mt_mask_keeps_the_low_entropy_voxels(tmp_path, monkeypatch):
    # a constant threshold of 0.95 ln 3 = 1.04 with the K-class constants (the schedule and the reference's
    # constants have their own reference tests)
    t = _trainer(tmp_path, "ua_mt", mc_passes=3, threshold_start=0.95, threshold_end=0.95, consistency=1.0, rampup=0,
                 noise_sigma=0.5, noise_clip=0.3, entropy_bound_classes=None, consistency_classes=None)
    t.teacher = _FixedTeacher()
    entropy = t.method.uncertainty(torch.zeros(2, 1, H, W))
    assert entropy.shape == (2, H, W)
    assert entropy[:, :, :16].max() < 1e-3 and entropy[:, :, 16:24].mean().item() == pytest.approx(0.976, abs=1e-3)
    assert entropy[:, :, 24:].min() == pytest.approx(math.log(K), abs=1e-4)
    seen = []
    orig_teacher = t.teacher_forward
    monkeypatch.setattr(t, "teacher_forward", lambda x, **kw: seen.append(x) or orig_teacher(x, **kw))
    batch = _batch()
    torch.manual_seed(0)
    loss, logs = t.method.training_step(batch, 0)
    assert logs["certain"].item() == pytest.approx(0.75)  # the confident half and the fairly unsure quarter
    assert set(logs) == {"sup", "consistency", "certain"}
    assert loss.item() == pytest.approx(logs["sup"].item() + logs["consistency"].item(), rel=1e-5)  # weight 1, no ramp
    noise = seen[0] - batch["image_u"]  # the consistency target's input is noisy too
    assert 0.25 < noise.abs().max() <= 0.3 + 1e-6 and 0.2 < noise.std() < 0.3
    torch.manual_seed(0)
    logits = t.student(torch.cat([batch["image_l"], batch["image_u"]]))[4:]
    sq = (torch.softmax(logits, 1) - torch.softmax(t.teacher.logits, 1)) ** 2
    assert logs["consistency"].item() == pytest.approx(sq[..., :24].mean().item(), rel=1e-4)  # certain voxels only


# ------------------------------------------------------------- every option


OPTIONS = {
    "bcp": [{"teacher_mode": "eval"}, {"confidence": 0.9}, {"component_filter": 0.0}, {"component_filter": 0.3},
            {"supervised_weight": 0.5}, {"pseudo_rampup": 0.5}, {"box_fraction": 0.5}],
    "bfa": [{"align_target": "memory"}, {"lambda_distance": 0.5}, {"boundary_fuse": False}, {"boundary_stage": 2},
            {"align_stage": 3}, {"boundary_thickness": 2}, {"confidence": 0.95}, {"teacher_mode": "train"},
            {"supervised_weight": 0.0}, {"min_boundary_voxels": 10**6}],
    "mean_teacher": [{"noise_sigma": 0.0}, {"teacher_mode": "eval"}],  # train mode is its default
    "ua_mt": [{"mc_passes": 1}, {"threshold_start": 0.9, "threshold_end": 1.0}, {"teacher_mode": "train"}],
}


@pytest.mark.parametrize("method,option", [(m, o) for m, opts in OPTIONS.items() for o in opts], ids=str)
def test_every_option_trains_a_step(tmp_path, method, option):
    train = {"teacher_mode": option.pop("teacher_mode")} if "teacher_mode" in option else {}
    extra = {"pretrain": 0.0} if method in ("bcp", "bfa") else {}
    t = _trainer(tmp_path, method, train=train, **extra, **option)
    t.copy_student_to_teacher()
    torch.manual_seed(0)
    loss, logs = t.method.training_step(_batch(), 5)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in logs.values())
    loss.backward()
    grads = [p.grad for p in t.student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# ------------------------------------------------------------ inference weighting


def test_gaussian_importance_sigma_is_an_eighth_of_the_patch():
    from bfaseg.inference.sliding_window import gaussian_importance_map

    w = gaussian_importance_map((16, 8))
    axis = [torch.exp(-0.5 * ((torch.arange(p, dtype=torch.float64) - (p - 1) / 2) / (p / 8)) ** 2) for p in (16, 8)]
    expected = axis[0][:, None] * axis[1][None, :]
    assert torch.allclose(w.double(), expected / expected.max(), rtol=1e-6, atol=1e-12)
    # sigma = 16 / 8 = 2 voxels: the edge voxel (7.5 from the centre) against the central one (0.5)
    assert (w[0, 3] / w[7, 3]).item() == pytest.approx(math.exp(-0.5 * (7.5 / 2) ** 2 + 0.5 * (0.5 / 2) ** 2), rel=1e-5)
    assert w.max() == 1.0
    tiny = gaussian_importance_map((400,), sigma_scale=0.01)  # far tails underflow: raised to the smallest weight
    assert tiny.min() > 0 and (tiny == tiny.min()).sum() > 100


def test_signed_distance_defaults_and_a_missing_first_class():
    from bfaseg.methods.boundary import signed_distance_maps

    label = torch.zeros(1, 1, 90, dtype=torch.long)
    label[0, 0, :10] = 2  # class 1 absent, class 2 present: both maps still filled
    phi = signed_distance_maps(label, 3)
    assert phi.dtype == torch.float32 and phi.shape == (1, 2, 1, 90)
    assert torch.all(phi[0, 0] == 5.0)  # default clip 5
    assert phi[0, 1, 0, 30].item() == pytest.approx(2.1)  # default scale: 21 voxels away = 2.1
    assert phi[0, 1, 0, 9].item() == pytest.approx(-0.1) and phi[0, 1, 0, 80].item() == 5.0
    full = signed_distance_maps(torch.full((1, 1, 6), 1), 2)  # the class fills the patch: deep inside everywhere
    assert torch.all(full == -5.0)
    deep = torch.zeros(1, 1, 90, dtype=torch.long)
    deep[0, 0, :80] = 1
    assert signed_distance_maps(deep, 2)[0, 0, 0, 0].item() == -5.0  # 80 voxels inside: clipped at -clip


def test_supervised_logs_its_loss_as_sup(tmp_path):
    t = _trainer(tmp_path, "supervised")
    loss, logs = t.method.training_step(_batch(), 0)
    assert set(logs) == {"sup"} and logs["sup"].item() == loss.item() and not logs["sup"].requires_grad


def test_mean_teacher_consistency_is_the_mse_of_softmaxes(tmp_path):
    t = _trainer(tmp_path, "mean_teacher")
    t.teacher = _FixedTeacher()
    batch = _batch()
    torch.manual_seed(0)
    _, logs = t.method.training_step(batch, 0)
    torch.manual_seed(0)  # the same dropout masks
    logits = t.student(torch.cat([batch["image_l"], batch["image_u"]]))[4:]
    expected = ((torch.softmax(logits, 1) - torch.softmax(t.teacher.logits, 1)) ** 2).mean()
    assert logs["consistency"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_ua_mt_threshold_ramps_from_start_to_end_over_the_run(tmp_path):
    t = _trainer(tmp_path, "ua_mt", threshold_start=0.75, threshold_end=1.0, entropy_bound_classes=None)  # K = 3
    assert _trainer(tmp_path / "default", "ua_mt").method.threshold(10) == pytest.approx(math.log(2))  # the reference's
    ln_k = math.log(K)
    assert t.method.threshold(0) == pytest.approx((0.75 + 0.25 * math.exp(-5.0)) * ln_k)
    assert t.method.threshold(5) == pytest.approx((0.75 + 0.25 * math.exp(-5.0 * 0.25)) * ln_k)
    assert t.method.threshold(10) == pytest.approx(ln_k)


# ------------------------------------------------------------- registry and pairs


def test_method_registry_errors_name_the_source_and_the_key():
    names = "supervised, mean_teacher, ua_mt, bcp, bfa"
    with pytest.raises(BfasegError, match=rf"^config: method\.name: unknown method 'nope' \(choose from {names}\)$"):
        get_method_class("nope")

    def cfg(**method):
        return RunConfig.model_validate({**tiny_config(), "method": method})  # not validated per method yet

    with pytest.raises(BfasegError, match=r"^run\.yaml: method\.name: unknown method 'nope'"):
        build_method(cfg(name="nope"), None, "run.yaml")
    with pytest.raises(BfasegError, match=r"^config: method\.name: unknown method 'nope'"):
        build_method(cfg(name="nope"), None)
    with pytest.raises(BfasegError, match=r"^run\.yaml: method\.typo: unknown key$"):
        build_method(cfg(name="bcp", typo=1), None, "run.yaml")
    with pytest.raises(BfasegError, match=r"^config: method\.typo: unknown key$"):
        check_method_params(cfg(name="bcp", typo=1))
    # two errors: the first one is named, with pydantic's own message
    with pytest.raises(BfasegError, match=r"^x: method\.box_fraction: Input should be a valid number"):
        check_method_params(cfg(name="bcp", box_fraction="big", confidence="high"), "x")
    assert check_method_params(cfg(name="bcp", box_fraction=0.5)).box_fraction == 0.5


@pytest.mark.parametrize("n_labeled,n_unlabeled,first,second", [
    (4, 4, [0, 1], [2, 3]), (5, 4, [0, 1], [2, 3]), (3, 3, [0], [1]), (2, 2, [0], [1]), (1, 1, [0], [0]),
    (3, 1, [0], [0]),
])
def test_split_pairs_halves_for_the_two_directions(n_labeled, n_unlabeled, first, second):
    a, b = split_pairs(n_labeled, n_unlabeled)
    x = torch.arange(n_labeled)
    assert x[a].tolist() == first and x[b].tolist() == second


def test_ramps_and_fractions_at_their_edges(tmp_path):
    assert sigmoid_rampup(0, 1) == pytest.approx(math.exp(-5)) and sigmoid_rampup(1, 1) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0 and sigmoid_rampup(-2, 4) == pytest.approx(math.exp(-5))
    m = _trainer(tmp_path, "bcp", pretrain=0.0, pseudo_rampup=0.0, pseudo_weight=0.6).method  # 10 iterations
    assert m.fraction_to_iterations(1.0) == 10 and m.fraction_to_iterations(0.25) == 2  # round(2.5) = 2
    assert m.fraction_to_iterations(2) == 2 and m.fraction_to_iterations(0) == 0  # > 1: an iteration count
    assert m.pretrain_iterations == 0 and not m.in_pretrain(0)
    assert m.pseudo_weight(0) == pytest.approx(0.6)  # no ramp: the full weight at once


def test_mean_teacher_weight_changes_every_rampup_step(tmp_path):
    smooth = _trainer(tmp_path / "a", "mean_teacher", consistency=2.0, rampup=1.0, rampup_step=1).method
    assert [smooth.consistency_weight(i) for i in (0, 3, 7, 10)] == pytest.approx(
        [2.0 * sigmoid_rampup(i, 10) for i in (0, 3, 7, 10)])
    stepped = _trainer(tmp_path / "b", "mean_teacher", consistency=2.0, rampup=1.0, rampup_step=4).method
    assert [stepped.consistency_weight(i) for i in (0, 3, 4, 7, 8, 9)] == pytest.approx(
        [2.0 * sigmoid_rampup(i, 10) for i in (0, 0, 4, 4, 8, 8)])


def test_noisy_adds_clipped_noise_from_the_global_generator():
    x = torch.linspace(-1, 1, 1000)
    torch.manual_seed(3)
    got = noisy(x, 0.3, 0.4)
    torch.manual_seed(3)
    assert torch.equal(got, x + torch.clamp(torch.randn_like(x) * 0.3, -0.4, 0.4))


def test_bfa_boundary_thickness_and_fuse_reach_the_network(tmp_path):
    label = torch.zeros(1, H, W, dtype=torch.long)
    label[0, 8:20, 8:20] = 1
    thick = _trainer(tmp_path / "t", "bfa", boundary_thickness=2, boundary_fuse=False)
    assert torch.equal(thick.method.boundaries(label), class_boundaries(label, K, 2))
    assert class_boundaries(label, K, 2).sum() > class_boundaries(label, K, 1).sum()
    assert thick.student.boundary_head.fuse is None
    assert _trainer(tmp_path / "f", "bfa").student.boundary_head.fuse is not None


def test_prototypes_are_exact_masked_means_even_under_autocast(tmp_path):
    m = _trainer(tmp_path, "bfa").method
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(2, 5, 4, 4, generator=g) * 10 + 100  # large values: a bf16 sum would be far off
    masks = torch.zeros(2, 2, 4, 4)
    masks[0, 0, 1, 1] = 1  # class 1: a single voxel
    masks[:, 1, 2:, :] = 1  # class 2: 16 voxels over both samples
    want1 = feats[0, :, 1, 1].double()
    want2 = feats[:, :, 2:, :].double().mean((0, 2, 3))
    for context in (torch.autocast("cpu", dtype=torch.bfloat16), torch.autocast("cpu", enabled=False)):
        with context:
            protos, counts = m.prototypes(feats, masks)
        assert counts.tolist() == [1.0, 16.0] and protos.dtype == torch.float32
        assert torch.allclose(protos.double(), torch.stack([want1, want2]), rtol=1e-6, atol=0)


def test_alignment_ties_go_to_the_pseudo_side_and_the_memory_updates_at_the_minimum(tmp_path, monkeypatch):
    m = _trainer(tmp_path, "bfa", align_form="prototype", align_target="gt", min_boundary_voxels=1).method
    seen = []
    orig = m.prototypes
    monkeypatch.setattr(m, "prototypes", lambda f, masks: seen.append(masks) or orig(f, masks))
    boundary = torch.zeros(1, 2, 4, 4)
    boundary[:, 0] = 1  # class 1 boundary everywhere
    origin = torch.zeros(1, 4, 4)
    origin[0, :2, :2] = 1  # pooled to 2x2: GT cell (0, 0) ...
    origin[0, :2, 2] = 1  # ... cell (0, 1) half GT: a tie
    keep = torch.ones(1, 4, 4)
    keep[0, 2:, 2] = 0  # pooled cell (1, 1) half kept: a tie
    m.alignment_loss(torch.rand(1, 3, 2, 2), boundary, origin, keep)
    gt_mask, ps_mask = seen[0][0, 0], seen[1][0, 0]
    assert gt_mask.tolist() == [[1, 0], [0, 0]]  # origin > 0.5 only
    assert ps_mask.tolist() == [[0, 1], [1, 0]]  # origin <= 0.5 and kept > 0.5

    t = _trainer(tmp_path / "memory", "bfa", align_form="prototype", align_target="memory", memory_momentum=0.5, min_boundary_voxels=8)
    feats, boundary, origin, keep, (g1, p1, g2, p2) = _align_inputs()  # class 1: 8 GT voxels, the minimum
    t.method.alignment_loss(feats, boundary, origin, keep)
    feats2 = feats.clone()
    feats2[:, :, 0, 0:4] = torch.tensor([0.0, 1.0, 0.0])[:, None]
    t.method.alignment_loss(feats2, boundary, origin, keep)
    assert torch.allclose(t.method.memory[0], 0.5 * g1 + 0.5 * torch.tensor([0.0, 1.0, 0.0]))


def test_mixed_boundaries_paste_each_sources_own_label_boundaries(tmp_path):
    m = _trainer(tmp_path, "bfa").method
    a = torch.zeros(2, H, W, dtype=torch.long)
    a[:, 2:10, 2:10] = 1  # outside the box
    b = torch.zeros(2, H, W, dtype=torch.long)
    b[:, 14:20, 14:20] = 2  # inside the box
    box = _box(2, slice(12, 24), slice(12, 24))
    img, weight = torch.zeros(2, 1, H, W), torch.full((2, H, W), 0.7)
    mix = {"sources": [((img, a, weight, True), (img, b, weight, False))], "box": box}
    want = paste(class_boundaries(a, K), class_boundaries(b, K), box)
    assert torch.equal(m.mixed_boundaries(mix), want) and want[:, 0].sum() > 0 and want[:, 1].sum() > 0


def test_align_stage_picks_the_aligned_features(tmp_path, monkeypatch):
    t = _trainer(tmp_path, "bfa", pretrain=0.0, align_stage=2, min_boundary_voxels=1)
    t.copy_student_to_teacher()
    monkeypatch.setattr(t.method, "pseudo_labels", _fake_pseudo_labels)
    aligned = []
    orig = t.method.alignment_loss
    monkeypatch.setattr(t.method, "alignment_loss", lambda *a: aligned.append(a) or orig(*a))
    t.method.training_step(_batch(), 6)
    assert aligned[0][0].shape[2:] == (16, 16)  # stage 2 of the 2-D U-Net: half resolution (the head's stage 1: 8x8)


def test_check_method_params_names_the_source_of_an_unknown_method():
    raw = {**tiny_config(), "method": {"name": "nope"}}
    with pytest.raises(BfasegError, match=r"^run\.yaml: method\.name: unknown method 'nope'"):
        check_method_params(RunConfig.model_validate(raw), "run.yaml")


@pytest.mark.parametrize("mode,calls", [("eval", [4]), ("train", [2, 2])])
def test_pseudo_labels_one_pass_in_eval_mode_one_per_half_in_train_mode(tmp_path, monkeypatch, mode, calls):
    t = _trainer(tmp_path, "bcp", pretrain=0.0, train={"teacher_mode": mode})
    t.copy_student_to_teacher()
    seen = []
    monkeypatch.setattr(t.method, "pseudo_labels", lambda x: seen.append(x.shape[0]) or _fake_pseudo_labels(x))
    t.method.mixed_batch(_batch(), 3)
    assert seen == calls


def test_mixed_batch_pairs_follow_the_smaller_stream_after_pretraining(tmp_path, monkeypatch):
    t = _trainer(tmp_path, "bcp", pretrain=0.5)  # 5 of 10 iterations
    t.copy_student_to_teacher()
    monkeypatch.setattr(t.method, "pseudo_labels", _fake_pseudo_labels)
    batch = _batch(n=4)
    batch["image_u"] = batch["image_u"][:2]  # two unlabeled images: one pair after pre-training
    assert t.method.mixed_batch(batch, 2)["image"].shape[0] == 2  # pre-training: 4 labeled images, pairs of 2
    assert t.method.mixed_batch(batch, 7)["image"].shape[0] == 2  # two directions of one image each
    batch["image_l"], batch["label_l"] = batch["image_l"][:2], batch["label_l"][:2]
    batch["image_u"] = _batch(n=4)["image_u"]
    assert t.method.mixed_batch(batch, 2)["image"].shape[0] == 1  # pre-training uses the labeled count only


def test_pseudo_label_regions_keep_only_confident_voxels(tmp_path):
    m = _trainer(tmp_path, "bcp", pretrain=0.0, pseudo_rampup=0.0, pseudo_weight=0.5).method
    box = _box(1, slice(0, 16), slice(0, 32))
    one = torch.ones(1, H, W)
    weight = torch.full((1, H, W), 0.5)
    weight[0, 4, 4] = weight[0, 20, 20] = 0.0  # two unconfident voxels, one on each side
    gt = (None, None, one, True)
    pseudo = (None, None, weight, False)
    (outer_mask, outer_w), (inner_mask, inner_w) = m.loss_regions(gt, pseudo, box, 3)
    assert torch.equal(outer_mask, 1 - box) and outer_w == 1.0
    assert torch.equal(inner_mask, box * (weight > 0)) and inner_w == pytest.approx(0.5)
    assert inner_mask[0, 4, 4] == 0 and inner_mask.sum() == 16 * 32 - 1


def test_boundaries_along_an_axis_of_two_voxels():
    label = torch.zeros(1, 2, 6, dtype=torch.long)
    label[0, 0] = 1  # the first row is class 1: the boundary runs between the two rows
    b = class_boundaries(label, 2)
    assert b[0, 0].tolist() == [[1.0] * 6, [1.0] * 6]
