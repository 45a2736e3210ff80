"""``save_pretrained``: any model the framework trains as a model folder with a model card.

A *model folder* is what the shipped models are (``pretrained/NAME/``) and what every command
takes where it takes a run folder (``-c DIR`` or ``--pretrained DIR``)::

    config.json        the run's config (a diffusion model's RunConfig, an autoencoder's or a classifier's)
    ema.safetensors    the weights used (the EMA weights of the run; safetensors only, no pickle)
    MODEL_CARD.md      data, recipe, steps, wall time, hardware, metrics, license: from the run's own record
    meta.json          domain, step and hardware of the checkpoint it came from
    recipe.json        the config file that trains it again (``diffuse train --config recipe.json``)
    evaluation.json    the run's last ``diffuse evaluate`` (autoencoders: the reconstruction figures), if any
    grids.json         the run's optimised time grids (``diffuse optimize-grid``), if any
    autoencoder/       a latent model's autoencoder, itself a model folder (its weights byte for byte)

:func:`diffuse.api.from_pretrained` reads it back (and a run folder, and a shipped model's name).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from ..core.config import RunConfig
from ..core.errors import CheckpointError, MissingPathError
from ..core.training.checkpoint import (MODEL_WEIGHTS, checkpoint_dir, checkpoint_meta, is_model_folder,
                                        load_checkpoint, read_checkpoint)
from ..pretrained.card import _evaluation, data_license, _records, model_card, recipe_of, training_seconds
from ..pretrained.files import check_destination, write_model_folder

__all__ = ["save_pretrained", "model_kind", "hardware_text"]

#: files a model folder carries over from the run folder it is saved from, when present
CARRIED = ("evaluation.json", "grids.json")


def model_kind(path: str | Path) -> str:
    """``"diffusion"``, ``"autoencoder"`` or ``"classifier"``: what the run or model folder at
    ``path`` holds (from its ``config.json``)."""
    cfg = Path(path) / "config.json"
    if not Path(path).is_dir():
        raise MissingPathError(f"{path} is not a folder; expected a run folder or a model folder (save_pretrained)")
    try:
        d = json.loads(cfg.read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{path} has no readable config.json; expected a run folder or a model folder "
                              "(save_pretrained)") from None
    kind = d.get("kind", "diffusion") if isinstance(d, dict) else None
    if kind not in ("diffusion", "autoencoder", "classifier"):
        raise CheckpointError(f"{cfg} is not the config of a diffuse model (kind {kind!r})")
    return kind


def hardware_text(record: Any) -> str | None:
    """One line from a checkpoint's hardware record (``core.training.checkpoint.hardware_record``)."""
    if not isinstance(record, dict):
        return None
    procs = record.get("processes", 1)
    return (f"{record.get('device')} ({record.get('name')}), {procs} process{'es' if procs != 1 else ''} x "
            f"{record.get('threads')} thread(s) of {record.get('cpus')} CPUs, torch {record.get('torch')}")


def _tensors(state: dict[str, torch.Tensor], half: bool) -> dict[str, torch.Tensor]:
    return {k: (v.detach().to("cpu", torch.float16) if half and v.dtype == torch.float32 else v.detach().cpu())
            .contiguous().clone() for k, v in state.items()}


def _carried(run: Path | None) -> dict[str, bytes]:
    if run is None:
        return {}
    return {f: (run / f).read_bytes() for f in CARRIED if (run / f).is_file()}


def _source_meta(run: Path | None) -> dict[str, Any]:
    """The checkpoint meta of the run (or model) folder a model came from."""
    if run is None:
        return {}
    try:
        return dict(checkpoint_meta(checkpoint_dir(run)) or {})
    except CheckpointError:
        return {}


def save_pretrained(model: Any, path: str | Path, *, half: bool = False, hardware: str | None = None,
                    wall_time: str | None = None, force: bool = False) -> Path:
    """Write ``model`` as a model folder at ``path`` (see the module docstring) and return it.

    ``model``: a :class:`~diffuse.api.model.DiffusionModel` (its weights as they are now: EMA
    weights when it was loaded with the default ``ema=True``), or the path of any run or model
    folder (a diffusion model's, an autoencoder's, a classifier's: its EMA weights). ``half``:
    float16 storage. ``hardware`` / ``wall_time``: override what the run recorded. ``path`` must
    be new or empty (``force``: replaced). Everything is read and checked before anything is written."""
    dest = check_destination(path, force)
    if isinstance(model, (str, Path)):
        run = Path(model)
        kind = model_kind(run)
        if kind == "diffusion":
            ck = load_checkpoint(run)
            weights = ck["ema"] if ck["ema"] is not None else ck["model"]
            return _save_diffusion(ck["config"], weights, run, {"checkpoint_step": ck["meta"].get("step"),
                                   "weights": "ema" if ck["ema"] is not None else "raw"}, dest, half=half,
                                   hardware=hardware, wall_time=wall_time, force=force)
        return _save_auxiliary(run, kind, dest, half=half, hardware=hardware, wall_time=wall_time, force=force)
    if not hasattr(model, "denoiser") or not isinstance(getattr(model, "config", None), RunConfig):
        raise TypeError(f"save_pretrained takes a DiffusionModel or a run folder, not {type(model).__name__}")
    run = Path(model.run_dir) if model.run_dir is not None else None
    return _save_diffusion(model.config, model.denoiser.state_dict(), run, getattr(model, "checkpoint_info", {}),
                           dest, half=half, hardware=hardware, wall_time=wall_time, force=force)


def _save_diffusion(cfg: RunConfig, state: dict[str, torch.Tensor], run: Path | None, info: dict[str, Any],
                    dest: Path, *, half: bool, hardware: str | None, wall_time: str | None, force: bool) -> Path:
    blobs: dict[str, bytes] = {}
    if cfg.latent is not None:               # the autoencoder travels inside, weights byte for byte
        ae = Path(cfg.latent["path"])
        ae = ae if ae.is_absolute() or run is None else run / ae
        for rel, data in _auxiliary_blobs(ae, "autoencoder", half=False, hardware=None, wall_time=None,
                                          copy_weights=True).items():
            blobs[f"autoencoder/{rel}"] = data
        cfg = replace(cfg, latent={**cfg.latent, "path": "autoencoder"})
    weights = _tensors(state, half)
    src_meta = _source_meta(run)
    info = info or {}
    step = info.get("checkpoint_step", src_meta.get("step"))
    meta = {"domain": cfg.domain, "step": step, "weights": info.get("weights", "ema"),
            "hardware": src_meta.get("hardware"), "saved_from": str(run.resolve()) if run is not None else None}
    blobs["config.json"] = cfg.to_json().encode()
    blobs[MODEL_WEIGHTS] = safetensors_bytes(weights)
    blobs["meta.json"] = json.dumps(meta, indent=2).encode()
    blobs["recipe.json"] = (json.dumps(recipe_of(cfg), indent=2, sort_keys=True) + "\n").encode()
    blobs.update(_carried(run))
    if run is not None and is_model_folder(run) and (run / "MODEL_CARD.md").is_file() and not (run / "metrics.jsonl").exists():
        # a model folder saved again: its card is the record (it holds no metrics.jsonl)
        card = (run / "MODEL_CARD.md").read_text() + f"\n\n(Saved again from the model folder `{run}`.)\n"
    else:
        records = _records(run) if run is not None else []
        evaluation = _evaluation(run) if run is not None else None
        params = sum(v.numel() for k, v in weights.items() if v.is_floating_point())
        card = model_card(dest.name, cfg, {"step": step if step is not None else "unknown (not from a run)"}, records,
                          params=params, dtype="float16" if half else "float32",
                          sizes={"config.json": len(blobs["config.json"]), MODEL_WEIGHTS: len(blobs[MODEL_WEIGHTS])},
                          wall_time=wall_time, hardware=hardware or hardware_text(meta["hardware"]),
                          evaluations=[evaluation] if evaluation else None, load_as=str(dest),
                          recipe=str(dest / "recipe.json"))
    blobs["MODEL_CARD.md"] = card.encode()
    write_model_folder(dest, blobs, force=force)
    return dest


def _save_auxiliary(run: Path, kind: str, dest: Path, **kw: Any) -> Path:
    write_model_folder(dest, _auxiliary_blobs(run, kind, **kw, copy_weights=False), force=kw["force"])
    return dest


def _auxiliary_blobs(run: Path, kind: str, *, half: bool, hardware: str | None, wall_time: str | None,
                     copy_weights: bool, force: bool = False) -> dict[str, bytes]:
    """The files of an autoencoder's or classifier's model folder (``copy_weights``: the weights
    file byte for byte, so a latent model's record of its autoencoder's SHA-256 still holds)."""
    if model_kind(run) != kind:
        raise CheckpointError(f"{run} is not a {kind} run")
    d = json.loads((run / "config.json").read_text())
    ck = read_checkpoint(run)
    src = ck["path"] / MODEL_WEIGHTS
    if copy_weights or not half:
        weights_bytes = src.read_bytes() if src.is_file() else safetensors_bytes(_tensors(ck["model"], False))
    else:
        weights_bytes = safetensors_bytes(_tensors(ck["ema"] if ck["ema"] is not None else ck["model"], True))
    meta = {"domain": d.get("domain"), "step": ck["meta"].get("step"), "kind": kind,
            "hardware": ck["meta"].get("hardware"), "saved_from": str(run.resolve())}
    blobs = {"config.json": (run / "config.json").read_bytes(), MODEL_WEIGHTS: weights_bytes,
             "meta.json": json.dumps(meta, indent=2).encode(), **_carried(run)}
    records = _records(run)
    t = d.get("train", {})
    secs = training_seconds(records, _TrainView(t)) if records else None
    evaluation = None
    if "evaluation.json" in blobs:
        try:
            evaluation = json.loads(blobs["evaluation.json"])
        except ValueError:
            evaluation = None
    recipe = {k: v for k, v in d.items() if k != "data_info"}
    hw = hardware or hardware_text(meta["hardware"]) or "not recorded"
    wall = wall_time or (f"{secs:.0f} s of training steps (summed from metrics.jsonl)" if secs else "not recorded")
    what = "a noise-aware classifier for classifier guidance" if kind == "classifier" else \
        "an autoencoder for latent diffusion"
    use = (f"`diffuse sample -c MODEL --guidance classifier --classifier {run if copy_weights else 'THIS_FOLDER'}`"
           if kind == "classifier" else "`diffuse train --domain D --latent THIS_FOLDER`")
    lines = [f"# {kind.capitalize()} `{Path(run).name}` ({d.get('domain')})", "",
             f"{what.capitalize()}; use it with {use} or `diffuse.api.from_pretrained(THIS_FOLDER)`.", "",
             "| | |", "|---|---|", f"| domain | {d.get('domain')} |",
             f"| data | {('`' + str(d.get('data')) + '`') if d.get('data') else 'the bundled default data'}; "
             f"data options `{json.dumps(d.get('data_options', {}), sort_keys=True)}` |",
             *([f"| target | `{json.dumps(d.get('target'), sort_keys=True)}` |"] if kind == "classifier" else []),
             f"| training steps | {meta['step']} (batch {t.get('batch_size')} x {t.get('grad_accum', 1)}, lr "
             f"{t.get('lr')}, EMA decay {t.get('ema_decay')}, seed {t.get('seed')}) |",
             f"| wall time | {wall} |", f"| hardware | {hw} |",
             f"| weights | EMA, safetensors, {len(weights_bytes) / 1e6:.2f} MB |",
             f"| license | weights and code MIT (as diffuse); data: "
             f"{data_license(d.get('domain'), d.get('data_options'))} |", "", "## Metrics", ""]
    if evaluation:
        lines += ["Held-out figures of the run (`evaluation.json`):", "", "| metric | value |", "|---|---|",
                  *[f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in evaluation.items()
                    if isinstance(v, (int, float))]]
    else:
        lines.append("The run recorded no held-out evaluation.")
    lines += ["", "## Recipe", "", "```json", json.dumps(recipe, indent=2, sort_keys=True), "```", ""]
    blobs["MODEL_CARD.md"] = "\n".join(lines).encode()
    blobs["recipe.json"] = (json.dumps(recipe, indent=2, sort_keys=True) + "\n").encode()
    return blobs


class _TrainView:
    """The two fields of a train section that :func:`training_seconds` reads, from a dict."""

    def __init__(self, train: dict[str, Any]) -> None:
        self.train = type("T", (), {"batch_size": int(train.get("batch_size", 1)),
                                    "grad_accum": int(train.get("grad_accum", 1))})()

