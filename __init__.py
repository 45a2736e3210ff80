"""diffuse: a multi-domain diffusion framework.

``diffuse.core`` holds the domain-agnostic math (schedules, parameterizations, losses,
spaces, samplers, guidance, the trainer); ``diffuse.domains`` holds the image, audio and
molecule plug-ins; ``diffuse.api`` is the Python API the CLI is built on.
"""

import importlib

__version__ = "0.1.0"


def _api():
    return importlib.import_module(f"{__name__}.api")   # from sys.modules: no attribute lookup on the package


def __getattr__(name: str):
    """``diffuse.train``, ``diffuse.load``, ``diffuse.load_pretrained``... : the names of
    :mod:`diffuse.api`, imported on first use, so that ``import diffuse`` stays light (no torch
    until a model is touched; the CLI chooses its OpenMP settings before torch is loaded)."""
    if not name.startswith("_") and name != "api" and name in _api().__all__:
        return getattr(_api(), name)
    raise AttributeError(f"module 'diffuse' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_api().__all__})
