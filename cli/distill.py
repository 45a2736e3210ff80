"""``diffuse distill``: a few-step model (1-8 evaluations) from a trained diffusion model.
Thin: parse, call :func:`diffuse.api.distill`, report."""

from __future__ import annotations

import click

from .. import api
from ..core.process.parameterization import PARAMETERIZATIONS
from ..core.validation import check_device
from .common import PATH, check_nonempty, positive

__all__ = ["distill"]


@click.command()
@click.option("--checkpoint", "-c", type=PATH, default=None,
              help="Run folder of the model to distil (or pretrained:NAME).")
@click.option("--pretrained", default=None, metavar="NAME",
              help="Distil a model shipped with diffuse instead (e.g. image; see `diffuse sample --help`).")
@click.option("--out", type=PATH, required=True, help="New run folder for the few-step model.")
@click.option("--method", type=click.Choice(list(api.DISTILL_METHODS)), default="cd", show_default=True,
              help="cd: consistency distillation (one teacher ODE step per pair); ct: consistency tuning (consistency "
                   "training from the model's weights, no teacher evaluations); progressive: rounds of progressive "
                   "distillation, each halving the steps.")
@click.option("--steps", type=int, default=None, callback=positive,
              help="Sampling steps the few-step model uses by default (consistency: 2; progressive: its last "
                   "round's, 4).")
@click.option("--start-steps", type=int, default=None, callback=positive,
              help="progressive: the first round's student steps (the teacher takes twice as many; default 16).")
@click.option("--train-steps", type=int, default=None, callback=positive,
              help="Optimizer steps (per round for progressive; default 2000).")
@click.option("--batch-size", type=int, default=None, callback=positive, help="Samples per optimizer step.")
@click.option("--lr", type=float, default=None, callback=positive, help="Learning rate (default 1e-4, constant).")
@click.option("--parameterization", type=click.Choice(sorted(PARAMETERIZATIONS)), default=None,
              help="What the student predicts (default: the teacher's).")
@click.option("--guidance-scale", type=float, default=None,
              help="Distil the teacher's classifier-free guided map at this scale (conditional models; cd and "
                   "progressive). Without it the student learns the teacher's conditional and unconditional maps.")
@click.option("--config", "config_file", type=PATH, default=None,
              help="JSON file with train and objective sections (e.g. {\"objective\": {\"levels\": 40}}).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def distill(checkpoint, pretrained, out, method, steps, start_steps, train_steps, batch_size, lr, parameterization,
            guidance_scale, config_file, seed, device, no_progress) -> None:
    """Distil a trained model into a few-step model (1-8 network evaluations); `diffuse sample`
    on the new run uses its few-step sampler."""
    check_nonempty(checkpoint=checkpoint, out=out, config=config_file, pretrained=pretrained, device=device)
    check_device(device)
    result = api.distill(checkpoint, pretrained=pretrained, out=out, method=method, steps=steps,
                         start_steps=start_steps, train_steps=train_steps, batch_size=batch_size, lr=lr,
                         parameterization=parameterization, guidance_scale=guidance_scale, config=config_file,
                         seed=seed, device=device, progress=not no_progress)
    click.echo(f"distilled ({method}) {result.steps} steps in {result.seconds:.0f} s; final loss "
               f"{result.final_loss:.4f}; run folder {result.run_dir}")
