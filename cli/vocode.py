"""``diffuse vocode``: a waveform from a clip's own mel (resynthesis) or from a ``.npy`` log-mel,
with a vocoder (a model trained with ``--condition mel``). Thin over :func:`diffuse.api.vocode`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import api
from ..core.validation import check_device
from .common import (PATH, UserError, check_model_source, check_out_dir, load_model, parse_sampler_options,
                     positive, print_table, sampler_names, spacing_names)

__all__ = ["vocode"]


@click.command()
@click.option("--checkpoint", "-c", type=PATH, default=None, help="Run folder of a vocoder (trained with --condition mel).")
@click.option("--pretrained", default=None, metavar="NAME",
              help="A vocoder shipped inside the package instead of --checkpoint (vocoder; see "
                   "pretrained/vocoder/MODEL_CARD.md).")
@click.option("--input", "-i", "input_path", type=PATH, default=None,
              help="A speech clip (WAV / FLAC / OGG) to resynthesise from its own log-mel.")
@click.option("--mel", "mel_path", type=PATH, default=None,
              help="A log-mel spectrogram to vocode: a .npy float array [n_mels, frames] (natural-log mel "
                   "amplitude, as the vocoder's data; see docs/guides/speech.md).")
@click.option("--sampler", default=None, help="Sampler: " + ", ".join(sampler_names()) + " (default: the vocoder's, "
                                              "ddim with 6 steps).")
@click.option("--steps", type=int, default=None, callback=positive, help="Sampler steps (default: the vocoder's).")
@click.option("--spacing", type=click.Choice(spacing_names()), default=None, help="Time-grid spacing.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--option", "-o", "sampler_opts", multiple=True, metavar="KEY=VALUE", help="Sampler option, repeatable.")
@click.option("--out", type=PATH, default=None,
              help="Output folder, new or empty (default CHECKPOINT/samples/vocode, -2, ...; for --pretrained: "
                   "samples/vocode-NAME in the current folder).")
def vocode(checkpoint, pretrained, input_path, mel_path, sampler, steps, spacing, seed, device, sampler_opts,
           out) -> None:
    """Vocode speech: resynthesise --input from its own mel, or turn a --mel array into a waveform.
    Writes sample_000.wav, spectrograms.png and summary.json (with --input: MCD, log-mel L1 and,
    where installed, PESQ / STOI against the input)."""
    check_model_source(checkpoint, pretrained)
    if (input_path is None) == (mel_path is None):
        raise UserError("give exactly one of --input CLIP and --mel FILE.npy")
    check_device(device)
    if out is not None:
        check_out_dir(out)
    model = load_model(checkpoint, pretrained, device, "audio")
    api.require_vocoder(model)
    sampler, steps = model.default_sampling(sampler, steps)
    opts = parse_sampler_options(sampler, sampler_opts)
    if out is None:
        first = Path(checkpoint) / "samples" / "vocode" if pretrained is None else Path("samples") / f"vocode-{pretrained}"
        out = check_out_dir(api.fresh_sample_dir(first))
    result = api.vocode(model, input_path, mel=mel_path, sampler=sampler, steps=steps, spacing=spacing, seed=seed,
                        **opts)
    paths = model.write(result.samples, out)
    summary = {"input": str(input_path or mel_path), "sampler": result.sampler, "steps": result.steps,
               "seconds": result.samples.x.shape[-1] / result.rate, **api.vocode_metrics(model, result)}
    api.write_text(Path(out) / "summary.json", json.dumps(summary, indent=2))
    click.echo(f"wrote {len(paths) + 1} files to {out}")
    print_table("vocoder:", summary)
