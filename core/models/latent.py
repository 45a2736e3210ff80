"""Latent diffusion (Rombach et al. 2022): diffusion on the latent of a frozen autoencoder.

Two pieces, both domain-agnostic:

* :class:`Autoencoder`: the interface a domain implements (``Domain.build_autoencoder``).
  ``encode(batch) -> z`` (unscaled; a posterior sample or its mean), ``decode(z, like) -> x``,
  the latent's :class:`~diffuse.core.data.space.Space` and the ``data_info`` its backbone needs, a
  training objective ``loss(batch)``, and a ``scale`` buffer, ``1 / std`` of the latents of a
  data sample (:meth:`Autoencoder.fit_scale`), stored with the weights. Latents keep the data's
  batch structure: dense ``[B, C, h, w]`` / ``[B, C, l]``; graphs ``[N, 3 + k]`` in the data's
  :class:`~diffuse.core.data.graph.GraphSpace` (the first 3 columns equivariant latent positions,
  centred; then ``k`` invariant latent features).
* :class:`LatentDomain`: any domain plus a trained, frozen autoencoder, itself a
  :class:`~diffuse.core.data.domain.Domain`. Its datasets encode each batch (scaled), its backbone is
  the base domain's backbone built for the latent's shape, its templates are latent templates,
  so the trainer, samplers, guidance and ``generate`` run on the latent Space unchanged.
  :meth:`LatentDomain.to_data` decodes samples (``generate`` calls it on every chunk), so writers
  and metrics see data, never latents; :meth:`LatentDomain.from_data` encodes an input (and maps
  the mask of its known part onto the latent grid), so completion (RePaint), SDEdit,
  super-resolution and classifier guidance run in latent space (``core.models.latent_tasks``).
  A third-party domain gets latent diffusion by providing ``build_autoencoder`` only.

An autoencoder run folder (``diffuse train-autoencoder``) holds ``config.json``
(:class:`AutoencoderConfig`, kind ``"autoencoder"``), ``checkpoint/`` (the trainer's format;
``ema.safetensors`` are the weights used), ``metrics.jsonl`` and ``evaluation.json``. A latent
model's ``RunConfig.latent`` records the autoencoder it needs (:func:`autoencoder_record`: path,
SHA-256 of the weights, domain); :func:`load_autoencoder` checks all three.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import TrainConfig
from ..data.domain import Batch, Domain, DomainDataset
from ..data.space import Space
from ..data.capabilities import capabilities
from ..errors import CheckpointError, DataError, NotSupportedError, UserInputError
from ..training.checkpoint import checkpoint_dir, file_sha256, load_kind_config, load_weights, read_weights
from .latent_tasks import encode_concat, encode_input, encode_value, latent_concat_kinds, latent_mask, paste_known

__all__ = ["latent_domain", "check_latent_data", "Autoencoder", "LatentDataset", "LatentDomain", "AutoencoderConfig", "AutoencoderObjective",
           "autoencoder_record", "load_autoencoder", "is_autoencoder_run", "weights_hash", "AUTOENCODER_WEIGHTS"]

#: the file of an autoencoder run's weights that latent models use (EMA weights, scale included)
AUTOENCODER_WEIGHTS = "ema.safetensors"


class Autoencoder(nn.Module, ABC):
    """A domain's autoencoder for latent diffusion (see the module docstring).

    Subclasses call ``super().__init__(config, domain_name)`` first; ``config`` is the JSON dict
    that rebuilds the network through ``domain.bind(data_info).build_autoencoder(config)``.
    """

    def __init__(self, config: dict[str, Any], domain_name: str) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(config)
        self.domain_name: str = domain_name
        #: ``1 / std`` of the latents of a data sample (set by :meth:`fit_scale`); saved with the weights
        self.register_buffer("scale", torch.ones(()))

    # ------------------------------------------------------------------ the interface
    @abstractmethod
    def encode(self, batch: Batch, generator: torch.Generator | None = None, sample: bool = True) -> Tensor:
        """The UNSCALED latent of ``batch.x``: a posterior draw from ``generator`` (``sample``)
        or its mean / the deterministic code. Same batch structure as the data."""

    @abstractmethod
    def decode(self, z: Tensor, like: Batch) -> Tensor:
        """Data ``x`` from an UNSCALED latent ``z``; ``like`` is a batch with the structure
        (the data batch or the latent batch: both share batch size / batch index)."""

    @abstractmethod
    def latent_info(self, data_info: dict[str, Any]) -> dict[str, Any]:
        """The entries of ``data_info`` that change for the latent (e.g. ``channels``,
        ``height``, ``width``); merged over the data's ``data_info`` to build the backbone."""

    @abstractmethod
    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """The training objective on a data batch: ``(scalar loss, {term: value})``."""

    def latent_space(self, batch: Batch) -> Space:
        """The Space of the latent of ``batch`` (default: the data's own Space; a GraphSpace keeps
        the batch index and its centred first 3 channels)."""
        return batch.space

    def data_space(self, latent: Batch) -> Space:
        """The Space of data decoded from ``latent`` (default: the latent's Space)."""
        return latent.space

    @torch.no_grad()
    def latent_template(self, batch: Batch) -> Tensor:
        """Zeros shaped like the latent of data ``batch`` (default: encode it and take the shape)."""
        return torch.zeros_like(self.encode(batch, sample=False))

    def latent_mask(self, mask: Tensor, data: Tensor, latent: Tensor) -> Tensor:
        """The known part of ``latent`` given the known part ``mask`` of ``data`` (completion of
        a latent model): a latent element is known when every data element it summarises is
        (``core.models.latent_tasks.latent_mask``)."""
        return latent_mask(mask, data, latent)

    @torch.no_grad()
    def reconstruction_metrics(self, batch: Batch) -> dict[str, Tensor]:
        """Per-sample held-out reconstruction figures (``{name: [B]}``) of the reconstruction
        from the posterior mean; default: ``mse`` over the Space's elements. Domains report
        their own (image PSNR, audio STFT / log-mel distances, molecule element recovery...)."""
        rec = self.decode(self.encode(batch, sample=False), batch)
        return {"mse": batch.space.reduce((rec - batch.x).pow(2))}

    # ------------------------------------------------------------------ scaled use
    def encode_scaled(self, batch: Batch, generator: torch.Generator | None = None, sample: bool = True) -> Tensor:
        """``scale * encode(batch)`` projected onto the latent Space: what diffusion runs on."""
        z = self.encode(batch, generator=generator, sample=sample) * self.scale.to(batch.x.dtype)
        return self.latent_space(batch).project(z)

    def decode_scaled(self, z: Tensor, like: Batch) -> Tensor:
        return self.decode(z / self.scale.to(z.dtype), like)

    @torch.no_grad()
    def fit_scale(self, dataset: DomainDataset, num: int = 512, batch_size: int = 64, seed: int = 0) -> float:
        """Set ``scale`` to ``1 / std`` of the latents (posterior draws) of up to ``num`` items
        of ``dataset`` (the first ones of a seeded permutation); returns the scale."""
        was = self.training
        self.eval()
        dev = self.scale.device
        gen = torch.Generator().manual_seed(seed)
        n = min(num, len(dataset))
        if n == 0:
            raise DataError("cannot fit the latent scale on an empty dataset")
        idx = torch.randperm(len(dataset), generator=gen)[:n]
        s, s2, count = 0.0, 0.0, 0
        for chunk in idx.split(batch_size):
            batch = dataset.batch(chunk, gen).to(dev)
            z = self.latent_space(batch).project(self.encode(batch, generator=gen if dev.type == "cpu" else None))
            z = z.double()
            s, s2, count = s + float(z.sum()), s2 + float((z * z).sum()), count + z.numel()
        mean = s / count
        std = max((s2 / count - mean * mean), 1e-12) ** 0.5
        self.scale.fill_(1.0 / std)
        self.train(was)
        return float(self.scale)


def gaussian_draw(mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None,
                  sample: bool = True) -> Tensor:
    """A draw of the diagonal Gaussian posterior ``N(mean, exp(logvar))`` (reparameterised, so
    gradients flow), or its mean with ``sample=False``: the ``encode`` of a KL autoencoder."""
    if not sample:
        return mean
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * eps


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)), averaged over elements (the KL term of a KL autoencoder)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


class AutoencoderObjective:
    """The trainer's objective for an autoencoder (:class:`~diffuse.core.training.trainer.Objective`):
    the autoencoder's own per-sample loss."""

    #: an autoencoder run does not sample: no periodic or final evaluation
    samples = False

    def training_losses(self, model: Autoencoder, batch: Batch, generator: torch.Generator | None = None,
                        shard: tuple[int, int] | None = None) -> Tensor:
        if shard is not None:
            raise NotSupportedError("autoencoders train in one process (their loss is a batch mean, not "
                                    "per-sample); leave out --nproc")
        loss, _ = model.loss(batch, generator)
        return loss


# ---------------------------------------------------------------------- the latent model
class LatentDataset(DomainDataset):
    """A data set seen through a frozen autoencoder: batches hold scaled latents (a posterior
    draw from the batch's generator), the data's condition and extras. ``data`` is the data set."""

    def __init__(self, data: DomainDataset, autoencoder: Autoencoder) -> None:
        self.data, self.autoencoder = data, autoencoder

    def __len__(self) -> int:
        return len(self.data)

    def info(self) -> dict[str, Any]:
        return self.data.info()

    @torch.no_grad()
    def batch(self, indices: Tensor, generator: torch.Generator | None = None) -> Batch:
        ae = self.autoencoder
        dev = ae.scale.device
        data = self.data.batch(indices, generator).to(dev)
        z = ae.encode_scaled(data, generator=generator if dev.type == "cpu" else None)
        return Batch(z, ae.latent_space(data), encode_concat(ae, data.cond, data), data.extras).to("cpu")

    def split(self, fraction: float, seed: int = 0) -> tuple["LatentDataset", "LatentDataset"]:
        rest, held = self.data.split(fraction, seed)
        return LatentDataset(rest, self.autoencoder), LatentDataset(held, self.autoencoder)

    def subset(self, indices: Tensor) -> "LatentDataset":
        return LatentDataset(self.data.subset(indices), self.autoencoder)


def _data_of(dataset: DomainDataset) -> DomainDataset:
    return dataset.data if isinstance(dataset, LatentDataset) else dataset


class LatentDomain(Domain):
    """``base`` (any domain) plus a trained, frozen ``autoencoder``: diffusion runs on its latents.

    A latent domain is bound to the DATA's ``data_info`` (what the base domain's template, writer
    and metrics need): :meth:`bind` binds the wrapped base domain to it too. The backbone is the
    base's bound to :meth:`latent_data_info`, ``{**info, **autoencoder.latent_info(info)}``.
    ``autoencoder_data_info`` is the autoencoder's own training data's (its layout is checked
    against the data's, :func:`check_latent_data`). Wrapping a bound base gives a bound latent domain.
    """

    def __init__(self, base: Domain, autoencoder: Autoencoder, record: dict[str, Any] | None = None,
                 data_defaults: dict[str, Any] | None = None,
                 autoencoder_data_info: dict[str, Any] | None = None) -> None:
        if autoencoder.domain_name != base.name:
            raise CheckpointError(f"the autoencoder is for the {autoencoder.domain_name!r} domain, not {base.name!r}")
        self.base, self.autoencoder, self.record = base, autoencoder.eval().requires_grad_(False), record
        #: the autoencoder's training data options (the defaults of a latent model's data) and data_info
        self.data_defaults, self.autoencoder_data_info = dict(data_defaults or {}), dict(autoencoder_data_info or {})
        self.name = base.name                  # writers, checkpoints and the CLI see the data's domain
        self.description = f"{base.description} (latent)"
        self.likelihood_unit, self.likelihood_bins = base.likelihood_unit, None
        self.named_datasets = base.named_datasets
        self._data_info = base._data_info      # bound when the base domain is

    def to(self, device: torch.device | str) -> "LatentDomain":
        """Move the autoencoder to ``device`` (encoding and decoding run there)."""
        self.autoencoder.to(device)
        return self

    # ------------------------------------------------------------------ configuration
    def default_model(self) -> dict[str, Any]:
        return self.base.default_model()

    def default_diffusion(self) -> dict[str, Any]:
        return self.base.default_diffusion()

    def default_train(self) -> dict[str, Any]:
        return self.base.default_train()

    def default_data(self) -> dict[str, Any]:
        return {**self.base.default_data(), **self.data_defaults}

    def default_sampling(self) -> tuple[str, int | None]:
        return self.base.default_sampling()

    def check_config(self, model: dict[str, Any]) -> None:
        self.base.check_config(model)

    def model_config(self, user: dict[str, Any]) -> dict[str, Any]:
        return self.base.model_config(user)

    def bind(self, info: dict[str, Any]) -> "LatentDomain":
        """A copy bound to the data's ``data_info``, its base domain bound to the same (the
        autoencoder is shared: it is frozen)."""
        bound = super().bind(info)
        bound.base = self.base.bind(info)
        return bound

    def latent_data_info(self) -> dict[str, Any]:
        """The bound data's ``data_info`` with the entries the latent changes (its shape)."""
        return {**self.info, **self.autoencoder.latent_info(self.info)}

    # ------------------------------------------------------------------ data and model
    def load_data(self, path: str | Path | None, options: dict[str, Any]) -> DomainDataset:
        return LatentDataset(self.base.load_data(path, options), self.autoencoder)

    def build_backbone(self, model: dict[str, Any]) -> nn.Module:
        return self.base.bind(self.latent_data_info()).build_backbone(model)

    def template(self, num: int, generator: Any = None, structure: Any = None) -> Batch:
        data = self.base.template(num, generator, structure)
        dev = self.autoencoder.scale.device
        like = data.to(dev)
        z = self.autoencoder.latent_template(like)
        return Batch(z.to(data.x.device), self.autoencoder.latent_space(like).to(data.x.device), data.cond,
                     data.extras)

    def to_data(self, samples: Batch) -> Batch:
        """Decode latent ``samples`` (scaled) into data."""
        ae = self.autoencoder
        dev = ae.scale.device
        like = samples.to(dev)
        with torch.no_grad():
            x = ae.decode_scaled(like.x, like)
        return Batch(x.to(samples.x.device), ae.data_space(like).to(samples.x.device), samples.cond, samples.extras)

    # ------------------------------------------------------------------ conditions
    def _latent_shape(self) -> list[int]:
        """``[c, *sides]`` of one latent of the bound data (cached per bound copy)."""
        if getattr(self, "_shape_of", None) is not self._data_info:
            one = self.base.template(1, torch.Generator().manual_seed(0)).to(self.autoencoder.scale.device)
            self._shape, self._shape_of = list(self.autoencoder.latent_template(one).shape[1:]), self._data_info
        return self._shape

    def condition_kinds(self) -> dict[str, Any]:
        """The base domain's conditions, a concatenated (restoration) condition on the latent grid
        (``core.models.latent_tasks``)."""
        kinds = self.base.condition_kinds()
        return latent_concat_kinds(kinds, self._latent_shape()) if any(k in kinds for k in
                                                                       self.base.restoration_conditions) else kinds

    def capabilities(self) -> list[str]:
        """What the base domain can do and a latent model does too: conditions, completion and
        editing (through the encoder), restoration (a conditional latent model) and classifier
        guidance (a classifier trained on the latents)."""
        keep = ("conditional", "completable", "restorable", "classifier")
        return [c for c in capabilities(self.base) if c in keep]

    def condition_data_options(self, names: list[str]) -> dict[str, Any]:
        return self.base.condition_data_options(names)

    def conditional_structure(self, num, cond, generator=None):
        return self.base.conditional_structure(num, cond, generator)

    def check_structure(self, value: Any, batch_size: int | None = None) -> None:
        self.base.check_structure(value, batch_size)

    # ------------------------------------------------------------------ results (on decoded data)
    def metrics(self, samples: Batch, reference: DomainDataset) -> dict[str, float]:
        return self.base.metrics(samples, _data_of(reference))

    def write(self, samples: Batch, out_dir: Path) -> list[Path]:
        return self.base.write(samples, out_dir)

    def describe_samples(self, samples: Batch) -> dict[str, float] | None:
        return self.base.describe_samples(samples)

    # ------------------------------------------------------------------ inputs in data space
    def completion_input(self, path: str | Path, options: dict[str, Any]) -> tuple[Batch, Tensor]:
        """The base domain's input and mask, in DATA space (:meth:`from_data` encodes them)."""
        return self.base.completion_input(path, options)

    def from_data(self, batch: Batch, mask: Tensor | None = None) -> tuple[Batch, Tensor | None]:
        """A data batch (and the mask of its known part) in model space: the scaled posterior
        mean and the known part on the latent grid (``core.models.latent_tasks.encode_input``)."""
        z, m = encode_input(self.autoencoder, batch, torch.ones(1, dtype=torch.bool) if mask is None else mask)
        return z, (m if mask is not None else None)

    def paste_known(self, samples: Batch, known: Batch, mask: Tensor) -> Batch:
        """Decoded completions with the known data elements put back exactly."""
        return paste_known(samples, known, mask)

    def restoration_input(self, path: str | Path) -> dict[str, Any]:
        """The base domain's degraded input, encoded onto the latent grid (the condition the
        latent model was trained with; ``core.models.latent_tasks``)."""
        values = self.base.restoration_input(path)
        like = self.base.template(1, torch.Generator().manual_seed(0))
        return {k: encode_value(self.autoencoder, torch.as_tensor(v, dtype=torch.float32)[None], like)[0]
                for k, v in values.items()}

    # ------------------------------------------------------------------ classifiers on latents
    def build_classifier(self, model: dict[str, Any], target: Any) -> nn.Module:
        """The base domain's classifier network built for the latent (channels and sides): a
        classifier trained on the latents guides the latent model (``train-classifier --latent``)."""
        return self.base.bind(self.latent_data_info()).build_classifier(model, target)

    def classifier_data_options(self, target: Any) -> dict[str, Any]:
        return self.base.classifier_data_options(target)

    def classifier_property(self, name: str, batch: Batch) -> Tensor:
        """A property of a latent batch: the base domain's, of the decoded data."""
        return self.base.classifier_property(name, self.to_data(batch))


# ---------------------------------------------------------------------- run folders
@dataclass
class AutoencoderConfig:
    """An autoencoder run's ``config.json`` (``kind`` is always ``"autoencoder"``)."""

    domain: str
    data: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    #: the autoencoder's own config (``Domain.build_autoencoder(model)`` of the domain bound to ``data_info``)
    model: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    data_info: dict[str, Any] = field(default_factory=dict)
    kind: str = "autoencoder"
    version: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def load(cls, run_dir: str | Path) -> "AutoencoderConfig":
        return load_kind_config(cls, run_dir, "autoencoder", "train-autoencoder",
                                f"{run_dir} is not an autoencoder run; train one with 'diffuse train-autoencoder'")


def is_autoencoder_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds an autoencoder run's ``config.json`` (kind ``autoencoder``)."""
    try:
        return json.loads((Path(run_dir) / "config.json").read_text()).get("kind") == "autoencoder"
    except (OSError, ValueError, AttributeError):
        return False


def _weights_path(run_dir: Path) -> Path:
    return checkpoint_dir(run_dir) / AUTOENCODER_WEIGHTS


def weights_hash(run_dir: str | Path) -> str:
    """SHA-256 (hex) of an autoencoder run's weights file: its identity."""
    return file_sha256(_weights_path(Path(run_dir)))


def autoencoder_record(run_dir: str | Path) -> dict[str, Any]:
    """What a latent model records about its autoencoder: absolute path, SHA-256 of the weights,
    domain, and its config (for the reader)."""
    run = Path(run_dir)
    cfg = AutoencoderConfig.load(run)
    return {"path": str(run.resolve()), "sha256": weights_hash(run), "domain": cfg.domain, "model": cfg.model}


def load_autoencoder(run_dir: str | Path, domain: Domain, *, expect: dict[str, Any] | None = None,
                     device: torch.device | str = "cpu") -> Autoencoder:
    """Rebuild a trained autoencoder of ``domain`` from its run folder (frozen, eval mode).

    ``expect``: a latent model's record (:func:`autoencoder_record`); the run must still hold
    the same weights (SHA-256). Every failure is one :class:`CheckpointError` line."""
    run = Path(run_dir)
    needed = f" (the latent model needs the {expect['domain']} autoencoder {expect['path']})" if expect else ""
    if not run.exists():
        raise CheckpointError(f"autoencoder run {run} does not exist{needed}")
    cfg = AutoencoderConfig.load(run)
    if cfg.domain != domain.name:
        raise CheckpointError(f"{run} is an autoencoder of the {cfg.domain!r} domain, not {domain.name!r}")
    if not (run / "evaluation.json").is_file():
        raise CheckpointError(f"the autoencoder run {run} is unfinished (no latent scale yet); finish it with "
                              f"'diffuse train-autoencoder --resume {run}'")
    if expect is not None and weights_hash(run) != expect.get("sha256"):
        raise CheckpointError(f"the autoencoder in {run} has changed since the latent model was trained on it "
                              f"(SHA-256 of {AUTOENCODER_WEIGHTS} differs); retrain the latent model")
    ae = domain.bind(cfg.data_info).build_autoencoder(cfg.model)
    load_weights(ae, read_weights(_weights_path(run)), run)
    return ae.to(device).eval().requires_grad_(False)


def latent_domain(domain: Domain, ae_run: str | Path, expect: dict[str, Any] | None = None) -> LatentDomain:
    """``domain`` wrapped with the trained autoencoder in ``ae_run`` (checked: exists, an
    autoencoder run of ``domain``'s, and, given a latent model's record ``expect``, the same
    weights)."""
    if str(ae_run).strip() == "":
        raise UserInputError("--latent is an empty string; give an autoencoder run folder")
    ae = load_autoencoder(ae_run, domain, expect=expect)
    record = expect if expect is not None else autoencoder_record(ae_run)
    ae_cfg = AutoencoderConfig.load(ae_run)
    return LatentDomain(domain, ae, record, data_defaults=ae_cfg.data_options, autoencoder_data_info=ae_cfg.data_info)


def check_latent_data(domain: LatentDomain, info: dict[str, Any]) -> None:
    """The data of a latent model must have the layout its autoencoder was trained on
    (``Domain.data_mismatch`` of the wrapped domain)."""
    problem = domain.base.data_mismatch(info, domain.autoencoder_data_info)
    if problem:
        key, mine, theirs = problem
        raise DataError(f"the data's {key} is {mine} but the autoencoder {domain.record['path']} was trained on "
                        f"{theirs}; use data of that shape (its data options: --config data_options)")
