"""How much evaluation a training run can afford, and its cost stated before it starts.

An evaluation draws ``samples`` with a sampler of ``steps`` steps; every step calls the network
``calls_per_step`` times on a chunk of samples. Its cost is estimated from the measured time of
one network call (:func:`seconds_per_sample_call`, two calls on the first chunk of the
evaluation, the second one timed) as::

    seconds ~= per_sample_call * samples * steps * calls_per_step

(linear in the chunk size: about right for the chunk sizes evaluation uses; small chunks cost a
little more per sample). :func:`plan` scales the configured evaluation down to a time budget:
first fewer samples (down to :data:`MIN_SAMPLES`), then fewer sampler steps (down to
:data:`MIN_STEPS`); the configured values are never exceeded, and the minimum runs even when it
costs more than the budget (the trainer decides whether to run it).

The trainer's budget (``train.eval_budget``, ``train.eval_min_seconds``): all evaluations of a
run together may cost ``eval_budget`` times the run's training time, shared equally by the
periodic evaluations and the final one; the final evaluation gets at least
``eval_min_seconds``. ``eval_budget: null`` runs the configured evaluation unchanged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..data.domain import Domain
from ..sampling.generate import sampling_chunks
from ..sampling.registry import sampler_record

__all__ = ["EvalPlan", "plan", "calls_per_step", "seconds_per_sample_call", "MIN_SAMPLES", "MIN_STEPS"]

#: the smallest evaluation a budget scales down to (fewer only when configured fewer)
MIN_SAMPLES = 16
MIN_STEPS = 10

def calls_per_step(sampler: str) -> int:
    """Network calls per sampler step (the sampler record's; an adaptive solver is counted as one
    per grid step, a rough guess)."""
    return sampler_record(sampler).evals_per_step or 1


@dataclass(frozen=True)
class EvalPlan:
    samples: int
    steps: int
    sampler: str
    seconds: float          # estimated cost (nan when not measured)
    budget: float | None    # seconds allowed (None: no bound)
    reduced: bool           # fewer samples or steps than configured

    @property
    def calls(self) -> int:
        return self.steps * calls_per_step(self.sampler)

    def within_budget(self) -> bool:
        return self.budget is None or not (self.seconds > self.budget)

    def describe(self) -> str:
        est = f"~{self.seconds:.0f} s" if math.isfinite(self.seconds) else "cost unknown"
        text = f"{self.samples} samples x {self.steps} steps {self.sampler}, {est}"
        if self.budget is not None:
            text += f" (budget {self.budget:.0f} s" + (", scaled down from the configured evaluation" if self.reduced
                                                       else "") + ")"
        return text


def plan(samples: int, steps: int, sampler: str, per_sample_call: float, budget: float | None,
         min_samples: int = MIN_SAMPLES, min_steps: int = MIN_STEPS) -> EvalPlan:
    """The largest evaluation within ``budget`` seconds: ``samples`` first reduced (not below
    ``min(samples, min_samples)``), then ``steps`` (not below ``min(steps, min_steps)``)."""
    cps = calls_per_step(sampler)

    def cost(n: int, k: int) -> float:
        return per_sample_call * n * k * cps

    if budget is None or not math.isfinite(per_sample_call) or cost(samples, steps) <= budget:
        return EvalPlan(samples, steps, sampler, cost(samples, steps), budget, False)
    unit = max(per_sample_call * cps, 1e-12)
    n = max(min(samples, min_samples), min(samples, int(budget // (unit * steps))))
    k = steps
    if cost(n, k) > budget:
        k = max(min(steps, min_steps), min(steps, int(budget // (unit * n))))
    return EvalPlan(n, k, sampler, cost(n, k), budget, (n, k) != (samples, steps))


@torch.no_grad()
def seconds_per_sample_call(model: torch.nn.Module, domain: Domain, num: int, device: torch.device,
                            seed: int = 0) -> float:
    """Seconds per sample of one network call on a chunk of ``num`` samples shaped as the
    evaluation's first chunk (two calls, the second timed)."""
    template = next(sampling_chunks(domain, num, seed=seed, batch_size=num, device=device)).template
    x, space = template.x, template.space
    t = torch.full((space.batch_size(x),), 0.5, dtype=torch.float64, device=device)
    elapsed = float("nan")
    for _ in range(2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(x, t, cond=None, space=space)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
    return elapsed / num
