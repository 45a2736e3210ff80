"""The mel condition of a neural vocoder: a clip's log-mel spectrogram, the network's condition.

One function computes it, in training and in ``diffuse vocode`` alike (:func:`speech_mel`), so a
clip's mel seen in training equals the one a user's file gives (``tests/test_speech_vocoder.py``
checks it). DiffWave (Kong et al. 2021) and WaveGrad (Chen et al. 2021) condition a waveform
model on such a mel, upsampled to the waveform rate by the network
(:mod:`~diffuse.domains.audio.wavenet`).

Definition (:func:`speech_mel`), for a clip ``x`` of ``N`` samples at ``rate``:

* ``x`` is zero-padded at the end to ``F * hop`` samples, ``F = ceil(N / hop)`` frames;
* STFT with a periodic Hann window of ``n_fft`` samples, hop ``hop``, frames centred at
  ``k * hop`` (zero padding ``n_fft / 2`` either side: ``torch.stft(center=True,
  pad_mode="constant")``), the last (``F + 1``-th) frame dropped;
* magnitude, ``n_mels`` Slaney mel filters from ``f_min`` to ``f_max`` (default ``rate / 2``),
  natural log floored at ``log 1e-5``: ``log(max(mel, 1e-5))``, ``[n_mels, F]``.

Because the padding is zeros, a clip padded with more zeros has the same first ``F`` frames:
a training crop's mel (cut from the mel of the whole padded clip, at a crop start that is a
whole number of hops) equals the corresponding frames of the mel ``vocode`` computes.

The condition's values (:class:`MelKind`) are ``float [n, n_mels + 1, frames]``: the log-mel and a
presence flag channel (1 given, 0 for the null condition, all zeros), like
:class:`~diffuse.core.data.condition.ConcatKind`, but at the frame rate.

**The energy prior** (mel option ``prior``, on by default; PriorGrad, Lee et al. 2022): the model
space of a vocoder is the waveform divided by its envelope ``e`` as the mel tells it
(:func:`mel_envelope`: per frame ``sqrt(mean_b exp(2 mel_b))``, the frame's RMS to within a few
percent on the Asterisk speech (median ratio 1.04), floored at :data:`ENVELOPE_FLOOR`, linearly
interpolated to the samples). Diffusing ``x / e`` with standard Gaussian noise is diffusing ``x``
with PriorGrad's data-dependent prior ``N(0, diag(e^2))``: loud frames get loud noise, pauses
nearly none, so the network no longer has to learn the amplitude envelope, and an undertrained
model is quiet where the speech is. The domain multiplies samples by ``e`` again
(``AudioDomain.to_data``).
"""

from __future__ import annotations

from typing import Any

import torch
import torchaudio.functional as AF
from torch import Tensor

from ...core.data.condition import Condition, ConditionKind
from ...core.data.domain import Batch, DomainDataset
from ...core.errors import ConfigError, DataError, UserInputError

__all__ = ["MEL_DEFAULTS", "LOG_FLOOR", "ENVELOPE_FLOOR", "mel_config", "speech_mel", "mel_envelope", "MelKind", "MelDataset", "check_mel_input",
           "vocoder_input"]

#: the mel's defaults (``data_options.mel``: ``true`` or a dict overriding these); ``f_max`` null = rate / 2
MEL_DEFAULTS: dict[str, Any] = {"n_fft": 512, "hop": 128, "n_mels": 64, "f_min": 20.0, "f_max": None, "prior": True}
#: the smallest envelope of the energy prior (-46 dBFS RMS): pauses are diffused at this scale
ENVELOPE_FLOOR = 0.005
#: ``log`` of the magnitude floor (the mel of digital silence)
LOG_FLOOR = float(torch.log(torch.tensor(1e-5)))
_fbanks: dict[tuple, Tensor] = {}


def mel_config(options: Any, rate: int) -> dict[str, Any]:
    """``true`` or ``{n_fft, hop, n_mels, f_min, f_max}`` (defaults :data:`MEL_DEFAULTS`) -> the
    resolved config at ``rate`` (``f_max`` filled in); a ConfigError naming a bad value."""
    given = {} if options is True else options
    if not isinstance(given, dict):
        raise ConfigError(f"data option mel must be true or a dict of {', '.join(MEL_DEFAULTS)}, got {options!r}")
    unknown = sorted(set(given) - set(MEL_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown mel option(s) {', '.join(unknown)}; known: {', '.join(MEL_DEFAULTS)}")
    cfg = {**MEL_DEFAULTS, **given}
    for key in ("n_fft", "hop", "n_mels"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"mel option {key} must be a positive integer, got {v!r}")
    if not isinstance(cfg["prior"], bool):
        raise ConfigError(f"mel option prior must be true or false, got {cfg['prior']!r}")
    if cfg["hop"] > cfg["n_fft"]:
        raise ConfigError(f"mel hop ({cfg['hop']}) must not exceed n_fft ({cfg['n_fft']})")
    cfg["f_max"] = float(rate) / 2 if cfg["f_max"] is None else float(cfg["f_max"])
    cfg["f_min"] = float(cfg["f_min"])
    if not 0 <= cfg["f_min"] < cfg["f_max"] <= rate / 2:
        raise ConfigError(f"mel needs 0 <= f_min < f_max <= rate / 2 ({rate / 2:g} Hz), got "
                          f"{cfg['f_min']:g} and {cfg['f_max']:g}")
    cfg["rate"] = int(rate)
    return cfg


def _fbank(cfg: dict[str, Any]) -> Tensor:
    key = (cfg["n_fft"], cfg["n_mels"], cfg["f_min"], cfg["f_max"], cfg["rate"])
    if key not in _fbanks:
        _fbanks[key] = AF.melscale_fbanks(cfg["n_fft"] // 2 + 1, cfg["f_min"], cfg["f_max"], cfg["n_mels"],
                                          cfg["rate"], norm="slaney", mel_scale="slaney")
    return _fbanks[key]


def speech_mel(x: Tensor, cfg: dict[str, Any]) -> Tensor:
    """Log-mel ``[..., n_mels, ceil(N / hop)]`` of waveforms ``[..., N]`` (see the module docstring)."""
    x = x.detach().float().cpu()
    shape, n = x.shape[:-1], x.shape[-1]
    hop, n_fft = cfg["hop"], cfg["n_fft"]
    frames = max(1, -(-n // hop))
    flat = torch.nn.functional.pad(x.reshape(-1, n), (0, frames * hop - n))
    spec = torch.stft(flat, n_fft, hop, window=torch.hann_window(n_fft), center=True, pad_mode="constant",
                      return_complex=True).abs()[..., :frames]                       # [B, freq, F]
    mel = torch.matmul(spec.transpose(1, 2), _fbank(cfg)).transpose(1, 2)           # [B, n_mels, F]
    return torch.log(mel.clamp(min=1e-5)).reshape(*shape, cfg["n_mels"], frames)


def mel_envelope(mel: Tensor, length: int, hop: int) -> Tensor:
    """The energy prior's envelope ``[..., length]`` of a log-mel ``[..., n_mels, F]`` (module
    docstring): frame ``k``'s value at sample ``k * hop``, linear in between, constant past the ends."""
    frame = torch.exp(2 * mel.float()).mean(-2).sqrt().clamp(min=ENVELOPE_FLOOR)          # [..., F]
    shape = frame.shape[:-1]
    f = frame.reshape(-1, 1, frame.shape[-1])
    pos = torch.arange(length, dtype=torch.float32) / hop                                  # frame position
    lo = pos.floor().long().clamp(max=f.shape[-1] - 1)
    hi = (lo + 1).clamp(max=f.shape[-1] - 1)
    w = (pos - lo.float()).clamp(0, 1)
    out = f[..., lo] * (1 - w) + f[..., hi] * w
    return out.reshape(*shape, length)


class MelKind(ConditionKind):
    """A log-mel spectrogram ``[n_mels, frames]`` (see the module docstring); values
    ``[n, n_mels + 1, frames]`` with the presence flag. ``frames``: the training crop's, used
    for the null value; :meth:`parse` takes any number of frames (vocoding a longer clip)."""

    type = "mel"

    def __init__(self, n_mels: int, frames: int, hop: int) -> None:
        self.n_mels, self.frames, self.hop = int(n_mels), int(frames), int(hop)

    def null(self, n, device=None):
        return torch.zeros(n, self.n_mels + 1, self.frames, device=device)

    def with_flag(self, values: Tensor) -> Tensor:
        return torch.cat([values, torch.ones_like(values[:, :1])], 1)

    def parse(self, value, n):
        v = torch.as_tensor(value, dtype=torch.float32)
        if v.ndim == 2:
            v = v.expand(n, *v.shape)
        if v.ndim != 3 or v.shape[0] != n or v.shape[1] != self.n_mels or v.shape[2] < 1:
            raise UserInputError(f"a mel condition must have shape [{self.n_mels}, frames] (or [{n}, "
                                 f"{self.n_mels}, frames]), got {list(v.shape)}")
        if not bool(torch.isfinite(v).all()):
            raise UserInputError("the mel condition holds NaN or infinite values")
        return self.with_flag(v.clone())

    def spec(self):
        return {"type": self.type, "n_mels": self.n_mels, "frames": self.frames, "hop": self.hop}

    def describe(self, values):
        return [None if float(row[-1].max()) == 0 else f"mel, {row.shape[-1]} frames" for row in values]


class MelDataset(DomainDataset):
    """Wraps an :class:`~diffuse.domains.audio.data.AudioDataset`: each batch carries
    ``cond["mel"]``, the log-mel of its crops, and (with the energy prior) the crops divided by
    their envelope. A clip is zero-padded to a whole number of hops
    (and at least one crop), its mel computed once (cached) and crops start at whole hops,
    so a crop's mel is cut from the whole clip's (module docstring). The crop length is the
    base's, rounded down to whole hops."""

    def __init__(self, base: Any, options: Any) -> None:
        self.base = base
        info = base.info()
        self.rate = int(info["sample_rate"])
        self.cfg = mel_config(options, self.rate)
        if int(info.get("channels", 1)) != 1:
            raise ConfigError("a mel-conditioned (vocoder) model needs mono audio (channels: 1)")
        hop = self.cfg["hop"]
        self.frames = int(info["length"]) // hop
        if self.frames < 1:
            raise ConfigError(f"clip_seconds is shorter than one mel hop ({hop} samples at {self.rate} Hz)")
        self.length = self.frames * hop
        self.kind = MelKind(self.cfg["n_mels"], self.frames, hop)
        self._mels: dict[int, tuple[Tensor, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.base)

    def info(self) -> dict[str, Any]:
        cfg = {k: v for k, v in self.cfg.items() if k != "rate"}
        return {**self.base.info(), "length": self.length, "clip_seconds": self.length / self.rate, "mel": cfg}

    def clip_and_mel(self, i: int) -> tuple[Tensor, Tensor]:
        """Clip ``i`` zero-padded to whole hops (and at least one crop), ``[1, N']``, and its mel."""
        if i not in self._mels:
            clip = self.base.clips[i]
            x = clip if isinstance(clip, Tensor) else clip[:, 0:clip.shape[1]]
            hop = self.cfg["hop"]
            n = max(-(-x.shape[-1] // hop) * hop, self.length)
            x = torch.nn.functional.pad(x.float(), (0, n - x.shape[-1]))
            self._mels[i] = (x, speech_mel(x[0], self.cfg))
        return self._mels[i]

    def batch(self, indices, generator=None):
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        xs, mels = [], []
        for i in idx.tolist():
            x, mel = self.clip_and_mel(i)
            last = mel.shape[-1] - self.frames
            k = int(torch.randint(0, last + 1, (1,), generator=generator)) if (self.base.crop == "random" and last) else 0
            crop, m = x[:, k * self.kind.hop:k * self.kind.hop + self.length], mel[:, k:k + self.frames]
            xs.append(crop / mel_envelope(m, self.length, self.kind.hop) if self.cfg["prior"] else crop)
            mels.append(m)
        values = {"mel": self.kind.with_flag(torch.stack(mels))}
        kinds: dict[str, ConditionKind] = {"mel": self.kind}
        return Batch(torch.stack(xs), self.base.space, Condition(values, kinds))

    def __getattr__(self, name: str):
        if name in ("base",):
            raise AttributeError(name)
        return getattr(self.base, name)


def check_mel_input(mel: Any, n_mels: int, what: str) -> Tensor:
    """A user's log-mel array ``[n_mels, frames]`` (``--mel FILE.npy``) as float32; a DataError
    naming ``what`` otherwise."""
    t = torch.as_tensor(mel)
    if t.dtype not in (torch.float16, torch.float32, torch.float64) or t.ndim != 2 or t.shape[0] != n_mels \
            or t.shape[1] < 1:
        raise DataError(f"{what}: expected a float array of shape [{n_mels}, frames] (a log-mel), got "
                        f"{str(t.dtype).replace('torch.', '')} {list(t.shape)}")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise DataError(f"{what}: the mel holds NaN or infinite values")
    return t


def vocoder_input(path: Any, data_info: dict[str, Any]) -> tuple[Tensor, Tensor, int]:
    """A clip read as the vocoder's training data was (mono, the model's rate, its normalisation),
    zero-padded to whole hops: ``(clip [1, F * hop], log-mel [n_mels, F], samples of the clip)``."""
    from .io import normalise, read_audio, resample, to_channels

    rate = int(data_info["sample_rate"])
    cfg = mel_config(dict(data_info["mel"]), rate)
    x, file_rate = read_audio(path)
    x = normalise(resample(to_channels(x, 1, str(path)), file_rate, rate), str(data_info.get("normalise", "peak")),
                  str(path))
    n = x.shape[-1]
    hop = cfg["hop"]
    x = torch.nn.functional.pad(x, (0, -(-n // hop) * hop - n))
    return x, speech_mel(x[0], cfg), n
