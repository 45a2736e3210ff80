"""Run folders and checkpoints.

Layout of a run folder::

    config.json                 RunConfig: everything needed to rebuild the model (written once validated)
    metrics.jsonl               one JSON object per line (training losses, evaluations)
    checkpoint/                 the current checkpoint
        model.safetensors       raw weights (the optimiser's copy)
        ema.safetensors         EMA weights (used for sampling by default)
        state.pt                optimiser, LR scheduler, EMA count, step (loaded weights_only)
        meta.json               domain, step, generation, format; written last: the completeness marker
    checkpoint.tmp/             only after an interrupted save (see below)
    checkpoint.old/             idem
    samples/final/              samples of the final evaluation (samples/step_NNNNNN/ for periodic ones)

A *model folder* (written by ``save_pretrained``; the shipped models are model folders) holds the
weights used beside its config and no ``checkpoint/`` folder: ``config.json``,
``ema.safetensors``, ``MODEL_CARD.md`` and optionally ``meta.json`` (domain, step). Every reader
here takes it where it takes a run folder: its ``ema.safetensors`` serves as both the raw and the
EMA weights, and it has no training state (it starts new runs, ``--init``, and is never resumed).

Saving is recoverable from every intermediate state. A checkpoint folder is *complete* only
when its ``meta.json`` exists: it is written (fsynced, renamed into place) after every other
file is on disk, and removed first when a folder is deleted, so a folder with a marker is
always whole. Each save carries a ``generation`` one above the newest complete checkpoint.
:func:`save_checkpoint` (1) removes every folder but the newest complete one, (2) writes the new
checkpoint into a staging folder (``checkpoint.tmp``, or ``checkpoint.old`` if the newest
complete one is ``checkpoint.tmp``), marker last, (3) removes the previous checkpoint and (4)
renames the staging folder to ``checkpoint``. A kill at any point leaves the previous or the
new checkpoint complete; :func:`load_checkpoint` takes the complete folder with the highest
generation and ignores the others, which the next save (or a resume) removes, saying so in a
log line. Run folders of earlier versions (``meta.json`` without a generation) still load.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save as safetensors_bytes

from ..config import CONFIG_VERSION, RunConfig, TrainConfig, update_dataclass
from ..data.registry import domain_class
from ..errors import CheckpointError, ConfigVersionError, NotWritableError, UserInputError
from ..io import atomic_write_text, fsync_dir, write_synced, writing

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_run_config", "checkpoint_dir", "read_weights",
           "checkpoint_meta", "read_checkpoint", "file_sha256", "identity_weights_file", "load_kind_config",
           "clean_checkpoints", "check_writable", "is_run_folder", "load_weights", "CHECKPOINT_FORMAT",
           "is_model_folder", "MODEL_WEIGHTS", "hardware_record", "complete_checkpoint", "kept_text",
           "drop_records_after", "refuse_model_folder"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2
_MARKER = "meta.json"
#: candidate checkpoint folders, in order of preference between equal generations
_NAMES = ("checkpoint", "checkpoint.old", "checkpoint.tmp")


def hardware_record(device: torch.device | str, world_size: int = 1) -> dict[str, Any]:
    """What a run trained on, as its checkpoint records it (for model cards): the device, its name
    (the GPU's, or the CPU's from /proc/cpuinfo where readable), the processes and threads."""
    import platform
    dev = torch.device(device)
    name = platform.processor() or platform.machine()
    if dev.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(dev)
    else:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return {"device": dev.type, "name": name, "processes": int(world_size), "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "torch": torch.__version__}


def _state_dict_for_save(module: torch.nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; clone to contiguous independent tensors
    state = module if isinstance(module, dict) else module.state_dict()
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _write_file(path: Path, data: bytes) -> None:
    with writing(path):
        write_synced(path, data)


def checkpoint_meta(folder: Path) -> dict[str, Any] | None:
    """The folder's meta.json if it marks a complete checkpoint, else None."""
    try:
        meta = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    if folder.name == "checkpoint.tmp" and int(meta.get("format", 1)) < 2:
        return None  # a staging folder of format 1 was never known to be complete
    return meta


def _scan(run_dir: Path) -> tuple[Path | None, dict[str, Any] | None, list[Path]]:
    """(newest complete checkpoint folder, its meta, every other checkpoint folder present)."""
    present, complete = [], []
    for rank, name in enumerate(_NAMES):
        folder = run_dir / name
        if not (folder.exists() or folder.is_symlink()):
            continue
        present.append(folder)
        meta = checkpoint_meta(folder) if folder.is_dir() else None
        if meta is not None:
            complete.append((int(meta.get("generation", 0)), -rank, folder, meta))
    if not complete:
        return None, None, present
    _, _, best, meta = max(complete, key=lambda c: c[:2])
    return best, meta, [f for f in present if f != best]


#: the weights file of a model folder (``save_pretrained``, the shipped models)
MODEL_WEIGHTS = "ema.safetensors"


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a model folder (``save_pretrained``): ``config.json`` and
    ``ema.safetensors`` side by side, and no checkpoint folder."""
    p = Path(path)
    return ((p / "config.json").is_file() and (p / MODEL_WEIGHTS).is_file()
            and not any((p / n).exists() for n in _NAMES))


def refuse_model_folder(run_dir: str | Path) -> None:
    """A :class:`CheckpointError` where ``run_dir`` is a model folder: it keeps no training state, so
    it is never resumed nor restarted in place (its weights would be lost)."""
    if is_model_folder(run_dir):
        raise CheckpointError(f"{run_dir} is a model folder (save_pretrained), which keeps no training state; "
                              f"start a new run from it with --init {run_dir}")


def _remove(folder: Path) -> None:
    """Delete a checkpoint folder, marker first: a kill half-way leaves an incomplete folder."""
    if folder.is_dir() and not folder.is_symlink():
        if (folder / _MARKER).exists():
            os.unlink(folder / _MARKER)
        shutil.rmtree(folder)
    else:
        os.unlink(folder)


def clean_checkpoints(run_dir: str | Path) -> None:
    """Remove every checkpoint folder but the newest complete one (left by an interrupted save)."""
    run_dir = Path(run_dir)
    best, _, others = _scan(run_dir)
    for folder in others:
        what = "an older checkpoint" if checkpoint_meta(folder) is not None else "an incomplete checkpoint"
        _remove(folder)
        log.warning("removed %s: %s left by an interrupted save%s", folder, what,
                    f" (using {best.name})" if best is not None else "")


def _checkpoint_folders(run_dir: Path) -> list[Path]:
    return [run_dir / n for n in _NAMES if (run_dir / n).is_dir()]


def check_writable(run_dir: str | Path, training: bool = True) -> None:
    """Raise PermissionError naming the first folder (or file) of a run that must be written but
    cannot: the run folder and its checkpoint folders (a save replaces them), and with
    ``training`` also metrics.jsonl and samples/."""
    run_dir = Path(run_dir)
    paths = [run_dir, *_checkpoint_folders(run_dir)]
    if training:
        paths += [p for p in (run_dir / "metrics.jsonl", run_dir / "samples") if p.exists()]
    for p in paths:
        if not os.access(p, os.W_OK | (os.X_OK if p.is_dir() else 0)):
            raise NotWritableError(f"{p} is not writable; training must write the run folder, its checkpoint, "
                                  "metrics and samples (fix the permissions or copy the run)")


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` looks like a run folder written by ``diffuse train``."""
    path = Path(path)
    return (path / "config.json").exists() or any((path / n).exists() for n in _NAMES)


def save_checkpoint(run_dir: Path, model: torch.nn.Module | dict[str, torch.Tensor],
                    ema: torch.nn.Module | dict[str, torch.Tensor] | None,
                    state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write a new ``run_dir/checkpoint`` (see the module docstring for the protocol).

    Everything is serialised in memory and the run folder's writability checked before the
    first change on disk, so a failure (an exception) leaves the previous checkpoint current.
    """
    run_dir = Path(run_dir)
    blobs = {"model.safetensors": safetensors_bytes(_state_dict_for_save(model))}
    if ema is not None:
        blobs["ema.safetensors"] = safetensors_bytes(_state_dict_for_save(ema))
    buf = io.BytesIO()
    torch.save(state, buf)
    blobs["state.pt"] = buf.getvalue()
    best, best_meta, _ = _scan(run_dir)
    generation = int(best_meta.get("generation", 0)) + 1 if best_meta is not None else 1
    marker = json.dumps({"format": CHECKPOINT_FORMAT, **meta, "generation": generation}, indent=2).encode()
    check_writable(run_dir, training=False)
    with writing(run_dir / "checkpoint", lambda: kept_text(run_dir)):
        clean_checkpoints(run_dir)                                     # (1)
        staging = run_dir / ("checkpoint.old" if best is not None and best.name == "checkpoint.tmp"
                             else "checkpoint.tmp")
        os.mkdir(staging)                                              # (2)
        try:
            for name, data in blobs.items():
                _write_file(staging / name, data)
            _write_file(staging / f"{_MARKER}.tmp", marker)
            os.replace(staging / f"{_MARKER}.tmp", staging / _MARKER)
        except BaseException:
            # an incomplete staging folder is never read; remove it now (a full disk gets its space back)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(staging)
        fsync_dir(run_dir)
        if best is not None:                                           # (3)
            _remove(best)
        final = run_dir / "checkpoint"
        if staging != final:                                           # (4)
            os.replace(staging, final)
            fsync_dir(run_dir)
    return final


def drop_records_after(run_dir: str | Path, step: int) -> None:
    """Drop the ``metrics.jsonl`` records of steps after ``step`` (a killed run logged them; the
    resumed run logs them again) and lines torn by a kill, atomically."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            ok = int(json.loads(line)["step"]) <= step
        except (ValueError, KeyError, TypeError):
            ok = False  # a line torn by a kill
        if ok:
            keep.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(keep))
        log.info("metrics.jsonl: dropped %d records after the checkpoint's step %d", dropped, step)


def complete_checkpoint(run_dir: str | Path) -> dict[str, Any] | None:
    """The meta of the newest complete checkpoint of ``run_dir``, or None (none was completed)."""
    return _scan(Path(run_dir))[1]


def kept_text(run_dir: str | Path) -> str:
    """What a failed write in a run folder leaves: its newest complete checkpoint, if any."""
    meta = complete_checkpoint(run_dir)
    if meta is None:
        return f"no checkpoint was completed yet (the same command, or --resume {run_dir}, starts the run again)"
    return f"the checkpoint at step {meta.get('step')} is intact (continue with --resume {run_dir})"


def checkpoint_dir(run_dir: Path) -> Path:
    """The folder holding a run's newest complete checkpoint (a model folder: itself)."""
    best, _, others = _scan(run_dir)
    if best is None and not others and is_model_folder(run_dir):
        return Path(run_dir)
    if best is None:
        if others:
            raise CheckpointError(f"{run_dir} has no complete checkpoint (only {', '.join(p.name for p in others)}, "
                                  "left by a save that was interrupted before it finished)")
        raise CheckpointError(f"{run_dir} has no checkpoint/ folder; is it a run folder written by 'diffuse train'?")
    for folder in others:
        log.warning("ignoring %s (%s); the next save removes it", folder,
                    "an older checkpoint" if checkpoint_meta(folder) is not None else "incomplete, left by an interrupted save")
    return best


def load_kind_config(cls, run_dir: str | Path, kind: str, command: str, not_kind: str):
    """The dataclass ``cls`` read from the ``config.json`` of a ``kind`` run folder (classifier,
    autoencoder) written by ``diffuse COMMAND``; its ``train`` section becomes a checked
    :class:`TrainConfig`. One CheckpointError line for a missing folder, a file, a missing or
    corrupt config, or a run of another kind (``not_kind``: that message)."""
    run = Path(run_dir)
    if not run.exists():
        raise CheckpointError(f"{kind} run {run} does not exist")
    if not run.is_dir():
        raise CheckpointError(f"{run} is not a folder; expected a run folder written by 'diffuse {command}'")
    path = run / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run} has no config.json; expected a run folder written by 'diffuse {command}'")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc})") from None
    if not isinstance(d, dict) or d.get("kind") != kind:
        raise CheckpointError(not_kind)
    try:
        d["train"] = update_dataclass(TrainConfig(), d.get("train", {}), "train")
        return cls(**d)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt or not a {kind} config ({exc})") from None


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
        d = json.loads(cfg.read_text())
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"{cfg} is corrupt or not a diffuse run config ({exc})") from None
    if isinstance(d, dict) and d.get("kind") in _OTHER_KINDS:
        what, command = _OTHER_KINDS[d["kind"]]
        raise CheckpointError(f"{run_dir} is {what}, not a diffusion model; {command}")
    try:
        return RunConfig.from_dict(d, _domain_upgrade(d))
    except ConfigVersionError as exc:
        raise CheckpointError(f"{run_dir} was {exc}") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # unknown keys, bad values
        raise CheckpointError(f"{cfg} is corrupt or not a diffuse run config ({exc})") from None


#: run folders of the auxiliary models: what they are, and which command takes them
_OTHER_KINDS = {
    "autoencoder": ("an autoencoder run", "train a latent diffusion model on it with 'diffuse train --latent RUN'"),
    "classifier": ("a noise-aware classifier run", "use it for classifier guidance with 'diffuse sample "
                   "--guidance classifier --classifier RUN'"),
}


def _domain_upgrade(d: Any):
    """The domain's part of upgrading an older run config (``Domain.upgrade_config``), or None
    where there is nothing to upgrade or the domain is unknown (its loading says so)."""
    if not isinstance(d, dict) or d.get("version", 1) == CONFIG_VERSION or not isinstance(d.get("domain"), str):
        return None
    try:
        return domain_class(d["domain"]).upgrade_config
    except UserInputError:
        return None


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file, read in blocks: the identity of a weights file."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def identity_weights_file(checkpoint_dir: str | Path) -> Path:
    """The file whose SHA-256 names a checkpoint's weights: the EMA weights, else the raw ones."""
    ema = Path(checkpoint_dir) / "ema.safetensors"
    return ema if ema.is_file() else Path(checkpoint_dir) / "model.safetensors"


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({str(exc).splitlines()[0][:120]})") from None


def load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], where: str | Path,
                 context: str | None = None) -> None:
    """``module.load_state_dict(weights)``, or one CheckpointError line naming the first
    mismatched tensor (``size mismatch for NAME: checkpoint [..] vs model [..]``) and how many
    others do not fit; ``context`` replaces the line's opening (what the weights were meant for)."""
    own = module.state_dict()
    problems = [f"size mismatch for {name}: checkpoint {list(weights[name].shape)} vs model {list(t.shape)}"
                for name, t in own.items() if name in weights and tuple(weights[name].shape) != tuple(t.shape)]
    problems += [f"tensor {name} of the model is missing from the checkpoint" for name in own if name not in weights]
    problems += [f"unexpected tensor {name} in the checkpoint" for name in weights if name not in own]
    if problems:
        more = f" (and {len(problems) - 1} other mismatched tensor{'s' if len(problems) > 2 else ''})" \
            if len(problems) > 1 else ""
        opening = context or f"weights in {where} do not fit the model its config describes"
        raise CheckpointError(f"{opening}: {problems[0]}{more}")
    module.load_state_dict(weights)


def load_checkpoint(run_dir: str | Path, with_state: bool = False) -> dict[str, Any]:
    """Read weights (and optionally training state) of the newest complete checkpoint of a
    diffusion run, with its config.

    Returns ``{"config", "meta", "model", "ema", "state", "path"}`` with state dicts on CPU.
    """
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    out = read_checkpoint(run_dir, with_state)
    if out["meta"].get("domain") != config.domain:
        raise CheckpointError(f"{out['path']} belongs to domain {out['meta'].get('domain')!r} but config.json says "
                              f"{config.domain!r}")
    return {"config": config, **out}


def read_checkpoint(run_dir: str | Path, with_state: bool = False) -> dict[str, Any]:
    """The newest complete checkpoint of any run folder (a diffusion model's, an autoencoder's, a
    classifier's): ``{"meta", "model", "ema", "state", "path"}`` (``ema`` None where it has none;
    ``state`` only ``with_state``, loaded ``weights_only``)."""
    ckpt = checkpoint_dir(Path(run_dir))
    if ckpt == Path(run_dir):            # a model folder: its weights serve as raw and EMA, no state
        if with_state:
            refuse_model_folder(run_dir)
        meta = checkpoint_meta(ckpt) or {}
        if "domain" not in meta:         # shipped models carry no meta.json: their config names the domain
            try:
                meta["domain"] = json.loads((ckpt / "config.json").read_text()).get("domain")
            except (OSError, ValueError, AttributeError):
                pass
        weights = read_weights(ckpt / MODEL_WEIGHTS)
        return {"meta": meta, "path": ckpt, "model": weights, "ema": weights}
    out: dict[str, Any] = {"meta": checkpoint_meta(ckpt) or {}, "path": ckpt,
                           "model": read_weights(ckpt / "model.safetensors")}
    ema_path = ckpt / "ema.safetensors"
    out["ema"] = read_weights(ema_path) if ema_path.exists() else None
    if with_state:
        try:
            out["state"] = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a corrupt file
            raise CheckpointError(f"{ckpt / 'state.pt'} is corrupt or truncated ({str(exc).splitlines()[0][:120]})") from None
    return out
