"""Default time grids chosen on one family of exact problems and validated on another (held out),
ours vs diffusers' schedulers at 5 / 10 / 20 / 50 evaluations, compared pairwise with standard errors.

    python benchmarks/bench_grids.py [--quick] [--samples 500] [--tune 36] [--held 24] [--boot 200] [--threads 1]

Protocol (every model is exact, so every error is the sampler's):

* problems: random Gaussian mixtures (:func:`problem`): dimension 1..16, 1..8 components, random
  weights (Dirichlet(1)), means (spread 2-4), covariances (widths log-uniform 0.03..1, random
  orientation); each on one of three processes: the DDPM linear chain and the cosine chain
  (T = 1000, as diffusers' "linear" and "squaredcos_cap_v2" betas) and EDM's sigmas
  (0.002..80, rho 7), by seed mod 3. Seeds 0..35 are the TUNE part (24 VP, 12 EDM), seeds
  1000..1023 the HELD-OUT part (16 VP, 8 EDM; ``--held-base`` 2000 / 3000 / 4000: sets B / C /
  D); no held-out seed is ever used to choose anything.
* tuning (TUNE only): for each of our samplers and each kind of process (VP / EDM) the best grid
  is the spacing with the smallest worst-case regret over the four budgets (at each budget: its
  geometric-mean sample distance over the TUNE problems / the best spacing's); each diffusers
  scheduler likewise gets its best spacing option, and "diffusers best" is the single (scheduler,
  spacing) pair the same rule picks among all of diffusers' pairs.
* report (HELD-OUT only), for our samplers on their default grid (``default_spacing``, what
  ``generate()`` / ``diffuse sample`` use without ``--spacing``): sample distance = energy
  distance to a fixed draw of the true mixture as a multiple of its noise floor (the mean energy
  distance of 4 further true draws to it); component-weight error = total variation between the
  true weights and the fractions of samples whose most likely component is k; transport error =
  RMS distance to the exact probability-flow solution of the same noise (RK45, rtol 1e-8) over
  the data's RMS scale. Mean and [min, max] over held-out problems.
* the bar (common random numbers): ours and every diffusers scheduler start from the SAME initial
  noise and are scored against the SAME reference draw; the difference of two sample distances
  gets a paired bootstrap standard error (200 replicates resampling the initial noises and the
  reference draws with the same weights for both). "No worse" on a problem = ours - theirs <= 2
  SE + 1 % of theirs; "better on average" = mean difference over the problems < 0 (SE: the
  problems' SEs in quadrature / P). Beside the per-problem count, the family-wise one
  (:func:`holm_worse`: Holm's step-down at 5 % over the set's problems), and the calibration row
  ``exact``: the exact probability-flow solution of the same noise, judged by the same rules
  (the per-problem rule fails it on held-out set C; Holm does not). Against (a) "diffusers best" (chosen on TUNE, as ours) and (b) the
  per-problem oracle: the best of all diffusers pairs on that very problem and budget, picked
  after seeing its score, so it is biased low by the selection (at 20-50 NFE it scores below the
  exact probability-flow solution itself).
* diffusers gets the exact model at the scheduler's own noise level (its ``sigmas[step_index]``
  or ``alphas_cumprod[k]``), so fractional Karras timesteps cost it nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import time
import warnings
from pathlib import Path

import torch

from diffuse.core import SAMPLERS, SPACINGS, CosineSchedule, DenseSpace, LinearBetaSchedule, SigmaSchedule, time_grid
from diffuse.core.process.gaussian import GaussianMixture, energy_distance
from diffuse.core.sampling.registry import default_spacing

F64 = torch.float64
SPACE = DenseSpace()
RESULTS = Path(__file__).resolve().parent / "results"
NFES = (5, 10, 20, 50)
HEUN = {"edm_heun", "ode_heun"}
OURS = ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "edm_heun", "ode_heun")
GRIDS = tuple(s for s in SPACINGS if s != "uniform")
KINDS = ("linear", "cosine", "edm")
#: non-inferiority margin: ours is "no worse" on a problem when ours - theirs <= 2 SE + MARGIN x theirs
#: (a difference below 1 % of the opponent's own distance is no difference a user can see; without
#: it, two implementations of the same solver on the same grid, whose samples differ by rounding,
#: are "worse" whenever the rounding difference exceeds its own near-zero standard error)
MARGIN = 0.01
#: family-wise error rate of the Holm reading of "no worse on every problem" (:func:`holm_worse`)
ALPHA = 0.05
#: the calibration "sampler": the exact probability-flow solution of the same noise (RK45, rtol 1e-8)
EXACT = "exact"
#: the diffusers scheduler that implements each of our samplers (same algorithm), per process family
COUNTERPART = {
    "vp": {"ddim": "DDIM", "dpmpp_2m": "DPM-Solver++(2M)", "dpmpp_3m": "DPM-Solver++(3M)", "unipc": "UniPC",
           "edm_heun": "Heun", "ode_heun": "Heun"},
    "edm": {"ddim": "EDM Euler", "dpmpp_2m": "EDM DPM-Solver++(2M)", "dpmpp_3m": "EDM DPM-Solver++(3M)"},
}


def problem(seed: int):
    """One random exact problem: (mixture, schedule kind, schedule)."""
    g = torch.Generator().manual_seed(seed)
    d = int(torch.randint(1, 17, (1,), generator=g))
    k = int(torch.randint(1, 9, (1,), generator=g))
    w = -torch.log(torch.rand(k, generator=g, dtype=F64))              # Dirichlet(1)
    spread = 2.0 + 2.0 * float(torch.rand(1, generator=g, dtype=F64))
    mu = spread * torch.randn(k, d, generator=g, dtype=F64)
    width = torch.exp(math.log(0.03) + (math.log(1.0) - math.log(0.03)) * torch.rand(k, generator=g, dtype=F64))
    q = torch.linalg.qr(torch.randn(k, d, d, generator=g, dtype=F64))[0]
    ev = width[:, None] * (0.3 + 0.7 * torch.rand(k, d, generator=g, dtype=F64))
    cov = q @ torch.diag_embed(ev ** 2) @ q.transpose(1, 2) + 1e-6 * torch.eye(d, dtype=F64)
    kind = KINDS[seed % 3]
    sch = {"linear": LinearBetaSchedule(), "cosine": CosineSchedule(), "edm": SigmaSchedule()}[kind]
    return GaussianMixture(w, mu, cov), kind, sch


def counted(den):
    box = {"n": 0}

    def f(x, t):
        box["n"] += 1
        return den(x, t)
    return f, box


def steps_for(name: str, nfe: int) -> int:
    return (nfe + 1) // 2 if name in HEUN else nfe


def run_ours(den, sch, name, spacing, nfe, x):
    grid = time_grid(sch, steps_for(name, nfe), spacing)
    f, box = counted(den)
    y = SAMPLERS[name](f, x.clone(), grid, schedule=sch, space=SPACE)
    return y, box["n"]


# ----------------------------------------------------------------------------- diffusers
def diffusers_schedulers(kind: str):
    """name -> {spacing option -> factory}; evaluations per step: 'heun' uses (n + 1) // 2 steps."""
    import diffusers as D
    if kind == "edm":
        base = dict(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, rho=7.0)
        return {
            "EDM Euler": {s: (lambda s=s: D.EDMEulerScheduler(**base, sigma_schedule=s)) for s in ("karras", "exponential")},
            "EDM DPM-Solver++(2M)": {s: (lambda s=s: D.EDMDPMSolverMultistepScheduler(**base, sigma_schedule=s))
                                     for s in ("karras", "exponential")},
            "EDM DPM-Solver++(3M)": {s: (lambda s=s: D.EDMDPMSolverMultistepScheduler(**base, sigma_schedule=s,
                                                                                     solver_order=3))
                                     for s in ("karras", "exponential")},
        }
    betas = (dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02) if kind == "linear"
             else dict(beta_schedule="squaredcos_cap_v2"))
    base = dict(num_train_timesteps=1000, **betas)
    sp = ("linspace", "leading", "trailing")

    def opts(cls, karras=True, **kw):
        out = {s: (lambda s=s: cls(**base, timestep_spacing=s, **kw)) for s in sp}
        if karras:
            out["karras"] = lambda: cls(**base, use_karras_sigmas=True, **kw)
        return out
    return {
        "DPM-Solver++(2M)": opts(D.DPMSolverMultistepScheduler, solver_order=2, algorithm_type="dpmsolver++"),
        "DPM-Solver++(3M)": opts(D.DPMSolverMultistepScheduler, solver_order=3, algorithm_type="dpmsolver++"),
        "UniPC": opts(D.UniPCMultistepScheduler, solver_order=2),
        "DDIM": opts(D.DDIMScheduler, karras=False, clip_sample=False, set_alpha_to_one=True),
        "Euler": opts(D.EulerDiscreteScheduler),
        "Heun": opts(D.HeunDiscreteScheduler),
    }


def run_diffusers(gm, kind, name, make, nfe, x):
    """Run one diffusers scheduler on the exact model; returns (samples, evaluations)."""
    sched = make()
    heun = "Heun" in name
    sched.set_timesteps((nfe + 1) // 2 if heun else nfe)
    has_sigmas = hasattr(sched, "sigmas") and not isinstance(sched, __import__("diffusers").DDIMScheduler)
    ve_sample = kind == "edm" or type(sched).__name__ in ("EulerDiscreteScheduler", "HeunDiscreteScheduler")
    y, n = x.clone(), 0
    if ve_sample and kind != "edm":             # those keep x / alpha: start from our x at their first time
        y = y * math.sqrt(float(sched.sigmas[0]) ** 2 + 1.0)
    for k in sched.timesteps:
        if has_sigmas:
            if sched.step_index is None:
                sched._init_step_index(k)
            sig = float(sched.sigmas[sched.step_index])
        else:
            ac = float(sched.alphas_cumprod[int(k)])
            sig = math.sqrt((1 - ac) / ac)
        b = y.shape[0]
        if kind == "edm":
            a_t, s_t, x_in = 1.0, sig, y
        else:
            a_t = 1.0 / math.sqrt(1.0 + sig * sig)
            s_t, x_in = sig * a_t, (y * a_t if ve_sample else y)
        x0, score = gm.denoise_at(x_in, torch.full((b,), a_t, dtype=F64), torch.full((b,), s_t, dtype=F64))
        n += 1
        if kind == "edm":                        # their EDM "epsilon" output F: x0 = c_skip x + c_out F
            sd = 0.5
            c_skip, c_out = sd ** 2 / (sig ** 2 + sd ** 2), sig * sd / math.sqrt(sig ** 2 + sd ** 2)
            out = (x0 - c_skip * y) / c_out
        else:
            out = -s_t * score                   # eps
        y = sched.step(out, k, y).prev_sample
    return y.to(F64), n


# ----------------------------------------------------------------------------- metrics
def weight_error(gm, y):
    r = gm.class_log_prob(y, torch.ones(y.shape[0], dtype=F64), torch.zeros(y.shape[0], dtype=F64)).argmax(1)
    frac = torch.bincount(r, minlength=gm.K).to(F64) / y.shape[0]
    return float(0.5 * (frac - gm.weights).abs().sum())


class Scorer:
    """Energy distance to one fixed draw ``ref`` of the true mixture, as a multiple of the noise
    floor, with ``boot`` bootstrap replicates that resample the sampler's initial noises (rows of
    ``y``, which share their index across samplers: common random numbers) and the reference
    draws, with the SAME resampling weights for every sampler of a problem, so the replicates of
    two samplers' scores pair up and their difference has a standard error."""

    def __init__(self, ref, floor, n, boot, seed):
        self.ref, self.floor, self.n, self.m = ref, floor, n, ref.shape[0]
        g = torch.Generator().manual_seed(seed)
        self.c = torch.zeros(boot, n, dtype=F64).scatter_add_(
            1, torch.randint(n, (boot, n), generator=g), torch.ones(boot, n, dtype=F64)) if boot else None
        self.w = torch.zeros(boot, self.m, dtype=F64).scatter_add_(
            1, torch.randint(self.m, (boot, self.m), generator=g), torch.ones(boot, self.m, dtype=F64)) if boot else None
        rr = torch.cdist(ref, ref)
        self.rr = float(rr.mean())
        self.rr_boot = ((self.w @ rr) * self.w).sum(1) / self.m ** 2 if boot else None

    def __call__(self, y):
        yr, yy = torch.cdist(y, self.ref), torch.cdist(y, y)
        point = (2 * float(yr.mean()) - float(yy.mean()) - self.rr) / self.floor
        if self.c is None:
            return point, None
        boot = (2 * ((self.c @ yr) * self.w).sum(1) / (self.n * self.m) - ((self.c @ yy) * self.c).sum(1) / self.n ** 2
                - self.rr_boot) / self.floor
        return point, boot


def evaluate(gm, y, scorer, flow, scale):
    if not bool(torch.isfinite(y).all()):
        return {"dist": math.inf, "weights": 1.0, "transport": math.inf}, None
    dist, boot = scorer(y)
    return {"dist": dist, "weights": weight_error(gm, y),
            "transport": float(((y - flow) ** 2).sum(1).mean().sqrt()) / scale}, boot


def setup(seed, n, boot=0):
    """One problem's exact model, the initial noise ``x`` every sampler starts from (ours and
    diffusers': common random numbers), the reference draw, the noise floor (the mean energy
    distance of 4 further true draws of n points to the reference) and the exact flow of ``x``."""
    gm, kind, sch = problem(seed)
    den = gm.denoiser(sch)
    a, s = sch.alpha_sigma(torch.tensor(1.0, dtype=F64))
    x = float(torch.sqrt(a * a + s * s)) * torch.randn(n, gm.D, dtype=F64, generator=torch.Generator().manual_seed(seed + 1))
    ref = gm.sample(n, torch.Generator().manual_seed(seed + 2))
    floor = sum(energy_distance(gm.sample(n, torch.Generator().manual_seed(seed + 3 + 7919 * j)), ref)
                for j in range(4)) / 4
    flow = SAMPLERS["rk45"](den, x.clone(), time_grid(sch, 2, "logsnr", t_min=1e-6 if sch.num_steps else None),
                            schedule=sch, space=SPACE, rtol=1e-8, atol=1e-8)
    scale = float((ref - ref.mean(0)).pow(2).sum(1).mean().sqrt())
    return gm, kind, sch, den, x, Scorer(ref, floor, n, boot, seed + 4), flow, scale


def measure(seed, n, ours_grids, boot, log):
    """All metrics of one problem for the given (sampler -> spacings) and every diffusers
    scheduler option; returns (results, bootstrap replicates of the sample distance per key)."""
    gm, kind, sch, den, x, scorer, flow, scale = setup(seed, n, boot)
    fl, fl_boot = evaluate(gm, flow, scorer, flow, scale)
    out = {"seed": seed, "kind": kind, "D": gm.D, "K": gm.K, "floor": scorer.floor, "flow": fl,
           "ours": {}, "diffusers": {}}
    boots = {("flow", EXACT): fl_boot}
    for name, spacings in ours_grids(kind).items():
        for sp in spacings:
            for nfe in NFES:
                try:
                    y, used = run_ours(den, sch, name, sp, nfe, x)
                except ValueError:
                    continue
                m, b = evaluate(gm, y, scorer, flow, scale)
                out["ours"][f"{name}|{sp}|{nfe}"] = {**m, "nfe": used}
                boots[("ours", f"{name}|{sp}|{nfe}")] = b
    try:
        scheds = diffusers_schedulers(kind)
    except ImportError:
        scheds = {}
    for name, options in scheds.items():
        for opt in options:
            for nfe in NFES:
                try:
                    y, used = run_diffusers(gm, kind, name, options[opt], nfe, x)
                except (IndexError, AssertionError, RuntimeError) as err:   # e.g. cosine + Karras sigmas repeat
                    out.setdefault("diffusers_failed", []).append(f"{name}|{opt}|{nfe}: {type(err).__name__}")
                    continue
                m, b = evaluate(gm, y, scorer, flow, scale)
                out["diffusers"][f"{name}|{opt}|{nfe}"] = {**m, "nfe": used}
                boots[("diffusers", f"{name}|{opt}|{nfe}")] = b
    log(f"problem {seed}: {kind} D={gm.D} K={gm.K} floor {scorer.floor:.2e}")
    return out, boots


def vp(kind):
    return "edm" if kind == "edm" else "vp"


def code_default(fam, name, nfe=None):
    """The grid our sampler runs on at ``nfe`` evaluations when none is asked for
    (``core.sampling.registry.default_spacing``); without ``nfe``: its name at 10 or more."""
    sch = SigmaSchedule() if fam == "edm" else LinearBetaSchedule()
    if nfe is None:
        return default_spacing(sch, name)
    return default_spacing(sch, name, steps_for(name, nfe))


def default_label(fam, name):
    """'auto' or 'trailing', or 'auto below 7 steps, trailing' where the default changes with the budget."""
    at = dict.fromkeys(code_default(fam, name, nfe) for nfe in NFES)
    return " / ".join(f"{sp} at {', '.join(str(n) for n in NFES if code_default(fam, name, n) == sp)}"
                      for sp in at) if len(at) > 1 else next(iter(at))


def geo(vals):
    vals = [min(v, 1e6) for v in vals]
    return math.exp(sum(math.log(max(v, 1e-12)) for v in vals) / len(vals))


def minimax(per):
    """``per``: option -> {nfe: geometric-mean sample distance over the TUNE problems}; the option
    whose worst regret (its value / the best option's, at each budget) is smallest."""
    best = {nfe: min(p[nfe] for p in per.values()) for nfe in NFES}
    regret = {o: max(p[nfe] / best[nfe] for nfe in NFES) for o, p in per.items()}
    return min(sorted(regret), key=lambda o: regret[o])


def tune(results):
    """Per sampler and process family: the spacing whose worst regret over the four budgets is
    smallest, the regret at a budget being its geometric-mean sample distance over the TUNE
    problems divided by the best spacing's at that budget (a default must hold at 5 NFE as at
    50: an average over budgets let a grid that is best at 10-50 NFE and 6x worse at 5 win).
    Each diffusers scheduler gets its spacing option by the same rule, and "diffusers best" is
    the single (scheduler, option) pair the same rule picks among all of diffusers' pairs."""
    choice = {}
    for fam in ("vp", "edm"):
        rs = [r for r in results if vp(r["kind"]) == fam]
        for table in ("ours", "diffusers"):
            keys = {tuple(k.split("|")[:2]) for r in rs for k in r[table]}
            every = {}
            for name in sorted({k[0] for k in keys}):
                per = {}
                for sp in sorted({k[1] for k in keys if k[0] == name}):
                    vals = {nfe: [r[table][f"{name}|{sp}|{nfe}"]["dist"] for r in rs if f"{name}|{sp}|{nfe}" in r[table]]
                            for nfe in NFES}
                    if all(len(v) == len(rs) for v in vals.values()):      # skip a spacing some problem refused
                        per[sp] = {nfe: geo(v) for nfe, v in vals.items()}
                        every[f"{name}|{sp}"] = per[sp]
                choice[(table, fam, name)] = minimax(per)
            if table == "diffusers" and every:
                choice[("diffusers", fam, "best")] = minimax(every)
    return choice


def tune_ours(results, choice):
    """Our samplers' defaults by the bar's own rule, on the TUNE problems: per sampler and process
    family, among the spacings that are better than "diffusers best" on average at every budget
    (mean difference < 0; all spacings if none is), the one that is no worse (:func:`no_worse`) on
    the most (problem, budget) pairs; ties go to the smallest worst-case regret (:func:`minimax`).
    (Without the first condition the rule picks diffusers' own grid for the sampler diffusers'
    best implements, tying on every problem and better on none.) Needs
    ``r["vs_best"]`` (TUNE measured with bootstrap replicates); overrides ``choice``'s entries for
    ours and returns the pass counts."""
    counts = {}
    for fam in ("vp", "edm"):
        rs = [r for r in results if vp(r["kind"]) == fam and "vs_best" in r]
        if not rs:
            continue
        for name in OURS:
            per, tally, better = {}, {}, {}
            for sp in GRIDS:
                keys = [f"{name}|{sp}|{nfe}" for nfe in NFES]
                if not all(k in r["vs_best"] for r in rs for k in keys):
                    continue
                tally[sp] = sum(no_worse(r["vs_best"][k]) for r in rs for k in keys)
                better[sp] = all(sum(r["vs_best"][k][0] for r in rs) < 0 for k in keys)
                per[sp] = {nfe: geo([r["ours"][f"{name}|{sp}|{nfe}"]["dist"] for r in rs]) for nfe in NFES}
            if not tally:
                continue
            pool = [sp for sp in tally if better[sp]] or list(tally)
            top = max(tally[sp] for sp in pool)
            choice[("ours", fam, name)] = minimax({sp: per[sp] for sp in pool if tally[sp] == top})
            counts[(fam, name)] = {sp: f"{tally[sp]}/{len(rs) * len(NFES)}{'' if better[sp] else ' (not better on average)'}"
                                   for sp in tally}
    return counts


def paired(a, b, boots):
    """(difference a - b of the sample distance, its bootstrap standard error, b's distance)."""
    (ta, ka, ma), (tb, kb, mb) = a, b
    if not (math.isfinite(ma["dist"]) and math.isfinite(mb["dist"])):
        return (math.inf if not math.isfinite(ma["dist"]) else -math.inf), 0.0, mb["dist"]
    d = boots[(ta, ka)] - boots[(tb, kb)]
    return ma["dist"] - mb["dist"], float(d.std()), mb["dist"]


def no_worse(pair, margin=MARGIN):
    """The non-inferiority rule: difference <= 2 SE + margin x the opponent's distance."""
    d, se, theirs = pair
    return d <= 2 * se + margin * (theirs if math.isfinite(theirs) else 0.0)


def p_worse(pair, margin=MARGIN):
    """One-sided p-value of "ours is no worse" (difference <= margin x theirs) on one problem, from
    the paired bootstrap SE (normal approximation); 0 where ours failed, 1 where it is infinitely
    better."""
    d, se, theirs = pair
    excess = d - margin * (theirs if math.isfinite(theirs) else 0.0)
    if math.isnan(excess) or excess == math.inf:
        return 0.0
    if excess == -math.inf:
        return 1.0
    if se <= 0:
        return 0.0 if excess > 0 else 1.0
    return 0.5 * math.erfc(excess / se / math.sqrt(2))


def holm_worse(pairs, alpha=ALPHA, margin=MARGIN):
    """Indices of the problems on which ours is "worse" with the family-wise error rate over the
    problems held at ``alpha`` (Holm's step-down: the k-th smallest p-value is rejected while it is
    <= alpha / (P - k), counting k from 0). "No worse on EVERY problem" is one claim about all P
    problems; judged problem by problem at 2 SE (one-sided 2.3 %) it fails about 0.023 x P times
    by chance alone when ours and diffusers are equally good -- the exact solution itself fails it
    (the calibration row ``exact``)."""
    ps = sorted((p_worse(p, margin), i) for i, p in enumerate(pairs))
    worse = []
    for k, (pv, i) in enumerate(ps):
        if pv > alpha / (len(ps) - k):
            break
        worse.append(i)
    return sorted(worse)


def vs_best(r, boots, choice):
    """Every measured (sampler, spacing, budget) of ours on one problem against the diffusers pair
    chosen on TUNE ("diffusers best"), as JSON-able [difference, SE, theirs]: what the tuning rule
    counts (``r["vs_best"]``)."""
    fam = vp(r["kind"])
    bn, bs = choice[("diffusers", fam, "best")].split("|")
    out = {}
    for key, m in r["ours"].items():
        name, sp, nfe = key.split("|")
        kb = f"{bn}|{bs}|{nfe}"
        if kb in r["diffusers"]:
            out[key] = list(paired(("ours", key, m), ("diffusers", kb, r["diffusers"][kb]), boots))
    return out


def compare(r, boots, choice):
    """Per our sampler and budget on one held-out problem: its default vs (a) the diffusers pair
    chosen on TUNE ("diffusers best") and (b) the per-problem oracle (the best diffusers pair on
    this very problem and budget, picked after seeing its score), as (difference, standard error,
    theirs); the first is ``r["vs_best"]``'s entry (:func:`vs_best` runs first)."""
    fam = vp(r["kind"])
    out = {}
    for name in OURS:
        for nfe in NFES:
            ko = f"{name}|{code_default(fam, name, nfe)}|{nfe}"
            if ko not in r["ours"]:
                continue
            ours = ("ours", ko, r["ours"][ko])
            row = {}
            if ko in r["vs_best"]:
                row["best"] = tuple(r["vs_best"][ko])
            twin = COUNTERPART[fam].get(name)
            if twin and ("diffusers", fam, twin) in choice:
                kc = f"{twin}|{choice[('diffusers', fam, twin)]}|{nfe}"
                if kc in r["diffusers"]:
                    row["counterpart"] = paired(ours, ("diffusers", kc, r["diffusers"][kc]), boots)
                    row["counterpart_is"] = kc
            cands = [(k, m) for k, m in r["diffusers"].items() if int(k.split("|")[2]) == nfe]
            if cands:
                k, m = min(cands, key=lambda km: km[1]["dist"])
                row["oracle"] = paired(ours, ("diffusers", k, m), boots)
                row["oracle_is"] = k
            out[f"{name}|{nfe}"] = row
    bn, bs = choice[("diffusers", fam, "best")].split("|")
    for nfe in NFES:                       # the calibration row: the exact solution itself against diffusers best
        kb = f"{bn}|{bs}|{nfe}"
        if kb in r["diffusers"]:
            out[f"{EXACT}|{nfe}"] = {"best": paired(("flow", EXACT, r["flow"]), ("diffusers", kb, r["diffusers"][kb]), boots)}
    return out


def summarise(held, choice):
    rows = {}
    for r in held:
        fam = vp(r["kind"])
        for table in ("ours", "diffusers"):
            for key, m in r[table].items():
                name, sp, nfe = key.split("|")
                if (code_default(fam, name, int(nfe)) if table == "ours" else choice.get((table, fam, name))) == sp:
                    label = name if table == "ours" else f"diffusers {name}"
                    rows.setdefault((fam, label, int(nfe)), []).append((r["seed"], m))
                if table == "diffusers" and choice.get(("diffusers", fam, "best")) == f"{name}|{sp}":
                    rows.setdefault((fam, "diffusers best (TUNE)", int(nfe)), []).append((r["seed"], m))
        for nfe in NFES:
            cands = [m for k, m in r["diffusers"].items() if int(k.split("|")[2]) == nfe]
            if cands:
                best = min(cands, key=lambda m: m["dist"])
                rows.setdefault((fam, "diffusers oracle", nfe), []).append((r["seed"], best))
        rows.setdefault((fam, "exact PF-ODE (floor)", 0), []).append((r["seed"], {**r["flow"], "nfe": 0}))
    return rows


def stat(vals):
    finite = [v for v in vals if math.isfinite(v)]
    if len(finite) < len(vals):
        return f"inf ({len(vals) - len(finite)})"
    return f"{sum(vals) / len(vals):.2f} [{min(vals):.2f}, {max(vals):.2f}]"


def print_tables(rows, choice, held):
    for fam in ("vp", "edm"):
        probs = [r for r in held if vp(r["kind"]) == fam]
        if not probs:
            continue
        print(f"\n### {'VP (DDPM linear + cosine, T=1000)' if fam == 'vp' else 'EDM sigmas'}: {len(probs)} held-out problems")
        labels = list(dict.fromkeys(k[1] for k in rows if k[0] == fam))
        for metric, title in (("dist", "sample distance (x noise floor)"), ("weights", "component-weight error (TV)"),
                              ("transport", "distance to the exact PF-ODE solution (/ data RMS)")):
            print(f"\n{title}: mean [min, max] over problems\n")
            print("| sampler (default grid) | " + " | ".join(f"{n} NFE" for n in NFES) + " |")
            print("|---|" + "---|" * len(NFES))
            for label in labels:
                if label.startswith("exact"):
                    continue
                table = "diffusers" if label.startswith("diffusers") else "ours"
                name = label.replace("diffusers ", "")
                sp = ("per problem" if name == "oracle" else choice.get(("diffusers", fam, "best")) if name == "best (TUNE)"
                      else default_label(fam, name) if table == "ours" else choice.get((table, fam, name), "?"))
                cells = []
                for n in NFES:
                    vals = [m[metric] for _, m in rows.get((fam, label, n), [])]
                    cells.append(stat(vals) if vals else "-")
                print(f"| {label} ({sp}) | " + " | ".join(cells) + " |")
            floor = [m[metric] for _, m in rows[(fam, "exact PF-ODE (floor)", 0)]]
            print(f"| exact PF-ODE solution | {stat(floor)} (all budgets) |" + " |" * (len(NFES) - 1))


def verdicts(held, choice):
    """The issue's bar under the 2-standard-error rule, per family, sampler, budget and opponent:
    'no worse' on a problem = difference <= 2 SE; 'better on average' = mean difference < 0
    (its SE: the problems' SEs in quadrature / P)."""
    out = {}
    for fam in ("vp", "edm"):
        probs = [r for r in held if vp(r["kind"]) == fam]
        for name in (*OURS, EXACT):
            for nfe in NFES:
                for opp in ("best", "counterpart", "oracle"):
                    got = [(r, r["compare"][f"{name}|{nfe}"][opp]) for r in probs
                           if opp in r["compare"].get(f"{name}|{nfe}", {})]
                    if not got:
                        continue
                    out[(fam, name, nfe, opp)] = {**summary([p for _, p in got]),
                                                  "worse": [r["seed"] for r, p in got if not no_worse(p)],
                                                  "worse_holm": [got[i][0]["seed"] for i in holm_worse([p for _, p in got])]}
    return out


def print_verdicts(v, choice):
    for fam in ("vp", "edm"):
        keys = [k for k in v if k[0] == fam]
        if not keys:
            continue
        print(f"\n### the bar, {fam.upper()}: ours (its default grid) minus diffusers, sample distance in noise floors; "
              f"'no worse' = difference <= 2 SE (paired bootstrap) + {MARGIN:.0%} of diffusers' distance on a problem "
              f"(in brackets: without the margin; Holm: problems not flagged 'worse' at a family-wise error rate of "
              f"{ALPHA:.0%} over the problems); row '{EXACT}': the exact probability-flow solution, the calibration")
        print(f"diffusers best (chosen on TUNE by the same rule as ours): {choice.get(('diffusers', fam, 'best'))}\n")
        print("| ours | vs | " + " | ".join(f"{n} NFE: no worse / mean diff +- SE" for n in NFES) + " |")
        print("|---|---|" + "---|" * len(NFES))
        for name in (*OURS, EXACT):
            for opp in ("best", "counterpart", "oracle"):
                cells = []
                for nfe in NFES:
                    c = v.get((fam, name, nfe, opp))
                    cells.append("-" if c is None else
                                 f"{c['no_worse']}/{c['problems']} ({c['no_worse_strict']}; Holm {c['no_worse_holm']}), "
                                 f"{c['mean_diff']:+.2f} +- {c['se_mean']:.2f}")
                if all(c == "-" for c in cells):
                    continue
                label = {"best": "diffusers best", "oracle": "oracle",
                         "counterpart": f"diffusers {COUNTERPART[fam].get(name)} ({choice.get(('diffusers', fam, COUNTERPART[fam].get(name)))})"}[opp]
                print(f"| {name} | {label} | " + " | ".join(cells) + " |")


def summary(pairs):
    """The bar over problems for a list of ``(difference, SE, theirs)``: no-worse counts (with and
    without the margin), mean difference and its SE (the problems' in quadrature / P)."""
    P = len(pairs)
    return {"problems": P, "no_worse": sum(no_worse(p) for p in pairs),
            "no_worse_strict": sum(no_worse(p, 0.0) for p in pairs),
            "no_worse_holm": P - len(holm_worse(pairs)),
            "mean_diff": sum(p[0] for p in pairs) / P, "se_mean": math.sqrt(sum(p[1] ** 2 for p in pairs)) / P}


def print_opt_in(held, fam, spacing):
    """The bar for a spacing that is not the default (``--spacing auto`` on EDM sigmas, where the
    default stays ``karras``), from ``r["vs_best"]``."""
    probs = [r for r in held if vp(r["kind"]) == fam]
    rows = {}
    for name in OURS:
        cells = []
        for nfe in NFES:
            pairs = [r["vs_best"][k] for r in probs if (k := f"{name}|{spacing}|{nfe}") in r.get("vs_best", {})]
            if len(pairs) != len(probs) or not pairs:
                break
            cells.append(summary(pairs))
        if len(cells) == len(NFES):
            rows[name] = cells
    if rows:
        print(f"\n### the bar, {fam.upper()}, opt-in `--spacing {spacing}` vs diffusers best\n")
        print("| ours | " + " | ".join(f"{n} NFE" for n in NFES) + " |")
        print("|---|" + "---|" * len(NFES))
        for name, cells in rows.items():
            print(f"| {name} ({spacing}) | " + " | ".join(
                f"{c['no_worse']}/{c['problems']} ({c['no_worse_strict']}; Holm {c['no_worse_holm']}), "
                f"{c['mean_diff']:+.2f} +- {c['se_mean']:.2f}"
                for c in cells) + " |")
    return {f"{fam}|{name}|{spacing}": cells for name, cells in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 + 3 problems, 300 samples (writes bench_grids_quick*.json)")
    ap.add_argument("--samples", type=int, default=None, help="samples per problem (default 500)")
    ap.add_argument("--tune", type=int, default=None, help="TUNE problems, seeds 0.. (default 36: 24 VP, 12 EDM)")
    ap.add_argument("--held", type=int, default=None, help="HELD-OUT problems, seeds 1000.. (default 24: 16 VP, 8 EDM)")
    ap.add_argument("--boot", type=int, default=200, help="bootstrap replicates for the paired standard errors")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tune-from", default=None, help="reuse the TUNE measurements of an earlier run (its json)")
    ap.add_argument("--held-base", type=int, default=1000,
                    help="first HELD-OUT seed (default 1000; 2000: a second held-out set, B)")
    args = ap.parse_args()
    for name in ("samples", "tune", "held", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.boot < 0 or args.held_base < 0:
        ap.error("--boot and --held-base must not be negative")
    if args.tune_from and not Path(args.tune_from).is_file():
        ap.error(f"--tune-from {args.tune_from}: no such file")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("diffuse.core.sampling.ode").setLevel(logging.ERROR)    # the Heun fallback line, once per run
    try:
        from diffusers.utils import logging as dlog
        dlog.set_verbosity_error()
    except ImportError:
        raise SystemExit("error: this benchmark compares against diffusers; pip install diffusers")
    n = args.samples or (300 if args.quick else 500)
    pt = args.tune or (3 if args.quick else 36)
    ph = args.held or (3 if args.quick else 24)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
    t0 = time.perf_counter()
    suffix = "_quick" if args.quick else ""               # a smoke run never replaces the full results
    every = lambda kind: {name: GRIDS for name in OURS}
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.tune_from:
        tune_res = json.loads(Path(args.tune_from).read_text())
        choice = tune(tune_res)
    else:
        measured = [measure(s, n, every, args.boot, log) for s in range(pt)]
        tune_res = [r for r, _ in measured]
        choice = tune(tune_res)
        for r, boots in measured:
            r["vs_best"] = vs_best(r, boots, choice)
        (RESULTS / f"bench_grids{suffix}_tune.json").write_text(json.dumps(tune_res, default=float))
    counts = tune_ours(tune_res, choice)
    for (fam, name), c in sorted(counts.items()):
        log(f"TUNE {fam} {name}: no worse than diffusers best on " + ", ".join(f"{sp} {v}" for sp, v in c.items())
            + f" -> {choice[('ours', fam, name)]}")
    log("defaults chosen on TUNE: " + ", ".join(f"{k[1]}/{k[2]}={v}" for k, v in sorted(choice.items())))
    for fam in ("vp", "edm"):
        for name in OURS:
            if ("ours", fam, name) in choice and code_default(fam, name, 10) != choice[("ours", fam, name)]:
                log(f"note: the code's default for {name} on {fam} at 10 NFE is {code_default(fam, name, 10)}, "
                    f"TUNE chose {choice[('ours', fam, name)]}")
    chosen = lambda kind: {name: sorted({choice[("ours", vp(kind), name)], *(code_default(vp(kind), name, n) for n in NFES),
                                         "trailing" if kind != "edm" else "karras", "auto"}) for name in OURS}
    held = []
    for s in range(ph):
        r, boots = measure(args.held_base + s, n, chosen, args.boot, log)
        r["vs_best"] = vs_best(r, boots, choice)
        r["compare"] = compare(r, boots, choice)
        held.append(r)
    rows = summarise(held, choice)
    print(f"\nHELD-OUT problems only ({ph}: seeds {args.held_base}-{args.held_base + ph - 1}, {n} samples each); defaults chosen on {pt} TUNE "
          f"problems (seeds 0-{pt - 1}); {args.boot} paired bootstrap replicates")
    print_tables(rows, choice, held)
    v = verdicts(held, choice)
    print_verdicts(v, choice)
    opt_in = print_opt_in(held, "edm", "auto")
    out = {"samples": n, "tune_problems": pt, "held_problems": ph, "boot": args.boot,
           "choice": {"|".join(k): v for k, v in choice.items()},
           "verdicts": {"|".join(map(str, k)): x for k, x in v.items()},
           "held_out": held, "torch": torch.__version__, "platform": platform.platform(),
           "seconds": time.perf_counter() - t0}
    out["held_base"], out["margin"] = args.held_base, MARGIN
    out["opt_in"] = opt_in
    out["tune_counts"] = {"|".join(k): v for k, v in counts.items()}
    path = RESULTS / f"bench_grids{suffix}{'' if args.held_base == 1000 else f'_held{args.held_base}'}.json"
    path.write_text(json.dumps(out, indent=1, default=float))
    print(f"\nwrote {path} ({out['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
