"""What a trained model does besides sampling: completion (inpainting), editing (SDEdit),
restoration (super-resolution) and likelihoods, as methods of
:class:`~diffuse.api.model.DiffusionModel` (this mixin holds them so that the model's own module
keeps to sampling and evaluation).

Inputs are read in data space (``Domain.completion_input``) and taken to model space by the
domain (``Domain.from_data``: the identity, or a latent model's encoder with the mask mapped onto
the latent grid); results come back through ``Domain.to_data`` (a latent model decodes) and
``Domain.paste_known`` (a latent model puts the known data back exactly). So every task runs
the same way on pixel and latent models (``core.models.latent``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from ..core.data.domain import Batch
from ..core.errors import NotSupportedError, UserInputError
from ..core.process.likelihood import batch_log_likelihood
from ..core.sampling.completion import generate_edit
from ..core.validation import check_positive_int

__all__ = ["ModelTasks"]


class ModelTasks:
    """Completion, editing, restoration and likelihood of a :class:`~diffuse.api.model.DiffusionModel`."""

    # --- completion and editing (inpaint helper) ---
    def completion_input(self, input: str | Path, options: dict[str, Any] | None = None) -> tuple[Batch, torch.Tensor]:
        """Read ``input`` (an image, a clip, a fragment) into model space with the mask of its
        known part (true = known), built from the domain's ``options`` (image ``mask`` / ``rect``,
        audio ``span`` / ``continue``, molecules ``num_atoms``; ``None`` values are left out)."""
        if input is None or str(input).strip() == "":
            raise UserInputError("--input is required: the file to complete or edit")
        opts = {k: v for k, v in (options or {}).items() if v is not None}
        return self.domain.completion_input(input, opts)

    def _prepared(self, input: Any, options: dict[str, Any] | None, num: int) -> tuple[Batch, torch.Tensor]:
        batch, mask = input if isinstance(input, tuple) else self.completion_input(input, options)
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise UserInputError(f"the number of samples must be a positive integer, got {num!r}")
        x, space = batch.space.concat([batch.x] * num, [batch.space] * num)
        if isinstance(mask, dict):           # a mixed state: a mask per component
            return Batch(x, space, None, batch.extras), {k: _repeat(v, num) for k, v in mask.items()}
        return Batch(x, space, None, batch.extras), _repeat(mask, num)

    def complete(self, input: Any, num: int = 1, *, options: dict[str, Any] | None = None, sampler: str = "ddpm",
                 steps: int | None = None, spacing: str | None = None, seed: int = 0, jump_length: int = 1,
                 resample: int = 1, cond: Any = None, guidance_scale: Any = None, guidance_rescale: Any = None,
                 guidance_interval: Any = None, progress: Callable[[int], None] | None = None, paste: bool = True,
                 **sampler_options: Any) -> Batch:
        """``num`` completions of ``input`` (a path read with :meth:`completion_input` and
        ``options``, or an already read ``(Batch, mask)``, in data space): the known part kept
        exactly, the rest generated (``core.sampling.completion``; RePaint with ``jump_length`` /
        ``resample``). Sample ``i`` draws only from seed ``(seed, i)``. Returns a Batch on CPU
        (molecules: in the fragment's frame). A latent model completes the latent of the input
        (its known latents re-imposed at every step), decodes, and with ``paste`` puts the known
        data back; ``paste=False`` returns the decoder's output as it is (its known part then
        differs from the input by about the autoencoder's reconstruction error)."""
        batch, mask = self._prepared(input, options, num)
        if all(bool(torch.as_tensor(m).all()) for m in (mask.values() if isinstance(mask, dict) else [mask])):
            raise UserInputError("nothing to generate: the mask keeps the whole input (give a mask, rect, span, "
                             "continuation or more atoms)")
        condition, guidance = self.prepare_condition(num, cond, guidance_scale, guidance_rescale, guidance_interval)
        inner, inner_mask = self.domain.from_data(batch, mask)
        # the process's own completion: ``core.sampling.completion`` or, for a mixed state, ``core.sampling.mixed``
        out = self.diffusion.generate_completion(self.denoiser, inner, inner_mask, sampler=sampler, steps=steps,
                                                 spacing=spacing, seed=seed, device=self.device, cond=condition,
                                                 guidance=guidance, jump_length=jump_length, resample=resample,
                                                 progress=progress, **sampler_options)
        out = self.domain.to_data(out)
        return self.domain.paste_known(out, batch, mask) if paste else out

    def edit(self, input: Any, strength: float, num: int = 1, *, options: dict[str, Any] | None = None,
             invert: bool = False, fixed_point_iters: int = 0, sampler: str = "ddim", steps: int | None = None,
             spacing: str | None = None, seed: int = 0, cond: Any = None, guidance_scale: Any = None,
             guidance_rescale: Any = None, guidance_interval: Any = None,
             progress: Callable[[int], None] | None = None, **sampler_options: Any) -> Batch:
        """SDEdit (Meng et al. 2022): ``num`` edits of ``input`` noised to ``strength`` in [0, 1] and
        denoised (0: the input, 1: unconditional sampling); ``invert=True``: DDIM inversion, then
        DDIM (deterministic). Returns a Batch on CPU (a latent model edits the input's latent and
        decodes; strength 0 then returns the autoencoder's reconstruction)."""
        self.require_one_tensor("editing (SDEdit)")
        batch, _ = self._prepared(input, options, num)
        condition, guidance = self.prepare_condition(num, cond, guidance_scale, guidance_rescale, guidance_interval)
        inner, _ = self.domain.from_data(batch)
        out = generate_edit(self.denoiser, inner, strength=strength, sampler=sampler, steps=steps, spacing=spacing,
                            seed=seed, device=self.device, cond=condition, guidance=guidance, invert=invert,
                            fixed_point_iters=fixed_point_iters, progress=progress, **sampler_options)
        return self.domain.to_data(out)

    def restoration_input(self, input: str | Path) -> dict[str, Any]:
        """The condition ``{name: value}`` of a restoration model read from a degraded input file
        (image: a low-resolution PNG -> ``{"lowres": ...}``)."""
        if input is None or str(input).strip() == "":
            raise UserInputError("--input is required: the low-resolution file to restore")
        return self.domain.restoration_input(input)

    def upscale(self, input: Any, num: int = 1, **sample_options: Any) -> Batch:
        """``num`` restorations (SR3 super-resolution) of ``input``: a path, or a condition dict
        from :meth:`restoration_input`; ``sample_options`` as :meth:`sample`."""
        cond = input if isinstance(input, dict) else self.restoration_input(input)
        return self.domain.restoration_output(self.sample(num, cond=cond, **sample_options), cond)

    @staticmethod
    def known_share(mask) -> float:
        """The share of elements a completion mask keeps (over every component of a mixed state)."""
        parts = [torch.as_tensor(m).reshape(-1).float() for m in (mask.values() if isinstance(mask, dict) else [mask])]
        return float(torch.cat(parts).mean()) if parts else 0.0

    def require_one_tensor(self, what: str) -> None:
        """A NotSupportedError for ``what`` on a model whose samples are mixed states (``diffusion.components``):
        completion and sampling cover the product; editing, likelihoods and grid optimisation do not."""
        if self.config.diffusion.components is not None:
            raise NotSupportedError(f"{what} is not supported for a model whose samples have several components "
                                    f"({', '.join(self.config.diffusion.components)}); sampling and completion are")

    @staticmethod
    def known_error(samples: Batch, input: tuple[Batch, torch.Tensor]) -> float:
        """Largest ``|sample - known|`` over the known part (0 up to float rounding after completion;
        for a mixed state the largest over its components)."""
        batch, mask = input
        n = len(samples)
        x, _ = batch.space.concat([batch.x] * n, [batch.space] * n)
        if isinstance(mask, dict):
            return max(_known_error(samples.x[k], x[k], mask[k], n) for k in mask)
        return _known_error(samples.x, x, mask, n)

    def likelihood(self, num: int = 64, *, data: str | Path | None = None, batch_size: int = 64,
                   exact_trace: bool | None = None, hutchinson_samples: int = 1, rtol: float = 1e-5,
                   atol: float = 1e-5, seed: int = 0) -> dict[str, float]:
        """Negative log-likelihood of ``num`` reference items under the probability-flow ODE
        (``core.process.likelihood``): mean nats per sample, bits per dimension, and ODE evaluations.

        A latent model reports the likelihood of the LATENTS it models (``latent_nll_nats``,
        ``latent_bits_per_dim``: of the scaled latents, posterior draws of the reference items as in
        training), not of the data: the data's would need ``log p(x | z)``, and the autoencoder's
        decoder is trained with an L1 and a perceptual loss, not a likelihood (no noise model), so
        it defines none; an ELBO of the data is therefore not reported either."""
        check_positive_int("the number of likelihood samples", num)
        self.require_one_tensor("likelihoods")
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
        if self.config.latent is not None:
            result = {("latent_" + k if k in ("nll_nats", "bits_per_dim") else k): v for k, v in result.items()}
        return result


def _repeat(mask, num: int) -> torch.Tensor:
    """A one-sample mask for ``num`` copies of the sample (a scalar mask as it is)."""
    m = torch.as_tensor(mask)
    return torch.cat([m] * num) if m.ndim else m


def _known_error(sample: torch.Tensor, known: torch.Tensor, mask, n: int) -> float:
    m = _repeat(mask, n)
    m = (m.reshape(m.shape + (1,) * (known.ndim - m.ndim)) if m.ndim else m).expand_as(known)
    if not bool(m.any()):
        return 0.0
    return float((sample.float() - known.float()).abs()[m].max())
