"""Speech-quality metrics that run offline, and the Griffin-Lim baseline of a vocoder.

Paired (a resynthesised or restored clip ``x`` against the real clip ``y``, same length, mono):

* :func:`mel_cepstral_distortion` - MCD in dB, ``(10 / ln 10) * sqrt(2 * sum_d (c_d - c'_d)^2)``
  averaged over frames (Kubichek 1993), d = 1 .. 24 (the energy term c_0 left out). The
  cepstra ``c`` are the orthonormal DCT-II of the natural-log mel *amplitude* (40 Slaney mel
  bands from 0 Hz to Nyquist of a 32 ms Hann-window STFT, 8 ms hop; both clips' mel powers
  floored 60 dB below the reference's strongest band, :data:`DYNAMIC_RANGE_DB`),
  i.e. MFCC-style mel cepstra, not SPTK's all-pass warped ``mcep``: figures compare systems
  measured here, not published MCDs. Frames are time-aligned (no DTW: resynthesis keeps time);
  only the reference's speech frames count (energy within :data:`SPEECH_FRAMES_DB` = 40 dB of its
  loudest frame), as MCD is usually reported over speech: noise in pauses is what log-mel L1
  and DNSMOS's BAK see.
* :func:`~diffuse.domains.audio.metrics.log_mel_l1` (the audio domain's, 64 bands at 16 kHz).
* :func:`pesq_score` (ITU-T P.862 through the ``pesq`` package; narrow band at 8 kHz, wide band
  at 16 kHz) and :func:`stoi_score` (Taal et al. 2011, ``pystoi``): optional, ``None`` when the
  package is not installed (``pip install "diffuse[speech]"``).

Reference-free:

* :func:`dnsmos` - DNSMOS P.835 (Reddy et al. 2022): SIG, BAK and OVRL predicted by Microsoft's
  ONNX model that ships inside the ``speechmos`` wheel, run with ``onnxruntime``; the clip is
  resampled to 16 kHz and repeated to the model's 9.01 s window as ``speechmos`` does, and the
  raw outputs mapped through its published polynomials. (``speechmos`` itself imports librosa
  and requests at import time; we read its model files only.) The P.808 head, which needs
  librosa's mel, is left out.

Baseline: :func:`griffin_lim_from_mel` inverts the vocoder's own log-mel (least-squares mel
inversion with ``torchaudio.transforms.InverseMelScale``, then Griffin-Lim phase retrieval,
Griffin & Lim 1984, 64 iterations with momentum 0.99, ``torchaudio.transforms.GriffinLim``).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio
import torchaudio.functional as AF
from torch import Tensor

from .io import resample

__all__ = ["mel_cepstral_distortion", "paired_metrics", "pesq_score", "stoi_score", "dnsmos", "dnsmos_available",
           "griffin_lim_from_mel", "MCD_ORDER"]

MCD_ORDER = 24
#: MCD counts the reference's speech frames: those within this many dB of its loudest frame
SPEECH_FRAMES_DB = 40.0
#: mel powers are floored this many dB below the reference clip's strongest band and frame (both clips)
DYNAMIC_RANGE_DB = 60.0
_MCD_MELS = 40


def _mel_power(x: Tensor, rate: int) -> tuple[Tensor, Tensor]:
    """``[B, N]`` -> mel power ``[B, frames, 40]`` and each frame's energy in dB ``[B, frames]``."""
    n_fft, hop = int(round(0.032 * rate)), int(round(0.008 * rate))
    spec = torch.stft(x.double(), n_fft, hop, window=torch.hann_window(n_fft, dtype=torch.float64), center=True,
                      pad_mode="constant", return_complex=True).abs().pow(2)            # [B, freq, T]
    fb = AF.melscale_fbanks(n_fft // 2 + 1, 0.0, rate / 2, _MCD_MELS, rate, norm="slaney",
                            mel_scale="slaney").double()
    return torch.matmul(spec.transpose(1, 2), fb), 10 * torch.log10(spec.sum(1).clamp(min=1e-20))


def _cepstra(power: Tensor, floor: Tensor) -> Tensor:
    """Mel power ``[B, T, 40]`` floored at ``floor [B, 1, 1]`` -> c_1 .. c_24 of the log amplitude."""
    dct = AF.create_dct(MCD_ORDER + 1, _MCD_MELS, norm="ortho").double()                # [mels, order + 1]
    return torch.matmul(0.5 * torch.log(torch.maximum(power, floor)), dct)[..., 1:]


def _mono(x: Tensor) -> Tensor:
    x = torch.nan_to_num(x.detach().float().cpu()).clamp(-1, 1)
    return x.mean(1) if x.ndim == 3 else x.reshape(-1, x.shape[-1])


def mel_cepstral_distortion(x: Tensor, y: Tensor, rate: int) -> Tensor:
    """Per-clip MCD (dB) of ``x`` against ``y`` (``[B, C, N]`` or ``[B, N]``), ``[B]`` float64."""
    if x.shape != y.shape:
        raise ValueError(f"paired speech metrics need equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    (px, _), (py, ey) = _mel_power(_mono(x), rate), _mel_power(_mono(y), rate)
    floor = py.flatten(1).amax(1).clamp(min=1e-20).view(-1, 1, 1) * 10 ** (-DYNAMIC_RANGE_DB / 10)
    cx, cy = _cepstra(px, floor), _cepstra(py, floor)
    speech = ey >= ey.amax(-1, keepdim=True) - SPEECH_FRAMES_DB
    d = (10 / math.log(10)) * torch.sqrt(2 * (cx - cy).pow(2).sum(-1))
    return (d * speech).sum(-1) / speech.sum(-1)


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def pesq_score(x: Tensor, y: Tensor, rate: int) -> list[float] | None:
    """Per-clip PESQ (MOS-LQO) of ``x`` (degraded) against ``y`` (reference): narrow band at 8 kHz,
    wide band at 16 kHz (other rates are resampled to 16 kHz); ``None`` without ``pesq``. A clip
    PESQ cannot score (no utterance detected) is NaN."""
    if not _available("pesq"):
        return None
    from pesq import pesq
    fs = rate if rate in (8000, 16000) else 16000
    xs, ys = (resample(_mono(v), rate, fs).numpy().astype(np.float64) for v in (x, y))
    out = []
    for a, b in zip(xs, ys):
        try:
            out.append(float(pesq(fs, b, a, "nb" if fs == 8000 else "wb")))
        except Exception:  # noqa: BLE001 - pesq raises its own errors for clips without speech
            out.append(float("nan"))
    return out


def stoi_score(x: Tensor, y: Tensor, rate: int) -> list[float] | None:
    """Per-clip STOI (0..1) of ``x`` against the clean ``y``; ``None`` without ``pystoi``."""
    if not _available("pystoi"):
        return None
    from pystoi import stoi
    return [float(stoi(b, a, rate, extended=False)) for a, b in zip(_mono(x).numpy(), _mono(y).numpy())]


def paired_metrics(x: Tensor, y: Tensor, rate: int) -> dict[str, float]:
    """Means over clips: ``mcd_db``, ``log_mel_l1`` and, where installed, ``pesq`` and ``stoi``."""
    from .metrics import log_mel_l1
    out = {"mcd_db": float(mel_cepstral_distortion(x, y, rate).mean()),
           "log_mel_l1": float(log_mel_l1(_mono(x)[:, None], _mono(y)[:, None], rate).mean())}
    for name, fn in (("pesq", pesq_score), ("stoi", stoi_score)):
        vals = fn(x, y, rate)
        if vals is not None:
            out[name] = float(np.nanmean(vals)) if not all(np.isnan(vals)) else float("nan")
    return out


# ------------------------------------------------------------------ DNSMOS
_DNSMOS_RATE, _DNSMOS_SECONDS = 16000, 9.01
#: DNSMOS P.835's published polynomials from raw model outputs to MOS (non-personalised model)
_POLY = {"sig": (-0.08397278, 1.22083953, 0.0052439), "bak": (-0.13166888, 1.60915514, -0.39604546),
         "ovrl": (-0.06766283, 1.11546468, 0.04602535)}
_session: dict[str, Any] = {}


def _dnsmos_model() -> Path | None:
    spec = importlib.util.find_spec("speechmos")
    if spec is None or not spec.submodule_search_locations or not _available("onnxruntime"):
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "dnsmos_models" / "sig_bak_ovr.onnx"
    return path if path.is_file() else None


def dnsmos_available() -> bool:
    """Whether :func:`dnsmos` can run (``speechmos`` and ``onnxruntime`` installed)."""
    return _dnsmos_model() is not None


def dnsmos(x: Tensor, rate: int) -> dict[str, list[float]] | None:
    """Per-clip DNSMOS P.835 ``{"sig", "bak", "ovrl"}`` (1..5, higher is better) of ``[B, C, N]``
    at ``rate``; ``None`` without ``speechmos`` / ``onnxruntime`` (module docstring)."""
    path = _dnsmos_model()
    if path is None:
        return None
    if "sess" not in _session:
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        _session["sess"] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    sess = _session["sess"]
    need = int(_DNSMOS_SECONDS * _DNSMOS_RATE)
    out: dict[str, list[float]] = {"sig": [], "bak": [], "ovrl": []}
    for clip in resample(_mono(x), rate, _DNSMOS_RATE).numpy():
        audio = clip.astype(np.float32)
        if not np.any(audio):
            audio = audio + np.float32(1e-6)
        while len(audio) < need:                       # repeated to the window, as speechmos does
            audio = np.append(audio, audio)
        hops = int(np.floor(len(audio) / _DNSMOS_RATE) - _DNSMOS_SECONDS) + 1
        raw = []
        for i in range(max(1, hops)):
            seg = audio[i * _DNSMOS_RATE:i * _DNSMOS_RATE + need]
            if len(seg) < need:
                continue
            raw.append(sess.run(None, {"input_1": seg[None]})[0][0])
        sig, bak, ovr = np.mean(np.array(raw), 0)
        for key, value in (("sig", sig), ("bak", bak), ("ovrl", ovr)):
            out[key].append(float(np.poly1d(_POLY[key])(value)))
    return out


# ------------------------------------------------------------------ Griffin-Lim baseline
def griffin_lim_from_mel(mel: Tensor, cfg: dict[str, Any], length: int, iters: int = 64) -> Tensor:
    """A waveform ``[1, length]`` from the log-mel of :func:`~diffuse.domains.audio.mel.speech_mel`
    (``[n_mels, F]``, config ``cfg``): mel amplitude -> linear magnitude by non-negative least
    squares (``InverseMelScale``) -> Griffin-Lim (``momentum`` 0.99), seeded."""
    n_fft, hop = cfg["n_fft"], cfg["hop"]
    amp = torch.exp(mel.double().cpu()).float()
    inv = torchaudio.transforms.InverseMelScale(n_fft // 2 + 1, cfg["n_mels"], cfg["rate"], cfg["f_min"], cfg["f_max"],
                                                norm="slaney", mel_scale="slaney")
    lin = inv(amp).clamp(min=0)
    lin = torch.cat([lin, lin[:, -1:]], 1)             # the dropped last frame (speech_mel keeps F of F + 1)
    torch.manual_seed(0)
    gl = torchaudio.transforms.GriffinLim(n_fft, n_iter=iters, hop_length=hop, power=1.0, momentum=0.99,
                                          length=mel.shape[-1] * hop)
    wav = gl(lin)[..., :length]
    return torch.nn.functional.pad(wav, (0, max(0, length - wav.shape[-1])))[None]
