"""2-D U-Net of the ACDC protocol (SSL4MIS): 16..256 channels, BatchNorm, LeakyReLU,
encoder dropout 0.05..0.5, bilinear upsampling, ~1.81 M parameters."""

from __future__ import annotations

import torch
from torch import nn

from bfaseg.models.base import EncoderDecoder


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(),
        )

    def forward(self, x):
        return self.net(x)


class _UpStage(nn.Module):
    """1x1 conv, bilinear x2, concatenate the skip, conv block."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.reduce = nn.Conv2d(cin, cskip, 1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.block = ConvBlock(cskip * 2, cout, 0.0)

    def forward(self, h, skip):
        return self.block(torch.cat([skip, self.up(self.reduce(h))], dim=1))


class UNet2D(EncoderDecoder):
    ndim = 2

    def __init__(self, in_channels: int = 1, num_classes: int = 4, base: int = 16, dropout: bool = True):
        super().__init__()
        c = [base * 2**i for i in range(5)]
        p = [0.05, 0.1, 0.2, 0.3, 0.5] if dropout else [0.0] * 5
        blocks = [ConvBlock(in_channels, c[0], p[0])]
        for i in range(1, 5):
            blocks.append(nn.Sequential(nn.MaxPool2d(2), ConvBlock(c[i - 1], c[i], p[i])))
        self.enc = nn.ModuleList(blocks)
        self.decoder = nn.ModuleList([_UpStage(c[4 - i], c[3 - i], c[3 - i]) for i in range(4)])
        self.decoder_channels = [c[3], c[2], c[1], c[0]]
        self.head = nn.Conv2d(c[0], num_classes, 3, padding=1)

    def encode(self, x):
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
        return skips
