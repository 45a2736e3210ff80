"""Audio inputs for completion and editing (``AudioDomain.completion_input``): a clip in the
model's space (channels, sample rate and normalisation of the training data) and its mask.
The sampling itself is ``core.sampling.completion``.

Options: ``span`` (one or more ``START:END`` in seconds, the gaps to fill; the clip must cover
them) and / or ``continue`` (seconds to generate past the clip's end: outpainting). The clip,
plus any continuation, must fit in the model's clip length; the model's samples past that are
generated freely and cut off: the output has the clip's length plus the continuation
(``extras["keep_length"]``, read by the writer).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...core.data.condition import ConcatKind, Condition
from ...core.data.domain import Batch, DomainDataset
from ...core.errors import DataError, UserInputError
from ...core.data.space import DenseSpace
from .io import normalise, read_audio, resample, to_channels

__all__ = ["audio_completion_input", "parse_spans", "band_limit", "LowRateDataset", "lowrate_condition"]


def _seconds(value: Any, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{what} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(v):
        raise UserInputError(f"{what} must be a finite number of seconds, got {value!r}")
    return v


def parse_spans(value: Any) -> list[tuple[float, float]]:
    """``"0.2:0.3"``, a list of those, or ``(start, end)`` pairs -> ``[(start, end), ...]`` seconds."""
    items = [value] if isinstance(value, str) or (isinstance(value, (tuple, list)) and len(value) == 2
                                                   and not isinstance(value[0], (str, tuple, list))) else list(value)
    out = []
    for item in items:
        if isinstance(item, str):
            parts = item.split(":")
            if len(parts) != 2:
                raise UserInputError(f"--span must be START:END in seconds (e.g. 0.2:0.3), got {item!r}")
        else:
            parts = list(item)
        a, b = (_seconds(p, "--span") for p in parts)
        if not 0 <= a < b:
            raise UserInputError(f"--span {a:g}:{b:g} must have 0 <= START < END")
        out.append((a, b))
    return out


def audio_completion_input(path: str | Path, options: dict[str, Any], data_info: dict[str, Any]) -> tuple[Batch, Tensor]:
    unknown = sorted(set(options) - {"span", "continue"})
    if unknown:
        raise UserInputError(f"audio completion takes span or continue, not {', '.join(unknown)}")
    rate, length = int(data_info["sample_rate"]), int(data_info["length"])
    spans = parse_spans(options["span"]) if options.get("span") else []
    extra = 0
    if options.get("continue") is not None:
        cont = _seconds(options["continue"], "--continue")
        if cont <= 0:
            raise UserInputError(f"--continue must be a positive number of seconds, got {options['continue']!r}")
        extra = int(round(cont * rate))
    x, file_rate = read_audio(path)
    x = to_channels(x, int(data_info.get("channels", 1)), str(path))
    x = resample(x, file_rate, rate)
    x = normalise(x, str(data_info.get("normalise", "peak")), str(path))
    n = x.shape[-1]
    if n + extra > length:
        what = f"the clip ({n / rate:.3f} s)"
        if extra:
            what += f" plus --continue ({extra / rate:.3f} s)"
        raise DataError(f"{what} is longer than this model's clips ({length / rate:.3f} s); use a shorter input")
    known = torch.ones(1, 1, length, dtype=torch.bool)
    for a, b in spans:
        if b * rate > n + 1e-6:
            raise UserInputError(f"--span {a:g}:{b:g} lies outside the clip (0:{n / rate:.3f} s)")
        known[..., int(round(a * rate)):int(round(b * rate))] = False
    known[..., n:n + extra] = False
    keep = n + extra
    if keep < length:   # past what is kept: generated freely (never written), not imposed silence
        known[..., keep:] = False
    clip = torch.nn.functional.pad(x, (0, length - n))[None].float()
    return Batch(clip, DenseSpace(), None, {"keep_length": keep}), known


# ------------------------------------------------------------------ bandwidth extension
def band_limit(x: Tensor, rate: int, low_rate: int) -> Tensor:
    """``x`` (at ``rate``) resampled to ``low_rate`` and back: what a low-rate recording keeps,
    at the model's rate (band-limited sinc resampling both ways; also the baseline)."""
    low = resample(x, rate, low_rate)
    out = resample(low, low_rate, rate)
    n = x.shape[-1]
    return torch.nn.functional.pad(out, (0, max(0, n - out.shape[-1])))[..., :n]


def check_lowrate(low_rate: Any, rate: int) -> int:
    if isinstance(low_rate, bool) or not isinstance(low_rate, int) or not 0 < low_rate < rate:
        raise UserInputError(f"lowrate must be a whole number of Hz below the sample rate ({rate}), got {low_rate!r}")
    return low_rate


class LowRateDataset(DomainDataset):
    """Wraps an audio dataset: every batch carries ``cond["lowrate"]``, its clips band-limited to
    ``low_rate`` (a :class:`ConcatKind`, concatenated to the U-Net input). Class labels are not
    fed to such a model."""

    def __init__(self, base: DomainDataset, low_rate: int) -> None:
        self.base = base
        info = base.info()
        self.rate = int(info["sample_rate"])
        self.low_rate = check_lowrate(low_rate, self.rate)
        self.kind = ConcatKind(int(info["channels"]), [int(info["length"])])

    def __len__(self) -> int:
        return len(self.base)

    def info(self):
        return {**self.base.info(), "lowrate": self.low_rate}

    def batch(self, indices, generator=None):
        b = self.base.batch(indices, generator)
        cond = Condition({"lowrate": self.kind.with_flag(band_limit(b.x, self.rate, self.low_rate))},
                         {"lowrate": self.kind})
        return Batch(b.x, b.space, cond, b.extras)

    def __getattr__(self, name: str):
        if name in ("base",):
            raise AttributeError(name)
        return getattr(self.base, name)


def lowrate_condition(path: str | Path, data_info: dict[str, Any]) -> dict[str, Tensor]:
    """``{"lowrate": [C, L]}`` from a clip of any rate: band-limited to the model's ``lowrate``,
    at the model's rate, padded to its clip length (a longer clip is an error)."""
    low = data_info.get("lowrate")
    if not low:
        raise UserInputError("this model was not trained for bandwidth extension; train with --condition lowrate")
    rate, length = int(data_info["sample_rate"]), int(data_info["length"])
    x, file_rate = read_audio(path)
    x = to_channels(x, int(data_info.get("channels", 1)), str(path))
    x = normalise(resample(x, file_rate, rate), str(data_info.get("normalise", "peak")), str(path))
    if x.shape[-1] > length:
        raise DataError(f"the clip {path} ({x.shape[-1] / rate:.3f} s) is longer than this model's clips "
                        f"({length / rate:.3f} s)")
    x = band_limit(x, rate, int(low))
    return {"lowrate": torch.nn.functional.pad(x, (0, length - x.shape[-1]))}
