"""``diffuse sample``, ``inpaint``, ``edit`` and ``upscale``: commands that draw from a trained
model and write files. Thin: parse, call :mod:`diffuse.api`, write, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .. import api
from ..core.validation import check_device
from .common import (PATH, PRETRAINED_HELP, UserError, check_model_source, check_out_dir, default_samples_dir,
                     load_model, options, parse_labels,
                     parse_properties, parse_prompts, parse_sampler_options, parse_structure, parse_target_values,
                     positive, print_table, sampler_names, spacing_names, categorical_rules)

__all__ = ["sample", "inpaint", "edit", "upscale"]


def _progress_bar(total: int, desc: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="step·sample", dynamic_ncols=True, disable=None)


@click.command()
@click.option("--checkpoint", "-c", type=PATH, default=None, help="Run folder from `diffuse train` (or a model folder).")
@click.option("--pretrained", default=None, metavar="NAME|DIR", help=PRETRAINED_HELP)
@click.option("--num", "-n", type=int, default=16, show_default=True, callback=positive, help="Number of samples.")
@click.option("--sampler", default=None,
              help="Sampler: " + ", ".join(sampler_names()) + ". Default: the domain's (ddim; audio ddpm, 50 "
                   "steps; molecules ddpm, 500 steps).")
@click.option("--steps", type=int, default=None, callback=positive,
              help="Sampler steps (default: the domain's default sampler's; else T for ddpm, 50 otherwise).")
@click.option("--eta", type=float, default=None, help="DDIM stochasticity in [0, 1] (default 0); same as -o eta=E.")
@click.option("--spacing", type=click.Choice(spacing_names()), default=None,
              help="Time-grid spacing (default, chosen on exact problems: on VP schedules auto for unipc / "
                   "dpmpp_2m / dpmpp_3m / ode_heun, auto below 7 steps and trailing from 7 for ddim, leading for "
                   "edm_heun, else trailing; karras on EDM / VE sigmas; flow paths their own uniform grid; a domain "
                   "may choose: audio karras for ddpm).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same samples (any batch size).")
@click.option("--batch-size", type=int, default=64, show_default=True, callback=positive)
@click.option("--device", default="auto", show_default=True)
@click.option("--domain", default=None, help="Expected domain; an error if the checkpoint is of another.")
@click.option("--raw-weights", is_flag=True, help="Use the raw instead of the EMA weights.")
@click.option("--option", "-o", "sampler_opts", multiple=True, metavar="KEY=VALUE",
              help="Sampler option, repeatable: e.g. -o s_churn=10 (edm_heun), -o snr=0.16 (pc), -o rtol=1e-4 (rk45).")
@click.option("--condition", default=None, metavar="JSON",
              help="Sampling structure, as the domain understands it (JSON): molecules take atom counts, "
                   "e.g. 12 or [9, 12, 15, ...] (one per sample).")
@click.option("--label", "labels", multiple=True, metavar="LABEL",
              help="Class label(s) to sample (index or name, e.g. 7 or seven); a list 0,1,2 or repeated "
                   "--label cycles over the samples. Needs a model trained with --condition label.")
@click.option("--property", "properties", multiple=True, metavar="NAME=VALUE",
              help="Molecule property to sample at, repeatable (e.g. alpha=80; alpha=70,80,90 cycles over the "
                   "samples); atom counts are drawn given it unless --condition fixes them. Needs a model "
                   "trained with --condition property:NAME.")
@click.option("--prompt", "prompts", multiple=True, metavar="TEXT",
              help='Text prompt, e.g. "a handwritten seven"; repeat it to cycle prompts over the samples. '
                   "Needs a model trained with --condition text.")
@click.option("--guidance-scale", default=None, metavar="S",
              help="Classifier-free guidance scale: 0 unconditional, 1 conditional, > 1 guided.")
@click.option("--guidance-rescale", default=None, metavar="PHI",
              help="Rescale the guided prediction's std towards the conditional one (0..1; Lin et al. 2023).")
@click.option("--guidance-interval", default=None, metavar="LO,HI",
              help="Guide only at noise levels sigma/alpha in [LO, HI] (Kynkaanniemi et al. 2024).")
@click.option("--guidance", "guidance_kind", type=click.Choice(["free", "classifier"]), default=None,
              help="free: classifier-free guidance (default); classifier: the gradient of a noise-aware "
                   "classifier (--classifier RUN), also for an unconditional model.")
@click.option("--classifier", type=PATH, default=None, metavar="RUN",
              help="Classifier run folder from `diffuse train-classifier` (for --guidance classifier).")
@click.option("--target-value", "target_values", multiple=True, metavar="NAME=VALUE",
              help="Target of a property classifier, e.g. gyration=2.5 (for --guidance classifier).")
@click.option("--categorical", type=click.Choice(categorical_rules()), default=None,
              help="A mixed-state model (e.g. molecules with bonds): the sampler of every categorical component "
                   "(default: each one's own from the run's diffusion.components).")
@click.option("--out", type=PATH, default=None,
              help="Output folder, new or empty (default CHECKPOINT/samples/sample, or sample-2, sample-3, ... "
                   "when that is taken; for --pretrained NAME: samples/pretrained-NAME in the current folder).")
def sample(checkpoint, pretrained, num, sampler, steps, eta, spacing, seed, batch_size, device, domain, raw_weights,
           sampler_opts, condition, labels, properties, prompts, guidance_scale, guidance_rescale, guidance_interval,
           guidance_kind, classifier, target_values, categorical, out) -> None:
    """Draw samples from a trained model and write them as files (PNG / WAV / SDF ...)."""
    check_model_source(checkpoint, pretrained)
    if pretrained is not None and raw_weights:
        raise UserError("--raw-weights does not apply to --pretrained (it ships EMA weights only)")
    # a named sampler's options are checked now; the domain's default sampler's once the model is loaded
    opts = parse_sampler_options(sampler, sampler_opts, eta) if sampler is not None else None
    structure = parse_structure(condition, num)
    cond = parse_prompts(prompts, parse_properties(properties, parse_labels(labels)))
    check_device(device)
    if out is not None:
        check_out_dir(out)
    model = load_model(checkpoint, pretrained, device, domain, ema=not raw_weights)
    if opts is None:
        sampler, steps = model.default_sampling(sampler, steps)
        opts = parse_sampler_options(sampler, sampler_opts, eta)
    if categorical is not None:
        opts = {**opts, "categorical": categorical}
    guidance = {"guidance_scale": guidance_scale, "guidance_rescale": guidance_rescale,
                "guidance_interval": guidance_interval}
    if guidance_kind == "classifier" or classifier is not None:   # classifier guidance
        cond = parse_target_values(cond, target_values)
        clf = api.prepare_classifier_guidance(model, num, cond, guidance_kind or "classifier", classifier,
                                              *guidance.values())[0]
        guidance = {"guidance_scale": guidance_scale, "guidance": "classifier", "classifier": clf}
    elif target_values:
        raise UserError("--target-value needs --guidance classifier --classifier RUN")
    else:
        model.prepare_condition(num, cond, *guidance.values())   # checked before anything is written
    if out is None:
        out = check_out_dir(api.fresh_sample_dir(default_samples_dir(checkpoint, pretrained, "sample")))
    sampler, steps = model.check_sampling(num, sampler=sampler, steps=steps, spacing=spacing, seed=seed,
                                          batch_size=batch_size, options=opts, structure=structure)
    n_steps = model.steps_for(sampler, steps)
    with _progress_bar(num * n_steps, f"sample ({sampler}, {n_steps} steps)") as bar:
        report = model.sample_report(num, sampler=sampler, steps=steps, spacing=spacing, seed=seed,
                                     batch_size=batch_size, progress=bar.update, cond=cond, structure=structure,
                                     **guidance, **opts)
    paths = model.write(report.samples, out)
    if report.summary:
        api.write_text(Path(out) / "summary.json", json.dumps(report.summary, indent=2))
    click.echo(f"wrote {len(paths)} files to {out}")
    if report.stats:
        click.echo("sampler: " + "  ".join(f"{k}={v}" for k, v in report.stats.items()))
    if report.summary:
        print_table(f"{model.domain.name} samples ({num}):", report.summary)


#: the options inpaint / edit / upscale share with sample
_SAMPLING = options(
    click.option("--checkpoint", "-c", type=PATH, default=None, help="Run folder from `diffuse train` (or a model folder)."),
    click.option("--pretrained", default=None, metavar="NAME|DIR", help=PRETRAINED_HELP),
    click.option("--input", "-i", "input_path", type=PATH, required=True,
                 help="The file to complete / edit: an image (PNG / JPEG), a clip (WAV / FLAC / OGG) or a "
                      "fragment (SDF / XYZ), in the model's domain."),
    click.option("--num", "-n", type=int, default=4, show_default=True, callback=positive,
                 help="Number of results (each from its own seed)."),
    click.option("--steps", type=int, default=None, callback=positive,
                 help="Sampler steps (default: T for ddpm, 50 otherwise)."),
    click.option("--spacing", type=click.Choice(spacing_names()), default=None, help="Time-grid spacing."),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--device", default="auto", show_default=True),
    click.option("--domain", default=None, help="Expected domain; an error if the checkpoint is of another."),
    click.option("--option", "-o", "sampler_opts", multiple=True, metavar="KEY=VALUE",
                 help="Sampler option, repeatable (e.g. -o eta=0.5)."),
    click.option("--label", "labels", multiple=True, metavar="LABEL", help="Class label(s) (conditional models)."),
    click.option("--guidance-scale", default=None, metavar="S", help="Classifier-free guidance scale."),
    click.option("--out", type=PATH, default=None,
                 help="Output folder, new or empty (default CHECKPOINT/samples/<command>, -2, -3, ...)."),
)


def _prepare(checkpoint, pretrained, device, domain, out, name):
    check_model_source(checkpoint, pretrained)
    check_device(device)
    if out is not None:
        check_out_dir(out)
    model = load_model(checkpoint, pretrained, device, domain)
    if out is None:
        out = check_out_dir(api.fresh_sample_dir(default_samples_dir(checkpoint, pretrained, name)))
    return model, out


def _finish(model, samples, out, extra: dict[str, Any]) -> None:
    report = model.describe(samples) or {}
    paths = model.write(samples, out)
    summary = {**extra, **report}
    api.write_text(Path(out) / "summary.json", json.dumps(summary, indent=2))
    click.echo(f"wrote {len(paths) + 1} files to {out}")
    print_table(f"{model.domain.name} results ({len(samples)}):", summary)


@click.command()
@_SAMPLING
@click.option("--mask", type=PATH, default=None, help="Image: a mask PNG of the image's size, white = generate.")
@click.option("--rect", default=None, metavar="X0,Y0,X1,Y1", help="Image: the box [x0, x1) x [y0, y1) to generate.")
@click.option("--span", "spans", multiple=True, metavar="START:END",
              help="Audio: a gap to fill, in seconds, e.g. 0.2:0.3; video: frames to generate, START:END (end "
                   "exclusive: interpolation). Repeatable.")
@click.option("--continue", "cont", default=None, metavar="SECONDS|FRAMES",
              help="Audio: generate this many seconds past the clip's end (outpainting); video: this many frames "
                   "(prediction).")
@click.option("--num-atoms", type=int, default=None, callback=positive,
              help="Molecules: atoms of the completed molecule (the fragment's atoms stay fixed).")
@click.option("--sampler", default="ddpm", show_default=True, help="Sampler: " + ", ".join(sampler_names()) + ".")
@click.option("--jump-length", type=int, default=10, show_default=True, callback=positive,
              help="RePaint: steps per resampling block.")
@click.option("--resample", type=int, default=1, show_default=True, callback=positive,
              help="RePaint: times each block is run (1: plain replacement, no resampling).")
def inpaint(checkpoint, pretrained, input_path, num, steps, spacing, seed, device, domain, sampler_opts, labels, guidance_scale,
            out, mask, rect, spans, cont, num_atoms, sampler, jump_length, resample) -> None:
    """Complete an input: regenerate an image region, fill audio gaps / continue a clip, predict or
    interpolate video frames, or grow a molecule from a fixed fragment. The known part is kept exactly."""
    from ..core.sampling.completion import completion_steps

    opts = parse_sampler_options(sampler, sampler_opts)
    cond = parse_labels(labels)
    model, out = _prepare(checkpoint, pretrained, device, domain, out, "inpaint")
    given = {"mask": mask, "rect": rect, "span": list(spans) or None, "continue": cont, "num_atoms": num_atoms}
    prepared = model.completion_input(input_path, given)
    if model.known_share(prepared[1]) >= 1.0:
        raise UserError("nothing to generate: give --mask / --rect (image), --span / --continue (audio, video) or "
                        "--num-atoms above the fragment's size (molecules)")
    model.prepare_condition(num, cond, guidance_scale)
    model.check_sampling(num, sampler=sampler, steps=steps, spacing=spacing, seed=seed, batch_size=num, options=opts)
    n_steps = completion_steps(model.steps_for(sampler, steps), jump_length, resample)
    with _progress_bar(num * n_steps, f"inpaint ({sampler}, {n_steps} steps)") as bar:
        samples = model.complete(prepared, num, sampler=sampler, steps=steps, spacing=spacing, seed=seed,
                                 jump_length=jump_length, resample=resample, cond=cond, guidance_scale=guidance_scale,
                                 progress=bar.update, **opts)
    _finish(model, samples, out, {"known_max_abs_error": model.known_error(samples, prepared),
                                  "generated_share": 1.0 - model.known_share(prepared[1])})


@click.command()
@_SAMPLING
@click.option("--strength", type=float, required=True,
              help="How far to noise the input, in [0, 1]: 0 returns it, 1 ignores it (plain sampling).")
@click.option("--invert", is_flag=True, help="Deterministic: DDIM inversion to the strength, then DDIM (needs ddim).")
@click.option("--sampler", default="ddim", show_default=True, help="Sampler: " + ", ".join(sampler_names()) + ".")
def edit(checkpoint, pretrained, input_path, num, steps, spacing, seed, device, domain, sampler_opts, labels, guidance_scale, out,
         strength, invert, sampler) -> None:
    """SDEdit an input: noise it to --strength and denoise (Meng et al. 2022)."""
    from ..core.sampling.completion import check_strength

    opts = parse_sampler_options(sampler, sampler_opts)
    check_strength(strength)
    if invert and sampler != "ddim":
        raise UserError("--invert decodes with the ddim sampler; use --sampler ddim")
    cond = parse_labels(labels)
    model, out = _prepare(checkpoint, pretrained, device, domain, out, "edit")
    prepared = model.completion_input(input_path, {})
    model.prepare_condition(num, cond, guidance_scale)
    model.check_sampling(num, sampler=sampler, steps=steps, spacing=spacing, seed=seed, batch_size=num, options=opts)
    n_steps = int(round(strength * model.steps_for(sampler, steps)))
    with _progress_bar(num * n_steps, f"edit ({sampler}, {n_steps} steps)") as bar:
        samples = model.edit(prepared, strength, num, invert=invert, sampler=sampler, steps=steps, spacing=spacing,
                             seed=seed, cond=cond, guidance_scale=guidance_scale, progress=bar.update, **opts)
    _finish(model, samples, out, {"strength": float(strength), "steps_run": n_steps})


@click.command()
@_SAMPLING
@click.option("--sampler", default="ddim", show_default=True, help="Sampler: " + ", ".join(sampler_names()) + ".")
@click.option("--batch-size", type=int, default=64, show_default=True, callback=positive)
def upscale(checkpoint, pretrained, input_path, num, steps, spacing, seed, device, domain, sampler_opts, labels, guidance_scale,
            out, sampler, batch_size) -> None:
    """Super-resolution with a model trained with --condition lowres (SR3): the low-resolution
    input, upsampled, is concatenated to the network input."""
    opts = parse_sampler_options(sampler, sampler_opts)
    model, out = _prepare(checkpoint, pretrained, device, domain, out, "upscale")
    cond = model.restoration_input(input_path)
    cond.update(parse_labels(labels) or {})
    model.prepare_condition(num, cond, guidance_scale)
    model.check_sampling(num, sampler=sampler, steps=steps, spacing=spacing, seed=seed, batch_size=batch_size,
                         options=opts)
    n_steps = model.steps_for(sampler, steps)
    with _progress_bar(num * n_steps, f"upscale ({sampler}, {n_steps} steps)") as bar:
        samples = model.upscale(cond, num, sampler=sampler, steps=steps, spacing=spacing, seed=seed,
                                batch_size=batch_size, guidance_scale=guidance_scale, progress=bar.update, **opts)
    _finish(model, samples, out, {})
