"""Spoken digits and speech restoration for ``bench_speech.py`` (see its docstring).

``digits --run RUN``: a label-conditioned model of the ten spoken digits (``recipes/speech-digits.json``).
A digit classifier (``domains.audio.features.FeatureNet``, the audio domain's log-mel CNN) is
trained on the ten real recordings with augmentation (random gain, delay, faint noise) and
checked on perturbed real recordings it never saw (speed +-6 %, 20 dB white noise); it is never
used for guidance. Samples are drawn per guidance scale on two seed sets: the scale is chosen on
the first (tuning), accuracy and Frechet distances are reported on the second (held out).

``restore --run RUN``: a denoising (``noisy``) or bandwidth-extension (``lowrate``) model on
held-out utterances (their loudest 0.5 s window): the restored clip and the degraded input
itself, both scored against the clean recording.
"""

from __future__ import annotations

import numpy as np
import torch

import diffuse.api as api
from diffuse.api.configs import load_data, split_data


def _score(outs, refs, rate, name):
    from bench_speech import _score as score
    return score(name, list(outs), list(refs), rate, True)


def digits(args) -> None:
    from bench_speech import _save, _table
    from diffuse.domains.audio.features import log_mel, train_feature_net
    from diffuse.domains.audio.io import resample
    from diffuse.domains.audio.metrics import set_metrics

    model = api.load(args.run)
    ds = load_data(model.domain, model.config)
    real = ds.batch(torch.arange(len(ds)), torch.Generator().manual_seed(0))
    x, y, rate = real.x, real.cond["label"], ds.sample_rate
    torch.manual_seed(0)
    clf, train_acc = train_feature_net(x, y, rate, 10, steps=args.clf_steps, seed=0)

    def predict(w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return clf(log_mel(w, rate)).argmax(1)

    g = torch.Generator().manual_seed(123)
    checks = []
    for factor in (0.94, 1.06):                       # speed perturbation: resampled, then cropped / padded
        w = resample(x[:, 0], rate, int(rate * factor))[:, None]
        w = torch.nn.functional.pad(w, (0, max(0, x.shape[-1] - w.shape[-1])))[..., :x.shape[-1]]
        checks.append((predict(w) == y).float())
    noisy = x + x.pow(2).mean((1, 2), keepdim=True).sqrt() * 0.1 * torch.randn(x.shape, generator=g)
    checks.append((predict(noisy) == y).float())
    clf_check = float(torch.cat(checks).mean())
    print(f"digit classifier: training accuracy {train_acc:.3f}, perturbed real recordings {clf_check:.3f}")
    labels = torch.arange(10).repeat(args.per_digit)
    rows, samples = {}, {}
    for split, seed in (("tune", 0), ("held-out", 1000)):
        for scale in args.scales:
            s = model.sample(len(labels), cond={"label": labels.tolist()}, guidance_scale=scale, seed=seed,
                             sampler=args.sampler, steps=args.steps)
            acc = float((predict(s.x) == labels).float().mean())
            row = {"accuracy": acc, **{k: v for k, v in set_metrics(s.x, x, rate).items() if k != "rms_db"}}
            rows[f"{split}, guidance {scale}"] = row
            samples[(split, scale)] = s.x
            print(f"  {split} guidance {scale}: {row}", flush=True)
    best = max(args.scales, key=lambda sc: rows[f"tune, guidance {sc}"]["accuracy"])
    rows["real recordings"] = {"accuracy": float((predict(x) == y).float().mean())}
    _table(rows)
    _save("digits", {"run": str(args.run), "classifier_train_accuracy": train_acc,
                     "classifier_perturbed_real_accuracy": clf_check, "chosen_scale_on_tuning_seeds": best,
                     "held_out_accuracy_at_chosen_scale": rows[f"held-out, guidance {best}"]["accuracy"],
                     "per_digit": args.per_digit, "sampler": args.sampler, "steps": args.steps, "rows": rows})


def _windows(model, num: int, seconds: float):
    """The loudest ``seconds`` of each of ``num`` held-out utterances (hop-aligned), ``[num, 1, L]``."""
    ds = load_data(model.domain, model.config)
    _, held = split_data(ds, model.config.train)
    base = ds
    while hasattr(base, "base") and not hasattr(base, "clips"):
        base = base.base
    length, out = int(model.domain.info["length"]), []
    for i in held.indices.tolist():
        clip = base.clips[i]
        x = clip if isinstance(clip, torch.Tensor) else clip[:, 0:clip.shape[1]]
        if x.shape[-1] < length:
            continue
        energy = torch.nn.functional.avg_pool1d(x.pow(2)[None], length, stride=length // 4)[0, 0]
        k = int(energy.argmax()) * (length // 4)
        out.append(x[:, k:k + length])
        if len(out) >= num:
            break
    return torch.stack(out), int(model.domain.info["sample_rate"])


def restore(args) -> None:
    from bench_speech import _save, _table
    from diffuse.domains.audio.inpaint import band_limit
    from diffuse.domains.audio.restoration import add_noise

    model = api.load(args.run)
    clean, rate = _windows(model, args.num, 0.5)
    kinds = model.condition_kinds()
    if "noisy" in kinds:
        g = torch.Generator().manual_seed(7)
        degraded = add_noise(clean, torch.full((clean.shape[0],), float(args.snr)), g)
        name, what = "noisy", f"denoising at {args.snr:g} dB SNR"
    else:
        degraded = band_limit(clean, rate, int(model.domain.info["lowrate"]))
        name, what = "lowrate", f"bandwidth extension from {model.domain.info['lowrate']} Hz"
    outs = []
    for i in range(clean.shape[0]):
        s = model.upscale({name: degraded[i]}, 1, sampler=args.sampler, steps=args.steps, seed=i)
        outs.append(s.x[0])
    rows = {"clean recordings (ceiling)": _score(clean, clean, rate, "clean"),
            f"input itself ({name})": _score(degraded.clamp(-1, 1), clean, rate, "input"),
            f"restored ({args.sampler} {args.steps})": _score(outs, clean, rate, "restored")}
    _table(rows)
    _save(f"restore_{name}", {"run": str(args.run), "task": what, "set": "held-out utterances, loudest 0.5 s",
                              "num": int(clean.shape[0]), "rows": rows})


def add_task_commands(sub) -> None:
    """Add the ``digits`` and ``restore`` commands to ``bench_speech.py``'s parser."""
    a = sub.add_parser("digits")
    a.add_argument("--run", required=True)
    a.add_argument("--per-digit", type=int, default=5)
    a.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    a.add_argument("--sampler", default="ddim")
    a.add_argument("--steps", type=int, default=25)
    a.add_argument("--clf-steps", type=int, default=300)
    a.set_defaults(fn=digits)
    a = sub.add_parser("restore")
    a.add_argument("--run", required=True)
    a.add_argument("--num", type=int, default=16)
    a.add_argument("--snr", type=float, default=5.0)
    a.add_argument("--sampler", default="ddim")
    a.add_argument("--steps", type=int, default=25)
    a.set_defaults(fn=restore)
