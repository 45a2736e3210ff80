"""Audio features for set-level metrics: log-mel / MFCC statistics and a small learned
feature network (the Frechet distances between Gaussians fitted to them are
:mod:`diffuse.core.frechet`'s, shared with the image FID).

All features are computed at :data:`FEATURE_RATE` (16 kHz): inputs at another rate are
resampled first, so numbers are comparable across data rates. Nothing is downloaded: the
feature network's weights (``data/feature_net.safetensors``, about 280 KB) were trained by
:func:`train_bundled_feature_net` on the bundled percussion clips and ship with the package.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from ...core.training.fit import fit, sampled_batches
from .io import resample

__all__ = ["FEATURE_RATE", "log_mel", "mel_stats", "mfcc_stats", "FeatureNet",
           "load_feature_net", "train_feature_net", "train_bundled_feature_net", "FEATURE_NET_PATH"]

log = logging.getLogger(__name__)
FEATURE_RATE = 16000
FEATURE_NET_PATH = Path(__file__).resolve().parent / "data" / "feature_net.safetensors"
_N_FFT, _HOP, _N_MELS = 512, 128, 64
_transforms: dict[str, nn.Module] = {}


def _mono16k(x: Tensor, rate: int) -> Tensor:
    """``[B, C, L]`` or ``[B, L]`` -> mono ``[B, L']`` at 16 kHz, finite, clipped to [-1, 1]."""
    x = x.detach().float().cpu()
    if x.ndim == 3:
        x = x.mean(1)
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1, 1)
    x = resample(x, int(rate), FEATURE_RATE)
    if x.shape[-1] < _N_FFT:
        x = F.pad(x, (0, _N_FFT - x.shape[-1]))
    return x


def _mel_transform() -> nn.Module:
    if "mel" not in _transforms:
        _transforms["mel"] = torchaudio.transforms.MelSpectrogram(
            FEATURE_RATE, n_fft=_N_FFT, hop_length=_HOP, n_mels=_N_MELS, f_min=20.0, power=2.0)
    return _transforms["mel"]


def _mfcc_transform() -> nn.Module:
    if "mfcc" not in _transforms:
        _transforms["mfcc"] = torchaudio.transforms.MFCC(
            FEATURE_RATE, n_mfcc=20, log_mels=True,
            melkwargs={"n_fft": _N_FFT, "hop_length": _HOP, "n_mels": _N_MELS, "f_min": 20.0})
    return _transforms["mfcc"]


def log_mel(x: Tensor, rate: int) -> Tensor:
    """Natural-log mel power spectrogram ``[B, 64, frames]`` at 16 kHz (n_fft 512, hop 128).

    The power is floored at 1e-3 (``log(mel + 1e-3)``), about the mel power of white noise at
    -60 dBFS (a full-scale tone reaches about 1e4), so that digital silence and a faint noise
    floor look the same to every feature and metric built on it."""
    return torch.log(_mel_transform()(_mono16k(x, rate)) + 1e-3)


def mel_stats(x: Tensor, rate: int) -> Tensor:
    """Per-clip mean and standard deviation over time of each log-mel band: ``[B, 128]``."""
    m = log_mel(x, rate)
    return torch.cat([m.mean(-1), m.std(-1)], dim=1).double()


def mfcc_stats(x: Tensor, rate: int) -> Tensor:
    """Per-clip mean and standard deviation over time of 20 MFCCs: ``[B, 40]``."""
    c = _mfcc_transform()(_mono16k(x, rate))
    return torch.cat([c.mean(-1), c.std(-1)], dim=1).double()


class FeatureNet(nn.Module):
    """A small CNN over log-mel frames (1-D convolutions across time with the 64 mel bands as
    channels, then mean + max pooling over time) giving a 64-d embedding and class logits.

    Trained as a classifier of the bundled percussion categories (kick, snare, tom, cymbal,
    tabla); the embedding before the classifier is the feature used by ``fd_net``, in the
    spirit of FID's Inception pool features (Heusel et al. 2017) and VGGish-based FAD
    (Kilgour et al. 2019), but small and trained here.
    """

    def __init__(self, num_classes: int = 5, width: int = 64, emb_dim: int = 64) -> None:
        super().__init__()
        # per-band log-mel statistics of the training clips (set by ``train_feature_net``)
        self.register_buffer("mel_mean", torch.zeros(_N_MELS))
        self.register_buffer("mel_std", torch.ones(_N_MELS))
        self.convs = nn.Sequential(
            nn.Conv1d(_N_MELS, width, 5, padding=2), nn.GELU(),
            nn.Conv1d(width, width, 5, padding=4, dilation=2), nn.GELU(),
            nn.Conv1d(width, width, 5, padding=8, dilation=4), nn.GELU(),
        )
        self.proj = nn.Linear(2 * width, emb_dim)
        self.head = nn.Linear(emb_dim, num_classes)

    def embed_mel(self, mel: Tensor) -> Tensor:
        h = self.convs((mel - self.mel_mean[:, None]) / self.mel_std[:, None])
        return self.proj(torch.cat([h.mean(-1), h.amax(-1)], dim=1))

    def forward(self, mel: Tensor) -> Tensor:
        return self.head(F.gelu(self.embed_mel(mel)))

    @torch.no_grad()
    def embed(self, x: Tensor, rate: int, batch_size: int = 64) -> Tensor:
        """Embeddings ``[B, 64]`` (float64) of waveforms ``[B, C, L]`` at ``rate``."""
        self.eval()
        outs = [self.embed_mel(log_mel(x[i:i + batch_size], rate)) for i in range(0, x.shape[0], batch_size)]
        return torch.cat(outs).double()


_cached_net: dict[str, FeatureNet] = {}


def load_feature_net(path: str | Path = FEATURE_NET_PATH) -> FeatureNet:
    """The shipped feature network (cached); raises ``FileNotFoundError`` if the file is missing."""
    from safetensors.torch import load_file
    key = str(path)
    if key not in _cached_net:
        state = load_file(str(path))
        net = FeatureNet(num_classes=state["head.weight"].shape[0])
        net.load_state_dict(state)
        _cached_net[key] = net.eval()
    return _cached_net[key]


def _augment(x: Tensor, g: torch.Generator) -> Tensor:
    """Random gain (-12..0 dB), random delay (up to 10 % of the clip) and noise at -70 dBFS
    (below the log-mel floor), all drawn from ``g``."""
    b, _, n = x.shape
    gain = 10 ** (-12 * torch.rand(b, 1, 1, generator=g) / 20)
    out = torch.zeros_like(x)
    for i in range(b):
        d = int(torch.randint(0, max(1, n // 10), (1,), generator=g))
        out[i, :, d:] = x[i, :, :n - d]
    return out * gain + 10 ** (-70 / 20) * torch.randn(x.shape, generator=g)


def train_feature_net(clips: Tensor, labels: Tensor, rate: int, num_classes: int, steps: int = 600,
                      batch_size: int = 32, lr: float = 2e-3, seed: int = 0) -> tuple[FeatureNet, float]:
    """Train a :class:`FeatureNet` classifier on waveforms ``[N, C, L]`` with labels ``[N]``:
    cross-entropy, AdamW (weight decay 0.01, constant ``lr``), batches drawn with replacement,
    augmentation of :func:`_augment`; seeded (:func:`~diffuse.core.training.fit.fit`). Returns the
    net and its final training accuracy on un-augmented clips."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = FeatureNet(num_classes)
    with torch.no_grad():
        mel = log_mel(clips, rate)
        net.mel_mean.copy_(mel.mean((0, 2)))
        net.mel_std.copy_(mel.std((0, 2)).clamp(min=1e-3))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-2)

    def loss(model: FeatureNet, idx: Tensor) -> Tensor:
        return F.cross_entropy(model(log_mel(_augment(clips[idx], g), rate)), labels[idx])

    fit(net, loss, sampled_batches(clips.shape[0], batch_size, g), steps, opt,
        log=lambda step, value: log.info("feature net step %d loss %.3f", step, value))
    with torch.no_grad():
        acc = float((net(log_mel(clips, rate)).argmax(1) == labels).float().mean())
    return net, acc


def train_bundled_feature_net(steps: int = 600, out: str | Path = FEATURE_NET_PATH, seed: int = 0) -> Path:
    """Reproduce the shipped ``feature_net.safetensors`` from the bundled clips (1 s at 16 kHz)."""
    from safetensors.torch import save_file

    from .data import load_bundled
    ds = load_bundled({"sample_rate": FEATURE_RATE, "clip_seconds": 1.0, "labels": True})
    b = ds.batch(torch.arange(len(ds)))
    net, acc = train_feature_net(b.x, b.cond["label"], ds.sample_rate, len(ds.classes), steps=steps, seed=seed)
    log.info("feature net: training accuracy %.3f on %d clips", acc, len(ds))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))
    Path(out).chmod(0o644)
    return Path(out)
