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
