"""What every command shares: the error boundary, option types and declarations, parsing of
condition and sampler options, output-path checks, tables.

The error boundary: a :class:`~diffuse.core.errors.UserInputError` raised anywhere in a command
(by the command itself or by :mod:`diffuse.api`) is printed as one line ``error: ...`` with exit
code 2; click's usage errors likewise. Any other exception is a bug and keeps its traceback
(exit 1).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from pathlib import Path
from typing import Any, Callable

import click

from ..core.errors import UserInputError
from ..core.io import check_links

__all__ = ["UserError", "DiffuseGroup", "PATH", "positive", "non_negative", "print_table", "print_columns",
           "parse_structure", "parse_labels", "parse_properties", "parse_prompts", "parse_probability",
           "parse_target_values", "parse_sampler_options", "sampler_names", "spacing_names", "check_out_file",
           "check_out_dir", "check_model_source", "load_model", "options", "check_nonempty"]


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "invalid input"


class UserError(click.ClickException):
    """A user mistake: printed as one line ``error: ...`` on stderr, exit code 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _usage_line(exc: click.UsageError) -> UserError:
    """click's usage errors (bad option values, unknown options, missing ones) as one line."""
    msg = exc.format_message().rstrip(".")
    ctx = exc.ctx
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return UserError(f"{msg}{where}")


def _user_line(exc: UserInputError) -> UserError:
    text = str(exc).strip()
    return UserError(text.splitlines()[0] if text else type(exc).__name__)


class DiffuseGroup(click.Group):
    """The error boundary of every command (see the module docstring), and its signals: SIGTERM
    stops a command as Ctrl-C does (``KeyboardInterrupt``: outputs being written are removed, a
    training run checkpoints), reported as one line with exit code 128 + the signal's number."""

    def main(self, *args, **kwargs):
        _end_quiet_startup()
        return super().main(*args, **kwargs)

    def make_context(self, info_name, args, *rest, **kwargs):
        argv = list(args)
        try:
            ctx = super().make_context(info_name, args, *rest, **kwargs)
            ctx.meta["diffuse.argv"] = argv   # re-launched as is by `train --nproc N`
            return ctx
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _usage_line(exc) from None
        except UserInputError as exc:         # raised by the group's own options (--threads)
            raise _user_line(exc) from None

    def invoke(self, ctx):
        from ..core.training.signals import sigterm_as_interrupt

        held = _HeldWarnings()
        try:
            with held, sigterm_as_interrupt():
                return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            held.drop()
            raise _usage_line(exc) from None
        except UserInputError as exc:
            held.drop()                       # a refusal is one line: the warnings before it go
            raise _user_line(exc) from None
        except KeyboardInterrupt as exc:
            term = "SIGTERM" in str(exc)
            click.echo(f"error: interrupted by {'SIGTERM' if term else 'Ctrl-C (SIGINT)'}; what was being written "
                       "was removed or left whole (see docs/guides/reliability.md)", err=True)
            ctx.exit(128 + (15 if term else 2))


class _HeldWarnings:
    """Log records of WARNING and above from the start of a command are held back (a filter on the
    root logger's handlers) for :data:`HOLD_SECONDS` or until the command ends: a command refused
    with one ``error:`` line drops them, any other end prints them, and a command still working
    after the delay prints them then and everything after at once."""

    def __init__(self) -> None:
        self.records: list[tuple[logging.Handler, logging.LogRecord]] = []
        self.holding = True
        self.lock = threading.Lock()
        self.timer: threading.Timer | None = None

    def filter(self, record: logging.LogRecord, handler: logging.Handler) -> bool:
        with self.lock:
            if self.holding and record.levelno >= logging.WARNING:
                self.records.append((handler, record))
                return False
        return True

    def __enter__(self):
        logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)   # the handler the filter holds
        self.handlers = list(logging.getLogger().handlers)
        self.filters = []
        for h in self.handlers:
            f = _HandlerFilter(self, h)
            h.addFilter(f)
            self.filters.append((h, f))
        self.timer = threading.Timer(HOLD_SECONDS, self.release)
        self.timer.daemon = True
        self.timer.start()
        return self

    def release(self) -> None:
        with self.lock:
            records, self.records, self.holding = self.records, [], False
        for handler, record in records:
            handler.handle(record)

    def drop(self) -> None:
        with self.lock:
            self.records, self.holding = [], False

    def __exit__(self, *exc) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if exc[0] is None or not issubclass(exc[0], (UserInputError, click.UsageError)):
            self.release()
        for h, f in self.filters:
            h.removeFilter(f)


class _HandlerFilter(logging.Filter):
    def __init__(self, held: _HeldWarnings, handler: logging.Handler) -> None:
        super().__init__()
        self.held, self.handler = held, handler

    def filter(self, record: logging.LogRecord) -> bool:
        return self.held.filter(record, self.handler)


#: the format of the command line's log lines
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

#: how long warnings are held back at the start of a command (a refusal comes before that)
HOLD_SECONDS = 3.0


def _end_quiet_startup() -> None:
    """Put back the default Ctrl-C / SIGTERM handling that ``diffuse.cli`` replaced while the
    command's modules were imported (a signal then ends the start-up with one line)."""
    import signal

    from . import _quiet_startup_handler
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(sig) is _quiet_startup_handler:
            signal.signal(sig, default)


class _PathType(click.Path):
    """A path option that refuses an empty string (which would otherwise mean the current folder)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip() == "":
            self.fail("is an empty string; give a path", param, ctx)
        return super().convert(value, param, ctx)


PATH = _PathType(path_type=Path)


def positive(ctx, param, value):
    """A click callback: a positive (and finite) number, or None."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise click.BadParameter(f"must be {'a finite positive number' if isinstance(value, float) else 'positive'}, "
                                 f"got {value}")
    return value


def non_negative(ctx, param, value):
    """A click callback: a number >= 0, or None."""
    if value is not None and value < 0:
        raise click.BadParameter(f"must be >= 0, got {value}")
    return value


def check_nonempty(**values: Any) -> None:
    """One line for an option given as an empty string (``--out ""``), named as given."""
    for name, value in values.items():
        if value is not None and str(value).strip() == "":
            raise UserError(f"--{name.replace('_', '-')} is an empty string")


def print_table(title: str, metrics: dict[str, Any]) -> None:
    """``metrics`` as a table; keys ``GROUP/name`` (e.g. ``edm/mol_stability``, another evaluation
    protocol of the same samples) go to a table of their own per group, never mixed with the rest."""
    if not metrics:
        return
    groups: dict[str, dict[str, Any]] = {}
    for k, v in metrics.items():
        group, _, name = k.rpartition("/")
        groups.setdefault(group, {})[name] = v
    for group, values in groups.items():
        width = max(len(k) for k in values)
        click.echo(title if not group else f"{title.rstrip(':')} ({group} protocol):")
        for k, v in values.items():
            val = f"{v:.4f}" if isinstance(v, float) else str(v)
            click.echo(f"  {k:<{width}}  {val}")


def print_columns(title: str, columns: dict[str, dict[str, Any]]) -> None:
    keys = list(next(iter(columns.values())).keys())
    width = max(len(k) for k in keys)
    click.echo(title)
    click.echo(f"  {'':<{width}}  " + "  ".join(f"{name:>12}" for name in columns))
    for k in keys:
        vals = [c.get(k) for c in columns.values()]
        click.echo(f"  {k:<{width}}  " + "  ".join(f"{v:>12.4f}" if isinstance(v, float) else f"{str(v):>12}" for v in vals))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -2 ** 63 <= v < 2 ** 63


def parse_structure(text: str | None, num: int) -> Any:
    """``--condition`` JSON (the sampling structure): an integer applies to every sample, a list
    gives one integer per sample (atom counts, class indices). Booleans, fractions, strings, objects
    and nulls are refused here; the domain checks the values themselves (``Domain.check_structure``)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise UserError(f"--condition must be JSON (e.g. 12 or [9, 12]), got {text!r}") from None
    import torch

    if isinstance(value, list):
        if len(value) != num:
            raise UserError(f"--condition lists {len(value)} values but --num is {num}; give one per sample")
        bad = [v for v in value if not _is_int(v)]
        if bad:
            raise UserError(f"--condition values must be whole numbers (atom counts or class indices), "
                            f"got {json.dumps(bad[0])}")
        return torch.tensor(value, dtype=torch.long)
    if _is_int(value):
        return torch.full((num,), value, dtype=torch.long)
    raise UserError(f"--condition must be a whole number or a list of {num} of them (e.g. 12 or [9, 12, ...]), "
                    f"got {text!r}")


def parse_labels(labels: tuple[str, ...]) -> dict[str, Any] | None:
    """``--label 7``, ``--label seven``, ``--label 0,1,2`` or repeated ``--label``: ``{"label": ...}``."""
    values = [v.strip() for text in labels for v in text.split(",") if v.strip()]
    if not values:
        return None
    return {"label": values[0] if len(values) == 1 else values}


def parse_properties(items: tuple[str, ...], cond: dict[str, Any] | None) -> dict[str, Any] | None:
    """``--property alpha=80`` (repeatable, one property each; ``alpha=70,80,90`` cycles over the
    samples) -> ``cond["property"] = {"alpha": ...}``; the model checks the names and values."""
    if not items:
        return cond
    props: dict[str, Any] = {}
    for text in items:
        name, eq, value = text.partition("=")
        name = name.strip()
        values = [v.strip() for v in value.split(",") if v.strip()]
        if not eq or not name or not values:
            raise UserError(f"--property takes NAME=VALUE (e.g. alpha=80, or alpha=70,80,90 per sample), got {text!r}")
        if name in props:
            raise UserError(f"--property {name} is given twice; give a list NAME=V1,V2,... instead")
        props[name] = values[0] if len(values) == 1 else values
    return {**(cond or {}), "property": props}


def parse_prompts(prompts: tuple[str, ...], cond: dict[str, Any] | None) -> dict[str, Any] | None:
    """``--prompt "a handwritten seven"`` (repeat it to cycle prompts over the samples) added to
    the condition as ``{"text": ...}``; the model's text kind checks the words."""
    if not prompts:
        return cond
    return {**(cond or {}), "text": prompts[0] if len(prompts) == 1 else list(prompts)}


def parse_target_values(cond: dict[str, Any] | None, pairs: tuple[str, ...]) -> dict[str, Any] | None:
    """``--target-value NAME=VALUE`` (repeatable; ``VALUE`` a number or a list ``1.5,2.5``) into ``cond``."""
    out = dict(cond or {})
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip() or not raw.strip():
            raise UserError(f"--target-value expects NAME=VALUE, e.g. gyration=2.5, got {pair!r}")
        vals = [v.strip() for v in raw.split(",") if v.strip()]
        out[name.strip()] = vals[0] if len(vals) == 1 else vals
    return out or None


def parse_probability(text: str | None, what: str) -> float | None:
    if text is None:
        return None
    try:
        p = float(text)
    except ValueError:
        raise UserError(f"{what} must be a number in [0, 1], got {text!r}") from None
    if not 0.0 <= p <= 1.0:
        raise UserError(f"{what} must be a number in [0, 1], got {text!r}")
    return p


def sampler_names() -> list[str]:
    """The samplers' names, from the registry."""
    from ..core.sampling.registry import SAMPLERS
    return sorted(SAMPLERS)


def categorical_rules() -> list[str]:
    """The samplers of categorical components (a mixed-state model's ``--categorical``), from their registry."""
    from ..core.sampling.categorical import CATEGORICAL_RULES
    return list(CATEGORICAL_RULES)


def spacing_names() -> tuple[str, ...]:
    """The grid spacings' names, from the grids module."""
    from ..core.sampling.grids import SPACINGS
    return SPACINGS


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        pass
    try:
        return float(raw)       # inf, -inf, nan (the latter refused by the type check)
    except ValueError:
        return raw


def parse_sampler_options(sampler: str, pairs: tuple[str, ...], eta: float | None = None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (values parsed as JSON where possible) checked against the sampler's
    signature: known names, types, ranges. ``--eta E`` is the same as ``-o eta=E`` (not both)."""
    from ..core.sampling.registry import check_sampler_options, sampler_record

    sampler_record(sampler)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--option expects KEY=VALUE, got {pair!r}")
        if key in out:
            raise UserError(f"sampler option {key!r} is given twice")
        out[key] = _parse_value(raw)
    if eta is not None:
        if "eta" in out:
            raise UserError("eta is given twice (--eta and -o eta=...); give one")
        out["eta"] = eta
    check_sampler_options(sampler, out)
    return out


def check_out_file(path: Path) -> Path:
    """``--out FILE``: not a folder, in an existing writable folder; checked before any work."""
    if str(path).strip() == "":
        raise UserError("--out is an empty string; give a file name")
    p = Path(path)
    check_links(p, "--out")      # symbolic-link loops and dangling links, in words
    if p.is_dir():
        raise UserError(f"--out {p} is a folder; give a file name (e.g. {p / 'evaluation.json'})")
    parent = p.parent
    if not parent.exists():
        raise UserError(f"--out {p}: folder {parent} does not exist")
    if not parent.is_dir():
        raise UserError(f"--out {p}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"--out {p}: no permission to write there")
    return p


def check_out_dir(path: Path) -> Path:
    """``--out DIR`` for samples: a new or empty folder (never mixed with old samples) whose
    nearest existing parent is a writable folder."""
    if str(path).strip() == "":
        raise UserError("--out is an empty string; give a folder")
    p = Path(path)
    check_links(p, "--out")      # symbolic-link loops and dangling links, in words
    if p.exists() and not p.is_dir():
        raise UserError(f"--out {p} is a file; give a folder for the samples")
    if p.is_dir() and any(p.iterdir()):
        raise UserError(f"--out {p} is not empty; give a new or empty folder (samples are never mixed with old ones)")
    anc = p if p.exists() else p.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise UserError(f"--out {p}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UserError(f"--out {p}: no permission to write in {anc}")
    return p


#: help of ``--pretrained``, the same in every command that takes a model
PRETRAINED_HELP = ("A shipped model (image, audio, molecules) or a model folder (save_pretrained) instead of "
                   "--checkpoint.")


def check_model_source(checkpoint, pretrained) -> None:
    """``--checkpoint RUN`` or ``--pretrained NAME|DIR``: exactly one."""
    if checkpoint is None and pretrained is None:
        raise UserError("Missing option '--checkpoint' (a run folder) or '--pretrained' NAME")
    if checkpoint is not None and pretrained is not None:
        raise UserError("give either --checkpoint RUN_DIR or --pretrained NAME, not both")


def source_name(checkpoint, pretrained) -> str:
    """A short name of the model a command reads, for default output names (``pretrained-NAME``)."""
    return Path(str(pretrained)).name if pretrained is not None else Path(str(checkpoint)).name


def default_samples_dir(checkpoint, pretrained, command: str) -> Path:
    """Where a command writes samples without ``--out``: ``RUN/samples/COMMAND`` for a run folder,
    ``samples/pretrained-NAME[-COMMAND]`` in the current folder for ``--pretrained``."""
    if pretrained is None:
        return Path(checkpoint) / "samples" / command
    suffix = "" if command == "sample" else f"-{command}"
    return Path("samples") / f"pretrained-{source_name(checkpoint, pretrained)}{suffix}"


def load_model(checkpoint, pretrained, device: str, domain: str | None, ema: bool = True):
    """The diffusion model of a run folder, a model folder or a shipped pretrained model, checked
    against ``--domain``."""
    from .. import api

    check_model_source(checkpoint, pretrained)
    if pretrained is None:
        return api.load(checkpoint, device=device, ema=ema, domain=domain)
    text = str(pretrained)
    name = text[len(api.PRETRAINED_PREFIX):] if text.startswith(api.PRETRAINED_PREFIX) else text
    if not Path(text).exists() and "/" not in name and "\\" not in name:
        model = api.load_pretrained(name, device=device)      # a shipped model (or one line naming them)
    else:
        path = api.resolve_model(pretrained)
        kind = api.model_kind(path)
        if kind != "diffusion":
            raise UserError(f"--pretrained {pretrained} is {'an' if kind == 'autoencoder' else 'a'} {kind}, not a "
                            "diffusion model")
        model = api.load(path, device=device)
    if domain is not None and domain != model.domain.name:
        raise UserError(f"pretrained model {pretrained!r} is a model of domain {model.domain.name!r}, not {domain!r}")
    return model


def options(*decorators: Callable) -> Callable:
    """Several click options as one decorator (in the order given), for option sets commands share."""
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply
