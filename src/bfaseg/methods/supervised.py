"""Supervised baseline: labeled data only (all cases labeled = the fully supervised bound)."""

from __future__ import annotations

from bfaseg.methods.base import Method
from bfaseg.losses import dice_ce_loss


class Supervised(Method):
    name = "supervised"

    def training_step(self, batch, iteration):
        logits = self.student(batch["image_l"])
        loss = dice_ce_loss(logits, batch["label_l"])
        return loss, {"sup": loss.detach()}
