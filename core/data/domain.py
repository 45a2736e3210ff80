"""The Domain API: the only thing core, the trainer and the CLI know about a kind of data.

A domain is a plug-in unit (DESIGN.md item 9). To add one, subclass :class:`Domain` and
:class:`DomainDataset`, then register the class, either in code::

    from diffuse.core import register_domain
    register_domain(MyDomain)

or from your own package's ``pyproject.toml`` so that ``pip install`` adds it to the CLI::

    [project.entry-points."diffuse.domains"]
    points2d = "my_package.points:PointsDomain"

What flows between core and a domain:

* ``data_info``: a JSON-serialisable dict a dataset reports (``DomainDataset.info()``: shapes,
  vocabularies, statistics, recorded conditions) and that is saved in every run folder, so a
  model can be rebuilt and sampled without the data. A domain binds it once,
  ``domain.bind(data_info)``: the bound copy's methods read it as ``self.info``.
* :class:`Batch`: ``x`` (the tensor diffusion runs on), its bound :class:`~diffuse.core.data.space.Space`,
  and an optional network condition ``cond``: a :class:`~diffuse.core.data.condition.Condition`
  (class labels, text tokens, property values; see ``core.data.condition``).
* sampling *structure* (atom counts, clip length) is not a condition: ``Domain.template`` takes
  it as ``structure``.
* conditions: ``Domain.condition_kinds()`` declares what a model trained on the bound data
  understands; ``Domain.condition_data_options(names)`` turns ``--condition NAME`` into data options.
* optional capabilities (conditions, completion, restoration, an autoencoder for latent
  diffusion, a noise-aware classifier) are small protocols in ``core.data.capabilities``: e.g.
  ``Domain.completion_input(path, options)`` reads a user file into model space with a mask of
  the known part (core does the sampling); ``Domain.build_autoencoder(config)`` returns a
  :class:`~diffuse.core.models.latent.Autoencoder`, and ``core.models.latent.LatentDomain``
  wraps the domain with a trained one and decodes samples in ``Domain.to_data``.
* model config: a plain JSON dict of backbone keyword arguments (``Domain.default_model``,
  overridden by the user's ``--config`` file).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .backbones import BACKBONE_KEY, Backbone, backbone_of, domain_backbones
from .condition import Condition, ConditionKind, kinds_from_spec
from .space import Space
from ..errors import NotSupportedError, UserInputError

__all__ = ["Batch", "DomainDataset", "SubsetDataset", "Domain"]


@dataclass
class Batch:
    """A batch as core sees it."""

    x: Tensor
    space: Space
    #: the network condition (a :class:`Condition`, or ``None``; a raw tensor from older domains
    #: is passed to the backbone as is, without dropout)
    cond: Condition | Any = None
    #: domain-specific extras that travel with the batch (e.g. element vocabularies); core reads only
    #: ``"noise"``: a reflow coupling's noise paired with each sample (``core.process.diffusion``).
    extras: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "Batch":
        space = self.space.to(device)
        cond = self.cond.to(device) if isinstance(self.cond, (Tensor, Condition)) else self.cond
        return Batch(self.x.to(device), space, cond, self.extras)

    def __len__(self) -> int:
        return self.space.batch_size(self.x)


class DomainDataset(ABC):
    """A dataset of one domain. Items are addressed by integer index."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """JSON-serialisable facts the model and sampler need (saved in checkpoints)."""

    @abstractmethod
    def batch(self, indices: Tensor, generator: torch.Generator | None = None) -> Batch:
        """Assemble the items at ``indices`` into a :class:`Batch` (on CPU).

        Random augmentation (crops, rotations) must draw only from ``generator``, so that
        training is reproducible and resumable.
        """

    def split(self, fraction: float, seed: int = 0) -> tuple["DomainDataset", "DomainDataset"]:
        """A seeded ``(rest, held_out)`` split; held-out gets ``fraction`` of the items."""
        n = len(self)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        k = max(1, int(round(n * fraction))) if n > 1 else 0
        return self.subset(perm[k:]), self.subset(perm[:k])

    def subset(self, indices: Tensor) -> "DomainDataset":
        return SubsetDataset(self, indices)


class SubsetDataset(DomainDataset):
    """The items of ``base`` at ``indices``, as a view. ``info()`` is the base's (a model is
    described by the data it was built from).

    Attributes are forwarded with care, so that a subset never passes the whole data set's
    members off as its own: names the base lists in ``shared_attributes`` (facts of the whole
    data set, e.g. a vocabulary) come from the base; names it lists in ``member_attributes``
    are answered by ``base.member_attribute(name, indices)`` for this subset's members only
    (e.g. the reference SMILES of just these molecules); any other name is an AttributeError."""

    def __init__(self, base: DomainDataset, indices: Tensor) -> None:
        self.base, self.indices = base, torch.as_tensor(indices, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    def info(self) -> dict[str, Any]:
        return self.base.info()

    def batch(self, indices, generator=None):
        return self.base.batch(self.indices[torch.as_tensor(indices, dtype=torch.long)], generator)

    def complement(self) -> "SubsetDataset":
        """The base's other items (for the held-out part of :meth:`split`: the training part)."""
        keep = torch.ones(len(self.base), dtype=torch.bool)
        keep[self.indices] = False
        return SubsetDataset(self.base, torch.nonzero(keep).reshape(-1))

    @property
    def shared_attributes(self) -> tuple[str, ...]:
        return tuple(getattr(self.base, "shared_attributes", ()))

    @property
    def member_attributes(self) -> tuple[str, ...]:
        return tuple(getattr(self.base, "member_attributes", ()))

    def member_attribute(self, name: str, indices: Tensor) -> Any:
        return self.base.member_attribute(name, self.indices[torch.as_tensor(indices, dtype=torch.long)])

    def __getattr__(self, name: str):
        if name in ("base", "indices") or name.startswith("__"):
            raise AttributeError(name)
        if name in self.shared_attributes:
            return getattr(self.base, name)
        if name in self.member_attributes:
            return self.member_attribute(name, torch.arange(len(self.indices)))
        raise AttributeError(f"a subset of {type(self.base).__name__} has no attribute {name!r} (the base "
                             "shares only its shared_attributes and member_attributes)")


class Domain(ABC):
    """A kind of data: its Space, backbone, data readers, metrics and writer.

    Configuration methods (the defaults, :meth:`load_data`, :meth:`check_config`,
    :meth:`condition_data_options`, ...) work on an unbound domain. Everything about a particular
    data set (backbone, template, conditions, metrics, writer, inputs, auxiliary networks) works
    on a bound domain, :meth:`bind` ``(data_info)``, and reads that data set's ``data_info`` as
    :attr:`info`.
    """

    #: registry key, used as ``diffuse train --domain NAME``
    name: ClassVar[str]
    #: one line for ``diffuse domains``
    description: ClassVar[str]
    #: how ``diffuse evaluate --likelihood`` reports: ``bits_per_dim`` or ``nats`` (per sample)
    likelihood_unit: ClassVar[str] = "bits_per_dim"
    #: quantisation levels of the data for the bits/dim offset (256 for 8-bit images), or None
    likelihood_bins: ClassVar[int | None] = None
    #: names ``--data`` accepts besides paths (e.g. ``"qm9"`` for an installed data package)
    named_datasets: ClassVar[tuple[str, ...]] = ()
    #: ``data_info`` entries that fix the layout of a sample (image channels / height / width):
    #: a latent model's data must have its autoencoder's
    layout_keys: ClassVar[tuple[str, ...]] = ()
    #: the networks this domain can build, by name (``core.data.backbones``), and the one used when
    #: a model section names none
    backbones: ClassVar[dict[str, Backbone]] = {}
    default_backbone: ClassVar[str | None] = None
    #: conditions that carry a degraded input in data space (image ``lowres``, audio ``lowrate``): a
    #: latent model cannot take them
    restoration_conditions: ClassVar[tuple[str, ...]] = ()
    #: ``data_info`` entries that fix what a model's input features mean (molecules' element list):
    #: a run started from a trained model (``--init``) keeps them
    meaning_keys: ClassVar[tuple[str, ...]] = ()

    #: the bound data set's ``data_info`` (None: unbound); read it through :attr:`info`
    _data_info: dict[str, Any] | None = None

    # ---------------------------------------------------------------- binding
    def bind(self, info: dict[str, Any]) -> "Domain":
        """A copy of this domain bound to a data set's ``data_info`` (``info``); this one is left as
        it is (bound or not). A domain whose state must not be shared between copies overrides it."""
        if not isinstance(info, dict):
            raise TypeError(f"bind() takes a data set's data_info dict, not {type(info).__name__}")
        bound = copy.copy(self)
        bound._data_info = info
        return bound

    @property
    def bound(self) -> bool:
        """Whether this domain is bound to a data set's ``data_info`` (:meth:`bind`)."""
        return self._data_info is not None

    @property
    def info(self) -> dict[str, Any]:
        """The bound data set's ``data_info``; a RuntimeError on an unbound domain (a programming error)."""
        if self._data_info is None:
            raise RuntimeError(f"the {self.name} domain is not bound to a data set's data_info; call bind(info)")
        return self._data_info

    # ---------------------------------------------------------------- configuration
    def default_model(self) -> dict[str, Any]:
        """Options of the default backbone used when the user gives none (default: the default
        backbone record's ``defaults``)."""
        known = domain_backbones(self)
        record = known.get(self.default_backbone) if self.default_backbone else None
        return dict(record.defaults) if record is not None else {}

    def model_config(self, user: dict[str, Any]) -> dict[str, Any]:
        """A run's model section from the user's: the chosen backbone's defaults under the user's
        options (the default backbone's are :meth:`default_model`'s)."""
        name = user.get(BACKBONE_KEY)
        if name is None or name == self.default_backbone:
            return {**self.default_model(), **user}
        record, _ = backbone_of(self, user)
        return {**record.defaults, **user}

    def default_diffusion(self) -> dict[str, Any]:
        """Overrides of :class:`~diffuse.core.config.DiffusionConfig` fields for this domain."""
        return {}

    def default_train(self) -> dict[str, Any]:
        """Overrides of :class:`~diffuse.core.config.TrainConfig` fields for this domain."""
        return {}

    def default_data(self) -> dict[str, Any]:
        """Data options (resolution, clip length, ...) passed to :meth:`load_data`."""
        return {}

    @classmethod
    def upgrade_config(cls, config: dict[str, Any], version: int) -> dict[str, Any]:
        """A run config dict written by an older diffuse (config format ``version``) in the current
        format: the domain's part (e.g. a backbone option that moved into ``diffusion``). Called
        once per read, after the core's own upgrade; the default changes nothing."""
        return config

    def default_sampling(self) -> tuple[str, int | None]:
        """``(sampler, steps)`` used when the user names no sampler (``diffuse sample`` /
        ``evaluate`` without ``--sampler``, ``DiffusionModel.sample()``); ``steps`` None means
        the sampler's own default (T for ddpm, 50 otherwise). DDIM-50 unless a domain knows
        better."""
        return "ddim", None

    def default_spacing(self, schedule: Any, sampler: str, steps: int | None) -> str | None:
        """The time-grid spacing when the user names none, or ``None`` for the core's rule
        (:func:`~diffuse.core.sampling.registry.default_spacing`, chosen on exact problems). A domain whose
        quality lives where the core's rule does not look (audio's noise floor) may override it."""
        return None

    def data_mismatch(self, info: dict[str, Any], reference: dict[str, Any],
                      meaning: bool = False) -> tuple[str, Any, Any] | None:
        """The first difference between two data sets' ``data_info`` in :attr:`layout_keys` (and,
        with ``meaning``, :attr:`meaning_keys`): ``(key, value, reference value)``; ``None`` when
        they agree (a key one of them lacks is not compared)."""
        for key in self.layout_keys + (self.meaning_keys if meaning else ()):
            if key in info and key in reference and info[key] != reference[key]:
                return key, info[key], reference[key]
        return None

    # ---------------------------------------------------------------- data and model
    @abstractmethod
    def load_data(self, path: str | Path | None, options: dict[str, Any]) -> DomainDataset:
        """Read user data at ``path`` or, when ``None``, the bundled default data set.

        Raise :class:`DataError` with a one-line message naming the offending file for bad input.
        """

    def build_backbone(self, model: dict[str, Any]) -> nn.Module:
        """A backbone ``f(x_t, noise_level, cond=None, space=None) -> tensor like x_t`` on this
        bound domain: the record ``model["backbone"]`` names (``core.data.backbones``; the
        domain's ``default_backbone`` when it names none), with the other options. A domain with a
        single network may override this instead of declaring :attr:`backbones`."""
        record, options = backbone_of(self, model)
        if record.check is not None:
            record.check(self, options)
        return record.build(self, options)

    @abstractmethod
    def template(self, num: int, generator: torch.Generator | None = None, structure: Any = None) -> Batch:
        """A :class:`Batch` of ``num`` zero samples with the right shapes and bound Space, used to
        start sampling. ``structure`` is the sampling structure when the user fixes it (e.g. atom
        counts); otherwise the domain draws it from ``generator`` (one, or one per sample)."""

    def memory_format(self) -> torch.memory_format | None:
        """The tensor layout used with ``train.channels_last`` (image domains: ``torch.channels_last``,
        which cuDNN's bf16 convolutions prefer); ``None``: the domain has no such layout."""
        return None

    # ---------------------------------------------------------------- conditions
    def condition_kinds(self) -> dict[str, ConditionKind]:
        """The conditions a model trained on the bound data understands (``{}``: unconditional).

        Default: the kinds recorded under ``data_info["conditions"]`` (``{name: kind spec}``),
        which training writes from the data's conditions."""
        return kinds_from_spec(self.info.get("conditions"))

    def condition_data_options(self, names: list[str]) -> dict[str, Any]:
        """Data options that make :meth:`load_data` attach the conditions ``names`` (from
        ``diffuse train --condition NAME``) to its batches. Raise ``ValueError`` for a name the
        domain cannot condition on."""
        if names:
            raise NotSupportedError(f"the {self.name} domain cannot condition on {', '.join(names)} (it supports no conditions)")
        return {}

    # --- property conditions (props helper) ---
    def conditional_structure(self, num: int, cond: Condition,
                              generator: torch.Generator | list[torch.Generator] | None = None) -> Any:
        """Sampling structure drawn *given* the network condition, used when the user fixes none
        (e.g. atom counts drawn from ``p(N | property)``); ``None`` (the default): ``template``
        draws the structure as usual. ``generator``: one per sample (as ``template`` gets)."""
        return None

    # ---------------------------------------------------------------- noise-aware classifiers
    def build_classifier(self, model: dict[str, Any], target: Any) -> nn.Module:
        """A noise-aware classifier network ``f(x, noise_level, space=...) -> [B, target.out_dim]``
        (logits, or one standardised value for a real property) for classifier guidance (see
        ``core.models.classifier``; ``noise_level`` is ``100 ln(sigma / alpha)``). ``model``: user options."""
        raise NotSupportedError(f"the {self.name} domain has no noise-aware classifier")

    def classifier_data_options(self, target: Any) -> dict[str, Any]:
        """Data options that make batches carry what ``target`` needs (default: for ``label``, the
        ``label`` condition's options, if the domain has that condition)."""
        if target.kind != "label":
            return {}
        try:
            return self.condition_data_options(["label"])
        except ValueError:
            return {}

    def classifier_property(self, name: str, batch: Batch) -> Tensor:
        """Per-sample values ``[B]`` of the real property ``name`` of a data batch (a
        ``--target property:NAME`` classifier's regression target)."""
        raise UserInputError(f"the {self.name} domain has no property {name!r} to train a classifier on")

    # ---------------------------------------------------------------- results
    @abstractmethod
    def metrics(self, samples: Batch, reference: DomainDataset) -> dict[str, float]:
        """Quality metrics of generated ``samples`` against ``reference`` data."""

    @abstractmethod
    def write(self, samples: Batch, out_dir: Path) -> list[Path]:
        """Write samples as files a person can open; return the paths written."""

    def describe_samples(self, samples: Batch) -> dict[str, float] | None:
        """Reference-free quality figures printed by ``diffuse sample`` (e.g. molecule validity);
        ``None`` when the domain has none."""
        return None

    def activation_bytes(self, batch_size: int, model: dict[str, Any]) -> int | None:
        """A lower bound of the bytes one training batch of ``batch_size`` keeps for the backward
        pass, for a network whose shapes depend on the data (graph edges built from the batch) and
        so cannot be measured by ``core.memory``'s meta-device forward. Default: None (measured)."""
        return None

    def program_files(self, options: dict[str, Any]) -> list[str]:
        """The program files (TorchScript...) that data options or a ``data_info`` name, e.g. an
        image domain's Inception feature network: loaded only when the user gave the path
        (``core.trust``). Default: none."""
        return []

    def check_config(self, model: dict[str, Any]) -> None:
        """Validate user-given model options before anything is built (a ConfigError naming the
        option): the chosen backbone's own check (nothing for a domain without records)."""
        if not domain_backbones(self):
            return
        record, options = backbone_of(self, model)
        if record.check is not None:
            record.check(self, options)

    # ---------------------------------------------------------------- completion and editing
    def completion_input(self, path: str | Path, options: dict[str, Any]) -> tuple[Batch, Tensor]:
        """Read one user file (an image, a clip, a fragment) into model space for completion
        (``core.sampling.completion``) and build its mask from ``options`` (the domain's own: image
        ``mask`` / ``rect``, audio ``span`` / ``continue``, molecules ``num_atoms``; no options:
        everything known, the input of an edit). Returns ``(Batch of one sample, mask)`` with the
        mask broadcastable to ``Batch.x`` and true where the value is known. Raise ``ValueError``
        / :class:`DataError` with one line for bad input. No sampler logic belongs here."""
        raise NotSupportedError(f"the {self.name} domain does not support completion or editing of an input")

    def restoration_input(self, path: str | Path) -> dict[str, Any]:
        """Read a degraded input (a low-resolution image, a low-rate clip) into the network
        condition of a restoration model, ``{name: value}`` for ``ConditionKind.parse``
        (e.g. ``{"lowres": tensor}``). Raise ``ValueError`` / :class:`DataError` for bad input."""
        raise NotSupportedError(f"the {self.name} domain has no restoration (super-resolution) input")

    def restoration_output(self, samples: Batch, cond: dict[str, Any]) -> Batch:
        """Restored ``samples`` made to keep what the method promises of the degraded input ``cond``
        (from :meth:`restoration_input`; e.g. audio bandwidth extension keeps the given band exactly).
        Default: unchanged."""
        return samples

    # ---------------------------------------------------------------- latent diffusion
    def build_autoencoder(self, config: dict[str, Any]) -> nn.Module:
        """An autoencoder (``core.models.latent.Autoencoder``) for the bound data, built
        from ``config`` (user options; the same dict rebuilds it from its run folder). A domain
        that provides one gets latent diffusion (``diffuse train --latent AE_RUN``) for free."""
        raise NotSupportedError(f"domain {self.name} has no autoencoder")

    def default_autoencoder(self) -> dict[str, Any]:
        """Autoencoder options used when the user gives none, and its training defaults:
        ``{"model": {...}, "train": {...}}`` (``TrainConfig`` fields)."""
        return {"model": {}, "train": {}}

    def to_data(self, samples: Batch) -> Batch:
        """Samples in model space -> data (identity; a latent model decodes here). ``generate``
        applies it to every chunk, so writers and metrics always see data."""
        return samples

    def from_data(self, batch: Batch, mask: Tensor | None = None) -> tuple[Batch, Tensor | None]:
        """An input in data space (and the mask of its known part) -> model space, for
        completion and editing (identity; a latent model encodes here and maps the mask onto
        the latent grid)."""
        return batch, mask

    def paste_known(self, samples: Batch, known: Batch, mask: Tensor) -> Batch:
        """Completed samples (data space) with the known part of the input put back (identity:
        completion in data space keeps it exactly; a latent model's decoder only approximates it)."""
        return samples

    def check_structure(self, value: Any, batch_size: int | None = None) -> None:
        """Validate a requested sampling structure (e.g. per-sample atom counts) before sampling:
        raise ``ValueError`` with one clear line if it is impossible or would not fit in memory
        (``batch_size``: samples drawn at once, when known). Default: the domain has no sampling
        structure, so any value is refused (it would be ignored)."""
        if value is not None:
            raise NotSupportedError(f"the {self.name} domain has no sampling structure, so --condition (structure=) "
                                    "would be ignored; it takes atom counts of molecules (class labels: --label)")
