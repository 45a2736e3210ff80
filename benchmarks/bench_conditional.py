"""Conditional accuracy vs classifier-free guidance scale, labels vs text prompts (issue 8, section 4).

For each domain (image: bundled MNIST digits; audio: bundled percussion one-shots) and each
condition (``label``, ``text``) a model is trained with ``diffuse train --condition ...`` (or an
existing run folder is reused), then ``--per-class`` samples are drawn for every class at each
guidance scale ``s`` and a classifier trained on CLEAN data, separate from anything used in
guidance, says how often a sample carries the requested class:

* image: the shipped LeNet (``domains/image/features.py``, ``bundled_lenet``), 10 classes;
* audio: the shipped FeatureNet (``domains/audio/features.py``), 5 classes.

Chance is 1/10 (image) and 1/5 (audio); ``s = 0`` is the unconditional model. Text rows use a
phrasing seen in training (``train``) and one never seen in training (``held-out``).

    python benchmarks/bench_conditional.py --work /tmp/bench_cond               # train all four, then measure
    python benchmarks/bench_conditional.py --image-label RUN --image-text RUN \\
        --audio-label RUN --audio-text RUN                                      # reuse run folders

Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from diffuse import api
from diffuse.domains.audio.data import load_bundled
from diffuse.domains.audio.features import load_feature_net, log_mel
from diffuse.domains.image.data import DIGIT_WORDS
from diffuse.domains.image.features import bundled_lenet
from diffuse.domains.image.metrics import conditional_accuracy

# prompts per class name: (seen in training, never seen in training)
DIGITS = [str(d) for d in range(10)]
IMAGE_PROMPTS = {str(d): (f"a handwritten {w}", f"the handwritten number {w}") for d, w in enumerate(DIGIT_WORDS)}
AUDIO_PROMPTS = {"kick": ("a kick drum", "the kick sound"), "snare": ("a snare drum", "the snare sound"),
                 "tom": ("a tom drum", "the tom sound"), "cymbal": ("a cymbal crash", "the cymbal sound"),
                 "tabla": ("a tabla hit", "the tabla sound")}


def train(domain: str, condition: str, out: Path, steps: int | None, seed: int, config: Path | None) -> Path:
    if (out / "config.json").exists():
        return out
    cmd = [sys.executable, "-m", "diffuse.cli.main", "train", "--domain", domain, "--condition", condition,
           "--seed", str(seed), "--out", str(out), "--eval-samples", "8", "--no-progress"]
    if steps:
        cmd += ["--steps", str(steps)]
    if config:
        cmd += ["--config", str(config)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out


def classify(domain: str, x: torch.Tensor, rate: int | None) -> torch.Tensor:
    """Predicted class index (in the model's class order, checked by name) per sample."""
    if domain == "image":
        return bundled_lenet()(x.float().clamp(-1, 1)).argmax(1)
    net = load_feature_net()
    with torch.no_grad():
        return net(log_mel(x.float().clamp(-1, 1), rate)).argmax(1)


def real_accuracy(domain: str) -> float:
    """The classifier's accuracy on real bundled data in the models' format (its ceiling here)."""
    if domain == "image":
        from diffuse.domains.image.data import load_images
        ds = load_images(None, {"max_images": 1000})
        b = ds.batch(torch.arange(len(ds)))
        return conditional_accuracy(bundled_lenet(), b.x, ds.labels)
    ds = load_bundled({"labels": True})
    b = ds.batch(torch.arange(len(ds)))
    return float((classify(domain, b.x, ds.sample_rate) == b.cond["label"]).float().mean())


def accuracy(run: Path, domain: str, condition: str, scales: list[float], per_class: int, steps: int,
             seed: int, prompt_set: int = 0) -> list[float]:
    model = api.load(run, device="cpu")
    info = model.data_info
    classes = [str(c) for c in (info.get("class_names") or info.get("classes"))]
    # the shipped classifiers know the bundled classes in this order
    assert classes == (DIGITS if domain == "image" else sorted(AUDIO_PROMPTS)), classes
    prompts = IMAGE_PROMPTS if domain == "image" else AUDIO_PROMPTS
    labels = torch.arange(len(classes)).repeat_interleave(per_class)
    if condition == "label":
        cond = {"label": labels.tolist()}
    else:
        cond = {"text": [prompts[classes[int(i)]][prompt_set] for i in labels]}
    out = []
    for s in scales:
        samples = model.sample(len(labels), sampler="ddim", steps=steps, seed=seed, cond=cond, guidance_scale=s)
        x = samples.x.detach().cpu()
        if domain == "image":
            out.append(conditional_accuracy(bundled_lenet(), x, labels))
        else:
            pred = classify(domain, x, int(info["sample_rate"]))
            out.append(float((pred == labels).float().mean()))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_conditional"), help="folder for trained runs")
    for d in ("image", "audio"):
        for c in ("label", "text"):
            p.add_argument(f"--{d}-{c}", type=Path, default=None, help=f"reuse this {d} {c} run folder")
    p.add_argument("--image-steps", type=int, default=None, help="training steps (default: the domain's)")
    p.add_argument("--audio-steps", type=int, default=None)
    p.add_argument("--image-config", type=Path, default=None, help="JSON config for the image trainings")
    p.add_argument("--audio-config", type=Path, default=None, help="JSON config for the audio trainings")
    p.add_argument("--scales", default="0,1,2,4")
    p.add_argument("--per-class", type=int, default=10, help="samples per class and scale")
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--domains", default="image,audio")
    p.add_argument("--conditions", default="label,text", help="which models to measure")
    p.add_argument("--held-out", choices=["yes", "no"], default="yes", help="also the held-out text phrasing")
    p.add_argument("--out", type=Path, default=None, help="JSON results (default WORK/conditional.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    scales = [float(s) for s in args.scales.split(",")]
    rows: list[dict] = []
    for domain in args.domains.split(","):
        real = real_accuracy(domain)
        print(f"{domain:6s} classifier on real clean data: {real:.2f}", flush=True)
        rows.append({"domain": domain, "condition": "real data", "accuracy": {"real": real}})
        for condition in args.conditions.split(","):
            run = getattr(args, f"{domain}_{condition}") or train(
                domain, condition, args.work / f"{domain}_{condition}", getattr(args, f"{domain}_steps"), args.seed,
                getattr(args, f"{domain}_config"))
            steps_trained = json.loads((Path(run) / "config.json").read_text()).get("train", {}).get("steps")
            for prompt_set, name in ([(0, "label")] if condition == "label" else [(0, "text (train)"), (1, "text (held-out)")][: 2 if args.held_out == "yes" else 1]):
                t0 = time.time()
                acc = accuracy(Path(run), domain, condition, scales, args.per_class, args.sample_steps, args.seed, prompt_set)
                rows.append({"domain": domain, "condition": name, "train_steps": steps_trained, "run": str(run),
                             "accuracy": dict(zip(map(str, scales), acc)), "seconds": round(time.time() - t0, 1)})
                print(f"{domain:6s} {name:16s} " + "  ".join(f"s={s:g}: {a:.2f}" for s, a in zip(scales, acc)), flush=True)
    print("\n| domain | condition | train steps | " + " | ".join(f"s={s:g}" for s in scales) + " |")
    print("|---|---|---|" + "---|" * len(scales))
    for r in rows:
        if r["condition"] == "real data":
            print(f"| {r['domain']} | real data (classifier ceiling) | - | {r['accuracy']['real']:.2f} |"
                  + " |" * (len(scales) - 1))
            continue
        print(f"| {r['domain']} | {r['condition']} | {r['train_steps']} | "
              + " | ".join(f"{a:.2f}" for a in r["accuracy"].values()) + " |")
    out = args.out or args.work / "conditional.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"per_class": args.per_class, "sample_steps": args.sample_steps, "seed": args.seed,
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
