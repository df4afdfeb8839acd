"""Uncertainty-aware mean teacher (Yu et al. 2019).

The teacher runs T Monte-Carlo passes (input noise + dropout, BatchNorm in the teacher's
mode), the predictive entropy marks uncertain voxels, and the consistency loss is computed
only where the entropy is below a threshold that ramps from 0.75 to 1.0 of an entropy bound.
The constants are the reference code's: the bound ln 2 and the masked squared error divided by
2 x the certain voxels, those of the two-class LA original (yulequan/UA-MT,
train_LA_meanteacher_certainty_unlabel.py), which SSL4MIS's 2-D port keeps for its four classes
(the maximum entropy is then ln 4, so fewer voxels count as certain, and the consistency term is
twice the mean over classes). ``entropy_bound_classes: null`` and ``consistency_classes: null``
use the data's K instead (ln K, K x), bfaseg's defaults until the reference's constants and its
train-mode teacher scored higher on ACDC val (docs/RESULTS.md, "Reference parity").
As in the reference, the threshold ramps over the WHOLE run and reaches its end value only at
the last iteration: an earlier end would leave few uncertain voxels and UA-MT close to a plain
mean teacher from then on. The fraction of certain voxels is logged as ``certain``.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from bfaseg.methods.base import noisy, sigmoid_rampup
from bfaseg.methods.mean_teacher import MeanTeacher, MeanTeacherParams
from bfaseg.losses import dice_ce_loss


class UAMTParams(MeanTeacherParams):
    mc_passes: int = 8
    threshold_start: float = 0.75  # fraction of ln(entropy_bound_classes)
    threshold_end: float = 1.0
    entropy_bound_classes: int | None = Field(2, ge=2)  # the bound is ln(this); None: the data's K
    consistency_classes: int | None = Field(2, ge=1)  # squared error / (this x certain voxels); None: K


def _set_dropout(model: nn.Module, active: bool) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Dropout3d)):
            m.train(active)


class UAMT(MeanTeacher):
    name = "ua_mt"
    # train mode, as the reference's (SSL4MIS never calls ema_model.eval()): with it and the reference's two
    # constants UA-MT scored above its reference on ACDC val; variant ua_mt_ln_k_teacher_eval keeps the old defaults
    teacher_mode = "train"
    Params = UAMTParams

    @classmethod
    def teacher_passes(cls, params) -> int:
        return 1 + params.mc_passes  # the consistency target + the Monte-Carlo passes of the uncertainty

    def threshold(self, iteration: int) -> float:
        """Entropy bound of the certainty mask: ramps over the whole run (train.iterations)."""
        ramp = sigmoid_rampup(iteration, self.t.total_iterations)
        frac = self.p.threshold_start + (self.p.threshold_end - self.p.threshold_start) * ramp
        return frac * math.log(self.p.entropy_bound_classes or self.t.num_classes)

    @torch.no_grad()
    def uncertainty(self, x_u: torch.Tensor) -> torch.Tensor:
        teacher = self.t.teacher
        # dropout on in every pass; BatchNorm as the consistency target's (the reference's train mode:
        # each pass normalises its own noisy batch)
        teacher.train(self.t.teacher_mode == "train")
        _set_dropout(teacher, True)
        try:
            probs = 0
            for _ in range(self.p.mc_passes):
                with self.t.autocast():
                    out = teacher(noisy(x_u, self.p.noise_sigma, self.p.noise_clip))
                probs = probs + torch.softmax(out.float(), 1)
            probs = probs / self.p.mc_passes
        finally:
            teacher.train(self.t.teacher_mode == "train")
        return -(probs * torch.log(probs + 1e-6)).sum(1)

    def training_step(self, batch, iteration):
        x_l, y_l, x_u = batch["image_l"], batch["label_l"], batch["image_u"]
        n_l = x_l.shape[0]
        logits = self.student(torch.cat([x_l, x_u]))
        sup = dice_ce_loss(logits[:n_l], y_l)
        teacher_probs = torch.softmax(self.t.teacher_forward(noisy(x_u, self.p.noise_sigma, self.p.noise_clip)), 1)
        entropy = self.uncertainty(x_u)
        mask = (entropy < self.threshold(iteration)).float().unsqueeze(1)
        sq = (torch.softmax(logits[n_l:].float(), 1) - teacher_probs) ** 2
        cons = (mask * sq).sum() / (mask.sum() * (self.p.consistency_classes or sq.shape[1]) + 1e-16)
        w = self.consistency_weight(iteration)
        return sup + w * cons, {"sup": sup.detach(), "consistency": cons.detach(), "certain": mask.mean()}
