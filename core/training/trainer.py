"""One training loop for every domain and every trained model.

The trainer runs an *objective*: anything with ``training_losses(model, batch, generator,
shard=None) -> [B]`` (per-sample losses) and a flag ``samples`` (whether the periodic and final
evaluations draw samples from the model). The diffusion process
(:class:`~diffuse.core.process.diffusion.Diffusion`), an autoencoder
(:class:`~diffuse.core.models.latent.AutoencoderObjective`) and a noise-aware classifier
(:class:`~diffuse.core.models.classifier.ClassifierObjective`) are objectives, so each trained
model gets the same optimiser, EMA, checkpoints, exact resumption and several processes.

AdamW with linear warm-up then cosine decay (or a constant rate, ``lr_schedule="constant"``),
global gradient-norm clipping, an EMA of the weights (``torch.optim.swa_utils.AveragedModel``),
gradient accumulation, bf16 autocast on CUDA, a progress bar with loss and throughput, a JSONL
metrics log, periodic sampling and evaluation (its cost stated first, shown with a progress bar and
bounded by a share of the training time: ``core.training.evalbudget``), batches built ahead in a background
thread (``train.prefetch``; the same draws as without), atomic checkpoints and exact resumption.

Reproducibility: every random draw of step ``k`` (batch composition, augmentation, times,
noise, dropout) comes from generators seeded with ``(seed, k)``, and the data order of epoch
``e`` from ``(seed, e)``. Training N steps, stopping, and resuming for N more therefore
gives the same weights as 2N steps in one go, as long as the learning rate of every step is
the same in both: always for the same total ``steps``; when the total is extended on resume,
only with ``lr_schedule="constant"`` (the cosine decay depends on the total).

Several processes (``core.training.distributed``; torchrun, ``diffuse train --nproc N``, accelerate):
every rank assembles the same global batch (the same data order, augmentation and draws of
times / noise / condition dropout) and computes the loss of its contiguous shard of the samples;
DistributedDataParallel averages the gradients, each rank scaling its shard's loss sum by
``world_size / batch_size``, so the step is the 1-process step of the global batch up to float
reduction order. Rank 0 logs, shows the progress bar, writes checkpoints and evaluates; the
others wait at a barrier after every checkpoint. Checkpoints do not depend on the number of
processes, so a run can resume on another number.

GPU options: ``precision`` (``bf16`` autocast, on CUDA by default, on CPU too),
``channels_last`` (the domain's :meth:`~diffuse.core.data.domain.Domain.memory_format`, for image
backbones) and ``compile`` (``torch.compile`` of the backbone).

Stopping: Ctrl-C and SIGTERM checkpoint the current step and stop; a signal that arrives while
a checkpoint is being written is held until the save is complete. A non-finite loss (or
gradient norm) is caught before the optimizer step: the last good step is checkpointed and
:class:`TrainingDiverged` raised.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from ..config import RunConfig
from ..data.domain import Batch, Domain, DomainDataset
from ..errors import ConfigError, TrainingDiverged
from ..io import append_text, keeping, write_samples
from . import distributed
from .batches import BatchStream
from .checkpoint import (clean_checkpoints, drop_records_after, hardware_record, kept_text, load_checkpoint,
                         load_weights, save_checkpoint)
from .diloco import DiLoCo, mean_state
from .evalbudget import plan as plan_eval, seconds_per_sample_call
from .optim import EMA_CONTINUED, ema_avg_fn, lr_lambda, resolve_device, step_seed
from .signals import signals_held, sigterm_as_interrupt

__all__ = ["Trainer", "TrainResult", "Objective", "TrainingDiverged", "resolve_device"]

log = logging.getLogger(__name__)


class Objective(Protocol):
    """What the trainer optimises: per-sample losses of a batch under a model."""

    #: the trainer's periodic and final evaluations draw samples from the model (diffusion models), with
    #: the objective's ``generate(model, domain, num, **options) -> Batch``
    samples: bool

    def training_losses(self, model: nn.Module, batch: Batch, generator: torch.Generator | None = None,
                        shard: tuple[int, int] | None = None) -> Tensor:
        """Per-sample losses ``[B]`` (of samples ``start .. stop - 1`` with ``shard``; every random
        draw is made for the whole batch first, so a sample's draws do not depend on the shard)."""
        ...


class _ShardLoss(nn.Module):
    """The per-sample loss of a rank's shard as a module, so that DistributedDataParallel sees
    the forward pass (its gradient hooks are armed in ``forward``)."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch, generator, shard):
        return self.objective.training_losses(self.model, batch, generator, shard=shard)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    metrics: dict[str, float] = field(default_factory=dict)
    sample_dir: Path | None = None
    seconds: float = 0.0
    #: bytes this process all-reduced in training (several processes; see ``core.training.distributed``)
    allreduced_bytes: int = 0


class Trainer:
    """Train ``model`` under ``objective`` on ``dataset`` for ``config.train.steps`` steps; ``domain``
    is bound to the run's data (``Domain.bind(config.data_info)``: the evaluation samples and scores with it)."""

    def __init__(self, run_dir: str | Path, config: RunConfig, domain: Domain, objective: Objective,
                 model: nn.Module, dataset: DomainDataset, reference: DomainDataset | None = None,
                 progress: bool = True, dist: distributed.DistContext | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.cfg = config.train
        self.domain = domain
        self.objective = objective
        self.dataset = dataset
        self.reference = reference
        self._memory_format = None
        if getattr(self.cfg, "channels_last", False):
            self._memory_format = domain.memory_format()
            if self._memory_format is None:
                raise ConfigError(f"train.channels_last is true but the {domain.name} domain has no channels-last "
                                 "layout (it applies to image backbones); leave it false")
        # several processes (launched by torchrun / diffuse train --nproc / accelerate): join them here
        self.dist = dist if dist is not None else distributed.init_distributed(self.cfg.device)
        if self.dist.enabled and self.cfg.batch_size < self.dist.world_size:
            raise ConfigError(f"train.batch_size {self.cfg.batch_size} is smaller than the {self.dist.world_size} "
                             "processes; every process needs at least one sample per step")
        self.show_progress = progress and self.dist.is_main
        self.device = self.dist.device if self.dist.enabled else resolve_device(self.cfg.device)
        self.model = model.to(self.device)
        if self._memory_format is not None:
            self.model.to(memory_format=self._memory_format)
        # DiLoCo (train.sync_every H): every worker steps on its own, the weights meet every H steps
        self.diloco = DiLoCo(self.model, self.dist, self.cfg.sync_every, self.cfg.outer_lr,
                             self.cfg.outer_momentum) if self.cfg.sync_every else None
        params = [p for p in self.model.parameters() if p.requires_grad]
        # fused kernels on CUDA; the multi-tensor (foreach) implementation on CPU
        self.optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                           **({"fused": True} if self.device.type == "cuda" else {"foreach": True}))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.cfg))
        self.ema = AveragedModel(self.model, multi_avg_fn=ema_avg_fn(self.cfg.ema_decay, self.cfg.ema_warmup),
                                 use_buffers=True)
        self.step = 0
        self._bytes0 = self.dist.allreduced_bytes     # this run's all-reduce bytes are counted from here
        self._saved_step: int | None = None
        self._eval_seconds = 0.0   # evaluation time of this session (kept out of the training time)
        self.batches = BatchStream(dataset, self.cfg)     # the data order, and batches built ahead
        precision = self.cfg.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, got {precision!r}")
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                         if precision == "bf16" else nullcontext())
        if getattr(self.cfg, "compile", False):
            # in place (state-dict keys unchanged), after the EMA copy so that it stays uncompiled
            getattr(self.model, "backbone", self.model).compile()
        self._ddp = None
        if self.dist.enabled and self.diloco is None:
            from torch.nn.parallel import DistributedDataParallel
            # every rank starts from rank 0's weights (DDP broadcasts them here)
            self._ddp = DistributedDataParallel(_ShardLoss(self.model, self.objective), device_ids=None)
            self.dist.count_gradients(self._ddp)

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {"step": self.step, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "ema_n_averaged": int(self.ema.n_averaged)}

    def save(self, stop_on_signal: bool = True, sync: bool = True) -> None:
        """Checkpoint the current step (rank 0 writes; with ``sync`` the other ranks wait at a
        barrier until it is complete). SIGINT / SIGTERM arriving meanwhile are held until the
        checkpoint is complete, then (with ``stop_on_signal``) raise KeyboardInterrupt."""
        model, ema, state = self.model, self.ema.module, None
        if self.diloco is not None:         # every worker's state, gathered to rank 0 (a collective)
            ranks = self.diloco.gather({"model": self.model.state_dict(), "ema": self.ema.module.state_dict(),
                                        **self.state()})
            if ranks is not None:
                model, ema = self.diloco.global_weights(), mean_state([r["ema"] for r in ranks])
                state = {**self.state(), "diloco": {**self.diloco.state_dict(), "ranks": ranks}}
        if self.dist.is_main:
            with signals_held() as pending:
                save_checkpoint(self.run_dir, model, ema, state or self.state(),
                                {"domain": self.config.domain, "step": self.step,
                                 "hardware": hardware_record(self.device, self.dist.world_size)})
        else:
            pending = []
        if sync:
            self.dist.barrier()   # the others wait until rank 0's checkpoint is complete
        self._saved_step = self.step
        if pending and stop_on_signal:
            log.warning("%s arrived while saving the checkpoint of step %d; stopping after the save",
                        signal.Signals(pending[0]).name, self.step)
            raise KeyboardInterrupt

    def load(self, checkpoint: dict[str, Any] | None = None) -> None:
        """Restore weights, EMA, optimizer, scheduler and step from a run folder (or from the
        already read ``load_checkpoint(..., with_state=True)`` result). Writes nothing."""
        ck = checkpoint if checkpoint is not None else load_checkpoint(self.run_dir, with_state=True)
        where = ck.get("path", self.run_dir)
        load_weights(self.model, ck["model"], where)
        if ck["ema"] is not None:
            load_weights(self.ema.module, ck["ema"], where)
        st = ck["state"]
        if "diloco" in st:                  # this worker's own weights, EMA and inner optimiser
            self.diloco.load_state_dict(st["diloco"], where)
            st = st["diloco"]["ranks"][self.dist.rank]
            load_weights(self.model, st["model"], where)
            load_weights(self.ema.module, st["ema"], where)
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.ema.n_averaged.fill_(int(st.get("ema_n_averaged", st["step"])))
        self.step = int(st["step"])
        self._saved_step = self.step

    def init_from(self, model: dict[str, torch.Tensor], ema: dict[str, torch.Tensor], where: str | Path) -> None:
        """Start a new run from given weights (``diffuse train --init``): the model and its EMA
        copy (checked shapes), at step 0 with a fresh optimiser and learning-rate schedule. The
        EMA continues from ``ema`` at the configured decay (no warm-up, which would replace it by
        the raw weights within a few steps). Writes nothing."""
        context = (f"the initial weights ({where}) do not fit this run's model (a run started from a model keeps "
                   "its conditions, model and diffusion)")
        load_weights(self.model, model, where, context)
        load_weights(self.ema.module, ema, where, context)
        self.ema.n_averaged.fill_(EMA_CONTINUED)

    def prepare_resume(self) -> None:
        """Before continuing a loaded run: remove checkpoint folders left by an interrupted save,
        and drop the metrics.jsonl records of steps after the checkpoint (a killed run logged
        them; the resumed run logs them again), atomically. Rank 0's job; other ranks do nothing."""
        if self.dist.is_main:
            clean_checkpoints(self.run_dir)
            drop_records_after(self.run_dir, self.step)

    # ------------------------------------------------------------------ loop
    def train_step(self) -> tuple[float, float]:
        """One optimizer step: (loss, gradient norm). Ctrl-C / SIGTERM during the forward and
        backward passes stop before any update; one arriving during the update is held until the
        update is complete, then raised (KeyboardInterrupt)."""
        loss, grad_norm = self._gradients()
        with signals_held() as pending:
            self._update()
        if pending:
            raise KeyboardInterrupt(f"signal {signal.Signals(pending[0]).name}")
        return loss, grad_norm

    def _gradients(self) -> tuple[float, float]:
        """Forward and backward passes of one step (all micro-batches), then gradient clipping."""
        cfg = self.cfg
        seed = step_seed(cfg.seed, self.step)
        # dropout and any other global draws (each rank its own stream; rank 0's is the 1-process one)
        torch.manual_seed(seed if self.dist.rank == 0 else step_seed(cfg.seed, self.step, salt=101 * self.dist.rank))
        cpu_gen = torch.Generator().manual_seed(seed)
        dev_gen = cpu_gen if self.device.type == "cpu" else torch.Generator(self.device).manual_seed(seed)
        self.model.train()
        total = 0.0
        for micro in range(cfg.grad_accum):
            pos = (self.step * cfg.grad_accum + micro) * cfg.batch_size
            batch = self.batches.batch(pos, cfg.batch_size, cpu_gen).to(self.device)
            if self._memory_format is not None:
                batch = Batch(batch.x.contiguous(memory_format=self._memory_format), batch.space, batch.cond,
                              batch.extras)
            if self._ddp is None:   # one process, or a DiLoCo worker (its shard; no gradient exchange)
                with self.autocast:
                    loss = self.objective.training_losses(self.model, batch, dev_gen, shard=self.dist.shard(len(batch))
                                                          ).mean()
                if not torch.isfinite(loss):  # before any update: the weights are still the last good ones
                    raise TrainingDiverged(f"loss {loss.item()}")
                (loss / cfg.grad_accum).backward()
                total += loss.item() / cfg.grad_accum
                continue
            # several processes: this rank's shard of the same global batch; the gradient of the
            # global mean is the DDP average of (world / B) * (the shard's loss sum)
            n = len(batch)
            last = micro == cfg.grad_accum - 1
            with (nullcontext() if last else self._ddp.no_sync()):
                with self.autocast:
                    local = self._ddp(batch, dev_gen, self.dist.shard(n)).float().sum()
                loss = self.dist.all_reduce_sum(local.detach()) / n   # the same value on every rank
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"loss {loss.item()}")
                (local * (self.dist.world_size / (n * cfg.grad_accum))).backward()
            total += loss.item() / cfg.grad_accum
        grad_norm = 0.0
        if cfg.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
            if not math.isfinite(grad_norm):
                raise TrainingDiverged(f"gradient norm {grad_norm}")
        return total, grad_norm

    def _update(self) -> None:
        """The optimizer, learning-rate and EMA updates of one step (the caller holds signals:
        the update is all or nothing, so a checkpoint never holds half-updated weights)."""
        self.optimizer.step()
        self.scheduler.step()
        # on CPU, zeroing in place avoids freeing and re-allocating every gradient each step
        # (about 15 % of a small U-Net's step); CUDA's caching allocator makes None cheaper there
        self.optimizer.zero_grad(set_to_none=self.device.type != "cpu")
        self.ema.update_parameters(self.model)
        self.step += 1
        if self.diloco is not None and self.diloco.due(self.step, self.cfg.steps):
            self.diloco.sync()

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        append_text(self.run_dir / "metrics.jsonl", json.dumps(record) + "\n")

    def _eval_budget(self, final: bool) -> float | None:
        """Seconds one evaluation may take (``core.training.evalbudget``): ``eval_budget`` times the run's
        training time (this session's mean seconds per step times ``steps``), shared by the
        periodic evaluations and the final one; the final one gets at least ``eval_min_seconds``."""
        cfg = self.cfg
        if cfg.eval_budget is None:
            return None
        start, first_step = getattr(self, "_fit_start", (time.perf_counter(), self.step))
        done = self.step - first_step
        per_step = (time.perf_counter() - start - self._eval_seconds) / done if done > 0 else 0.0
        count = ((cfg.steps - 1) // cfg.sample_every if cfg.sample_every else 0) + (1 if cfg.final_eval else 0)
        share = cfg.eval_budget * per_step * cfg.steps / max(1, count)
        return max(share, cfg.eval_min_seconds) if final else share

    def evaluate(self, tag: str, budget: float | None = None,
                 final: bool = True) -> tuple[dict[str, float], Path | None]:
        """Sample with the EMA model, write the samples, and compute the domain's metrics.

        ``eval_samples`` x ``eval_steps`` of ``eval_sampler``, scaled down to ``budget`` seconds
        (``core.training.evalbudget.plan``; ``None``: as configured). The cost is stated before sampling
        starts and a progress bar runs meanwhile. A periodic evaluation (``final=False``) whose
        minimum exceeds its budget is skipped: ``({}, None)``."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        t0 = time.perf_counter()
        model = self.ema.module
        model.eval()
        chunk = max(cfg.batch_size, 64)
        per_call = seconds_per_sample_call(model, self.domain, min(cfg.eval_samples, chunk), self.device, cfg.seed)
        p = plan_eval(cfg.eval_samples, cfg.eval_steps, cfg.eval_sampler, per_call, budget)
        where = "final evaluation" if final else f"evaluation at step {self.step}"
        if not final and not p.within_budget():
            self._say(f"{where} skipped: even {p.describe()}; raise train.eval_budget (or set it to null)")
            self._eval_seconds += time.perf_counter() - t0
            return {}, None
        self._say(f"{where}: {p.describe()}")
        bar = tqdm(total=p.samples * p.steps, disable=not self.show_progress, desc="eval", unit="sample-step",
                   dynamic_ncols=True, leave=False)
        try:
            # the objective's own sampling entry (a diffusion process or a mixed state's)
            samples = self.objective.generate(model, self.domain, p.samples, sampler=cfg.eval_sampler, steps=p.steps,
                                              seed=cfg.seed, batch_size=chunk, device=self.device, progress=bar.update)
        finally:
            bar.close()
        out_dir = self.run_dir / "samples" / tag
        write_samples(self.domain, samples, out_dir, kept=kept_text(self.run_dir) + (
            " (--resume runs the final evaluation again)" if final else ""))
        metrics: dict[str, float] = {}
        if self.reference is not None and len(self.reference) > 0:
            metrics = self.domain.metrics(samples, self.reference)
        seconds = time.perf_counter() - t0
        self._eval_seconds += seconds
        self._log({"step": self.step, "event": "eval", "sampler": cfg.eval_sampler, "steps": p.steps,
                   "num": p.samples, "seconds": seconds, "estimated_seconds": p.seconds, "budget_seconds": p.budget,
                   **metrics})
        return metrics, out_dir

    def _say(self, text: str) -> None:
        """A line on stderr beside the progress bar (at INFO in the log without one)."""
        from tqdm.auto import tqdm

        if self.show_progress:
            tqdm.write(text, file=sys.stderr)
        else:
            log.info(text)

    def fit(self, stop_at: int | None = None) -> TrainResult:
        """Train up to ``config.train.steps`` (or pause at ``stop_at``, checkpointed, to resume later).

        Ctrl-C and SIGTERM also checkpoint the current step before stopping (KeyboardInterrupt
        propagates), so ``--resume`` continues from it. A non-finite loss checkpoints the last
        good step and raises :class:`TrainingDiverged`.
        """
        from tqdm.auto import tqdm

        cfg = self.cfg
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        start_time = time.perf_counter()
        self._fit_start, self._eval_seconds = (start_time, self.step), 0.0
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.show_progress, desc="train",
                   unit="step", dynamic_ncols=True)
        with sigterm_as_interrupt(), self.batches.prefetching(), keeping(lambda: kept_text(self.run_dir)):
            try:
                loss = self._loop(bar, end)
                bar.close()
                if self._saved_step != self.step:   # (a finished run resumed for its final evaluation: saved)
                    self.save()
            except KeyboardInterrupt:
                bar.close()
                if self._saved_step != self.step and self._can_save_alone():
                    self.save(stop_on_signal=False, sync=False)   # the other ranks may be anywhere
                if self.dist.is_main:
                    log.warning("interrupted at step %d; checkpoint saved, continue with --resume %s",
                                self.step, self.run_dir)
                raise
            except TrainingDiverged as exc:
                bar.close()
                if self._saved_step != self.step and self._can_save_alone():
                    self.save(stop_on_signal=False)
                raise TrainingDiverged(
                    f"training diverged at step {self.step + 1} ({exc}); the last good checkpoint (step {self.step}) "
                    f"is in {self.run_dir}; lower --lr (now {cfg.lr:g}) and start a new run"
                ) from None
        self.dist.finish()   # after the last checkpoint's barrier: the other ranks are done
        metrics: dict[str, float] = {}
        sample_dir = None
        if (cfg.final_eval and cfg.eval_samples > 0 and self.step >= cfg.steps and self.dist.is_main
                and self.objective.samples):
            with sigterm_as_interrupt(), keeping(lambda: kept_text(self.run_dir)):
                metrics, sample_dir = self.evaluate("final", self._eval_budget(final=True))
        return TrainResult(self.run_dir, self.step, loss, metrics, sample_dir, time.perf_counter() - start_time,
                           self.allreduced_bytes)

    @property
    def allreduced_bytes(self) -> int:
        """Bytes this trainer has all-reduced so far (in this process; counted, see ``distributed``)."""
        return self.dist.allreduced_bytes - self._bytes0

    def _can_save_alone(self) -> bool:
        """A checkpoint outside the step-aligned ones: not for DiLoCo workers (its gather needs them all
        at one step; the run resumes from its last checkpoint, see ``core.training.diloco``)."""
        if self.diloco is None or not self.dist.enabled:
            return True
        if self.dist.is_main:
            log.warning("DiLoCo run stopped at step %d: it continues from its last checkpoint (step %s) with "
                        "--resume", self.step, self._saved_step)
        return False

    def _loop(self, bar, end: int) -> float:
        cfg = self.cfg
        window_t, window_n = time.perf_counter(), 0
        loss = float("nan")
        ema_loss = None
        while self.step < end:
            loss, grad_norm = self._gradients()
            # the update and the step's log line are one held section: an interrupt arriving
            # anywhere in it is raised only after both, so the interrupt's checkpoint (step N) and
            # metrics.jsonl (lines up to N) always agree
            with signals_held() as pending:
                self._update()
                window_n += cfg.batch_size * cfg.grad_accum
                ema_loss = loss if ema_loss is None else 0.9 * ema_loss + 0.1 * loss
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.perf_counter()
                    rate = window_n / max(now - window_t, 1e-9)
                    window_t, window_n = now, 0
                    comm = {"allreduced_bytes": self.allreduced_bytes} if self.dist.enabled else {}
                    self._log({"step": self.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                               "grad_norm": grad_norm, "samples_per_s": rate, **comm})
                    bar.set_postfix(loss=f"{ema_loss:.4f}", samples_s=f"{rate:.1f}")
            if pending:
                raise KeyboardInterrupt(f"signal {signal.Signals(pending[0]).name}")
            self._after_step(bar, end)
        return loss

    def _after_step(self, bar, end: int) -> None:
        """Progress, the periodic checkpoint and the periodic evaluation after a step."""
        cfg = self.cfg
        bar.update(1)
        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < end:
            self.save()
        if (cfg.sample_every and cfg.eval_samples and self.step % cfg.sample_every == 0 and self.step < cfg.steps
                and self.dist.is_main and self.objective.samples):
            metrics, where = self.evaluate(f"step_{self.step:06d}", self._eval_budget(final=False), final=False)
            if where is not None:
                bar.write(f"step {self.step}: " + _fmt(metrics))


def _fmt(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
