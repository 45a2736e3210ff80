"""Models from where they live: a run folder, a model shipped in the package, or nothing (untrained).

:func:`load` rebuilds a trained model from its run folder, :func:`load_pretrained` a model
shipped inside the package (nothing is downloaded), :func:`build` an untrained one. Each returns
a :class:`~diffuse.api.model.DiffusionModel`; a latent model comes with its autoencoder
(checked: present, unchanged, of the same domain).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..core.config import DiffusionConfig, RunConfig
from ..core.data.domain import Domain
from ..core.data.registry import get_domain
from ..core.errors import CheckpointError
from ..core.memory import check_loading
from ..core.models.latent import latent_domain
from ..core.process.build import build_process
from ..core.process.objectives import make_denoiser
from ..core.training.checkpoint import load_checkpoint, load_weights, read_run_config
from ..core.training.optim import resolve_device
from ..core.validation import check_device
from ..pretrained import folder
from .configs import diffusion_config
from .model import DiffusionModel

__all__ = ["load", "load_pretrained", "build", "read_pretrained", "assemble"]


def load(checkpoint: str | Path, *, device: str = "auto", ema: bool = True,
         domain: str | None = None) -> DiffusionModel:
    """Rebuild a trained model from a run folder (EMA weights unless ``ema=False``); ``domain``:
    the domain it must be of (a CheckpointError otherwise)."""
    run_dir = Path(checkpoint)
    ck = load_checkpoint(run_dir)
    cfg: RunConfig = ck["config"]
    if domain is not None and domain != cfg.domain:
        raise CheckpointError(f"{run_dir} is a checkpoint of domain {cfg.domain!r}, not {domain!r}")
    weights = ck["ema"] if (ema and ck["ema"] is not None) else ck["model"]
    model = assemble(cfg, weights, run_dir, device)
    model.checkpoint_info = {"checkpoint_step": ck["meta"].get("step"),
                             "weights": "ema" if weights is ck["ema"] else "raw"}
    return model


def assemble(cfg: RunConfig, weights: dict[str, torch.Tensor], where: Path, device: str) -> DiffusionModel:
    """The model ``cfg`` describes with ``weights`` (float16-stored tensors are cast to the model's dtype)."""
    dom = get_domain(cfg.domain)
    dev = resolve_device(device)
    if cfg.latent is not None:   # latent model: its autoencoder must be there, unchanged, of this domain
        if not isinstance(cfg.latent, dict) or not isinstance(cfg.latent.get("path"), str):
            raise CheckpointError(f"{where / 'config.json'} has a corrupt latent record {cfg.latent!r}")
        ae_path = Path(cfg.latent["path"])     # a model folder keeps its autoencoder inside (a relative path)
        ae_path = ae_path if ae_path.is_absolute() else Path(where) / ae_path
        dom = latent_domain(dom, ae_path, cfg.latent).to(dev)
    dom = dom.bind(cfg.data_info)
    diff = build_process(cfg.diffusion, cfg.data_info)
    check_loading(lambda: make_denoiser(cfg.objective, diff, dom.build_backbone(cfg.model)), dev,
                  f"the model of {where}")
    den = make_denoiser(cfg.objective, diff, dom.build_backbone(cfg.model))
    own = den.state_dict()
    weights = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v for k, v in weights.items()}
    load_weights(den, weights, where)
    return DiffusionModel(dom, cfg, den.to(dev), diff, dev, where)


def load_pretrained(name: str, *, device: str = "auto", root: str | Path | None = None) -> DiffusionModel:
    """A pretrained model shipped inside the package (``pretrained/NAME``: config, EMA weights and
    a model card; see :mod:`diffuse.pretrained`), e.g. ``load_pretrained("molecules")``. Nothing is
    downloaded. ``root``: another folder laid out like the package (holding ``pretrained/``).
    An unknown name is a CheckpointError that lists the available ones."""
    path, cfg, weights = read_pretrained(name, root)
    return assemble(cfg, weights, path, device)


def read_pretrained(name: str, root: str | Path | None = None) -> tuple[Path, RunConfig, dict[str, torch.Tensor]]:
    """A shipped model's folder, config and EMA weights (errors: CheckpointError, one line)."""
    path = folder(name, root)
    cfg = read_run_config(path)
    try:
        weights = load_file(str(path / "ema.safetensors"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path / 'ema.safetensors'} is corrupt or truncated "
                              f"({str(exc).splitlines()[0][:120]})") from None
    return path, cfg, weights


def build(domain: str | Domain, data_info: dict[str, Any], *, model: dict[str, Any] | None = None,
          diffusion: dict[str, Any] | DiffusionConfig | None = None, device: str = "auto",
          seed: int = 0) -> DiffusionModel:
    """An untrained model for ``domain`` (e.g. as a baseline, or to train with your own loop):
    the domain's default backbone and process under ``model`` / ``diffusion``."""
    dom = get_domain(domain) if isinstance(domain, str) else domain
    model_cfg = dom.model_config(model or {})
    diff_cfg = diffusion if isinstance(diffusion, DiffusionConfig) else diffusion_config(dom, diffusion or {})
    cfg = RunConfig(domain=dom.name, model=model_cfg, diffusion=diff_cfg, data_info=dict(data_info))
    dom = dom.bind(cfg.data_info)
    torch.manual_seed(seed)
    diff = build_process(diff_cfg, cfg.data_info)
    dev = resolve_device(check_device(device))
    den = diff.denoiser(dom.build_backbone(model_cfg)).to(dev)
    return DiffusionModel(dom, cfg, den, diff, dev)
