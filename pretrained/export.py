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
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save as safetensors_bytes

from ..core.errors import CheckpointError, NotSupportedError, OutputExistsError, UserInputError
from ..core.io import atomic_write_text, check_output_path, fsync_dir, tmp_name, write_synced, writing
from ..core.lock import exclusive
from ..core.config import RunConfig
from ..core.training.checkpoint import file_sha256, identity_weights_file, load_checkpoint, read_run_config

from . import FILES, MARKER, MAX_FILE_BYTES, PRETRAINED_DIR, candidates, check_name, marker
from .card import (DATA_LICENSES, _evaluation, _records, model_card, read_evaluations,
                   recipe_of, training_seconds)

__all__ = ["export", "recipe_of", "model_card", "stages", "read_evaluations", "training_seconds", "DATA_LICENSES",
           "recover"]

log = logging.getLogger(__name__)


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
    try:   # read as a config (options added since it was written take their defaults)
        same = recipe_of(RunConfig.load(mine)) == recipe_of(own)
    except (OSError, ValueError, TypeError, KeyError):
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


def export(run: str | Path, name: str, *, root: str | Path | None = None, half: bool = False,
           wall_time: str | None = None, hardware: str | None = None, force: bool = False,
           evaluations: Sequence[str | Path] | None = None) -> list[Path]:
    """Write run folder ``run`` as pretrained model ``name`` (see the module docstring); returns the paths.
    ``evaluations``: files ``diffuse evaluate -c RUN --seed S --out FILE`` wrote, for the card
    (default: ``RUN/evaluation.json`` when there is one)."""
    from ..api.loading import assemble

    check_name(name)
    run_dir = Path(run)
    base = Path(root) if root is not None else PRETRAINED_DIR.parent
    for sub in ("pretrained", "recipes"):    # before any work: where the files go can be written
        check_output_path(base / sub, "--root" if root is not None else "the package folder")
    ck = load_checkpoint(run_dir)
    cfg: RunConfig = ck["config"]
    if cfg.latent is not None:
        raise NotSupportedError(f"{run_dir} is a latent diffusion model; export-pretrained ships a model's own files "
                                "only and its autoencoder would not travel with it (the model would break on any "
                                "other machine): sample it from its run folder")
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
    recipes = {p.name: recipe_of(c) for p, c in zip([*stage_recipes, recipe], [*earlier, cfg])}
    with writing(dest, f"the pretrained model {name!r} was not changed"):
        dest.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(dest.parent / f".{name}.lock", f"pretrained model {name!r} in {dest.parent}"):
            recover(base, name)
            for path in (dest, recipe, *stage_recipes):
                if path.exists() and not force:
                    raise OutputExistsError(f"{path} exists; give --force to replace it")
            previous = marker(dest) if dest.is_dir() else None
            generation = int((previous or {}).get("generation", 0)) + 1
            blobs[MARKER] = json.dumps({"generation": generation, "recipes": recipes}, indent=1).encode()
            _swap_in(dest, blobs)
            _write_recipes(base, recipes)
    return [dest / f for f in FILES] + stage_recipes + [recipe]


def _swap_in(dest: Path, blobs: dict[str, bytes]) -> None:
    """Write the model into ``.NAME.tmp-PID`` (``export.json`` last: then it is complete), then
    replace ``NAME`` by renames (``NAME`` -> ``.NAME.old``, staging -> ``NAME``, remove the old one).
    A kill anywhere leaves a complete model that :func:`~diffuse.pretrained.folder` finds and
    :func:`recover` puts back in place."""
    staging, old = tmp_name(dest), dest.with_name(f".{dest.name}.old")
    staging.mkdir()
    try:
        for fname in (*FILES, MARKER):
            write_synced(staging / fname, blobs[fname])
        fsync_dir(staging)
        if dest.exists():                    # --force
            os.replace(dest, old)
        os.replace(staging, dest)
        fsync_dir(dest.parent)
    except BaseException:
        if not dest.exists() and old.exists():
            os.replace(old, dest)            # the previous model back in place
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old.exists():
        shutil.rmtree(old)


def _write_recipes(base: Path, recipes: dict[str, Any]) -> None:
    """The recipes a model ships with (from its ``export.json``), each written where it differs."""
    folder = base / "recipes"
    folder.mkdir(parents=True, exist_ok=True)
    for fname, rec in recipes.items():
        path = folder / fname
        text = json.dumps(rec, indent=2, sort_keys=True) + "\n"
        try:
            same = path.read_text() == text
        except OSError:
            same = False
        if not same:
            atomic_write_text(path, text)


def recover(base: str | Path, name: str) -> Path | None:
    """Finish an interrupted replacement of model ``name`` in ``base/pretrained`` (the folder's
    lock held): the complete folder of the highest generation becomes ``NAME``, the others and
    incomplete staging folders of dead processes go, and its recipes are rewritten from its
    ``export.json`` where they differ. Returns the model's folder (None if there is none)."""
    base = Path(base)
    pre = base / "pretrained"
    found = candidates(pre, name)
    dest = pre / name
    if found and found[0][2] != dest:
        best = found[0][2]
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(best, dest)
        log.warning("pretrained model %r: finished a replacement that was interrupted (%s -> %s)", name, best.name,
                    dest.name)
    for path in [pre / f".{name}.old", *pre.glob(f".{name}.tmp-*")]:
        if path.exists() and (path.name.endswith(".old") or not _live(path)):
            shutil.rmtree(path, ignore_errors=True)
    mark = marker(dest) if dest.is_dir() else None
    if mark is not None and isinstance(mark.get("recipes"), dict):
        _write_recipes(base, mark["recipes"])
    return dest if dest.is_dir() else None


def _live(staging: Path) -> bool:
    """Whether the process that writes a staging folder ``.NAME.tmp-PID`` is alive."""
    try:
        os.kill(int(staging.name.rsplit("-", 1)[1]), 0)
    except (ValueError, ProcessLookupError):
        return False
    except OSError:
        return True
    return True
