"""The video domain: clips ``[B, C, T, H, W]``, Moving-MNIST from the bundled digits, a 2-D U-Net over
stacked frames, per-frame FID / identity / physics metrics, GIF / MP4 / PNG-strip output.

Written only against the public plug-in API (:data:`diffuse.domains.PLUGIN_API`) and registered
through the ``diffuse.domains`` entry-point group, as a package from outside would be.
"""

from .domain import VideoDomain

__all__ = ["VideoDomain"]
