"""``diffuse``: the command line. Thin: parse, call :mod:`diffuse.api`, report.

User mistakes (missing or corrupt data, bad checkpoints, impossible options) are printed as
one line ``error: ...`` with exit code 2, never as a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from .. import api
from ..core.checkpoint import CheckpointError, atomic_write_text
from ..core.domain import DataError
from ..core.registry import UnknownDomainError
from ..core.samplers import SAMPLERS, SPACINGS

USER_ERRORS = (DataError, CheckpointError, UnknownDomainError, FileNotFoundError, FileExistsError, ValueError,
               NotADirectoryError, IsADirectoryError, PermissionError)


class UserError(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _run(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(msg) from None


def _positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be positive, got {value}")
    return value


def _print_table(title: str, metrics: dict[str, Any]) -> None:
    if not metrics:
        return
    width = max(len(k) for k in metrics)
    click.echo(title)
    for k, v in metrics.items():
        val = f"{v:.4f}" if isinstance(v, float) else str(v)
        click.echo(f"  {k:<{width}}  {val}")


def _print_columns(title: str, columns: dict[str, dict[str, Any]]) -> None:
    keys = list(next(iter(columns.values())).keys())
    width = max(len(k) for k in keys)
    click.echo(title)
    click.echo(f"  {'':<{width}}  " + "  ".join(f"{name:>12}" for name in columns))
    for k in keys:
        vals = [c.get(k) for c in columns.values()]
        click.echo(f"  {k:<{width}}  " + "  ".join(f"{v:>12.4f}" if isinstance(v, float) else f"{str(v):>12}" for v in vals))


def _parse_condition(text: str | None, num: int) -> Any:
    """``--condition`` JSON: a number applies to every sample, a list gives one value per sample."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise UserError(f"--condition must be JSON (e.g. 12 or [9, 12]), got {text!r}") from None
    if isinstance(value, list):
        if len(value) != num:
            raise UserError(f"--condition lists {len(value)} values but --num is {num}; give one per sample")
        import torch

        try:
            return torch.tensor(value)
        except (TypeError, ValueError):
            raise UserError(f"--condition list must hold numbers, got {text!r}") from None
    if isinstance(value, (int, float)):
        import torch

        return torch.full((num,), value)
    return value


# --- conditional generation (cond helper) ---
def _parse_labels(labels: tuple[str, ...]) -> dict[str, Any] | None:
    """``--label 7``, ``--label seven``, ``--label 0,1,2`` or repeated ``--label``: ``{"label": ...}``."""
    values = [v.strip() for text in labels for v in text.split(",") if v.strip()]
    if not values:
        return None
    return {"label": values[0] if len(values) == 1 else values}


# --- text prompts (text helper) ---
def _parse_prompts(prompts: tuple[str, ...], cond: dict[str, Any] | None) -> dict[str, Any] | None:
    """``--prompt "a handwritten seven"`` (repeat it to cycle prompts over the samples) added to
    the ``--label`` condition as ``{"text": ...}``; the model's text kind checks the words."""
    if not prompts:
        return cond
    return {**(cond or {}), "text": prompts[0] if len(prompts) == 1 else list(prompts)}
# --- end text prompts ---


def _parse_probability(text: str | None, what: str) -> float | None:
    if text is None:
        return None
    try:
        p = float(text)
    except ValueError:
        raise UserError(f"{what} must be a number in [0, 1], got {text!r}") from None
    if not 0.0 <= p <= 1.0:
        raise UserError(f"{what} must be a number in [0, 1], got {text!r}")
    return p


def _sampler_names() -> list[str]:
    return sorted(SAMPLERS)


def _parse_options(sampler: str, pairs: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (values parsed as JSON where possible) checked against the sampler."""
    import inspect

    params = inspect.signature(SAMPLERS[sampler]).parameters
    allowed = {n for n, p in params.items() if p.kind == p.KEYWORD_ONLY} - {
        "schedule", "space", "generator", "callback", "stats"}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--option expects KEY=VALUE, got {pair!r}")
        if key not in allowed:
            raise UserError(f"sampler {sampler!r} has no option {key!r}; it takes: {', '.join(sorted(allowed)) or 'none'}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    if "stats" in params:
        out["stats"] = {}
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log more (INFO level).")
@click.version_option(package_name="diffuse")
def main(verbose: bool) -> None:
    """diffuse: one diffusion framework for images, audio and 3-D molecules.

    \b
      diffuse train --domain image          train on the bundled default data
      diffuse sample --checkpoint runs/image --num 16 --sampler ddim --steps 50
      diffuse evaluate --checkpoint runs/image --num 256
      diffuse domains                        list built-in and plugged-in domains
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command()
def domains() -> None:
    """List the available domains (built-ins and the `diffuse.domains` entry points)."""
    items = api.available_domains()
    width = max((len(k) for k in items), default=0)
    for name, desc in items.items():
        click.echo(f"{name:<{width}}  {desc}")


@main.command()
@click.option("--domain", "-d", default=None, help="Domain to train (see `diffuse domains`). Required unless --resume.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Training data (file or folder); default: the domain's bundled data set.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="JSON file with sections model / diffusion / train / data_options.")
@click.option("--steps", type=int, default=None, callback=_positive, help="Optimizer steps (total, also when resuming).")
@click.option("--batch-size", type=int, default=None, callback=_positive, help="Samples per optimizer step.")
@click.option("--lr", type=float, default=None, callback=_positive, help="Peak learning rate (AdamW).")
@click.option("--device", default=None, help="auto (default), cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=None, help="Seed for data order, noise and initialisation.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (default runs/DOMAIN).")
@click.option("--resume", type=click.Path(path_type=Path), default=None, help="Continue the run in this folder.")
@click.option("--sample-every", type=int, default=None, help="Sample and evaluate every N steps (0: only at the end).")
@click.option("--eval-samples", type=int, default=None, help="Samples drawn for each evaluation.")
@click.option("--training", type=click.Choice(["ddpm", "continuous", "edm"]), default=None,
              help="Objective: ddpm (discrete T-step times, default), continuous (t ~ U[eps, 1]) or edm "
                   "(EDM preconditioning, log-normal noise levels).")
@click.option("--schedule", type=click.Choice(["linear", "cosine", "polynomial", "sigma", "subvp"]), default=None,
              help="Noise schedule (default: the domain's; edm training wants sigma).")
@click.option("--parameterization", type=click.Choice(["eps", "x0", "v"]), default=None,
              help="What the network predicts (not used by edm training).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
# --- conditional generation (cond helper) ---
@click.option("--condition", "conditions", multiple=True, metavar="NAME",
              help="Train a conditional model on this condition of the data, repeatable (image, audio: label, text).")
@click.option("--cond-drop", default=None, metavar="P",
              help="Condition dropout probability (default 0.1): the share of samples trained unconditionally.")
def train(domain, data, config_file, steps, batch_size, lr, device, seed, out, resume, sample_every,
          eval_samples, training, schedule, parameterization, no_progress, conditions, cond_drop) -> None:
    """Train a diffusion model; writes a run folder with config, checkpoint, metrics and samples."""
    if domain is None and resume is None:
        raise UserError("--domain is required (or --resume RUN_DIR); see `diffuse domains`")
    if domain is None:
        domain = _run(api.read_run_config, resume).domain
    diffusion = {"training": training, "parameterization": parameterization,
                 "schedule": {"kind": schedule} if schedule else None}
    if resume is not None and any(v is not None for v in diffusion.values()):
        raise UserError("--training / --schedule / --parameterization cannot change when resuming a run")
    diffusion["cond_drop"] = _parse_probability(cond_drop, "--cond-drop")
    if resume is not None and (conditions or cond_drop is not None):
        raise UserError("--condition / --cond-drop cannot change when resuming a run")
    result = _run(api.train, domain, data=data, out=out, config=config_file, resume=resume, conditions=list(conditions),
                  progress=not no_progress, diffusion=diffusion, steps=steps, batch_size=batch_size, lr=lr,
                  device=device, seed=seed, sample_every=sample_every, eval_samples=eval_samples)
    click.echo(f"trained {result.steps} steps in {result.seconds:.0f} s; final loss {result.final_loss:.4f}; "
               f"run folder {result.run_dir}")
    if result.sample_dir is not None:
        click.echo(f"samples: {result.sample_dir}")
    if result.metrics:
        click.echo("metrics: " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in result.metrics.items()))


@main.command()
@click.option("--checkpoint", "-c", type=click.Path(path_type=Path), required=True, help="Run folder from `diffuse train`.")
@click.option("--num", "-n", type=int, default=16, show_default=True, callback=_positive, help="Number of samples.")
@click.option("--sampler", default="ddim", show_default=True, help="Sampler: " + ", ".join(_sampler_names()) + ".")
@click.option("--steps", type=int, default=None, callback=_positive,
              help="Sampler steps (default: T for ddpm, 50 otherwise).")
@click.option("--eta", type=float, default=None, help="DDIM stochasticity in [0, 1] (default 0).")
@click.option("--spacing", type=click.Choice(SPACINGS), default=None, help="Time-grid spacing (default trailing).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same samples (any batch size).")
@click.option("--batch-size", type=int, default=64, show_default=True, callback=_positive)
@click.option("--device", default="auto", show_default=True)
@click.option("--domain", default=None, help="Expected domain; an error if the checkpoint is of another.")
@click.option("--raw-weights", is_flag=True, help="Use the raw instead of the EMA weights.")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE",
              help="Sampler option, repeatable: e.g. -o s_churn=10 (edm_heun), -o snr=0.16 (pc), -o rtol=1e-4 (rk45).")
@click.option("--condition", default=None, metavar="JSON",
              help="Sampling structure, as the domain understands it (JSON): molecules take atom counts, "
                   "e.g. 12 or [9, 12, 15, ...] (one per sample).")
# --- conditional generation (cond helper) ---
@click.option("--label", "labels", multiple=True, metavar="LABEL",
              help="Class label(s) to sample (index or name, e.g. 7 or seven); a list 0,1,2 or repeated "
                   "--label cycles over the samples. Needs a model trained with --condition label.")
# --- text prompts (text helper) ---
@click.option("--prompt", "prompts", multiple=True, metavar="TEXT",
              help='Text prompt, e.g. "a handwritten seven"; repeat it to cycle prompts over the samples. '
                   "Needs a model trained with --condition text.")
# --- end text prompts ---
@click.option("--guidance-scale", default=None, metavar="S",
              help="Classifier-free guidance scale: 0 unconditional, 1 conditional, > 1 guided.")
@click.option("--guidance-rescale", default=None, metavar="PHI",
              help="Rescale the guided prediction's std towards the conditional one (0..1; Lin et al. 2023).")
@click.option("--guidance-interval", default=None, metavar="LO,HI",
              help="Guide only at noise levels sigma/alpha in [LO, HI] (Kynkaanniemi et al. 2024).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (default CHECKPOINT/samples/sample).")
def sample(checkpoint, num, sampler, steps, eta, spacing, seed, batch_size, device, domain, raw_weights, options,
           condition, labels, prompts, guidance_scale, guidance_rescale, guidance_interval, out) -> None:
    """Draw samples from a trained model and write them as files (PNG / WAV / SDF ...)."""
    from tqdm.auto import tqdm

    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; expected one of {', '.join(_sampler_names())}")
    opts = _parse_options(sampler, options)
    structure = _parse_condition(condition, num)
    cond = _parse_labels(labels)
    cond = _parse_prompts(prompts, cond)   # --- text prompts (text helper) ---
    model = _run(api.load, checkpoint, device=device, ema=not raw_weights, domain=domain)
    guidance = {"guidance_scale": guidance_scale, "guidance_rescale": guidance_rescale,
                "guidance_interval": guidance_interval}
    _run(model.prepare_condition, num, cond, *guidance.values())   # checked before anything is written
    from ..core.generate import default_steps
    n_steps = steps or default_steps(sampler, model.diffusion.schedule)
    with tqdm(total=num * n_steps, desc=f"sample ({sampler}, {n_steps} steps)", unit="step·sample",
              dynamic_ncols=True, disable=None) as bar:
        samples = _run(model.sample, num, sampler=sampler, steps=steps, eta=eta, spacing=spacing, seed=seed,
                       batch_size=batch_size, progress=bar.update, cond=cond, structure=structure, **guidance,
                       **opts)
    out = out or Path(checkpoint) / "samples" / "sample"
    paths = _run(model.write, samples, out)
    click.echo(f"wrote {len(paths)} files to {out}")
    if opts.get("stats"):
        click.echo("sampler: " + "  ".join(f"{k}={v}" for k, v in opts["stats"].items()))
    report = model.describe(samples)
    if report:
        _print_table(f"{model.domain.name} samples ({num}):", report)
        atomic_write_text(Path(out) / "summary.json", json.dumps(report, indent=2))


@main.command()
@click.option("--checkpoint", "-c", type=click.Path(path_type=Path), required=True, help="Run folder from `diffuse train`.")
@click.option("--num", "-n", type=int, default=256, show_default=True, callback=_positive, help="Samples to generate.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Reference data (default: the training data's held-out split).")
@click.option("--sampler", default="ddim", show_default=True)
@click.option("--steps", type=int, default=None, callback=_positive)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True, callback=_positive)
@click.option("--device", default="auto", show_default=True)
@click.option("--domain", default=None, help="Expected domain; an error if the checkpoint is of another.")
@click.option("--baseline", is_flag=True,
              help="Also evaluate an untrained model of the same architecture, side by side.")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE", help="Sampler option, repeatable.")
@click.option("--likelihood", is_flag=True,
              help="Also the negative log-likelihood of reference data under the probability-flow ODE "
                   "(bits/dim for images and audio, nats per molecule).")
@click.option("--likelihood-num", type=int, default=64, show_default=True, callback=_positive,
              help="Reference items for --likelihood.")
@click.option("--exact-trace", is_flag=True, help="--likelihood with the exact divergence (small data only); "
              "default: exact up to 16 dimensions, Hutchinson above.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="JSON file for the metrics (default CHECKPOINT/evaluation.json).")
def evaluate(checkpoint, num, data, sampler, steps, seed, batch_size, device, domain, baseline, options, likelihood,
             likelihood_num, exact_trace, out) -> None:
    """Sample a trained model and print its metrics against reference data (also written as JSON)."""
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; expected one of {', '.join(_sampler_names())}")
    if data is not None and not Path(data).exists():
        raise UserError(f"data path {data} does not exist")
    model = _run(api.load, checkpoint, device=device, domain=domain)
    opts = dict(data=data, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size,
                **_parse_options(sampler, options))
    metrics = _run(model.evaluate, num, **opts)
    opts.pop("stats", None)
    if likelihood:
        metrics.update(_run(model.likelihood, likelihood_num, data=data, batch_size=batch_size, seed=seed,
                            exact_trace=True if exact_trace else None))
    record = {"checkpoint": str(checkpoint), "num": num, "sampler": sampler, "steps": steps, "seed": seed,
              "data": str(data) if data else None, "metrics": metrics}
    title = f"{model.domain.name}: {num} samples ({sampler}) vs reference"
    if baseline:
        untrained = model.untrained(seed)
        base = _run(untrained.evaluate, num, **opts)
        if likelihood:
            base.update(_run(untrained.likelihood, likelihood_num, data=data, batch_size=batch_size, seed=seed,
                             exact_trace=True if exact_trace else None))
        record["untrained"] = base
        _print_columns(title, {"model": metrics, "untrained": base})
    else:
        _print_table(title, metrics)
    out = out or Path(checkpoint) / "evaluation.json"
    atomic_write_text(Path(out), json.dumps(record, indent=2))
    click.echo(f"wrote {out}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
