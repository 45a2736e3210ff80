"""DiLoCo: training on several processes joined by ordinary networks, communicating every H steps.

Douillard et al. 2023, "DiLoCo: Distributed Low-Communication Training of Language Models"
(arXiv:2311.08105), Algorithm 1. Every worker ``r`` keeps its own copy ``theta_r`` of the weights
and its own inner optimiser (AdamW, the trainer's, with its learning-rate schedule) and takes
``H`` inner steps on its shard of each global batch without any communication. Then the workers
average their *outer gradients* ``Delta_r = theta_global - theta_r`` (one all-reduce of the
weights' size) and an outer optimiser, SGD with Nesterov momentum (outer learning rate 0.7 and
momentum 0.9 in the paper), steps ``theta_global`` with the averaged ``Delta``; every worker then
starts the next round from the new ``theta_global``:

    for each round:  theta_r <- theta_global;  H x (theta_r <- AdamW(theta_r, grad L_r(theta_r)))
                     Delta   <- mean_r (theta_global - theta_r)            (all-reduce)
                     theta_global <- NesterovSGD(theta_global, Delta)

A synchronous run all-reduces the gradients (the weights' size) every step; DiLoCo does it every
``H`` steps, so it sends about ``H`` times fewer bytes. :class:`DiLoCo` counts the bytes it
all-reduces (``DistContext.allreduced_bytes``), as the gradient hook of a synchronous run does.

What a checkpoint holds: the global weights (``model.safetensors``, what sampling uses mid-run),
the mean of the workers' EMA weights (``ema.safetensors``), and in ``state.pt`` the outer
optimiser, the global weights and every worker's weights, EMA and inner optimiser, gathered to
rank 0 at the checkpoint (those bytes are counted apart, as ``checkpoint_bytes``). A resumed run
(on the same number of processes) is therefore exact. A checkpoint needs every worker at the
same step: periodic checkpoints, pauses and the end are; an interrupt (Ctrl-C, SIGTERM) is not
(the workers drift apart by up to a round), so an interrupted DiLoCo run resumes from its last
checkpoint and redoes the steps since. The last round is cut short so that a run always ends
with a synchronisation: the final weights are the global ones.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from .distributed import DistContext

__all__ = ["DiLoCo", "mean_state"]


class DiLoCo:
    """The outer loop of DiLoCo around a model trained by the trainer's inner optimiser."""

    def __init__(self, model: nn.Module, dist: DistContext, sync_every: int, outer_lr: float = 0.7,
                 outer_momentum: float = 0.9) -> None:
        self.model, self.dist, self.sync_every = model, dist, int(sync_every)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # theta_global: starts from rank 0's initial weights (broadcast), as DDP would
        with torch.no_grad():
            for p in self.params:
                dist.broadcast(p.data)
        self.anchor = [p.detach().clone() for p in self.params]
        self.outer = torch.optim.SGD(self.anchor, lr=outer_lr, momentum=outer_momentum, nesterov=True)
        self.rounds = 0

    # ------------------------------------------------------------------ the outer step
    def due(self, step: int, total: int) -> bool:
        """Whether the round ends after ``step`` (every ``H`` steps, and at the last step)."""
        return step % self.sync_every == 0 or step == total

    @torch.no_grad()
    def sync(self) -> None:
        """Average the outer gradients over the workers (one all-reduce), take the outer Nesterov
        step on the global weights, and restart every worker from them."""
        deltas = [(a - p.detach()).reshape(-1) for a, p in zip(self.anchor, self.params)]
        flat = torch.cat(deltas).float() if deltas else torch.zeros(0)
        flat = self.dist.all_reduce_mean(flat)
        offset = 0
        for a in self.anchor:
            n = a.numel()
            a.grad = flat[offset:offset + n].view_as(a).to(a.dtype)
            offset += n
        self.outer.step()
        self.outer.zero_grad(set_to_none=True)
        for a, p in zip(self.anchor, self.params):
            p.copy_(a)
        self.rounds += 1

    # ------------------------------------------------------------------ checkpoints
    def gather(self, rank_state: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Every worker's ``rank_state`` (weights, EMA, inner optimiser) on rank 0 (``None`` on the
        others); a collective: every rank calls it at the same step."""
        return self.dist.gather_object(_cpu(rank_state))

    def state_dict(self) -> dict[str, Any]:
        return {"anchor": [a.detach().cpu().clone() for a in self.anchor], "outer": self.outer.state_dict(),
                "sync_every": self.sync_every, "rounds": self.rounds, "world_size": self.dist.world_size}

    def load_state_dict(self, state: dict[str, Any], where: Any) -> None:
        if int(state.get("world_size", 1)) != self.dist.world_size:
            raise CheckpointError(f"{where} is a checkpoint of a DiLoCo run on {state.get('world_size')} processes; "
                                  f"resume it on the same number (now {self.dist.world_size}): each worker's inner "
                                  "optimiser is part of the run")
        if int(state.get("sync_every", 0)) != self.sync_every:
            raise CheckpointError(f"{where} synchronised every {state.get('sync_every')} steps, not "
                                  f"{self.sync_every}; train.sync_every cannot change on resume")
        with torch.no_grad():
            for a, saved in zip(self.anchor, state["anchor"]):
                a.copy_(saved)
        self.outer.load_state_dict(state["outer"])
        self.rounds = int(state.get("rounds", 0))

    def global_weights(self) -> dict[str, torch.Tensor]:
        """The model's state dict with the global weights in place of this worker's."""
        own = {id(p): a for p, a in zip(self.params, self.anchor)}
        out = {}
        for name, t in self.model.state_dict(keep_vars=True).items():
            out[name] = own.get(id(t), t).detach().to("cpu").contiguous().clone()
        return out


def _cpu(obj: Any) -> Any:
    """``obj`` with every tensor moved to the CPU (a worker's state, to gather)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def mean_state(states: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The mean of several state dicts (floating tensors; others from the first)."""
    return {k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
            for k, v in states[0].items()}
