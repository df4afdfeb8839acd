"""Inference engine: sliding-window (2-D/3-D), slice-wise 2-D, post-processing.

All functions take ``model``: a callable mapping a float32 batch ``(N, C, *spatial)``
to logits ``(N, K, *spatial)`` as a Tensor (wrap networks that return tuples/dicts).
"""

from bfaseg.data.components import largest_connected_component
from bfaseg.inference.sliding_window import (
    gaussian_importance_map,
    pad_amounts,
    predict_volume,
    sliding_window_probs,
    window_starts,
)
from bfaseg.inference.slices2d import predict_slices

__all__ = [
    "window_starts",
    "pad_amounts",
    "gaussian_importance_map",
    "sliding_window_probs",
    "predict_volume",
    "predict_slices",
    "largest_connected_component",
]
