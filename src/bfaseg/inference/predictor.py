"""The one prediction pipeline: a network, a device, a precision and a window scheme in;
labels (and probabilities) in the image's own geometry out.

Training's validation, ``bfaseg evaluate``/``predict``/``report``/``experiment`` and the demo
all predict through :class:`Predictor`, so a results table and ``bfaseg evaluate`` on the same
checkpoint, device and precision give the same labels.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bfaseg.config import RunConfig
from bfaseg.data.components import largest_connected_component
from bfaseg.data.transforms import downsample_case_arrays, resize
from bfaseg.errors import BfasegError
from bfaseg.inference.slices2d import predict_slices
from bfaseg.inference.sliding_window import predict_volume
from bfaseg.precision import bf16_is_fast, resolve_device, resolve_precision

# Published sliding-window strides at full resolution (UA-MT / BCP test scripts).
PAPER_STRIDES = {"la": (18, 18, 4), "pancreas": (16, 16, 16)}

log = logging.getLogger(__name__)


def paper_stride(cfg: RunConfig, patch_size: tuple[int, ...]) -> list[int]:
    """Stride of ``paper`` mode: ``eval.stride`` when the run set one; else the published
    LA (18, 18, 4) / Pancreas (16, 16, 16) strides divided by ``data.downsample`` (half-res LA:
    9, 9, 2), so the window overlap matches the reference; else a quarter of the patch."""
    if cfg.eval.stride:
        return [int(s) for s in cfg.eval.stride]
    ref = PAPER_STRIDES.get(cfg.data.dataset)
    if ref is not None and len(patch_size) == 3:
        return [max(1, int(round(s / cfg.data.downsample))) for s in ref]
    return [max(1, p // 4) for p in patch_size]


def inference_fn(model: torch.nn.Module, ndim: int, device: str | torch.device = "cpu"):
    """The model as a ``batch -> logits`` callable in channels-last memory format
    (about 2x faster for 3-D convolutions on CPU). Not bit-equal to the contiguous model: the
    convolutions sum in another order, so probabilities may differ in the last bits; labels are
    expected identical and probabilities equal to 1e-5 (tests/test_reference_equivalence.py)."""
    fmt = torch.channels_last_3d if ndim == 3 else torch.channels_last
    model.to(device=torch.device(device), memory_format=fmt)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x.contiguous(memory_format=fmt))

    return forward


def slice_image_resize(cfg: RunConfig) -> str:
    """The 2-D slices' image zoom at inference: the one their training used (``data.slice_resize``)."""
    return "zoom_linear" if cfg.data.slice_resize == "linear" else "zoom_nearest"


def predict_array(
    model: torch.nn.Module,
    cfg: RunConfig,
    image,
    *,
    ndim: int,
    mode: str = "fast",
    stride: list[int] | None = None,
    overlap: float | None = None,
    batch_size: int | None = None,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    largest_component: bool = False,
    return_probs: bool = False,
    forward=None,
):
    """``(labels uint8, probs (K, *shape) or None, settings)`` for one image in the model's geometry.

    3-D networks: sliding window over the volume (``paper``: ``stride`` (default
    :func:`paper_stride`), one window per pass, uniform average; ``fast``: ``overlap``
    (default ``eval.overlap``), ``batch_size`` windows per pass, Gaussian blending).
    2-D networks: slice-wise over axis 0 of a 3-D image, each slice resized to
    ``data.patch_size`` and the prediction resized back (nearest), as the ACDC protocol.
    """
    patch = tuple(int(p) for p in cfg.data.patch_size)
    fwd = forward or inference_fn(model, ndim, device)
    settings: dict[str, Any] = {"mode": mode, "precision": precision, "patch_size": list(patch)}
    if ndim == 2:
        single = image.ndim == 2
        if single:
            image = image[None]
        labels, probs = predict_slices(
            image, fwd, input_size=patch, precision=precision, device=device,  # 16 slices per pass
            return_probs=return_probs, num_classes=cfg.model.num_classes, image_resize=slice_image_resize(cfg),
        )
        settings.update(mode="slice-wise", requested_mode=mode, image_resize=slice_image_resize(cfg))
        if single:
            labels, probs = labels[0], (probs[:, 0] if probs is not None else None)
    else:
        kw: dict[str, Any] = dict(mode=mode, precision=precision, device=device, num_classes=cfg.model.num_classes)
        if mode == "paper":
            kw["stride"] = list(stride) if stride else paper_stride(cfg, patch)
            settings.update(stride=kw["stride"], batch_size=1, blend="uniform")
        else:
            ov = cfg.eval.overlap if overlap is None else overlap
            bs = batch_size or cfg.eval.batch_size
            kw.update(overlap=ov, batch_size=bs)
            if stride:
                kw["stride"] = list(stride)
            settings.update(overlap=None if stride else ov, batch_size=bs, blend="gaussian", stride=kw.get("stride"))
        labels, probs = predict_volume(image, fwd, patch, return_probs=return_probs, **kw)
    if largest_component:
        labels = largest_connected_component(labels)
    settings["largest_component"] = bool(largest_component)
    return labels, probs, settings


def check_window_options(ndim: int, mode: str, stride, overlap, batch_size) -> None:
    """Window options (None: not given) that would change nothing are refused by name, never dropped:
    a 2-D network has no windows; paper mode steps one window at a time by its stride (the reference
    protocol), so it takes neither --overlap nor --batch-size; in fast mode --stride sets the windows
    and would override --overlap."""
    given = [(o, v) for o, v in (("--stride", stride), ("--overlap", overlap), ("--batch-size", batch_size))
             if v is not None]
    for option, _ in given:
        if ndim == 2:
            raise BfasegError(f"{option}: the checkpoint is a 2-D network (slice-wise inference has no windows)")
        if mode == "paper" and option != "--stride":
            raise BfasegError(f"{option}: applies to --mode fast only (paper mode predicts one window at a time, "
                              "stepping by --stride, as the reference protocol)")
    if mode == "fast" and stride is not None and overlap is not None:
        raise BfasegError("--overlap: --stride sets the windows in fast mode and would override it; "
                          "give --stride or --overlap, not both")


@dataclass
class Predictor:
    """A network and how to predict with it: the one prediction path of validation, evaluate, predict,
    experiment, report and the demo."""

    checkpoint: Path | None
    model: Any
    cfg: Any
    state: dict
    ndim: int
    device: str
    precision: str
    forward: Any
    mode: str
    stride: list[int] | None
    largest_component: bool
    overlap: float | None = None
    batch_size: int | None = None
    warnings: list[str] = field(default_factory=list)  # said on the console, recorded in summary.json

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        *,
        device: str | torch.device = "auto",
        precision: str | None = "auto",
        which: str | None = None,
        mode: str = "fast",
        stride: list[int] | None = None,
        overlap: float | None = None,
        batch_size: int | None = None,
        largest_component: bool = False,
    ) -> Predictor:
        """Load ``which`` weights (default: the network the run validated) of ``checkpoint`` on ``device``.

        ``device`` ``"run"``: the run's ``train.device``. ``precision`` ``auto``:
        :func:`bfaseg.precision.resolve_precision` (fp32 for paper mode); ``"run"``: the precision
        the run trained and validated in. ``stride`` is checked against the network.
        """
        from bfaseg.inference.checkpoints import load_model_from_checkpoint

        if device != "run":
            device = resolve_device(device, option="--device")
        checkpoint = Path(checkpoint)
        model, cfg, state = load_model_from_checkpoint(checkpoint, which=which)  # on the CPU first
        if device == "run":
            device = resolve_device(cfg.train.device, option="train.device")
        ndim = cfg.model.ndim
        check_window_options(ndim, mode, stride, overlap, batch_size)
        warnings = []
        if mode == "paper" and ndim == 2:  # said once, not only in summary.json: the option changes nothing
            warnings.append("--mode paper: the checkpoint is a 2-D network, predicted slice by slice "
                            "(no sliding window; for ACDC this is the reference protocol)")
            log.warning(warnings[-1])
        if stride is not None:
            if len(stride) == 1:
                stride = list(stride) * 3
            if len(stride) != 3 or min(stride) < 1:
                raise BfasegError(f"--stride: expected 3 positive integers, got {stride}")
        if precision == "run":
            precision = run_precision(checkpoint, cfg, state, device)
        return cls(
            checkpoint=checkpoint, model=model, cfg=cfg, state=state, ndim=ndim, device=str(device),
            precision=resolve_precision(precision, mode, device), forward=inference_fn(model, ndim, device),
            mode=mode, stride=stride, largest_component=largest_component, overlap=overlap, batch_size=batch_size,
            warnings=warnings,
        )

    @classmethod
    def from_args(cls, args) -> Predictor:
        """From the shared options of ``bfaseg evaluate`` / ``predict`` (``--checkpoint --model --device
        --precision --mode --stride --overlap --batch-size --largest-component``)."""
        return cls.from_checkpoint(
            args.checkpoint, device=args.device, precision=args.precision, which=args.model, mode=args.mode,
            stride=args.stride, overlap=getattr(args, "overlap", None), batch_size=getattr(args, "batch_size", None),
            largest_component=args.largest_component,
        )

    @classmethod
    def for_validation(cls, model, cfg: RunConfig, *, ndim: int, precision: str, device) -> Predictor:
        """A network being trained, predicted with the run's ``eval`` settings (training's validation)."""
        ev = cfg.eval
        precision = "bf16" if precision == "bf16" else "fp32"  # fp16 (CUDA) training validates in fp32
        return cls(
            checkpoint=None, model=model, cfg=cfg, state={}, ndim=ndim, device=str(device), precision=precision,
            forward=model, mode=ev.mode, stride=ev.stride, largest_component=ev.largest_component,
            overlap=ev.overlap, batch_size=ev.batch_size,
        )

    def predict(self, image: np.ndarray, *, xyz: bool = False, downsample: float = 1.0, probabilities: bool = False):
        """``(labels uint8, probs (K, *shape) numpy or None, settings)`` in the geometry of ``image``.

        A 3-D ``image`` is first downsampled by ``downsample`` (``data.downsample``) and the result
        resized back. 2-D networks predict the slices of axis 0, or the z-slices of (x, y, z) NIfTI
        volumes (``xyz``).
        """
        work = image
        if downsample != 1 and work.ndim == 3:
            work, _ = downsample_case_arrays(work, None, downsample)
        z_slices = self.ndim == 2 and xyz  # 2-D networks see (x, y, z) volumes as (z, y, x) slices
        if z_slices:
            work = np.ascontiguousarray(work.transpose(2, 1, 0))
        if self.ndim == 3 and work.ndim != 3:
            raise BfasegError("a 3-D network needs 3-D images")
        labels, probs, settings = predict_array(
            self.model, self.cfg, work, ndim=self.ndim, mode=self.mode, stride=self.stride, overlap=self.overlap,
            batch_size=self.batch_size, precision=self.precision, device=self.device,
            largest_component=self.largest_component, return_probs=probabilities, forward=self.forward,
        )
        probs = probs.float().cpu().numpy() if probs is not None else None
        if z_slices:
            labels = np.ascontiguousarray(labels.transpose(2, 1, 0))
            probs = np.ascontiguousarray(probs.transpose(0, 3, 2, 1)) if probs is not None else None
        if labels.shape != image.shape:  # undo the downsampling
            labels = resize(labels, image.shape, order=0)
            if probs is not None:
                probs = np.stack([resize(p, image.shape, order=1) for p in probs])
        return labels, probs, settings

    def describe(self, settings: dict) -> dict:
        """The inference fields of ``summary.json``: settings, mode, checkpoint provenance."""
        from bfaseg.inference.checkpoints import describe_checkpoint

        return {
            "inference": {**settings, "device": self.device, "weights": self.state.get("_loaded_weights")},
            "mode": self.mode,
            "checkpoint": describe_checkpoint(self.checkpoint, self.state),
        }


def run_precision(checkpoint: Path, cfg: RunConfig, state: dict[str, Any], device) -> str:
    """The precision the run validated in: the one the trainer chose (stored in the checkpoint, or in
    the run's train_summary.json for older checkpoints; ``auto`` may have picked fp32 for a reason),
    else ``train.precision`` with ``auto`` resolved on ``device``. fp16 runs validated in fp32."""
    chosen = state.get("precision")
    summary = Path(checkpoint).parent.parent / "train_summary.json"
    if chosen is None and summary.is_file():
        try:
            chosen = json.loads(summary.read_text()).get("precision")
        except (OSError, ValueError):
            chosen = None
    if chosen is None:
        chosen = cfg.train.precision
        if chosen == "auto" and bf16_is_fast(device):
            chosen = "bf16"
    return "bf16" if chosen == "bf16" else "fp32"
