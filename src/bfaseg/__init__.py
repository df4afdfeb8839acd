"""bfaseg: semi-supervised medical image segmentation with boundary feature alignment."""

__version__ = "0.1.0"
