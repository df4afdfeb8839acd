"""Networks: V-Net (3-D) and the ACDC 2-D U-Net, both with optional boundary head and feature taps."""

from __future__ import annotations

from torch import nn

from bfaseg.models.base import EncoderDecoder, count_parameters
from bfaseg.models.unet2d import UNet2D
from bfaseg.models.vnet import VNet

__all__ = ["EncoderDecoder", "UNet2D", "VNet", "build_model", "count_parameters"]


def build_model(cfg) -> EncoderDecoder:
    """Build from a ``ModelConfig``."""
    cls = {"vnet": VNet, "unet2d": UNet2D}[cfg.name]
    model = cls(cfg.in_channels, cfg.num_classes, cfg.base_channels, cfg.dropout)
    if getattr(cfg, "sync_batchnorm", False):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
