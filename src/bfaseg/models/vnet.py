"""V-Net as used by UA-MT/BCP for LA and Pancreas (16..256 channels, BatchNorm, ~9.45 M parameters)."""

from __future__ import annotations

from torch import nn

from bfaseg.models.base import EncoderDecoder


def _conv_block(n_convs: int, cin: int, cout: int) -> nn.Sequential:
    layers = []
    for i in range(n_convs):
        layers += [nn.Conv3d(cin if i == 0 else cout, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 2, stride=2), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose3d(cin, cout, 2, stride=2), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class _UpStage(nn.Module):
    """Upsample, add the skip (V-Net sums, it does not concatenate), then a conv block."""

    def __init__(self, cin: int, cout: int, n_convs: int):
        super().__init__()
        self.up = _up(cin, cout)
        self.block = _conv_block(n_convs, cout, cout)

    def forward(self, h, skip):
        return self.block(self.up(h) + skip)


class VNet(EncoderDecoder):
    ndim = 3

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base: int = 16, dropout: bool = True):
        super().__init__()
        c = [base * 2**i for i in range(5)]  # 16, 32, 64, 128, 256
        self.enc = nn.ModuleList(
            [
                _conv_block(1, in_channels, c[0]),
                nn.Sequential(_down(c[0], c[1]), _conv_block(2, c[1], c[1])),
                nn.Sequential(_down(c[1], c[2]), _conv_block(3, c[2], c[2])),
                nn.Sequential(_down(c[2], c[3]), _conv_block(3, c[3], c[3])),
                nn.Sequential(_down(c[3], c[4]), _conv_block(3, c[4], c[4])),
            ]
        )
        self.dropout = nn.Dropout3d(0.5) if dropout else nn.Identity()
        self.decoder = nn.ModuleList(
            [_UpStage(c[4], c[3], 3), _UpStage(c[3], c[2], 3), _UpStage(c[2], c[1], 2), _UpStage(c[1], c[0], 1)]
        )
        self.decoder_channels = [c[3], c[2], c[1], c[0]]
        # the reference applies dropout to the last decoder features too
        self.head = nn.Sequential(nn.Dropout3d(0.5) if dropout else nn.Identity(), nn.Conv3d(c[0], num_classes, 1))

    def encode(self, x):
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
        skips[-1] = self.dropout(skips[-1])
        return skips
