"""Where the audio model's noise floor comes from (the README's account of ``fd_mfcc``).

The bundled clips shorter than 0.5 s end in exact digital silence (zero padding); samples keep a
floor there, and the MFCC distance (torchaudio's ``log(mel + 1e-6)``) hears it. This measures,
on the shipped audio model (or ``--checkpoint RUN``):

1. the level of the last 0.1 s of every bundled clip and of as many samples (label-conditional,
   each sample the label of one clip, guidance scale 1, the domain's default sampler: DDPM-50 on
   Karras' grid), as quantiles, and the median level of each 50 ms window of the clip;
2. what the model makes of a real silent tail plus Gaussian noise at a few small noise levels
   (its x0 prediction there): can it return silence when the input is silence plus noise?
3. along the sampling trajectory, the median tail level of ``x_t / alpha`` and of the model's
   x0 prediction at each step: when the floor is decided.

    python benchmarks/bench_audio_tails.py [--checkpoint RUN] [--seed 0]

Prints the tables and writes ``benchmarks/results/bench_audio_tails.json``. About 2 minutes on
one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
QUANTILES = [0.1, 0.25, 0.5, 0.75, 0.9]


def _db(x: torch.Tensor) -> torch.Tensor:
    """Per-clip RMS level in dBFS of ``[B, C, L]`` (floored at -200 dB: exact silence)."""
    return 20 * torch.log10(x.pow(2).mean(dim=(1, 2)).sqrt().clamp(min=1e-10))


def _envelope(x: torch.Tensor, rate: int, window_s: float = 0.05) -> list[float]:
    """Median over clips of each window's RMS level (dBFS)."""
    w = int(rate * window_s)
    n = x.shape[-1] // w
    frames = x[:, 0, :n * w].reshape(x.shape[0], n, w).pow(2).mean(-1).sqrt().clamp(min=1e-10)
    return [round(float(v), 1) for v in (20 * torch.log10(frames)).median(0).values]


def _quantiles(v: torch.Tensor) -> list[float]:
    return [round(float(q), 1) for q in torch.quantile(v.double(), torch.tensor(QUANTILES, dtype=torch.float64))]


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="run folder (default: the shipped audio model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tail", type=float, default=0.1, help="seconds at the end of the clip measured")
    ap.add_argument("--out", default=str(RESULTS / "bench_audio_tails.json"))
    args = ap.parse_args()

    from diffuse.api import CheckpointError, load, load_pretrained

    t0 = time.perf_counter()
    try:   # load's own domain check: another domain's run is a CheckpointError like a missing one
        model = (load(args.checkpoint, device="cpu", domain="audio") if args.checkpoint
                 else load_pretrained("audio", device="cpu"))
    except CheckpointError as exc:
        _fail(str(exc))
    rate = int(model.data_info["sample_rate"])
    data = model.domain.load_data(model.config.data, model.config.data_options)
    real = data.batch(torch.arange(len(data)), torch.Generator().manual_seed(0))
    length = real.x.shape[-1]
    tail = slice(length - int(args.tail * rate), length)
    schedule = model.diffusion.schedule
    out: dict = {"model": args.checkpoint or "pretrained:audio", "clips": len(data), "tail_seconds": args.tail}

    # 1. real clips vs samples
    real_tail = _db(real.x[..., tail])
    silent = real_tail < -150
    steps: list[dict] = []

    def record(module, args, kwargs, pred):        # a forward hook: every denoiser call while sampling
        x_t, t = args[0], args[1]
        alpha, sigma = (v.float() for v in schedule.alpha_sigma(t[:1].double()))
        steps.append({"t": round(float(t[0]), 4), "sigma_over_alpha_db": round(float(20 * torch.log10(sigma / alpha)), 1),
                      "x_t_over_alpha_db": round(float(_db((x_t / alpha)[..., tail]).median()), 1),
                      "x0_prediction_db": round(float(_db(pred.x0[..., tail]).median()), 1)})

    cond = real.cond if model.condition_kinds() and real.cond is not None else None
    hook = model.denoiser.register_forward_hook(record, with_kwargs=True)
    try:
        samples = model.sample(len(data), cond=cond, guidance_scale=1 if cond is not None else None,
                               seed=args.seed, batch_size=len(data))
    finally:
        hook.remove()
    gen_tail = _db(samples.x[..., tail])
    out["real"] = {"tail_db_quantiles": _quantiles(real_tail), "exact_silence": int(silent.sum()),
                   "envelope_db": _envelope(real.x, rate)}
    out["samples"] = {"tail_db_quantiles": _quantiles(gen_tail), "below_-50_db": int((gen_tail < -50).sum()),
                      "below_-60_db": int((gen_tail < -60).sum()), "envelope_db": _envelope(samples.x, rate),
                      "conditional": cond is not None}
    out["trajectory"] = steps

    # 2. real silent tails plus noise, denoised in one call
    quiet = data.batch(torch.nonzero(silent).flatten(), torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(args.seed)
    rows = []
    for tv in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1):
        t = torch.full((quiet.x.shape[0],), tv)
        alpha, sigma = (v.float().view(-1, 1, 1) for v in schedule.alpha_sigma(t.double()))
        x_t = alpha * quiet.x + sigma * torch.randn(quiet.x.shape, generator=g)
        with torch.no_grad():
            pred = model.denoiser(x_t, t, cond=quiet.cond, space=quiet.space)
        rows.append({"t": tv, "sigma_over_alpha_db": round(float(20 * torch.log10(sigma[0, 0, 0] / alpha[0, 0, 0])), 1),
                     "x0_prediction_db": round(float(_db(pred.x0[..., tail]).median()), 1)})
    out["silence_plus_noise"] = rows
    out["seconds"] = round(time.perf_counter() - t0, 1)

    print(f"last {args.tail} s of each clip, dBFS quantiles {QUANTILES}:")
    print(f"  bundled clips ({len(data)}): {out['real']['tail_db_quantiles']}  "
          f"(exact silence: {out['real']['exact_silence']})")
    print(f"  samples ({len(data)}):       {out['samples']['tail_db_quantiles']}  "
          f"(below -50 dB: {out['samples']['below_-50_db']}, below -60 dB: {out['samples']['below_-60_db']})")
    print("median level of each 50 ms window, dBFS:")
    print(f"  bundled clips: {out['real']['envelope_db']}")
    print(f"  samples:       {out['samples']['envelope_db']}")
    print("real silent tails + noise, denoised in one call (median tail level of the x0 prediction):")
    for r in rows:
        print(f"  t = {r['t']:<6} noise {r['sigma_over_alpha_db']:6.1f} dB -> {r['x0_prediction_db']:6.1f} dB")
    print("sampling trajectory (median tail level):  t | noise | x_t / alpha | x0 prediction")
    for r in steps[-12:] if len(steps) > 12 else steps:
        print(f"  {r['t']:.4f} | {r['sigma_over_alpha_db']:6.1f} | {r['x_t_over_alpha_db']:6.1f} | {r['x0_prediction_db']:6.1f}")
    print(f"({out['seconds']} s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
