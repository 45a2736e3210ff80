"""diffuse: a multi-domain diffusion framework.

``diffuse.core`` holds the domain-agnostic math (schedules, parameterizations, losses,
spaces, samplers, guidance, the trainer); ``diffuse.domains`` holds the image, audio and
molecule plug-ins; ``diffuse.api`` is the Python API the CLI is built on.
"""

__version__ = "0.1.0"
