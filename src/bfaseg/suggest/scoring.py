"""Per-case uncertainty scores of a trained checkpoint (higher = more worth annotating).

Every score runs the project's own inference (:func:`bfaseg.inference.checkpoints.predict_array`:
slice-wise for 2-D networks, sliding window for 3-D ones) on the image as the network sees it
(:func:`model_view`: ``data.downsample`` for 3-D networks, z-slices of NIfTI volumes for 2-D ones).

Strategies (``STRATEGIES``):

``entropy``
    mean over voxels of the predictive entropy of the softmax, divided by ``log K`` (0..1).
``mc_dropout``
    mean mutual information between prediction and weights over ``T`` passes with the dropout
    layers sampling and BatchNorm in eval mode: ``H(mean p) - mean H(p)``, divided by ``log K``.
``disagreement``
    ``1 - Dice`` between the student's and the teacher's label maps (mean over the foreground
    classes either predicts, 0 when neither predicts any: :func:`label_agreement`); the average
    symmetric surface distance between the two (voxels) is a component.
``boundary``
    binary entropy (divided by ``log 2``) of the BFA boundary head's probability, averaged in a
    band of ``BAND`` voxels around the predicted contours.
``random``
    a uniform number from ``seed`` and the case id (the control; independent of the order).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from bfaseg.errors import BfasegError

STRATEGIES = ("entropy", "mc_dropout", "disagreement", "boundary", "random")
BAND = 2  # voxels on either side of a predicted contour that the boundary score looks at
EPS = 1e-8


def model_view(image: np.ndarray, cfg, ndim: int, *, xyz: bool = False, order: int = 1) -> np.ndarray:
    """The image (``order=1``) or a label map (``order=0``) as the network predicts it: 3-D networks see it
    downsampled by ``data.downsample`` (as ``downsample_case_arrays``); 2-D networks predict the slices of
    axis 0, i.e. the z-slices of (x, y, z) NIfTI volumes (``xyz``)."""
    from bfaseg.data.transforms import resize

    if ndim == 3 and cfg.data.downsample != 1:
        image = resize(image, tuple(max(1, int(round(s / cfg.data.downsample))) for s in image.shape), order=order)
    if ndim == 2 and xyz and image.ndim == 3:
        image = np.ascontiguousarray(image.transpose(2, 1, 0))
    return image


def slice_axis(ndim: int, shape: tuple[int, ...]) -> int:
    """The axis the PNG strip cuts: the slice axis 0 of 2-D networks, the last (z) axis of volumes."""
    return 0 if ndim == 2 else len(shape) - 1


def entropy_map(probs: np.ndarray) -> np.ndarray:
    """Entropy over the class axis 0, divided by ``log K`` (0 = certain, 1 = uniform)."""
    k = probs.shape[0]
    return -(probs * np.log(probs + EPS)).sum(0) / math.log(k)


def binary_entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(p + EPS) + (1 - p) * np.log(1 - p + EPS)) / math.log(2)


def contour_band(labels: np.ndarray, width: int = BAND) -> np.ndarray:
    """Voxels within ``width`` of a contour between two different labels (background included)."""
    edges = np.zeros(labels.shape, bool)
    for c in np.unique(labels):
        mask = labels == c
        edges |= mask & ~ndimage.binary_erosion(mask, border_value=1)
    return ndimage.binary_dilation(edges, iterations=width) if edges.any() else edges


def random_score(case_id: str, seed: int) -> float:
    """Uniform in [0, 1) from the seed and the case id: the same case gets the same number in any order."""
    return float(np.random.default_rng([seed, zlib.crc32(case_id.encode())]).random())


@dataclass
class CaseScore:
    case_id: str
    score: float
    components: dict[str, Any]
    labels: np.ndarray  # the student's label map, in the model view
    uncertainty: np.ndarray  # voxel-wise uncertainty of the strategy (entropy for random)
    image: np.ndarray  # the model view of the image
    extra: dict[str, Any] = field(default_factory=dict)


class Scorer:
    """A checkpoint's networks and the strategy that scores cases with them."""

    def __init__(self, checkpoint: str | Path, strategy: str, *, device: str = "cpu", precision: str = "fp32",
                 mc_passes: int = 8, seed: int = 0, which: str | None = None):
        from bfaseg.inference.checkpoints import load_model_from_checkpoint
        from bfaseg.inference.predictor import inference_fn

        if strategy not in STRATEGIES:
            raise BfasegError(f"--strategy: unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
        if mc_passes < 2:
            raise BfasegError(f"--passes: mc_dropout needs at least 2 passes, got {mc_passes}")
        path = Path(checkpoint)
        if not path.is_file():
            raise BfasegError(f"--checkpoint: file not found: {path}")
        self.strategy, self.device, self.precision = strategy, device, precision
        self.mc_passes, self.seed, self.checkpoint = mc_passes, seed, path
        self.model, self.cfg, self.state = load_model_from_checkpoint(path, device, which=which)
        self.ndim = self.cfg.model.ndim
        self.num_classes = self.cfg.model.num_classes
        self.forward = inference_fn(self.model, self.ndim, device)
        self.teacher = self.teacher_forward = None
        if self.state.get("teacher") is not None:
            self.teacher, _, _ = load_model_from_checkpoint(path, device, which="teacher")
            self.teacher_forward = inference_fn(self.teacher, self.ndim, device)
        if strategy == "disagreement" and self.teacher is None:
            raise BfasegError(f"--strategy disagreement: {path} has no teacher network "
                              f"(method {self.cfg.method.name!r}); use a mean_teacher/ua_mt/bcp/bfa run")
        if strategy == "boundary" and not hasattr(self.model, "boundary_head"):
            raise BfasegError(f"--strategy boundary: {path} has no boundary head "
                              f"(method {self.cfg.method.name!r}); use a bfa run")
        if strategy == "mc_dropout" and not any(
            isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in self.model.modules()
        ):
            raise BfasegError(f"--strategy mc_dropout: the network in {path} has no dropout layers (model.dropout: false)")

    # ------------------------------------------------------------------ inference (the project's loops)
    def _predict(self, image: np.ndarray, forward, cfg=None) -> tuple[np.ndarray, np.ndarray]:
        from bfaseg.inference.predictor import predict_array

        labels, probs, _ = predict_array(
            self.model, cfg or self.cfg, image, ndim=self.ndim, mode="fast", precision=self.precision,
            device=self.device, return_probs=True, forward=forward,
        )
        return labels, probs.numpy()

    def _boundary_forward(self):
        """The boundary head's "any class" boundary logit b as 2-channel logits ``[0, b]``: their softmax
        is ``[1 - sigmoid(b), sigmoid(b)]``, so the window blending of the inference loop applies unchanged."""
        fwd_model = self.model

        def forward(x: torch.Tensor) -> torch.Tensor:
            b = fwd_model(x.contiguous(), return_extras=True)["boundary"].amax(1, keepdim=True)
            mode = "trilinear" if x.ndim == 5 else "bilinear"
            b = F.interpolate(b.float(), size=x.shape[2:], mode=mode, align_corners=False)
            return torch.cat([torch.zeros_like(b), b], 1)

        return forward

    def _mc_probs(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean softmax and mean entropy over ``mc_passes`` passes with dropout sampling, BatchNorm in eval."""
        dropouts = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
        torch.manual_seed(self.seed)  # same masks for a case in any order
        mean_p = mean_h = None
        try:
            for m in dropouts:
                m.train()
            for _ in range(self.mc_passes):
                _, p = self._predict(image, self.forward)
                h = entropy_map(p)
                mean_p = p if mean_p is None else mean_p + p
                mean_h = h if mean_h is None else mean_h + h
        finally:
            self.model.eval()
        return mean_p / self.mc_passes, mean_h / self.mc_passes

    # ------------------------------------------------------------------ scores
    def score(self, case_id: str, image: np.ndarray) -> CaseScore:
        """Score one image given in the model view (:func:`model_view`)."""
        labels, probs = self._predict(image, self.forward)
        ent = entropy_map(probs)
        comp: dict[str, Any] = {"mean_entropy": float(ent.mean())}
        s, unc = self.strategy, ent
        if s == "entropy":
            score = comp["mean_entropy"]
        elif s == "mc_dropout":
            mean_p, mean_h = self._mc_probs(image)
            unc = np.clip(entropy_map(mean_p) - mean_h, 0, None)
            comp.update(mutual_information=float(unc.mean()), expected_entropy=float(mean_h.mean()))
            score = comp["mutual_information"]
        elif s == "disagreement":
            comp.update(self.agreement(labels, image))
            unc = (labels != comp.pop("_teacher_labels")).astype(np.float32)
            score = 1.0 - comp["teacher_dice"]
        elif s == "boundary":
            _, bprobs = self._predict(image, self._boundary_forward(), self._two_class_cfg())
            unc = binary_entropy(bprobs[1])
            band = contour_band(labels)
            comp.update(boundary_entropy=float(unc.mean()), band_voxels=int(band.sum()))
            comp["band_boundary_entropy"] = float(unc[band].mean()) if band.any() else comp["boundary_entropy"]
            score = comp["band_boundary_entropy"]
        else:
            score = random_score(case_id, self.seed)  # the entropy map is shown in the strip
        return CaseScore(case_id, float(score), comp, labels, unc, image)

    def _two_class_cfg(self):
        return self.cfg.model_copy(update={"model": self.cfg.model.model_copy(update={"num_classes": 2})})

    def agreement(self, labels: np.ndarray, image: np.ndarray) -> dict[str, Any]:
        """Teacher-student Dice and ASSD (:func:`label_agreement`), plus the teacher's labels under
        ``_teacher_labels``."""
        t_labels, _ = self._predict(image, self.teacher_forward)
        dice, assd = label_agreement(labels, t_labels, self.num_classes)
        return {"teacher_dice": dice, "teacher_assd": assd, "_teacher_labels": t_labels}


def label_agreement(a: np.ndarray, b: np.ndarray, num_classes: int) -> tuple[float, float]:
    """``(Dice, ASSD)`` of two label maps over classes 1..K-1: the ASSD (voxels) over the classes both
    hold (NaN when there is none), the Dice by :mod:`bfaseg.metrics` per class under its empty-class policy:
    a class neither map holds is left out of the mean (a free 1 would dilute a disagreement on the others).
    When neither holds any foreground the two agree completely: 1, not the metrics' NaN, because this
    number ranks cases and sets the ``low_agreement`` percentile, where a NaN would sort anywhere."""
    from bfaseg.metrics import binary_metrics, mean_over_classes

    per_class = [binary_metrics(a == c, b == c) for c in range(1, num_classes)]
    return mean_over_classes((m["dice"] for m in per_class), empty=1.0), mean_over_classes(m["assd"] for m in per_class)
