"""The Python API: everything the CLI does is a few calls away.

    import diffuse.api as diffuse

    result = diffuse.train("image", steps=500, out="runs/image")      # bundled default data
    model = diffuse.load("runs/image")                                 # EMA weights by default
    model = diffuse.from_pretrained("molecules")                       # shipped, a run or a model folder
    model.save_pretrained("my-model")                                  # config, weights, model card
    samples = model.sample(16, sampler="ddim", steps=50, seed=0)

    # conditional: train with labels (condition dropout 0.1), sample class 7 with guidance 3
    diffuse.train("image", conditions=["label"], out="runs/digits")
    samples = diffuse.load("runs/digits").sample(16, cond={"label": 7}, guidance_scale=3)
    model.write(samples, "out/")
    print(model.evaluate(num=256))

    # few steps: distil into a consistency model, then sample with 2 evaluations by default
    diffuse.distill(pretrained="image", out="runs/digits-cd", method="cd")
    samples = diffuse.load("runs/digits-cd").sample(16, cond={"label": 7})

    # classifier guidance: a noise-aware classifier steers any model of the same data
    diffuse.train_classifier("image", out="runs/digits-clf")
    samples = model.sample(16, cond={"label": 7}, guidance="classifier", classifier="runs/digits-clf",
                           guidance_scale=4)

The package is split by job: ``configs`` (run configs from defaults, files and flags), ``plan``
(new / resume / init rules, decided once), ``runs`` (the one path that runs every training run),
``training`` (``train``), ``model`` and ``tasks`` (a trained model: sampling, evaluation,
completion, editing, restoration, likelihoods), ``loading`` (``load``, ``load_pretrained``,
``build``), ``autoencoder``, ``classifier``, ``auxiliary`` and ``guiding`` (the auxiliary models and their runs),
``reflow``, ``vocode`` (a mel-conditioned model as a neural vocoder), ``distill`` (few-step models from
trained ones; docs/guides/few-step.md).
"""

from __future__ import annotations

from ..core.data.cache import cache_dir, cache_entries, clear_cache
from ..core.data.backbones import Backbone, domain_backbones
from ..core.data.capabilities import capabilities
from ..core.data.registry import available_domains, domain_class, get_domain
from ..core.errors import (CheckpointError, ConfigError, DataError, NotSupportedError, UnknownNameError,
                           UserInputError)
from ..core.io import atomic_write_text as write_text, fresh_sample_dir, write_samples
from ..core.training.checkpoint import read_run_config
from ..core.training.trainer import TrainResult
from .autoencoder import load_autoencoder, reconstruction_report, train_autoencoder
from .classifier import train_classifier
from .guiding import load_classifier, prepare_classifier_guidance
from .configs import make_config, read_config_file, recipe_domain
from .distill import DISTILL_METHODS, distill
from .loading import build, load, load_pretrained
from .model import DiffusionModel, SampleReport
from .pretrained import from_pretrained, resolve_model
from .saving import model_kind, save_pretrained
from .plan import PRETRAINED_PREFIX, RESUMABLE_TRAIN_KEYS, init_domain
from .reflow import reflow
from .vocode import VocodeResult, is_vocoder, require_vocoder, vocode, vocode_metrics
from .training import train

__all__ = ["train", "load", "build", "from_pretrained", "save_pretrained", "resolve_model", "model_kind", "DiffusionModel", "SampleReport", "make_config", "available_domains",
           "get_domain", "domain_class", "capabilities", "Backbone", "domain_backbones", "TrainResult", "write_samples", "write_text",
           "fresh_sample_dir", "train_classifier", "load_classifier", "prepare_classifier_guidance", "load_pretrained",
           "recipe_domain", "read_config_file", "read_run_config", "init_domain", "train_autoencoder",
           "load_autoencoder", "reconstruction_report", "reflow", "distill", "DISTILL_METHODS", "vocode", "vocode_metrics", "VocodeResult", "is_vocoder",
           "require_vocoder", "cache_dir", "cache_entries", "clear_cache",
           "PRETRAINED_PREFIX", "RESUMABLE_TRAIN_KEYS", "UserInputError", "DataError", "CheckpointError", "ConfigError",
           "NotSupportedError", "UnknownNameError"]
