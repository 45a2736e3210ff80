"""Refusing a model or a training batch too big for the machine, before anything is built.

A model of ``{"base_channels": 4096}`` or a molecule network with ``hidden`` 100000 asks for tens
of GB; two 3,000-atom molecules need the 9 million atom pairs of each in every layer. Building
or training them would end in the allocator's traceback (or the kernel's out-of-memory killer)
after minutes, with a half-made run folder. The checks here cost milliseconds and run first:

* **parameters**: the network is built on PyTorch's ``meta`` device (shapes, no storage) and its
  parameters counted; a loaded model needs its weights (4 bytes each) plus the weights read from
  disk while they are copied in; training needs weights, gradients, AdamW's two moments and the
  EMA copy: 20 bytes per parameter;
* **activations** (training): a forward pass of one training batch on the ``meta`` device, with
  ``torch.autograd.graph.saved_tensors_hooks`` adding up the bytes of every tensor kept for the
  backward pass (parameters excepted). A network whose shapes depend on the data (graph edges
  built from the batch) cannot run on ``meta``; its domain gives a lower bound instead
  (:meth:`~diffuse.core.data.domain.Domain.activation_bytes`: the molecule domain counts the atom
  pairs of its largest molecule);
* **available memory**: ``MemAvailable`` of ``/proc/meminfo`` (CPU; what can be allocated without
  swapping out other programs), or the free memory ``torch.cuda.mem_get_info`` reports (CUDA).

Every figure is a lower bound of what the work will need (allocator overhead, temporaries and
the optimiser's scratch space are left out), so a refusal is certain and a model that fits is
never refused; a measurement that cannot be made is skipped, never guessed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .errors import OutOfMemoryError

__all__ = ["available_bytes", "meta_parameters", "saved_activation_bytes", "check_fits", "check_training",
           "check_loading", "TRAIN_BYTES_PER_PARAM", "LOAD_BYTES_PER_PARAM", "gib"]

log = logging.getLogger(__name__)

#: weights, gradients, AdamW's first and second moments, EMA weights (float32)
TRAIN_BYTES_PER_PARAM = 5 * 4
#: the model's weights and the weights read from disk, both at once while loading
LOAD_BYTES_PER_PARAM = 2 * 4


def gib(n: float) -> str:
    """Bytes in words: GiB, or MiB below 1 GiB."""
    return f"{n / 2 ** 30:.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MiB"


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Bytes a new allocation on ``device`` can get (None if unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # noqa: BLE001 - no driver answer: no check
            return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def meta_parameters(build: Callable[[], nn.Module]) -> tuple[nn.Module, int] | None:
    """``build()`` on the ``meta`` device and its parameter count (None if it cannot be built
    there; the real build then reports any error itself)."""
    try:
        with torch.device("meta"):
            module = build()
    except Exception as exc:  # noqa: BLE001 - a builder that needs real tensors: no check
        log.debug("no meta-device build (%s); parameters not counted in advance", exc)
        return None
    return module, sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())


def saved_activation_bytes(forward: Callable[[], Tensor]) -> int | None:
    """Bytes of the tensors ``forward()`` keeps for the backward pass (parameters excepted), run on
    ``meta`` tensors by the caller; None if the forward cannot run there."""
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        if not isinstance(t, nn.Parameter):
            seen[id(t)] = t.numel() * t.element_size()
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            forward()
    except Exception as exc:  # noqa: BLE001 - data-dependent shapes (graphs): the domain's bound instead
        log.debug("no meta-device forward (%s)", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None
    return sum(seen.values())


def check_fits(parts: dict[str, int], device: torch.device | str, what: str, advice: str) -> None:
    """Refuse (:class:`OutOfMemoryError`, one line) when the ``parts`` (``{"what": bytes}``) add up
    to more than ``device`` has available."""
    need = sum(parts.values())
    avail = available_bytes(device)
    if avail is None or need <= avail:
        return
    detail = ", ".join(f"{k} {gib(v)}" for k, v in parts.items() if v)
    where = "on the GPU" if torch.device(device).type == "cuda" else "in memory"
    raise OutOfMemoryError(f"{what} needs at least {gib(need)} ({detail}) but {gib(avail)} is available {where}; "
                           f"{advice}")


def training_parts(params: int, activations: int | None, batch_size: int) -> dict[str, Any]:
    """The named lower bounds of a training run's memory."""
    parts = {f"{params:,} parameters with gradients, AdamW moments and EMA": params * TRAIN_BYTES_PER_PARAM}
    if activations:
        parts[f"activations of a batch of {batch_size}"] = activations
    return parts


def check_training(build: Callable[[], nn.Module], objective: Any, domain: Any, model: dict[str, Any],
                   dataset: Any, batch_size: int, device: torch.device | str, what: str) -> None:
    """Refuse a training run whose model (built by ``build``) and one batch of ``batch_size`` from
    ``dataset`` under ``objective`` cannot fit (see the module docstring); ``domain`` is bound.
    ``objective`` None: the parameters only (an auxiliary model's activations are not bounded)."""
    got = meta_parameters(build)
    if got is None:
        return
    module, params = got
    activations = domain.activation_bytes(batch_size, model) if objective is not None else None
    if activations is None and objective is not None and len(dataset) > 0:
        n = min(batch_size, len(dataset))
        try:
            batch = dataset.batch(torch.arange(n), torch.Generator().manual_seed(0)).to("meta")
        except Exception:  # noqa: BLE001 - a batch that cannot move to meta: parameters only
            batch = None
        if batch is not None:
            activations = saved_activation_bytes(lambda: objective.training_losses(module, batch, None))
            if activations is not None and n < batch_size:
                activations = activations * batch_size // n
    check_fits(training_parts(params, activations, batch_size), device, what,
               "use a smaller model (model section of --config) or a smaller --batch-size")


def check_loading(build: Callable[[], nn.Module], device: torch.device | str, what: str) -> None:
    """Refuse loading a model (built by ``build``) whose weights cannot fit (see the module docstring)."""
    got = meta_parameters(build)
    if got is None:
        return
    _, params = got
    check_fits({f"{params:,} parameters, and the stored weights while they are read": params * LOAD_BYTES_PER_PARAM},
               device, what, "its config.json describes a model this machine cannot hold")
