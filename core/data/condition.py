"""Typed conditions: what the *network* is conditioned on (labels, text tokens, property values).

A condition is kept apart from the *sampling structure* (how many atoms each molecule has, the
length of a clip), which a domain's :meth:`~diffuse.core.data.domain.Domain.template` owns. The
network sees the condition; the sampler never looks inside it.

Two pieces:

* :class:`ConditionKind`: declared by a bound domain (``Domain.condition_kinds()``) for each
  condition a model understands. It knows its **null** value (the "no condition" input that
  condition dropout trains, so every conditional model is also unconditional and classifier-free
  guidance has its unconditional branch), how to **parse** a user value (``7``, ``"seven"``,
  ``{"alpha": 80}``) into a tensor with the sample dimension first, and a JSON **spec** from
  which it is rebuilt (:func:`kind_from_spec`), so a checkpoint records what it was trained on.
  Built in: :class:`LabelKind` (class indices; null = index ``num_classes``),
  :class:`VectorKind` (normalised real properties with a presence mask; null = all absent) and
  :class:`TokensKind` (token ids; null = the empty prompt, all padding) and :class:`ConcatKind`
  (a tensor shaped like the sample, concatenated to the backbone input: SR3's low-resolution
  image, a low-rate clip; null = zeros with a presence flag of 0).
* :class:`Condition`: the values of one batch, ``{name: tensor [B, ...]}``, with their kinds.
  It moves (``to``), nulls (``null``), drops per sample (``drop``), joins (``concat``) and
  selects (``select``) like a batch does, so core can batch a conditional and an
  unconditional pass, split chunks and apply dropout without knowing what is inside.

To add a kind (say, a low-resolution image): subclass :class:`ConditionKind`, implement
``null``, ``parse`` and ``spec``, and register it with :func:`register_kind` so
:func:`kind_from_spec` can rebuild it from a checkpoint. Backbones read ``cond[name]``
(or ``cond.get(name)``) to get the tensor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import torch
from torch import Tensor
from ..errors import UserInputError

__all__ = ["ConditionKind", "LabelKind", "VectorKind", "TokensKind", "ConcatKind", "concat_inputs", "Condition",
           "parse_condition", "kind_from_spec", "kinds_from_spec", "register_kind", "CONDITION_KINDS"]


class ConditionKind(ABC):
    """One kind of network condition (see the module docstring)."""

    #: the ``type`` key of :meth:`spec` (registry key of :func:`kind_from_spec`)
    type: ClassVar[str] = ""

    @abstractmethod
    def null(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """The null ("unconditional") value for ``n`` samples, ``[n, ...]``."""

    @abstractmethod
    def parse(self, value: Any, n: int) -> Tensor:
        """A user value for ``n`` samples -> tensor ``[n, ...]`` (on CPU).

        Raise ``ValueError`` with a message naming the bad value and what is expected."""

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """JSON-serialisable description; ``kind_from_spec(kind.spec())`` rebuilds the kind."""

    def is_null(self, values: Tensor) -> Tensor:
        """Per-sample ``bool [n]``: which samples hold the null value."""
        null = self.null(values.shape[0], values.device)
        return (values == null).reshape(values.shape[0], -1).all(1)

    def describe(self, values: Tensor) -> list[Any]:
        """Per-sample human-readable values (for reports); default: the raw values as lists."""
        return values.tolist()


CONDITION_KINDS: dict[str, type[ConditionKind]] = {}


def register_kind(cls: type[ConditionKind]) -> type[ConditionKind]:
    """Register a :class:`ConditionKind` subclass under its ``type`` (usable as a decorator)."""
    if not cls.type:
        raise UserInputError(f"{cls.__name__} needs a non-empty `type`")
    CONDITION_KINDS[cls.type] = cls
    return cls


def kind_from_spec(spec: Mapping[str, Any]) -> ConditionKind:
    """Rebuild a kind from :meth:`ConditionKind.spec` (as stored in a checkpoint's data_info)."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in CONDITION_KINDS:
        raise UserInputError(f"unknown condition kind {kind!r}; known: {', '.join(sorted(CONDITION_KINDS))}")
    return CONDITION_KINDS[kind](**spec)


def kinds_from_spec(spec: Mapping[str, Mapping[str, Any]] | None) -> dict[str, ConditionKind]:
    """``{name: spec}`` -> ``{name: kind}`` (``None`` or ``{}``: an unconditional model)."""
    return {name: kind_from_spec(s) for name, s in (spec or {}).items()}


def _per_sample(value: Any, n: int, what: str) -> list[Any]:
    """A scalar applies to every sample; a list of ``k`` values is cycled over the ``n`` samples
    (``k == n``: one per sample; ``k < n``: e.g. 0..9 repeated)."""
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            raise UserInputError(f"{what}: got an empty list")
        if len(value) > n:
            raise UserInputError(f"{what}: got {len(value)} values for {n} samples")
        return [value[i % len(value)] for i in range(n)]
    return [value] * n


@register_kind
class LabelKind(ConditionKind):
    """Class labels ``long [n]`` in ``0..num_classes-1``; the null label is ``num_classes``.

    ``parse`` accepts an index, a class name, an alias (e.g. ``"seven"``), or a list of those
    (cycled over the samples)."""

    type = "label"

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None,
                 aliases: Mapping[str, int] | None = None) -> None:
        if int(num_classes) < 1:
            raise UserInputError(f"a label condition needs at least one class, got {num_classes}")
        self.num_classes = int(num_classes)
        self.class_names = [str(c) for c in class_names] if class_names is not None else None
        self.aliases = {str(k).lower(): int(v) for k, v in (aliases or {}).items()}

    def null(self, n, device=None):
        return torch.full((n,), self.num_classes, dtype=torch.long, device=device)

    def _index(self, v: Any) -> int:
        names = self.class_names or []
        if isinstance(v, str):
            s = v.strip()
            if s in names:
                return names.index(s)
            low = s.lower()
            lowered = [c.lower() for c in names]
            if low in lowered:
                return lowered.index(low)
            if low in self.aliases:
                return self.aliases[low]
            try:
                v = int(s)
            except ValueError:
                raise UserInputError(f"unknown label {v!r}; expected 0..{self.num_classes - 1}"
                                 + (f" or one of {', '.join(names)}" if names else "")) from None
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise UserInputError(f"a label must be a class index or name, got {v!r}")
        if not 0 <= v < self.num_classes:
            raise UserInputError(f"label {v} is out of range; this model knows classes 0..{self.num_classes - 1}")
        return v

    def parse(self, value, n):
        return torch.tensor([self._index(v) for v in _per_sample(value, n, "label")], dtype=torch.long)

    def spec(self):
        out: dict[str, Any] = {"type": self.type, "num_classes": self.num_classes, "class_names": self.class_names}
        if self.aliases:
            out["aliases"] = dict(self.aliases)
        return out

    def describe(self, values):
        names = self.class_names
        return [None if int(v) == self.num_classes else (names[int(v)] if names else int(v)) for v in values]


@register_kind
class VectorKind(ConditionKind):
    """Real-valued properties (e.g. a molecule's ``alpha, homo, ...``), normalised with the
    training statistics: values ``float [n, 2D]`` = ``(value - mean) / std`` (0 where absent)
    followed by a presence mask (1 present, 0 absent). The null value is "all absent" (zeros),
    so a property may be given for some samples, or only some properties given.

    ``parse`` accepts ``{name: number or list}`` or, for a single property, a number / list."""

    type = "vector"

    def __init__(self, names: Sequence[str], mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        self.names = [str(n) for n in names]
        d = len(self.names)
        if d == 0:
            raise UserInputError("a vector condition needs at least one property name")
        self.mean = [float(m) for m in (mean if mean is not None else [0.0] * d)]
        self.std = [float(s) for s in (std if std is not None else [1.0] * d)]
        if len(self.mean) != d or len(self.std) != d or any(not s > 0 for s in self.std):
            raise UserInputError(f"vector condition {self.names}: need {d} means and {d} positive stds")

    def null(self, n, device=None):
        return torch.zeros(n, 2 * len(self.names), device=device)

    def parse(self, value, n):
        if not isinstance(value, Mapping):
            if len(self.names) != 1:
                raise UserInputError(f"give the properties by name, e.g. {self.names[0]}=1.0; known: {', '.join(self.names)}")
            value = {self.names[0]: value}
        unknown = sorted(set(value) - set(self.names))
        if unknown:
            raise UserInputError(f"unknown propert{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; "
                             f"known: {', '.join(self.names)}")
        out = self.null(n)
        d = len(self.names)
        for name, v in value.items():
            j = self.names.index(name)
            vals = _per_sample(v, n, name)
            try:
                col = torch.tensor([float(x) for x in vals], dtype=torch.float32)
            except (TypeError, ValueError):
                raise UserInputError(f"property {name} must be a number, got {v!r}") from None
            if not torch.isfinite(col).all():
                raise UserInputError(f"property {name} must be finite, got {v!r}")
            out[:, j] = (col - self.mean[j]) / self.std[j]
            out[:, d + j] = 1.0
        return out

    def spec(self):
        return {"type": self.type, "names": self.names, "mean": self.mean, "std": self.std}

    def describe(self, values):
        d = len(self.names)
        rows = []
        for row in values.tolist():
            rows.append({n: row[j] * self.std[j] + self.mean[j] for j, n in enumerate(self.names) if row[d + j] > 0})
        return rows


@register_kind
class TokensKind(ConditionKind):
    """Token ids ``long [n, max_len]`` (e.g. a text prompt), padded with ``pad_id``; the null
    value is the empty prompt (all padding). ``parse`` takes a list of ids (or a list of such
    lists, cycled over the samples); a text tokenizer is the domain's business: it turns strings
    into ids before calling this."""

    type = "tokens"

    def __init__(self, vocab_size: int, max_len: int, pad_id: int = 0) -> None:
        self.vocab_size, self.max_len, self.pad_id = int(vocab_size), int(max_len), int(pad_id)
        if self.vocab_size < 1 or self.max_len < 1 or not 0 <= self.pad_id < self.vocab_size:
            raise UserInputError("a tokens condition needs vocab_size >= 1, max_len >= 1 and pad_id < vocab_size")

    def null(self, n, device=None):
        return torch.full((n, self.max_len), self.pad_id, dtype=torch.long, device=device)

    def parse(self, value, n):
        if isinstance(value, Tensor):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise UserInputError(f"a tokens condition takes a list of token ids, got {value!r}")
        rows = value if value and isinstance(value[0], (list, tuple)) else [value]
        out = self.null(n)
        for i, row in enumerate(_per_sample(rows, n, "tokens")):
            if len(row) > self.max_len:
                raise UserInputError(f"prompt has {len(row)} tokens; this model takes at most {self.max_len}")
            ids = torch.as_tensor(row, dtype=torch.long)
            if len(row) and (ids.min() < 0 or ids.max() >= self.vocab_size):
                raise UserInputError(f"token ids must lie in 0..{self.vocab_size - 1}")
            out[i, :len(row)] = ids
        return out

    def spec(self):
        return {"type": self.type, "vocab_size": self.vocab_size, "max_len": self.max_len, "pad_id": self.pad_id}


@register_kind
class ConcatKind(ConditionKind):
    """A tensor shaped like the sample (a low-resolution image upsampled to the output size, a
    low-rate clip resampled to the output rate), concatenated to the backbone's input channels
    (SR3, Saharia et al. 2022). Values are ``float [n, channels + 1, *shape]``: the ``channels``
    of the input followed by a presence flag channel (1 given, 0 null); the null value is all
    zeros, flag included, so "no input" differs from a black image or a silent clip and
    condition dropout / classifier-free guidance work as for any kind. A backbone built with
    ``in_cond_channels = channels + 1`` concatenates the value to ``x``.

    ``parse`` takes a tensor in model space, ``[channels, *shape]`` (the same for every sample)
    or ``[n, channels, *shape]``; reading files into such a tensor is the domain's business."""

    type = "concat"

    def __init__(self, channels: int, shape: Sequence[int]) -> None:
        self.channels, self.shape = int(channels), [int(v) for v in shape]
        if self.channels < 1 or not self.shape or min(self.shape) < 1:
            raise UserInputError("a concat condition needs channels >= 1 and a non-empty positive shape")

    def null(self, n, device=None):
        return torch.zeros(n, self.channels + 1, *self.shape, device=device)

    def with_flag(self, values: Tensor) -> Tensor:
        """``[n, channels, *shape]`` -> ``[n, channels + 1, *shape]`` with the flag set."""
        return torch.cat([values, torch.ones_like(values[:, :1])], 1)

    def parse(self, value, n):
        v = torch.as_tensor(value, dtype=torch.float32)
        want = (self.channels, *self.shape)
        if tuple(v.shape) == want:
            v = v.expand(n, *want)
        if tuple(v.shape) != (n, *want):
            raise UserInputError(f"the input condition must have shape {list(want)} (or {[n, *want]}), got {list(v.shape)}")
        if not bool(torch.isfinite(v).all()):
            raise UserInputError("the input condition holds NaN or infinite values")
        return self.with_flag(v.clone())

    def spec(self):
        return {"type": self.type, "channels": self.channels, "shape": self.shape}

    def describe(self, values):
        return [None if float(row[-1].max()) == 0 else "given" for row in values]


def concat_inputs(cond: Any) -> Tensor | None:
    """The values of every :class:`ConcatKind` in ``cond`` joined along channels (name order),
    or ``None``: what a backbone with ``in_cond_channels`` concatenates to its input."""
    if not isinstance(cond, Condition):
        return None
    parts = [cond.values[k] for k in sorted(cond.values) if isinstance(cond.kinds[k], ConcatKind)]
    return torch.cat(parts, 1) if parts else None


@dataclass
class Condition:
    """The network condition of a batch: ``values[name]`` is a tensor ``[B, ...]`` (sample dim
    first) of the kind ``kinds[name]``. Read like a mapping: ``cond["label"]``, ``cond.get("label")``."""

    values: dict[str, Tensor]
    kinds: dict[str, ConditionKind]

    def __post_init__(self) -> None:
        if set(self.values) != set(self.kinds):
            raise UserInputError(f"condition values {sorted(self.values)} and kinds {sorted(self.kinds)} differ")
        sizes = {int(v.shape[0]) for v in self.values.values()}
        if len(sizes) > 1:
            raise UserInputError(f"condition values hold different numbers of samples: {sorted(sizes)}")

    # ------------------------------------------------------------------ mapping view
    def __getitem__(self, name: str) -> Tensor:
        return self.values[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self.values

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return int(next(iter(self.values.values())).shape[0]) if self.values else 0

    # ------------------------------------------------------------------ batch operations
    @classmethod
    def null_of(cls, kinds: Mapping[str, ConditionKind], n: int, device: torch.device | str | None = None) -> "Condition":
        """The all-null condition of ``n`` samples for ``kinds``."""
        return cls({k: kind.null(n, device) for k, kind in kinds.items()}, dict(kinds))

    def to(self, device: torch.device | str) -> "Condition":
        return Condition({k: v.to(device) for k, v in self.values.items()}, self.kinds)

    def null(self) -> "Condition":
        """An all-null copy (same kinds, same number of samples, same device)."""
        return Condition({k: self.kinds[k].null(v.shape[0], v.device).to(v.dtype) for k, v in self.values.items()},
                         self.kinds)

    def drop(self, mask: Tensor | Mapping[str, Tensor]) -> "Condition":
        """Per sample: the null value where ``mask [B]`` is true (condition dropout); a mapping
        ``{name: mask [B]}`` drops each named condition where its own mask is true (the others
        are kept)."""
        out = {}
        for k, v in self.values.items():
            mk = mask.get(k) if isinstance(mask, Mapping) else mask
            if mk is None:
                out[k] = v
                continue
            null = self.kinds[k].null(v.shape[0], v.device).to(v.dtype)
            m = mk.to(v.device).reshape(-1, *([1] * (v.ndim - 1)))
            out[k] = torch.where(m, null, v)
        return Condition(out, self.kinds)

    def select(self, index: Tensor | slice | Sequence[int]) -> "Condition":
        """The samples at ``index`` (a slice, indices or a bool mask)."""
        if not isinstance(index, slice):
            index = torch.as_tensor(index)
        return Condition({k: v[index.to(v.device) if isinstance(index, Tensor) else index]
                          for k, v in self.values.items()}, self.kinds)

    @staticmethod
    def concat(conds: Sequence["Condition"]) -> "Condition":
        """Join conditions of several batches along the sample dim (same names required)."""
        first = conds[0]
        for c in conds[1:]:
            if set(c.values) != set(first.values):
                raise UserInputError(f"cannot concatenate conditions {sorted(first.values)} and {sorted(c.values)}")
        return Condition({k: torch.cat([c.values[k] for c in conds]) for k in first.values}, first.kinds)

    def spec(self) -> dict[str, dict[str, Any]]:
        """``{name: kind spec}``: JSON, what a model trained on such batches understands."""
        return {k: kind.spec() for k, kind in self.kinds.items()}

    def describe(self) -> dict[str, list[Any]]:
        """Per-sample readable values ``{name: [...]}`` (null samples read ``None`` where the kind says so)."""
        return {k: self.kinds[k].describe(v.cpu()) for k, v in self.values.items()}


def parse_condition(kinds: Mapping[str, ConditionKind], user: Mapping[str, Any] | Condition | None,
                    n: int) -> Condition | None:
    """A user's condition ``{name: value}`` for ``n`` samples -> :class:`Condition`.

    Names the model understands but the user leaves out get their null value; unknown names and
    a condition for an unconditional model are ``ValueError``. ``None`` for a conditional model
    gives the all-null condition (unconditional samples); for an unconditional model, ``None``.
    """
    if isinstance(user, Condition):
        unknown = sorted(set(user.values) - set(kinds))
        if unknown:
            raise UserInputError(f"this model does not understand the condition(s) {', '.join(unknown)}")
        return user
    if not kinds:
        if user:
            raise UserInputError(f"this model was trained without conditions, so it cannot take "
                             f"{', '.join(sorted(user))}; train with --condition NAME")
        return None
    user = dict(user or {})
    unknown = sorted(set(user) - set(kinds))
    if unknown:
        raise UserInputError(f"this model does not understand the condition(s) {', '.join(unknown)}; "
                         f"it takes: {', '.join(sorted(kinds))}")
    values = {k: (kind.parse(user[k], n) if user.get(k) is not None else kind.null(n)) for k, kind in kinds.items()}
    return Condition(values, dict(kinds))
