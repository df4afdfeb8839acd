"""Each piece of the baselines and of BFA's loss against its published reference, on fixed batches.

For every piece the reference formula is transcribed here, independently of the project's code,
from the public repository named in the comment, and compared with bfaseg's own code on the same
inputs: values (and, for losses, gradients) to 1e-6, precision pinned to fp32.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bfaseg.config import validate_config
from bfaseg.data.batches import TwoStreamBatches
from bfaseg.inference.predictor import inference_fn
from bfaseg.inference.sliding_window import predict_volume
from bfaseg.methods.base import sigmoid_rampup
from bfaseg.methods.bcp import region_loss
from bfaseg.models import VNet
from bfaseg.training.ema import ema_decay, ema_update
from bfaseg.losses import boundary_loss
from bfaseg.training.trainer import Trainer

from conftest import tiny_config


# ----------------------------------------------------------------- reference transcriptions
def ref_sigmoid_rampup(current, rampup_length):
    """yulequan/UA-MT code/utils/ramps.py, sigmoid_rampup (clip, then exp(-5 phase^2))."""
    if rampup_length == 0:
        return 1.0
    current = np.clip(current, 0.0, rampup_length)
    phase = 1.0 - current / rampup_length
    return float(np.exp(-5.0 * phase * phase))


def ref_onehot(label, k):
    return torch.stack([(label == c).float() for c in range(k)], 1)


def ref_la_mask_dice(logits, target, mask):
    """DeepMed-Lab-ECNU/BCP code/utils/losses.py, mask_DiceLoss.forward: softmax, per sample and
    class, intersection and (p + onehot) summed inside the mask, smooth 1e-5, 1 - mean over N x C."""
    n, k = logits.shape[:2]
    p = torch.softmax(logits, 1).reshape(n, k, -1)
    t = ref_onehot(target, k).reshape(n, k, -1)
    m = torch.ones(n, 1, p.shape[2]) if mask is None else mask.reshape(n, 1, -1).float()
    inter = (p * t * m).sum(2)
    union = ((p + t) * m).sum(2)
    return 1 - ((2 * inter + 1e-5) / (union + 1e-5)).mean()


def ref_acdc_dice(probs, target, mask):
    """DeepMed-Lab-ECNU/BCP code/utils/losses.py, DiceLoss.forward with a mask (_dice_mask_loss):
    per class over the whole batch, sum(p^2) + sum(t^2) in the denominator, smooth 1e-10, mean over classes."""
    k = probs.shape[1]
    t = ref_onehot(target, k)
    m = mask.float()
    loss = 0.0
    for c in range(k):
        inter = (probs[:, c] * t[:, c] * m).sum()
        y = (t[:, c] * t[:, c] * m).sum()
        z = (probs[:, c] * probs[:, c] * m).sum()
        loss = loss + 1 - (2 * inter + 1e-10) / (z + y + 1e-10)
    return loss / k


def ref_mix_loss(out, img_l, patch_l, mask, ndim, l_weight=1.0, u_weight=0.5, unlab=False):
    """DeepMed-Lab-ECNU/BCP mix_loss: code/utils/BCP_utils.py (3-D, LA) and code/ACDC_BCP_train.py (2-D).
    ``mask`` is 1 where ``img_l`` lies (outside the pasted box), ``1 - mask`` where ``patch_l`` lies."""
    w_img, w_patch = (u_weight, l_weight) if unlab else (l_weight, u_weight)
    patch_mask = 1 - mask
    if ndim == 3:
        dice = ref_la_mask_dice(out, img_l, mask) * w_img + ref_la_mask_dice(out, patch_l, patch_mask) * w_patch
    else:
        soft = torch.softmax(out, 1)
        dice = ref_acdc_dice(soft, img_l, mask) * w_img + ref_acdc_dice(soft, patch_l, patch_mask) * w_patch
    ce = F.cross_entropy(out, img_l, reduction="none")
    ce_p = F.cross_entropy(out, patch_l, reduction="none")
    loss_ce = w_img * (ce * mask).sum() / (mask.sum() + 1e-16) + w_patch * (ce_p * patch_mask).sum() / (patch_mask.sum() + 1e-16)
    return (dice + loss_ce) / 2


def ref_la_pretrain_loss(out, label):
    """DeepMed-Lab-ECNU/BCP code/LA_BCP_train.py, pre_train: (F.cross_entropy + mask_DiceLoss) / 2 on the mix."""
    return (F.cross_entropy(out, label) + ref_la_mask_dice(out, label, None)) / 2


def ref_ema(ema_params, params, alpha, global_step):
    """yulequan/UA-MT code/train_LA_meanteacher_certainty_unlabel.py, update_ema_variables."""
    alpha = min(1 - 1 / (global_step + 1), alpha)
    return [alpha * e + (1 - alpha) * p for e, p in zip(ema_params, params)]


def ref_test_single_case(net, image, stride_xy, stride_z, patch_size, num_classes):
    """yulequan/UA-MT code/test_util.py, test_single_case (the same function in BCP's test_3d_patch.py):
    pad only short axes (half before), ceil((D - P) / s) + 1 windows per axis, last one flush,
    one window per forward, softmax summed in float32 and divided by the window count, argmax, crop."""
    w, h, d = image.shape
    pads = [max(p - s, 0) for s, p in zip((w, h, d), patch_size)]
    lo = [p // 2 for p in pads]
    image = np.pad(image, [(a, p - a) for a, p in zip(lo, pads)], mode="constant", constant_values=0)
    ww, hh, dd = image.shape
    sx = math.ceil((ww - patch_size[0]) / stride_xy) + 1
    sy = math.ceil((hh - patch_size[1]) / stride_xy) + 1
    sz = math.ceil((dd - patch_size[2]) / stride_z) + 1
    score = np.zeros((num_classes,) + image.shape, dtype=np.float32)
    cnt = np.zeros(image.shape, dtype=np.float32)
    for x in range(sx):
        xs = min(stride_xy * x, ww - patch_size[0])
        for y in range(sy):
            ys = min(stride_xy * y, hh - patch_size[1])
            for z in range(sz):
                zs = min(stride_z * z, dd - patch_size[2])
                patch = image[xs:xs + patch_size[0], ys:ys + patch_size[1], zs:zs + patch_size[2]]
                with torch.no_grad():
                    y_ = torch.softmax(net(torch.from_numpy(patch[None, None].astype(np.float32))), 1)[0].numpy()
                score[:, xs:xs + patch_size[0], ys:ys + patch_size[1], zs:zs + patch_size[2]] += y_
                cnt[xs:xs + patch_size[0], ys:ys + patch_size[1], zs:zs + patch_size[2]] += 1
    score = score / cnt[None]
    label = np.argmax(score, axis=0)
    crop = tuple(slice(a, a + s) for a, s in zip(lo, (w, h, d)))
    return label[crop], score[(slice(None),) + crop]


# ----------------------------------------------------------------------------- fixtures
def _trainer(tmp_path, method, ndim=2, iterations=20, **method_params):
    raw = tiny_config(method, iterations=iterations, precision="fp32")
    if ndim == 3:
        raw["data"].update(synthetic_ndim=3, synthetic_size=[16, 16, 16], patch_size=[16, 16, 16], synthetic_classes=2)
        raw["model"] = {"name": "vnet", "num_classes": 2, "base_channels": 4}
    raw["method"].update(method_params)
    return Trainer(validate_config(raw), tmp_path / method, progress=False)


def _batch(t, n=2):
    first = TwoStreamBatches(t.data.labeled, t.data.unlabeled, batch_labeled=n, batch_unlabeled=n,
                             patch_size=t.patch_size, seed=0, total_iterations=10)[0]
    return {k: t.to_device(v) for k, v in first.items()}


def _grad(loss, x):
    return torch.autograd.grad(loss, x)[0]


# -------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("stage", ["self_train", "pretrain"])
def test_bcp_mixed_loss_equals_reference_mix_loss(tmp_path, ndim, stage):
    """Both mixing directions, self-training (weights 1 and u_weight = 0.5) and pre-training."""
    t = _trainer(tmp_path, "bcp", ndim=ndim, pretrain=5)  # iterations 0-4 pre-train, 5+ self-train
    t.copy_student_to_teacher()
    iteration = 2 if stage == "pretrain" else 7
    torch.manual_seed(0)
    mix = t.method.mixed_batch(_batch(t, 4), iteration)
    box = mix["box"]
    n = box.shape[0]
    torch.manual_seed(1)
    logits = torch.randn((mix["image"].shape[0], t.num_classes) + tuple(box.shape[1:]), requires_grad=True)
    ours = t.method.mixed_loss(logits, mix)

    ref = 0.0
    outside = 1 - box  # the reference's loss_mask: 1 where the outer image lies
    for d, (outer, inner) in enumerate(mix["sources"]):
        out = logits[d * n:(d + 1) * n]
        if stage == "pretrain" and ndim == 3:
            ref = ref + ref_la_pretrain_loss(out, mix["target"][d * n:(d + 1) * n])
        elif stage == "pretrain":  # ACDC pre_train: mix_loss(..., u_weight=1.0, unlab=True)
            ref = ref + ref_mix_loss(out, outer[1], inner[1], outside, ndim, u_weight=1.0, unlab=True)
        else:  # direction a: GT outside (unlab=False); direction b: pseudo-label outside (unlab=True)
            assert outer[3] != inner[3]
            ref = ref + ref_mix_loss(out, outer[1], inner[1], outside, ndim, unlab=not outer[3])
    assert len(mix["sources"]) == (1 if stage == "pretrain" else 2)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-6)
    torch.testing.assert_close(_grad(ours, logits), _grad(ref, logits), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("classes", [2, 4], ids=["la_original", "ssl4mis_2d_port"])
def test_ua_mt_threshold_and_mask_follow_reference(tmp_path, classes):
    """Threshold (0.75 + 0.25 sigmoid_rampup(iter, max_iterations)) ln 2 (yulequan/UA-MT
    train_LA_meanteacher_certainty_unlabel.py); mask = entropy < threshold; consistency =
    sum(mask * mse) / (2 sum(mask)); the certain fraction is logged. The original has two classes (ln 2 = ln K,
    2 = K); SSL4MIS's train_uncertainty_aware_mean_teacher_2D.py keeps ln 2 and the 2 for its four classes,
    as bfaseg's defaults (entropy_bound_classes: 2, consistency_classes: 2) do."""
    total = 6000
    raw = tiny_config("ua_mt", iterations=total, precision="fp32")
    raw["data"]["synthetic_classes"] = classes
    raw["model"]["num_classes"] = classes
    t = Trainer(validate_config(raw), tmp_path / "uamt", progress=False)
    batch = _batch(t)
    spatial = tuple(batch["image_u"].shape[2:])
    n_u = batch["image_u"].shape[0]
    g = torch.Generator().manual_seed(0)
    entropy = torch.rand((n_u,) + spatial, generator=g) * math.log(2)  # spread over [0, ln 2)
    teacher_logits = torch.randn((n_u, classes) + spatial, generator=g)
    logits = torch.randn((2 * n_u, classes) + spatial, generator=g, requires_grad=True)
    t.method.uncertainty = lambda x: entropy
    t.teacher_forward = lambda x: teacher_logits
    t.method.student = lambda x: logits
    fractions = []
    for it in [0, 1000, 2400, 3000, 4500, 5999]:
        ref_thr = (0.75 + 0.25 * ref_sigmoid_rampup(it, total)) * np.log(2)
        assert t.method.threshold(it) == pytest.approx(ref_thr, abs=1e-9)
        _, logs = t.method.training_step(batch, it)
        mask = (entropy < ref_thr).float().unsqueeze(1)
        dist = (torch.softmax(logits[n_u:], 1) - torch.softmax(teacher_logits, 1)) ** 2
        ref_cons = (mask * dist).sum() / (2 * mask.sum() + 1e-16)
        assert logs["certain"].item() == pytest.approx(mask.mean().item(), abs=1e-7)
        assert logs["consistency"].item() == pytest.approx(ref_cons.item(), abs=1e-6)
        fractions.append(logs["certain"].item())
    assert fractions == sorted(fractions) and fractions[3] < 0.95  # still uncertain voxels at half the run


def test_ua_mt_k_class_constants_follow_the_number_of_classes(tmp_path):
    """With entropy_bound_classes and consistency_classes null, four classes give the bound ln 4 and the mean
    over the 4 classes: half the reference's consistency term on the same batch."""
    raw = tiny_config("ua_mt", iterations=100, precision="fp32")
    raw["method"].update(entropy_bound_classes=None, consistency_classes=None)
    raw["data"]["synthetic_classes"] = raw["model"]["num_classes"] = 4
    t = Trainer(validate_config(raw), tmp_path / "uamt", progress=False)
    assert t.method.threshold(99) == pytest.approx(math.log(4) * (0.75 + 0.25 * ref_sigmoid_rampup(99, 100)))
    batch = _batch(t)
    n_u = batch["image_u"].shape[0]
    g = torch.Generator().manual_seed(1)
    teacher_logits = torch.randn((n_u, 4) + tuple(batch["image_u"].shape[2:]), generator=g)
    logits = torch.randn((2 * n_u,) + tuple(teacher_logits.shape[1:]), generator=g)
    t.method.uncertainty = lambda x: torch.zeros(teacher_logits[:, 0].shape)  # every voxel certain
    t.teacher_forward = lambda x: teacher_logits
    t.method.student = lambda x: logits
    _, logs = t.method.training_step(batch, 50)
    t.method.p.consistency_classes = 2
    _, port = t.method.training_step(batch, 50)
    assert port["consistency"].item() == pytest.approx(2 * logs["consistency"].item(), rel=1e-6)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_ua_mt_monte_carlo_passes_use_the_teacher_mode_with_dropout(tmp_path, mode):
    """The uncertainty passes normalise as the consistency target does (train mode: each pass its own batch,
    as the reference, which never calls ema_model.eval()), always with dropout on; the mode stays after."""
    raw = tiny_config("ua_mt", precision="fp32")
    raw["train"]["teacher_mode"] = mode
    t = Trainer(validate_config(raw), tmp_path / "uamt", progress=False)
    seen = []
    norms = [m for m in t.teacher.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    drops = [m for m in t.teacher.modules() if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d))]
    assert norms and drops
    hook = norms[0].register_forward_pre_hook(lambda m, a: seen.append((m.training, all(d.training for d in drops))))
    t.method.uncertainty(_batch(t)["image_u"])
    hook.remove()
    assert seen == [(mode == "train", True)] * t.method.p.mc_passes
    assert all(m.training == (mode == "train") for m in norms + drops)


def test_mean_teacher_consistency_weight_and_ema_follow_reference(tmp_path):
    """consistency * sigmoid_rampup(iter_num // 150, consistency_rampup) with rampup x 150 = the run,
    and the EMA warm-up alpha = min(1 - 1 / (step + 1), 0.99) (yulequan/UA-MT train_LA_*.py)."""
    t = _trainer(tmp_path, "mean_teacher", iterations=6000)
    for it in [0, 149, 150, 151, 1000, 2999, 3000, 4567, 5999, 6000]:
        assert t.method.consistency_weight(it) == pytest.approx(0.1 * ref_sigmoid_rampup(it // 150, 40.0), abs=1e-9)

    torch.manual_seed(0)
    student, teacher = VNet(1, 2, base=4), VNet(1, 2, base=4)
    ema = [p.detach().clone() for p in teacher.parameters()]
    for step in range(4):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(0.1 * torch.randn_like(p))  # an optimizer step
        ema_update(teacher, student, ema_decay(step, 0.99))
        ema = ref_ema(ema, [p.detach() for p in student.parameters()], 0.99, step)
        for ours, ref in zip(teacher.parameters(), ema):
            torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert ema_decay(0, 0.99) == 0.0  # step 0: the teacher becomes a copy of the student


def test_bfa_pseudo_boundary_term_scales_with_its_weight(tmp_path, monkeypatch):
    """The pseudo-label boundary term enters the loss as lambda_boundary x ramp x pseudo_weight(iteration)
    x the region's boundary loss, like the pseudo-label segmentation term (BFA has no public code: the
    reference here is the weight of BCP's pseudo-label region). The coefficient is read exactly as the
    derivative of the loss by a probe added to that term; the region loss does not depend on the weight."""
    import bfaseg.methods.bfa as bfa_module

    t = _trainer(tmp_path, "bfa", pretrain=5)
    t.copy_student_to_teacher()
    batch = _batch(t)
    iteration = 6  # first self-training steps: the pseudo weight is still ramping
    calls = []

    def probed(logits, target, mask=None):
        value = boundary_loss(logits, target, mask)
        probe = torch.zeros((), requires_grad=True)
        calls.append((value.detach(), probe))
        return value + probe

    monkeypatch.setattr(bfa_module, "boundary_loss", probed)
    coefficient, region_loss_value = {}, {}
    for weight in (0.5, 0.25, 1e-4):
        t.method.p.pseudo_weight = weight
        calls.clear()
        torch.manual_seed(0)
        loss, logs = t.method.training_step(batch, iteration)
        (_, probe_gt), (value_ps, probe_ps) = calls  # ground-truth term first, pseudo-label term second
        g_gt, g_ps = torch.autograd.grad(loss, [probe_gt, probe_ps])
        ramp_b = sigmoid_rampup(iteration, t.method.fraction_to_iterations(t.method.p.boundary_rampup))
        assert g_gt.item() == pytest.approx(t.method.p.lambda_boundary * ramp_b, rel=1e-6)
        assert g_ps.item() == pytest.approx(t.method.p.lambda_boundary * ramp_b * t.method.pseudo_weight(iteration), rel=1e-6)
        assert value_ps.item() == logs["boundary_pseudo"].item()
        coefficient[weight], region_loss_value[weight] = g_ps.item(), value_ps.item()
        # the segmentation loss of the pseudo-label regions carries the same weight
        torch.manual_seed(0)
        mix = t.method.mixed_batch(batch, iteration)
        assert sorted(w for regions in mix["regions"] for _, w in regions) == [t.method.pseudo_weight(iteration)] * 2 + [1.0] * 2
    assert 0 < t.method.pseudo_weight(iteration) < 0.5 * t.method.p.pseudo_weight  # ramping, not switched on
    assert coefficient[0.25] == pytest.approx(coefficient[0.5] / 2, rel=1e-6)
    assert coefficient[1e-4] == pytest.approx(coefficient[0.5] * 2e-4, rel=1e-6)
    assert region_loss_value[0.5] == region_loss_value[0.25] == region_loss_value[1e-4]


def test_boundary_loss_class_balance_ignores_weight_scale():
    """boundary_loss takes a 0/1 region mask; scaling the term outside scales value and gradient exactly."""
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 12, 12, requires_grad=True)
    target = (torch.rand(2, 2, 12, 12) > 0.85).float()
    region = (torch.rand(2, 12, 12) > 0.5).float()
    base = boundary_loss(logits, target, region)
    base_grad = _grad(base, logits)
    for w in (1.0, 0.5, 1e-4):
        scaled = w * boundary_loss(logits, target, region)
        assert scaled.item() == pytest.approx(w * base.item(), rel=1e-6)
        torch.testing.assert_close(_grad(scaled, logits), w * base_grad, rtol=1e-6, atol=1e-12)
    with pytest.raises(AssertionError):  # the old way, a weight map w x region, cancelled the weight
        torch.testing.assert_close(boundary_loss(logits, target, 0.5 * region), 0.5 * base)


def test_paper_sliding_window_equals_reference_test_single_case():
    """Paper mode vs a transcription of test_single_case on a small fixed V-Net and volume.

    Promised: through the Python API (contiguous memory) the probabilities are bit-equal; through
    ``inference_fn`` (the CLI's channels-last model) the labels are identical and the probabilities
    agree to 1e-5 (the convolutions sum in another order, so the last bits may differ)."""
    torch.manual_seed(0)
    net = VNet(1, 2, base=4).eval()
    vol = np.random.default_rng(0).standard_normal((22, 19, 18)).astype(np.float32)
    patch, sxy, sz = (16, 16, 16), 4, 3
    ref_labels, ref_probs = ref_test_single_case(net, vol, sxy, sz, patch, num_classes=2)
    with torch.no_grad():
        labels, probs = predict_volume(vol, net, patch, mode="paper", stride=(sxy, sxy, sz), return_probs=True)
    assert np.array_equal(labels, ref_labels) and np.array_equal(probs.numpy(), ref_probs)
    fn = inference_fn(net, 3)
    with torch.no_grad():
        labels_cl, probs_cl = predict_volume(vol, fn, patch, mode="paper", stride=(sxy, sxy, sz), return_probs=True)
    assert np.array_equal(labels_cl, ref_labels)
    np.testing.assert_allclose(probs_cl.numpy(), ref_probs, rtol=0, atol=1e-5)


def test_region_loss_is_reference_mix_loss_on_hand_made_masks():
    """region_loss alone, both Dice flavours, against mix_loss with an arbitrary (non-box) mask."""
    torch.manual_seed(0)
    for ndim, shape in ((2, (3, 4, 10, 12)), (3, (2, 2, 6, 7, 5))):
        logits = torch.randn(shape, requires_grad=True)
        k = shape[1]
        a = torch.randint(0, k, (shape[0],) + shape[2:])
        b = torch.randint(0, k, (shape[0],) + shape[2:])
        mask = (torch.rand((shape[0],) + shape[2:]) > 0.4).float()
        target = torch.where(mask.bool(), a, b)
        ours = region_loss(logits, target, [(mask, 1.0), (1 - mask, 0.5)])
        ref = ref_mix_loss(logits, a, b, mask, ndim)
        assert ours.item() == pytest.approx(ref.item(), abs=1e-6)
        torch.testing.assert_close(_grad(ours, logits), _grad(ref, logits), rtol=1e-5, atol=1e-9)
