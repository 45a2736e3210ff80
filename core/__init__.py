"""Domain-agnostic core, by stage:

* ``core.process``: schedules and flow paths, the SDE view, parameterizations (the
  preconditioning), training times, losses, the denoiser, the diffusion objective, presets,
  exact Gaussian mixtures and likelihoods;
* ``core.sampling``: time grids, the samplers (one record each, in ``core.sampling.registry``),
  guidance and completion as denoiser wrappers, the chunked sampling loop, grid optimisation;
* ``core.training``: the trainer and its objectives' protocol, checkpoints, several processes,
  evaluation budgets, reflow pairs;
* ``core.data``: the Domain plug-in contract, Spaces, conditions, the domain registry, data-file
  helpers and the cache;
* ``core.models``: the auxiliary models every domain can have (autoencoders for latent
  diffusion, noise-aware classifiers);
* ``core.config`` (run configs), ``core.validation`` (checks of user values), ``core.errors``
  (the one error boundary: :class:`UserInputError`), ``core.io`` (atomic writes).

The names below are the public plug-in API, importable as ``from diffuse.core import NAME``;
they are loaded on first use, so importing a submodule (``diffuse.core.errors``) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the submodule that defines it
_PUBLIC: dict[str, str] = {
    # the plug-in contract
    "Domain": "data.domain", "DomainDataset": "data.domain", "Batch": "data.domain", "SubsetDataset": "data.domain",
    "Space": "data.space", "DenseSpace": "data.space", "per_sample_generators": "data.space",
    "GraphSpace": "data.graph",
    "Condition": "data.condition", "ConditionKind": "data.condition", "LabelKind": "data.condition",
    "TokensKind": "data.condition", "VectorKind": "data.condition", "ConcatKind": "data.condition",
    "register_kind": "data.condition",
    "register_domain": "data.registry", "get_domain": "data.registry", "available_domains": "data.registry",
    "Backbone": "data.backbones", "domain_backbones": "data.backbones",
    "scan_folder": "data.datafiles", "log_skipped": "data.datafiles",
    "capabilities": "data.capabilities", "Conditional": "data.capabilities", "Completable": "data.capabilities",
    "Restorable": "data.capabilities", "HasAutoencoder": "data.capabilities", "HasClassifier": "data.capabilities",
    # errors
    "UserInputError": "errors", "DataError": "errors", "CheckpointError": "errors", "ConfigError": "errors",
    "UnknownNameError": "errors", "NotSupportedError": "errors", "MissingPathError": "errors",
    # metrics every domain shares
    "frechet_from_features": "frechet",
    # the process
    "Schedule": "process.schedule", "LinearBetaSchedule": "process.schedule", "CosineSchedule": "process.schedule",
    "PolynomialSchedule": "process.schedule", "SigmaSchedule": "process.schedule", "TableSchedule": "process.schedule",
    "FlowSchedule": "process.paths", "SubVPSchedule": "process.schedule", "make_schedule": "process.schedules",
    "Prediction": "process.parameterization", "Scalings": "process.parameterization",
    "EpsParam": "process.parameterization", "X0Param": "process.parameterization", "VParam": "process.parameterization",
    "EDMParam": "process.parameterization", "FlowParam": "process.parameterization",
    "make_parameterization": "process.parameterization",
    "Denoiser": "process.denoiser", "DiffusionLoss": "process.loss", "Diffusion": "process.diffusion",
    # sampling
    "SAMPLERS": "sampling.registry", "SamplerRecord": "sampling.registry", "get_sampler": "sampling.registry",
    "sampler_record": "sampling.registry",
    "time_grid": "sampling.grids", "SPACINGS": "sampling.grids", "jump_logsnr_grid": "sampling.grids",
    "prior_sample": "sampling.common",
    "ddpm": "sampling.ancestral", "ddim": "sampling.ancestral", "ddim_invert": "sampling.ancestral",
    "unipc": "sampling.multistep", "external_denoiser": "sampling.external",
    "Guidance": "sampling.guidance", "ClassifierGuidance": "sampling.guidance",
    "classifier_free_guidance": "sampling.guidance", "classifier_guidance": "sampling.guidance",
    "generate": "sampling.generate",
    # configs and training
    "RunConfig": "config", "DiffusionConfig": "config", "TrainConfig": "config",
    "Trainer": "training.trainer", "Objective": "training.trainer",
    "Autoencoder": "models.latent",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
