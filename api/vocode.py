"""A neural vocoder: a waveform from a log-mel spectrogram with a mel-conditioned model.

    import diffuse.api as diffuse

    model = diffuse.load("runs/vocoder")               # or diffuse.load_pretrained("vocoder")
    out = diffuse.vocode(model, "speech.wav")          # resynthesis from the clip's own mel
    out = diffuse.vocode(model, mel="speech.npy")      # from a log-mel [n_mels, frames]
    model.write(out.samples, "out/")

A vocoder is a model trained with ``--condition mel`` (the clip's log-mel, as the domain computes
it in training: ``domains.audio.mel.speech_mel``); its network is fully convolutional, so it
vocodes a clip of any length in one pass. Sampling is the model's own sampler with the domain's
default few-step setting (WaveGrad-style, Chen et al. 2021) unless ``sampler`` / ``steps`` say
otherwise. Paired metrics of a resynthesis against its input: :func:`vocode_metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..core.data.domain import Batch
from ..core.errors import DataError, NotSupportedError, UserInputError
from .model import DiffusionModel

__all__ = ["VocodeResult", "is_vocoder", "require_vocoder", "read_mel", "vocode", "vocode_metrics"]


@dataclass
class VocodeResult:
    """What :func:`vocode` returns: the waveform (``samples.x``: ``[1, 1, N]`` at ``rate``), the
    mel it was generated from, the clip as the model read it (``reference``, ``None`` for a mel
    input), and the sampler and steps run."""

    samples: Batch
    rate: int
    mel: torch.Tensor
    reference: torch.Tensor | None
    sampler: str
    steps: int


def is_vocoder(model: DiffusionModel) -> bool:
    """Whether ``model`` is conditioned on a mel spectrogram (trained with ``--condition mel``)."""
    return "mel" in model.condition_kinds()


def require_vocoder(model: DiffusionModel) -> None:
    """A NotSupportedError unless ``model`` is a vocoder whose domain reads clips for it."""
    if not is_vocoder(model) or not hasattr(model.domain, "vocoder_input"):
        raise NotSupportedError(f"this {model.domain.name} model is not a vocoder (train one with --condition mel, "
                                f"e.g. diffuse train --config recipes/vocoder.json)")


def read_mel(path: str | Path) -> np.ndarray:
    """A ``.npy`` array from ``path`` (never pickled objects); a DataError naming the file otherwise."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such mel file; expected a .npy array [n_mels, frames]")
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{p}: cannot read a .npy array ({str(exc).splitlines()[0] if str(exc) else 'corrupt'})") \
            from None


def vocode(model: DiffusionModel, input: str | Path | None = None, *, mel: Any = None, sampler: str | None = None,
           steps: int | None = None, spacing: str | None = None, seed: int = 0,
           progress: Callable[[int], None] | None = None, **sampler_options: Any) -> VocodeResult:
    """A waveform from ``input`` (a clip, resynthesised from its own mel) or ``mel`` (a ``.npy``
    path or an array ``[n_mels, frames]``, natural-log mel amplitude as the model's data). Exactly
    one of the two. The output has the clip's length (``input``) or ``frames * hop`` samples."""
    require_vocoder(model)
    if (input is None) == (mel is None):
        raise UserInputError("give exactly one of --input (a clip to resynthesise) and --mel (a .npy log-mel)")
    dom = model.domain
    reference = None
    if input is not None:
        if str(input).strip() == "":
            raise UserInputError("--input is an empty path; give a WAV / FLAC / OGG clip")
        clip, mel_t, n = dom.vocoder_input(input)
        reference = clip[None, ..., :n]
    else:
        array = read_mel(mel) if isinstance(mel, (str, Path)) else mel
        mel_t = dom.vocoder_mel(array, str(mel) if isinstance(mel, (str, Path)) else "the mel array")
        n = None
    hop = int(dom.info["mel"]["hop"])
    length = int(mel_t.shape[-1]) * hop
    sampler, steps = model.default_sampling(sampler, steps)
    samples = model.sample(1, cond={"mel": mel_t}, structure=length, sampler=sampler, steps=steps, spacing=spacing,
                           seed=seed, batch_size=1, progress=progress, **sampler_options)
    if n is not None:
        samples = Batch(samples.x[..., :n], samples.space, samples.cond, samples.extras)
    return VocodeResult(samples, int(dom.info["sample_rate"]), mel_t, reference, sampler,
                        model.steps_for(sampler, steps))


def vocode_metrics(model: DiffusionModel, result: VocodeResult) -> dict[str, float]:
    """Paired speech metrics of a resynthesis against the clip it came from (MCD, log-mel L1 and,
    where installed, PESQ and STOI: ``domains.audio.speech_metrics``); ``{}`` for a mel input."""
    if result.reference is None:
        return {}
    return model.domain.paired_speech_metrics(result.samples.x, result.reference)
