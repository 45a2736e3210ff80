"""Peak memory and speed of reading a long audio file whole vs streamed (lazy clips).

Generates a 20-minute 48 kHz stereo 16-bit WAV in a temporary folder (never in the repository),
then, in a fresh process per case, loads it as the audio domain does (``stream: false``: the
whole file decoded, mixed and resampled in memory; ``stream: true``: header + one block-wise pass,
clips read lazily) at the default 16 kHz mono (resampled: a one-time conversion into the cache,
then memory-mapped) and at 48 kHz stereo (no resampling: soundfile seeks), and draws 200 batches
of 16 random 0.5 s crops. Reports peak RSS (``resource.getrusage``), load and batch seconds.
Then trains the default audio model on the file at 48 kHz stereo, 0.1 s clips (streamed,
soundfile seeks) for ``--train-steps`` steps with ``train.prefetch`` 0 and 2, alternating, twice
(seconds per step).

    python benchmarks/bench_streaming.py [--minutes 20] [--train-steps 10]

(run from a folder where ``diffuse`` imports; the machine's load affects the seconds, not the
memory figures). Writes ``benchmarks/results/streaming.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, torch
from diffuse.domains.audio.data import load_audio_folder
path, rate, channels, stream = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
ds = load_audio_folder(path, {"sample_rate": rate, "channels": channels, "stream": stream, "crop": "random"})
t1 = time.perf_counter()
g = torch.Generator().manual_seed(0)
for _ in range(200):
    ds.batch(torch.zeros(16, dtype=torch.long), g)
t2 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"load_s": t1 - t0, "batches_s": t2 - t1, "peak_rss_mb": peak / 1024, "import_rss_mb": base / 1024}))
"""


def make_wav(path: Path, minutes: float, rate: int = 48000) -> None:
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    n = int(minutes * 60 * rate)
    with sf.SoundFile(str(path), "w", rate, 2, subtype="PCM_16") as fh:
        for a in range(0, n, rate * 10):
            k = min(rate * 10, n - a)
            t = (a + np.arange(k)) / rate
            tone = 0.3 * np.sin(2 * np.pi * 220 * t)[:, None] + 0.05 * rng.standard_normal((k, 2))
            fh.write(tone.astype(np.float32))


TRAIN = r"""
import json, sys, time
import diffuse.api as api
wav, out, steps, prefetch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t = time.perf_counter()
res = api.train("audio", data=wav, out=out, progress=False, steps=steps, prefetch=prefetch, final_eval=False,
                checkpoint_every=0, device="cpu", seed=0, warmup_steps=5,
                config={"data_options": {"sample_rate": 48000, "channels": 2, "stream": True, "crop": "random",
                                                 "clip_seconds": 0.1}})
print(json.dumps({"seconds": res.seconds, "steps": res.steps}))
"""


def _train_side_by_side(wav: Path, tmp: Path, steps: int, env: dict) -> list[dict]:
    rows = []
    for rnd in range(2):                    # alternate, twice, so a change of load hits both
        for prefetch in (0, 2):
            out = subprocess.run([sys.executable, "-c", TRAIN, str(wav), str(tmp / f"run{rnd}_{prefetch}"),
                                  str(steps), str(prefetch)], env=env, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(out.stderr)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"prefetch": prefetch, "round": rnd, "s_per_step": r["seconds"] / r["steps"]})
            print(f"train 48 kHz stereo, streamed: prefetch {prefetch}: {rows[-1]['s_per_step']:.3f} s/step", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--train-steps", type=int, default=10)
    args = ap.parse_args()
    results = {"minutes": args.minutes, "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "long.wav"
        make_wav(wav, args.minutes)
        env = {**os.environ, "DIFFUSE_CACHE": str(Path(tmp) / "cache"), "OMP_NUM_THREADS": "1"}
        for rate, channels in ((16000, 1), (48000, 2)):
            for stream, label in ((False, "whole"), (True, "streamed (first run: converts)"),
                                  (True, "streamed (cached)")):
                out = subprocess.run([sys.executable, "-c", CHILD, str(wav), str(rate), str(channels),
                                      "1" if stream else "0"], env=env, capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(out.stderr)
                row = {"rate": rate, "channels": channels, "mode": label, **json.loads(out.stdout)}
                results["cases"].append(row)
                print(f"{rate:>6} Hz x{channels}  {label:<32} peak RSS {row['peak_rss_mb']:7.0f} MB "
                      f"(after imports {row['import_rss_mb']:.0f})  load {row['load_s']:6.2f} s  "
                      f"200 batches {row['batches_s']:6.2f} s", flush=True)
        results["prefetch"] = _train_side_by_side(wav, Path(tmp), args.train_steps, env)
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "streaming.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
