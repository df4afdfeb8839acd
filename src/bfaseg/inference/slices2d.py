"""Slice-by-slice 2-D inference of a 3-D volume (the ACDC protocol).

Each slice of a ``(Z, Y, X)`` volume is resized to the network input size, the
slices are predicted in batches, and the prediction is resized back to the original
slice size.

Resizing the image (``image_resize``):

``"bilinear"``
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``.
``"zoom_linear"`` (default)
    ``scipy.ndimage.zoom(order=1, grid_mode=False)``: exactly how bfaseg's training pipeline
    resizes ACDC slices at load (``bfaseg.data.transforms.resize``), corner pixels aligned.
    Bilinear with ``align_corners=False`` samples a grid shifted by up to 1.5 pixels at the
    edges of a 256-pixel slice resized to 64, so a network trained on zoomed slices sees
    slightly misregistered images; use this for bfaseg-trained 2-D models.
``"zoom_nearest"``
    ``scipy.ndimage.zoom(order=0)``, which is what the public reference code does
    (SSL4MIS ``test_single_volume`` and its training ``RandomGenerator`` both zoom the
    IMAGE with ``order=0``, i.e. nearest neighbour).  Use it to reproduce published
    numbers, and in general use the same resize as the training pipeline.

Resizing the prediction back (``resize_back``):

``"label_nearest"`` (default, the reference protocol)
    argmax at the input size, then ``scipy.ndimage.zoom(order=0)`` of the label map
    by ``(Y / h, X / w)``, exactly as the reference.  If probabilities are requested
    they are resampled with the same nearest-neighbour mapping, so their argmax is
    the returned label map.
``"probs_bilinear"``
    the softmax probabilities are resized back bilinearly (``align_corners=False``)
    and the argmax is taken at the original size (smoother boundaries).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bfaseg.errors import BfasegError
from bfaseg.io.resample import resample
from bfaseg.inference.sliding_window import Model, forward_logits, probs_to_labels

RESIZE_BACK = ("label_nearest", "probs_bilinear")
IMAGE_RESIZE = ("bilinear", "zoom_linear", "zoom_nearest")
PRECISIONS = ("fp32", "bf16")

__all__ = ["predict_slices", "RESIZE_BACK", "IMAGE_RESIZE"]


def _zoom_slices(arr: np.ndarray, out_hw: tuple[int, int], order: int = 0) -> np.ndarray:
    """The values of ``scipy.ndimage.zoom(order=order, grid_mode=False)`` of the last two axes of a stack
    of slices (:func:`~bfaseg.io.resample.resample` with ``mode="constant"``).

    Zooming a stack with factor 1 on the leading axes gives the same values as zooming
    each slice on its own (orders 0 and 1 are separable, and factor 1 maps indices to themselves).
    """
    return resample(arr, arr.shape[:-2] + tuple(out_hw), order, mode="constant")


def predict_slices(
    volume: np.ndarray,
    model: Model,
    input_size: Sequence[int] | None = (256, 256),
    batch_size: int = 16,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    *,
    resize_back: str = "label_nearest",
    image_resize: str = "zoom_linear",
    return_probs: bool = False,
    num_classes: int | None = None,
) -> tuple[np.ndarray, torch.Tensor | None]:
    """Predict a ``(Z, Y, X)`` volume slice by slice with a 2-D network.

    The model receives float32 batches ``(B, 1, h, w)`` with ``(h, w) = input_size``
    (``None``: the original slice size, no resizing) and returns logits ``(B, K, h, w)``.

    Returns ``(labels, probs)``: ``labels`` uint8 ``(Z, Y, X)``; ``probs`` float32
    ``(K, Z, Y, X)`` on the CPU when ``return_probs`` is true, else ``None``.
    """
    if resize_back not in RESIZE_BACK:
        raise BfasegError(f"resize_back must be one of {RESIZE_BACK}, got {resize_back!r}")
    if image_resize not in IMAGE_RESIZE:
        raise BfasegError(f"image_resize must be one of {IMAGE_RESIZE}, got {image_resize!r}")
    if precision not in PRECISIONS:
        raise BfasegError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise BfasegError(f"batch_size must be a positive integer, got {batch_size!r}")

    if isinstance(volume, torch.Tensor):
        volume = volume.detach().cpu().numpy()
    vol = np.ascontiguousarray(np.asarray(volume), dtype=np.float32)
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise BfasegError(f"predict_slices needs a non-empty (Z, Y, X) volume, got shape {vol.shape}")
    n_slices, height, width = vol.shape
    orig_hw = (height, width)
    in_hw = orig_hw if input_size is None else tuple(int(s) for s in input_size)
    if len(in_hw) != 2 or min(in_hw) < 1:
        raise BfasegError(f"input_size must be two positive integers, got {input_size!r}")
    resize = in_hw != orig_hw
    dev = torch.device(device)

    labels = np.zeros(vol.shape, dtype=np.uint8)
    probs_out: torch.Tensor | None = None

    with torch.inference_mode():
        for z0 in range(0, n_slices, int(batch_size)):
            chunk = vol[z0 : z0 + int(batch_size)]
            if resize and image_resize in ("zoom_nearest", "zoom_linear"):
                chunk = _zoom_slices(chunk, in_hw, order=int(image_resize == "zoom_linear"))
            x = torch.from_numpy(np.ascontiguousarray(chunk)).to(dev).unsqueeze(1)
            if resize and image_resize == "bilinear":
                x = F.interpolate(x, size=in_hw, mode="bilinear", align_corners=False)
            probs = torch.softmax(forward_logits(model, x, precision, dev), dim=1)
            k = int(probs.shape[1])
            if num_classes is not None and k != num_classes:
                raise ValueError(f"the model produced {k} classes, expected num_classes={num_classes}")

            if not resize:
                back = probs.cpu() if return_probs else None
                lab = probs_to_labels(probs.transpose(0, 1))
            elif resize_back == "label_nearest":
                lab = _zoom_slices(probs_to_labels(probs.transpose(0, 1)), orig_hw)
                back = None
                if return_probs:
                    back = torch.from_numpy(_zoom_slices(probs.cpu().numpy(), orig_hw))
            else:  # probs_bilinear
                up = F.interpolate(probs, size=orig_hw, mode="bilinear", align_corners=False)
                lab = probs_to_labels(up.transpose(0, 1))
                back = up.cpu() if return_probs else None

            labels[z0 : z0 + lab.shape[0]] = lab
            if return_probs:
                if probs_out is None:
                    probs_out = torch.zeros((k,) + vol.shape, dtype=torch.float32)
                probs_out[:, z0 : z0 + back.shape[0]] = back.transpose(0, 1)

    # Clone outside inference mode so callers get an ordinary tensor.
    return labels, (probs_out.clone() if probs_out is not None else None)
