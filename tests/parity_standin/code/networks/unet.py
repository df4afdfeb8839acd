"""Stand-in for SSL4MIS's networks/unet.py (the parity harness test): a tiny network with its signature."""
import torch.nn as nn


class UNet(nn.Module):
    def __init__(self, in_chns, class_num):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_chns, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.Conv2d(4, class_num, 1))

    def forward(self, x):
        return self.net(x)
