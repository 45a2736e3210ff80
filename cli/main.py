"""``diffuse``: the command line. Thin: parse, call :mod:`diffuse.api`, report.

User mistakes (missing or corrupt data, bad checkpoints, impossible options) are printed as
one line ``error: ...`` with exit code 2, never as a traceback.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from .. import api
from ..core import distributed
from ..core.checkpoint import CheckpointError
from ..core.config import check_device
from ..core.domain import DataError
from ..core.registry import UnknownDomainError
from ..core import solvers  # noqa: F401 - registers the continuous samplers
from ..core.samplers import SAMPLERS, SPACINGS, check_sampler_options
from .threads import apply_threads, parse_threads

USER_ERRORS = (DataError, CheckpointError, UnknownDomainError, FileNotFoundError, FileExistsError, ValueError,
               NotADirectoryError, IsADirectoryError, PermissionError)


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "invalid input"


class UserError(click.ClickException):
    """A user mistake: printed as one line ``error: ...`` on stderr, exit code 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _usage_line(exc: click.UsageError) -> UserError:
    """click's usage errors (bad option values, unknown options, missing ones) as one line."""
    msg = exc.format_message().rstrip(".")
    ctx = exc.ctx
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return UserError(f"{msg}{where}")


class _Group(click.Group):
    """Formats click's usage errors as one ``error: ...`` line (exit 2) for every command."""

    def make_context(self, info_name, args, *rest, **kwargs):
        argv = list(args)
        try:
            ctx = super().make_context(info_name, args, *rest, **kwargs)
            ctx.meta["diffuse.argv"] = argv   # re-launched as is by `train --nproc N`
            return ctx
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _usage_line(exc) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _usage_line(exc) from None


class _PathType(click.Path):
    """A path option that refuses an empty string (which would otherwise mean the current folder)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip() == "":
            self.fail("is an empty string; give a path", param, ctx)
        return super().convert(value, param, ctx)


PATH = _PathType(path_type=Path)


def _run(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(msg) from None


def _positive(ctx, param, value):
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise click.BadParameter(f"must be {'a finite positive number' if isinstance(value, float) else 'positive'}, "
                                 f"got {value}")
    return value


def _non_negative(ctx, param, value):
    if value is not None and value < 0:
        raise click.BadParameter(f"must be >= 0, got {value}")
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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -2 ** 63 <= v < 2 ** 63


def _parse_condition(text: str | None, num: int) -> Any:
    """``--condition`` JSON: an integer applies to every sample, a list gives one integer per
    sample (atom counts, class indices). Booleans, fractions, strings, objects and nulls are
    refused here; the domain checks the values themselves (``Domain.check_structure``)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise UserError(f"--condition must be JSON (e.g. 12 or [9, 12]), got {text!r}") from None
    import torch

    if isinstance(value, list):
        if len(value) != num:
            raise UserError(f"--condition lists {len(value)} values but --num is {num}; give one per sample")
        bad = [v for v in value if not _is_int(v)]
        if bad:
            raise UserError(f"--condition values must be whole numbers (atom counts or class indices), "
                            f"got {json.dumps(bad[0])}")
        return torch.tensor(value, dtype=torch.long)
    if _is_int(value):
        return torch.full((num,), value, dtype=torch.long)
    raise UserError(f"--condition must be a whole number or a list of {num} of them (e.g. 12 or [9, 12, ...]), "
                    f"got {text!r}")


# --- conditional generation (cond helper) ---
def _parse_labels(labels: tuple[str, ...]) -> dict[str, Any] | None:
    """``--label 7``, ``--label seven``, ``--label 0,1,2`` or repeated ``--label``: ``{"label": ...}``."""
    values = [v.strip() for text in labels for v in text.split(",") if v.strip()]
    if not values:
        return None
    return {"label": values[0] if len(values) == 1 else values}


# --- property conditions (props helper) ---
def _parse_properties(items: tuple[str, ...], cond: dict[str, Any] | None) -> dict[str, Any] | None:
    """``--property alpha=80`` (repeatable, one property each; ``alpha=70,80,90`` cycles over the
    samples) -> ``cond["property"] = {"alpha": ...}``; the model checks the names and values."""
    if not items:
        return cond
    props: dict[str, Any] = {}
    for text in items:
        name, eq, value = text.partition("=")
        name = name.strip()
        values = [v.strip() for v in value.split(",") if v.strip()]
        if not eq or not name or not values:
            raise UserError(f"--property takes NAME=VALUE (e.g. alpha=80, or alpha=70,80,90 per sample), got {text!r}")
        if name in props:
            raise UserError(f"--property {name} is given twice; give a list NAME=V1,V2,... instead")
        props[name] = values[0] if len(values) == 1 else values
    return {**(cond or {}), "property": props}
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


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        pass
    try:
        return float(raw)       # inf, -inf, nan (the latter refused by the type check)
    except ValueError:
        return raw


def _parse_options(sampler: str, pairs: tuple[str, ...], eta: float | None = None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (values parsed as JSON where possible) checked against the sampler's
    signature: known names, types, ranges. ``--eta E`` is the same as ``-o eta=E`` (not both)."""
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; expected one of {', '.join(_sampler_names())}")
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--option expects KEY=VALUE, got {pair!r}")
        if key in out:
            raise UserError(f"sampler option {key!r} is given twice")
        out[key] = _parse_value(raw)
    if eta is not None:
        if "eta" in out:
            raise UserError("eta is given twice (--eta and -o eta=...); give one")
        out["eta"] = eta
    _run(check_sampler_options, sampler, out)
    if "stats" in inspect.signature(SAMPLERS[sampler]).parameters:
        out["stats"] = {}
    return out


def _check_device(device: str) -> str:
    return _run(check_device, device)


def _check_out_file(path: Path) -> Path:
    """``--out FILE``: not a folder, in an existing writable folder; checked before any work."""
    if str(path).strip() == "":
        raise UserError("--out is an empty string; give a file name")
    p = Path(path)
    if p.is_dir():
        raise UserError(f"--out {p} is a folder; give a file name (e.g. {p / 'evaluation.json'})")
    parent = p.parent
    if not parent.exists():
        raise UserError(f"--out {p}: folder {parent} does not exist")
    if not parent.is_dir():
        raise UserError(f"--out {p}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"--out {p}: no permission to write there")
    return p


def _check_out_dir(path: Path) -> Path:
    """``--out DIR`` for samples: a new or empty folder (never mixed with old samples) whose
    nearest existing parent is a writable folder."""
    if str(path).strip() == "":
        raise UserError("--out is an empty string; give a folder")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"--out {p} is a file; give a folder for the samples")
    if p.is_dir() and any(p.iterdir()):
        raise UserError(f"--out {p} is not empty; give a new or empty folder (samples are never mixed with old ones)")
    anc = p if p.exists() else p.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise UserError(f"--out {p}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UserError(f"--out {p}: no permission to write in {anc}")
    return p


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log more (INFO level).")
@click.option("--threads", default=None, metavar="N",
              help="CPU threads for torch (default: $DIFFUSE_THREADS, else $OMP_NUM_THREADS, else one per core).")
@click.version_option(package_name="diffuse")
def main(verbose: bool, threads: str | None) -> None:
    """diffuse: one diffusion framework for images, audio and 3-D molecules.

    \b
      diffuse train --domain image          train on the bundled default data
      diffuse sample --checkpoint runs/image --num 16 --sampler ddim --steps 50
      diffuse evaluate --checkpoint runs/image --num 256
      diffuse domains                        list built-in and plugged-in domains
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _run(apply_threads, _run(parse_threads, threads, "--threads"))


@main.command()
def domains() -> None:
    """List the available domains (built-ins and the `diffuse.domains` entry points)."""
    items = api.available_domains()
    width = max((len(k) for k in items), default=0)
    for name, desc in items.items():
        click.echo(f"{name:<{width}}  {desc}")


@main.command()
@click.option("--domain", "-d", default=None, help="Domain to train (see `diffuse domains`). Required unless --resume.")
@click.option("--data", type=PATH, default=None,
              help="Training data (file or folder); default: the domain's bundled data set.")
@click.option("--config", "config_file", type=PATH, default=None,
              help="JSON file with sections model / diffusion / train / data_options.")
@click.option("--steps", type=int, default=None, callback=_positive, help="Optimizer steps (total, also when resuming).")
@click.option("--batch-size", type=int, default=None, callback=_positive, help="Samples per optimizer step.")
@click.option("--lr", type=float, default=None, callback=_positive, help="Peak learning rate (AdamW).")
@click.option("--device", default=None, help="auto (default), cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=None, help="Seed for data order, noise and initialisation.")
@click.option("--out", type=PATH, default=None, help="Run folder (default runs/DOMAIN).")
@click.option("--resume", type=PATH, default=None, help="Continue the run in this folder.")
@click.option("--sample-every", type=int, default=None, callback=_non_negative,
              help="Sample and evaluate every N steps (0: only at the end).")
@click.option("--eval-samples", type=int, default=None, callback=_non_negative,
              help="Samples drawn for each evaluation (0: none).")
@click.option("--training", type=click.Choice(["ddpm", "continuous", "edm", "flow"]), default=None,
              help="Objective: ddpm (discrete T-step times, default), continuous (t ~ U[eps, 1]), edm "
                   "(EDM preconditioning, log-normal noise levels) or flow (flow matching: linear path, "
                   "velocity, logit-normal times).")
@click.option("--schedule", type=click.Choice(["linear", "cosine", "polynomial", "sigma", "subvp"]), default=None,
              help="Noise schedule (default: the domain's; edm training wants sigma).")
@click.option("--parameterization", type=click.Choice(["eps", "x0", "v"]), default=None,
              help="What the network predicts (not used by edm training).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
# --- conditional generation (cond helper) ---
@click.option("--condition", "conditions", multiple=True, metavar="NAME",
              help="Train a conditional model on this condition of the data, repeatable "
                   "(image: label, text, lowres; audio: label, text, lowrate; molecules: property:NAME).")
@click.option("--cond-drop", default=None, metavar="P",
              help="Condition dropout probability (default 0.1): the share of samples trained unconditionally.")
@click.option("--nproc", type=int, default=None, callback=_positive,
              help="Train with N processes (DistributedDataParallel: one per GPU, or gloo on CPU); the same as "
                   "`torchrun --standalone --nproc-per-node N -m diffuse.cli train ...`. --batch-size is global.")
@click.option("--latent", type=PATH, default=None, metavar="AE_RUN",
              help="Latent diffusion: train on the latents of this autoencoder run (`diffuse train-autoencoder`).")
@click.option("--init", default=None, metavar="RUN|pretrained:NAME",
              help="Start a new run from this model's weights (fine-tuning, or a finished run continued with a new "
                   "learning-rate schedule): a run folder, or pretrained:NAME. Data, data options, model and "
                   "diffusion default to that model's; model and diffusion cannot change.")
def train(domain, data, config_file, steps, batch_size, lr, device, seed, out, resume, sample_every,
          eval_samples, training, schedule, parameterization, no_progress, conditions, cond_drop, nproc, latent,
          init) -> None:
    """Train a diffusion model; writes a run folder with config, checkpoint, metrics and samples.

    Several processes: `diffuse train --nproc N ...`, `torchrun --nproc-per-node N -m diffuse.cli
    train ...` or `accelerate launch --num_processes N -m diffuse.cli train ...`; the batch is
    split across them, rank 0 writes the run folder."""
    for name, value in (("--data", data), ("--out", out), ("--resume", resume), ("--config", config_file),
                        ("--domain", domain), ("--device", device), ("--init", init)):
        if value is not None and str(value).strip() == "":
            raise UserError(f"{name} is an empty string")
    if init is not None and resume is not None:
        raise UserError("--init starts a new run from a model's weights; --resume continues a run: give one")
    if domain is None and resume is None and config_file is not None:
        domain = _run(api.recipe_domain, config_file)   # a recipe names its domain
    if domain is None and init is not None:
        domain = _run(api.init_domain, init)            # fine-tuning: the initial model's domain
    if domain is None and resume is None:
        raise UserError("--domain is required (or --resume RUN_DIR, --init MODEL, or a --config naming its domain); "
                        "see `diffuse domains`")
    if resume is not None and out is not None:
        raise UserError("--out cannot be combined with --resume (the run keeps its folder)")
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the run")
    if device is not None:
        _check_device(device)
    if domain is None:
        domain = _run(api.read_run_config, resume).domain
    diffusion = {"training": training, "parameterization": parameterization,
                 "schedule": {"kind": schedule} if schedule else None}
    if training == "flow" and (schedule is not None or parameterization is not None):   # flow helper
        raise UserError("--training flow runs on a flow path with velocity prediction; leave out --schedule / "
                        "--parameterization (the cosine path: --config with {\"diffusion\": {\"schedule\": "
                        "{\"kind\": \"flow\", \"path\": \"cosine\"}}})")
    if resume is not None and any(v is not None for v in diffusion.values()):
        raise UserError("--training / --schedule / --parameterization cannot change when resuming a run")
    diffusion["cond_drop"] = _parse_probability(cond_drop, "--cond-drop")
    if resume is not None and (conditions or cond_drop is not None):
        raise UserError("--condition / --cond-drop cannot change when resuming a run")
    if resume is not None and latent is not None:
        raise UserError("--latent cannot change when resuming a run (the run keeps its autoencoder)")
    rank, world, _ = _run(distributed.world_from_env)
    if nproc is not None and world > 1 and nproc != world:
        raise UserError(f"--nproc {nproc} given inside a launch of {world} processes (WORLD_SIZE={world}); "
                        "leave out --nproc under torchrun / accelerate")
    if nproc is not None and nproc > 1 and world == 1:
        from .launch import launch
        sys.exit(launch(nproc, _without_nproc(click.get_current_context().find_root().meta["diffuse.argv"])))
    quiet = world > 1 and bool(os.environ.get(distributed.ERROR_DIR_ENV))   # the launcher prints the line
    try:
        with distributed.failure_guard():
            result = _run(api.train, domain, data=data, out=out, config=config_file, resume=resume,
                          conditions=list(conditions), latent=latent, init=init, progress=not no_progress,
                          diffusion=diffusion, steps=steps,
                          batch_size=batch_size, lr=lr, device=device, seed=seed, sample_every=sample_every,
                          eval_samples=eval_samples)
    except distributed.PeerFailed as exc:
        if not quiet:
            click.echo(f"error: {exc}", err=True)
        sys.exit(distributed.EXIT_STOPPED)
    except UserError as exc:
        if quiet:
            sys.exit(exc.exit_code)
        raise
    if rank != 0:
        return
    click.echo(f"trained {result.steps} steps in {result.seconds:.0f} s; final loss {result.final_loss:.4f}; "
               f"run folder {result.run_dir}")
    if result.sample_dir is not None:
        click.echo(f"samples: {result.sample_dir}")
    if result.metrics:
        click.echo("metrics: " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in result.metrics.items()))


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line without ``--nproc N`` / ``--nproc=N`` (what every process runs)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _check_model_source(checkpoint, pretrained) -> None:
    """``--checkpoint RUN`` or ``--pretrained NAME``: exactly one."""
    if checkpoint is None and pretrained is None:
        raise UserError("Missing option '--checkpoint' (a run folder) or '--pretrained' NAME")
    if checkpoint is not None and pretrained is not None:
        raise UserError("give either --checkpoint RUN_DIR or --pretrained NAME, not both")


def _load_model(checkpoint, pretrained, device: str, domain: str | None, ema: bool = True):
    """The model of a run folder or a shipped pretrained model, checked against ``--domain``."""
    if pretrained is None:
        return _run(api.load, checkpoint, device=device, ema=ema, domain=domain)
    model = _run(api.load_pretrained, pretrained, device=device)
    if domain is not None and domain != model.domain.name:
        raise UserError(f"pretrained model {pretrained!r} is a model of domain {model.domain.name!r}, not {domain!r}")
    return model


@main.command()
@click.option("--checkpoint", "-c", type=PATH, default=None, help="Run folder from `diffuse train`.")
@click.option("--pretrained", default=None, metavar="NAME",
              help="A model shipped inside the package instead of --checkpoint (image, audio, molecules; "
                   "see pretrained/NAME/MODEL_CARD.md).")
@click.option("--num", "-n", type=int, default=16, show_default=True, callback=_positive, help="Number of samples.")
@click.option("--sampler", default=None,
              help="Sampler: " + ", ".join(_sampler_names()) + ". Default: the domain's (ddim; audio ddpm, 50 "
                   "steps; molecules ddpm, 500 steps).")
@click.option("--steps", type=int, default=None, callback=_positive,
              help="Sampler steps (default: the domain's default sampler's; else T for ddpm, 50 otherwise).")
@click.option("--eta", type=float, default=None, help="DDIM stochasticity in [0, 1] (default 0); same as -o eta=E.")
@click.option("--spacing", type=click.Choice(SPACINGS), default=None,
              help="Time-grid spacing (default, chosen on exact problems: on VP schedules auto for unipc / "
                   "dpmpp_2m / dpmpp_3m / ode_heun, auto below 7 steps and trailing from 7 for ddim, leading for "
                   "edm_heun, else trailing; karras on EDM / VE sigmas; flow paths their own uniform grid; a domain "
                   "may choose: audio karras for ddpm).")
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
# --- property conditions (props helper) ---
@click.option("--property", "properties", multiple=True, metavar="NAME=VALUE",
              help="Molecule property to sample at, repeatable (e.g. alpha=80; alpha=70,80,90 cycles over the "
                   "samples); atom counts are drawn given it unless --condition fixes them. Needs a model "
                   "trained with --condition property:NAME.")
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
# --- classifier guidance (clf helper) ---
@click.option("--guidance", "guidance_kind", type=click.Choice(["free", "classifier"]), default=None,
              help="free: classifier-free guidance (default); classifier: the gradient of a noise-aware "
                   "classifier (--classifier RUN), also for an unconditional model.")
@click.option("--classifier", type=click.Path(path_type=Path), default=None, metavar="RUN",
              help="Classifier run folder from `diffuse train-classifier` (for --guidance classifier).")
@click.option("--target-value", "target_values", multiple=True, metavar="NAME=VALUE",
              help="Target of a property classifier, e.g. gyration=2.5 (for --guidance classifier).")
@click.option("--out", type=PATH, default=None,
              help="Output folder, new or empty (default CHECKPOINT/samples/sample, or sample-2, sample-3, ... "
                   "when that is taken; for --pretrained NAME: samples/pretrained-NAME in the current folder).")
def sample(checkpoint, pretrained, num, sampler, steps, eta, spacing, seed, batch_size, device, domain, raw_weights, options,
           condition, labels, properties, prompts, guidance_scale, guidance_rescale, guidance_interval, guidance_kind,
           classifier, target_values, out) -> None:
    """Draw samples from a trained model and write them as files (PNG / WAV / SDF ...)."""
    from tqdm.auto import tqdm

    _check_model_source(checkpoint, pretrained)
    if pretrained is not None and raw_weights:
        raise UserError("--raw-weights does not apply to --pretrained (it ships EMA weights only)")
    # a named sampler's options are checked now; the domain's default sampler's once the model is loaded
    opts = _parse_options(sampler, options, eta) if sampler is not None else None
    structure = _parse_condition(condition, num)
    cond = _parse_labels(labels)
    _check_device(device)
    if out is not None:
        _check_out_dir(out)
    cond = _parse_properties(properties, cond)   # props helper
    cond = _parse_prompts(prompts, cond)   # --- text prompts (text helper) ---
    model = _load_model(checkpoint, pretrained, device, domain, ema=not raw_weights)
    if opts is None:
        sampler, steps = model.default_sampling(sampler, steps)
        opts = _parse_options(sampler, options, eta)
    guidance = {"guidance_scale": guidance_scale, "guidance_rescale": guidance_rescale,
                "guidance_interval": guidance_interval}
    if guidance_kind == "classifier" or classifier is not None:   # clf helper: classifier guidance
        cond = _parse_target_values(cond, target_values)
        clf = _run(api.prepare_classifier_guidance, model, num, cond, guidance_kind or "classifier", classifier,
                   *guidance.values())[0]
        guidance = {"guidance_scale": guidance_scale, "guidance": "classifier", "classifier": clf}
    elif target_values:
        raise UserError("--target-value needs --guidance classifier --classifier RUN")
    else:
        _run(model.prepare_condition, num, cond, *guidance.values())   # checked before anything is written
    if out is None:
        first = Path(checkpoint) / "samples" / "sample" if pretrained is None else Path("samples") / f"pretrained-{pretrained}"
        out = api.fresh_sample_dir(first)
        _check_out_dir(out)
    from ..core.generate import check_generate_args, default_steps
    _run(check_generate_args, num, sampler=sampler, steps=steps, spacing=spacing, seed=seed, batch_size=batch_size,
         options=opts)
    _run(model.domain.check_structure, structure, model.data_info, batch_size=min(batch_size, num))
    n_steps = steps or default_steps(sampler, model.diffusion.schedule)
    with tqdm(total=num * n_steps, desc=f"sample ({sampler}, {n_steps} steps)", unit="step·sample",
              dynamic_ncols=True, disable=None) as bar:
        samples = _run(model.sample, num, sampler=sampler, steps=steps, spacing=spacing, seed=seed,
                       batch_size=batch_size, progress=bar.update, cond=cond, structure=structure,
                       **guidance, **opts)
    report = model.describe(samples)
    paths = _run(model.write, samples, out)
    if report:
        _run(api.write_text, Path(out) / "summary.json", json.dumps(report, indent=2))
    click.echo(f"wrote {len(paths)} files to {out}")
    if opts.get("stats"):
        click.echo("sampler: " + "  ".join(f"{k}={v}" for k, v in opts["stats"].items()))
    if report:
        _print_table(f"{model.domain.name} samples ({num}):", report)


@main.command()
@click.option("--checkpoint", "-c", type=PATH, default=None, help="Run folder from `diffuse train`.")
@click.option("--pretrained", default=None, metavar="NAME",
              help="A model shipped inside the package instead of --checkpoint (image, audio, molecules); "
                   "its reference is its training data's held-out split, as for a run.")
@click.option("--num", "-n", type=int, default=256, show_default=True, callback=_positive, help="Samples to generate.")
@click.option("--data", type=PATH, default=None,
              help="Reference data (default: the training data's held-out split).")
@click.option("--sampler", default=None,
              help="Sampler (default: the domain's: ddim; audio ddpm, 50 steps; molecules ddpm, 500 steps).")
@click.option("--steps", type=int, default=None, callback=_positive)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True, callback=_positive)
@click.option("--device", default="auto", show_default=True)
@click.option("--domain", default=None, help="Expected domain; an error if the checkpoint is of another.")
@click.option("--spacing", type=click.Choice(SPACINGS), default=None,
              help="Time-grid spacing (default: as for `diffuse sample`).")
@click.option("--guidance-scale", "guidance_scale", type=float, default=None, metavar="S",
              help="A conditional model sampled conditionally: each sample takes the condition of a random "
                   "training item (labels in the data's class shares, its captions or property values), "
                   "guided at scale S (1: plain conditional). Default: unconditional samples.")
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
@click.option("--out", type=PATH, default=None,
              help="JSON file for the metrics (default CHECKPOINT/evaluation.json; for --pretrained NAME: "
                   "evaluation-pretrained-NAME.json in the current folder).")
def evaluate(checkpoint, pretrained, num, data, sampler, steps, spacing, seed, batch_size, device, domain, guidance_scale,
             baseline, options, likelihood,
             likelihood_num, exact_trace, out) -> None:
    """Sample a trained model and print its metrics against reference data (also written as JSON)."""
    # a named sampler's options are checked now; the domain's default sampler's once the model is loaded
    _check_model_source(checkpoint, pretrained)
    sampler_opts = _parse_options(sampler, options) if sampler is not None else None
    if data is not None and str(data).strip() == "":
        raise UserError("--data is an empty string; give a file or folder, or leave it out for the held-out split")
    if data is not None and not Path(data).exists():
        raise UserError(f"data path {data} does not exist")
    _check_device(device)
    if out is not None:
        _check_out_file(out)
    model = _load_model(checkpoint, pretrained, device, domain)
    if sampler_opts is None:
        sampler, steps = model.default_sampling(sampler, steps)
        sampler_opts = _parse_options(sampler, options)
    default_out = (Path(checkpoint) / "evaluation.json" if pretrained is None
                   else Path(f"evaluation-pretrained-{pretrained}.json"))
    out = _check_out_file(out or default_out)
    from ..core.generate import check_generate_args, default_steps
    _run(check_generate_args, num, sampler=sampler, steps=steps, spacing=spacing, seed=seed, batch_size=batch_size,
         options=sampler_opts)
    opts = dict(data=data, sampler=sampler, steps=steps, spacing=spacing, seed=seed, batch_size=batch_size,
                **sampler_opts)
    if guidance_scale is not None:
        if not model.condition_kinds():
            raise UserError("--guidance-scale evaluates a conditional model; this one was trained without conditions")
        from ..core.guidance import Guidance
        _run(Guidance.parse, guidance_scale)                     # a number >= 0, checked before sampling
        opts.update(cond="train", guidance_scale=guidance_scale)
    metrics = _run(model.evaluate, num, **opts)
    opts.pop("stats", None)
    if likelihood:
        metrics.update(_run(model.likelihood, likelihood_num, data=data, batch_size=batch_size, seed=seed,
                            exact_trace=True if exact_trace else None))
    source = {"checkpoint": str(checkpoint)} if pretrained is None else {"pretrained": pretrained}
    conditions = ({"conditions": "of random training items", "guidance_scale": guidance_scale}
                  if guidance_scale is not None else {})
    record = {**source, "num": num, "sampler": sampler, "steps": steps,
              "spacing": model.spacing_used(sampler, steps, spacing), "seed": seed, **conditions,
              "data": str(data) if data else None, "metrics": metrics}
    n_steps = steps or default_steps(sampler, model.diffusion.schedule)
    title = f"{model.domain.name}: {num} samples ({sampler}, {n_steps} steps, {record['spacing']} grid) vs reference"
    columns = None
    if baseline:
        untrained = model.untrained(seed)
        base = _run(untrained.evaluate, num, **opts)
        if likelihood:
            base.update(_run(untrained.likelihood, likelihood_num, data=data, batch_size=batch_size, seed=seed,
                             exact_trace=True if exact_trace else None))
        record["untrained"] = base
        columns = {"model": metrics, "untrained": base}
    _run(api.write_text, out, json.dumps(record, indent=2))
    if columns is not None:
        _print_columns(title, columns)
    else:
        _print_table(title, metrics)
    click.echo(f"wrote {out}")


# --- noise-aware classifiers (clf helper) ---
def _parse_target_values(cond: dict[str, Any] | None, pairs: tuple[str, ...]) -> dict[str, Any] | None:
    """``--target-value NAME=VALUE`` (repeatable; ``VALUE`` a number or a list ``1.5,2.5``) into ``cond``."""
    out = dict(cond or {})
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip() or not raw.strip():
            raise UserError(f"--target-value expects NAME=VALUE, e.g. gyration=2.5, got {pair!r}")
        vals = [v.strip() for v in raw.split(",") if v.strip()]
        out[name.strip()] = vals[0] if len(vals) == 1 else vals
    return out or None


def _size_text(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1024
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}"


@main.command("cache")
@click.option("--clear", "clear", is_flag=True, help="Remove the entries (all, or those --kind / --older-than select).")
@click.option("--kind", default=None, metavar="KIND", help="Only this kind of entry (audio, audio_stats, images, molecules).")
@click.option("--older-than", type=float, default=None, metavar="DAYS", callback=_non_negative,
              help="Only entries not used for DAYS days (a fraction is fine: 0.5 is 12 hours).")
@click.option("--dry-run", is_flag=True, help="With --clear: list what would be removed, remove nothing.")
def cache(clear, kind, older_than, dry_run) -> None:
    """Show the data cache (decoded audio, converted image / molecule sets) or clear it.

    The cache lives in $DIFFUSE_CACHE, else $XDG_CACHE_HOME/diffuse, else ~/.cache/diffuse; a
    removed entry is rebuilt from its data file the next time it is needed.
    """
    if (dry_run or older_than is not None) and not clear:
        raise UserError("--older-than and --dry-run go with --clear")
    if clear:
        removed = _run(api.clear_cache, kind=kind, older_than_days=older_than, dry_run=dry_run)
        total = sum(e["bytes"] for e in removed)
        verb = "would remove" if dry_run else "removed"
        for e in removed:
            click.echo(f"{verb} {e['path']} ({_size_text(e['bytes'])})")
        click.echo(f"{verb} {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}, {_size_text(total)}"
                   f" from {api.cache_dir()}")
        return
    entries = _run(api.cache_entries, kind)
    click.echo(f"cache: {api.cache_dir()}")
    if not entries:
        click.echo("  (empty)")
        return
    kinds: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        kinds.setdefault(e["kind"], []).append(e)
    now = time.time()
    for k, items in sorted(kinds.items()):
        size = sum(e["bytes"] for e in items)
        oldest = max(now - e["last_used"] for e in items) / 86400.0
        partial = sum(e["partial"] for e in items)
        extra = f" ({partial} temporary: a conversion running now or interrupted)" if partial else ""
        click.echo(f"  {k:<12} {len(items):5d} {_size_text(size):>9}  least recently used {oldest:.1f} days ago{extra}")
    click.echo(f"  {'total':<12} {len(entries):5d} {_size_text(sum(e['bytes'] for e in entries)):>9}")


@main.command("export-pretrained")
@click.argument("run", type=PATH)
@click.argument("name")
@click.option("--half", is_flag=True, help="Store the EMA weights as float16 (half the size; check the quality).")
@click.option("--root", type=PATH, default=None,
              help="Folder holding pretrained/ and recipes/ (default: the diffuse package itself).")
@click.option("--wall-time", default=None, metavar="TEXT",
              help="Training wall time for the model card (default: summed from the run's metrics.jsonl).")
@click.option("--hardware", default=None, metavar="TEXT", help="Hardware the run trained on, for the model card.")
@click.option("--force", is_flag=True, help="Replace an existing pretrained model and recipe of that name.")
@click.option("--evaluation", "evaluations", type=PATH, multiple=True, metavar="FILE",
              help="An evaluation of RUN for the card (`diffuse evaluate -c RUN --seed S --out FILE`); "
                   "repeat for several seeds of one protocol (the card gives each and their mean). "
                   "Default: RUN/evaluation.json.")
def export_pretrained(run, name, half, root, wall_time, hardware, force, evaluations) -> None:
    """Export run folder RUN as pretrained model NAME (config, EMA weights, model card, recipe)."""
    from ..pretrained.export import export

    paths = _run(export, run, name, root=root, half=half, wall_time=wall_time, hardware=hardware, force=force,
                 evaluations=list(evaluations) or None)
    click.echo(f"exported {run} as pretrained model {name!r}: " + ", ".join(str(p) for p in paths))


@main.command("train-autoencoder")
@click.option("--domain", "-d", default=None, help="Domain (image, audio, molecules, or a plug-in with an autoencoder).")
@click.option("--data", type=PATH, default=None,
              help="Training data (file or folder); default: the domain's bundled data set.")
@click.option("--config", "config_file", type=PATH, default=None,
              help="JSON file with sections model (autoencoder options) / train / data_options.")
@click.option("--steps", type=int, default=None, callback=_positive, help="Optimizer steps.")
@click.option("--batch-size", type=int, default=None, callback=_positive, help="Samples per step.")
@click.option("--lr", type=float, default=None, callback=_positive, help="Peak learning rate.")
@click.option("--device", default=None, help="auto (default), cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=None, help="Seed for data order, noise and initialisation.")
@click.option("--out", type=PATH, default=None, help="Run folder (default runs/DOMAIN-autoencoder).")
@click.option("--resume", type=PATH, default=None, help="Continue the interrupted autoencoder run in this folder.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def train_autoencoder(domain, data, config_file, steps, batch_size, lr, device, seed, out, resume, no_progress) -> None:
    """Train an autoencoder for latent diffusion (then `diffuse train --domain D --latent RUN`)."""
    if resume is not None and out is not None:
        raise UserError("--out cannot be combined with --resume (the run keeps its folder)")
    if device is not None:
        _check_device(device)
    if domain is None:
        if resume is None:
            raise UserError("--domain is required (or --resume RUN_DIR); see `diffuse domains`")
        from ..core.latent import AutoencoderConfig
        domain = _run(AutoencoderConfig.load, resume).domain
    result = _run(api.train_autoencoder, domain, data=data, out=out, config=config_file, resume=resume,
                  progress=not no_progress, steps=steps, batch_size=batch_size, lr=lr, device=device, seed=seed)
    click.echo(f"trained the {domain} autoencoder, {result['steps']} steps in {result['seconds']:.0f} s; "
               f"final loss {result['final_loss']:.4f}; latent scale {result['scale']:.4g}; "
               f"run folder {result['run_dir']}")
    _print_table(f"held-out reconstruction ({result['metrics'].get('held_out_items', 0)} items):",
                 {k: v for k, v in result["metrics"].items() if k not in ("held_out_items", "scale")})


@main.command("train-classifier")
@click.option("--domain", "-d", required=True, help="Domain (see `diffuse domains`).")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Training data (file or folder); default: the domain's bundled data set.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="JSON file with sections model (classifier options) / train / data_options.")
@click.option("--target", default="label", show_default=True, metavar="label|property:NAME",
              help="What to predict: class labels, or a real property (molecules: property:gyration).")
@click.option("--steps", type=int, default=None, callback=_positive, help="Optimizer steps (default 500).")
@click.option("--batch-size", type=int, default=None, callback=_positive, help="Samples per step (default 64).")
@click.option("--lr", type=float, default=None, callback=_positive, help="Peak learning rate (default 1e-3).")
@click.option("--device", default=None, help="auto (default), cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=None, help="Seed for data order, noise and initialisation.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (default runs/DOMAIN-classifier).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def train_classifier(domain, data, config_file, target, steps, batch_size, lr, device, seed, out, no_progress) -> None:
    """Train a noise-aware classifier for classifier guidance (`diffuse sample --guidance classifier`)."""
    result = _run(api.train_classifier, domain, data=data, out=out, target=target, config=config_file,
                  progress=not no_progress,
                  steps=steps, batch_size=batch_size, lr=lr, device=device, seed=seed)
    click.echo(f"trained a {result['target']} classifier, {result['steps']} steps in {result['seconds']:.0f} s; "
               f"final loss {result['final_loss']:.4f}; run folder {result['run_dir']}")
    _print_table(f"held-out ({result['metrics'].get('held_out_items', 0)} items; level = sigma/alpha):",
                 result["metrics"])


# --- completion and editing (inpaint helper) ---
def _sampling_options(f):
    """The options inpaint / edit share with sample."""
    opts = [
        click.option("--checkpoint", "-c", type=PATH, required=True, help="Run folder from `diffuse train`."),
        click.option("--input", "-i", "input_path", type=PATH, required=True,
                     help="The file to complete / edit: an image (PNG / JPEG), a clip (WAV / FLAC / OGG) or a "
                          "fragment (SDF / XYZ), in the model's domain."),
        click.option("--num", "-n", type=int, default=4, show_default=True, callback=_positive,
                     help="Number of results (each from its own seed)."),
        click.option("--steps", type=int, default=None, callback=_positive,
                     help="Sampler steps (default: T for ddpm, 50 otherwise)."),
        click.option("--spacing", type=click.Choice(SPACINGS), default=None, help="Time-grid spacing."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default="auto", show_default=True),
        click.option("--domain", default=None, help="Expected domain; an error if the checkpoint is of another."),
        click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE",
                     help="Sampler option, repeatable (e.g. -o eta=0.5)."),
        click.option("--label", "labels", multiple=True, metavar="LABEL", help="Class label(s) (conditional models)."),
        click.option("--guidance-scale", default=None, metavar="S", help="Classifier-free guidance scale."),
        click.option("--out", type=PATH, default=None,
                     help="Output folder, new or empty (default CHECKPOINT/samples/<command>, -2, -3, ...)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _prepare_run(checkpoint, device, domain, out, name):
    _check_device(device)
    if out is not None:
        _check_out_dir(out)
    model = _run(api.load, checkpoint, device=device, domain=domain)
    if out is None:
        out = api.fresh_sample_dir(Path(checkpoint) / "samples" / name)
        _check_out_dir(out)
    return model, out


def _finish(model, samples, out, extra: dict[str, Any]) -> None:
    report = model.describe(samples) or {}
    paths = _run(model.write, samples, out)
    summary = {**extra, **report}
    _run(api.write_text, Path(out) / "summary.json", json.dumps(summary, indent=2))
    click.echo(f"wrote {len(paths) + 1} files to {out}")
    _print_table(f"{model.domain.name} results ({len(samples)}):", summary)


@main.command()
@_sampling_options
@click.option("--mask", type=PATH, default=None, help="Image: a mask PNG of the image's size, white = generate.")
@click.option("--rect", default=None, metavar="X0,Y0,X1,Y1", help="Image: the box [x0, x1) x [y0, y1) to generate.")
@click.option("--span", "spans", multiple=True, metavar="START:END",
              help="Audio: a gap to fill, in seconds (repeatable), e.g. 0.2:0.3.")
@click.option("--continue", "cont", default=None, metavar="SECONDS",
              help="Audio: generate this many seconds past the clip's end (outpainting).")
@click.option("--num-atoms", type=int, default=None, callback=_positive,
              help="Molecules: atoms of the completed molecule (the fragment's atoms stay fixed).")
@click.option("--sampler", default="ddpm", show_default=True, help="Sampler: " + ", ".join(_sampler_names()) + ".")
@click.option("--jump-length", type=int, default=10, show_default=True, callback=_positive,
              help="RePaint: steps per resampling block.")
@click.option("--resample", type=int, default=1, show_default=True, callback=_positive,
              help="RePaint: times each block is run (1: plain replacement, no resampling).")
def inpaint(checkpoint, input_path, num, steps, spacing, seed, device, domain, options, labels, guidance_scale, out,
            mask, rect, spans, cont, num_atoms, sampler, jump_length, resample) -> None:
    """Complete an input: regenerate an image region, fill audio gaps / continue a clip, or grow a
    molecule from a fixed fragment. The known part is kept exactly."""
    from tqdm.auto import tqdm
    from ..core.completion import completion_steps
    from ..core.generate import check_generate_args, default_steps

    opts = _parse_options(sampler, options)
    cond = _parse_labels(labels)
    model, out = _prepare_run(checkpoint, device, domain, out, "inpaint")
    given = {"mask": mask, "rect": rect, "span": list(spans) or None, "continue": cont, "num_atoms": num_atoms}
    prepared = _run(model.completion_input, input_path, given)
    if bool(prepared[1].all()):
        raise UserError("nothing to generate: give --mask / --rect (image), --span / --continue (audio) or "
                        "--num-atoms above the fragment's size (molecules)")
    _run(model.prepare_condition, num, cond, guidance_scale)
    _run(check_generate_args, num, sampler=sampler, steps=steps, spacing=spacing, seed=seed, batch_size=num,
         options=opts)
    n_steps = completion_steps(steps or default_steps(sampler, model.diffusion.schedule), jump_length, resample)
    with tqdm(total=num * n_steps, desc=f"inpaint ({sampler}, {n_steps} steps)", unit="step·sample",
              dynamic_ncols=True, disable=None) as bar:
        samples = _run(model.complete, prepared, num, sampler=sampler, steps=steps, spacing=spacing, seed=seed,
                       jump_length=jump_length, resample=resample, cond=cond, guidance_scale=guidance_scale,
                       progress=bar.update, **opts)
    opts.pop("stats", None)
    _finish(model, samples, out, {"known_max_abs_error": model.known_error(samples, prepared),
                                  "generated_share": float(1 - prepared[1].float().mean())})


@main.command()
@_sampling_options
@click.option("--strength", type=float, required=True,
              help="How far to noise the input, in [0, 1]: 0 returns it, 1 ignores it (plain sampling).")
@click.option("--invert", is_flag=True, help="Deterministic: DDIM inversion to the strength, then DDIM (needs ddim).")
@click.option("--sampler", default="ddim", show_default=True, help="Sampler: " + ", ".join(_sampler_names()) + ".")
def edit(checkpoint, input_path, num, steps, spacing, seed, device, domain, options, labels, guidance_scale, out,
         strength, invert, sampler) -> None:
    """SDEdit an input: noise it to --strength and denoise (Meng et al. 2022)."""
    from tqdm.auto import tqdm
    from ..core.completion import check_strength
    from ..core.generate import check_generate_args, default_steps

    opts = _parse_options(sampler, options)
    _run(check_strength, strength)
    if invert and sampler != "ddim":
        raise UserError("--invert decodes with the ddim sampler; use --sampler ddim")
    cond = _parse_labels(labels)
    model, out = _prepare_run(checkpoint, device, domain, out, "edit")
    prepared = _run(model.completion_input, input_path, {})
    _run(model.prepare_condition, num, cond, guidance_scale)
    _run(check_generate_args, num, sampler=sampler, steps=steps, spacing=spacing, seed=seed, batch_size=num,
         options=opts)
    n_steps = int(round(strength * (steps or default_steps(sampler, model.diffusion.schedule))))
    with tqdm(total=num * n_steps, desc=f"edit ({sampler}, {n_steps} steps)", unit="step·sample",
              dynamic_ncols=True, disable=None) as bar:
        samples = _run(model.edit, prepared, strength, num, invert=invert, sampler=sampler, steps=steps,
                       spacing=spacing, seed=seed, cond=cond, guidance_scale=guidance_scale,
                       progress=bar.update, **opts)
    opts.pop("stats", None)
    _finish(model, samples, out, {"strength": float(strength), "steps_run": n_steps})



@main.command()
@_sampling_options
@click.option("--sampler", default="ddim", show_default=True, help="Sampler: " + ", ".join(_sampler_names()) + ".")
@click.option("--batch-size", type=int, default=64, show_default=True, callback=_positive)
def upscale(checkpoint, input_path, num, steps, spacing, seed, device, domain, options, labels, guidance_scale, out,
            sampler, batch_size) -> None:
    """Super-resolution with a model trained with --condition lowres (SR3): the low-resolution
    input, upsampled, is concatenated to the network input."""
    from tqdm.auto import tqdm
    from ..core.generate import check_generate_args, default_steps

    opts = _parse_options(sampler, options)
    model, out = _prepare_run(checkpoint, device, domain, out, "upscale")
    cond = _run(model.restoration_input, input_path)
    cond.update(_parse_labels(labels) or {})
    _run(model.prepare_condition, num, cond, guidance_scale)
    _run(check_generate_args, num, sampler=sampler, steps=steps, spacing=spacing, seed=seed, batch_size=batch_size,
         options=opts)
    n_steps = steps or default_steps(sampler, model.diffusion.schedule)
    with tqdm(total=num * n_steps, desc=f"upscale ({sampler}, {n_steps} steps)", unit="step·sample",
              dynamic_ncols=True, disable=None) as bar:
        samples = _run(model.upscale, cond, num, sampler=sampler, steps=steps, spacing=spacing, seed=seed,
                       batch_size=batch_size, guidance_scale=guidance_scale, progress=bar.update, **opts)
    opts.pop("stats", None)
    _finish(model, samples, out, {})

# --- per-model optimised grids (gridopt helper) ---
@main.command("optimize-grid")
@click.option("--checkpoint", "-c", type=PATH, required=True, help="Run folder from `diffuse train`.")
@click.option("--nfe", type=int, required=True, help="Sampler steps of the grid (2 or more); `diffuse sample "
              "--steps NFE` with the same sampler then uses it.")
@click.option("--sampler", default="ddim", show_default=True,
              help="Deterministic sampler: " + ", ".join(_sampler_names()) + ".")
@click.option("--num", "-n", type=int, default=256, show_default=True, callback=_positive,
              help="Prior draws the error is measured on.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prior draws.")
@click.option("--max-evals", type=int, default=None, callback=_positive,
              help="Sampler runs the search may use (default 20 x NFE).")
@click.option("--batch-size", type=int, default=64, show_default=True, callback=_positive)
@click.option("--device", default="auto", show_default=True)
def optimize_grid(checkpoint, nfe, sampler, num, seed, max_evals, batch_size, device) -> None:
    """Optimise the time grid of a few-step sampler for a trained model (its distance to the
    fine-grid solution from the same noise) and store it with the run (grids.json)."""
    if nfe < 2:
        raise UserError(f"--nfe must be 2 or more (a grid with free times), got {nfe}")
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; expected one of {', '.join(_sampler_names())}")
    if not 0 <= seed < 2 ** 63:
        raise UserError(f"--seed must be an integer in [0, 2^63), got {seed}")
    from tqdm.auto import tqdm

    _check_device(device)
    model = _run(api.load, checkpoint, device=device)
    with tqdm(total=max_evals or 20 * nfe, desc=f"optimize-grid ({sampler}, {nfe} steps)", unit="run",
              dynamic_ncols=True, disable=None) as bar:
        def progress(done: int, best: float) -> None:
            bar.update(done - bar.n)
            bar.set_postfix_str(f"error {best:.4g}", refresh=False)

        result = _run(model.optimize_grid, nfe, sampler=sampler, num=num, seed=seed, batch_size=batch_size,
                      max_evals=max_evals, progress=progress)
    click.echo(f"{sampler}, {nfe} steps, {num} samples: error to the fine-grid solution "
               f"{result.start_objective:.4g} (default grid) -> {result.objective:.4g} (optimised; "
               f"{result.gain:.2f}x lower, {result.evaluations} sampler runs)")
    click.echo("default grid:   " + " ".join(f"{t:.4f}" for t in result.start_grid.tolist()))
    click.echo("optimised grid: " + " ".join(f"{t:.4f}" for t in result.grid.tolist()))
    click.echo(f"stored in {Path(checkpoint) / 'grids.json'}; `diffuse sample --sampler {sampler} --steps {nfe}` "
               "uses it (--spacing overrides)")


# --- rectified-flow reflow (flow helper) ---
@main.command()
@click.option("--checkpoint", "-c", type=PATH, required=True, help="Run folder of a flow model (--training flow).")
@click.option("--out", type=PATH, required=True, help="New run folder for the reflowed model.")
@click.option("--pairs", type=int, default=1000, show_default=True, callback=_positive,
              help="(noise, sample) pairs drawn with the model's ODE.")
@click.option("--steps", type=int, default=20, show_default=True, callback=_positive, help="ODE steps per pair.")
@click.option("--sampler", default="flow_heun", show_default=True, help="Deterministic ODE sampler for the pairs.")
@click.option("--train-steps", type=int, default=None, callback=_positive,
              help="Optimizer steps of the retraining (default: the run's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def reflow(checkpoint, out, pairs, steps, sampler, train_steps, seed, device, no_progress) -> None:
    """Rectified flow's second stage: retrain a flow model on its own (noise, sample) pairs
    for good samples at 1-4 steps."""
    _check_device(device)
    result = _run(api.reflow, checkpoint, out=out, pairs=pairs, steps=steps, sampler=sampler,
                  train_steps=train_steps, seed=seed, device=device, progress=not no_progress)
    click.echo(f"reflowed {result.steps} steps in {result.seconds:.0f} s; final loss {result.final_loss:.4f}; "
               f"run folder {result.run_dir}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
