"""Stand-in for BCP's networks/net_factory.py: BCP_net builds the network on .cuda(); a teacher (ema=True)
gets parameters that take no gradient."""
from networks.unet import UNet_2d


def BCP_net(in_chns=1, class_num=2, ema=False):
    net = UNet_2d(in_chns=in_chns, class_num=class_num).cuda()
    for p in net.parameters():
        p.requires_grad_(not ema)
    return net
