"""The audio domain: raw waveforms ``[B, C, L]`` with a 1-D U-Net.

``diffuse train --domain audio`` with no other argument trains the ``small`` preset on the
bundled Sonic Pi percussion one-shots at 16 kHz, 0.5 s clips, on CPU in a few minutes, then
writes 16-bit WAVs, a spectrogram PNG and Frechet distances (see ``metrics``).

Model presets (``{"preset": name, ...overrides}`` in the model config; extra keys override):

========= ================================ ======================================================
small     channels 16-32-64-128, x4 x4 x4  default; CPU demo (0.7 M parameters)
base      channels 32-64-128-256, x4 x4 x4 GPU; 16 kHz 1 s clips (``clip_seconds: 1.0``)
large     channels 64-128-256-512-512,     GPU; 16 kHz 1-4 s clips, 2 ResBlocks, dilations 1-3-9
          x4 x4 x4 x2
========= ================================ ======================================================

Conditions (``diffuse train --domain audio --condition label|text``): ``label`` (the class of
the sub-folder, bundled: cymbal, kick, snare, tabla, tom; :class:`~diffuse.core.data.condition.LabelKind`,
also ``bass``/``bd`` for kick, ``hihat``/``hat`` for cymbal) through the U-Net's label embedding,
and ``text`` (captions such as "an 808 bass drum hit" drawn per clip from
:data:`~diffuse.domains.audio.data.CLASS_PHRASES`; :class:`~diffuse.domains.text.TextKind`) through
a small text encoder inside the U-Net, its cross-attention and (``text_pool``, on in every preset)
the pooled prompt added to the time embedding, so a prompt reaches every ResBlock as a label
does. Model option ``text_encoder``: see :func:`~diffuse.domains.text.build_text_encoder`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...core.data.condition import ConcatKind, Condition, ConditionKind, LabelKind
from ...core.data.domain import Batch, Domain, DomainDataset
from ...core.data.space import DenseSpace
from .data import DATA_OPTIONS, load_audio_folder, load_bundled, resolve_options
from ..text import text_kind_for
from .io import write_spectrogram_png, write_wav
from .metrics import set_metrics
from .backbones import BACKBONES
from .mel import MelDataset, MelKind, check_mel_input, mel_envelope, vocoder_input
from .restoration import NoisyDataset, keep_band, noisy_condition
from .speech import load_speech
from ...core.errors import UserInputError

__all__ = ["AudioDomain", "spectral_flatness"]

log = logging.getLogger(__name__)

#: the vocoder's default sampler and steps (chosen on the tuning clips: speech.md, "Few-step sampling")
VOCODER_SAMPLING: tuple[str, int] = ("ddim", 6)
#: at most this many reference clips enter the Frechet distances
MAX_REFERENCE = 2000
#: extra label names (lower case) for the bundled classes
_LABEL_ALIASES = {"bass": "kick", "bd": "kick", "bass drum": "kick", "kick drum": "kick", "sn": "snare",
                  "snare drum": "snare", "hat": "cymbal", "hihat": "cymbal", "hi hat": "cymbal", "crash": "cymbal"}


def spectral_flatness(x: Tensor, n_fft: int = 512) -> Tensor:
    """Wiener entropy per clip (geometric / arithmetic mean of the power spectrum, averaged
    over frames): about 0.56 for white noise with a Hann window, near 0 for tones and for
    the decaying resonances of drums. ``x``: ``[B, C, L]``; returns ``[B]``."""
    m = x.detach().float().cpu().mean(1)
    if m.shape[-1] < n_fft:
        m = torch.nn.functional.pad(m, (0, n_fft - m.shape[-1]))
    p = torch.stft(m, n_fft, n_fft // 4, window=torch.hann_window(n_fft), return_complex=True).abs().pow(2) + 1e-12
    flat = torch.exp(torch.log(p).mean(1)) / p.mean(1)          # [B, frames]
    energy = p.mean(1)
    w = energy / energy.sum(1, keepdim=True)                      # weight frames by energy
    return (flat * w).sum(1)


class AudioDomain(Domain):
    """Raw-waveform audio: WAV / FLAC / OGG folders or the bundled CC0 percussion set."""

    name = "audio"
    description = "1-D waveform U-Net on WAV/FLAC/OGG audio (bundled: CC0 percussion one-shots, 16 kHz)"
    restoration_conditions = ("lowrate", "noisy")
    layout_keys = ("channels", "length", "sample_rate")
    backbones = BACKBONES
    default_backbone = "unet"

    # ---------------------------------------------------------------- configuration
    def default_diffusion(self) -> dict[str, Any]:
        return {"schedule": {"kind": "cosine"}, "parameterization": "v"}

    def default_train(self) -> dict[str, Any]:
        return {"steps": 800, "batch_size": 16, "lr": 1e-3, "warmup_steps": 50, "min_lr_ratio": 0.1,
                "ema_decay": 0.995, "log_every": 20, "checkpoint_every": 0, "eval_samples": 32,
                "eval_sampler": "ddpm", "eval_steps": 50, "holdout_fraction": 0.15}

    def default_sampling(self) -> tuple[str, int | None]:
        if self.bound and self.info.get("mel"):   # the vocoder: few steps, as WaveGrad (speech.md, "Few-step sampling")
            return VOCODER_SAMPLING
        # the ancestral sampler at DDIM's cost: on the shipped model (64 clips, 2 seeds) Frechet
        # log-mel 513 / 392 against DDIM-50's 657 / 676; checked on a model it was not chosen on
        # (the default recipe at 1,600 steps): 369 / 317 against 663 / 746 (README, "Audio")
        return "ddpm", 50

    def default_spacing(self, schedule: Any, sampler: str, steps: int | None) -> str | None:
        # DDPM's trailing grid ends at t = 1/steps (sigma 0.042 at 50 steps on the cosine schedule)
        # and jumps to the data from there; the log-mel features hear the coarse last step as a
        # noise floor. Karras' grid resolves the low-noise end (its last step at t = 1/T)
        if sampler == "ddpm" and schedule.variance_preserving and not getattr(schedule, "default_spacing", None):
            return "karras"
        return None

    def default_data(self) -> dict[str, Any]:
        return dict(DATA_OPTIONS)

    # ---------------------------------------------------------------- data and model
    def load_data(self, path: str | Path | None, options: dict[str, Any]) -> DomainDataset:
        opts = resolve_options(options)
        if opts["speech"]:             # speech recordings (speech helper)
            ds = load_speech(path, opts)
        else:
            ds = load_bundled(opts) if path is None else load_audio_folder(path, opts)
        if opts.get("mel"):            # vocoder: the log-mel condition (speech helper); length in whole hops
            ds = MelDataset(ds, opts["mel"])
        if opts.get("lowrate"):        # bandwidth extension (inpaint helper)
            from .inpaint import LowRateDataset
            ds = LowRateDataset(ds, opts["lowrate"])
        if opts.get("noisy") is not None:   # denoising (speech helper)
            ds = NoisyDataset(ds, opts["noisy"])
        return ds

    # --- latent diffusion (latent helper) ---
    def build_autoencoder(self, config: dict[str, Any]) -> nn.Module:
        """The 1-D waveform KL autoencoder (``autoencoder.py``)."""
        from .autoencoder import AudioAutoencoder
        return AudioAutoencoder(config, self.info)

    def default_autoencoder(self) -> dict[str, Any]:
        return {"model": {}, "train": {"steps": 800, "batch_size": 16, "lr": 1e-3, "warmup_steps": 50,
                                       "ema_decay": 0.99, "checkpoint_every": 0, "holdout_fraction": 0.15}}

    # --- noise-aware classifier (clf helper) ---
    def build_classifier(self, model: dict[str, Any], target: Any) -> nn.Module:
        """The waveform U-Net's encoder with the time embedding, pooled, and a linear head (``classifier.py``)."""
        from .classifier import DEFAULT_CLASSIFIER, AudioClassifier

        unknown = sorted(set(model) - set(DEFAULT_CLASSIFIER) - {"dropout"})
        if unknown:
            raise UserInputError(f"unknown {self.name} classifier option(s): {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(DEFAULT_CLASSIFIER))}")
        return AudioClassifier(int(self.info.get("channels", 1)), target.out_dim, **{**DEFAULT_CLASSIFIER, **model})

    def classifier_data_options(self, target: Any) -> dict[str, Any]:
        """Class labels from the sub-folder names / the bundled manifest for a ``label`` classifier."""
        return {"labels": True} if target.kind == "label" else {}

    def template(self, num: int, generator: torch.Generator | None = None, structure: Any = None) -> Batch:
        """``num`` silent clips of the model's length, or of ``structure`` samples (a vocoder's
        network is fully convolutional: any length its mel covers, see :meth:`check_structure`)."""
        length = int(self.info["length"]) if structure is None else int(structure)
        return Batch(torch.zeros(int(num), int(self.info.get("channels", 1)), length), DenseSpace())

    def check_structure(self, value: Any, batch_size: int | None = None) -> None:
        """A clip length in samples (a whole number of mel hops) for a vocoder; nothing else."""
        if value is None:
            return
        mel = self.info.get("mel")
        if not mel:
            raise UserInputError("this audio model generates clips of its training length; only a vocoder "
                                 "(--condition mel) takes a clip length")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % int(mel["hop"]):
            raise UserInputError(f"a vocoder's clip length must be a positive whole number of mel hops "
                                 f"({mel['hop']} samples), got {value!r}")

    # ---------------------------------------------------------------- conditions
    def condition_kinds(self) -> dict[str, ConditionKind]:
        """``label`` for a model trained with labels, ``text`` for one trained with captions,
        ``lowrate`` for a bandwidth-extension model."""
        data_info = self.info
        kinds: dict[str, ConditionKind] = {}
        classes = data_info.get("classes")
        if classes and data_info.get("label_condition", True):
            aliases = {a: classes.index(c) for a, c in _LABEL_ALIASES.items() if c in classes}
            kinds["label"] = LabelKind(len(classes), classes, aliases)
        if data_info.get("text"):
            kinds["text"] = text_kind_for(classes)
        if data_info.get("lowrate"):   # bandwidth extension: the band-limited clip, concatenated
            kinds["lowrate"] = ConcatKind(int(data_info.get("channels", 1)), [int(data_info["length"])])
        if data_info.get("noisy"):     # denoising: the noisy clip, concatenated
            kinds["noisy"] = ConcatKind(int(data_info.get("channels", 1)), [int(data_info["length"])])
        if data_info.get("mel"):       # vocoder: the clip's log-mel (mel.py)
            mel = data_info["mel"]
            kinds["mel"] = MelKind(int(mel["n_mels"]), int(data_info["length"]) // int(mel["hop"]), int(mel["hop"]))
        return kinds or super().condition_kinds()

    def condition_data_options(self, names: list[str]) -> dict[str, Any]:
        unknown = sorted(set(names) - {"label", "text", "lowrate", "mel", "noisy"})
        if unknown:
            raise UserInputError(f"the audio domain cannot condition on {', '.join(unknown)}; it supports: label, text, "
                                 f"lowrate, mel, noisy")
        return {**({"labels": True} if "label" in names else {}), **({"text": True} if "text" in names else {}),
                **({"lowrate": 4000} if "lowrate" in names else {}),   # 4 kHz -> the clip's rate
                **({"mel": True} if "mel" in names else {}),           # the log-mel of mel.MEL_DEFAULTS
                **({"noisy": [0.0, 15.0]} if "noisy" in names else {})}   # white noise at 0..15 dB SNR

    # ---------------------------------------------------------------- results
    def metrics(self, samples: Batch, reference: DomainDataset) -> dict[str, float]:
        """``fd_logmel``, ``fd_mfcc``, ``fd_net`` (Frechet distances to ``reference``; lower is
        better, 0 = same statistics), plus ``rms_db`` and ``flatness`` of the samples."""
        rate = int(self.info["sample_rate"])
        idx = torch.arange(len(reference))
        if len(idx) > MAX_REFERENCE:  # a fixed, seeded subset keeps memory and time bounded
            idx = torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))[:MAX_REFERENCE]
        ref = self.to_data(reference.batch(idx, torch.Generator().manual_seed(0))).x
        x = samples.x.detach().float().cpu()
        out: dict[str, float] = {}
        if x.shape[0] >= 2 and ref.shape[0] >= 2:
            out.update(set_metrics(x, ref, rate))
        else:
            log.warning("Frechet distances need at least 2 samples and 2 reference clips (got %d and %d)",
                        x.shape[0], ref.shape[0])
        out["flatness"] = float(spectral_flatness(x.clamp(-1, 1)).mean())
        return out

    def describe_samples(self, samples: Batch) -> dict[str, float] | None:
        """Reference-free figures: mean RMS level (dBFS), peak, fraction of clipped samples and
        spectral flatness (about 0.56 for white noise, lower for percussive / tonal sound)."""
        x = torch.nan_to_num(samples.x.detach().float().cpu())
        rms = x.clamp(-1, 1).pow(2).flatten(1).mean(1).sqrt().clamp(min=1e-5)
        return {"rms_db": float((20 * torch.log10(rms)).mean()), "peak": float(x.abs().max()),
                "clipped": float((x.abs() > 1).float().mean()),
                "flatness": float(spectral_flatness(x.clamp(-1, 1)).mean())}

    def write(self, samples: Batch, out_dir: Path) -> list[Path]:
        """One 16-bit PCM WAV per sample (``sample_000.wav`` ...) at the data's rate, clipped
        to [-1, 1], and ``spectrograms.png`` with the first 8 samples' log spectrograms."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        rate = int(self.info["sample_rate"])
        x = samples.x.detach().float().cpu()
        if samples.extras.get("keep_length"):     # completion: the clip (+ continuation) only
            x = x[..., :int(samples.extras["keep_length"])]
        width = max(3, len(str(max(0, x.shape[0] - 1))))
        paths = [write_wav(out_dir / f"sample_{i:0{width}d}.wav", clip, rate) for i, clip in enumerate(x)]
        if x.shape[0]:
            paths.append(write_spectrogram_png(out_dir / "spectrograms.png", x[:8].clamp(-1, 1), rate))
        return paths

    # --- the vocoder (speech helper) ---
    def to_data(self, samples: Batch) -> Batch:
        """A vocoder with the energy prior (``mel``): model space is the waveform over its mel
        envelope, so samples are multiplied by it (``mel.mel_envelope``); otherwise unchanged."""
        mel = self.info.get("mel")
        values = samples.cond.get("mel") if isinstance(samples.cond, Condition) else None
        if not mel or not mel.get("prior") or values is None:
            return samples
        env = mel_envelope(values[:, :-1].to(samples.x.device), samples.x.shape[-1], int(mel["hop"]))
        return Batch(samples.x * env[:, None].to(samples.x.dtype), samples.space, samples.cond, samples.extras)

    def vocoder_input(self, path):
        """A clip read as the vocoder's training data: ``(clip [1, N'], log-mel, samples)`` (``mel``)."""
        return vocoder_input(path, self.info)

    def vocoder_mel(self, array, what: str):
        """A user's log-mel array checked against this vocoder's bands, float32 ``[n_mels, F]``."""
        return check_mel_input(array, int(self.info["mel"]["n_mels"]), what)

    def paired_speech_metrics(self, x: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """Mean MCD (dB) and log-mel L1 of ``x`` against ``reference`` (``[B, C, N]``) and, where their
        packages are installed, PESQ and STOI (``speech_metrics``)."""
        from .speech_metrics import paired_metrics
        return paired_metrics(x, reference, int(self.info["sample_rate"]))

    # --- completion (inpaint helper) ---
    def completion_input(self, path, options):
        """A clip and its mask (``span`` gaps, ``continue`` past the end); see ``inpaint``."""
        from .inpaint import audio_completion_input
        return audio_completion_input(path, options, self.info)

    def restoration_input(self, path):
        """Bandwidth extension: a clip -> ``{"lowrate": band-limited [C, L]}`` (``inpaint``);
        denoising: a noisy clip -> ``{"noisy": [C, L]}`` (``restoration``)."""
        if self.info.get("noisy"):
            return noisy_condition(path, self.info)
        from .inpaint import lowrate_condition
        return lowrate_condition(path, self.info)

    def restoration_output(self, samples: Batch, cond: dict[str, Any]) -> Batch:
        """Bandwidth extension keeps the given band exactly (:func:`~.restoration.keep_band`)."""
        given = cond.get("lowrate") if isinstance(cond, dict) else None
        if given is None or not self.info.get("lowrate"):
            return samples
        x = keep_band(samples.x, torch.as_tensor(given, dtype=samples.x.dtype), int(self.info["sample_rate"]),
                      int(self.info["lowrate"]))
        return Batch(x, samples.space, samples.cond, samples.extras)
