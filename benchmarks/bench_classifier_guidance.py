"""Class accuracy of classifier-guided image samples from an UNCONDITIONAL model vs the guidance scale.

    diffuse train --domain image --steps 400 --out runs/img_uncond              # unconditional model
    diffuse train-classifier --domain image --steps 300 --out runs/img_clf      # guidance classifier
    python benchmarks/bench_classifier_guidance.py --model runs/img_uncond --classifier runs/img_clf \\
        [--scales 0,1,2,4] [--per-class 10] [--steps 25] [--threads 2]

Samples are drawn for the labels 0..9 (``--per-class`` each) with DDIM, guided by the noise-aware
classifier (``guidance="classifier"``), and scored by a SEPARATE classifier, the shipped LeNet
(``domains/image/features.bundled_lenet``, trained on clean digits, never used for guidance):
``class_accuracy`` is the share of samples it assigns to the requested label (chance 0.1).
The guidance classifier's own held-out accuracy on clean and noised digits (its
``evaluation.json``) is reported alongside. Writes ``benchmarks/results/classifier_guidance.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import diffuse.api as api
from diffuse.domains.image.features import bundled_lenet
from diffuse.domains.image.metrics import conditional_accuracy

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--classifier", type=Path, required=True)
    p.add_argument("--scales", default="0,1,2,4")
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "classifier_guidance.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = api.load(a.model, device="cpu")
    clf = api.load_classifier(a.classifier, device="cpu")
    lenet = bundled_lenet()
    labels = torch.arange(10).repeat_interleave(a.per_class)
    rows = []
    for s in (float(v) for v in a.scales.split(",")):
        t0 = time.perf_counter()
        samples = model.sample(len(labels), steps=a.steps, seed=a.seed, cond={"label": labels.tolist()},
                               guidance="classifier", classifier=clf, guidance_scale=s)
        acc = conditional_accuracy(lenet, samples.x, labels)
        guide_acc = float((clf.predict(samples) == labels).double().mean())
        rows.append({"scale": s, "class_accuracy": acc, "guidance_classifier_agrees": guide_acc,
                     "seconds": time.perf_counter() - t0})
        print(f"scale {s:4g}: class accuracy (LeNet) {acc:.3f}   guidance classifier agrees {guide_acc:.3f}   "
              f"({rows[-1]['seconds']:.0f} s)", flush=True)
    evaluation = json.loads((a.classifier / "evaluation.json").read_text())
    print("guidance classifier, held-out:", "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                                       for k, v in evaluation.items()))
    cfg = json.loads((a.model / "config.json").read_text())
    record = {"model": str(a.model), "model_steps": cfg["train"]["steps"], "classifier": str(a.classifier),
              "classifier_steps": clf.config.train.steps, "per_class": a.per_class, "sampler": "ddim",
              "steps": a.steps, "seed": a.seed, "rows": rows, "classifier_held_out": evaluation}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
