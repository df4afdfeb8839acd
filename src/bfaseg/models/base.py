"""Shared encoder-decoder skeleton with optional boundary head and feature taps.

Subclasses provide ``encode(x) -> list of skips`` (deepest last), ``decoder``
(a ModuleList of stages taking ``(h, skip)``), ``decoder_channels`` and
``head`` (the output convolution). The base class adds, on request:
- a light boundary head on one early decoder stage, whose features are fused
  back into that stage so later stages see boundary-aware features (BFA);
- the decoder features of every stage (``return_extras=True``).
"""

from __future__ import annotations

import torch
from torch import nn


def conv_nd(ndim: int):
    return nn.Conv3d if ndim == 3 else nn.Conv2d


def bn_nd(ndim: int):
    return nn.BatchNorm3d if ndim == 3 else nn.BatchNorm2d


class BoundaryHead(nn.Module):
    """Predicts class-wise boundary logits from decoder features and fuses them back (residual)."""

    def __init__(self, ndim: int, channels: int, num_boundary: int, fuse: bool = True):
        super().__init__()
        Conv, BN = conv_nd(ndim), bn_nd(ndim)
        hidden = max(channels // 2, 8)
        self.body = nn.Sequential(Conv(channels, hidden, 3, padding=1, bias=False), BN(hidden), nn.ReLU(inplace=True))
        self.predict = Conv(hidden, num_boundary, 1)
        self.fuse = Conv(hidden + num_boundary, channels, 1) if fuse else None
        if self.fuse is not None:  # start as identity: fusion is learned, never harms at init
            nn.init.zeros_(self.fuse.weight)
            nn.init.zeros_(self.fuse.bias)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.body(h)
        logits = self.predict(hidden)
        if self.fuse is not None:
            h = h + self.fuse(torch.cat([hidden, torch.sigmoid(logits)], dim=1))
        return logits, h


class EncoderDecoder(nn.Module):
    ndim: int
    decoder: nn.ModuleList
    decoder_channels: list[int]
    head: nn.Module

    def add_boundary_head(self, stage: int, num_boundary: int, fuse: bool = True) -> None:
        if not 0 <= stage < len(self.decoder_channels):
            raise ValueError(f"boundary stage {stage} outside 0..{len(self.decoder_channels) - 1}")
        self.boundary_stage = stage
        self.boundary_head = BoundaryHead(self.ndim, self.decoder_channels[stage], num_boundary, fuse)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_extras: bool = False):
        skips = self.encode(x)
        h = skips[-1]
        features, boundary, head_input = [], None, None
        head = getattr(self, "boundary_head", None)
        for i, stage in enumerate(self.decoder):
            h = stage(h, skips[-2 - i])
            if head is not None and i == self.boundary_stage:
                head_input = h  # the decoder features the head and every later stage share
                boundary, h = head(h)
            features.append(h)
        logits = self.head(h)
        if not return_extras:
            return logits
        return {"logits": logits, "boundary": boundary, "features": features, "head_input": head_input}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
