"""diffuse: a multi-domain diffusion framework.

``diffuse.core`` holds the domain-agnostic math (schedules, parameterizations, losses,
spaces, samplers, guidance, the trainer); ``diffuse.domains`` holds the image, audio and
molecule plug-ins; ``diffuse.api`` is the Python API the CLI is built on.
"""

__version__ = "0.1.0"



def __getattr__(name: str):
    """``diffuse.train``, ``diffuse.load``, ``diffuse.load_pretrained``... : the names of
    :mod:`diffuse.api`, imported on first use, so that ``import diffuse`` stays light (no torch
    until a model is touched; the CLI chooses its OpenMP settings before torch is loaded)."""
    if not name.startswith("_") and name != "api":
        import importlib

        api = importlib.import_module(f"{__name__}.api")   # from sys.modules: no attribute lookup here
        if name in api.__all__:
            return getattr(api, name)
    raise AttributeError(f"module 'diffuse' has no attribute {name!r}")


def __dir__() -> list[str]:
    import importlib

    return sorted({*globals(), *importlib.import_module(f"{__name__}.api").__all__})
