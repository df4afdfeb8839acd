import pytest
import torch

from bfaseg.models import UNet2D, VNet, count_parameters
from bfaseg.losses import boundary_loss, dice_ce_loss, soft_dice_loss, weighted_ce


def test_parameter_counts_match_the_reference():
    assert abs(count_parameters(VNet(1, 2)) - 9.45e6) < 0.01e6
    assert abs(count_parameters(UNet2D(1, 4)) - 1.81e6) < 0.01e6


@pytest.mark.parametrize("cls,shape", [(VNet, (1, 1, 32, 32, 16)), (UNet2D, (2, 1, 48, 48))])
def test_shapes_and_features(cls, shape):
    model = cls(1, 3)
    out = model(torch.randn(shape), return_extras=True)
    assert out["logits"].shape == (shape[0], 3, *shape[2:])
    assert len(out["features"]) == 4 and out["boundary"] is None
    assert [f.shape[1] for f in out["features"]] == model.decoder_channels
    assert model(torch.randn(shape)).shape == out["logits"].shape


def test_boundary_head_is_identity_at_init():
    torch.manual_seed(0)
    model = UNet2D(1, 4).eval()
    x = torch.randn(2, 1, 32, 32)
    before = model(x)
    model.add_boundary_head(1, 3)
    model.eval()
    out = model(x, return_extras=True)
    assert out["boundary"].shape == (2, 3, 8, 8)
    assert torch.allclose(out["logits"], before, atol=1e-6)


def test_dice_known_values():
    target = torch.tensor([[0, 1], [1, 1]]).unsqueeze(0)
    perfect = torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float()
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-5)
    wrong = 1 - perfect
    assert soft_dice_loss(wrong, target).item() == pytest.approx(1.0, abs=1e-4)
    # half right: class 1 probs 0.5 everywhere -> dice_1 = 2*1.5/(2+3)=0.6 ; class 0: 2*.5/(2+1)=1/3
    half = torch.full((1, 2, 2, 2), 0.5)
    assert soft_dice_loss(half, target).item() == pytest.approx(1 - (0.6 + 1 / 3) / 2, abs=1e-4)


def test_weighted_ce_ignores_zero_weight():
    logits = torch.tensor([[[[5.0, -5.0]], [[-5.0, 5.0]]]])  # 1x2x1x2 predicts [0, 1]
    target = torch.tensor([[[0, 0]]])
    w = torch.tensor([[[1.0, 0.0]]])
    assert weighted_ce(logits, target, w).item() < 1e-3
    assert weighted_ce(logits, target).item() > 4


def test_dice_ce_is_float32_under_bf16():
    logits = torch.randn(2, 3, 8, 8, dtype=torch.bfloat16, requires_grad=True)
    loss = dice_ce_loss(logits, torch.randint(0, 3, (2, 8, 8)))
    assert loss.dtype == torch.float32
    loss.backward()


def test_boundary_loss_rewards_correct_boundaries():
    target = torch.zeros(1, 1, 16, 16)
    target[0, 0, 4, 2:14] = 1
    good = boundary_loss(target * 20 - 10, target)
    bad = boundary_loss(-target * 20 + 10, target)
    assert good < 0.05 < bad


def _boundary_loss_by_hand(logits, target, mask):
    """boundary_loss written out over the voxels of the region: balanced BCE + soft Dice per channel."""
    import math

    n, c = target.shape[:2]
    region = [(i, k, idx) for i in range(n) for k in range(c) for idx in zip(*torch.nonzero(mask[i], as_tuple=True))]
    pos = sum(float(target[i, k][idx]) for i, k, idx in region)
    neg = len(region) - pos
    pos_weight = min(max(neg / max(pos, 1.0), 1.0), 50.0)
    num = den = 0.0
    inter, p_sum, t_sum = [0.0] * c, [0.0] * c, [0.0] * c
    for i, k, idx in region:
        x, t = float(logits[i, k][idx]), float(target[i, k][idx])
        p = 1 / (1 + math.exp(-x))
        a = pos_weight if t == 1 else 1.0
        num += a * -(t * math.log(p) + (1 - t) * math.log(1 - p))
        den += a
        inter[k] += p * t
        p_sum[k] += p
        t_sum[k] += t
    dice = 1 - sum((2 * inter[k] + 1e-5) / (p_sum[k] + t_sum[k] + 1e-5) for k in range(c)) / c
    return 0.5 * (num / den + dice), pos_weight


# (voxels in the region, positives among them) -> positive weight 19 (one positive), capped at 50 (ratio 51), floored at 1, ~20
@pytest.mark.parametrize("size,positives,pos_weight", [(20, 1, 19.0), (104, 2, 50.0), (20, 15, 1.0), (128, 6, 122 / 6)])
def test_boundary_loss_balances_by_the_region_counts(size, positives, pos_weight):
    g = torch.Generator().manual_seed(size)
    logits = torch.randn(1, 2, 16, 16, generator=g)
    mask = torch.zeros(1, 16, 16)
    mask.view(-1)[: size // 2] = 1  # size/2 voxels per channel x 2 channels = size voxels
    target = torch.zeros(1, 2, 16, 16)
    region = mask[0].view(-1).nonzero().flatten()
    target[0, 0].view(-1)[region[: (positives + 1) // 2]] = 1  # positives split over the two channels
    target[0, 1].view(-1)[region[: positives // 2]] = 1
    target[0, :, 15, 15] = 1  # positives outside the region are ignored
    expected, weight = _boundary_loss_by_hand(logits, target, mask)
    assert weight == pytest.approx(pos_weight)
    assert boundary_loss(logits, target, mask).item() == pytest.approx(expected, rel=1e-5)


def test_distance_loss_weighted_mean_with_a_light_weight_map():
    from bfaseg.losses import distance_loss

    g = torch.Generator().manual_seed(0)
    logits, phi = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 2, 8, 8, generator=g)
    weight = torch.zeros(2, 8, 8)
    weight[0, 2:4, 2:5] = 0.05  # total 0.3: a weighted mean, not a weighted sum, and no floor at 1
    weight[1, 5, 5] = 0.0
    cost = (torch.softmax(logits, 1)[:, 1:] * phi).sum(1)
    expected = (cost[0, 2:4, 2:5]).mean()
    assert distance_loss(logits, phi, weight).item() == pytest.approx(expected.item(), rel=1e-5)
    assert distance_loss(logits, phi).item() == pytest.approx(cost.mean().item(), rel=1e-6)


def _by_hand_dice(probs, onehot, w, dims):
    inter = (w * probs * onehot).sum(dims)
    denom = (w * probs).sum(dims) + (w * onehot).sum(dims)
    return inter, denom


def test_losses_by_hand_with_weights_and_an_absent_class():
    import torch.nn.functional as F

    from bfaseg.losses import masked_ce, masked_dice_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, 6, generator=g)
    target = torch.randint(0, 3, (3, 5, 6), generator=g)  # class 3 absent from the target
    weight = torch.rand(3, 5, 6, generator=g)
    probs = torch.softmax(logits, 1)
    onehot = F.one_hot(target, 4).movedim(-1, 1).float()
    ce = F.cross_entropy(logits, target, reduction="none")

    assert weighted_ce(logits, target, weight).item() == pytest.approx(((ce * weight).sum() / weight.sum()).item(), rel=1e-6)
    light = weight * 1e-3  # a total weight below 1: divided by it, not by a clamp
    assert weighted_ce(logits, target, light).item() == pytest.approx(((ce * light).sum() / light.sum()).item(), rel=1e-6)
    inter, denom = _by_hand_dice(probs, onehot, weight[:, None], (0, 2, 3))
    dice = 1 - ((2 * inter + 1e-5) / (denom + 1e-5)).mean()
    assert soft_dice_loss(probs, target, weight).item() == pytest.approx(dice.item(), rel=1e-6)
    assert dice_ce_loss(logits, target, weight).item() == pytest.approx(
        0.5 * (weighted_ce(logits, target, weight) + soft_dice_loss(probs, target, weight)).item(), rel=1e-6)
    assert dice_ce_loss(logits, target).item() == pytest.approx(
        0.5 * (ce.mean() + soft_dice_loss(probs, target)).item(), rel=1e-6)

    # a class absent from prediction and target scores Dice 1 (eps / eps), not 0 or -1
    hard = onehot.clone()
    assert soft_dice_loss(hard, target).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(hard, target, weight).item() == pytest.approx(0.0, abs=1e-6)

    mask = (weight > 0.4).float()
    for per_sample, squared in ((True, False), (False, True)):
        dims = (2, 3) if per_sample else (0, 2, 3)
        m = mask[:, None]
        inter = (probs * onehot * m).sum(dims)
        denom = ((probs * probs if squared else probs) * m).sum(dims) + (onehot * m).sum(dims)
        want = 1 - ((2 * inter + 0.5) / (denom + 0.5)).mean()
        got = masked_dice_loss(probs, target, mask, per_sample=per_sample, squared=squared, eps=0.5)
        assert got.item() == pytest.approx(want.item(), rel=1e-6), (per_sample, squared)
    assert masked_dice_loss(onehot, target, mask, per_sample=True, squared=True, eps=1e-5).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_ce(logits, target, mask).item() == pytest.approx(((ce * mask).sum() / mask.sum()).item(), rel=1e-6)
    assert masked_ce(logits, target, torch.zeros_like(mask)).item() == 0.0  # an empty region adds nothing


def test_boundary_loss_of_an_empty_class_is_perfect_dice():
    target = torch.zeros(1, 2, 4, 4)
    target[0, 0, 1:3, 1:3] = 1  # class 2's boundary map is empty
    logits = torch.where(target > 0, 30.0, -30.0)
    assert boundary_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
