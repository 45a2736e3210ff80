"""``diffuse train``, ``train-autoencoder``, ``train-classifier`` and ``reflow``: commands that
leave a run folder. Thin: parse, call :mod:`diffuse.api`, report."""

from __future__ import annotations

import os
import sys

import click

from .. import api
from ..core.errors import UserInputError
from ..core.models.classifier import ClassifierConfig
from ..core.models.latent import AutoencoderConfig
from ..core.process.parameterization import PARAMETERIZATIONS
from ..core.process.presets import PRESETS
from ..core.process.schedules import SCHEDULES
from ..core.training import distributed
from ..core.validation import check_device
from .common import (PATH, UserError, check_nonempty, non_negative, options, parse_probability, positive,
                     print_table, sampler_names)

__all__ = ["train", "train_autoencoder", "train_classifier", "reflow"]

#: the optimisation options every training command takes
_OPTIMISATION = options(
    click.option("--steps", type=int, default=None, callback=positive, help="Optimizer steps (total, also when resuming)."),
    click.option("--batch-size", type=int, default=None, callback=positive, help="Samples per optimizer step."),
    click.option("--lr", type=float, default=None, callback=positive, help="Peak learning rate (AdamW)."),
    click.option("--device", default=None, help="auto (default), cpu, cuda or cuda:N."),
    click.option("--seed", type=int, default=None, help="Seed for data order, noise and initialisation."),
    click.option("--no-progress", is_flag=True, help="Hide the progress bar."),
)


def _trained_line(result) -> None:
    click.echo(f"trained {result.steps} steps in {result.seconds:.0f} s; final loss {result.final_loss:.4f}; "
               f"run folder {result.run_dir}")


@click.command()
@click.option("--domain", "-d", default=None, help="Domain to train (see `diffuse domains`). Required unless --resume.")
@click.option("--data", type=PATH, default=None,
              help="Training data (file or folder); default: the domain's bundled data set.")
@click.option("--config", "config_file", type=PATH, default=None,
              help="JSON file with sections model / diffusion / train / data_options.")
@_OPTIMISATION
@click.option("--out", type=PATH, default=None, help="Run folder (default runs/DOMAIN).")
@click.option("--resume", type=PATH, default=None, help="Continue the run in this folder.")
@click.option("--sample-every", type=int, default=None, callback=non_negative,
              help="Sample and evaluate every N steps (0: only at the end).")
@click.option("--eval-samples", type=int, default=None, callback=non_negative,
              help="Samples drawn for each evaluation (0: none).")
@click.option("--training", type=click.Choice(list(PRESETS)), default=None,
              help="Preset of the process: ddpm (discrete T-step times, default), continuous (t ~ U[eps, 1]), edm "
                   "(EDM preconditioning, log-normal noise levels) or flow (flow matching: linear path, "
                   "velocity, logit-normal times); --schedule / --parameterization override its choices.")
@click.option("--schedule", type=click.Choice(sorted(k for k in SCHEDULES if k != "table")), default=None,
              help="Noise schedule (default: the domain's; edm training wants sigma).")
@click.option("--parameterization", type=click.Choice(sorted(PARAMETERIZATIONS)), default=None,
              help="What the network predicts (default: the preset's or the domain's).")
@click.option("--backbone", default=None, metavar="NAME",
              help="The network, by name, of the domain's backbones (`diffuse domains` lists them; default: the "
                   "domain's). A --config model section sets its options.")
@click.option("--condition", "conditions", multiple=True, metavar="NAME",
              help="Train a conditional model on this condition of the data, repeatable "
                   "(image: label, text, lowres; audio: label, text, lowrate; molecules: property:NAME).")
@click.option("--cond-drop", default=None, metavar="P",
              help="Condition dropout probability (default 0.1): the share of samples trained unconditionally.")
@click.option("--nproc", type=int, default=None, callback=positive,
              help="Train with N processes (DistributedDataParallel: one per GPU, or gloo on CPU); the same as "
                   "`torchrun --standalone --nproc-per-node N -m diffuse.cli train ...`. --batch-size is global.")
@click.option("--max-restarts", type=int, default=None, callback=non_negative,
              help="With --nproc: restart all processes up to N times after one fails or is killed (elastic, as "
                   "torchrun --max-restarts); the run continues from its newest complete checkpoint.")
@click.option("--sync-every", type=int, default=None, callback=non_negative, metavar="H",
              help="Several processes: DiLoCo (Douillard et al. 2023): each process takes H AdamW steps on its own, "
                   "then the processes average their weight changes and take one outer Nesterov step; H times fewer "
                   "bytes sent than all-reducing gradients every step (0: every step, the default).")
@click.option("--latent", type=PATH, default=None, metavar="AE_RUN",
              help="Latent diffusion: train on the latents of this autoencoder run (`diffuse train-autoencoder`).")
@click.option("--init", default=None, metavar="RUN|DIR|pretrained:NAME",
              help="Start a new run from this model's weights (fine-tuning, or a finished run continued with a new "
                   "learning-rate schedule): a run folder, a model folder (save_pretrained), or pretrained:NAME. Data, data options, model and "
                   "diffusion default to that model's; model and diffusion cannot change.")
def train(domain, data, config_file, steps, batch_size, lr, device, seed, no_progress, out, resume, sample_every,
          eval_samples, training, schedule, parameterization, backbone, conditions, cond_drop, nproc, max_restarts,
          sync_every, latent, init) -> None:
    """Train a diffusion model; writes a run folder with config, checkpoint, metrics and samples.

    Several processes: `diffuse train --nproc N ...`, `torchrun --nproc-per-node N -m diffuse.cli
    train ...` or `accelerate launch --num_processes N -m diffuse.cli train ...`; the batch is
    split across them, rank 0 writes the run folder."""
    check_nonempty(data=data, out=out, resume=resume, config=config_file, domain=domain, device=device, init=init,
                   backbone=backbone)
    if init is not None and resume is not None:
        raise UserError("--init starts a new run from a model's weights; --resume continues a run: give one")
    if domain is None and resume is None and config_file is not None:
        domain = api.recipe_domain(config_file)   # a recipe names its domain
    if domain is None and init is not None:
        domain = api.init_domain(init)            # fine-tuning: the initial model's domain
    if domain is None and resume is None:
        raise UserError("--domain is required (or --resume RUN_DIR, --init MODEL, or a --config naming its domain); "
                        "see `diffuse domains`")
    if resume is not None and out is not None:
        raise UserError("--out cannot be combined with --resume (the run keeps its folder)")
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the run")
    if device is not None:
        check_device(device)
    if domain is None:
        domain = api.read_run_config(resume).domain
    diffusion = {"training": training, "parameterization": parameterization,
                 "schedule": {"kind": schedule} if schedule else None}
    if training == "flow" and (schedule is not None or parameterization is not None):
        raise UserError("--training flow runs on a flow path with velocity prediction; leave out --schedule / "
                        "--parameterization (the cosine path: --config with {\"diffusion\": {\"schedule\": "
                        "{\"kind\": \"flow\", \"path\": \"cosine\"}}})")
    if resume is not None and any(v is not None for v in diffusion.values()):
        raise UserError("--training / --schedule / --parameterization cannot change when resuming a run")
    diffusion["cond_drop"] = parse_probability(cond_drop, "--cond-drop")
    if resume is not None and (conditions or cond_drop is not None):
        raise UserError("--condition / --cond-drop cannot change when resuming a run")
    if resume is not None and latent is not None:
        raise UserError("--latent cannot change when resuming a run (the run keeps its autoencoder)")
    rank, world, _ = distributed.world_from_env()
    if nproc is not None and world > 1 and nproc != world:
        raise UserError(f"--nproc {nproc} given inside a launch of {world} processes (WORLD_SIZE={world}); "
                        "leave out --nproc under torchrun / accelerate")
    if max_restarts is not None and not (nproc is not None and nproc > 1 and world == 1):
        raise UserError("--max-restarts goes with --nproc N (under torchrun give torchrun --max-restarts)")
    if nproc is not None and nproc > 1 and world == 1:
        from .launch import launch
        sys.exit(launch(nproc, _without_nproc(click.get_current_context().find_root().meta["diffuse.argv"]),
                        max_restarts=max_restarts or 0))
    quiet = world > 1 and bool(os.environ.get(distributed.ERROR_DIR_ENV))   # the launcher prints the line
    try:
        with distributed.failure_guard():
            result = api.train(domain, data=data, out=out, config=config_file, resume=resume,
                               conditions=list(conditions), latent=latent, init=init, progress=not no_progress,
                               model={"backbone": backbone} if backbone is not None else None,
                               diffusion=diffusion, steps=steps, batch_size=batch_size, lr=lr, device=device,
                               seed=seed, sample_every=sample_every, eval_samples=eval_samples,
                               sync_every=sync_every)
    except distributed.PeerFailed as exc:
        if not quiet:
            click.echo(f"error: {exc}", err=True)
        sys.exit(distributed.EXIT_STOPPED)
    except UserInputError:
        if quiet:
            sys.exit(UserError.exit_code)
        raise
    if rank != 0:
        return
    _trained_line(result)
    if result.sample_dir is not None:
        click.echo(f"samples: {result.sample_dir}")
    if result.metrics:
        click.echo("metrics: " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in result.metrics.items()))


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line without ``--nproc N`` / ``--max-restarts N`` (also ``--opt=N``): what every
    process runs."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--nproc", "--max-restarts"):
            skip = True
        elif not arg.startswith(("--nproc=", "--max-restarts=")):
            out.append(arg)
    return out


def _auxiliary_domain(domain, out, resume, device, config_cls) -> str:
    """The domain of an autoencoder / classifier run: ``--domain``, or the resumed run's (checked:
    ``--out`` and ``--resume`` exclude each other, the device exists)."""
    if resume is not None and out is not None:
        raise UserError("--out cannot be combined with --resume (the run keeps its folder)")
    if device is not None:
        check_device(device)
    if domain is None:
        if resume is None:
            raise UserError("--domain is required (or --resume RUN_DIR); see `diffuse domains`")
        domain = config_cls.load(resume).domain
    return domain


@click.command("train-autoencoder")
@click.option("--domain", "-d", default=None, help="Domain (image, audio, molecules, or a plug-in with an autoencoder).")
@click.option("--data", type=PATH, default=None,
              help="Training data (file or folder); default: the domain's bundled data set.")
@click.option("--config", "config_file", type=PATH, default=None,
              help="JSON file with sections model (autoencoder options) / train / data_options.")
@_OPTIMISATION
@click.option("--out", type=PATH, default=None, help="Run folder (default runs/DOMAIN-autoencoder).")
@click.option("--resume", type=PATH, default=None, help="Continue the interrupted autoencoder run in this folder.")
def train_autoencoder(domain, data, config_file, steps, batch_size, lr, device, seed, no_progress, out, resume) -> None:
    """Train an autoencoder for latent diffusion (then `diffuse train --domain D --latent RUN`)."""
    domain = _auxiliary_domain(domain, out, resume, device, AutoencoderConfig)
    result = api.train_autoencoder(domain, data=data, out=out, config=config_file, resume=resume,
                                   progress=not no_progress, steps=steps, batch_size=batch_size, lr=lr, device=device,
                                   seed=seed)
    if result["scale"] is None:
        click.echo(f"paused the {domain} autoencoder at step {result['steps']}; run folder {result['run_dir']}")
        return
    click.echo(f"trained the {domain} autoencoder, {result['steps']} steps in {result['seconds']:.0f} s; "
               f"final loss {result['final_loss']:.4f}; latent scale {result['scale']:.4g}; "
               f"run folder {result['run_dir']}")
    print_table(f"held-out reconstruction ({result['metrics'].get('held_out_items', 0)} items):",
                {k: v for k, v in result["metrics"].items() if k not in ("held_out_items", "scale")})


@click.command("train-classifier")
@click.option("--domain", "-d", default=None, help="Domain (see `diffuse domains`). Required unless --resume.")
@click.option("--data", type=PATH, default=None,
              help="Training data (file or folder); default: the domain's bundled data set.")
@click.option("--config", "config_file", type=PATH, default=None,
              help="JSON file with sections model (classifier options) / train / data_options.")
@click.option("--target", default="label", show_default=True, metavar="label|property:NAME",
              help="What to predict: class labels, or a real property (molecules: property:gyration).")
@_OPTIMISATION
@click.option("--out", type=PATH, default=None, help="Run folder (default runs/DOMAIN-classifier).")
@click.option("--resume", type=PATH, default=None, help="Continue the interrupted classifier run in this folder.")
@click.option("--latent", type=PATH, default=None, metavar="AE_RUN",
              help="Train on the latents of this autoencoder run: the classifier then guides latent models of it.")
def train_classifier(domain, data, config_file, target, steps, batch_size, lr, device, seed, no_progress, out,
                     resume, latent) -> None:
    """Train a noise-aware classifier for classifier guidance (`diffuse sample --guidance classifier`)."""
    domain = _auxiliary_domain(domain, out, resume, device, ClassifierConfig)
    result = api.train_classifier(domain, data=data, out=out, target=target, config=config_file, resume=resume,
                                  progress=not no_progress, steps=steps, batch_size=batch_size, lr=lr, device=device,
                                  seed=seed, latent=latent)
    if result["metrics"] is None:
        click.echo(f"paused the classifier at step {result['steps']}; run folder {result['run_dir']}")
        return
    click.echo(f"trained a {result['target']} classifier, {result['steps']} steps in {result['seconds']:.0f} s; "
               f"final loss {result['final_loss']:.4f}; run folder {result['run_dir']}")
    print_table(f"held-out ({result['metrics'].get('held_out_items', 0)} items; level = sigma/alpha):",
                result["metrics"])


@click.command()
@click.option("--checkpoint", "-c", type=PATH, required=True, help="Run folder of a flow model (--training flow).")
@click.option("--out", type=PATH, required=True, help="New run folder for the reflowed model.")
@click.option("--pairs", type=int, default=1000, show_default=True, callback=positive,
              help="(noise, sample) pairs drawn with the model's ODE.")
@click.option("--steps", type=int, default=20, show_default=True, callback=positive, help="ODE steps per pair.")
@click.option("--sampler", default="flow_heun", show_default=True,
              help="Deterministic ODE sampler for the pairs: " + ", ".join(sampler_names()) + ".")
@click.option("--train-steps", type=int, default=None, callback=positive,
              help="Optimizer steps of the retraining (default: the run's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--guidance-scale", default=None, metavar="S",
              help="Conditional models: draw the pairs with classifier-free guidance at this scale (default: "
                   "conditional sampling); each pair keeps the condition of the training item it was drawn for.")
def reflow(checkpoint, out, pairs, steps, sampler, train_steps, seed, device, no_progress, guidance_scale) -> None:
    """Rectified flow's second stage: retrain a flow model on its own (noise, sample) pairs
    for good samples at 1-4 steps."""
    check_device(device)
    result = api.reflow(checkpoint, out=out, pairs=pairs, steps=steps, sampler=sampler, train_steps=train_steps,
                        seed=seed, device=device, progress=not no_progress, guidance_scale=guidance_scale)
    click.echo(f"reflowed {result.steps} steps in {result.seconds:.0f} s; final loss {result.final_loss:.4f}; "
               f"run folder {result.run_dir}")
