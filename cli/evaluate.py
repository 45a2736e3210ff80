"""``diffuse evaluate`` and ``optimize-grid``: commands that measure a trained model. Thin:
parse, call :mod:`diffuse.api`, report."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import click

from .. import api
from ..core.lock import run_lock
from ..core.validation import check_device
from .common import (PATH, PRETRAINED_HELP, UserError, check_model_source, check_out_file, load_model,
                     parse_sampler_options, source_name,
                     positive, print_columns, print_table, sampler_names, spacing_names, categorical_rules)

__all__ = ["evaluate", "optimize_grid"]


@click.command()
@click.option("--checkpoint", "-c", type=PATH, default=None, help="Run folder from `diffuse train` (or a model folder).")
@click.option("--pretrained", default=None, metavar="NAME|DIR",
              help=PRETRAINED_HELP + " Its reference is its training data's held-out split, as for a run.")
@click.option("--num", "-n", type=int, default=256, show_default=True, callback=positive, help="Samples to generate.")
@click.option("--data", type=PATH, default=None,
              help="Reference data (default: the training data's held-out split).")
@click.option("--sampler", default=None,
              help="Sampler (default: the domain's: ddim; audio ddpm, 50 steps; molecules ddpm, 500 steps).")
@click.option("--steps", type=int, default=None, callback=positive)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True, callback=positive)
@click.option("--device", default="auto", show_default=True)
@click.option("--domain", default=None, help="Expected domain; an error if the checkpoint is of another.")
@click.option("--spacing", type=click.Choice(spacing_names()), default=None,
              help="Time-grid spacing (default: as for `diffuse sample`).")
@click.option("--guidance-scale", "guidance_scale", type=float, default=None, metavar="S",
              help="A conditional model sampled conditionally: each sample takes the condition of a random "
                   "training item (labels in the data's class shares, its captions or property values), "
                   "guided at scale S (1: plain conditional). Default: unconditional samples.")
@click.option("--baseline", is_flag=True,
              help="Also evaluate an untrained model of the same architecture, side by side.")
@click.option("--option", "-o", "sampler_opts", multiple=True, metavar="KEY=VALUE", help="Sampler option, repeatable.")
@click.option("--categorical", type=click.Choice(categorical_rules()), default=None,
              help="A mixed-state model (e.g. molecules with bonds): the sampler of every categorical component.")
@click.option("--likelihood", is_flag=True,
              help="Also the negative log-likelihood of reference data under the probability-flow ODE "
                   "(bits/dim for images and audio, nats per molecule).")
@click.option("--likelihood-num", type=int, default=64, show_default=True, callback=positive,
              help="Reference items for --likelihood.")
@click.option("--exact-trace", is_flag=True, help="--likelihood with the exact divergence (small data only); "
              "default: exact up to 16 dimensions, Hutchinson above.")
@click.option("--out", type=PATH, default=None,
              help="JSON file for the metrics (default CHECKPOINT/evaluation.json; for --pretrained NAME: "
                   "evaluation-pretrained-NAME.json in the current folder).")
@click.option("--feature-net", type=PATH, default=None, metavar="FILE",
              help="Image FID / KID on this TorchScript Inception network (a program: diffuse loads one only from a "
                   "path given here or in your own --config, never from a run folder's config.json).")
def evaluate(checkpoint, pretrained, num, data, sampler, steps, seed, batch_size, device, domain, spacing,
             guidance_scale, baseline, sampler_opts, likelihood, likelihood_num, exact_trace, out, feature_net,
             categorical=None) -> None:
    """Sample a trained model and print its metrics against reference data (also written as JSON)."""
    check_model_source(checkpoint, pretrained)
    # a named sampler's options are checked now; the domain's default sampler's once the model is loaded
    opts = parse_sampler_options(sampler, sampler_opts) if sampler is not None else None
    if data is not None and not Path(data).exists():
        raise UserError(f"data path {data} does not exist")
    check_device(device)
    if out is not None:
        check_out_file(out)
    model = load_model(checkpoint, pretrained, device, domain)
    if opts is None:
        sampler, steps = model.default_sampling(sampler, steps)
        opts = parse_sampler_options(sampler, sampler_opts)
    if categorical is not None:
        opts = {**opts, "categorical": categorical}
    default_out = (Path(checkpoint) / "evaluation.json" if pretrained is None
                   else Path(f"evaluation-pretrained-{source_name(checkpoint, pretrained)}.json"))
    out = check_out_file(out or default_out)
    if feature_net is not None:
        if not Path(feature_net).is_file():
            raise UserError(f"--feature-net {feature_net} is not a file")
        model.use_feature_net(feature_net)
    source = {"checkpoint": str(checkpoint)} if pretrained is None else {"pretrained": pretrained}
    # the run folder's lock while evaluation.json is written into it (core.lock)
    inside = pretrained is None and Path(out).resolve().parent == Path(checkpoint).resolve()
    with (run_lock(checkpoint, hint="wait for it, or write elsewhere with --out FILE") if inside else nullcontext()):
        record = model.evaluation(num, data=data, sampler=sampler, steps=steps, spacing=spacing, seed=seed,
                                  batch_size=batch_size, guidance_scale=guidance_scale, baseline=baseline,
                                  likelihood=likelihood, likelihood_num=likelihood_num, exact_trace=exact_trace,
                                  source=source, **opts)
        api.write_text(out, json.dumps(record, indent=2))
    n_steps = model.steps_for(sampler, steps)
    title = f"{model.domain.name}: {num} samples ({sampler}, {n_steps} steps, {record['spacing']} grid) vs reference"
    if baseline:
        print_columns(title, {"model": record["metrics"], "untrained": record["untrained"]})
    else:
        print_table(title, record["metrics"])
    click.echo(f"wrote {out}")


@click.command("optimize-grid")
@click.option("--checkpoint", "-c", type=PATH, default=None, help="Run folder from `diffuse train` (or a model folder).")
@click.option("--pretrained", default=None, metavar="NAME|DIR", help=PRETRAINED_HELP)
@click.option("--out", type=PATH, default=None, metavar="DIR",
              help="Write a copy of the model (a model folder, save_pretrained) with the grid here instead of "
                   "storing the grid with the model; needed for a shipped model.")
@click.option("--nfe", type=int, required=True, help="Sampler steps of the grid (2 or more); `diffuse sample "
              "--steps NFE` with the same sampler then uses it.")
@click.option("--sampler", default="ddim", show_default=True,
              help="Deterministic sampler: " + ", ".join(sampler_names()) + ".")
@click.option("--num", "-n", type=int, default=256, show_default=True, callback=positive,
              help="Prior draws the error is measured on.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prior draws.")
@click.option("--max-evals", type=int, default=None, callback=positive,
              help="Sampler runs the search may use (default 20 x NFE).")
@click.option("--batch-size", type=int, default=64, show_default=True, callback=positive)
@click.option("--device", default="auto", show_default=True)
def optimize_grid(checkpoint, pretrained, out, nfe, sampler, num, seed, max_evals, batch_size, device) -> None:
    """Optimise the time grid of a few-step sampler for a trained model (its distance to the
    fine-grid solution from the same noise) and store it with the run (grids.json)."""
    from tqdm.auto import tqdm

    from ..core.sampling.registry import sampler_record
    from ..core.validation import check_seed

    if nfe < 2:
        raise UserError(f"--nfe must be 2 or more (a grid with free times), got {nfe}")
    sampler_record(sampler)
    check_seed(seed, "--seed")
    check_device(device)
    check_model_source(checkpoint, pretrained)
    if out is None and pretrained is not None:
        from ..pretrained import PRETRAINED_DIR
        if api.resolve_model(pretrained).resolve().parent == PRETRAINED_DIR.resolve():
            raise UserError(f"--pretrained {pretrained} is a shipped model, which is never changed; give --out DIR "
                            "to write a copy of it with the optimised grid")
    if out is not None:
        from ..pretrained.files import check_destination
        check_destination(out)
    model = load_model(checkpoint, pretrained, device, None)
    if out is not None:                     # a copy of the model that keeps the grid
        model = api.load(model.save_pretrained(out), device=device)
    home = Path(out) if out is not None else Path(model.run_dir)
    with run_lock(home), tqdm(total=max_evals or 20 * nfe, desc=f"optimize-grid ({sampler}, {nfe} steps)", unit="run",
              dynamic_ncols=True, disable=None) as bar:
        def progress(done: int, best: float) -> None:
            bar.update(done - bar.n)
            bar.set_postfix_str(f"error {best:.4g}", refresh=False)

        result = model.optimize_grid(nfe, sampler=sampler, num=num, seed=seed, batch_size=batch_size,
                                     max_evals=max_evals, progress=progress)
    click.echo(f"{sampler}, {nfe} steps, {num} samples: error to the fine-grid solution "
               f"{result.start_objective:.4g} (default grid) -> {result.objective:.4g} (optimised; "
               f"{result.gain:.2f}x lower, {result.evaluations} sampler runs)")
    click.echo("default grid:   " + " ".join(f"{t:.4f}" for t in result.start_grid.tolist()))
    click.echo("optimised grid: " + " ".join(f"{t:.4f}" for t in result.grid.tolist()))
    click.echo(f"stored in {home / 'grids.json'}; `diffuse sample -c {home} --sampler {sampler} --steps {nfe}` "
               "uses it (--spacing overrides)")
