"""Segmentation losses with per-voxel weights; always computed in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(
    probs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-5
) -> torch.Tensor:
    """Multi-class soft Dice (mean over classes 0..K-1) of probabilities vs integer targets.

    ``weight`` (N, *spatial) scales each voxel's contribution (0 = ignored).
    """
    num_classes = probs.shape[1]
    onehot = F.one_hot(target.long(), num_classes).movedim(-1, 1).to(probs.dtype)
    dims = (0,) + tuple(range(2, probs.ndim))
    w = 1.0 if weight is None else weight.unsqueeze(1).to(probs.dtype)
    intersect = (w * probs * onehot).sum(dims)
    denom = (w * probs).sum(dims) + (w * onehot).sum(dims)
    dice = (2 * intersect + eps) / (denom + eps)
    return 1 - dice.mean()


def weighted_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none")
    if weight is None:
        return ce.mean()
    return (ce * weight).sum() / weight.sum().clamp_min(1e-6)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """(Dice + CE) / 2, the protocol loss of UA-MT, BCP and the ACDC baselines."""
    logits = logits.float()
    return 0.5 * (weighted_ce(logits, target, weight) + soft_dice_loss(torch.softmax(logits, 1), target, weight))


def masked_dice_loss(
    probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, per_sample: bool, squared: bool, eps: float
) -> torch.Tensor:
    """1 - mean Dice over classes (and samples if ``per_sample``) inside a 0/1 ``mask`` (N, *spatial).

    The two Dice flavours of the BCP reference code: ``per_sample`` Dice of plain probabilities
    (LA, ``mask_DiceLoss``) or one Dice over the batch with squared probabilities (ACDC, ``DiceLoss``).
    """
    onehot = F.one_hot(target.long(), probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    m = mask.unsqueeze(1).to(probs.dtype)
    dims = tuple(range(2, probs.ndim)) if per_sample else (0,) + tuple(range(2, probs.ndim))
    inter = (probs * onehot * m).sum(dims)
    denom = ((probs * probs if squared else probs) * m).sum(dims) + (onehot * m).sum(dims)
    return 1 - ((2 * inter + eps) / (denom + eps)).mean()


def masked_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the voxels of a 0/1 ``mask`` (its own area, not the batch's)."""
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none")
    return (ce * mask).sum() / (mask.sum() + 1e-16)


def boundary_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Class-wise boundary maps are rare positives: balanced BCE (positives re-weighted by the
    negative/positive ratio, capped) plus a soft Dice term that ignores the background mass.

    ``mask`` (N, *spatial) selects the voxels of a region and must be 0/1: both parts are
    normalised by the region's own voxel counts, so a constant per-voxel weight would cancel out.
    Weight a region by multiplying the returned term by a scalar instead (BFA's pseudo-label term),
    which also keeps the class balancing (counts of positive/negative voxels) independent of it.
    """
    logits, target = logits.float(), target.float()
    w = torch.ones_like(target) if mask is None else mask.unsqueeze(1).expand_as(target).float()
    pos = (target * w).sum()
    neg = ((1 - target) * w).sum()
    pos_weight = (neg / pos.clamp_min(1.0)).clamp(1.0, 50.0)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * w * (1 + (pos_weight - 1) * target)).sum() / (w * (1 + (pos_weight - 1) * target)).sum().clamp_min(1e-6)
    probs = torch.sigmoid(logits)
    dims = (0,) + tuple(range(2, probs.ndim))
    inter = (w * probs * target).sum(dims)
    denom = (w * probs).sum(dims) + (w * target).sum(dims)
    dice = 1 - ((2 * inter + 1e-5) / (denom + 1e-5)).mean()
    return 0.5 * (bce + dice)


def distance_loss(logits: torch.Tensor, signed_distance: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Boundary-distance loss (Kervadec et al., MIDL 2019): mean of each foreground class's
    probability times its signed distance map (negative inside the target, positive outside).

    A predicted voxel costs in proportion to how far it lies from the target's boundary, so
    far-away false-positive islands, which dominate 95HD and ASD, get the largest gradients
    while voxels near the contour (where Dice/CE already work) are left alone.
    ``signed_distance`` (N, K-1, *spatial) from ``signed_distance_maps``; ``weight`` (N, *spatial).
    """
    probs = torch.softmax(logits.float(), 1)[:, 1:]
    cost = (probs * signed_distance.float()).sum(1)
    if weight is None:
        return cost.mean()
    return (cost * weight).sum() / weight.sum().clamp_min(1e-6)
