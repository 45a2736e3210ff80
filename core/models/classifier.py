"""Noise-aware classifiers for classifier guidance (Dhariwal & Nichol 2021), for any domain.

A domain bound to the data supplies the network (``Domain.build_classifier(model, target)``:
``f(x, noise_level, space=...) -> [B, K]`` logits, or ``[B, 1]`` for a real property); core
wraps it in a :class:`NoisyClassifier`, trains it on noised data, stores it in a run folder and
turns it into a guidance term for any sampler.

**Schedule-free input.** The classifier sees a noisy sample through the noise level
``s = sigma / alpha`` only (the VE view of ``x_t = alpha x_0 + sigma eps`` is ``x_t / alpha =
x_0 + s eps``):

    f(x_t / sqrt(alpha^2 + sigma^2),  100 ln s)

(the input has the scale of the VP sample of the same noise level, unit variance for unit-variance
data). So one classifier, trained once, guides every diffusion model of the same data, whatever
its schedule (linear, cosine, VE...) or parameterization. Scaling commutes with rotations, so an
E(3)-invariant network stays invariant.

**Targets** (:class:`Target`): ``label`` (class labels; log p(y | x_t) = log softmax) or
``property:NAME`` (a real property the domain computes or the data carries, standardised with
the training mean / std; a Gaussian log-likelihood ``log p(y | x_t) = -(f(x_t) - y)^2 / 2``
in standard units, the EDM-style property guidance).

**Training** (:class:`ClassifierObjective`): the trainer's objective
(``core.training.trainer``), so a classifier run gets the optimiser, EMA, checkpoints and exact
resumption of every trained model; each sample is noised at a time from the diffusion's training
times and scored by the target's loss. The run folder's ``config.json`` has ``"kind":
"classifier"``; its EMA weights are the ones used.

**Guidance** (:meth:`Classifier.guidance`): a
:class:`~diffuse.core.sampling.guidance.ClassifierGuidance` wrapper with ``log p(y | x_t, t)`` of
the requested targets, for ``generate(..., guidance=[...])``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TrainConfig
from ..data.condition import Condition, LabelKind
from ..data.domain import Batch, Domain, DomainDataset
from ..data.space import Space
from ..errors import UserInputError
from ..process.schedule import Schedule
from ..sampling.guidance import ClassifierGuidance
from ..training.checkpoint import checkpoint_dir, load_kind_config, read_weights

__all__ = ["Target", "NoisyClassifier", "Classifier", "ClassifierConfig", "ClassifierObjective", "label_kind",
           "evaluate_classifier", "classifier_weights", "NOISE_SCALE"]

#: the classifier's noise-level input is ``NOISE_SCALE * ln(sigma / alpha)``
NOISE_SCALE = 100.0
_F64 = torch.float64


def label_kind(domain: Domain) -> LabelKind | None:
    """The class labels of the data a bound ``domain`` describes: its ``label`` condition, else
    ``classes`` / ``num_classes`` (+ ``class_names``) recorded by its dataset; None if none."""
    data_info = domain.info
    kind = domain.condition_kinds().get("label")
    if isinstance(kind, LabelKind):
        return kind
    if data_info.get("classes"):
        return LabelKind(len(data_info["classes"]), data_info["classes"])
    if data_info.get("num_classes"):
        return LabelKind(int(data_info["num_classes"]), data_info.get("class_names"))
    return None


@dataclass
class Target:
    """What a classifier predicts: ``label`` (``num_classes``, ``class_names``, name ``aliases``) or a real
    ``property`` (``name``, training ``mean`` and ``std``)."""

    kind: str
    name: str = "label"
    num_classes: int = 0
    class_names: list[str] | None = None
    aliases: dict[str, int] | None = None
    mean: float = 0.0
    std: float = 1.0

    @staticmethod
    def parse_spec(text: str) -> tuple[str, str]:
        """``"label"`` or ``"property:NAME"`` -> ``(kind, name)``; ``ValueError`` otherwise."""
        text = str(text).strip()
        if text == "label":
            return "label", "label"
        kind, sep, name = text.partition(":")
        if kind == "property" and sep and name.strip():
            return "property", name.strip()
        raise UserInputError(f"--target must be 'label' or 'property:NAME', got {text!r}")

    @property
    def out_dim(self) -> int:
        return self.num_classes if self.kind == "label" else 1

    def describe(self) -> str:
        return (f"label ({self.num_classes} classes)" if self.kind == "label"
                else f"property {self.name} (mean {self.mean:.4g}, std {self.std:.4g})")

    def values(self, domain: Domain, batch: Batch) -> Tensor:
        """The targets of a training batch of a bound ``domain``'s data: long labels ``[B]`` or raw
        property values ``[B]``."""
        if self.kind == "property":
            return domain.classifier_property(self.name, batch).to(_F64).reshape(-1)
        cond = batch.cond
        if isinstance(cond, Condition) and "label" in cond:
            return cond["label"].long()
        if isinstance(cond, Tensor) and not cond.is_floating_point():
            return cond.long().reshape(-1)
        if "labels" in batch.extras:
            return torch.as_tensor(batch.extras["labels"]).long()
        raise UserInputError("the data's batches carry no class labels")

    def parse(self, value: Any, n: int) -> Tensor:
        """User targets for ``n`` samples (cycled lists): label indices / names, or property values."""
        if self.kind == "label":
            return LabelKind(self.num_classes, self.class_names, self.aliases).parse(value, n)
        vals = value.tolist() if isinstance(value, Tensor) else value
        vals = list(vals) if isinstance(vals, (list, tuple)) else [vals]
        if not vals or len(vals) > n:
            raise UserInputError(f"property {self.name}: give one value or up to {n} values, got {value!r}")
        try:
            out = torch.tensor([float(vals[i % len(vals)]) for i in range(n)], dtype=_F64)
        except (TypeError, ValueError):
            raise UserInputError(f"property {self.name} must be a number, got {value!r}") from None
        if not bool(torch.isfinite(out).all()):
            raise UserInputError(f"property {self.name} must be finite, got {value!r}")
        return out

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Per-sample negative log-likelihood ``[B]`` (cross-entropy, or squared error / 2 in standard units)."""
        return -self.log_prob(out, y)

    def log_prob(self, out: Tensor, y: Tensor) -> Tensor:
        """``log p(y | x_t)`` per sample from the network output ``[B, K]``."""
        if self.kind == "label":
            return -F.cross_entropy(out.float(), y.to(out.device).long(), reduction="none")
        z = (y.to(out.device, _F64) - self.mean) / self.std
        return -0.5 * (out.float().reshape(-1) - z.float()) ** 2

    def predict(self, out: Tensor) -> Tensor:
        """Predicted labels, or property values in the data's units."""
        if self.kind == "label":
            return out.argmax(-1)
        return out.double().reshape(-1) * self.std + self.mean


class NoisyClassifier(nn.Module):
    """A domain's classifier network with the schedule-free input (see the module docstring)."""

    def __init__(self, net: nn.Module, target: Target) -> None:
        super().__init__()
        self.net = net
        self.target = target

    def forward(self, x_t: Tensor, alpha: Tensor, sigma: Tensor, space: Space) -> Tensor:
        alpha, sigma = torch.as_tensor(alpha, dtype=_F64), torch.as_tensor(sigma, dtype=_F64)
        n = space.batch_size(x_t)
        alpha, sigma = alpha.expand(n) if alpha.ndim == 0 else alpha, sigma.expand(n) if sigma.ndim == 0 else sigma
        c_in = 1.0 / torch.sqrt(alpha ** 2 + sigma ** 2)
        level = (sigma / alpha.clamp_min(1e-12)).clamp_min(1e-6)
        noise = (NOISE_SCALE * torch.log(level)).to(device=x_t.device, dtype=torch.float32)
        return self.net(space.coef(c_in.to(x_t.device), x_t) * x_t, noise, space=space)

    def at(self, schedule: Schedule) -> Callable[..., Tensor]:
        """``f(x_t, t, space=) -> output`` at schedule times ``t`` (what ``core.sampling.guidance`` expects)."""
        def fn(x_t: Tensor, t: Tensor, space: Space) -> Tensor:
            alpha, sigma = schedule.alpha_sigma(t.to(_F64))
            return self(x_t, alpha, sigma, space)
        return fn


@dataclass
class ClassifierConfig:
    """A classifier run's ``config.json`` (``kind`` is always ``"classifier"``)."""

    domain: str
    target: dict[str, Any]
    data: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    data_info: dict[str, Any] = field(default_factory=dict)
    kind: str = "classifier"
    version: int = 1
    #: a classifier of latents: the autoencoder record (``core.models.latent.autoencoder_record``)
    latent: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def load(cls, run_dir: str | Path) -> "ClassifierConfig":
        return load_kind_config(cls, run_dir, "classifier", "train-classifier",
                                f"{run_dir} is not a classifier run (a diffusion run?); train one with "
                                "'diffuse train-classifier'")


# keys of data_info that describe one training set, not the shape of its samples
_RUN_KEYS = {"conditional", "conditions", "num_images", "num_clips", "num_molecules", "num_atoms_hist", "max_atoms",
             "source", "feature_net", "classes", "num_classes", "class_names", "properties"}


class Classifier:
    """A trained noise-aware classifier: its domain (bound to the data it was trained on), target,
    network and run config."""

    def __init__(self, domain: Domain, config: ClassifierConfig, module: NoisyClassifier,
                 device: torch.device, run_dir: Path | None = None) -> None:
        self.domain, self.config, self.module, self.device, self.run_dir = domain, config, module, device, run_dir
        self.module.eval()

    @property
    def target(self) -> Target:
        return self.module.target

    def check_compatible(self, domain: str, data_info: dict[str, Any]) -> None:
        """``ValueError`` unless a diffusion model of ``domain`` on ``data_info`` draws samples
        this classifier can read (same domain, same sample layout)."""
        where = f"classifier {self.run_dir}" if self.run_dir else "the classifier"
        if domain != self.config.domain:
            raise UserInputError(f"{where} is for the {self.config.domain!r} domain, the model for {domain!r}")
        mine = {k: v for k, v in self.config.data_info.items() if k not in _RUN_KEYS}
        theirs = {k: v for k, v in data_info.items() if k not in _RUN_KEYS}
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            k = diff[0]
            raise UserInputError(f"{where} was trained on other data than the model ({k}: {mine.get(k)!r} vs "
                             f"{theirs.get(k)!r})")

    def parse_target(self, cond: Any, num: int) -> Tensor:
        """The requested targets of ``num`` samples from a condition dict (``{"label": 7}``,
        ``{"gyration": 2.5}``); ``ValueError`` if it names none or an unknown label."""
        name = self.target.name
        if not isinstance(cond, dict) or cond.get(name) is None:
            what = "--label" if self.target.kind == "label" else f"--target-value {name}=VALUE"
            raise UserInputError(f"classifier guidance needs a target for the classifier's {name} ({what})")
        return self.target.parse(cond[name], num)

    @torch.no_grad()
    def predict(self, samples: Batch, level: float = 0.0) -> Tensor:
        """Predicted labels / property values of clean (``level`` 0) or noised samples."""
        x = samples.x.to(self.device)
        sigma = torch.tensor(max(level, 1e-6), dtype=_F64)
        return self.target.predict(self.module(x, torch.tensor(1.0, dtype=_F64), sigma, samples.space.to(self.device)))

    def guidance(self, targets: Tensor, scale: float, schedule: Schedule) -> ClassifierGuidance:
        """A denoiser wrapper adding ``scale * grad log p(y | x_t)`` for the requested ``targets``
        (one per sample of the run) to a diffusion model on ``schedule``."""
        fn = self.module.at(schedule)
        target = self.target

        def log_prob(x: Tensor, t: Tensor, space: Space, y: Tensor) -> Tensor:
            return target.log_prob(fn(x, t, space=space), y)
        return ClassifierGuidance(log_prob, targets, scale, schedule)


class ClassifierObjective:
    """The trainer's objective for a noise-aware classifier (Dhariwal & Nichol 2021): each sample
    noised at a time ``t ~ sample_t`` (the diffusion's training times), ``x_t = alpha x_0 + sigma
    eps``, scored by the target's loss (cross-entropy for labels, a Gaussian negative
    log-likelihood in standard units for a property). ``domain``: bound to the training data (a
    property target's values come from it)."""

    #: a classifier run does not sample: no periodic or final evaluation
    samples = False

    def __init__(self, domain: Domain, schedule: Schedule, sample_t: Callable[..., Tensor]) -> None:
        self.domain, self.schedule, self.sample_t = domain, schedule, sample_t

    def training_losses(self, model: NoisyClassifier, batch: Batch, generator: torch.Generator | None = None,
                        shard: tuple[int, int] | None = None) -> Tensor:
        target = model.target
        y = target.values(self.domain, batch)
        x0, space = batch.x, batch.space
        n = space.batch_size(x0)
        t = self.sample_t(n, generator, x0.device)
        eps = space.noise(x0, generator)
        if shard is not None:
            start, stop = shard
            eps, _ = space.take(eps, start, stop)
            x0, space = space.take(x0, start, stop)
            t, y = t[start:stop], y[start:stop]
        alpha, sigma = self.schedule.alpha_sigma(t)
        x_t = space.coef(alpha, x0) * x0 + space.coef(sigma, x0) * eps
        out = model(x_t, alpha, sigma, space)
        return target.loss(out, y.to(out.device))


def evaluate_classifier(module: NoisyClassifier, domain: Domain, dataset: DomainDataset,
                        levels: tuple[float, ...] = (0.0, 0.3, 1.0, 3.0), batch_size: int = 256, seed: int = 0,
                        device: torch.device | str = "cpu") -> dict[str, float]:
    """Held-out accuracy (labels) or RMSE (properties, data units) at noise levels ``sigma / alpha``
    (0 = clean; a level ``s`` is the VP input ``(x_0 + s eps) / sqrt(1 + s^2)``), noise seeded;
    ``domain`` is bound to the data of ``dataset``."""
    module.eval()
    target = module.target
    out: dict[str, float] = {}
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for level in levels:
            hits, sq, n = 0.0, 0.0, 0
            for start in range(0, len(dataset), batch_size):
                idx = torch.arange(start, min(len(dataset), start + batch_size))
                batch = dataset.batch(idx, torch.Generator().manual_seed(seed))
                y = target.values(domain, batch)
                x, space = batch.x, batch.space
                eps = space.noise(x, gen)
                x_t = (x + level * eps).to(device)
                pred = target.predict(module(x_t, torch.tensor(1.0, dtype=_F64),
                                             torch.tensor(max(level, 1e-6), dtype=_F64), space.to(device))).cpu()
                if target.kind == "label":
                    hits += float((pred == y).sum())
                else:
                    sq += float(((pred - y) ** 2).sum())
                n += len(y)
            key = "clean" if level == 0 else f"level_{level:g}"
            if target.kind == "label":
                out[f"accuracy_{key}"] = hits / max(n, 1)
            else:
                out[f"rmse_{key}"] = math.sqrt(sq / max(n, 1))
    if target.kind == "property":
        out["property_std"] = target.std
    return out


def classifier_weights(run_dir: Path) -> dict[str, Tensor]:
    """The weights a classifier run is used with: its EMA weights (the model's own in runs written
    before classifiers trained with an EMA)."""
    ckpt = checkpoint_dir(run_dir)
    ema = ckpt / "ema.safetensors"
    return read_weights(ema if ema.is_file() else ckpt / "model.safetensors")
