"""BFA's alignment forms by hand: the voxel-to-prototype cosine and the contrastive (InfoNCE) form,
their anchors (batch or EMA memory), and the gradient-share diagnostic that tells whether a term moves
anything."""

import math

import pytest
import torch
import torch.nn.functional as F

from bfaseg.config import validate_config
from bfaseg.training.diagnostics import gradient_shares
from bfaseg.training.trainer import Trainer

from conftest import tiny_config

K = 3


def _trainer(tmp_path, ndim=2, **params):
    raw = tiny_config("bfa", iterations=10, precision="fp32")
    raw["model"].update(base_channels=4)
    if ndim == 3:  # LA's kind of run: a V-Net on volumes
        raw["data"].update(synthetic_ndim=3, synthetic_size=[16, 16, 16], patch_size=[16, 16, 16])
        raw["model"].update(name="vnet")
    # each test names the form and anchors it checks; the rest start from the first form with batch anchors
    raw["method"].update({"align_form": "prototype", "align_target": "gt", **params})
    return Trainer(validate_config(raw), tmp_path / "bfa", progress=False)


def _voxel_inputs():
    """GT side (cols 0-3): class-1 boundary voxels of feature g1. Pseudo side (cols 4-7): class-1 boundary
    voxels whose MEAN is g1's direction but whose voxels are 45 degrees off it."""
    feats = torch.zeros(1, 3, 8, 8)
    boundary = torch.zeros(1, 2, 8, 8)
    origin = torch.zeros(1, 8, 8)
    origin[:, :, :4] = 1.0
    boundary[0, 0, 0, :] = 1
    feats[0, :, 0, 0:4] = torch.tensor([1.0, 0.0, 0.0])[:, None]
    feats[0, :, 0, 4:6] = torch.tensor([1.0, 1.0, 0.0])[:, None]
    feats[0, :, 0, 6:8] = torch.tensor([1.0, -1.0, 0.0])[:, None]
    return feats, boundary, origin, torch.ones(1, 8, 8)


def test_voxel_form_sees_the_spread_that_the_prototype_form_misses(tmp_path):
    feats, boundary, origin, keep = _voxel_inputs()
    proto = _trainer(tmp_path / "p", min_boundary_voxels=2).method
    assert proto.alignment_loss(feats, boundary, origin, keep).item() == pytest.approx(0.0, abs=1e-6)
    voxel = _trainer(tmp_path / "v", align_form="voxel", min_boundary_voxels=2).method
    feats.requires_grad_(True)
    loss = voxel.alignment_loss(feats, boundary, origin, keep)
    assert loss.item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)  # each voxel is 45 degrees off
    loss.backward()
    g = feats.grad.abs().sum(1)[0]
    assert g[0, :4].sum() == 0 and (g[0, 4:] > 0).all()  # the GT prototype is the (detached) target
    assert g[1:].sum() == 0


def test_voxel_form_leaves_out_unconfident_voxels_and_thin_classes(tmp_path):
    feats, boundary, origin, keep = _voxel_inputs()
    keep[0, 0, 6:8] = 0  # the two voxels at -45 degrees are unconfident
    m = _trainer(tmp_path, align_form="voxel", min_boundary_voxels=2).method
    assert m.alignment_loss(feats, boundary, origin, keep).item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    m.p.min_boundary_voxels = 3  # the pseudo side of class 1 has 2 voxels left: nothing valid
    feats.requires_grad_(True)
    zero = m.alignment_loss(feats, boundary, origin, keep)
    assert zero.item() == 0.0 and zero.requires_grad


def _contrast_inputs():
    """One 8x8 sample, GT on cols 0-3, pseudo on cols 4-7; every anchor a distinct direction."""
    feats = torch.zeros(1, 3, 8, 8)
    boundary = torch.zeros(1, 2, 8, 8)
    origin = torch.zeros(1, 8, 8)
    origin[:, :, :4] = 1.0
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    a1, a2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    i0, i1, i2 = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 1.0]), torch.tensor([-1.0, 0.0, 1.0])
    boundary[0, 0, 0, 0:4], feats[0, :, 0, 0:4] = 1, a1[:, None]  # GT boundary of class 1
    boundary[0, 1, 1, 0:4], feats[0, :, 1, 0:4] = 1, a2[:, None]  # GT boundary of class 2
    label[0, 2:4], feats[0, :, 2:4, 0:4] = 0, i0[:, None, None]  # GT interiors (off every band)
    label[0, 4:6], feats[0, :, 4:6, 0:4] = 1, i1[:, None, None]
    label[0, 6:8], feats[0, :, 6:8, 0:4] = 2, i2[:, None, None]
    q, r = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([1.0, 2.0, 0.5])
    boundary[0, 0, 0, 4:8], feats[0, :, 0, 4:8] = 1, q[:, None]  # pseudo class-1 boundary voxels
    boundary[0, :, 1, 4], feats[0, :, 1, 4] = 1, r  # one pseudo voxel on the bands of classes 1 AND 2
    return feats, boundary, origin, torch.ones(1, 8, 8), label, (a1, a2, i0, i1, i2, q, r)


def _nll(x, anchors, positive, tau):
    logits = torch.stack([F.cosine_similarity(x, a, dim=0) for a in anchors]) / tau
    return -(logits[positive] - torch.logsumexp(logits, 0)).item()


def test_contrast_form_by_hand(tmp_path):
    feats, boundary, origin, keep, label, (a1, a2, i0, i1, i2, q, r) = _contrast_inputs()
    m = _trainer(tmp_path, align_form="contrast", align_temperature=0.5, min_boundary_voxels=1).method
    feats.requires_grad_(True)
    loss = m.alignment_loss(feats, boundary, origin, keep, label)
    tau = 0.5
    # class 1: four q voxels against all five anchors; r against all but class 2's boundary (it lies on it)
    class1 = (4 * _nll(q, [a1, a2, i0, i1, i2], 0, tau) + _nll(r, [a1, i0, i1, i2], 0, tau)) / 5
    class2 = _nll(r, [a2, i0, i1, i2], 0, tau)  # r as a class-2 voxel: class 1's boundary is no negative
    assert loss.item() == pytest.approx((class1 + class2) / 2, rel=1e-5)
    loss.backward()
    g = feats.grad.abs().sum(1)[0]
    assert g[:, :4].sum() == 0  # anchors are detached: the ground-truth side does not move
    assert (g[0, 4:] > 0).all() and g[1, 4] > 0 and g[1, 5:].sum() == 0


def test_contrast_form_needs_the_targets_and_skips_unseen_anchors(tmp_path):
    feats, boundary, origin, keep, label, (a1, a2, i0, i1, i2, q, r) = _contrast_inputs()
    m = _trainer(tmp_path, align_form="contrast", align_temperature=0.5, min_boundary_voxels=1).method
    with pytest.raises(ValueError, match="targets"):
        m.alignment_loss(feats, boundary, origin, keep)
    label[0, 6:8] = 1  # no class-2 interior left: that anchor is unseen and no negative
    loss = m.alignment_loss(feats, boundary, origin, keep, label)
    # rows 4-7 are class 1 now; their features are i1 (rows 4-5) and i2 (rows 6-7): the anchor is the mean
    i1_mean = (2 * i1 + 2 * i2) / 4
    class1 = (4 * _nll(q, [a1, a2, i0, i1_mean], 0, 0.5) + _nll(r, [a1, i0, i1_mean], 0, 0.5)) / 5
    class2 = _nll(r, [a2, i0, i1_mean], 0, 0.5)
    assert loss.item() == pytest.approx((class1 + class2) / 2, rel=1e-5)


def test_anchor_memory_starts_unseen_then_follows_the_momentum_and_resumes(tmp_path):
    feats, boundary, origin, keep, label, (a1, a2, i0, i1, i2, q, r) = _contrast_inputs()
    t = _trainer(tmp_path, align_form="contrast", align_target="memory", memory_momentum=0.75, min_boundary_voxels=1)
    m = t.method
    boundary2, feats2 = boundary.clone(), feats.clone()
    boundary2[0, 1, 1, 0:4] = 0  # class 2's GT boundary unseen in the first batch
    m.alignment_loss(feats2, boundary2, origin, keep, label)
    assert torch.isnan(m.anchor_memory[1]).all() and torch.allclose(m.anchor_memory[0], a1)
    feats3 = feats.clone()
    feats3[0, :, 0, 0:4] = a2[:, None]  # class 1's GT boundary now looks like a2
    m.alignment_loss(feats3, boundary, origin, keep, label)
    assert torch.allclose(m.anchor_memory[0], 0.75 * a1 + 0.25 * a2)  # momentum
    assert torch.allclose(m.anchor_memory[1], a2)  # first sighting: taken as it is
    # background interior: the first batch also counted row 1 (off every band then, features a2)
    assert torch.allclose(m.anchor_memory[2], 0.75 * (4 * a2 + 8 * i0) / 12 + 0.25 * i0)
    assert torch.allclose(m.anchor_memory[3:], torch.stack([i1, i2]))
    assert torch.equal(m.state_dict()["anchor_memory"], m.anchor_memory)
    fresh = _trainer(tmp_path / "fresh", align_form="contrast", align_target="memory").method
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.anchor_memory, m.anchor_memory)


def test_at_most_align_max_voxels_queries(tmp_path):
    feats, boundary, origin, keep = _voxel_inputs()
    m = _trainer(tmp_path, align_form="voxel", align_max_voxels=3, min_boundary_voxels=1).method
    q, bands = m.pseudo_queries(feats, boundary * (origin <= 0.5).unsqueeze(1))
    assert q.shape == (3, 3) and bands.shape == (3, 2) and bands[:, 0].all()
    assert torch.allclose(q.norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("form", ["prototype", "voxel", "contrast"])
def test_training_step_trains_every_form(tmp_path, form, ndim):
    t = _trainer(tmp_path, ndim, pretrain=0.0, align_form=form, min_boundary_voxels=1)
    t.copy_student_to_teacher()
    from bfaseg.data.batches import TwoStreamBatches

    b = TwoStreamBatches(t.data.labeled, t.data.unlabeled, batch_labeled=2, batch_unlabeled=2,
                         patch_size=t.patch_size, seed=0, total_iterations=10)[3]
    loss, logs = t.method.training_step(b, 3)
    assert "align" in logs and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in t.student.parameters() if p.grad is not None)


def test_gradient_shares_name_every_term_and_a_switched_off_term_moves_nothing(tmp_path):
    t = _trainer(tmp_path, pretrain=0.2, align_form="voxel", min_boundary_voxels=1)
    t.copy_student_to_teacher()
    out = gradient_shares(t, [4, 5])
    terms = out["terms"]
    assert set(terms) == {"seg", "sup", "boundary_gt", "boundary_pseudo", "align", "total"}
    assert terms["total"]["share_network"] == pytest.approx(1.0) and terms["total"]["share_features"] == pytest.approx(1.0)
    assert all(terms[k]["network"] > 0 for k in ("seg", "sup", "boundary_gt"))
    # the features are the ones the head reads: its own loss reaches them, not only the segmentation's
    assert terms["boundary_gt"]["features"] > 0 and terms["align"]["features"] > 0
    t2 = _trainer(tmp_path / "off", pretrain=0.2, align_form="voxel", lambda_align=0.0, min_boundary_voxels=1)
    t2.copy_student_to_teacher()
    off = gradient_shares(t2, [4])["terms"]["align"]
    assert off["network"] == 0.0 and off["features"] == 0.0


# ------------------------------------------------------------- pseudo-label boundary from the teacher's head
def test_teacher_head_boundaries_replace_the_pseudo_sources_only(tmp_path, monkeypatch):
    from bfaseg.methods import bcp as bcp_module
    from bfaseg.methods.boundary import class_boundaries

    t = _trainer(tmp_path, pretrain=0.0, pseudo_boundary="teacher_head", min_boundary_voxels=1)
    t.copy_student_to_teacher()
    m = t.method
    from bfaseg.data.batches import TwoStreamBatches

    batch = TwoStreamBatches(t.data.labeled, t.data.unlabeled, batch_labeled=4, batch_unlabeled=4,
                             patch_size=t.patch_size, seed=0, total_iterations=10)[3]
    box = torch.zeros(2, *t.patch_size)
    box[:, 4:20, 2:18] = 1.0
    monkeypatch.setattr(bcp_module, "cuboid_mask", lambda shape, n, fraction, device, **kw: box[:n].clone())
    mix = m.mixed_batch(batch, 3)
    x_u = batch["image_u"]
    out = t.teacher_forward(torch.cat([x_u[:2], x_u[2:4]]), return_extras=True)  # one pass: eval-mode teacher
    want = torch.sigmoid(F.interpolate(out["boundary"], size=t.patch_size, mode="bilinear", align_corners=False))
    assert torch.allclose(mix["teacher_boundary"], want, atol=1e-6)
    soft, hard = m.mixed_boundaries(mix, soft=True), m.mixed_boundaries(mix)
    b = box[:, None]
    y_l = batch["label_l"]
    # direction 1: labeled outside (hard GT boundaries), pseudo inside (teacher head); direction 2: the reverse
    assert torch.allclose(soft[:2], class_boundaries(y_l[:2], K) * (1 - b) + want[:2] * b)
    assert torch.allclose(soft[2:], want[2:] * (1 - b) + class_boundaries(y_l[2:4], K) * b)
    assert torch.equal(soft[:2] * (1 - b), hard[:2] * (1 - b))  # the GT parts are the same hard maps
    assert not torch.equal(soft, hard) and ((soft > 0) & (soft < 1)).any()
    labels, keep = m.labels_from_logits(out["logits"])
    pl_in_mix = mix["target"][:2] * box.long()
    assert torch.equal(pl_in_mix, labels[:2] * box.long())  # pseudo-labels are BCP's from the same pass


def test_teacher_head_targets_feed_the_pseudo_term_only(tmp_path, monkeypatch):
    from bfaseg.losses import boundary_loss
    from bfaseg.methods import bfa as bfa_module

    t = _trainer(tmp_path, pretrain=0.0, pseudo_boundary="teacher_head", min_boundary_voxels=1)
    t.copy_student_to_teacher()
    from bfaseg.data.batches import TwoStreamBatches

    batch = TwoStreamBatches(t.data.labeled, t.data.unlabeled, batch_labeled=2, batch_unlabeled=2,
                             patch_size=t.patch_size, seed=0, total_iterations=10)[3]
    calls, aligned = [], []
    monkeypatch.setattr(bfa_module, "boundary_loss", lambda *a: calls.append(a) or boundary_loss(*a))
    orig = t.method.alignment_loss
    monkeypatch.setattr(t.method, "alignment_loss", lambda *a: aligned.append(a) or orig(*a))
    loss, logs = t.method.training_step(batch, 3)
    (_, gt_target, _), (_, ps_target, _) = calls
    assert set(gt_target.unique().tolist()) <= {0.0, 1.0}  # the GT term keeps hard boundaries
    assert ((ps_target > 0) & (ps_target < 1)).any()  # the pseudo term learns the teacher's soft maps
    assert set(aligned[0][1].unique().tolist()) <= {0.0, 1.0}  # alignment masks stay hard
    assert torch.isfinite(loss) and "boundary_pseudo" in logs


def test_teacher_head_needs_the_head(tmp_path):
    from bfaseg.errors import BfasegError

    with pytest.raises(BfasegError, match=r"^config: method: pseudo_boundary: teacher_head needs boundary_head: true$"):
        _trainer(tmp_path, pseudo_boundary="teacher_head", boundary_head=False)


def test_pseudo_boundary_errors_by_region(tmp_path, monkeypatch):
    from bfaseg.training.diagnostics import pseudo_boundary_errors

    t = _trainer(tmp_path, pretrain=0.0, min_boundary_voxels=1)
    t.copy_student_to_teacher()
    # a teacher that is exactly right: its pseudo-label errors are 0 everywhere
    from bfaseg.data import batches as batches_module

    truth = {}
    orig = batches_module.TwoStreamBatches.__getitem__

    def remember(self, it):
        b = orig(self, it)
        truth["last"] = b.get("label_u")
        return b

    monkeypatch.setattr(batches_module.TwoStreamBatches, "__getitem__", remember)
    monkeypatch.setattr(t.method, "pseudo_labels", lambda x: (truth["last"], torch.ones(x.shape[0], *x.shape[2:])))
    out = pseudo_boundary_errors(t, [2, 3])
    assert out["near"]["teacher_error"] == 0 and out["far"]["teacher_error"] == 0
    assert 0 < out["near"]["voxel_share"] < 1 and out["near"]["voxel_share"] + out["far"]["voxel_share"] == pytest.approx(1)
    assert 0 <= out["near"]["student_error"] <= 1 and 0 <= out["near"]["head_f1"] <= 1
    assert t.student.training  # left in training mode


def test_the_default_is_the_contrast_form_on_memory_anchors():
    """Chosen on ACDC val over the prototype form (docs/RESULTS.md, "BFA ablation, alignment and mixing forms")."""
    from bfaseg.methods.bfa import BFAParams

    p = BFAParams()
    assert (p.align_form, p.align_target, p.lambda_align) == ("contrast", "memory", 0.1)
