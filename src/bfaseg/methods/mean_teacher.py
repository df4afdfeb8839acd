"""Mean teacher (Tarvainen & Valpola 2017): EMA teacher, noisy teacher input, MSE consistency
between softmax outputs, weight ramped up with a sigmoid.

The ramp follows the reference code (yulequan/UA-MT train_LA_*.py, HiLab-git/SSL4MIS
train_mean_teacher_2D.py: ``consistency * sigmoid_rampup(iter_num // 150, consistency_rampup)``,
whose ramp length x 150 is the whole run in both): over the whole run, in steps of 150 iterations.
"""

from __future__ import annotations

import torch

from bfaseg.methods.base import Method, MethodParams, noisy, sigmoid_rampup
from bfaseg.losses import dice_ce_loss


class MeanTeacherParams(MethodParams):
    consistency: float = 0.1
    rampup: float = 1.0  # fraction of the run (or iterations if > 1); the reference ramps over the whole run
    rampup_step: int = 150  # the weight changes every this many iterations (the reference's "epoch"; 1 = smooth)
    noise_sigma: float = 0.1
    noise_clip: float = 0.2


class MeanTeacher(Method):
    name = "mean_teacher"
    needs_teacher = True
    uses_unlabeled = True
    # the SSL4MIS reference's teacher (never set to eval): +5 Dice over eval, ACDC (docs/RESULTS.md "Reference parity")
    teacher_mode = "train"
    Params = MeanTeacherParams

    @classmethod
    def images_per_step(cls, params, batch_labeled, batch_unlabeled):
        # one student forward on labeled + unlabeled, one teacher forward on the unlabeled
        return {"student": batch_labeled + batch_unlabeled, "teacher": cls.teacher_passes(params) * batch_unlabeled}

    @classmethod
    def teacher_passes(cls, params) -> int:
        return 1

    def consistency_weight(self, iteration: int) -> float:
        step = max(1, self.p.rampup_step)
        return self.p.consistency * sigmoid_rampup(step * (iteration // step), self.fraction_to_iterations(self.p.rampup))

    def training_step(self, batch, iteration):
        x_l, y_l, x_u = batch["image_l"], batch["label_l"], batch["image_u"]
        n_l = x_l.shape[0]
        logits = self.student(torch.cat([x_l, x_u]))  # one forward (BatchNorm and DDP see one batch)
        sup = dice_ce_loss(logits[:n_l], y_l)
        teacher_probs = torch.softmax(self.t.teacher_forward(noisy(x_u, self.p.noise_sigma, self.p.noise_clip)), 1)
        student_probs = torch.softmax(logits[n_l:].float(), 1)
        cons = ((student_probs - teacher_probs) ** 2).mean()
        w = self.consistency_weight(iteration)
        return sup + w * cons, {"sup": sup.detach(), "consistency": cons.detach()}
