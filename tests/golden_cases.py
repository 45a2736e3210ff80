"""Golden-sample cases (issue 27): what the code computed before the package was restructured.

One definition of every case, used by ``benchmarks/golden.py`` (``write`` / ``check``: every
case, bit for bit) and ``tests/test_golden.py`` (a cheap subset, with a tolerance). The golden
tensors live in ``tests/data/golden.safetensors``, described by ``tests/data/golden.json``.

Only names that survive the restructure are used: ``diffuse.api.train``, ``diffuse.api.load``,
``diffuse.api.load_pretrained``; the loaded model's ``sample``, ``complete``,
``completion_input`` and ``edit``; ``Batch.x`` of their results (and ``Batch.space.counts``,
the per-molecule atom counts, a public attribute of graph batches). Nothing private, nothing from
``diffuse.core.*`` or ``diffuse.cli.*``. Everything runs on ``device="cpu"``; callers set
``torch.set_num_threads(1)`` first (one intra-op thread: the order of float sums is fixed).

Cases:

* ``pretrained_*``: the shipped models (``load_pretrained("image" | "audio" | "molecules")``);
* ``tiny_*``: tiny models trained in-process (20 steps, batch 8, seed 0, no evaluation) with
  ``api.train`` into a temporary folder, then ``api.load``; ``tiny_*_fingerprint`` is
  ``[sum, sum of squares, count]`` of all EMA weights of the run (``checkpoint/ema.safetensors``,
  exact float64 sums: independent of the weights' names and order).

Inputs of completion / editing need no files in the repository. The image input is a pretrained
ddim sample thresholded at 0 to a black-and-white 28x28 PNG (its pixel nearest the threshold is
5.6e-4 from it, far beyond the ~3e-6 by which other CPU kernels move that sample, so the PNG is
the same everywhere). The molecule fragment is 3 atoms of a pretrained unipc molecule written as
XYZ, with coordinates fixed here (:data:`FRAGMENT`): made at run time, a 0.01-rounded coordinate
flipped under AVX2 kernels (a 1-molecule batch moves by ~2e-3 there).
"""

from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

#: what a case's ``model`` may name
PRETRAINED = ("image", "audio", "molecules")

#: eval off in the tiny runs: no final evaluation, no periodic samples, one checkpoint at the end
EVAL_OFF = {"final_eval": False, "eval_samples": 0, "sample_every": 0, "checkpoint_every": 0}

#: the tiny image U-Net of tests/tiny.py, copied here so that the golden cases never move with it
TINY_UNET = {"base_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_levels": [1], "groups": 4,
             "head_dim": 8}
#: the tiny 1-D U-Net of tests/test_audio_condition.py
TINY_AUDIO = {"channels": [8, 16], "factors": [4], "num_res_blocks": 1, "dilations": [1], "attn_levels": [-1],
              "heads": 2}

#: keyword arguments of every tiny ``api.train`` call (besides domain, out, config and the run's own)
TINY_TRAIN = {"steps": 20, "batch_size": 8, "device": "cpu", "seed": 0, "progress": False}

#: the tiny runs: ``api.train(domain, out=TMP/name, config=config, **TINY_TRAIN, **extra)``
TINY_RUNS: dict[str, dict[str, Any]] = {
    "image": {"domain": "image", "config": {"model": TINY_UNET, "train": EVAL_OFF}, "extra": {}},
    "image_flow": {"domain": "image", "config": {"model": TINY_UNET, "train": EVAL_OFF},
                   "extra": {"diffusion": {"training": "flow"}}},
    "image_label": {"domain": "image", "config": {"model": TINY_UNET, "train": EVAL_OFF},
                    "extra": {"conditions": ["label"]}},
    "audio": {"domain": "audio", "config": {"model": TINY_AUDIO, "data_options": {"clip_seconds": 0.1},
                                            "train": EVAL_OFF}, "extra": {}},
    "molecules": {"domain": "molecules", "config": {"model": {"preset": "tiny"}, "train": EVAL_OFF}, "extra": {}},
}

#: the completion fragment: 3 atoms of ``load_pretrained("molecules").sample(1, sampler="unipc",
#: steps=10, seed=0)`` (its first heavy atom and the two atoms nearest it; elements by the one-hot
#: argmax over H C N O F), rounded to 0.01 Angstrom and fixed here
FRAGMENT = [("C", -0.96, -1.41, 0.02), ("H", -1.80, -1.86, 0.67), ("N", 0.21, -1.91, 0.05)]


@dataclass(frozen=True)
class Case:
    """One golden case.

    ``model``: ``"pretrained:NAME"`` or ``"tiny:NAME"`` (a key of :data:`TINY_RUNS`).
    ``kind``: ``sample`` (``model.sample(num, sampler=, steps=, seed=, **options)``), ``complete``
    / ``edit`` (on ``input``, read with ``completion_input(path, input_options)``), or
    ``fingerprint`` (the tiny run's EMA weights).
    ``input``: ``"digit_png"`` or ``"fragment_xyz"`` (see :meth:`Runner.input_file`)."""

    name: str
    model: str
    kind: str = "sample"
    sampler: str | None = None
    steps: int | None = None
    seed: int = 0
    num: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    input: str | None = None
    input_options: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The case as JSON (the sidecar's description; ``check`` compares it with the stored one)."""
        out: dict[str, Any] = {"name": self.name, "model": self.model, "kind": self.kind}
        if self.kind != "fingerprint":
            out.update(sampler=self.sampler, steps=self.steps, seed=self.seed, num=self.num, options=self.options)
        if self.input is not None:
            out.update(input=self.input, input_about=INPUTS[self.input], input_options=self.input_options)
        if self.model.startswith("tiny:"):
            run = TINY_RUNS[self.model.split(":", 1)[1]]
            out["trained_with"] = {"domain": run["domain"], "config": run["config"], **TINY_TRAIN, **run["extra"]}
        return out


#: how each completion / edit input is made
INPUTS = {
    "digit_png": "pretrained image, ddim 10 steps, seed 0, 1 sample, thresholded at 0 to a black (0) and "
                 "white (255) 28x28 grayscale PNG",
    "fragment_xyz": "an XYZ file of 3 atoms of a pretrained unipc-10 molecule (FRAGMENT of tests/golden_cases.py): "
                    + "; ".join(f"{el} {x:.2f} {y:.2f} {z:.2f}" for el, x, y, z in FRAGMENT),
}


def _sample(name: str, model: str, sampler: str, steps: int, num: int, seed: int = 0, **options: Any) -> Case:
    return Case(name, model, "sample", sampler, steps, seed, num, options)


CASES: list[Case] = [
    # --- the shipped image model (label-conditional MNIST U-Net), 4 samples each
    _sample("pretrained_image_ddim10", "pretrained:image", "ddim", 10, 4),
    _sample("pretrained_image_ddpm20", "pretrained:image", "ddpm", 20, 4),
    _sample("pretrained_image_unipc8", "pretrained:image", "unipc", 8, 4),
    _sample("pretrained_image_edm_heun6", "pretrained:image", "edm_heun", 6, 4),
    _sample("pretrained_image_guided_ddim10", "pretrained:image", "ddim", 10, 4, cond={"label": 3},
            guidance_scale=2.0),
    _sample("pretrained_image_ddim10_seed1_bs2", "pretrained:image", "ddim", 10, 4, seed=1, batch_size=2),
    Case("pretrained_image_inpaint_ddpm20", "pretrained:image", "complete", "ddpm", 20, 0, 4,
         input="digit_png", input_options={"rect": "7,7,21,21"}),
    Case("pretrained_image_repaint_ddpm10", "pretrained:image", "complete", "ddpm", 10, 0, 2,
         {"jump_length": 2, "resample": 2}, input="digit_png", input_options={"rect": "0,14,28,28"}),
    Case("pretrained_image_sdedit_ddim10", "pretrained:image", "edit", "ddim", 10, 0, 4, {"strength": 0.5},
         input="digit_png"),
    # --- the shipped audio model (label-conditional percussion, 0.5 s at 16 kHz), 2 clips each
    _sample("pretrained_audio_ddpm10", "pretrained:audio", "ddpm", 10, 2),
    _sample("pretrained_audio_ddim10", "pretrained:audio", "ddim", 10, 2),
    _sample("pretrained_audio_label_ddim10", "pretrained:audio", "ddim", 10, 2, cond={"label": ["kick", "snare"]}),
    # --- the shipped molecule model (EGNN on QM9), 4 molecules each
    _sample("pretrained_molecules_ddpm30", "pretrained:molecules", "ddpm", 30, 4),
    _sample("pretrained_molecules_unipc10", "pretrained:molecules", "unipc", 10, 4),
    Case("pretrained_molecules_complete_ddpm30", "pretrained:molecules", "complete", "ddpm", 30, 0, 2,
         input="fragment_xyz", input_options={"num_atoms": 12}),
    # --- tiny models trained here (20 steps)
    Case("tiny_image_fingerprint", "tiny:image", "fingerprint"),
    _sample("tiny_image_ddim5", "tiny:image", "ddim", 5, 4),
    _sample("tiny_image_ddpm10", "tiny:image", "ddpm", 10, 4),
    _sample("tiny_image_unipc5", "tiny:image", "unipc", 5, 4),
    _sample("tiny_image_edm_heun4", "tiny:image", "edm_heun", 4, 4),
    Case("tiny_image_flow_fingerprint", "tiny:image_flow", "fingerprint"),
    _sample("tiny_image_flow_euler5", "tiny:image_flow", "flow_euler", 5, 4),
    _sample("tiny_image_flow_heun4", "tiny:image_flow", "flow_heun", 4, 4),
    Case("tiny_image_label_fingerprint", "tiny:image_label", "fingerprint"),
    _sample("tiny_image_label_guided_ddim5", "tiny:image_label", "ddim", 5, 4, cond={"label": [3, 7]},
            guidance_scale=2.0),
    Case("tiny_audio_fingerprint", "tiny:audio", "fingerprint"),
    _sample("tiny_audio_ddim5", "tiny:audio", "ddim", 5, 2),
    Case("tiny_molecules_fingerprint", "tiny:molecules", "fingerprint"),
    _sample("tiny_molecules_ddpm10", "tiny:molecules", "ddpm", 10, 4),
    _sample("tiny_molecules_structure_ddim10", "tiny:molecules", "ddim", 10, 4, structure=[5, 7, 7, 9],
            batch_size=2),
    # --- every other sampler, DDIM's eta and the time spacings, on the tiny models (2 samples each:
    # the restructure moves the samplers into a registry)
    *[_sample(f"tiny_image_{s}{n or ''}", "tiny:image", s, n, 2)
      for s, n in [("dpmpp_2m", 5), ("dpmpp_2m_sde", 5), ("dpmpp_3m", 5), ("euler_maruyama", 10),
                   ("ode_euler", 5), ("ode_heun", 4), ("pc", 5), ("rk45", None)]],
    _sample("tiny_image_ddim5_eta1", "tiny:image", "ddim", 5, 2, eta=1.0),
    *[_sample(f"tiny_image_ddim5_{sp}", "tiny:image", "ddim", 5, 2, spacing=sp)
      for sp in ("karras", "leading", "linspace", "logsnr")],
    *[_sample(f"tiny_image_flow_{s.removeprefix('flow_')}{n or ''}", "tiny:image_flow", s, n, 2)
      for s, n in [("flow_midpoint", 4), ("flow_sde", 5), ("flow_rk45", None)]],
    _sample("tiny_molecules_pc5", "tiny:molecules", "pc", 5, 2),
    _sample("tiny_molecules_euler_maruyama10", "tiny:molecules", "euler_maruyama", 10, 2),
]

CASES_BY_NAME: dict[str, Case] = {c.name: c for c in CASES}
assert len(CASES_BY_NAME) == len(CASES), "case names must be unique"


def case_of(key: str) -> str:
    """The case name of a tensor key (``"CASE/x"`` -> ``"CASE"``)."""
    return key.split("/", 1)[0]


def ema_fingerprint(path: str | Path) -> torch.Tensor:
    """``[sum, sum of squares, count]`` (float64) over every value of every tensor in a
    safetensors file; exact sums (``math.fsum``; squares of float32 values are exact in float64),
    so the order and names of the tensors do not matter."""
    from safetensors.torch import load_file

    values: list[float] = []
    for tensor in load_file(str(path)).values():
        values += tensor.detach().double().flatten().tolist()
    return torch.tensor([math.fsum(values), math.fsum(v * v for v in values), float(len(values))],
                        dtype=torch.float64)


class Runner:
    """Runs cases, loading each model and training each tiny run once, in a temporary folder
    (``root``, or one of its own removed by :meth:`close`)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self._own = None if root is not None else tempfile.TemporaryDirectory(prefix="diffuse-golden-")
        self.root = Path(root if root is not None else self._own.name)
        self.models: dict[str, Any] = {}
        self.inputs: dict[str, Path] = {}

    def close(self) -> None:
        if self._own is not None:
            self._own.cleanup()

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ models
    def tiny_run(self, name: str) -> Path:
        """The run folder of tiny run ``name``, trained on first use."""
        import diffuse.api as api

        out = self.root / "runs" / name
        if not (out / "config.json").exists():
            spec = TINY_RUNS[name]
            api.train(spec["domain"], out=out, config=spec["config"], **TINY_TRAIN, **spec["extra"])
        return out

    def model(self, spec: str):
        if spec not in self.models:
            import diffuse.api as api

            source, _, name = spec.partition(":")
            if source == "pretrained" and name in PRETRAINED:
                self.models[spec] = api.load_pretrained(name, device="cpu")
            elif source == "tiny" and name in TINY_RUNS:
                self.models[spec] = api.load(self.tiny_run(name), device="cpu")
            else:
                raise ValueError(f"unknown model {spec!r}")
        return self.models[spec]

    # ------------------------------------------------------------------ inputs
    def input_file(self, name: str) -> Path:
        """The completion / edit input ``name`` (see :data:`INPUTS`), made on first use."""
        if name in self.inputs:
            return self.inputs[name]
        folder = self.root / "inputs"
        folder.mkdir(parents=True, exist_ok=True)
        if name == "digit_png":
            import numpy as np
            from PIL import Image

            x = self.model("pretrained:image").sample(1, sampler="ddim", steps=10, seed=0).x
            pixels = np.where(x[0, 0].numpy() > 0, 255, 0).astype(np.uint8)
            path = folder / "digit.png"
            Image.fromarray(pixels).save(path)
        elif name == "fragment_xyz":
            lines = [str(len(FRAGMENT)), "golden fragment: 3 atoms of a pretrained unipc-10 molecule"]
            lines += [f"{el} {x:.2f} {y:.2f} {z:.2f}" for el, x, y, z in FRAGMENT]
            path = folder / "fragment.xyz"
            path.write_text("\n".join(lines) + "\n")
        else:
            raise ValueError(f"unknown input {name!r}")
        self.inputs[name] = path
        return path

    # ------------------------------------------------------------------ cases
    def run(self, case: Case) -> dict[str, torch.Tensor]:
        """The case's tensors, keyed ``CASE/x`` (samples), ``CASE/counts`` (atoms per molecule),
        ``CASE/input`` and ``CASE/mask`` (what ``completion_input`` read), ``CASE/fingerprint``."""
        if case.kind == "fingerprint":
            ema = self.tiny_run(case.model.split(":", 1)[1]) / "checkpoint" / "ema.safetensors"
            return {f"{case.name}/fingerprint": ema_fingerprint(ema)}
        model = self.model(case.model)
        out: dict[str, torch.Tensor] = {}
        if case.kind == "sample":
            batch = model.sample(case.num, sampler=case.sampler, steps=case.steps, seed=case.seed,
                                 **copy.deepcopy(case.options))
        elif case.kind in ("complete", "edit"):
            known, mask = model.completion_input(self.input_file(case.input), copy.deepcopy(case.input_options))
            out[f"{case.name}/input"] = known.x.detach().clone()
            out[f"{case.name}/mask"] = torch.as_tensor(mask).detach().clone()
            if case.kind == "complete":
                batch = model.complete((known, mask), case.num, sampler=case.sampler, steps=case.steps,
                                       seed=case.seed, **copy.deepcopy(case.options))
            else:
                options = copy.deepcopy(case.options)
                strength = options.pop("strength")
                batch = model.edit((known, mask), strength, case.num, sampler=case.sampler, steps=case.steps,
                                   seed=case.seed, **options)
        else:
            raise ValueError(f"unknown case kind {case.kind!r}")
        out[f"{case.name}/x"] = batch.x.detach().clone().contiguous()
        counts = getattr(batch.space, "counts", None)
        if isinstance(counts, torch.Tensor):
            out[f"{case.name}/counts"] = counts.detach().clone().to(torch.int64)
        return out
