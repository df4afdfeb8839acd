"""Boundary feature alignment (BFA) in the copy-paste mean-teacher framework.

Built from the paper's description (its code is not public); each part can be
switched off for ablation, and with all three off this is the copy-paste mean
teacher (BCP) it extends:

- ``boundary_head``: a light head on an early decoder stage predicts class-wise
  boundary maps; its features are fused back into the decoder (early embedding).
- ``boundary_mixing``: boundary targets of ground truth AND of teacher pseudo-labels,
  each extracted BEFORE copy-paste mixing (the paste seam is no boundary), are mixed
  like the images; off = the head learns from ground-truth regions only.
- ``alignment``: decoder features at boundary voxels of ground-truth origin and of
  pseudo-label origin are brought together, so labeled and unlabeled images share one
  boundary representation. ``align_form`` picks how:
  ``prototype`` (the first form, the default until ``contrast`` beat it on two seeds): one cosine
  between the two per-class mean features (or both to an EMA memory); two means of one network's
  features in one batch agree from the start (1 - cos ~0.02), so this form has little left to
  align (docs/METHOD.md);
  ``voxel``: every pseudo-origin boundary voxel pulled (cosine) to its class's ground-truth
  boundary prototype, so the spread of the pseudo side counts, not only its mean;
  ``contrast`` (the default): the same voxels classified (InfoNCE, temperature ``align_temperature``)
  among ground-truth anchors kept in an EMA memory (``align_target: memory``): their own class's
  boundary prototype against the other classes' boundary prototypes and every class's interior
  prototype, so a boundary feature must also differ from the features it is not. Anchors are
  detached: only the pseudo side moves.

- ``pseudo_boundary``: the boundary target of pseudo-label regions: ``label`` (the boundaries of the
  teacher's argmax pseudo-label: information the segmentation target already holds) or
  ``teacher_head`` (the teacher's own boundary-head probabilities, soft: a head trained on
  ground-truth boundaries carries that representation onto the unlabeled images).

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
from pydantic import Field, field_validator, model_validator

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
    # contrast with memory anchors: ACDC val 79.21 +- 1.41 against 77.58 +- 1.13 for prototype/gt, better
    # Dice, 95HD and ASD on both seeds (docs/RESULTS.md, "BFA ablation, alignment and mixing forms"; chosen on val)
    align_target: Literal["gt", "memory"] = "memory"
    align_form: Literal["prototype", "voxel", "contrast"] = "contrast"
    align_temperature: float = Field(default=0.1, gt=0)  # InfoNCE temperature of align_form=contrast
    align_max_voxels: int = Field(default=4096, ge=1)  # pseudo-origin voxels per step (random subset above it)
    pseudo_boundary: Literal["label", "teacher_head"] = "label"  # the head's target in pseudo-label regions
    memory_momentum: float = 0.9
    min_boundary_voxels: int = 4
    # boundary-distance loss on the segmentation (GT and pseudo-label targets alike): penalises
    # predictions by their distance from the target's boundary; off by default (an improvement under test)
    lambda_distance: float = 0.0
    distance_scale: float = 10.0  # voxels per unit of the signed distance
    distance_rampup: float = 0.3

    @model_validator(mode="after")
    def _teacher_head_needs_a_head(self):
        if self.pseudo_boundary == "teacher_head" and not self.boundary_head:
            raise ValueError("pseudo_boundary: teacher_head needs boundary_head: true")
        return self

    @field_validator("per_direction_forward")
    @classmethod
    def _one_forward(cls, value: bool) -> bool:
        if value:
            raise ValueError("BCP only (BFA's alignment needs both directions in one forward)")
        return value


@torch.no_grad()
def global_means(means: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row means (R, C) over ``counts`` (R,) items, pooled over the ranks of an initialised process
    group (the means of the global batch); unchanged in one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return means, counts
    n = counts.double().unsqueeze(1)
    packed = torch.cat([means.double().nan_to_num() * n, n], 1)
    dist.all_reduce(packed)
    total = packed[:, -1]
    return (packed[:, :-1] / total.clamp_min(1).unsqueeze(1)).to(means.dtype), total.to(counts.dtype)


class BFA(BCP):
    name = "bfa"
    Params = BFAParams
    # not BCP's train mode: BFA was tuned and measured with an eval-mode teacher, and train mode
    # (variant bfa_teacher_train) scored the same on two ACDC seeds (docs/RESULTS.md)
    teacher_mode = "eval"
    may_leave_parameters_unused = True

    def __init__(self, params, trainer):
        super().__init__(params, trainer)
        self._teacher_boundary: list[torch.Tensor] = []  # teacher boundary probabilities of this step's pseudo sources
        self.memory: torch.Tensor | None = None  # (K-1, C) prototype memory for align_target=memory
        # (2K-1, C) anchor memory of the voxel/contrast forms: K-1 boundary then K interior prototypes,
        # NaN rows until a class was first seen
        self.anchor_memory: torch.Tensor | None = None

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
        return {"memory": self.memory, "anchor_memory": self.anchor_memory}

    def load_state_dict(self, state):
        self.memory = state.get("memory")
        self.anchor_memory = state.get("anchor_memory")

    # -------------------------------------------------------------- pieces
    def boundaries(self, label: torch.Tensor) -> torch.Tensor:
        return class_boundaries(label, self.t.num_classes, self.p.boundary_thickness)

    def mixed_boundaries(self, mix, soft: bool = False) -> torch.Tensor:
        """Boundary targets extracted from each source label BEFORE pasting, then pasted like the images.

        ``soft``: pseudo-label sources give the teacher's boundary-head probabilities instead (``mix``
        must hold ``teacher_boundary``, rows in the order of the pseudo sources)."""
        out, pseudo = [], 0
        for outer, inner in mix["sources"]:
            maps = []
            for source in (outer, inner):
                if soft and not source[3]:
                    n = source[1].shape[0]
                    maps.append(mix["teacher_boundary"][pseudo:pseudo + n])
                    pseudo += n
                else:
                    maps.append(self.boundaries(source[1]))
            out.append(paste(maps[0], maps[1], mix["box"]))
        return torch.cat(out)

    @torch.no_grad()
    def pseudo_labels(self, x_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As BCP's; with ``pseudo_boundary: teacher_head`` the same teacher pass also keeps the teacher's
        boundary probabilities (upsampled to the image) for ``mixed_batch``."""
        if self.p.pseudo_boundary != "teacher_head":
            return super().pseudo_labels(x_u)
        out = self.t.teacher_forward(x_u, return_extras=True)
        mode = "trilinear" if x_u.ndim == 5 else "bilinear"
        probs = torch.sigmoid(F.interpolate(out["boundary"], size=tuple(x_u.shape[2:]), mode=mode, align_corners=False))
        self._teacher_boundary.append(probs)
        return self.labels_from_logits(out["logits"])

    def mixed_batch(self, batch, iteration):
        self._teacher_boundary = []
        mix = super().mixed_batch(batch, iteration)
        if self._teacher_boundary:  # rows: the pseudo sources in order (first half a, then half b)
            mix["teacher_boundary"] = torch.cat(self._teacher_boundary)
        self._teacher_boundary = []
        return mix

    def prototypes(self, features: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked mean feature per class: features (N, C, *s), masks (N, K-1, *s) -> (K-1, C), counts (K-1,)."""
        f = features.float().flatten(2)  # N, C, V
        m = masks.float().flatten(2)  # N, K-1, V
        with torch.autocast(f.device.type, enabled=False):  # autocast would round the sums (and 1 - cos) to bf16
            sums = torch.einsum("ncv,nkv->kc", f, m)
        counts = m.sum((0, 2))
        return sums / counts.clamp_min(1.0).unsqueeze(1), counts

    def alignment_loss(self, features, boundary, gt_origin, keep, label=None) -> torch.Tensor:
        """The alignment term of ``align_form`` on one decoder stage's ``features`` (N, C, *s).

        ``boundary`` (N, K-1, *S), ``gt_origin`` and ``keep`` (N, *S) at the input resolution; ``label``
        (N, *S), the (mixed) segmentation targets, is needed by the contrast form's interior anchors.
        """
        size = tuple(features.shape[2:])
        b = downsample_boundaries(boundary, size)
        origin = downsample_weights(gt_origin, size).unsqueeze(1)
        kept = downsample_weights(keep, size).unsqueeze(1)
        gt_side = b * (origin > 0.5)
        pseudo_side = b * (origin <= 0.5) * (kept > 0.5)
        if self.p.align_form == "prototype":
            return self.prototype_alignment(features, gt_side, pseudo_side)
        anchors, anchor_counts = self.prototypes(features, gt_side)
        if self.p.align_form == "contrast":
            if label is None:
                raise ValueError("align_form=contrast needs the segmentation targets (label)")
            interior = self.interior_masks(label, size, b) * (origin > 0.5)
            inner, inner_counts = self.prototypes(features, interior)
            anchors, anchor_counts = torch.cat([anchors, inner]), torch.cat([anchor_counts, inner_counts])
        anchors = self.anchor_targets(anchors.detach(), anchor_counts)
        if self.p.align_form == "voxel":
            return self.voxel_alignment(features, pseudo_side, anchors)
        return self.contrastive_alignment(features, pseudo_side, anchors)

    def prototype_alignment(self, features, gt_side, pseudo_side) -> torch.Tensor:
        """1 - cos between the pseudo-origin and the ground-truth boundary prototype of each class."""
        proto_gt, n_gt = self.prototypes(features, gt_side)
        proto_ps, n_ps = self.prototypes(features, pseudo_side)
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

    def interior_masks(self, label: torch.Tensor, size: tuple[int, ...], boundary: torch.Tensor) -> torch.Tensor:
        """(N, K, *s) 0/1: feature voxels whose whole input cell is class k and on no class's boundary."""
        onehot = F.one_hot(label.long(), self.t.num_classes).movedim(-1, 1).float()
        pool = F.adaptive_avg_pool3d if onehot.ndim == 5 else F.adaptive_avg_pool2d
        share = onehot if tuple(onehot.shape[2:]) == size else pool(onehot, size)
        return (share > 0.999).float() * (boundary.sum(1, keepdim=True) == 0).float()

    @torch.no_grad()
    def anchor_targets(self, current: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The anchors the pseudo side is aligned to: this batch's ground-truth prototypes (``gt``) or their
        EMA memory (``memory``); rows seen with fewer than ``min_boundary_voxels`` voxels are NaN (unusable).
        Under DDP the anchors are those of the whole batch over all ranks, so every rank keeps the same memory."""
        current, counts = global_means(current, counts)
        seen = (counts >= self.p.min_boundary_voxels).unsqueeze(1)
        current = torch.where(seen, current.float(), torch.full_like(current.float(), float("nan")))
        if self.p.align_target == "gt":
            return current
        if self.anchor_memory is None:
            self.anchor_memory = current.clone()
        else:
            m = self.p.memory_momentum
            mem = self.anchor_memory
            mixed = torch.where(torch.isnan(mem), current, m * mem + (1 - m) * current)
            self.anchor_memory = torch.where(seen, mixed, mem)
        return self.anchor_memory

    def pseudo_queries(self, features, pseudo_side) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-length features (M, C) of pseudo-origin boundary voxels and their class bands (M, K-1),
        at most ``align_max_voxels`` of them (a random subset)."""
        f = features.float().movedim(1, -1).reshape(-1, features.shape[1])
        bands = pseudo_side.movedim(1, -1).reshape(-1, pseudo_side.shape[1]) > 0.5
        idx = bands.any(1).nonzero().squeeze(1)
        if idx.numel() > self.p.align_max_voxels:
            idx = idx[torch.randperm(idx.numel(), device=idx.device)[: self.p.align_max_voxels]]
        return F.normalize(f[idx], dim=1), bands[idx]

    def _per_class_mean(self, per_voxel: torch.Tensor, bands: torch.Tensor, usable: torch.Tensor, features):
        """Mean over each class's voxels, then over the classes with enough voxels and a usable anchor."""
        counts = bands.sum(0)
        valid = usable & (counts >= self.p.min_boundary_voxels)
        if not bool(valid.any()):
            return features.float().sum() * 0.0  # keeps the graph (and DDP) consistent when nothing is aligned
        per_voxel = torch.where(bands, per_voxel, torch.zeros_like(per_voxel))
        per_class = per_voxel.sum(0) / counts.clamp_min(1)
        return torch.where(valid, per_class, torch.zeros_like(per_class)).sum() / valid.sum()

    def voxel_alignment(self, features, pseudo_side, anchors) -> torch.Tensor:
        """Mean over pseudo-origin boundary voxels of 1 - cos(voxel feature, its class's GT boundary prototype)."""
        k = pseudo_side.shape[1]
        with torch.autocast(features.device.type, enabled=False):
            q, bands = self.pseudo_queries(features, pseudo_side)
            target = F.normalize(torch.nan_to_num(anchors[:k]), dim=1)
            per_voxel = 1 - q @ target.T  # (M, K-1)
            usable = ~torch.isnan(anchors[:k]).any(1)
            return self._per_class_mean(per_voxel, bands, usable, features)

    def contrastive_alignment(self, features, pseudo_side, anchors) -> torch.Tensor:
        """InfoNCE of pseudo-origin boundary voxels among the ground-truth anchors: positive = own class's
        boundary prototype; negatives = the other classes' boundary prototypes (except those whose band the
        voxel also lies on) and every class's interior prototype."""
        k = pseudo_side.shape[1]
        with torch.autocast(features.device.type, enabled=False):
            q, bands = self.pseudo_queries(features, pseudo_side)
            usable_anchor = ~torch.isnan(anchors).any(1)  # (A,)
            logits = q @ F.normalize(torch.nan_to_num(anchors), dim=1).T / self.p.align_temperature  # (M, A)
            eye = torch.eye(k, dtype=torch.bool, device=q.device)
            # allowed[m, c, a]: anchor a takes part when voxel m's positive is class c
            other_band = bands.unsqueeze(1) & ~eye.unsqueeze(0)  # (M, K-1 positive, K-1 boundary anchors)
            allowed = torch.cat([~other_band, torch.ones(*other_band.shape[:2], anchors.shape[0] - k,
                                                         dtype=torch.bool, device=q.device)], 2)
            allowed = allowed & usable_anchor
            # a large finite value, not -inf: a row with no usable anchor must not give NaN gradients
            masked = logits.unsqueeze(1).masked_fill(~allowed, -1e4)  # (M, K-1, A)
            log_p = torch.log_softmax(masked, 2)
            per_voxel = -torch.diagonal(log_p[:, :, :k], dim1=1, dim2=2)  # (M, K-1): the positive's log-prob
            return self._per_class_mean(per_voxel, bands, usable_anchor[:k], features)

    # ----------------------------------------------------------------- step
    def training_step(self, batch, iteration):
        terms, logs, _ = self.loss_terms(batch, iteration)
        return sum(terms.values()), logs

    def loss_terms(self, batch, iteration):
        """Each term of the loss with its weight and ramp applied (their sum is the loss), the logged raw
        terms, and the student's outputs (``features`` for the gradient-share diagnostic)."""
        p = self.p
        mix = self.mixed_batch(batch, iteration)
        extra = p.supervised_weight > 0
        inputs = torch.cat([mix["image"], batch["image_l"]]) if extra else mix["image"]
        want_extras = p.boundary_head or p.alignment
        out = self.student(inputs, return_extras=want_extras)
        logits = out["logits"] if want_extras else out
        n_mix = mix["image"].shape[0]
        seg = self.mixed_loss(logits[:n_mix], mix)
        terms, logs = {"seg": seg}, {"seg": seg.detach()}
        if extra:
            sup = dice_ce_loss(logits[n_mix:], batch["label_l"])
            terms["sup"] = p.supervised_weight * sup
            logs["sup"] = sup.detach()
        targets = torch.cat([mix["target"], batch["label_l"]]) if extra else mix["target"]
        if p.lambda_distance > 0:
            ones = torch.ones(batch["label_l"].shape, dtype=mix["weight"].dtype, device=mix["weight"].device)
            weights = torch.cat([mix["weight"], ones]) if extra else mix["weight"]
            phi = signed_distance_maps(targets, self.t.num_classes, p.distance_scale)
            dist = distance_loss(logits, phi, weights)
            ramp_d = p.lambda_distance * sigmoid_rampup(iteration, self.fraction_to_iterations(p.distance_rampup))
            terms["distance"] = ramp_d * dist
            logs["distance"] = dist.detach()
        if not want_extras:
            return terms, logs, {"logits": logits}

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
            b_target = ps_target = downsample_boundaries(boundary, size)
            if "teacher_boundary" in mix:  # pseudo_boundary: teacher_head, after pre-training
                soft = self.mixed_boundaries(mix, soft=True)
                if extra:
                    soft = torch.cat([soft, self.boundaries(batch["label_l"])])
                ps_target = downsample_boundaries(soft, size)
            # 0/1 region masks and scalar weights: boundary_loss normalises by its mask's counts, so a
            # per-voxel weight would cancel; the pseudo-label term is scaled by the same pseudo_weight x ramp
            # as the pseudo-label segmentation term, and its class balancing sees only the region
            origin = downsample_weights(gt_origin, size)
            kept = downsample_weights(keep, size)
            ramp_b = p.lambda_boundary * sigmoid_rampup(iteration, self.fraction_to_iterations(p.boundary_rampup))
            b_gt = boundary_loss(b_logits, b_target, (origin > 0.5).float())
            terms["boundary_gt"] = ramp_b * b_gt
            logs["boundary_gt"] = b_gt.detach()
            if p.boundary_mixing and not self.in_pretrain(iteration):
                b_ps = boundary_loss(b_logits, ps_target, ((origin <= 0.5) & (kept > 0.5)).float())
                terms["boundary_pseudo"] = ramp_b * self.pseudo_weight(iteration) * b_ps
                logs["boundary_pseudo"] = b_ps.detach()

        if p.alignment and not self.in_pretrain(iteration):
            stage = p.boundary_stage if p.align_stage is None else p.align_stage
            feats = out["features"][stage]
            if p.align_form == "contrast":
                align = self.alignment_loss(feats, boundary, gt_origin, keep, targets)
            else:
                align = self.alignment_loss(feats, boundary, gt_origin, keep)
            ramp_a = p.lambda_align * sigmoid_rampup(
                iteration - self.pretrain_iterations, self.fraction_to_iterations(p.align_rampup)
            )
            terms["align"] = ramp_a * align
            logs["align"] = align.detach()
        return terms, logs, out
