"""Run folders and checkpoints.

Layout of a run folder::

    config.json                 RunConfig: everything needed to rebuild the model
    metrics.jsonl               one JSON object per line (training losses, evaluations)
    checkpoint/
        model.safetensors       raw weights (the optimiser's copy)
        ema.safetensors         EMA weights (used for sampling by default)
        state.pt                optimiser, LR scheduler, EMA count, step (loaded weights_only)
        meta.json               domain, step, format version

A checkpoint is written into ``checkpoint.tmp`` and swapped in with renames, so a kill at any
moment leaves either the previous or the new checkpoint, never a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import RunConfig

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_run_config", "atomic_write_text",
           "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A run folder or checkpoint that cannot be used (missing, corrupt, wrong domain)."""


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _state_dict_for_save(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; clone to contiguous independent tensors
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_checkpoint(run_dir: Path, model: torch.nn.Module, ema: torch.nn.Module | None,
                    state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Atomically replace ``run_dir/checkpoint`` with the given weights and state."""
    run_dir = Path(run_dir)
    final = run_dir / "checkpoint"
    tmp = run_dir / "checkpoint.tmp"
    old = run_dir / "checkpoint.old"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(_state_dict_for_save(model), str(tmp / "model.safetensors"))
    if ema is not None:
        save_file(_state_dict_for_save(ema), str(tmp / "ema.safetensors"))
    torch.save(state, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps({"format": CHECKPOINT_FORMAT, **meta}, indent=2))
    for f in tmp.iterdir():  # flush file contents before the rename makes them visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
    return final


def _checkpoint_dir(run_dir: Path) -> Path:
    final = run_dir / "checkpoint"
    if final.is_dir():
        return final
    old = run_dir / "checkpoint.old"
    if old.is_dir():  # killed between the two renames: the previous checkpoint is intact
        return old
    raise CheckpointError(f"{run_dir} has no checkpoint/ folder; is it a run folder written by 'diffuse train'?")


def read_run_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError(f"checkpoint folder {run_dir} does not exist")
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a folder; expected a run folder written by 'diffuse train'")
    cfg = run_dir / "config.json"
    if not cfg.is_file():
        raise CheckpointError(f"{run_dir} has no config.json; expected a run folder written by 'diffuse train'")
    try:
        return RunConfig.load(cfg)
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{cfg} is corrupt or not a diffuse run config ({exc})") from None


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({str(exc).splitlines()[0][:120]})") from None


def load_checkpoint(run_dir: str | Path, with_state: bool = False) -> dict[str, Any]:
    """Read weights (and optionally training state) of a run folder.

    Returns ``{"config", "meta", "model", "ema", "state"}`` with state dicts on CPU.
    """
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    ckpt = _checkpoint_dir(run_dir)
    try:
        meta = json.loads((ckpt / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{ckpt / 'meta.json'} is missing or corrupt ({exc})") from None
    if meta.get("domain") != config.domain:
        raise CheckpointError(f"{ckpt} belongs to domain {meta.get('domain')!r} but config.json says {config.domain!r}")
    out: dict[str, Any] = {"config": config, "meta": meta, "model": _load_weights(ckpt / "model.safetensors")}
    ema_path = ckpt / "ema.safetensors"
    out["ema"] = _load_weights(ema_path) if ema_path.exists() else None
    if with_state:
        try:
            out["state"] = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a corrupt file
            raise CheckpointError(f"{ckpt / 'state.pt'} is corrupt or truncated ({str(exc).splitlines()[0][:120]})") from None
    return out
