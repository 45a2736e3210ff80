"""Speech benchmark: the diffusion vocoder against DiffWave's own code and Griffin-Lim, spoken
digits, and speech restoration, with offline speech-quality metrics.

    # the anchor: DiffWave's own model and training step (lmnt-com/diffwave, `pip install --no-deps
    # --target DIR diffwave`, on PYTHONPATH), trained on the same clips for the same CPU seconds
    python benchmarks/bench_speech.py diffwave --run runs/vocoder --cpu-seconds 1500 --out runs/diffwave
    # few-step sampler choice on training utterances (the tuning set)
    python benchmarks/bench_speech.py tune --run runs/vocoder
    # resynthesis of held-out utterances: ours vs DiffWave vs Griffin-Lim vs the real clips
    python benchmarks/bench_speech.py vocoder --run runs/vocoder --diffwave runs/diffwave
    python benchmarks/bench_speech.py speed --run runs/vocoder          # real-time factor, 1 and 2 threads
    python benchmarks/bench_speech.py digits --run runs/digits          # spoken digits: classifier accuracy
    python benchmarks/bench_speech.py restore --run runs/denoise        # denoising / bandwidth extension

Held-out utterances: the recordings the run's own split held out (``train.holdout_fraction``,
seed ``train.seed``), those up to ``--max-seconds`` long; the tuning set is training recordings
(never the held-out ones). Metrics (``domains.audio.speech_metrics``): MCD (dB, lower is
better), log-mel L1, PESQ (narrow band at 8 kHz) and STOI where installed, DNSMOS P.835 (OVRL,
SIG, BAK; 1..5) with the real clips as the ceiling. Every set is scored on the same clips, seeds
and metric code, in one process. Results go to ``benchmarks/results/speech_<command>.json``.

DiffWave's code (Kong et al. 2021; ``diffwave`` 0.1.7 from PyPI, Apache-2.0) is imported, not
copied: its ``DiffWave`` model and its ``DiffWaveLearner.train_step`` (the learner module imports
``torch.utils.tensorboard``, which is stubbed here because only the summary writer uses it). Its
mel front end (``preprocess.transform``: 80 bands, n_fft 1024, hop 256, magnitude, ``normalized``,
dB mapped to [0, 1]) is its published one, computed here with the same torchaudio transform
because its file reading (``torchaudio.load_wav``) no longer exists. Its fast sampling follows
``inference.predict`` (6 steps, ``inference_noise_schedule``), written out because ``predict``
rebuilds the 30-layer base model and loads to CUDA. Sizes: both residual stacks 32 channels x
12 layers (dilation cycle 6); DiffWave keeps its 512-wide step embedding. Its crop is 16 mel
frames (4,096 samples, 0.51 s at 8 kHz; its default 62 frames is 0.72 s at 22 kHz), batch 8, as
ours (0.5 s, batch 8); its learning rate (2e-4, Adam) and noise schedule are its own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

import diffuse.api as api
from diffuse.api.configs import split_data
from diffuse.domains.audio.mel import speech_mel
from diffuse.domains.audio.speech_metrics import dnsmos, griffin_lim_from_mel, paired_metrics

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _save(name: str, record: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"speech_{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


def _table(rows: dict[str, dict[str, float]]) -> None:
    keys = sorted({k for r in rows.values() for k in r})
    print(f"{'set':28s}" + "".join(f"{k:>12s}" for k in keys))
    for name, r in rows.items():
        print(f"{name:28s}" + "".join(f"{r.get(k, float('nan')):12.3f}" for k in keys))


# ------------------------------------------------------------------ the run's data and splits
def _splits(model):
    """``(mel dataset, training indices, held-out indices)`` of a vocoder run, as its training split them."""
    from diffuse.api.configs import load_data
    ds = load_data(model.domain, model.config)
    train, held = split_data(ds, model.config.train)
    return ds, train.indices.tolist(), (held.indices.tolist() if held is not None else [])


def _clips(ds, indices, max_seconds: float, limit: int) -> list[tuple[str, torch.Tensor, torch.Tensor, int]]:
    """``(name, padded clip [1, N'], mel, samples)`` of the recordings at ``indices`` up to ``max_seconds``."""
    rate = ds.rate
    out = []
    for i in indices:
        clip = ds.base.clips[i]
        n = clip.shape[-1]
        if n > max_seconds * rate:
            continue
        x, mel = ds.clip_and_mel(i)
        frames = -(-n // ds.cfg["hop"])                    # the mel vocode computes (not padded to a crop)
        out.append((ds.base.names[i], x[:, :frames * ds.cfg["hop"]], mel[:, :frames], n))
        if len(out) >= limit:
            break
    return out


def _score(name: str, outs: list[torch.Tensor], refs: list[torch.Tensor], rate: int, with_dnsmos: bool) -> dict:
    rows = [paired_metrics(o[None], r[None], rate) for o, r in zip(outs, refs)]
    res = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
    if with_dnsmos:
        for o in outs:
            d = dnsmos(o[None], rate)
            if d is None:
                break
            for k, v in d.items():
                res.setdefault(f"dnsmos_{k}", []).append(v[0])
        for k in [k for k in res if k.startswith("dnsmos_")]:
            res[k] = float(np.mean(res[k]))
    print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in res.items()), flush=True)
    return res


def _ours(model, clips, sampler, steps, seed=0, spacing=None) -> list[torch.Tensor]:
    outs = []
    for _, x, mel, n in clips:
        s = model.sample(1, cond={"mel": mel}, structure=x.shape[-1], sampler=sampler, steps=steps, seed=seed,
                         spacing=spacing)
        outs.append(s.x[0, :, :n])
    return outs


# ------------------------------------------------------------------ DiffWave's own code
def _import_diffwave():
    if "torch.utils.tensorboard" not in sys.modules:    # the learner imports it for its summary writer only
        stub = types.ModuleType("torch.utils.tensorboard")
        stub.SummaryWriter = object
        sys.modules["torch.utils.tensorboard"] = stub
    try:
        from diffwave import learner, model, params
    except ImportError as exc:
        raise SystemExit(f"DiffWave's code is not importable ({exc}); pip install --no-deps --target DIR diffwave "
                         f"and put DIR on PYTHONPATH") from None
    return learner, model, params


def _diffwave_params(params_mod, rate: int):
    return params_mod.AttrDict(params_mod.params).override(
        {"sample_rate": rate, "residual_channels": 32, "residual_layers": 12, "dilation_cycle_length": 6,
         "batch_size": 8, "crop_mel_frames": 16})


def _diffwave_mel(x: torch.Tensor, p) -> torch.Tensor:
    """DiffWave's ``preprocess.transform`` mel of a waveform ``[N]`` -> ``[80, N // hop + 1]`` in [0, 1]."""
    import torchaudio
    tf = torchaudio.transforms.MelSpectrogram(sample_rate=p.sample_rate, win_length=p.hop_samples * 4,
                                              hop_length=p.hop_samples, n_fft=p.n_fft, f_min=20.0,
                                              f_max=p.sample_rate / 2.0, n_mels=p.n_mels, power=1.0, normalized=True)
    with torch.no_grad():
        s = 20 * torch.log10(torch.clamp(tf(x), min=1e-5)) - 20
        return torch.clamp((s + 100) / 100, 0.0, 1.0)


def train_diffwave(args) -> None:
    learner_mod, model_mod, params_mod = _import_diffwave()
    model = api.load(args.run)
    ds, train_idx, _ = _splits(model)
    p = _diffwave_params(params_mod, ds.rate)
    torch.manual_seed(0)
    net = model_mod.DiffWave(p)
    opt = torch.optim.Adam(net.parameters(), lr=p.learning_rate)
    learner = learner_mod.DiffWaveLearner(args.out, net, None, opt, p)
    hop, frames = p.hop_samples, p.crop_mel_frames
    start, steps, losses = _cpu(), 0, []               # its preprocessing counts, as our run's data loading does
    clips = [(ds.clip_and_mel(i)[0][0]) for i in train_idx]
    mels = [_diffwave_mel(c, p) for c in clips]
    rng = np.random.default_rng(0)
    while _cpu() - start < args.cpu_seconds:
        audio, spec = [], []
        for j in rng.integers(0, len(clips), p.batch_size):        # DiffWave's Collator: a random crop per record
            m = mels[j]
            s = int(rng.integers(0, max(1, m.shape[-1] - frames) + 1))
            a = clips[j][s * hop:(s + frames) * hop]
            audio.append(torch.nn.functional.pad(a, (0, frames * hop - a.shape[-1])))
            mm = m[:, s:s + frames]
            spec.append(torch.nn.functional.pad(mm, (0, frames - mm.shape[-1])))
        loss = learner.train_step({"audio": torch.stack(audio), "spectrogram": torch.stack(spec)})
        learner.step += 1
        steps += 1
        losses.append(float(loss.detach()))
        if steps % 25 == 0:
            print(f"diffwave step {steps} loss {np.mean(losses[-25:]):.4f} cpu {_cpu() - start:.0f} s", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(Path(args.out) / "model.safetensors"))
    info = {"steps": steps, "cpu_seconds": _cpu() - start, "parameters": sum(v.numel() for v in net.parameters()),
            "params": {k: v for k, v in p.items() if k != "noise_schedule"}, "final_loss": float(np.mean(losses[-25:]))}
    (Path(args.out) / "info.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))


def _diffwave_vocode(net, p, mel: torch.Tensor, seed: int) -> torch.Tensor:
    """DiffWave's fast sampling (``inference.predict`` with ``fast_sampling``) from its mel ``[80, F]``."""
    train_beta = np.array(p.noise_schedule)
    talpha_cum = np.cumprod(1 - train_beta)
    beta = np.array(p.inference_noise_schedule)
    alpha = 1 - beta
    alpha_cum = np.cumprod(alpha)
    steps = []
    for s in range(len(beta)):                      # each inference step's continuous training step
        for t in range(len(train_beta) - 1):
            if talpha_cum[t + 1] <= alpha_cum[s] <= talpha_cum[t]:
                twiddle = (talpha_cum[t] ** 0.5 - alpha_cum[s] ** 0.5) / (talpha_cum[t] ** 0.5 - talpha_cum[t + 1] ** 0.5)
                steps.append(t + twiddle)
                break
    g = torch.Generator().manual_seed(seed)
    spec = mel[None]
    audio = torch.randn(1, p.hop_samples * spec.shape[-1], generator=g)
    with torch.no_grad():
        for n in range(len(alpha) - 1, -1, -1):
            c1, c2 = 1 / alpha[n] ** 0.5, beta[n] / (1 - alpha_cum[n]) ** 0.5
            audio = c1 * (audio - c2 * net(audio, spec, torch.tensor([steps[n]], dtype=torch.float32)).squeeze(1))
            if n > 0:
                sigma = ((1.0 - alpha_cum[n - 1]) / (1.0 - alpha_cum[n]) * beta[n]) ** 0.5
                audio = audio + sigma * torch.randn(audio.shape, generator=g)
            audio = torch.clamp(audio, -1.0, 1.0)
    return audio


def _load_diffwave(folder: str, rate: int):
    _, model_mod, params_mod = _import_diffwave()
    from safetensors.torch import load_file
    p = _diffwave_params(params_mod, rate)
    net = model_mod.DiffWave(p)
    net.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
    return net.eval(), p


# ------------------------------------------------------------------ commands
def tune(args) -> None:
    model = api.load(args.run)
    ds, train_idx, _ = _splits(model)
    clips = _clips(ds, train_idx[:: max(1, len(train_idx) // 40)], args.max_seconds, args.num)
    refs = [x[:, :n] for _, x, _, n in clips]
    rows = {}
    for sampler, steps, spacing in ((s.split(":")[0], int(s.split(":")[1]), (s.split(":") + [None])[2])
                                    for s in args.candidates):
        outs = []
        for _, x, mel, n in clips:
            s = model.sample(1, cond={"mel": mel}, structure=x.shape[-1], sampler=sampler, steps=steps,
                             spacing=spacing, seed=0)
            outs.append(s.x[0, :, :n])
        rows[f"{sampler}:{steps}:{spacing or 'default'}"] = _score(sampler, outs, refs, ds.rate, False)
    _table(rows)
    _save("tune", {"run": str(args.run), "clips": [c[0] for c in clips], "set": "training utterances", "rows": rows})


def vocoder(args) -> None:
    model = api.load(args.run)
    ds, _, held_idx = _splits(model)
    clips = _clips(ds, held_idx, args.max_seconds, args.num)
    refs = [x[:, :n] for _, x, _, n in clips]
    print(f"{len(clips)} held-out utterances, {sum(n for *_, n in clips) / ds.rate:.1f} s")
    rows = {"real recordings (ceiling)": _score("real", refs, refs, ds.rate, True)}
    sampler, steps = model.default_sampling()
    t = _cpu()
    rows[f"ours, {sampler} {steps} steps"] = _score("ours", _ours(model, clips, sampler, steps), refs, ds.rate, True)
    rows[f"ours, {sampler} {steps} steps"]["cpu_s_per_audio_s"] = (_cpu() - t) / (sum(n for *_, n in clips) / ds.rate)
    for cand in args.candidates:                      # other few-step settings (chosen on `tune`'s set)
        smp, st, sp = (cand.split(":") + [None])[:3]
        rows[f"ours, {cand}"] = _score(cand, _ours(model, clips, smp, int(st), spacing=sp), refs, ds.rate, True)
    for other in args.also_run:                       # e.g. an ablation run, at its own default sampling
        om = api.load(other)
        osmp, ost = om.default_sampling()
        rows[f"{Path(other).name}, {osmp} {ost} steps"] = _score(other, _ours(om, clips, osmp, ost), refs, ds.rate, True)
    cfg = {**ds.cfg}
    gl = [griffin_lim_from_mel(mel, cfg, x.shape[-1])[:, :n] for _, x, mel, n in clips]
    rows["Griffin-Lim (64 iterations)"] = _score("griffin-lim", gl, refs, ds.rate, True)
    if args.diffwave:
        net, p = _load_diffwave(args.diffwave, ds.rate)
        outs = []
        t = _cpu()
        for _, x, _, n in clips:
            m = _diffwave_mel(x[0, :n], p)
            outs.append(_diffwave_vocode(net, p, m, 0)[:, :n])
        name = "DiffWave's code, 6 fast steps"
        rows[name] = _score("diffwave", outs, refs, ds.rate, True)
        rows[name]["cpu_s_per_audio_s"] = (_cpu() - t) / (sum(n for *_, n in clips) / ds.rate)
    _table(rows)
    _save("vocoder", {"run": str(args.run), "diffwave": args.diffwave, "set": "held-out utterances",
                      "clips": [c[0] for c in clips], "rows": rows, "threads": torch.get_num_threads()})


def speed(args) -> None:
    model = api.load(args.run)
    sampler, steps = model.default_sampling()
    rate, hop = int(model.domain.info["sample_rate"]), int(model.domain.info["mel"]["hop"])
    frames = int(args.seconds * rate) // hop
    mel = torch.full((int(model.domain.info["mel"]["n_mels"]), frames), -4.0)
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        model.sample(1, cond={"mel": mel[:, :8]}, structure=8 * hop, sampler=sampler, steps=steps)   # warm-up
        t = time.perf_counter()
        model.sample(1, cond={"mel": mel}, structure=frames * hop, sampler=sampler, steps=steps)
        wall = time.perf_counter() - t
        out[f"{threads} thread(s)"] = {"seconds_of_audio": frames * hop / rate, "wall_s": wall,
                                       "real_time_factor": frames * hop / rate / wall}
        print(threads, out[f"{threads} thread(s)"], flush=True)
    _save("speed", {"run": str(args.run), "sampler": sampler, "steps": steps, "load": os.getloadavg(), **out})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("diffwave")
    a.add_argument("--run", required=True)
    a.add_argument("--cpu-seconds", type=float, required=True)
    a.add_argument("--out", required=True)
    a = sub.add_parser("tune")
    a.add_argument("--run", required=True)
    a.add_argument("--num", type=int, default=12)
    a.add_argument("--max-seconds", type=float, default=3.0)
    a.add_argument("--candidates", nargs="+", default=["ddim:6", "ddim:6:karras", "ddpm:6:karras", "dpmpp_2m:6",
                                                        "ddim:25"])
    a = sub.add_parser("vocoder")
    a.add_argument("--run", required=True)
    a.add_argument("--diffwave", default=None)
    a.add_argument("--num", type=int, default=24)
    a.add_argument("--max-seconds", type=float, default=3.0)
    a.add_argument("--candidates", nargs="*", default=[])
    a.add_argument("--also-run", nargs="*", default=[])
    a = sub.add_parser("speed")
    a.add_argument("--run", required=True)
    a.add_argument("--seconds", type=float, default=5.0)
    from bench_speech_tasks import add_task_commands   # spoken digits and restoration
    add_task_commands(sub)
    args = ap.parse_args()
    torch.set_num_threads(1)
    {"diffwave": train_diffwave, "tune": tune, "vocoder": vocoder, "speed": speed}.get(args.cmd, getattr(args, "fn", None))(args)


if __name__ == "__main__":
    main()
