"""Bidirectional copy-paste (BCP, Bai et al. CVPR 2023) in the mean-teacher framework.

Stage 1 (``pretrain``): supervised training on labeled-labeled copy-paste mixes.
At the end of it the teacher is initialised from the student; stage 2 mixes a
labeled and an unlabeled image both ways (labeled outside + unlabeled box, and the
reverse) and trains on ground truth (weight 1) and teacher pseudo-labels (weight
``pseudo_weight``). Both stages share one schedule and one iteration budget.

The mixed loss is the reference ``mix_loss`` (DeepMed-Lab-ECNU/BCP, code/utils/BCP_utils.py and
code/ACDC_BCP_train.py): per mixing direction, Dice and CE are computed separately for the
ground-truth region and the pseudo-label region, each normalised by its own area, weighted 1 and
``pseudo_weight``, halved, and the directions are summed. Folding both regions into one weighted
Dice+CE normalised by the total weight instead gave about a third of the reference's gradient.
"""

from __future__ import annotations

import torch

from bfaseg.methods.base import Method, MethodParams, cuboid_mask, paste, sigmoid_rampup, split_pairs
from bfaseg.methods.boundary import remove_small_components
from bfaseg.losses import dice_ce_loss, masked_ce, masked_dice_loss

# The Dice of the reference mix_loss, by spatial dimension: LA/Pancreas (3-D) use a per-sample Dice of
# probabilities (mask_DiceLoss, smooth 1e-5); ACDC (2-D) one Dice over the batch with squared
# probabilities in the denominator (DiceLoss, smooth 1e-10).
REFERENCE_DICE = {3: dict(per_sample=True, squared=False, eps=1e-5), 2: dict(per_sample=False, squared=True, eps=1e-10)}


def region_loss(logits: torch.Tensor, target: torch.Tensor, regions: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """BCP's ``mix_loss`` for one mixing direction: 0.5 * sum over regions of weight * (Dice + CE),
    each region's Dice and CE restricted to its 0/1 mask and normalised by that mask's own area."""
    logits = logits.float()
    probs = torch.softmax(logits, 1)
    dice_kind = REFERENCE_DICE[logits.ndim - 2]
    total = logits.new_zeros(())
    for mask, weight in regions:
        total = total + weight * (masked_dice_loss(probs, target, mask, **dice_kind) + masked_ce(logits, target, mask))
    return 0.5 * total


class BCPParams(MethodParams):
    pretrain: float = 0.2  # fraction of the run (or iterations if > 1) of labeled-labeled copy-paste
    box_fraction: float = 2 / 3  # side of the pasted box relative to the patch
    pseudo_weight: float = 0.5
    pseudo_rampup: float = 0.0  # ramp of the pseudo-label weight after pre-training (fraction/iterations)
    confidence: float = 0.0  # pseudo-label voxels below this teacher confidence get weight 0
    component_filter: float = 1.0  # keep components >= this fraction of the largest (1.0 = largest only, 0 = off)
    supervised_weight: float = 0.0  # extra Dice+CE on the un-mixed labeled images (0 = as in BCP)
    # parity switches (the reference's choices where bfaseg differs on purpose, docs/METHOD.md): one box for the
    # whole batch instead of one per sample; one student forward per mixing direction instead of one for all
    box_per_batch: bool = False
    per_direction_forward: bool = False


class BCP(Method):
    name = "bcp"
    needs_teacher = True
    uses_unlabeled = True
    Params = BCPParams
    # train mode, as both BCP references run their teacher (ema_model.train()): with an eval-mode teacher BCP's
    # val Dice drifted down once pseudo-labels weighed in and ended 12 points below the reference's (ACDC val,
    # docs/RESULTS.md "Reference parity"); variant bcp_teacher_eval keeps the old mode
    teacher_mode = "train"

    def __init__(self, params, trainer):
        super().__init__(params, trainer)
        self.pretrain_iterations = self.fraction_to_iterations(params.pretrain)

    @classmethod
    def images_per_step(cls, params, batch_labeled, batch_unlabeled):
        """Mixed images (both copy-paste directions, 2 x half the smaller batch), plus the un-mixed labeled
        batch when ``supervised_weight`` > 0; the teacher labels the unlabeled halves. Pre-training mixes
        labeled with labeled in one direction only and has no teacher forward."""
        sup = batch_labeled if params.supervised_weight > 0 else 0
        half = split_pairs(batch_labeled, batch_unlabeled)[0].stop
        counts = {"student": 2 * half + sup, "teacher": 2 * half}
        if params.pretrain > 0:
            counts.update(student_pretrain=split_pairs(batch_labeled, batch_labeled)[0].stop + sup, teacher_pretrain=0)
        return counts

    def on_iteration_start(self, iteration: int) -> None:
        if iteration == self.pretrain_iterations and self.pretrain_iterations > 0:
            self.t.copy_student_to_teacher()

    def ema_active(self, iteration: int) -> bool:
        return iteration >= self.pretrain_iterations

    def in_pretrain(self, iteration: int) -> bool:
        return iteration < self.pretrain_iterations

    def pseudo_weight(self, iteration: int) -> float:
        ramp = self.fraction_to_iterations(self.p.pseudo_rampup)
        return self.p.pseudo_weight * sigmoid_rampup(iteration - self.pretrain_iterations, ramp)

    @torch.no_grad()
    def pseudo_labels(self, x_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher argmax (filtered to its large components) and a 0/1 confidence mask."""
        return self.labels_from_logits(self.t.teacher_forward(x_u))

    @torch.no_grad()
    def labels_from_logits(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(logits, 1)
        conf, label = probs.max(1)
        if self.p.component_filter > 0:
            label = remove_small_components(label, self.t.num_classes, self.p.component_filter)
        keep = (conf >= self.p.confidence).float()
        return label, keep

    def mixed_batch(self, batch, iteration):
        """Images, segmentation targets, per-voxel weights and the GT-origin map of the mixed samples.

        Returns a dict; subclasses (BFA) add boundary targets from the same pieces.
        """
        x_l, y_l = batch["image_l"], batch["label_l"]
        a, b = split_pairs(x_l.shape[0], x_l.shape[0] if self.in_pretrain(iteration) else batch["image_u"].shape[0])
        spatial = tuple(x_l.shape[2:])
        n = x_l[a].shape[0]
        box = cuboid_mask(spatial, n, self.p.box_fraction, x_l.device, same_for_batch=self.p.box_per_batch)
        one = torch.ones_like(box)
        if self.in_pretrain(iteration):
            # labeled-labeled copy-paste: both sources are ground truth
            parts = [(x_l[a], y_l[a], one, True), (x_l[b], y_l[b], one, True)]
            pieces = [(parts[0], parts[1])]
        else:
            x_u = batch["image_u"]
            if self.t.teacher_mode == "eval":  # the trainer resolves it: train.teacher_mode, else the method's
                # one teacher pass for both halves: in eval mode a sample's prediction does not depend on the
                # rest of the batch, and batches of one take PyTorch's slow non-oneDNN convolutions on CPU
                n_a = x_u[a].shape[0]
                pl, keep = self.pseudo_labels(torch.cat([x_u[a], x_u[b]]))
                pl_a, pl_b, keep_a, keep_b = pl[:n_a], pl[n_a:], keep[:n_a], keep[n_a:]
            else:  # BatchNorm in train mode: each half keeps its own batch statistics
                pl_a, keep_a = self.pseudo_labels(x_u[a])
                pl_b, keep_b = self.pseudo_labels(x_u[b])
            w = self.pseudo_weight(iteration)
            lab_a, lab_b = (x_l[a], y_l[a], one, True), (x_l[b], y_l[b], one, True)
            unl_a, unl_b = (x_u[a], pl_a, w * keep_a, False), (x_u[b], pl_b, w * keep_b, False)
            pieces = [(lab_a, unl_a), (unl_b, lab_b)]  # (outer, inner): both directions
        images, targets, weights, gt_origin, sources, regions = [], [], [], [], [], []
        for outer, inner in pieces:
            images.append(paste(outer[0], inner[0], box))
            targets.append(paste(outer[1], inner[1], box))
            weights.append(paste(outer[2], inner[2], box))
            gt_origin.append(paste(float(outer[3]) * one, float(inner[3]) * one, box))
            sources.append((outer, inner))
            regions.append(self.loss_regions(outer, inner, box, iteration))
        return {
            "image": torch.cat(images),
            "target": torch.cat(targets),
            "weight": torch.cat(weights),
            "gt_origin": torch.cat(gt_origin),
            "box": box,
            "sources": sources,
            "regions": regions,  # per direction: [(0/1 mask (n, *spatial), scalar weight), ...] for region_loss
        }

    def loss_regions(self, outer, inner, box, iteration) -> list[tuple[torch.Tensor, float]]:
        """The regions of one mixed direction as the reference losses see them.

        Self-training: outside and inside the box, weight 1 for ground truth and ``pseudo_weight`` x ramp
        for pseudo-labels, whose region keeps only confident voxels. Pre-training follows the
        reference of each dimension: the 3-D (LA) one trains on the whole mixed image as one region,
        the 2-D (ACDC) one calls mix_loss with both weights 1.
        """
        if self.in_pretrain(iteration):
            if box.ndim - 1 == 3:
                return [(torch.ones_like(box), 1.0)]
            return [(1 - box, 1.0), (box, 1.0)]
        w = self.pseudo_weight(iteration)
        out = []
        for (_, _, weight, is_gt), region in ((outer, 1 - box), (inner, box)):
            # a pseudo source's weight map is w x confidence mask: its nonzero voxels are the confident ones
            # (if w is 0 the region is empty, and weighted by 0 anyway)
            out.append((region, 1.0) if is_gt else (region * (weight > 0).to(region.dtype), w))
        return out

    def mixed_loss(self, logits: torch.Tensor, mix) -> torch.Tensor:
        """The reference loss of the mixed samples: region_loss per direction, directions summed."""
        n = mix["box"].shape[0]
        return sum(region_loss(logits[d * n:(d + 1) * n], mix["target"][d * n:(d + 1) * n], regions)
                   for d, regions in enumerate(mix["regions"]))

    def training_step(self, batch, iteration):
        mix = self.mixed_batch(batch, iteration)
        extra = self.p.supervised_weight > 0
        inputs = torch.cat([mix["image"], batch["image_l"]]) if extra else mix["image"]
        if self.p.per_direction_forward:  # as the reference: BatchNorm sees each direction (and the extra batch) alone
            sizes = [mix["box"].shape[0]] * len(mix["regions"]) + ([batch["image_l"].shape[0]] if extra else [])
            logits = torch.cat([self.student(part) for part in inputs.split(sizes)])
        else:
            logits = self.student(inputs)
        n_mix = mix["image"].shape[0]
        seg = self.mixed_loss(logits[:n_mix], mix)
        logs = {"seg": seg.detach()}
        loss = seg
        if extra:
            sup = dice_ce_loss(logits[n_mix:], batch["label_l"])
            loss = loss + self.p.supervised_weight * sup
            logs["sup"] = sup.detach()
        return loss, logs
