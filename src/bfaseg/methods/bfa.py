"""Boundary feature alignment (BFA) in the copy-paste mean-teacher framework.

Built from the paper's description (its code is not public); each part can be
switched off for ablation, and with all three off this is the copy-paste mean
teacher (BCP) it extends:

- ``boundary_head``: a light head on an early decoder stage predicts class-wise
  boundary maps; its features are fused back into the decoder (early embedding).
- ``boundary_mixing``: boundary targets of ground truth AND of teacher pseudo-labels,
  each extracted BEFORE copy-paste mixing (the paste seam is no boundary), are mixed
  like the images; off = the head learns from ground-truth regions only.
- ``alignment``: decoder features at boundary voxels give per-class prototypes of
  ground-truth-origin and pseudo-label-origin boundaries; a cosine loss pulls the
  pseudo-origin prototypes to the ground-truth ones (or both to an EMA memory),
  so labeled and unlabeled images share one boundary representation.

- ``lambda_distance`` (optional): a boundary-distance loss on the segmentation output, with
  signed distance maps of the same (mixed) targets, so far-away false positives cost most.

Loss = seg + lambda_boundary * ramp * (boundary_gt + pseudo_weight * ramp * boundary_pseudo)
+ lambda_align * ramp * align (+ supervised)
(+ lambda_distance * ramp * distance).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bfaseg.methods.base import paste, sigmoid_rampup
from bfaseg.methods.bcp import BCP, BCPParams
from bfaseg.methods.boundary import class_boundaries, downsample_boundaries, downsample_weights, signed_distance_maps
from bfaseg.losses import boundary_loss, dice_ce_loss, distance_loss


class BFAParams(BCPParams):
    # defaults and why:
    pretrain: float = 0.3  # long supervised warm-up: weak teachers give collapsing pseudo-labels (PROTOCOL.md)
    pseudo_rampup: float = 0.3  # pseudo-label weight rises smoothly after pre-training instead of a jump
    confidence: float = 0.0
    component_filter: float = 0.1  # drop small spurious pseudo-label islands, keep real multi-part structures
    supervised_weight: float = 1.0  # keep a clean ground-truth signal every step (stabilises self-training)
    # a slow teacher (EMA over ~1000 steps; BCP's 0.99 is ~100): with the reference-scale mixed loss the
    # student drifted towards its own pseudo-label errors once their weight was full (ACDC val 0.772 ->
    # 0.739); at 0.999 it held (best 0.788, last 0.784). Chosen on ACDC val (docs/RESULTS.md); None = train.ema_decay
    teacher_ema_decay: float | None = Field(default=0.999, ge=0, le=1)
    boundary_head: bool = True
    boundary_mixing: bool = True
    alignment: bool = True
    boundary_stage: int = 1  # decoder stage (0 = deepest) of the head: early, 1/4 resolution in the U-Net
    boundary_thickness: int = 1
    boundary_fuse: bool = True
    lambda_boundary: float = 0.5
    lambda_align: float = 0.1
    boundary_rampup: float = 0.1
    align_rampup: float = 0.3
    align_stage: int | None = None  # default: the boundary stage
    align_target: Literal["gt", "memory"] = "gt"
    memory_momentum: float = 0.9
    min_boundary_voxels: int = 4
    # boundary-distance loss on the segmentation (GT and pseudo-label targets alike): penalises
    # predictions by their distance from the target's boundary; off by default (an improvement under test)
    lambda_distance: float = 0.0
    distance_scale: float = 10.0  # voxels per unit of the signed distance
    distance_rampup: float = 0.3


class BFA(BCP):
    name = "bfa"
    Params = BFAParams
    may_leave_parameters_unused = True

    def __init__(self, params, trainer):
        super().__init__(params, trainer)
        self.memory: torch.Tensor | None = None  # (K-1, C) prototype memory for align_target=memory

    def configure_model(self, model):
        if self.p.boundary_head:
            model.add_boundary_head(self.p.boundary_stage, self.t.num_classes - 1, fuse=self.p.boundary_fuse)

    @classmethod
    def restore_modules(cls, model, cfg, weights):
        # the head's presence, size and fusion come from the weights (ablations may have trained without
        # it); its stage is not in the weights' shapes, so it comes from the run's config
        if not any(k.startswith("boundary_head.") for k in weights):
            return
        stage = int(cfg.method_params().get("boundary_stage", 1))
        pred_w = weights.get("boundary_head.predict.weight")
        if pred_w is None:
            raise ValueError("the boundary head's weights lack boundary_head.predict.weight")
        model.add_boundary_head(stage, int(pred_w.shape[0]), fuse="boundary_head.fuse.weight" in weights)

    def teacher_decay(self, configured: float) -> float:
        return configured if self.p.teacher_ema_decay is None else self.p.teacher_ema_decay

    def state_dict(self):
        return {"memory": self.memory}

    def load_state_dict(self, state):
        self.memory = state.get("memory")

    # -------------------------------------------------------------- pieces
    def boundaries(self, label: torch.Tensor) -> torch.Tensor:
        return class_boundaries(label, self.t.num_classes, self.p.boundary_thickness)

    def mixed_boundaries(self, mix) -> torch.Tensor:
        """Boundary targets extracted from each source label BEFORE pasting, then pasted like the images."""
        out = []
        for outer, inner in mix["sources"]:
            out.append(paste(self.boundaries(outer[1]), self.boundaries(inner[1]), mix["box"]))
        return torch.cat(out)

    def prototypes(self, features: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked mean feature per class: features (N, C, *s), masks (N, K-1, *s) -> (K-1, C), counts (K-1,)."""
        f = features.float().flatten(2)  # N, C, V
        m = masks.float().flatten(2)  # N, K-1, V
        with torch.autocast(f.device.type, enabled=False):  # autocast would round the sums (and 1 - cos) to bf16
            sums = torch.einsum("ncv,nkv->kc", f, m)
        counts = m.sum((0, 2))
        return sums / counts.clamp_min(1.0).unsqueeze(1), counts

    def alignment_loss(self, features, boundary, gt_origin, keep) -> torch.Tensor:
        size = tuple(features.shape[2:])
        b = downsample_boundaries(boundary, size)
        origin = downsample_weights(gt_origin, size).unsqueeze(1)
        kept = downsample_weights(keep, size).unsqueeze(1)
        proto_gt, n_gt = self.prototypes(features, b * (origin > 0.5))
        proto_ps, n_ps = self.prototypes(features, b * (origin <= 0.5) * (kept > 0.5))
        valid = (n_gt >= self.p.min_boundary_voxels) & (n_ps >= self.p.min_boundary_voxels)
        if self.p.align_target == "memory":
            with torch.no_grad():
                current = proto_gt.detach()
                if self.memory is None:
                    self.memory = current.clone()
                else:
                    upd = (n_gt >= self.p.min_boundary_voxels).unsqueeze(1)
                    mixed = self.p.memory_momentum * self.memory + (1 - self.p.memory_momentum) * current
                    self.memory = torch.where(upd, mixed, self.memory)
            target = self.memory
            loss_k = (1 - F.cosine_similarity(proto_ps, target, dim=1)) + (1 - F.cosine_similarity(proto_gt, target, dim=1))
        else:
            loss_k = 1 - F.cosine_similarity(proto_ps, proto_gt.detach(), dim=1)
        if not bool(valid.any()):
            return features.float().sum() * 0.0  # keeps the graph (and DDP) consistent when nothing is aligned
        return (loss_k * valid).sum() / valid.sum()

    # ----------------------------------------------------------------- step
    def training_step(self, batch, iteration):
        p = self.p
        mix = self.mixed_batch(batch, iteration)
        extra = p.supervised_weight > 0
        inputs = torch.cat([mix["image"], batch["image_l"]]) if extra else mix["image"]
        want_extras = p.boundary_head or p.alignment
        out = self.student(inputs, return_extras=want_extras)
        logits = out["logits"] if want_extras else out
        n_mix = mix["image"].shape[0]
        seg = self.mixed_loss(logits[:n_mix], mix)
        loss, logs = seg, {"seg": seg.detach()}
        if extra:
            sup = dice_ce_loss(logits[n_mix:], batch["label_l"])
            loss = loss + p.supervised_weight * sup
            logs["sup"] = sup.detach()
        if p.lambda_distance > 0:
            targets = torch.cat([mix["target"], batch["label_l"]]) if extra else mix["target"]
            ones = torch.ones(batch["label_l"].shape, dtype=mix["weight"].dtype, device=mix["weight"].device)
            weights = torch.cat([mix["weight"], ones]) if extra else mix["weight"]
            phi = signed_distance_maps(targets, self.t.num_classes, p.distance_scale)
            dist = distance_loss(logits, phi, weights)
            ramp_d = p.lambda_distance * sigmoid_rampup(iteration, self.fraction_to_iterations(p.distance_rampup))
            loss = loss + ramp_d * dist
            logs["distance"] = dist.detach()
        if not want_extras:
            return loss, logs

        boundary = self.mixed_boundaries(mix)
        gt_origin = mix["gt_origin"]
        keep = (mix["weight"] > 0).float()  # confident pseudo voxels (and all GT voxels)
        if extra:
            boundary = torch.cat([boundary, self.boundaries(batch["label_l"])])
            gt_origin = torch.cat([gt_origin, torch.ones_like(batch["label_l"], dtype=gt_origin.dtype)])
            keep = torch.cat([keep, torch.ones_like(gt_origin[n_mix:])])

        if p.boundary_head:
            b_logits = out["boundary"]
            size = tuple(b_logits.shape[2:])
            b_target = downsample_boundaries(boundary, size)
            # 0/1 region masks and scalar weights: boundary_loss normalises by its mask's counts, so a
            # per-voxel weight would cancel; the pseudo-label term is scaled by the same pseudo_weight x ramp
            # as the pseudo-label segmentation term, and its class balancing sees only the region
            origin = downsample_weights(gt_origin, size)
            kept = downsample_weights(keep, size)
            ramp_b = p.lambda_boundary * sigmoid_rampup(iteration, self.fraction_to_iterations(p.boundary_rampup))
            b_gt = boundary_loss(b_logits, b_target, (origin > 0.5).float())
            loss = loss + ramp_b * b_gt
            logs["boundary_gt"] = b_gt.detach()
            if p.boundary_mixing and not self.in_pretrain(iteration):
                b_ps = boundary_loss(b_logits, b_target, ((origin <= 0.5) & (kept > 0.5)).float())
                loss = loss + ramp_b * self.pseudo_weight(iteration) * b_ps
                logs["boundary_pseudo"] = b_ps.detach()

        if p.alignment and not self.in_pretrain(iteration):
            stage = p.boundary_stage if p.align_stage is None else p.align_stage
            feats = out["features"][stage]
            align = self.alignment_loss(feats, boundary, gt_origin, keep)
            ramp_a = p.lambda_align * sigmoid_rampup(
                iteration - self.pretrain_iterations, self.fraction_to_iterations(p.align_rampup)
            )
            loss = loss + ramp_a * align
            logs["align"] = align.detach()
        return loss, logs
