"""The image domain: U-Net backbone, image folder / IDX / bundled MNIST data, FID / KID, PNG output.

Besides :class:`ImageDomain`, these names are part of the public plug-in API (see
:data:`diffuse.domains.PLUGIN_API`) for other domains to reuse rather than copy: the U-Net and its
building blocks (:class:`UNet`, :class:`ResBlock`, :class:`Upsample`, :class:`GroupNormSiLU`), the
digit feature network (:class:`LeNet`, :func:`bundled_lenet`, :func:`train_lenet`,
:func:`extract_features`) and the loader of a user's Inception network (:class:`InceptionFeatures`),
the bundled MNIST digits (:func:`load_bundled`) and the PNG helpers (:func:`to_uint8`,
:func:`make_grid`).
"""

from .data import BUNDLED_PATH, load_bundled
from .domain import ImageDomain
from .features import InceptionFeatures, LeNet, bundled_lenet, extract_features, train_lenet
from .unet import GroupNormSiLU, ResBlock, UNet, Upsample
from .writer import make_grid, to_uint8

__all__ = ["ImageDomain", "UNet", "ResBlock", "Upsample", "GroupNormSiLU", "LeNet", "bundled_lenet", "train_lenet",
           "extract_features", "InceptionFeatures", "load_bundled", "BUNDLED_PATH", "to_uint8", "make_grid"]
