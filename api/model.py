"""A trained diffusion model: sampling, conditions, optimised grids and evaluation.

:class:`DiffusionModel` is what :func:`~diffuse.api.loading.load`,
:func:`~diffuse.api.loading.load_pretrained` and :func:`~diffuse.api.loading.build` return: a
domain, a denoiser with its diffusion process, and the run's configuration. Completion, editing,
restoration and likelihoods are its methods too (``diffuse.api.tasks``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..core.config import RunConfig
from ..core.data.condition import Condition, parse_condition
from ..core.data.domain import Batch, Domain, DomainDataset
from ..core.errors import NotWritableError, UserInputError
from ..core.io import write_samples
from ..core.process.diffusion import Diffusion
from ..core.process.objectives import few_step_sampling, make_denoiser
from ..core.sampling.generate import check_generate_args, sampling_grid
from ..core.sampling.gridopt import GRIDS_FILE, optimize_grid, prior_batches, save_grid, stored_grid
from ..core.sampling.guidance import Guidance
from ..core.sampling.mixed import check_mixed_sampler
from ..core.sampling.registry import check_sampler_options, default_spacing, default_steps, sampler_record
from ..core.trust import allow_program, check_program
from ..core.validation import check_positive_int, check_seed
from .guiding import classifier_guidance_for
from .configs import load_data, split_data
from .tasks import ModelTasks

__all__ = ["DiffusionModel", "SampleReport"]

log = logging.getLogger(__name__)


@dataclass
class SampleReport:
    """What :meth:`DiffusionModel.sample_report` drew and how: the samples, the sampler, its steps
    and grid, the sampler's own statistics (e.g. an adaptive solver's evaluations) and the domain's
    reference-free figures of the samples (``None`` where it has none)."""

    samples: Batch
    sampler: str
    steps: int
    spacing: str
    stats: dict[str, Any]
    summary: dict[str, float] | None


class DiffusionModel(ModelTasks):
    """A domain bound to the model's data, a denoiser (with its diffusion process) and the run's
    configuration. An unbound ``domain`` is bound to ``config.data_info``."""

    def __init__(self, domain: Domain, config: RunConfig, denoiser: torch.nn.Module, diffusion: Diffusion,
                 device: torch.device, run_dir: Path | None = None) -> None:
        domain = domain if domain.bound else domain.bind(config.data_info)
        self.domain, self.config, self.denoiser, self.diffusion = domain, config, denoiser, diffusion
        self.device, self.run_dir = device, run_dir
        #: which weights of which checkpoint were loaded (``{"checkpoint_step", "weights"}``; set by :func:`load`)
        self.checkpoint_info: dict[str, Any] = {}
        self.denoiser.eval()

    @property
    def data_info(self) -> dict[str, Any]:
        """The ``data_info`` of the data the model was trained on (its domain's :attr:`~Domain.info`)."""
        return self.domain.info


    def sample(self, num: int, *, sampler: str | None = None, steps: int | None = None, eta: float | None = None,
               spacing: str | None = None, seed: int = 0, batch_size: int = 64, cond: Any = None,
               progress: Callable[[int], None] | None = None, structure: Any = None,
               guidance_scale: float | str | None = None, guidance_rescale: float | str | None = None,
               guidance_interval: Any = None, guidance: str | None = None, classifier: Any = None,
               **options: Any) -> Batch:
        """Draw ``num`` samples (a :class:`Batch` of data on CPU; a latent model's samples are
        decoded, ``core.models.latent``). Same seed, same samples,
        whatever ``batch_size``. ``eta`` applies to DDIM; other options go to the sampler.

        ``cond``: the network condition, ``{name: value}`` (``{"label": 7}``, ``{"label": "seven"}``,
        ``{"label": [0, 1, 2]}`` cycled over the samples) or a :class:`Condition`; names the model
        knows but ``cond`` leaves out are null. ``structure``: the domain's sampling structure
        (molecules: atom counts). ``guidance_scale`` s: classifier-free guidance (0 unconditional,
        1 conditional, > 1 guided), with ``guidance_rescale`` phi and ``guidance_interval``
        ``(lo, hi)`` of noise levels (see ``core.sampling.guidance``).

        ``guidance="classifier"`` with ``classifier`` (a run folder from :func:`train_classifier`
        or a loaded classifier): classifier guidance towards the classifier's target in ``cond``
        (``{"label": 7}``) with scale ``guidance_scale`` (default 1); the model may be unconditional.

        ``sampler`` None: a few-step model's own sampler and steps (``core.process.objectives``),
        else the domain's default (:meth:`Domain.default_sampling`: DDIM-50, audio DDPM-50,
        molecules DDPM-500); ``steps`` given still counts. ``spacing`` None: the domain's
        grid (:meth:`Domain.default_spacing`: audio's DDPM runs on Karras' grid) or the core's rule.

        A grid stored by :meth:`optimize_grid` for this sampler and number of steps is used when
        ``spacing`` is not given (one log line says so); ``spacing=`` overrides it."""
        sampler, steps = self.default_sampling(sampler, steps)
        if spacing is None and "grid" not in options:
            spacing = self.objective_spacing(sampler)
        if spacing is None and "grid" not in options:
            stored = self.stored_grid(sampler, steps)
            if stored is not None:
                options["grid"] = stored
        if eta is not None:
            if sampler != "ddim":
                raise UserInputError(f"--eta applies to the ddim sampler only, not {sampler!r}")
            options["eta"] = eta
        if guidance not in (None, "free") or classifier is not None:     # classifier guidance
            condition, wrapper = classifier_guidance_for(self, num, cond, guidance or "classifier", classifier,
                                                         guidance_scale, guidance_rescale, guidance_interval)
            wrappers = [wrapper]
        else:
            condition, free = self.prepare_condition(num, cond, guidance_scale, guidance_rescale, guidance_interval)
            wrappers = [free] if free is not None else []
        # the process's own sampling entry: ``core.sampling.generate`` or, for a mixed state, ``core.sampling.mixed``
        return self.diffusion.generate(self.denoiser, self.domain, num, sampler=sampler, steps=steps,
                                       spacing=spacing, seed=seed, batch_size=batch_size, device=self.device,
                                       cond=condition, progress=progress, structure=structure, guidance=wrappers,
                                       **options)

    def sample_report(self, num: int, *, sampler: str | None = None, steps: int | None = None,
                      spacing: str | None = None, **options: Any) -> SampleReport:
        """:meth:`sample` with what the command line reports beside the samples: the sampler and
        number of steps run (the domain's defaults resolved), the grid, the sampler's statistics and
        the domain's reference-free figures (``describe``)."""
        sampler, steps = self.default_sampling(sampler, steps)
        n_steps = self.steps_for(sampler, steps)
        stats: dict[str, Any] = {}
        if sampler_record(sampler).reports_stats and "stats" not in options:
            options["stats"] = stats
        samples = self.sample(num, sampler=sampler, steps=steps, spacing=spacing, **options)
        return SampleReport(samples, sampler, n_steps, self.spacing_used(sampler, steps, spacing),
                            dict(options.get("stats") or {}), self.describe(samples))

    def steps_for(self, sampler: str, steps: int | None = None) -> int:
        """The number of steps ``sampler`` runs: ``steps``, or the sampler's default on this model's
        schedule (the whole chain for DDPM, else 50)."""
        return steps if steps is not None else default_steps(sampler, self.diffusion.schedule)

    def check_sampling(self, num: int, *, sampler: str | None = None, steps: int | None = None,
                       spacing: str | None = None, seed: int = 0, batch_size: int = 64, options: Any = None,
                       structure: Any = None) -> tuple[str, int | None]:
        """Check a sampling request before any work (the sampler, its options, counts, the domain's
        structure); returns the ``(sampler, steps)`` :meth:`sample` will run."""
        sampler, steps = self.default_sampling(sampler, steps)
        options = dict(options or {})
        if self.config.diffusion.components is not None:    # a mixed state: the categorical rule, then the rest
            check_mixed_sampler(sampler, options.pop("categorical", None), options)
        check_generate_args(num, sampler=sampler, steps=steps, spacing=spacing, seed=seed, batch_size=batch_size,
                            options=options)
        self.domain.check_structure(structure, batch_size=min(batch_size, num))
        return sampler, steps


    # --- per-model optimised grids (gridopt helper) ---
    def stored_grid(self, sampler: str, steps: int | None = None) -> torch.Tensor | None:
        """The grid :meth:`optimize_grid` stored in the run folder for ``sampler`` with ``steps``
        (default: the sampler's default) on this model's schedule and weights, or ``None``."""
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
        ``seed``), starting from the default grid (``core.sampling.gridopt``); the model's null condition is
        used for a conditional model. With ``save`` (and a run folder) the grid is stored in
        ``RUN/grids.json``, where :meth:`sample` finds it. Returns a
        :class:`~diffuse.core.sampling.gridopt.GridResult`; every argument is checked before any work."""
        for name, value in (("the number of steps (nfe)", nfe), ("the number of samples", num),
                            ("the batch size", batch_size)):
            check_positive_int(name, value)
        for name, value in (("ref_steps", ref_steps), ("max_evals", max_evals)):
            if value is not None:
                check_positive_int(name, value)
        if nfe < 2:
            raise UserInputError(f"an optimised grid needs at least 2 steps (--nfe), got {nfe}")
        self.require_one_tensor("grid optimisation")
        check_seed(seed)
        check_sampler_options(sampler, {})
        schedule = self.diffusion.schedule
        if schedule.num_steps and nfe > schedule.num_steps:
            raise UserInputError(f"asked for {nfe} steps but the model was trained with T={schedule.num_steps}")
        if save and self.run_dir is not None and not os.access(self.run_dir, os.W_OK | os.X_OK):
            raise NotWritableError(f"{self.run_dir} is not writable; optimize-grid stores its grid there "
                                  "(fix the permissions or copy the run)")
        start = sampling_grid(schedule, sampler, nfe, None)
        cond, _ = self.prepare_condition(num)
        problems = prior_batches(self.denoiser, self.domain, num, start_t=float(start[0]), seed=seed,
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
        return self.domain.condition_kinds()

    def prepare_condition(self, num: int, cond: Any = None, scale: Any = None, rescale: Any = None,
                          interval: Any = None) -> tuple[Condition | None, Guidance | None]:
        """``(Condition or None, Guidance or None)`` from user values; ``ValueError`` for bad input
        (unknown label, a condition for an unconditional model, a scale that is not a number...)."""
        kinds = self.condition_kinds()
        if cond is not None and not isinstance(cond, (dict, Condition)):
            raise UserInputError(f"a condition is given as {{name: value}}, e.g. {{'label': 7}}, not {type(cond).__name__}; "
                             "sampling structure such as atom counts goes in structure=")
        n = num if isinstance(num, int) and num > 0 else 1
        condition = parse_condition(kinds, cond, n)
        if scale is None:
            if rescale is not None or interval is not None:
                raise UserInputError("--guidance-rescale / --guidance-interval need --guidance-scale")
            return condition, None
        guidance = Guidance.parse(scale, 0.0 if rescale is None else rescale, interval)
        if not kinds:
            raise UserInputError("guidance needs a conditional model; this one was trained without conditions")
        if cond is None:
            raise UserInputError(f"guidance needs a condition to guide towards (e.g. --label); this model takes: "
                             f"{', '.join(sorted(kinds))}")
        return condition, guidance


    def save_pretrained(self, path: str | Path, **options: Any) -> Path:
        """This model as a model folder with a model card (:func:`diffuse.api.saving.save_pretrained`);
        ``diffuse.api.from_pretrained(path)`` and every command's ``--pretrained path`` read it."""
        from .saving import save_pretrained
        return save_pretrained(self, path, **options)

    def write(self, samples: Batch, out_dir: str | Path) -> list[Path]:
        """Write samples with the domain's writer, atomically (see :func:`write_samples`)."""
        return write_samples(self.domain, samples, out_dir)

    def describe(self, samples: Batch) -> dict[str, float] | None:
        return self.domain.describe_samples(samples)

    def reference_data(self, data: str | Path | None = None) -> DomainDataset:
        """The evaluation reference: all of ``data`` if given, else the training data's held-out split."""
        if data is not None:
            return load_data(self.domain, replace(self.config, data=str(data)))
        dataset = load_data(self.domain, self.config)
        _, held = split_data(dataset, self.config.train)
        return held if held is not None else dataset

    def use_feature_net(self, path: str | Path) -> None:
        """Evaluate with the program file ``path`` as the feature network (an Inception network for
        FID; the user names it, see ``core.trust``) in place of what the run's data used."""
        allow_program(path)
        self.domain = self.domain.bind({**self.domain.info, "feature_net": str(path)})

    def untrained(self, seed: int = 0) -> "DiffusionModel":
        """The same architecture and configuration with freshly initialised weights (a baseline)."""
        torch.manual_seed(seed)
        den = make_denoiser(self.config.objective, self.diffusion,
                            self.domain.build_backbone(self.config.model)).to(self.device)
        return DiffusionModel(self.domain, self.config, den, self.diffusion, self.device, self.run_dir)


    def default_sampling(self, sampler: str | None = None, steps: int | None = None) -> tuple[str, int | None]:
        """``(sampler, steps)`` as :meth:`sample` runs them: the given ones, or the domain's default
        sampler (and its steps, unless ``steps`` is given) when ``sampler`` is None."""
        if sampler is not None:
            return sampler, steps
        few = few_step_sampling(self.config.objective, self.diffusion.schedule)
        name, n = (few[0], few[1]) if few is not None else self.domain.default_sampling()
        return name, steps if steps is not None else n

    def objective_spacing(self, sampler: str) -> str | None:
        """The grid a few-step model was trained for with ``sampler`` (progressive distillation's
        nested grid), or ``None``."""
        few = few_step_sampling(self.config.objective, self.diffusion.schedule)
        return few[2] if few is not None and few[0] == sampler else None

    def spacing_used(self, sampler: str, steps: int | None = None, spacing: str | None = None) -> str:
        """The time grid :meth:`sample` runs ``sampler`` on: ``spacing`` if given, else ``"stored"``
        (an optimised grid of this run), else the domain's default or the core's rule."""
        if spacing is not None:
            return spacing
        if self.objective_spacing(sampler) is not None:
            return self.objective_spacing(sampler)
        if self.stored_grid(sampler, steps) is not None:
            return "stored"
        schedule = self.diffusion.schedule
        return self.domain.default_spacing(schedule, sampler, steps) or default_spacing(schedule, sampler, steps)

    def training_conditions(self, num: int, seed: int = 0) -> Condition:
        """The conditions of ``num`` items drawn at random (with replacement, seeded) from the
        training split: labels in the training data's class shares, its captions, its property
        values. What a conditional model is evaluated with (``evaluate(cond="train")``)."""
        if not self.condition_kinds():
            raise UserInputError("conditional evaluation needs a conditional model; this one was trained without "
                             "conditions (leave out --guidance-scale)")
        train_set, _ = split_data(load_data(self.domain, self.config), self.config.train)
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(len(train_set), (num,), generator=g)
        cond = train_set.batch(idx, g).cond
        if cond is None:
            raise UserInputError("the training data carries no conditions for this conditional model")
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
        return self.domain.metrics(samples, reference)

    def evaluation(self, num: int = 256, *, data: str | Path | None = None, sampler: str | None = None,
                   steps: int | None = None, spacing: str | None = None, seed: int = 0, batch_size: int = 64,
                   guidance_scale: float | None = None, baseline: bool = False, likelihood: bool = False,
                   likelihood_num: int = 64, exact_trace: bool = False, source: dict[str, Any] | None = None,
                   **options: Any) -> dict[str, Any]:
        """The evaluation record ``diffuse evaluate`` writes: how the samples were drawn (sampler,
        steps, grid, seed, conditions), ``metrics`` of ``num`` fresh samples against the reference,
        optionally the likelihood of reference data, and with ``baseline`` the same for an
        untrained model of the same architecture (``untrained``). ``guidance_scale``: a conditional
        model sampled conditionally, each sample with the condition of a random training item.
        ``source``: what the record says it evaluated (e.g. ``{"checkpoint": RUN}``)."""
        sampler, steps = self.check_sampling(num, sampler=sampler, steps=steps, spacing=spacing, seed=seed,
                                             batch_size=batch_size, options=options)
        for path in self.domain.program_files(self.domain.info):     # never a program a run folder names
            check_program(path, "feature network", "--feature-net")
        opts = dict(data=data, sampler=sampler, steps=steps, spacing=spacing, seed=seed, batch_size=batch_size,
                    **options)
        if guidance_scale is not None:
            if not self.condition_kinds():
                raise UserInputError("--guidance-scale evaluates a conditional model; this one was trained without "
                                     "conditions")
            Guidance.parse(guidance_scale)                     # a number >= 0, checked before sampling
            opts.update(cond="train", guidance_scale=guidance_scale)
        like = dict(data=data, batch_size=batch_size, seed=seed, exact_trace=True if exact_trace else None)
        metrics = self.evaluate(num, **opts)
        if likelihood:
            metrics.update(self.likelihood(likelihood_num, **like))
        conditions = ({"conditions": "of random training items", "guidance_scale": guidance_scale}
                      if guidance_scale is not None else {})
        record = {**(source or {}), "num": num, "sampler": sampler, "steps": steps,
                  "spacing": self.spacing_used(sampler, steps, spacing), "seed": seed, **conditions,
                  "data": str(data) if data else None, "metrics": metrics}
        if baseline:
            untrained = self.untrained(seed)
            base = untrained.evaluate(num, **opts)
            if likelihood:
                base.update(untrained.likelihood(likelihood_num, **like))
            record["untrained"] = base
        return record


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
