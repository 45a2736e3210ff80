"""The image domain: U-Net backbone, image folder / IDX / bundled MNIST data, FID / KID, PNG output."""

from .domain import ImageDomain
from .unet import UNet

__all__ = ["ImageDomain", "UNet"]
