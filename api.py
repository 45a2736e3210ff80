"""The Python API: everything the CLI does is a few calls away.

    import diffuse.api as diffuse

    result = diffuse.train("image", steps=500, out="runs/image")      # bundled default data
    model = diffuse.load("runs/image")                                 # EMA weights by default
    model = diffuse.load_pretrained("molecules")                       # shipped in the package
    samples = model.sample(16, sampler="ddim", steps=50, seed=0)

    # conditional: train with labels (condition dropout 0.1), sample class 7 with guidance 3
    diffuse.train("image", conditions=["label"], out="runs/digits")
    samples = diffuse.load("runs/digits").sample(16, cond={"label": 7}, guidance_scale=3)
    model.write(samples, "out/")
    print(model.evaluate(num=256))

    # classifier guidance: a noise-aware classifier steers any model of the same data
    diffuse.train_classifier("image", out="runs/digits-clf")
    samples = model.sample(16, cond={"label": 7}, guidance="classifier", classifier="runs/digits-clf",
                           guidance_scale=4)

``train`` reads the data, builds the domain's backbone and the diffusion process from a
:class:`~diffuse.core.config.RunConfig`, runs the :class:`~diffuse.core.trainer.Trainer` and
leaves a run folder; ``load`` rebuilds the model from that folder alone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .core.cache import cache_dir, cache_entries, clear_cache
from .core.checkpoint import (CheckpointError, atomic_write_text, check_writable, is_run_folder, load_checkpoint,
                              load_weights, read_run_config)
from .core.config import DiffusionConfig, RunConfig, TrainConfig, check_device, update_dataclass
from .core.condition import Condition, parse_condition
from .core.diffusion import Diffusion
from .core.domain import Batch, DataError, Domain, DomainDataset
from .core.generate import generate
from .core.guidance import Guidance
from .core.registry import available_domains, get_domain
from .core.io import atomic_write_text as write_text, fresh_sample_dir, write_samples
from .core.trainer import Trainer, TrainResult, resolve_device

__all__ = ["train", "load", "build", "DiffusionModel", "make_config", "available_domains", "get_domain",
           "TrainResult", "write_samples", "write_text", "fresh_sample_dir", "train_classifier", "load_classifier",
           "prepare_classifier_guidance", "load_pretrained", "recipe_domain", "train_autoencoder",
           "load_autoencoder", "reconstruction_report", "cache_dir", "cache_entries", "clear_cache"]

log = logging.getLogger(__name__)


def _read_config_file(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    p = Path(path)
    if str(path).strip() == "":
        raise ValueError("--config is an empty string; give a JSON file")
    if p.is_dir():
        raise IsADirectoryError(f"config file {p} is a folder; give a JSON file")
    if not p.exists():
        raise FileNotFoundError(f"config file {p} does not exist")
    if not p.is_file():
        raise ValueError(f"config file {p} is not a regular file; give a JSON file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"config file {p} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"config file {p} is not UTF-8 text; expected a JSON file") from None
    except RecursionError:
        raise ValueError(f"config file {p} is nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {p} must hold a JSON object with keys model / diffusion / train / data_options")
    unknown = set(data) - {"model", "diffusion", "train", "data_options", "domain", "data"}
    if unknown:
        raise ValueError(f"config file {p} has unknown section(s) {sorted(unknown)}; "
                         "expected model, diffusion, train, data_options")
    return data


def recipe_domain(path: str | Path) -> str | None:
    """The ``domain`` a config file (a recipe such as ``recipes/molecules.json``) names, if any."""
    name = _read_config_file(path).get("domain")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"config file {path}: 'domain' must be a domain name, got {name!r}")
    return name


def make_config(domain: str | Domain, *, data: str | Path | None = None, config: dict[str, Any] | str | Path | None = None,
                diffusion: dict[str, Any] | None = None, conditions: list[str] | str | None = None,
                **train_overrides: Any) -> RunConfig:
    """A :class:`RunConfig` from the domain's defaults, a config dict / JSON file, ``diffusion``
    overrides of :class:`DiffusionConfig` fields (``{"training": "edm"}``...), and keyword overrides
    of :class:`TrainConfig` fields (``steps=``, ``batch_size=``, ``lr=``, ``device=``, ``seed=`` ...).

    Everything is validated here (types and ranges of every field, the model section through the
    domain's ``check_config``, the schedule by building it, the evaluation sampler and its step
    count against the schedule) so that a mistake is a ``ValueError`` before any file exists."""
    dom = get_domain(domain) if isinstance(domain, str) else domain
    user = config if isinstance(config, dict) else _read_config_file(config)
    if user.get("domain") is not None and user["domain"] != dom.name:
        raise ValueError(f"the config is for domain {user['domain']!r}, not {dom.name!r}")
    for section in ("model", "diffusion", "train", "data_options"):
        if not isinstance(user.get(section, {}), dict):
            raise ValueError(f"config section {section!r} must be a JSON object, got {user[section]!r}")
    if "data" in user and user["data"] is not None and not isinstance(user["data"], str):
        raise ValueError(f"config 'data' must be a path string, got {user['data']!r}")
    model = {**dom.default_model(), **user.get("model", {})}
    dom.check_config(model)
    diff_over = {k: v for k, v in (diffusion or {}).items() if v is not None}
    diffusion_cfg = update_dataclass(DiffusionConfig(),
                                     {**dom.default_diffusion(), **user.get("diffusion", {}), **diff_over}, "diffusion")
    diffusion_cfg.validate()
    diff = Diffusion(diffusion_cfg)  # the training mode's own checks, with a clear message
    train_cfg = update_dataclass(TrainConfig(), {**dom.default_train(), **user.get("train", {})}, "train")
    overrides = {k: v for k, v in train_overrides.items() if v is not None}
    train_cfg = update_dataclass(train_cfg, overrides, "train")
    _check_train(train_cfg, diff)
    data_options = {**dom.default_data(), **user.get("data_options", {})}
    data_options.update(_condition_data_options(dom, conditions))   # cond: --condition NAME
    data = data if data is not None else user.get("data")
    if data is not None and str(data).strip() == "":
        raise ValueError("--data is an empty string; give a file or folder, or leave it out for the bundled data")
    return RunConfig(domain=dom.name, data=str(data) if data is not None else None, data_options=data_options,
                     model=model, diffusion=diffusion_cfg, train=train_cfg)


def _check_train(cfg: TrainConfig, diffusion: Diffusion | None = None) -> None:
    """Types and ranges of every field (``TrainConfig.validate``), and, given the diffusion
    process, that the evaluation sampler can run ``eval_steps`` steps on its schedule."""
    cfg.validate()
    if diffusion is not None:
        T = diffusion.schedule.num_steps
        if T and cfg.eval_steps > T:
            raise ValueError(f"train.eval_steps is {cfg.eval_steps} but the schedule has only T={T} steps")


def _load_data(dom: Domain, config: RunConfig) -> DomainDataset:
    if config.data is not None and config.data not in dom.named_datasets and not Path(config.data).exists():
        raise DataError(f"data path {config.data} does not exist")
    dataset = dom.load_data(config.data, config.data_options)
    if len(dataset) == 0:
        raise DataError(f"data at {config.data or 'the bundled default'} holds no usable {dom.name} samples")
    return dataset


def _split(dataset: DomainDataset, cfg: TrainConfig) -> tuple[DomainDataset, DomainDataset | None]:
    if cfg.holdout_fraction <= 0 or len(dataset) < 4:
        return dataset, None
    return dataset.split(cfg.holdout_fraction, seed=cfg.seed)


class DiffusionModel:
    """A domain, a denoiser (with its diffusion process) and the run's configuration."""

    def __init__(self, domain: Domain, config: RunConfig, denoiser: torch.nn.Module, diffusion: Diffusion,
                 device: torch.device, run_dir: Path | None = None) -> None:
        self.domain, self.config, self.denoiser, self.diffusion = domain, config, denoiser, diffusion
        self.device, self.run_dir = device, run_dir
        #: which weights of which checkpoint were loaded (``{"checkpoint_step", "weights"}``; set by :func:`load`)
        self.checkpoint_info: dict[str, Any] = {}
        self.denoiser.eval()

    @property
    def data_info(self) -> dict[str, Any]:
        return self.config.data_info

    def sample(self, num: int, *, sampler: str | None = None, steps: int | None = None, eta: float | None = None,
               spacing: str | None = None, seed: int = 0, batch_size: int = 64, cond: Any = None,
               progress: Callable[[int], None] | None = None, structure: Any = None,
               guidance_scale: float | str | None = None, guidance_rescale: float | str | None = None,
               guidance_interval: Any = None, guidance: str | None = None, classifier: Any = None,
               **options: Any) -> Batch:
        """Draw ``num`` samples (a :class:`Batch` of data on CPU; a latent model's samples are
        decoded, ``core.latent``). Same seed, same samples,
        whatever ``batch_size``. ``eta`` applies to DDIM; other options go to the sampler.

        ``cond``: the network condition, ``{name: value}`` (``{"label": 7}``, ``{"label": "seven"}``,
        ``{"label": [0, 1, 2]}`` cycled over the samples) or a :class:`Condition`; names the model
        knows but ``cond`` leaves out are null. ``structure``: the domain's sampling structure
        (molecules: atom counts). ``guidance_scale`` s: classifier-free guidance (0 unconditional,
        1 conditional, > 1 guided), with ``guidance_rescale`` phi and ``guidance_interval``
        ``(lo, hi)`` of noise levels (see ``core.guidance``).

        ``guidance="classifier"`` with ``classifier`` (a run folder from :func:`train_classifier`
        or a loaded classifier): classifier guidance towards the classifier's target in ``cond``
        (``{"label": 7}``) with scale ``guidance_scale`` (default 1); the model may be unconditional.

        ``sampler`` None: the domain's default (:meth:`Domain.default_sampling`: DDIM-50, audio
        DDPM-50, molecules DDPM-500; ``steps`` given still counts). ``spacing`` None: the domain's
        grid (:meth:`Domain.default_spacing`: audio's DDPM runs on Karras' grid) or the core's rule.

        A grid stored by :meth:`optimize_grid` for this sampler and number of steps is used when
        ``spacing`` is not given (one log line says so); ``spacing=`` overrides it."""
        sampler, steps = self.default_sampling(sampler, steps)
        if spacing is None and "grid" not in options:
            stored = self.stored_grid(sampler, steps)
            if stored is not None:
                options["grid"] = stored
        # --- classifier guidance (clf helper) ---
        if guidance not in (None, "free") or classifier is not None:
            if eta is not None:
                if sampler != "ddim":
                    raise ValueError(f"--eta applies to the ddim sampler only, not {sampler!r}")
                options["eta"] = eta
            return _classifier_guided_sample(self, num, cond, guidance or "classifier", classifier, guidance_scale,
                                             guidance_rescale, guidance_interval, sampler, steps, spacing, seed,
                                             batch_size, progress, structure, **options)
        condition, guidance = self.prepare_condition(num, cond, guidance_scale, guidance_rescale, guidance_interval)
        if eta is not None:
            if sampler != "ddim":
                raise ValueError(f"--eta applies to the ddim sampler only, not {sampler!r}")
            options["eta"] = eta
        return generate(self.denoiser, self.domain, self.data_info, num, sampler=sampler, steps=steps,
                        spacing=spacing, seed=seed, batch_size=batch_size, device=self.device, cond=condition,
                        progress=progress, structure=structure, guidance=guidance, **options)

    # --- per-model optimised grids (gridopt helper) ---
    def stored_grid(self, sampler: str, steps: int | None = None) -> torch.Tensor | None:
        """The grid :meth:`optimize_grid` stored in the run folder for ``sampler`` with ``steps``
        (default: the sampler's default) on this model's schedule and weights, or ``None``."""
        from .core.generate import default_steps
        from .core.gridopt import GRIDS_FILE, stored_grid

        if self.run_dir is None or not self.checkpoint_info or not isinstance(sampler, str):
            return None   # weights not loaded from a checkpoint (build(), untrained()): no stored grid
        schedule = self.diffusion.schedule
        n = default_steps(sampler, schedule) if steps is None else steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            return None
        found = stored_grid(self.run_dir, sampler, n, schedule, **self.checkpoint_info)
        if found is None:
            return None
        grid, entry = found
        log.warning("using the optimised %s grid for %d steps from %s (error %s vs %s on the default grid); "
                    "--spacing overrides it", sampler, n, self.run_dir / GRIDS_FILE, _fmt(entry.get("objective")),
                    _fmt(entry.get("start_objective")))
        return grid

    def optimize_grid(self, nfe: int, *, sampler: str = "ddim", num: int = 256, seed: int = 0,
                      batch_size: int = 64, ref_steps: int | None = None, max_evals: int | None = None,
                      save: bool = True, progress: Callable[[int, float], None] | None = None):
        """Find the time grid of ``nfe`` steps on which the deterministic ``sampler`` best reproduces
        its fine-grid solution (``ref_steps`` steps) from the same ``num`` prior draws (seed
        ``seed``), starting from the default grid (``core.gridopt``); the model's null condition is
        used for a conditional model. With ``save`` (and a run folder) the grid is stored in
        ``RUN/grids.json``, where :meth:`sample` finds it. Returns a
        :class:`~diffuse.core.gridopt.GridResult`; every argument is checked before any work."""
        from .core.generate import sampling_grid
        from .core.gridopt import optimize_grid, prior_batches, save_grid
        from .core.samplers import check_sampler_options, get_sampler

        for name, value in (("the number of steps (nfe)", nfe), ("the number of samples", num),
                            ("the batch size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, value in (("ref_steps", ref_steps), ("max_evals", max_evals)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if nfe < 2:
            raise ValueError(f"an optimised grid needs at least 2 steps (--nfe), got {nfe}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
            raise ValueError(f"the seed must be an integer in [0, 2^63), got {seed!r}")
        get_sampler(sampler)
        check_sampler_options(sampler, {})
        schedule = self.diffusion.schedule
        if schedule.num_steps and nfe > schedule.num_steps:
            raise ValueError(f"asked for {nfe} steps but the model was trained with T={schedule.num_steps}")
        if save and self.run_dir is not None and not os.access(self.run_dir, os.W_OK | os.X_OK):
            raise PermissionError(f"{self.run_dir} is not writable; optimize-grid stores its grid there "
                                  "(fix the permissions or copy the run)")
        start = sampling_grid(schedule, sampler, nfe, None)
        cond, _ = self.prepare_condition(num)
        problems = prior_batches(self.denoiser, self.domain, self.data_info, num, start_t=float(start[0]), seed=seed,
                                 batch_size=batch_size, device=self.device, cond=cond)
        with torch.no_grad():
            result = optimize_grid(problems, schedule, start, sampler=sampler, ref_steps=ref_steps,
                                   max_evals=max_evals, seed=seed, progress=progress)
        if save and self.run_dir is not None:
            save_grid(self.run_dir, result, schedule, num=num, seed=seed, **self.checkpoint_info)
        return result

    # --- conditional generation (cond helper) ---
    def condition_kinds(self) -> dict[str, Any]:
        """The conditions this model understands (``{}``: unconditional)."""
        return self.domain.condition_kinds(self.data_info)

    def prepare_condition(self, num: int, cond: Any = None, scale: Any = None, rescale: Any = None,
                          interval: Any = None) -> tuple[Condition | None, Guidance | None]:
        """``(Condition or None, Guidance or None)`` from user values; ``ValueError`` for bad input
        (unknown label, a condition for an unconditional model, a scale that is not a number...)."""
        kinds = self.condition_kinds()
        if cond is not None and not isinstance(cond, (dict, Condition)):
            raise ValueError(f"a condition is given as {{name: value}}, e.g. {{'label': 7}}, not {type(cond).__name__}; "
                             "sampling structure such as atom counts goes in structure=")
        n = num if isinstance(num, int) and num > 0 else 1
        condition = parse_condition(kinds, cond, n)
        if scale is None:
            if rescale is not None or interval is not None:
                raise ValueError("--guidance-rescale / --guidance-interval need --guidance-scale")
            return condition, None
        guidance = Guidance.parse(scale, 0.0 if rescale is None else rescale, interval)
        if not kinds:
            raise ValueError("guidance needs a conditional model; this one was trained without conditions")
        if cond is None:
            raise ValueError(f"guidance needs a condition to guide towards (e.g. --label); this model takes: "
                             f"{', '.join(sorted(kinds))}")
        return condition, guidance

    # --- completion and editing (inpaint helper) ---
    def completion_input(self, input: str | Path, options: dict[str, Any] | None = None) -> tuple[Batch, torch.Tensor]:
        """Read ``input`` (an image, a clip, a fragment) into model space with the mask of its
        known part (true = known), built from the domain's ``options`` (image ``mask`` / ``rect``,
        audio ``span`` / ``continue``, molecules ``num_atoms``; ``None`` values are left out)."""
        if input is None or str(input).strip() == "":
            raise ValueError("--input is required: the file to complete or edit")
        opts = {k: v for k, v in (options or {}).items() if v is not None}
        return self.domain.completion_input(input, opts, self.data_info)

    def _prepared(self, input: Any, options: dict[str, Any] | None, num: int) -> tuple[Batch, torch.Tensor]:
        batch, mask = input if isinstance(input, tuple) else self.completion_input(input, options)
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"the number of samples must be a positive integer, got {num!r}")
        x, space = batch.space.concat([batch.x] * num, [batch.space] * num)
        mask = torch.as_tensor(mask)
        return Batch(x, space, None, batch.extras), torch.cat([mask] * num) if mask.ndim else mask

    def complete(self, input: Any, num: int = 1, *, options: dict[str, Any] | None = None, sampler: str = "ddpm",
                 steps: int | None = None, spacing: str | None = None, seed: int = 0, jump_length: int = 1,
                 resample: int = 1, cond: Any = None, guidance_scale: Any = None, guidance_rescale: Any = None,
                 guidance_interval: Any = None, progress: Callable[[int], None] | None = None,
                 **sampler_options: Any) -> Batch:
        """``num`` completions of ``input`` (a path read with :meth:`completion_input` and
        ``options``, or an already read ``(Batch, mask)``): the known part kept exactly, the rest
        generated (``core.completion``; RePaint with ``jump_length`` / ``resample``). Sample ``i``
        draws only from seed ``(seed, i)``. Returns a Batch on CPU (molecules: in the fragment's frame)."""
        from .core.completion import generate_completion

        batch, mask = self._prepared(input, options, num)
        if bool(torch.as_tensor(mask).all()):
            raise ValueError("nothing to generate: the mask keeps the whole input (give a mask, rect, span, "
                             "continuation or more atoms)")
        condition, guidance = self.prepare_condition(num, cond, guidance_scale, guidance_rescale, guidance_interval)
        return generate_completion(self.denoiser, batch, mask, sampler=sampler, steps=steps, spacing=spacing,
                                   seed=seed, device=self.device, cond=condition, guidance=guidance,
                                   jump_length=jump_length, resample=resample, progress=progress, **sampler_options)

    def edit(self, input: Any, strength: float, num: int = 1, *, options: dict[str, Any] | None = None,
             invert: bool = False, fixed_point_iters: int = 0, sampler: str = "ddim", steps: int | None = None,
             spacing: str | None = None, seed: int = 0, cond: Any = None, guidance_scale: Any = None,
             guidance_rescale: Any = None, guidance_interval: Any = None,
             progress: Callable[[int], None] | None = None, **sampler_options: Any) -> Batch:
        """SDEdit (Meng et al. 2022): ``num`` edits of ``input`` noised to ``strength`` in [0, 1] and
        denoised (0: the input, 1: unconditional sampling); ``invert=True``: DDIM inversion, then
        DDIM (deterministic). Returns a Batch on CPU."""
        from .core.completion import generate_edit

        batch, _ = self._prepared(input, options, num)
        condition, guidance = self.prepare_condition(num, cond, guidance_scale, guidance_rescale, guidance_interval)
        return generate_edit(self.denoiser, batch, strength=strength, sampler=sampler, steps=steps, spacing=spacing,
                             seed=seed, device=self.device, cond=condition, guidance=guidance, invert=invert,
                             fixed_point_iters=fixed_point_iters, progress=progress, **sampler_options)

    def restoration_input(self, input: str | Path) -> dict[str, Any]:
        """The condition ``{name: value}`` of a restoration model read from a degraded input file
        (image: a low-resolution PNG -> ``{"lowres": ...}``)."""
        if input is None or str(input).strip() == "":
            raise ValueError("--input is required: the low-resolution file to restore")
        return self.domain.restoration_input(input, self.data_info)

    def upscale(self, input: Any, num: int = 1, **sample_options: Any) -> Batch:
        """``num`` restorations (SR3 super-resolution) of ``input``: a path, or a condition dict
        from :meth:`restoration_input`; ``sample_options`` as :meth:`sample`."""
        cond = input if isinstance(input, dict) else self.restoration_input(input)
        return self.sample(num, cond=cond, **sample_options)

    @staticmethod
    def known_error(samples: Batch, input: tuple[Batch, torch.Tensor]) -> float:
        """Largest ``|sample - known|`` over the known part (0 up to float rounding after completion)."""
        batch, mask = input
        n = len(samples)
        x, _ = batch.space.concat([batch.x] * n, [batch.space] * n)
        m = torch.as_tensor(mask)
        m = (torch.cat([m] * n) if m.ndim else m).expand_as(x)
        if not bool(m.any()):
            return 0.0
        return float((samples.x.float() - x.float()).abs()[m].max())

    def write(self, samples: Batch, out_dir: str | Path) -> list[Path]:
        """Write samples with the domain's writer, atomically (see :func:`write_samples`)."""
        return write_samples(self.domain, samples, out_dir, self.data_info)

    def describe(self, samples: Batch) -> dict[str, float] | None:
        return self.domain.describe_samples(samples, self.data_info)

    def reference_data(self, data: str | Path | None = None) -> DomainDataset:
        """The evaluation reference: all of ``data`` if given, else the training data's held-out split."""
        if data is not None:
            return _load_data(self.domain, replace(self.config, data=str(data)))
        dataset = _load_data(self.domain, self.config)
        _, held = _split(dataset, self.config.train)
        return held if held is not None else dataset

    def untrained(self, seed: int = 0) -> "DiffusionModel":
        """The same architecture and configuration with freshly initialised weights (a baseline)."""
        torch.manual_seed(seed)
        den = self.diffusion.denoiser(self.domain.build_backbone(self.config.model, self.data_info)).to(self.device)
        return DiffusionModel(self.domain, self.config, den, self.diffusion, self.device, self.run_dir)

    def likelihood(self, num: int = 64, *, data: str | Path | None = None, batch_size: int = 64,
                   exact_trace: bool | None = None, hutchinson_samples: int = 1, rtol: float = 1e-5,
                   atol: float = 1e-5, seed: int = 0) -> dict[str, float]:
        """Negative log-likelihood of ``num`` reference items under the probability-flow ODE
        (``core.likelihood``): mean nats per sample, bits per dimension, and ODE evaluations."""
        from .core.likelihood import batch_log_likelihood

        if not isinstance(num, int) or num < 1:
            raise ValueError(f"the number of likelihood samples must be a positive integer, got {num!r}")
        if self.config.latent is not None:
            raise ValueError("likelihoods of latent models are not supported (they would be of the latents, not "
                             "the data)")
        reference = self.reference_data(data)
        n = min(num, len(reference))
        gen = torch.Generator(self.device).manual_seed(seed)
        nll, bpd, nfe = [], [], 0
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(n, start + batch_size))
            batch = reference.batch(idx, torch.Generator().manual_seed(seed)).to(self.device)
            out = batch_log_likelihood(self.denoiser, batch, exact_trace=exact_trace,
                                       hutchinson_samples=hutchinson_samples, rtol=rtol, atol=atol, generator=gen,
                                       bins=self.domain.likelihood_bins)
            nll.append(out["nll_nats"].cpu())
            bpd.append(out["bits_per_dim"].cpu())
            nfe += int(out["nfe"])
        nll_t, bpd_t = torch.cat(nll), torch.cat(bpd)
        result = {"nll_nats": float(nll_t.mean()), "bits_per_dim": float(bpd_t.mean()),
                  "likelihood_items": n, "likelihood_nfe": nfe}
        if self.domain.likelihood_unit == "nats":
            result.pop("bits_per_dim")
        return result

    def default_sampling(self, sampler: str | None = None, steps: int | None = None) -> tuple[str, int | None]:
        """``(sampler, steps)`` as :meth:`sample` runs them: the given ones, or the domain's default
        sampler (and its steps, unless ``steps`` is given) when ``sampler`` is None."""
        if sampler is not None:
            return sampler, steps
        name, n = self.domain.default_sampling()
        return name, steps if steps is not None else n

    def spacing_used(self, sampler: str, steps: int | None = None, spacing: str | None = None) -> str:
        """The time grid :meth:`sample` runs ``sampler`` on: ``spacing`` if given, else ``"stored"``
        (an optimised grid of this run), else the domain's default or the core's rule."""
        from .core.samplers import default_spacing
        if spacing is not None:
            return spacing
        if self.stored_grid(sampler, steps) is not None:
            return "stored"
        schedule = self.diffusion.schedule
        return self.domain.default_spacing(schedule, sampler, steps) or default_spacing(schedule, sampler, steps)

    def training_conditions(self, num: int, seed: int = 0) -> Condition:
        """The conditions of ``num`` items drawn at random (with replacement, seeded) from the
        training split: labels in the training data's class shares, its captions, its property
        values. What a conditional model is evaluated with (``evaluate(cond="train")``)."""
        if not self.condition_kinds():
            raise ValueError("conditional evaluation needs a conditional model; this one was trained without "
                             "conditions (leave out --guidance-scale)")
        train_set, _ = _split(_load_data(self.domain, self.config), self.config.train)
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(len(train_set), (num,), generator=g)
        cond = train_set.batch(idx, g).cond
        if cond is None:
            raise ValueError("the training data carries no conditions for this conditional model")
        return cond

    def evaluate(self, num: int = 256, *, data: str | Path | None = None, samples: Batch | None = None,
                 cond: Any = None, **sample_options: Any) -> dict[str, float]:
        """Metrics of ``num`` fresh samples (or the given ``samples``) against reference data.
        ``cond="train"``: each sample conditioned on a random training item's condition
        (:meth:`training_conditions`; guide with ``guidance_scale``, default 1: conditional)."""
        reference = self.reference_data(data)
        if samples is None:
            if isinstance(cond, str) and cond == "train":
                cond = self.training_conditions(num, sample_options.get("seed", 0))
                if sample_options.get("guidance_scale") is None:
                    sample_options["guidance_scale"] = 1.0
            samples = self.sample(num, cond=cond, **sample_options)
        return self.domain.metrics(samples, reference, self.data_info)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def build(domain: str | Domain, data_info: dict[str, Any], *, model: dict[str, Any] | None = None,
          diffusion: dict[str, Any] | DiffusionConfig | None = None, device: str = "auto",
          seed: int = 0) -> DiffusionModel:
    """An untrained model for ``domain`` (e.g. as a baseline, or to train with your own loop)."""
    dom = get_domain(domain) if isinstance(domain, str) else domain
    model_cfg = {**dom.default_model(), **(model or {})}
    if isinstance(diffusion, DiffusionConfig):
        diff_cfg = diffusion
    else:
        diff_cfg = update_dataclass(DiffusionConfig(), {**dom.default_diffusion(), **(diffusion or {})}, "diffusion")
    cfg = RunConfig(domain=dom.name, model=model_cfg, diffusion=diff_cfg, data_info=dict(data_info))
    torch.manual_seed(seed)
    diff = Diffusion(diff_cfg.validate())
    dev = resolve_device(check_device(device))
    den = diff.denoiser(dom.build_backbone(model_cfg, cfg.data_info)).to(dev)
    return DiffusionModel(dom, cfg, den, diff, dev)


#: TrainConfig keys a resumed run may change: the total steps, evaluation / logging, the device
RESUMABLE_TRAIN_KEYS = ("steps", "eval_samples", "eval_sampler", "eval_steps", "eval_budget", "eval_min_seconds",
                        "sample_every", "log_every", "checkpoint_every", "final_eval", "device", "prefetch",
                        "precision", "channels_last", "compile")


def _refuse_change(run_dir: Path, key: str, new: Any, old: Any) -> None:
    raise ValueError(f"cannot resume {run_dir} with {key} = {new!r}: the run was trained with {old!r}, and only "
                     f"train.{', train.'.join(RESUMABLE_TRAIN_KEYS)} can change on resume; start a new run to change it")


def _resume_config(run_dir: Path, cfg: RunConfig, config: dict[str, Any] | str | Path | None,
                   diffusion: dict[str, Any] | None, train_overrides: dict[str, Any]) -> RunConfig:
    """The run's config with what may change on resume applied (``RESUMABLE_TRAIN_KEYS``, from the
    config file / dict and then the keyword overrides); any other key that differs is an error."""
    user = config if isinstance(config, dict) else _read_config_file(config)
    for key in ("domain", "data"):
        if key in user and user[key] != getattr(cfg, key):
            _refuse_change(run_dir, key, user[key], getattr(cfg, key))
    for section in ("model", "data_options"):
        for key, value in (user.get(section) or {}).items():
            old = getattr(cfg, section).get(key)
            if value != old:
                _refuse_change(run_dir, f"{section}.{key}", value, old)
    diff_values = {**(user.get("diffusion") or {}), **{k: v for k, v in (diffusion or {}).items() if v is not None}}
    update_dataclass(cfg.diffusion, diff_values, "diffusion")  # unknown keys: a clear error
    for key, value in diff_values.items():
        if value != getattr(cfg.diffusion, key):
            _refuse_change(run_dir, f"diffusion.{key}", value, getattr(cfg.diffusion, key))
    train_values = {**(user.get("train") or {}), **{k: v for k, v in train_overrides.items() if v is not None}}
    update_dataclass(cfg.train, train_values, "train")
    for key, value in train_values.items():
        if key not in RESUMABLE_TRAIN_KEYS and value != getattr(cfg.train, key):
            _refuse_change(run_dir, f"train.{key}", value, getattr(cfg.train, key))
    return replace(cfg, train=update_dataclass(cfg.train, train_values, "train"))


def _check_resume_steps(run_dir: Path, old: TrainConfig, new: TrainConfig, done: int) -> None:
    """Resume only forward, and only where the result is the run it claims to be: the same total
    (always exact) or, with a constant learning rate, any larger total (exact too)."""
    if done >= new.steps:
        if new.steps == old.steps:
            raise ValueError(f"{run_dir} is already finished ({done} of {old.steps} steps); pass --steps N above "
                             f"{done} to train on (lr_schedule constant runs only), or start a new run with --out")
        raise ValueError(f"cannot resume {run_dir} to {new.steps} steps: its checkpoint is already at step {done}; "
                         f"pass --steps N above {done}")
    if new.steps != old.steps and old.lr_schedule != "constant":
        raise ValueError(f"cannot change the total steps of {run_dir} from {old.steps} to {new.steps}: its "
                         f"{old.lr_schedule} learning-rate schedule depends on the total, so the result would match "
                         "neither run; start a new run, with lr_schedule \"constant\" (--config: {\"train\": "
                         "{\"lr_schedule\": \"constant\"}}) if you want runs that can be extended")


def _check_out(run_dir: Path) -> None:
    """A new run's folder: absent, or an empty folder (checked before anything is created)."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise FileExistsError(f"--out {run_dir} is a file, not a folder")
    if is_run_folder(run_dir):
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it "
                              "or choose another --out")
    if any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir} is not empty and is not a diffuse run folder; choose a new or empty --out")


#: ``train(init=...)`` names a shipped model with this prefix (``pretrained:molecules``)
PRETRAINED_PREFIX = "pretrained:"


def init_domain(init: str | Path) -> str:
    """The domain of the model ``train(init=...)`` would start from (a run folder or ``pretrained:NAME``)."""
    text = str(init)
    if text.startswith(PRETRAINED_PREFIX):
        from .pretrained import folder
        return read_run_config(folder(text[len(PRETRAINED_PREFIX):])).domain
    return read_run_config(text).domain


def _read_init(init: str | Path, domain: str) -> tuple[RunConfig, dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                      dict[str, Any], Path]:
    """The model ``train(init=...)`` starts from: a run folder's newest checkpoint (raw and EMA
    weights) or ``pretrained:NAME`` (EMA weights, used for both). Returns its config, the two
    weight dicts, the record the new run keeps (``RunConfig.init``) and where the weights are."""
    from .core.checkpoint import file_sha256, identity_weights_file
    text = str(init)
    if text.strip() == "":
        raise ValueError("--init is an empty string; give a run folder or pretrained:NAME")
    if text.startswith(PRETRAINED_PREFIX):
        name = text[len(PRETRAINED_PREFIX):]
        path, src, ema = _read_pretrained(name)
        model, where = ema, path
        record = {"pretrained": name, "sha256": file_sha256(path / "ema.safetensors")}
    else:
        run = Path(text)
        from .core.latent import is_autoencoder_run
        if is_autoencoder_run(run):
            raise CheckpointError(f"--init {run} is an autoencoder run; give a diffusion model's run folder")
        ck = load_checkpoint(run)
        src, where = ck["config"], ck["path"]
        model = ck["model"]
        ema = ck["ema"] if ck["ema"] is not None else model
        record = {"run": str(run.resolve()), "step": ck["meta"].get("step"),
                  "sha256": file_sha256(identity_weights_file(where))}
    if src.domain != domain:
        raise CheckpointError(f"--init {text} is a model of domain {src.domain!r}, not {domain!r}")
    if src.latent is not None:
        raise ValueError(f"--init {text} is a latent diffusion model; --init starts data-space models only")
    return src, model, ema, record, where


def _init_config(user: dict[str, Any], src: RunConfig) -> dict[str, Any]:
    """A new run's config dict on top of the model it starts from: data, data options, model
    and diffusion default to the initial model's (the user's values win; model and diffusion
    are then checked to be unchanged), the train section is the user's over the domain's."""
    out = dict(user)
    out.setdefault("data", src.data)
    out["data_options"] = {**src.data_options, **user.get("data_options", {})}
    out["model"] = {**src.model, **user.get("model", {})}
    out["diffusion"] = {**asdict(src.diffusion), **user.get("diffusion", {})}
    return out


def _check_init_unchanged(cfg: RunConfig, src: RunConfig, init: str | Path) -> None:
    """Fine-tuning keeps the network and what it predicts: model and diffusion as the initial model's."""
    changed = [f"model.{k}" for k in sorted(set(cfg.model) | set(src.model)) if cfg.model.get(k) != src.model.get(k)]
    new, old = asdict(cfg.diffusion), asdict(src.diffusion)
    changed += [f"diffusion.{k}" for k in sorted(new) if new[k] != old.get(k)]
    if changed:
        raise ValueError(f"--init {init}: {', '.join(changed)} differ(s) from the initial model's; a run started "
                         "from a model keeps its model and diffusion sections (leave them out of --config and flags)")


def _check_init_data(info: dict[str, Any], src: dict[str, Any], init: str | Path) -> None:
    """The new data must mean what the initial model's did where a weight's meaning depends on it:
    the same element list (molecules' one-hot features) and label classes in the same order."""
    if "elements" in info and "elements" in src and info["elements"] != src["elements"]:
        raise DataError(f"--init {init}: the data's elements {info['elements']} are not the initial model's "
                        f"{src['elements']} (the atom-type features would change meaning)")
    mine, theirs = info.get("conditions") or {}, src.get("conditions") or {}
    for name in sorted(set(mine) & set(theirs)):
        a, b = mine[name].get("class_names"), theirs[name].get("class_names")
        if a is not None and b is not None and a != b:
            raise DataError(f"--init {init}: the data's {name} classes {a} are not the initial model's {b} "
                            "(label embeddings would change meaning)")


def train(domain: str | Domain = "image", *, data: str | Path | None = None, out: str | Path | None = None,
          config: dict[str, Any] | str | Path | None = None, resume: str | Path | None = None,
          progress: bool = True, stop_at: int | None = None, diffusion: dict[str, Any] | None = None,
          conditions: list[str] | str | None = None, latent: str | Path | None = None,
          init: str | Path | None = None, **train_overrides: Any) -> TrainResult:
    """Train a model and leave a run folder at ``out`` (default ``runs/<domain>``).

    ``latent``: an autoencoder run folder (:func:`train_autoencoder`) of the same domain: the
    model is a latent diffusion model on its (scaled) latents; the run records the autoencoder
    (path, SHA-256 of its weights, domain) and samples are decoded to data. Its data options
    default to the autoencoder's (so the data has the shape the autoencoder was trained on).

    ``init`` starts a new run from a trained model's weights (fine-tuning, or continuing a
    finished run with a new learning-rate schedule): a run folder (its raw and EMA weights) or
    ``"pretrained:NAME"``. The new run takes that model's data, data options, model and diffusion
    sections as its defaults (``config`` / ``data`` may change the data and data options, not the
    model or diffusion: an error), its own train section, a fresh optimiser at step 0, and an EMA
    that continues from the initial EMA weights; ``config.json`` records the source (``init``).

    ``resume`` continues the run folder it names (its config, weights, optimiser state and step),
    up to ``steps`` (the run's own total unless given). On resume, ``config`` (a dict or JSON
    file) and the keyword overrides may change ``RESUMABLE_TRAIN_KEYS`` only; a differing value
    of any other key is an error. The total ``steps`` may change only for ``lr_schedule="constant"``
    runs (see :func:`_check_resume_steps`). ``stop_at`` pauses the run at that step
    (checkpointed); resuming it later gives exactly the weights of an uninterrupted run.

    Everything (data, config, checkpoint, weight shapes, writability of the run folder) is
    checked before anything is written; ``config.json`` is written only then.

    Launched in several processes (``torchrun``, ``diffuse train --nproc N``, ``accelerate
    launch``; see ``core.distributed``) every process calls this with the same arguments: each
    checks everything, they meet, then rank 0 alone writes the run folder (``batch_size`` is the
    global batch, split across the processes).
    """
    name = domain if isinstance(domain, str) else domain.name
    checkpoint = init_src = None
    if init is not None:
        if resume is not None:
            raise ValueError("--init starts a new run from a model's weights; --resume continues a run: give one")
        if latent is not None:
            raise ValueError("--init with --latent is not supported (--init starts data-space models only)")
        init_src, init_model, init_ema, init_record, init_where = _read_init(init, name)
        config = _init_config(config if isinstance(config, dict) else _read_config_file(config), init_src)
    if resume is not None:
        if conditions:
            raise ValueError("--condition cannot change when resuming a run")
        run_dir = Path(resume)
        run_cfg = read_run_config(run_dir)
        if run_cfg.domain != name:
            raise CheckpointError(f"cannot resume {run_dir}: it is a run of domain {run_cfg.domain!r}, not {name!r}")
        if latent is not None:
            raise ValueError("--latent cannot change when resuming a run (the run keeps its autoencoder)")
        cfg = _resume_config(run_dir, run_cfg, config, diffusion, train_overrides)
        _check_train(cfg.train)
        if data is not None:
            cfg.data = str(data)
        checkpoint = load_checkpoint(run_dir, with_state=True)
        _check_resume_steps(run_dir, run_cfg.train, cfg.train, int(checkpoint["state"]["step"]))
        check_writable(run_dir)
    dom = get_domain(domain) if isinstance(domain, str) else domain
    if resume is not None and run_cfg.latent is not None:
        dom = _latent_domain(dom, run_cfg.latent["path"], run_cfg.latent)
    elif latent is not None:
        dom = _latent_domain(dom, latent)
    if resume is None:
        cfg = make_config(dom, data=data, config=config, diffusion=diffusion, conditions=conditions, **train_overrides)
        cfg.latent = getattr(dom, "record", None)
        if init_src is not None:
            _check_init_unchanged(cfg, init_src, init)
            cfg.init = init_record
        run_dir = Path(out) if out is not None else Path("runs") / dom.name
        _check_out(run_dir)
    if cfg.latent is not None:
        dom.to(resolve_device(cfg.train.device))
    dataset = _load_data(dom, cfg)
    if cfg.latent is not None:
        _check_latent_data(dom, dataset.info())
    train_set, reference = _split(dataset, cfg.train)
    info = _record_conditions(dom, dataset.info())
    if resume is not None and cfg.data_info and info != cfg.data_info:
        log.warning("data_info of the data differs from the checkpoint's; keeping the checkpoint's")
        info = cfg.data_info
    if init_src is not None:
        _check_init_data(info, init_src.data_info, init)
    cfg.data_info = info
    torch.manual_seed(cfg.train.seed)
    diff = Diffusion(cfg.diffusion)
    denoiser = diff.denoiser(dom.build_backbone(cfg.model, info))
    # with several processes (torchrun, --nproc, accelerate) the Trainer joins them; rank 0 writes
    trainer = Trainer(run_dir, cfg, dom, diff, denoiser, train_set, reference, progress=progress)
    if checkpoint is not None:
        trainer.load(checkpoint)  # weight shapes checked here, before anything is written
    elif init_src is not None:
        trainer.init_from(init_model, init_ema, init_where)   # the same, for --init
    if trainer.dist.is_main:
        if checkpoint is None:
            run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", cfg.to_json())
        if checkpoint is not None:
            trainer.prepare_resume()
    trainer.dist.barrier()
    n_params = sum(p.numel() for p in denoiser.parameters())
    log.info("training %s: %d parameters, %d training samples, device %s", dom.name, n_params,
             len(train_set), trainer.device)
    return trainer.fit(stop_at=stop_at)


def load(checkpoint: str | Path, *, device: str = "auto", ema: bool = True,
         domain: str | None = None) -> DiffusionModel:
    """Rebuild a trained model from a run folder (EMA weights unless ``ema=False``)."""
    from .core.latent import is_autoencoder_run

    run_dir = Path(checkpoint)
    if is_autoencoder_run(run_dir):
        raise CheckpointError(f"{run_dir} is an autoencoder run, not a diffusion model; train a latent model on it "
                              f"with 'diffuse train --latent {run_dir}'")
    ck = load_checkpoint(run_dir)
    cfg: RunConfig = ck["config"]
    if domain is not None and domain != cfg.domain:
        raise CheckpointError(f"{run_dir} is a checkpoint of domain {cfg.domain!r}, not {domain!r}")
    weights = ck["ema"] if (ema and ck["ema"] is not None) else ck["model"]
    model = _assemble(cfg, weights, run_dir, device)
    model.checkpoint_info = {"checkpoint_step": ck["meta"].get("step"),
                             "weights": "ema" if weights is ck["ema"] else "raw"}
    return model


def _assemble(cfg: RunConfig, weights: dict[str, torch.Tensor], where: Path, device: str) -> DiffusionModel:
    """The model ``cfg`` describes with ``weights`` (float16-stored tensors are cast to the model's dtype)."""
    dom = get_domain(cfg.domain)
    dev = resolve_device(device)
    if cfg.latent is not None:   # latent model: its autoencoder must be there, unchanged, of this domain
        if not isinstance(cfg.latent, dict) or not isinstance(cfg.latent.get("path"), str):
            raise CheckpointError(f"{where / 'config.json'} has a corrupt latent record {cfg.latent!r}")
        dom = _latent_domain(dom, cfg.latent["path"], cfg.latent).to(dev)
    diff = Diffusion(cfg.diffusion)
    den = diff.denoiser(dom.build_backbone(cfg.model, cfg.data_info))
    own = den.state_dict()
    weights = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v for k, v in weights.items()}
    load_weights(den, weights, where)
    return DiffusionModel(dom, cfg, den.to(dev), diff, dev, where)


def load_pretrained(name: str, *, device: str = "auto", root: str | Path | None = None) -> DiffusionModel:
    """A pretrained model shipped inside the package (``pretrained/NAME``: config, EMA weights and
    a model card; see :mod:`diffuse.pretrained`), e.g. ``load_pretrained("molecules")``. Nothing is
    downloaded. ``root``: another folder laid out like the package (holding ``pretrained/``).
    An unknown name is a CheckpointError that lists the available ones."""
    path, cfg, weights = _read_pretrained(name, root)
    return _assemble(cfg, weights, path, device)


def _read_pretrained(name: str, root: str | Path | None = None) -> tuple[Path, RunConfig, dict[str, torch.Tensor]]:
    """A shipped model's folder, config and EMA weights (errors: CheckpointError, one line)."""
    from .pretrained import folder

    path = folder(name, root)
    cfg = read_run_config(path)
    try:
        weights = load_file(str(path / "ema.safetensors"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path / 'ema.safetensors'} is corrupt or truncated "
                              f"({str(exc).splitlines()[0][:120]})") from None
    return path, cfg, weights


# --- latent diffusion (latent helper) ---
#: data_info entries that fix the shape of a sample: a latent model's data must match its autoencoder's
_SHAPE_KEYS = ("channels", "height", "width", "length", "sample_rate")


def _latent_domain(dom: Domain, ae_run: str | Path, expect: dict[str, Any] | None = None):
    """``dom`` wrapped with the trained autoencoder in ``ae_run`` (checked: exists, an
    autoencoder run of ``dom``'s domain, and, given a latent model's record ``expect``, the same
    weights)."""
    from .core.latent import AutoencoderConfig, LatentDomain, autoencoder_record, load_autoencoder

    if str(ae_run).strip() == "":
        raise ValueError("--latent is an empty string; give an autoencoder run folder")
    ae = load_autoencoder(ae_run, dom, expect=expect)
    record = expect if expect is not None else autoencoder_record(ae_run)
    ae_cfg = AutoencoderConfig.load(ae_run)
    return LatentDomain(dom, ae, record, data_defaults=ae_cfg.data_options, data_info=ae_cfg.data_info)


def _check_latent_data(dom: Any, info: dict[str, Any]) -> None:
    """The data of a latent model must have the shape its autoencoder was trained on."""
    ae_info = dom.autoencoder_data_info
    for key in _SHAPE_KEYS:
        if key in info and key in ae_info and info[key] != ae_info[key]:
            raise DataError(f"the data's {key} is {info[key]} but the autoencoder {dom.record['path']} was trained on "
                            f"{ae_info[key]}; use data of that shape (its data options: --config data_options)")


#: training defaults of an autoencoder when its domain gives none
AUTOENCODER_TRAIN = {"steps": 1000, "batch_size": 32, "lr": 1e-3, "warmup_steps": 50, "ema_decay": 0.99,
                     "checkpoint_every": 0, "log_every": 10, "holdout_fraction": 0.1}


def _load_autoencoder_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The newest complete checkpoint of an autoencoder run, with its training state (to resume)."""
    from .core.checkpoint import _checkpoint_dir, _load_weights, _marker

    ckpt = _checkpoint_dir(run_dir)
    out: dict[str, Any] = {"path": ckpt, "meta": _marker(ckpt) or {},
                           "model": _load_weights(ckpt / "model.safetensors"),
                           "ema": _load_weights(ckpt / "ema.safetensors")}
    try:
        out["state"] = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a corrupt file
        raise CheckpointError(f"{ckpt / 'state.pt'} is corrupt or truncated ({str(exc).splitlines()[0][:120]})") from None
    return out


def train_autoencoder(domain: str | Domain = "image", *, data: str | Path | None = None, out: str | Path | None = None,
                      config: dict[str, Any] | str | Path | None = None, resume: str | Path | None = None,
                      progress: bool = True, scale_samples: int = 512, stop_at: int | None = None,
                      **train_overrides: Any) -> dict[str, Any]:
    """Train the domain's autoencoder for latent diffusion and leave a run folder at ``out``
    (default ``runs/<domain>-autoencoder``): ``config.json`` (kind ``autoencoder``), ``checkpoint/``
    (the trainer's format; the EMA weights, with the fitted latent ``scale``, are the ones used),
    ``metrics.jsonl`` and ``evaluation.json`` (held-out reconstruction figures, the scale).

    ``config``: a dict or JSON file with sections ``model`` (the autoencoder's options), ``train``
    (:class:`TrainConfig` fields) and ``data_options``; keyword overrides as in :func:`train`.
    ``resume`` continues an interrupted run (same total steps; ``stop_at`` pauses one at that
    step, checkpointed, and resuming it gives the weights of an uninterrupted run; a paused run
    returns ``scale`` and ``metrics`` as ``None``). After training, ``scale`` is set
    to 1 / std of the latents of up to ``scale_samples`` training items. Everything is checked
    before anything is written. Returns ``{"run_dir", "steps", "final_loss", "seconds", "scale",
    "metrics"}``."""
    from .core.latent import AutoencoderConfig, AutoencoderObjective

    dom = get_domain(domain) if isinstance(domain, str) else domain
    if type(dom).build_autoencoder is Domain.build_autoencoder:
        raise ValueError(f"domain {dom.name} has no autoencoder")
    checkpoint = None
    if resume is not None:
        run_dir = Path(resume)
        ae_cfg = AutoencoderConfig.load(run_dir)
        if ae_cfg.domain != dom.name:
            raise CheckpointError(f"cannot resume {run_dir}: it is an autoencoder of domain {ae_cfg.domain!r}, not {dom.name!r}")
        if config is not None or data is not None:
            raise ValueError("--config / --data cannot change when resuming an autoencoder run")
        over = {k: v for k, v in train_overrides.items() if v is not None}
        for key, value in over.items():
            if key not in RESUMABLE_TRAIN_KEYS or key == "steps" and value != ae_cfg.train.steps:
                _refuse_change(run_dir, f"train.{key}", value, getattr(ae_cfg.train, key, None))
        cfg = update_dataclass(ae_cfg.train, over, "train")
        checkpoint = _load_autoencoder_checkpoint(run_dir)
        if int(checkpoint["state"]["step"]) >= cfg.steps:
            raise ValueError(f"{run_dir} is already finished ({checkpoint['state']['step']} of {cfg.steps} steps)")
        check_writable(run_dir)
        model_cfg, options, data_path = ae_cfg.model, ae_cfg.data_options, ae_cfg.data
    else:
        user = config if isinstance(config, dict) else _read_config_file(config)
        unknown = set(user) - {"model", "train", "data_options", "domain", "data"}
        if unknown:
            raise ValueError(f"autoencoder config has unknown section(s) {sorted(unknown)}; expected model, train, "
                             "data_options")
        for section in ("model", "train", "data_options"):
            if not isinstance(user.get(section, {}), dict):
                raise ValueError(f"config section {section!r} must be a JSON object, got {user[section]!r}")
        defaults = dom.default_autoencoder()
        cfg = update_dataclass(TrainConfig(), {**AUTOENCODER_TRAIN, **defaults.get("train", {}),
                                               **user.get("train", {})}, "train")
        cfg = update_dataclass(cfg, {k: v for k, v in train_overrides.items() if v is not None}, "train")
        model_cfg = {**defaults.get("model", {}), **user.get("model", {})}
        options = {**dom.default_data(), **user.get("data_options", {})}
        data_path = str(data) if data is not None else user.get("data")
        if data_path is not None and str(data_path).strip() == "":
            raise ValueError("--data is an empty string; give a file or folder, or leave it out for the bundled data")
        run_dir = Path(out) if out is not None else Path("runs") / f"{dom.name}-autoencoder"
        _check_out(run_dir)
    cfg = replace(cfg, sample_every=0, final_eval=False, eval_samples=0)
    _check_train(cfg)
    dataset = _load_data(dom, RunConfig(domain=dom.name, data=data_path, data_options=options))
    info = dataset.info()
    train_set, held = _split(dataset, cfg)
    torch.manual_seed(cfg.seed)
    ae = dom.build_autoencoder(model_cfg, info)     # option errors here, before anything is written
    ae_config = AutoencoderConfig(domain=dom.name, data=data_path, data_options=options, model=model_cfg, train=cfg,
                                  data_info=info)
    trainer = Trainer(run_dir, RunConfig(domain=dom.name, train=cfg, data_info=info), dom, AutoencoderObjective(),
                      ae, train_set, None, progress=progress)
    if checkpoint is not None:
        trainer.load(checkpoint)
        atomic_write_text(run_dir / "config.json", ae_config.to_json())
        trainer.prepare_resume()
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", ae_config.to_json())
    log.info("training the %s autoencoder: %d parameters, %d training samples, device %s", dom.name,
             sum(p.numel() for p in ae.parameters()), len(train_set), trainer.device)
    fit = trainer.fit(stop_at=stop_at)
    if fit.steps < cfg.steps:      # paused: scale and evaluation come at the end of the run
        return {"run_dir": run_dir, "steps": fit.steps, "final_loss": fit.final_loss, "seconds": fit.seconds,
                "scale": None, "metrics": None}
    # the latent scale of the EMA weights (the ones latent models use), saved with both copies
    final = trainer.ema.module
    scale = final.fit_scale(train_set, num=scale_samples, seed=cfg.seed)
    trainer.model.scale.fill_(scale)
    trainer.save(stop_on_signal=False)
    metrics = reconstruction_report(final, held if held is not None else train_set, seed=cfg.seed)
    metrics = {**metrics, "scale": scale, "held_out_items": len(held) if held is not None else 0}
    atomic_write_text(run_dir / "evaluation.json", json.dumps(metrics, indent=2))
    return {"run_dir": run_dir, "steps": fit.steps, "final_loss": fit.final_loss, "seconds": fit.seconds,
            "scale": scale, "metrics": metrics}


@torch.no_grad()
def reconstruction_report(ae: Any, dataset: DomainDataset, *, seed: int = 0, batch_size: int = 64,
                          max_items: int = 2000) -> dict[str, float]:
    """Mean held-out reconstruction figures of an autoencoder (``Autoencoder.reconstruction_metrics``)
    over up to ``max_items`` items of ``dataset``."""
    ae.eval()
    dev = ae.scale.device
    sums: dict[str, float] = {}
    n = min(len(dataset), max_items)
    for idx in torch.arange(n).split(batch_size):
        batch = dataset.batch(idx, torch.Generator().manual_seed(seed)).to(dev)
        for k, v in ae.reconstruction_metrics(batch).items():
            sums[k] = sums.get(k, 0.0) + float(v.double().sum())
    return {k: v / max(n, 1) for k, v in sums.items()}


def load_autoencoder(run: str | Path, *, device: str = "auto"):
    """A trained autoencoder (frozen, eval mode) from its run folder."""
    from .core.latent import AutoencoderConfig, load_autoencoder as _load

    cfg = AutoencoderConfig.load(run)
    return _load(run, get_domain(cfg.domain), device=resolve_device(check_device(device)))


# --- conditional generation (cond helper) ---
def _condition_data_options(dom: Domain, conditions: list[str] | str | None) -> dict[str, Any]:
    """Data options that make the domain's data carry the requested conditions."""
    if not conditions:
        return {}
    names = [conditions] if isinstance(conditions, str) else list(conditions)
    return dom.condition_data_options(names)


def _record_conditions(dom: Domain, info: dict[str, Any]) -> dict[str, Any]:
    """``data_info["conditions"] = {name: kind spec}`` of a conditional model (saved with the run)."""
    kinds = dom.condition_kinds(info)
    if kinds:
        info = {**info, "conditions": {k: kind.spec() for k, kind in kinds.items()}}
    return info


# --- noise-aware classifiers and classifier guidance (clf helper) ---
#: training defaults of a classifier (overridable by keyword: steps=, batch_size=, lr=, ...)
CLASSIFIER_TRAIN = {"steps": 500, "batch_size": 64, "lr": 1e-3, "warmup_steps": 50, "weight_decay": 0.0,
                    "log_every": 10, "holdout_fraction": 0.1}


def train_classifier(domain: str | Domain = "image", *, data: str | Path | None = None, out: str | Path | None = None,
                     target: str = "label", model: dict[str, Any] | None = None, progress: bool = True,
                     config: dict[str, Any] | str | Path | None = None, **train_overrides: Any) -> dict[str, Any]:
    """Train a noise-aware classifier (``core.classifier``) for classifier guidance and leave a
    run folder at ``out`` (default ``runs/<domain>-classifier``): ``config.json`` (kind
    ``classifier``), ``checkpoint/model.safetensors``, ``metrics.jsonl``, ``evaluation.json``
    (held-out accuracy / RMSE on clean and noised data). ``target``: ``"label"`` or
    ``"property:NAME"``. ``config``: a dict or JSON file with sections ``model`` (classifier
    options), ``train`` (:class:`TrainConfig` fields) and ``data_options``. The folder is built under a temporary name and renamed at the end, so
    nothing half-written is left. Returns ``{"run_dir", "steps", "final_loss", "seconds", "metrics"}``."""
    from .core.classifier import (ClassifierConfig, NoisyClassifier, Target, evaluate_classifier, fit_classifier,
                                  label_kind, save_classifier)

    dom = get_domain(domain) if isinstance(domain, str) else domain
    kind, name = Target.parse_spec(target)
    user = config if isinstance(config, dict) else _read_config_file(config)
    cfg = update_dataclass(TrainConfig(), {**CLASSIFIER_TRAIN, **user.get("train", {})}, "train")
    cfg = update_dataclass(cfg, {k: v for k, v in train_overrides.items() if v is not None}, "train")
    _check_train(cfg)
    run_dir = Path(out) if out is not None else Path("runs") / f"{dom.name}-classifier"
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise FileExistsError(f"{run_dir} already exists and is not empty; choose another --out")
    options = {**dom.default_data(), **user.get("data_options", {}), **dom.classifier_data_options(Target(kind, name))}
    dataset = _load_data(dom, RunConfig(domain=dom.name, data=str(data) if data is not None else None,
                                        data_options=options))
    info = _record_conditions(dom, dataset.info())
    train_set, held = _split(dataset, cfg)
    if kind == "label":
        labels = label_kind(dom, info)
        if labels is None:
            raise DataError(f"the {dom.name} data at {data or 'the bundled default'} has no class labels; "
                            "train on labelled data or use --target property:NAME")
        tgt = Target("label", "label", labels.num_classes, labels.class_names, labels.aliases or None)
    else:
        vals = torch.cat([dom.classifier_property(name, train_set.batch(idx), info).double().reshape(-1)
                          for idx in torch.arange(len(train_set)).split(256)])
        tgt = Target("property", name, mean=float(vals.mean()), std=float(vals.std().clamp_min(1e-8)))
    model_cfg = {**user.get("model", {}), **(model or {})}
    torch.manual_seed(cfg.seed)
    module = NoisyClassifier(dom.build_classifier(model_cfg, info, tgt), tgt)
    diff_cfg = update_dataclass(DiffusionConfig(), dom.default_diffusion(), "diffusion")
    diff = Diffusion(diff_cfg)
    device = resolve_device(cfg.device)
    config = ClassifierConfig(domain=dom.name, target=asdict(tgt), data=str(data) if data is not None else None,
                              data_options=options, model=model_cfg, schedule=diff_cfg.schedule, train=cfg,
                              data_info=info)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = run_dir.parent / f".{run_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fit = fit_classifier(module, dom, train_set, info, cfg, diff.schedule, diff.sample_t, tmp, progress, device)
        metrics = evaluate_classifier(module, dom, held if held is not None else train_set, info, seed=cfg.seed,
                                      device=device)
        metrics["held_out_items"] = len(held) if held is not None else 0
        save_classifier(tmp, module.cpu(), config, cfg.steps)
        atomic_write_text(tmp / "evaluation.json", json.dumps(metrics, indent=2))
        if run_dir.exists():
            run_dir.rmdir()   # empty (checked above)
        os.replace(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("classifier %s: %s", run_dir, metrics)
    return {"run_dir": run_dir, "steps": cfg.steps, "final_loss": fit["final_loss"], "seconds": fit["seconds"],
            "metrics": metrics, "target": tgt.describe()}


def load_classifier(run: str | Path, *, device: str = "auto", domain: str | None = None):
    """A trained :class:`~diffuse.core.classifier.Classifier` from its run folder."""
    from .core.checkpoint import _checkpoint_dir, _load_weights
    from .core.classifier import Classifier, ClassifierConfig, NoisyClassifier, Target

    run_dir = Path(run)
    cfg = ClassifierConfig.load(run_dir)
    if domain is not None and domain != cfg.domain:
        raise CheckpointError(f"{run_dir} is a classifier of domain {cfg.domain!r}, not {domain!r}")
    dom = get_domain(cfg.domain)
    try:
        tgt = Target(**cfg.target)
    except TypeError:
        raise CheckpointError(f"{run_dir / 'config.json'} has a corrupt target {cfg.target!r}") from None
    module = NoisyClassifier(dom.build_classifier(cfg.model, cfg.data_info, tgt), tgt)
    load_weights(module, _load_weights(_checkpoint_dir(run_dir) / "model.safetensors"), run_dir)
    dev = resolve_device(device)
    return Classifier(dom, cfg, module.to(dev), dev, run_dir)


def prepare_classifier_guidance(model: DiffusionModel, num: int, cond: Any, guidance: Any, classifier: Any,
                                 scale: Any = None, rescale: Any = None, interval: Any = None):
    """``(classifier, targets [num], scale, model condition)`` for classifier-guided sampling;
    ``ValueError`` / ``CheckpointError`` for bad input, before anything is sampled or written."""
    from .core.classifier import Classifier

    if guidance == "free":
        raise ValueError("a classifier is used with classifier guidance only (--guidance classifier)")
    if guidance != "classifier":
        raise ValueError(f"guidance must be 'free' (classifier-free) or 'classifier', got {guidance!r}")
    if classifier is None:
        raise ValueError("classifier guidance needs a classifier run (--classifier RUN)")
    if rescale is not None or interval is not None:
        raise ValueError("--guidance-rescale / --guidance-interval apply to classifier-free guidance only")
    if cond is not None and not isinstance(cond, dict):
        raise ValueError(f"a condition is given as {{name: value}}, e.g. {{'label': 7}}, not {type(cond).__name__}")
    if model.config.latent is not None:
        raise ValueError("classifier guidance is not supported for latent models (the classifier reads data, "
                         "the sampler latents); use classifier-free guidance (--guidance-scale)")
    n = num if isinstance(num, int) and num > 0 else 1
    clf = classifier if isinstance(classifier, Classifier) else load_classifier(classifier, device=str(model.device))
    clf.check_compatible(model.domain.name, model.data_info)
    s = Guidance.parse(1.0 if scale is None else scale).scale
    targets = clf.parse_target(cond, n)
    kinds = model.condition_kinds()
    rest = {k: v for k, v in (cond or {}).items() if k != clf.target.name and k not in kinds}
    if rest:
        raise ValueError(f"neither the model nor the classifier understands the condition(s) {', '.join(sorted(rest))}")
    model_cond = parse_condition(kinds, {k: v for k, v in (cond or {}).items() if k in kinds}, n)
    return clf, targets, s, model_cond


def _classifier_guided_sample(model: DiffusionModel, num: int, cond: Any, guidance: Any, classifier: Any,
                              scale: Any, rescale: Any, interval: Any, sampler: str, steps: int | None, spacing: Any,
                              seed: int, batch_size: int, progress: Any, structure: Any, **options: Any) -> Batch:
    clf, targets, s, model_cond = prepare_classifier_guidance(model, num, cond, guidance, classifier, scale,
                                                               rescale, interval)
    wrapper = clf.guidance_wrapper(targets.to(model.device), s, model.diffusion.schedule)
    return generate(model.denoiser, model.domain, model.data_info, num, sampler=sampler, steps=steps, spacing=spacing,
                    seed=seed, batch_size=batch_size, device=model.device, cond=model_cond, progress=progress,
                    structure=structure, denoise_wrapper=wrapper, **options)


# --- rectified-flow reflow (flow helper) ---
def reflow(checkpoint: str | Path, *, out: str | Path, pairs: int = 1000, steps: int = 20, sampler: str = "flow_heun",
           train_steps: int | None = None, batch_size: int | None = None, lr: float | None = None, seed: int = 0,
           device: str = "auto", progress: bool = True) -> TrainResult:
    """Rectified flow's second stage (Liu et al. 2023, "Flow Straight and Fast"): draw ``pairs``
    (noise, sample) pairs with the flow model's deterministic ODE (``sampler`` with ``steps``
    steps on the uniform grid), then retrain a copy of the model (from its EMA weights) on that
    coupling: the loss uses each sample's own noise instead of an independent draw
    (``core.diffusion``), which straightens the paths for good samples at 1-4 steps. The result
    is a new run folder ``out`` (its ``reflow.json`` records the source and the pair settings);
    every argument is checked before anything is written."""
    from .core.flow import PairDataset, ode_pairs
    from .core.samplers import check_sampler_options, get_sampler
    from .core.space import per_sample_generators

    for name, value in (("the number of pairs", pairs), ("the number of ODE steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"the seed must be an integer in [0, 2^63), got {seed!r}")
    get_sampler(sampler)
    check_sampler_options(sampler, {})
    if not sampler.startswith("flow_") and sampler != "ddim" or sampler == "flow_sde":
        raise ValueError(f"reflow needs a deterministic flow ODE sampler (flow_euler, flow_heun, flow_midpoint, "
                         f"flow_rk45 or ddim), not {sampler!r}")
    run_dir = Path(out)
    _check_out(run_dir)
    model = load(checkpoint, device=device)
    if model.config.diffusion.training != "flow":
        raise ValueError(f"{checkpoint} is a {model.config.diffusion.training!r} model; reflow needs a flow model "
                         "(diffuse train --training flow)")
    if model.condition_kinds():
        raise ValueError("reflow of conditional models is not supported; train an unconditional flow model")
    train_cfg = update_dataclass(model.config.train, {k: v for k, v in {"steps": train_steps, "batch_size": batch_size,
                                                                           "lr": lr, "seed": seed}.items()
                                                        if v is not None}, "train")
    _check_train(train_cfg, model.diffusion)
    den, dom, schedule = model.denoiser, model.domain, model.diffusion.schedule
    chunks = []
    for start in range(0, pairs, 64):
        n = min(64, pairs - start)
        tpl = dom.template(n, model.data_info, per_sample_generators(seed + 7919, n, start), None).to(model.device)
        gens = per_sample_generators(seed, n, start, device=model.device)
        noise, sample = ode_pairs(den.bind(tpl.space), schedule, tpl.space, tpl.x, steps=steps, sampler=sampler,
                                  generator=gens)
        chunks.append(Batch(sample.cpu(), tpl.space.to("cpu"), None, {**tpl.extras, "noise": noise.cpu()}))
    dataset = PairDataset(chunks, model.data_info)
    cfg = replace(model.config, train=train_cfg)
    trainer = Trainer(run_dir, cfg, dom, model.diffusion, den.train(), dataset, model.reference_data(), progress=progress)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", cfg.to_json())
    atomic_write_text(run_dir / "reflow.json", json.dumps({"source": str(checkpoint), "pairs": pairs, "steps": steps,
                                                           "sampler": sampler, "seed": seed}, indent=2))
    return trainer.fit()
