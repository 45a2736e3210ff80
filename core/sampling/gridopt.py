"""Per-model optimised time grids: the few-step grid that best reproduces a fine-grid solution.

A deterministic sampler run with ``n`` steps on a grid ``t_max = e_0 > e_1 > ... > e_{n-1} > final``
turns prior noise ``x_T`` into ``y(grid; x_T)``; run on a fine grid it gives (nearly) the exact
probability-flow solution ``y*(x_T)`` (computed with a second-order solver on a 200-1000 step
grid, :func:`reference_sampler`). :func:`optimize_grid` minimises the global error

    J(grid) = sqrt( mean_i  reduce_i( (y(grid; x_T^i) - y*(x_T^i))^2 ) )

over a fixed batch of prior noise (a few hundred draws; ``reduce`` is the Space's per-sample
mean, so graphs and padded data are measured on their valid elements only). This is the
objective of Align Your Steps (Sabour et al. 2024) with the global rather than a local
truncation error, minimised without derivatives, so it works with any sampler from the
registry, on any schedule and Space, including samplers added later.

Search. The end points are kept: ``e_0`` (the prior is drawn there) and ``final`` (usually 0,
the clean data); the lowest evaluation time stays above ``t_lo`` (the schedule's ``t_min``:
``1/T`` for a discrete model). The free times are written by stick-breaking,
``e_k = t_lo + sigmoid(z_k) (e_{k-1} - t_lo)``, so every real vector ``z`` is a valid, strictly
decreasing grid. The default grid is evaluated first, then the schedule's standard spacings with
the same end points (one evaluation each; the best becomes the starting point); Powell's
derivative-free conjugate-direction method (scipy) minimises ``J`` over ``z``, and a compass
search (each time's logit between its neighbours moved by ``+-delta``, ``delta`` halved after a
sweep without progress; Kolda, Lewis & Torczon 2003) polishes the result, all within
``max_evals`` evaluations. For a discrete model (``schedule.num_steps = T``) every candidate is
snapped to the trained timesteps ``k / T`` before it is evaluated, so the model is queried only
where it was trained and the stored grid is the grid evaluated. The best grid seen is returned:
never worse than the default grid on ``J``. Everything is deterministic given the noise.

Only deterministic samplers have a per-sample global error; a sampler whose output depends on
its random generator (ancestral, SDE, DDIM with ``eta > 0``) is refused with a ``ValueError``.

Storage. :func:`save_grid` keeps the result in ``RUN/grids.json`` (beside ``config.json``; the
weights are never touched), written atomically, one entry per sampler + steps + schedule, with
the checkpoint step and weights (EMA / raw) it was optimised for; :func:`stored_grid` returns the
entry matching a sampling request, or ``None``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..data.space import Space, per_sample_generators
from ..errors import UserInputError
from ..io import atomic_write_text
from ..process.schedule import Schedule
from .common import prior_sample
from .generate import sampling_chunks
from .grids import SPACINGS, check_grid, time_grid
from .registry import SAMPLERS, get_sampler

__all__ = ["GridResult", "optimize_grid", "grid_error", "check_grid", "snap_grid", "prior_batches",
           "reference_grid", "reference_sampler", "grid_key", "load_grids", "save_grid", "stored_grid", "GRIDS_FILE"]

log = logging.getLogger(__name__)

F64 = torch.float64
GRIDS_FILE = "grids.json"
GRIDS_FORMAT = 1
#: logits are clipped here before a move (a point at an end of its interval can still move)
_LOGIT_CLIP = 3.0

#: ``(denoise, x, space)``: a denoise closure, prior noise at ``grid[0]`` and its Space
Problem = tuple[Callable, Tensor, Space]


@dataclass
class GridResult:
    """The optimised grid and what it achieved (``objective``: ``J`` above, on the batch it was
    optimised on; ``start_objective``: ``J`` of ``start_grid``)."""

    sampler: str
    nfe: int
    grid: Tensor
    start_grid: Tensor
    objective: float
    start_objective: float
    evaluations: int
    history: list[float] = field(default_factory=list)

    @property
    def gain(self) -> float:
        """``start_objective / objective`` (>= 1)."""
        return self.start_objective / self.objective if self.objective > 0 else math.inf


# ---------------------------------------------------------------------------------------- grids
def snap_grid(grid: Tensor, T: int) -> Tensor:
    """The grid's evaluation times (all but the last entry) rounded to the trained timesteps
    ``k / T`` and kept strictly decreasing within ``[1/T, 1]`` (a collision is pushed up, then
    down from the top); the final time is kept as is. ``len(grid) - 1 <= T`` is required."""
    evals = grid[:-1]
    n = (evals * T).round().clamp(1, T)
    for i in range(len(n) - 2, -1, -1):        # from the clean end up: each above its successor
        n[i] = torch.maximum(n[i], n[i + 1] + 1)
    n[0] = min(float(n[0]), T)
    for i in range(1, len(n)):                 # keep the top within T, pushing down
        n[i] = torch.minimum(n[i], n[i - 1] - 1)
    return torch.cat([n / T, grid[-1:]])


def reference_grid(schedule: Schedule, start_grid: Tensor, steps: int, t_lo: float | None = None) -> Tensor:
    """The fine grid of the reference solution: ``steps`` steps from ``start_grid[0]`` down to
    ``t_lo`` (default: the schedule's ``t_min`` or the start grid's lowest evaluation time, the
    lower), uniform in log-SNR where it is finite at both ends (else uniform in ``t``), then
    ``start_grid[-1]``; snapped to the trained timesteps for a discrete model."""
    hi = float(start_grid[0])
    lo = min(schedule.t_min, float(start_grid[-2])) if t_lo is None else float(t_lo)
    lam = schedule.log_snr(torch.tensor([hi, lo], dtype=F64))
    if bool(torch.isfinite(lam).all()):
        t = schedule.t_from_log_snr(torch.linspace(float(lam[0]), float(lam[1]), steps, dtype=F64))
        t[0], t[-1] = hi, lo
    else:
        t = torch.linspace(hi, lo, steps, dtype=F64)
    grid = torch.cat([t, start_grid[-1:].to(F64)])
    T = schedule.num_steps
    return snap_grid(grid, T) if T else grid


#: the second-order solver of the reference solution where the log-SNR is finite
REFERENCE_SAMPLER = "dpmpp_2m"


def reference_sampler(schedule: Schedule, start_grid: Tensor, sampler: str) -> str:
    """The sampler of the fine-grid reference: DPM-Solver++(2M) (second order: on a 1000-step
    grid its error is far below any few-step sampler's, whereas a first-order sampler such as DDIM
    is still visibly off there) when the log-SNR is finite at ``start_grid[0]``; else (a flow
    path starting from pure noise) ``sampler`` itself."""

    top = schedule.log_snr(torch.tensor(float(start_grid[0]), dtype=F64))
    return REFERENCE_SAMPLER if REFERENCE_SAMPLER in SAMPLERS and bool(torch.isfinite(top)) else sampler


# ------------------------------------------------------------------------------------ objective
def _run(sampler: Callable, problems: Sequence[Problem], grid: Tensor, schedule: Schedule, seed: int,
         options: dict[str, Any]) -> list[Tensor]:
    out = []
    start = 0
    for denoise, x, space in problems:
        n = space.batch_size(x)
        gens = per_sample_generators(seed, n, start, device=x.device)
        out.append(sampler(denoise, x.clone(), grid, schedule=schedule, space=space, generator=gens, **options))
        start += n
    return out


def grid_error(ys: Sequence[Tensor], refs: Sequence[Tensor], problems: Sequence[Problem]) -> float:
    """``J``: the root of the mean over samples of the Space's per-sample mean squared difference
    (``inf`` if a sample is not finite)."""
    total, count = 0.0, 0
    for y, ref, (_, _, space) in zip(ys, refs, problems):
        per = space.reduce((y.to(F64) - ref.to(F64)) ** 2)
        total += float(per.sum())
        count += int(per.numel())
    return math.sqrt(total / count) if count and math.isfinite(total) else math.inf


def _check_deterministic(fn: Callable, name: str, problems: Sequence[Problem], grid: Tensor,
                         schedule: Schedule, options: dict[str, Any]) -> None:
    a = _run(fn, problems[:1], grid, schedule, 1, options)[0]
    b = _run(fn, problems[:1], grid, schedule, 2, options)[0]
    if not torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True):
        raise UserInputError(f"sampler {name!r} draws fresh noise on its way, so a grid cannot be fitted to its "
                         "per-sample error; optimise the grid of a deterministic sampler (e.g. ddim, dpmpp_2m, "
                         "ode_heun, edm_heun)")


def _standard_grids(schedule: Schedule, nfe: int, start: Tensor, lo: float) -> list[Tensor]:
    """The schedule's standard spacings (``samplers.SPACINGS``) with the start grid's end points,
    where they make a valid grid: extra starting candidates, one evaluation each."""

    out = []
    for spacing in SPACINGS:
        try:
            g = time_grid(schedule, nfe, spacing, t_max=float(start[0]), t_min=lo, final=float(start[-1]))
            g = check_grid(g, nfe)
        except ValueError:
            continue
        if float(g[-2]) >= lo - 1e-12 and float(g[0]) == float(start[0]):
            out.append(g)
    return out


class _BudgetSpent(Exception):
    """Raised inside the search when the evaluation budget is spent."""


def _grid_of(z: Any, like: Tensor, lo: float) -> Tensor:
    """Stick-breaking: ``e_k = lo + sigmoid(z_k) (e_{k-1} - lo)`` from ``e_0 = like[0]``, then
    ``like[-1]``: every real vector ``z`` gives a strictly decreasing grid above ``lo``."""
    e = [float(like[0])]
    for zk in z:
        e.append(lo + (e[-1] - lo) / (1 + math.exp(-max(-50.0, min(50.0, float(zk))))))
    return torch.tensor(e + [float(like[-1])], dtype=F64)


def _z_of(grid: Tensor, lo: float) -> list[float]:
    """The inverse of :func:`_grid_of` (logits clipped to ``+-_LOGIT_CLIP``)."""
    return [_logit((float(grid[k]) - lo) / (float(grid[k - 1]) - lo)) for k in range(1, grid.numel() - 1)]


def _powell(f: Callable[[Any], float], z0: list[float]) -> None:
    """Powell's conjugate-direction method (scipy), derivative-free, on the stick-breaking logits."""
    import numpy as np
    from scipy.optimize import minimize

    minimize(f, np.asarray(z0, dtype=float), method="Powell", options={"xtol": 1e-2, "ftol": 1e-4})


def _compass(consider: Callable[[Tensor], float], state: dict[str, Any], lo: float, nfe: int,
             min_delta: float) -> None:
    """Compass search: each free time's logit between its neighbours moved by ``+-delta``; a move
    is kept when it lowers ``J`` (``consider`` records it); ``delta`` halves after a sweep
    without progress, down to ``min_delta``."""
    delta = 1.0
    while delta >= min_delta:
        improved = False
        for k in range(1, nfe):
            grid = state["grid"]
            lower = float(grid[k + 1]) if k < nfe - 1 else lo
            upper = float(grid[k - 1])
            z = _logit((float(grid[k]) - lower) / (upper - lower))
            for sign in (1.0, -1.0):
                cand = grid.clone()
                cand[k] = lower + (upper - lower) / (1 + math.exp(-(z + sign * delta)))
                before = state["best"]
                consider(cand)
                if state["best"] < before:
                    improved = True
                    break
        if not improved:
            delta /= 2


def _logit(w: float) -> float:
    w = min(max(w, 1e-12), 1 - 1e-12)
    return max(-_LOGIT_CLIP, min(_LOGIT_CLIP, math.log(w / (1 - w))))


def optimize_grid(problems: Sequence[Problem], schedule: Schedule, start_grid: Tensor, *, sampler: str = "ddim",
                  ref_steps: int | None = None, max_evals: int | None = None, min_delta: float = 1 / 16,
                  t_lo: float | None = None, seed: int = 0, options: dict[str, Any] | None = None,
                  ref_sampler: str | None = None,
                  progress: Callable[[int, float], None] | None = None) -> GridResult:
    """Minimise ``J`` over the free times of ``start_grid`` (see the module docstring).

    ``problems``: one or more ``(denoise, x, space)`` with ``x`` drawn from the prior at
    ``start_grid[0]``. ``ref_steps``: steps of the reference solution (``ref_sampler``, default
    :func:`reference_sampler`, on :func:`reference_grid`; default ``50 * nfe``, at least 200, at
    most 1000 and at most ``T``). ``max_evals``:
    evaluations of ``J`` (each one run of the sampler over all problems; default ``20 * nfe``).
    ``t_lo``: the lowest evaluation time allowed (default ``schedule.t_min``, or the start grid's
    lowest evaluation time where that is lower or ``t_min`` is the final time itself).
    ``progress(evaluations, best)`` is called after each evaluation. Returns a :class:`GridResult`
    whose grid is never worse on ``J`` than ``start_grid``.
    """
    fn = get_sampler(sampler)
    options = dict(options or {})
    start = check_grid(start_grid)
    nfe = start.numel() - 1
    if nfe < 2:
        raise UserInputError(f"a grid of {nfe} step has no free time to optimise; use 2 or more steps")
    T = schedule.num_steps
    if T and nfe > T:
        raise UserInputError(f"asked for {nfe} steps but the model was trained with T={T}")
    if not problems:
        raise UserInputError("optimize_grid needs at least one batch of prior noise")
    lo = min(schedule.t_min, float(start[-2])) if t_lo is None else float(t_lo)
    if t_lo is None and lo <= float(start[-1]):     # t_min is the final time (VE): keep the start's lowest
        lo = float(start[-2])
    if lo > float(start[-2]):
        raise UserInputError(f"the start grid evaluates at {float(start[-2]):g}, below t_lo={lo:g}")
    if lo <= float(start[-1]):
        raise UserInputError(f"the lowest evaluation time {lo:g} must lie above the final time {float(start[-1]):g}")
    ref_steps = ref_steps if ref_steps is not None else min(1000, max(200, 50 * nfe), T or 1000)
    if T and ref_steps > T:
        raise UserInputError(f"ref_steps={ref_steps} exceeds the model's T={T}")
    if ref_steps < nfe:
        raise UserInputError(f"the reference needs more steps ({ref_steps}) than the grid ({nfe})")
    max_evals = 20 * nfe if max_evals is None else int(max_evals)
    if max_evals < 1:
        raise UserInputError(f"max_evals must be positive, got {max_evals}")

    _check_deterministic(fn, sampler, problems, start, schedule, options)
    ref_name = reference_sampler(schedule, start, sampler) if ref_sampler is None else ref_sampler
    ref_fn = get_sampler(ref_name)
    refs = _run(ref_fn, problems, reference_grid(schedule, start, ref_steps, lo), schedule, seed,
                options if ref_name == sampler else {})
    if not all(bool(torch.isfinite(r).all()) for r in refs):
        raise UserInputError(f"the reference solution ({ref_name}, {ref_steps} steps) is not finite; "
                         "the model or the sampler diverges")

    cache: dict[tuple[float, ...], float] = {}
    history: list[float] = []

    def objective(grid: Tensor) -> float:
        key = tuple(grid.tolist())
        if key not in cache:
            cache[key] = grid_error(_run(fn, problems, grid, schedule, seed, options), refs, problems)
            history.append(cache[key])
            if progress is not None:
                progress(len(history), min(history))
        return cache[key]

    state = {"grid": start.clone(), "best": objective(start)}

    def consider(cand: Tensor) -> float:
        """``J`` of a candidate (snapped for a discrete model), recorded if it is the best so far."""
        if T:
            cand = snap_grid(cand, T)
        if not bool((cand[1:] < cand[:-1]).all()) or float(cand[-2]) < lo - 1e-12:
            return math.inf
        if tuple(cand.tolist()) not in cache and len(history) >= max_evals:
            raise _BudgetSpent
        value = objective(cand)
        if value < state["best"]:
            state["grid"], state["best"] = cand, value
        return value

    try:
        for cand in _standard_grids(schedule, nfe, start, lo):    # a better-placed start, if any
            consider(cand)
        _powell(lambda z: consider(_grid_of(z, state["grid"], lo)), _z_of(state["grid"], lo))
        _compass(consider, state, lo, nfe, min_delta)
    except _BudgetSpent:
        pass
    best_grid, best = state["grid"], state["best"]
    return GridResult(sampler, nfe, best_grid, start, best, cache[tuple(start.tolist())], len(history), history)


# --------------------------------------------------------------------------- models and batches
def prior_batches(denoiser, domain, num: int, *, start_t: float, seed: int = 0,
                  batch_size: int = 64, device: torch.device | str = "cpu", cond: Any = None) -> list[Problem]:
    """``num`` draws of prior noise at ``start_t`` in chunks of ``batch_size``, as ``(denoise, x,
    space)`` problems for :func:`optimize_grid`: each chunk's structure from the domain's
    template, each sample's noise from its own generator (as in ``core.sampling.generate``), and the
    denoiser bound to the chunk's Space and ``cond`` (a Condition of ``num`` samples, e.g. the
    null condition of a conditional model, or ``None``)."""
    out: list[Problem] = []
    for chunk in sampling_chunks(domain, num, seed=seed, batch_size=batch_size, device=device, cond=cond):
        tpl = chunk.template
        x = tpl.space.project(prior_sample(denoiser.schedule, tpl.space, tpl.x, t=start_t, generator=chunk.noise_gens))
        out.append((denoiser.bind(tpl.space, tpl.cond), x, tpl.space))
    return out


# --------------------------------------------------------------------------------------- storage
def grid_key(sampler: str, nfe: int, schedule: Schedule) -> str:
    """``"SAMPLER nfe=N SCHEDULE-CONFIG-JSON"``: one entry per sampler, steps and schedule."""
    return f"{sampler} nfe={int(nfe)} {json.dumps(schedule.config(), sort_keys=True, separators=(',', ':'))}"


def load_grids(run_dir: str | Path) -> dict[str, Any]:
    """The entries of ``RUN/grids.json`` (``{}`` when there is none; a corrupt file is ignored
    with a warning, since sampling must not depend on it)."""
    path = Path(run_dir) / GRIDS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        log.warning("ignoring %s: not readable JSON (%s)", path, str(exc).splitlines()[0][:100])
        return {}
    grids = data.get("grids") if isinstance(data, dict) else None
    if not isinstance(grids, dict):
        log.warning("ignoring %s: expected {\"format\": 1, \"grids\": {...}}", path)
        return {}
    return grids


def save_grid(run_dir: str | Path, result: GridResult, schedule: Schedule, **info: Any) -> Path:
    """Add (or replace) the entry of ``result`` in ``RUN/grids.json``, atomically; other entries
    are kept. ``info`` (checkpoint step, weights, samples, seed...) is stored with it."""
    path = Path(run_dir) / GRIDS_FILE
    grids = load_grids(run_dir)
    grids[grid_key(result.sampler, result.nfe, schedule)] = {
        "sampler": result.sampler, "nfe": result.nfe, "schedule": schedule.config(),
        "grid": result.grid.tolist(), "start_grid": result.start_grid.tolist(),
        "objective": result.objective, "start_objective": result.start_objective,
        "evaluations": result.evaluations, **info}
    atomic_write_text(path, json.dumps({"format": GRIDS_FORMAT, "grids": grids}, indent=1) + "\n")
    return path


def stored_grid(run_dir: str | Path, sampler: str, nfe: int, schedule: Schedule,
                **expect: Any) -> tuple[Tensor, dict[str, Any]] | None:
    """``(grid, entry)`` stored for ``sampler`` with ``nfe`` steps on ``schedule``, or ``None``.
    Keyword arguments (``checkpoint_step=``, ``weights=``) must equal the entry's values, else
    the entry is stale (optimised for other weights) and ignored with a log line; an entry whose
    grid is not valid for ``nfe`` steps is ignored with a warning."""
    entry = load_grids(run_dir).get(grid_key(sampler, nfe, schedule))
    if not isinstance(entry, dict):
        return None
    stale = [f"{k} {entry.get(k)!r} (now {v!r})" for k, v in expect.items() if entry.get(k) != v]
    if stale:
        log.warning("not using the %s grid for %d steps in %s: it was optimised for %s; run "
                    "'diffuse optimize-grid' again", sampler, nfe, Path(run_dir) / GRIDS_FILE, ", ".join(stale))
        return None
    try:
        grid = check_grid(entry.get("grid"), nfe)
    except ValueError as exc:
        log.warning("ignoring the %s grid for %d steps in %s: %s", sampler, nfe, Path(run_dir) / GRIDS_FILE, exc)
        return None
    return grid, entry
