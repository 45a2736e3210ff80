"""A sample as a product of components: :class:`State` and :class:`ProductSpace`.

A mixed state holds several named components, each a tensor in its own
:class:`~diffuse.core.data.space.Space` (for a molecule: coordinates ``[N, 3]`` on a graph space
with zero centre of mass, element types ``[N]`` and formal charges ``[N]`` as class indices on a
graph space of the atoms, bond orders ``[P]`` on a graph space of the atom pairs). Continuous
components are float tensors; categorical ones long tensors of class indices.

* :class:`State` is a dict ``{name: tensor}`` with ``to(device)``, so a
  :class:`~diffuse.core.data.domain.Batch` carries it as its ``x`` unchanged.
* :class:`ProductSpace` is the Space of such a batch: ``{name: Space}``. What a Space does to a
  batch as a whole (``batch_size``, ``concat``, ``take``, ``to``) it does to every component, so
  chunked sampling, batch concatenation and sharding work as they do for one tensor; element-wise
  operations (``noise``, ``expand``, ``project``) act per component and return States;
  ``reduce`` is the mean over every valid element of every component (its ``sum`` over their
  count), and ``dof`` the sum of the components' degrees of freedom.

Components are visited in the order they were given (the order of the process's component specs),
which fixes the order of random draws.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import UserInputError
from .space import GeneratorLike, Space

__all__ = ["State", "ProductSpace"]


class State(dict):
    """A mixed sample (or batch of them): ``{component name: tensor}``."""

    def to(self, device: torch.device | str) -> "State":
        return State({k: v.to(device) for k, v in self.items()})

    def detach(self) -> "State":
        return State({k: v.detach() for k, v in self.items()})

    def clone(self) -> "State":
        return State({k: v.clone() for k, v in self.items()})

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}" for k, v in self.items())
        return f"State({inner})"


class ProductSpace(Space):
    """The Space of a :class:`State`: one Space per component (see the module docstring).

    Every component space must count the same samples (``batch_size``)."""

    def __init__(self, spaces: Mapping[str, Space]) -> None:
        if not spaces:
            raise UserInputError("a product space needs at least one component")
        self.spaces: dict[str, Space] = dict(spaces)

    # ------------------------------------------------------------------ components
    def __getitem__(self, name: str) -> Space:
        return self.spaces[name]

    def __contains__(self, name: object) -> bool:
        return name in self.spaces

    def __iter__(self) -> Iterator[str]:
        return iter(self.spaces)

    def names(self) -> list[str]:
        return list(self.spaces)

    def _pairs(self, x: Mapping[str, Tensor]) -> Iterator[tuple[str, Space, Tensor]]:
        missing = [k for k in self.spaces if k not in x]
        if missing:
            raise UserInputError(f"the state lacks component(s) {', '.join(missing)} of its space")
        for k, sp in self.spaces.items():
            yield k, sp, x[k]

    # ------------------------------------------------------------------ batch structure
    def batch_size(self, x: Mapping[str, Tensor]) -> int:
        name, sp = next(iter(self.spaces.items()))
        return sp.batch_size(x[name])

    def to(self, device: torch.device | str) -> "ProductSpace":
        return ProductSpace({k: sp.to(device) for k, sp in self.spaces.items()})

    @staticmethod
    def concat(xs: Sequence[Mapping[str, Tensor]], spaces: Sequence["ProductSpace"]) -> tuple[State, "ProductSpace"]:
        names = spaces[0].names()
        out, comps = State(), {}
        for k in names:
            sp0 = spaces[0][k]
            out[k], comps[k] = type(sp0).concat([x[k] for x in xs], [s[k] for s in spaces])
        return out, ProductSpace(comps)

    def take(self, x: Mapping[str, Tensor], start: int, stop: int) -> tuple[State, "ProductSpace"]:
        out, comps = State(), {}
        for k, sp, v in self._pairs(x):
            out[k], comps[k] = sp.take(v, start, stop)
        return out, ProductSpace(comps)

    # ------------------------------------------------------------------ element-wise, per component
    def noise(self, like: Mapping[str, Tensor], generator: GeneratorLike = None) -> State:
        """Each component's standard Gaussian (float components; a categorical component's prior
        is its process's, not this)."""
        return State({k: sp.noise(v if v.is_floating_point() else v.to(torch.float32), generator)
                      for k, sp, v in self._pairs(like)})

    def expand(self, per_sample: Tensor, like: Mapping[str, Tensor]) -> State:
        return State({k: sp.expand(per_sample, v) for k, sp, v in self._pairs(like)})

    def project(self, x: Mapping[str, Tensor]) -> State:
        return State({k: (sp.project(v) if v.is_floating_point() else v) for k, sp, v in self._pairs(x)})

    def reduce(self, per_element: Mapping[str, Tensor]) -> Tensor:
        total = None
        count = None
        for k, sp, v in self._pairs(per_element):
            v = v if v.is_floating_point() else v.to(torch.float32)
            s, n = sp.sum(v), sp.num_elements(v)
            total = s if total is None else total + s
            count = n if count is None else count + n
        return total / count.clamp(min=1)

    def num_elements(self, like: Mapping[str, Tensor]) -> Tensor:
        out = None
        for k, sp, v in self._pairs(like):
            n = sp.num_elements(v if v.is_floating_point() else v.to(torch.float32))
            out = n if out is None else out + n
        return out

    def dof(self, like: Mapping[str, Tensor]) -> Tensor:
        out = None
        for k, sp, v in self._pairs(like):
            n = sp.dof(v if v.is_floating_point() else v.to(torch.float32))
            out = n if out is None else out + n
        return out

    def __repr__(self) -> str:
        return "ProductSpace(" + ", ".join(f"{k}={sp!r}" for k, sp in self.spaces.items()) + ")"
