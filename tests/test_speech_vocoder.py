"""The vocoder end to end on a synthetic tone set: a tiny DiffWave-style network trained with
``--condition mel`` resynthesises a held-out tone from its mel (``diffuse vocode``), bandwidth
extension through ``diffuse upscale`` keeps the given band exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

import diffuse.api as api
from diffuse.cli.main import main
from diffuse.domains.audio.restoration import kept_bins
from test_speech import RATE, tone, write_tones

TINY_WAVENET = {"backbone": "wavenet", "residual_channels": 16, "layers": 6, "dilation_cycle": 6,
                "cond_channels": 16, "emb_dim": 32}
MEL = {"n_mels": 32, "n_fft": 256, "hop": 64}


@pytest.fixture(scope="module")
def vocoder_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocoder")
    folder = write_tones(root / "tones", freqs=(250, 450, 700, 1000), seconds=0.4)
    cfg = {"data_options": {"speech": True, "sample_rate": None, "clip_seconds": 0.064, "mel": MEL},
           "model": TINY_WAVENET, "diffusion": {"cond_drop": 0.0},
           "train": {"steps": 250, "batch_size": 8, "lr": 5e-3, "warmup_steps": 20, "ema_decay": 0.9,
                     "holdout_fraction": 0.0, "final_eval": False, "eval_samples": 0, "checkpoint_every": 0,
                     "log_every": 100, "device": "cpu"}}
    torch.manual_seed(0)
    api.train("audio", data=str(folder), config=cfg, out=str(root / "run"), progress=False)
    return root


def _peak_hz(x: torch.Tensor) -> float:
    spec = torch.fft.rfft(x.reshape(-1).double() * torch.hann_window(x.numel(), dtype=torch.float64)).abs()
    return float(spec.argmax()) * RATE / x.numel()


def _tone_share(x: torch.Tensor, freq: float, width: float = 60.0) -> float:
    """The share of ``x``'s energy within ``width`` Hz of ``freq``."""
    spec = torch.fft.rfft(x.reshape(-1).double()).abs().pow(2)
    hz = torch.arange(spec.numel()) * RATE / x.numel()
    return float(spec[(hz - freq).abs() < width].sum() / spec.sum())


def test_tiny_vocoder_resynthesises_a_tone_from_its_mel(vocoder_run):
    """A tone of the set, vocoded whole from its mel (the network saw only 64 ms crops): the pitch
    is right, most of the energy is the tone's (an untrained network: 3 %) and the level is the
    tone's, with the vocoder's default few-step sampler and with 20 DDIM steps."""
    clip = vocoder_run / "tones" / "tone700.wav"
    model = api.load(vocoder_run / "run")
    untrained = api.vocode(model.untrained(0), clip, sampler="ddim", steps=20).samples.x
    assert _tone_share(untrained, 700) < 0.2
    for options in ({}, {"sampler": "ddim", "steps": 20}):
        out = api.vocode(model, clip, **options)
        x, ref = out.samples.x, out.reference
        assert x.shape == ref.shape == (1, 1, int(0.4 * RATE))
        assert abs(_peak_hz(x) - 700) < 30
        assert _tone_share(x, 700) > 0.75
        assert abs(float(x.pow(2).mean().sqrt()) / float(ref.pow(2).mean().sqrt()) - 1) < 0.3


def test_vocode_cli_from_a_clip_and_from_a_mel(vocoder_run, tmp_path):
    clip = tmp_path / "tone500.wav"
    sf.write(str(clip), tone(500, 0.3), RATE)
    run = vocoder_run / "run"
    res = CliRunner().invoke(main, ["vocode", "-c", str(run), "--input", str(clip), "--steps", "4",
                                    "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["steps"] == 4 and "mcd_db" in summary and summary["seconds"] == pytest.approx(0.3)
    x, rate = sf.read(str(tmp_path / "a" / "sample_000.wav"))
    assert rate == RATE and len(x) == int(0.3 * RATE)
    mel = api.load(run).domain.vocoder_input(clip)[1].numpy()
    np.save(tmp_path / "m.npy", mel)
    res = CliRunner().invoke(main, ["vocode", "-c", str(run), "--mel", str(tmp_path / "m.npy"), "--steps", "4",
                                    "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert len(sf.read(str(tmp_path / "b" / "sample_000.wav"))[0]) == mel.shape[1] * MEL["hop"]


def test_vocode_refuses_bad_input_in_one_line(vocoder_run, tmp_path):
    run = str(vocoder_run / "run")
    np.save(tmp_path / "wrong.npy", np.zeros((5, 10), np.float32))
    (tmp_path / "pickle.npy").write_bytes(b"not an array")
    for args, needle in ((["--mel", str(tmp_path / "wrong.npy")], "[32, frames]"),
                         (["--mel", str(tmp_path / "pickle.npy")], "cannot read a .npy"),
                         ([], "exactly one of --input")):
        res = CliRunner().invoke(main, ["vocode", "-c", run, *args, "--out", str(tmp_path / "x")])
        assert res.exit_code == 2 and needle in res.output and res.output.count("\n") == 1, res.output


def test_bandwidth_extension_keeps_the_given_band_through_upscale(tmp_path):
    """``diffuse upscale`` of a lowrate model (untrained: the promise holds whatever the network)
    returns clips whose spectrum below 0.9 x 2 kHz is the band-limited input's, bin for bin."""
    folder = write_tones(tmp_path / "tones", freqs=(300, 900, 2500), seconds=0.3)
    cfg = {"data_options": {"speech": True, "sample_rate": None, "clip_seconds": 0.25},
           "model": {"channels": [8, 16], "factors": [4], "num_res_blocks": 1, "attn_levels": [], "mid_attn": False},
           "train": {"steps": 1, "batch_size": 2, "final_eval": False, "eval_samples": 0, "device": "cpu",
                     "holdout_fraction": 0.0}}
    api.train("audio", data=str(folder), config=cfg, conditions=["lowrate"], out=str(tmp_path / "bwe"),
              progress=False)
    model = api.load(tmp_path / "bwe")
    clip = tmp_path / "low.wav"
    sf.write(str(clip), tone(600, 0.25, 4000) + tone(1700, 0.25, 4000, amp=0.2), 4000)   # a 4 kHz recording
    cond = model.restoration_input(clip)
    out = model.upscale(cond, 2, sampler="ddim", steps=3, seed=0)
    n = out.x.shape[-1]
    k = kept_bins(n, RATE, 4000)
    fo = torch.fft.rfft(out.x.double(), dim=-1)
    fi = torch.fft.rfft(cond["lowrate"].double(), dim=-1).expand_as(fo)
    torch.testing.assert_close(fo[..., :k], fi[..., :k], rtol=0, atol=1e-4)
    assert float((fo[..., k:] - fi[..., k:]).abs().max()) > 1e-2      # the band above is generated
    res = CliRunner().invoke(main, ["vocode", "-c", str(tmp_path / "bwe"), "--input", str(clip),
                                    "--out", str(tmp_path / "v")])
    assert res.exit_code == 2 and "not a vocoder" in res.output and not (tmp_path / "v").exists(), res.output
