"""A DiffWave-style dilated residual network for mel-conditioned waveform diffusion (a vocoder).

The architecture of DiffWave (Kong et al. 2021, "DiffWave: A Versatile Diffusion Model for
Audio Synthesis", Sec. 3 and Fig. 2), written for this framework's backbone contract:

* the waveform ``[B, 1, L]`` -> 1x1 convolution to ``C`` residual channels, ReLU;
* ``layers`` residual layers, dilation ``2 ** (i % dilation_cycle)``: ``y = x + W_t e(t)``,
  ``y = DilatedConv_k3(y) + c_i`` (``2C`` channels), gated ``sigmoid(gate) * tanh(filter)``,
  a 1x1 convolution to a residual half (``x <- (x + r) / sqrt 2``) and a skip half;
* the skips summed (``/ sqrt(layers)``) -> 1x1, ReLU -> 1x1 (zero-initialised) -> ``[B, 1, L]``;
* the noise level through DiffWave's embedding MLP (sinusoidal 128 -> 512 -> 512, SiLU),
  projected per layer.

The mel condition (:mod:`~diffuse.domains.audio.mel`, ``cond["mel"]`` ``[B, n_mels + 1, F]`` with
``F = L / hop``) is normalised, passed through a small frame-rate network (two kernel-3
convolutions, leaky ReLU 0.4 as DiffWave's upsampler) and projected to every layer's ``2C``
conditioner channels *at the frame rate*; only then is it upsampled to the waveform by linear
interpolation. DiffWave upsamples first (two transposed convolutions, x16 each) and projects at
the waveform rate; a 1x1 projection commutes with linear interpolation, so projecting first
computes the same kind of per-layer conditioner ``hop`` times cheaper (the reason this network
trains several times faster per CPU second than DiffWave's code at the same width and depth).

A concatenated condition (``in_cond_channels``, e.g. a noisy clip) joins the waveform at the
input projection. Shapes: ``x [B, C_in, L]``, ``noise_level [B]``, output ``[B, C_in, L]``; any
``L`` (the mel is interpolated to exactly ``L`` samples).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...core.data.condition import Condition, concat_inputs
from ...core.errors import UserInputError
from ..layers import timestep_embedding

__all__ = ["WaveNet", "MEL_CENTER", "MEL_SCALE"]

#: the fixed normalisation of the natural-log mel inside the network: ``(mel - MEL_CENTER) / MEL_SCALE``
MEL_CENTER, MEL_SCALE = -4.0, 4.0


class _Layer(nn.Module):
    def __init__(self, channels: int, dilation: int, emb_dim: int) -> None:
        super().__init__()
        self.dilated = nn.Conv1d(channels, 2 * channels, 3, padding=dilation, dilation=dilation)
        self.time = nn.Linear(emb_dim, channels)
        self.out = nn.Conv1d(channels, 2 * channels, 1)
        nn.init.kaiming_normal_(self.dilated.weight)
        nn.init.kaiming_normal_(self.out.weight)

    def forward(self, x: Tensor, emb: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        y = self.dilated(x + self.time(emb)[..., None])
        if cond is not None:
            y = y + cond
        gate, filt = y.chunk(2, dim=1)
        residual, skip = self.out(torch.sigmoid(gate) * torch.tanh(filt)).chunk(2, dim=1)
        return (x + residual) * (1 / math.sqrt(2.0)), skip


class WaveNet(nn.Module):
    """DiffWave-style vocoder network (see the module docstring).

    Args:
        in_channels: audio channels (1).
        residual_channels: ``C`` (DiffWave: 64 base, 128 large).
        layers: residual layers (DiffWave: 30).
        dilation_cycle: dilations ``1, 2, .., 2 ** (dilation_cycle - 1)``, repeated (DiffWave: 10).
        n_mels: mel bands of the condition (0: no mel, an unconditional network).
        cond_channels: width of the frame-rate mel network.
        emb_dim: width of the noise-level embedding (DiffWave: 512).
        in_cond_channels: channels of a condition concatenated to the input (with its flag).
    """

    def __init__(self, in_channels: int = 1, residual_channels: int = 64, layers: int = 30, dilation_cycle: int = 10,
                 n_mels: int = 80, cond_channels: int = 128, emb_dim: int = 512, in_cond_channels: int = 0) -> None:
        super().__init__()
        for name, v in (("residual_channels", residual_channels), ("layers", layers),
                        ("dilation_cycle", dilation_cycle), ("cond_channels", cond_channels), ("emb_dim", emb_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserInputError(f"wavenet option {name} must be a positive integer, got {v!r}")
        self.in_channels, self.n_mels, self.layers_n = int(in_channels), int(n_mels), int(layers)
        self.in_cond_channels = int(in_cond_channels)
        c = int(residual_channels)
        self.input = nn.Conv1d(self.in_channels + self.in_cond_channels, c, 1)
        nn.init.kaiming_normal_(self.input.weight)
        self.time_mlp = nn.Sequential(nn.Linear(128, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU())
        if self.n_mels:
            self.mel_net = nn.Sequential(nn.Conv1d(self.n_mels + 1, cond_channels, 3, padding=1), nn.LeakyReLU(0.4),
                                         nn.Conv1d(cond_channels, cond_channels, 3, padding=1), nn.LeakyReLU(0.4),
                                         nn.Conv1d(cond_channels, 2 * c * self.layers_n, 1))
        else:
            self.mel_net = None
        self.layers = nn.ModuleList(_Layer(c, 2 ** (i % dilation_cycle), emb_dim) for i in range(self.layers_n))
        self.skip = nn.Conv1d(c, c, 1)
        self.output = nn.Conv1d(c, self.in_channels, 1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def _conditioner(self, cond: object, b: int) -> list[Tensor] | list[None]:
        """Every layer's conditioner at the frame rate, ``[B, 2C, F]`` each (upsampled one at a
        time in :meth:`forward`, so a long clip never holds all layers' at the waveform rate)."""
        mel = cond.get("mel") if isinstance(cond, Condition) else None
        if self.mel_net is None:
            return [None] * self.layers_n
        if mel is None:
            raise UserInputError("this vocoder network needs the condition mel (a log-mel spectrogram)")
        if mel.ndim != 3 or mel.shape[0] != b or mel.shape[1] != self.n_mels + 1:
            raise UserInputError(f"the mel condition must be [{b}, {self.n_mels + 1}, frames], got {list(mel.shape)}")
        flag = mel[:, -1:]
        h = torch.cat([(mel[:, :-1] - MEL_CENTER) / MEL_SCALE * flag, flag], 1)
        return list(self.mel_net(h.float()).chunk(self.layers_n, dim=1))

    def forward(self, x: Tensor, noise_level: Tensor, cond: object = None, space: object = None) -> Tensor:
        b, c, length = x.shape
        if c != self.in_channels:
            raise UserInputError(f"the wavenet was built for {self.in_channels} channel(s), got {c}")
        if self.in_cond_channels:
            extra = concat_inputs(cond)
            if extra is None:
                extra = x.new_zeros(b, self.in_cond_channels, length)
            x = torch.cat([x, extra.to(x.dtype)], 1)
        emb = self.time_mlp(timestep_embedding(noise_level.reshape(-1).expand(b) if noise_level.numel() == 1
                                               else noise_level.reshape(b), 128))
        h = F.relu(self.input(x))
        skips = 0
        for layer, cond_i in zip(self.layers, self._conditioner(cond, b)):
            if cond_i is not None:
                cond_i = F.interpolate(cond_i, size=length, mode="linear", align_corners=False)
            h, s = layer(h, emb, cond_i)
            skips = skips + s
        h = F.relu(self.skip(skips * (1 / math.sqrt(self.layers_n))))
        return self.output(h)
