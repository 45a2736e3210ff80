"""The process a run trains and samples: the diffusion of one tensor, or a mixed state's.

:func:`build_process` reads the run's :class:`~diffuse.core.config.DiffusionConfig` and the data's
``data_info``: without ``diffusion.components`` it is :class:`~diffuse.core.process.diffusion.Diffusion`
(every continuous domain, unchanged); with them :class:`~diffuse.core.process.mixed.MixedDiffusion`,
whose components must be those the data's samples have (``data_info["components"]``). Both are
objectives the trainer runs, and both sample through their own ``generate`` /
``generate_completion``.
"""

from __future__ import annotations

from typing import Any

from ..config import DiffusionConfig
from ..errors import ConfigError
from .diffusion import Diffusion
from .mixed import MixedDiffusion

__all__ = ["build_process", "is_mixed"]


def build_process(config: DiffusionConfig | dict[str, Any], data_info: dict[str, Any] | None = None):
    """The process of ``config`` for data described by ``data_info`` (``None``: check the config
    alone, before the data is read)."""
    if isinstance(config, dict):
        config = DiffusionConfig(**config)
    facts = (data_info or {}).get("components")
    if config.components is None:
        if facts:
            raise ConfigError(f"this data's samples have the components {', '.join(facts)} (a mixed state) but "
                              "diffusion.components is not set; give each component's process (see "
                              "docs/guides/molecules-with-bonds.md)")
        return Diffusion(config)
    if data_info is not None and not facts:
        raise ConfigError("diffusion.components describes a mixed state but this data's samples are one tensor; "
                          "leave diffusion.components out (or read data with components, e.g. molecules with "
                          "data option bonds: true)")
    return MixedDiffusion(config, facts)


def is_mixed(process: Any) -> bool:
    """Whether ``process`` samples a mixed state (it has components)."""
    return getattr(process, "components", None) is not None and not isinstance(process, Diffusion)
