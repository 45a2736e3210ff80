"""Rebuild the bundled default audio set and its feature network.

The bundled set is a small resampled subset of the Debian package ``sonic-pi-samples``
(CC0 one-shots from freesound.org, 44.1 kHz FLAC) stored as 16 kHz mono 16-bit FLAC in
``domains/audio/data/`` with a ``manifest.csv`` (file, label, source). The package data alone is
read at run time; this module is only needed to *rebuild* it::

    apt-get install sonic-pi-samples
    python -m diffuse.domains.audio.bundle data       # rewrite data/*.flac and manifest.csv
    python -m diffuse.domains.audio.bundle features   # retrain data/feature_net.safetensors

Processing of each source file: mix down to mono, resample 44.1 kHz -> 16 kHz
(``torchaudio.functional.resample``, windowed-sinc), drop leading samples quieter than -40 dB
of the peak (so every clip starts at its onset), keep at most 1 s (a 30 ms linear fade-out
where it was cut), peak-normalise to 0.9.
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

__all__ = ["BUNDLE_CLASSES", "build_bundled_data", "DATA_DIR"]

log = logging.getLogger(__name__)
DATA_DIR = Path(__file__).resolve().parent / "data"
SONIC_PI_DIR = Path("/usr/share/sonic-pi/samples")
BUNDLE_RATE = 16000
BUNDLE_MAX_SECONDS = 1.0

#: label -> Sonic Pi sample names (without ``.flac``)
BUNDLE_CLASSES: dict[str, list[str]] = {
    "kick": ["bd_808", "bd_ada", "bd_boom", "bd_fat", "bd_gas", "bd_haus", "bd_klub", "bd_mehackit",
             "bd_pure", "bd_sone", "bd_tek", "bd_zome", "bd_zum", "drum_bass_hard", "drum_bass_soft",
             "drum_heavy_kick", "elec_soft_kick", "elec_hollow_kick"],
    "snare": ["sn_dolf", "sn_dub", "sn_generic", "sn_zome", "drum_snare_hard", "drum_snare_soft",
              "elec_snare", "elec_lo_snare", "elec_mid_snare", "elec_hi_snare", "elec_filt_snare"],
    "tom": ["drum_tom_hi_hard", "drum_tom_hi_soft", "drum_tom_lo_hard", "drum_tom_lo_soft",
            "drum_tom_mid_hard", "drum_tom_mid_soft", "elec_fuzz_tom"],
    "cymbal": ["drum_cymbal_closed", "drum_cymbal_hard", "drum_cymbal_open", "drum_cymbal_pedal",
               "drum_cymbal_soft", "drum_splash_hard", "drum_splash_soft", "elec_cymbal"],
    "tabla": ["tabla_dhec", "tabla_ghe1", "tabla_ghe2", "tabla_ghe3", "tabla_ghe4", "tabla_ghe5",
              "tabla_ghe6", "tabla_ghe7", "tabla_ghe8", "tabla_ke1", "tabla_ke2", "tabla_ke3",
              "tabla_na", "tabla_na_o", "tabla_na_s", "tabla_re", "tabla_tas1", "tabla_tas2",
              "tabla_tas3", "tabla_te1", "tabla_te2", "tabla_te_m", "tabla_te_ne", "tabla_tun1",
              "tabla_tun2", "tabla_tun3"],
}


def _process(path: Path) -> np.ndarray:
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = torch.from_numpy(data.mean(1))
    x = AF.resample(x, sr, BUNDLE_RATE)
    peak = float(x.abs().max())
    onset = int(torch.nonzero(x.abs() > peak * 0.01)[0])
    x = x[onset:]
    n_max = int(BUNDLE_MAX_SECONDS * BUNDLE_RATE)
    if x.numel() > n_max:
        x = x[:n_max].clone()
        fade = int(0.03 * BUNDLE_RATE)
        x[-fade:] *= torch.linspace(1.0, 0.0, fade)
    x = 0.9 * x / x.abs().max()
    return x.numpy()


def build_bundled_data(source: Path = SONIC_PI_DIR, out: Path = DATA_DIR) -> list[Path]:
    """Write the bundled FLAC clips and ``manifest.csv`` from a Sonic Pi samples folder."""
    out.mkdir(parents=True, exist_ok=True)
    rows, written = [], []
    for label, names in BUNDLE_CLASSES.items():
        for name in names:
            x = _process(source / f"{name}.flac")
            dest = out / f"{label}__{name}.flac"
            sf.write(str(dest), x, BUNDLE_RATE, subtype="PCM_16", format="FLAC")
            rows.append({"file": dest.name, "label": label, "source": f"sonic-pi-samples/{name}.flac",
                         "seconds": round(len(x) / BUNDLE_RATE, 3)})
            written.append(dest)
    with open(out / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "label", "source", "seconds"])
        w.writeheader()
        w.writerows(rows)
    log.info("wrote %d clips to %s", len(written), out)
    return written


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["data", "features"])
    p.add_argument("--source", type=Path, default=SONIC_PI_DIR)
    p.add_argument("--steps", type=int, default=600)
    args = p.parse_args(argv)
    if args.what == "data":
        build_bundled_data(args.source)
    else:
        from .features import train_bundled_feature_net
        train_bundled_feature_net(steps=args.steps)


if __name__ == "__main__":
    main()
