"""``diffuse domains``, ``cache`` and ``export-pretrained``: commands that list and manage what
diffuse has (domains and their capabilities, the data cache, shipped models). Thin: parse, call
:mod:`diffuse.api`, report."""

from __future__ import annotations

import time
from typing import Any

import click

from .. import api
from ..core.errors import UnknownNameError
from .common import PATH, UserError, non_negative

__all__ = ["domains", "cache", "export_pretrained", "save_pretrained"]


@click.command()
def domains() -> None:
    """List the available domains (built-ins and the `diffuse.domains` entry points) with their
    capabilities (conditional, completable, restorable, autoencoder, classifier)."""
    items = api.available_domains()
    width = max((len(k) for k in items), default=0)
    for name, desc in items.items():
        try:
            dom = api.get_domain(name)
            caps, nets = api.capabilities(dom), api.domain_backbones(dom)
        except UnknownNameError:        # a broken plug-in: its description says why
            dom, caps, nets = None, [], {}
        click.echo(f"{name:<{width}}  {desc}")
        if caps:
            click.echo(f"{'':<{width}}  capabilities: {', '.join(caps)}")
        if nets:
            default = getattr(dom, "default_backbone", None)
            click.echo(f"{'':<{width}}  backbones: " + ", ".join(f"{n} (default)" if n == default else n for n in nets))


def _size_text(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1024
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}"


#: the kinds of cache entries the built-in domains write (a plug-in's appear once it has written one)
CACHE_KINDS = ("audio", "audio_stats", "images", "molecules")


@click.command("cache")
@click.option("--clear", "clear", is_flag=True, help="Remove the entries (all, or those --kind / --older-than select).")
@click.option("--kind", default=None, metavar="KIND", help="Only this kind of entry (audio, audio_stats, images, molecules).")
@click.option("--older-than", type=float, default=None, metavar="DAYS", callback=non_negative,
              help="Only entries not used for DAYS days (a fraction is fine: 0.5 is 12 hours).")
@click.option("--dry-run", is_flag=True, help="With --clear: list what would be removed, remove nothing.")
def cache(clear, kind, older_than, dry_run) -> None:
    """Show the data cache (decoded audio, converted image / molecule sets) or clear it.

    The cache lives in $DIFFUSE_CACHE, else $XDG_CACHE_HOME/diffuse, else ~/.cache/diffuse; a
    removed entry is rebuilt from its data file the next time it is needed.
    """
    if (dry_run or older_than is not None) and not clear:
        raise UserError("--older-than and --dry-run go with --clear")
    if kind is not None:
        known = sorted(set(CACHE_KINDS) | {e["kind"] for e in api.cache_entries()})
        if kind not in known:
            raise UserError(f"unknown cache kind {kind!r}; the kinds are: {', '.join(known)}")
    if clear:
        removed = api.clear_cache(kind=kind, older_than_days=older_than, dry_run=dry_run)
        total = sum(e["bytes"] for e in removed)
        verb = "would remove" if dry_run else "removed"
        for e in removed:
            click.echo(f"{verb} {e['path']} ({_size_text(e['bytes'])})")
        click.echo(f"{verb} {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}, {_size_text(total)}"
                   f" from {api.cache_dir()}")
        return
    entries = api.cache_entries(kind)
    click.echo(f"cache: {api.cache_dir()}")
    if not entries:
        click.echo("  (empty)")
        return
    kinds: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        kinds.setdefault(e["kind"], []).append(e)
    now = time.time()
    for k, items in sorted(kinds.items()):
        size = sum(e["bytes"] for e in items)
        oldest = max(now - e["last_used"] for e in items) / 86400.0
        partial = sum(e["partial"] for e in items)
        extra = f" ({partial} temporary: a conversion running now or interrupted)" if partial else ""
        click.echo(f"  {k:<12} {len(items):5d} {_size_text(size):>9}  least recently used {oldest:.1f} days ago{extra}")
    click.echo(f"  {'total':<12} {len(entries):5d} {_size_text(sum(e['bytes'] for e in entries)):>9}")


@click.command("export-pretrained")
@click.argument("run", type=PATH)
@click.argument("name")
@click.option("--half", is_flag=True, help="Store the EMA weights as float16 (half the size; check the quality).")
@click.option("--root", type=PATH, default=None,
              help="Folder holding pretrained/ and recipes/ (default: the diffuse package itself).")
@click.option("--wall-time", default=None, metavar="TEXT",
              help="Training wall time for the model card (default: summed from the run's metrics.jsonl).")
@click.option("--hardware", default=None, metavar="TEXT", help="Hardware the run trained on, for the model card.")
@click.option("--force", is_flag=True, help="Replace an existing pretrained model and recipe of that name.")
@click.option("--evaluation", "evaluations", type=PATH, multiple=True, metavar="FILE",
              help="An evaluation of RUN for the card (`diffuse evaluate -c RUN --seed S --out FILE`); "
                   "repeat for several seeds of one protocol (the card gives each and their mean). "
                   "Default: RUN/evaluation.json.")
def export_pretrained(run, name, half, root, wall_time, hardware, force, evaluations) -> None:
    """Export run folder RUN (or a model folder, or pretrained:NAME) as pretrained model NAME
    (config, EMA weights, model card, recipe)."""
    from .. import api
    from ..pretrained.export import export

    run = api.resolve_model(run)
    paths = export(run, name, root=root, half=half, wall_time=wall_time, hardware=hardware, force=force,
                 evaluations=list(evaluations) or None)
    click.echo(f"exported {run} as pretrained model {name!r}: " + ", ".join(str(p) for p in paths))


@click.command("save-pretrained")
@click.argument("model", metavar="RUN|NAME")
@click.argument("out", type=PATH)
@click.option("--half", is_flag=True, help="Store the weights as float16 (half the size; check the quality).")
@click.option("--hardware", default=None, metavar="TEXT", help="Hardware for the model card (default: the run's record).")
@click.option("--wall-time", default=None, metavar="TEXT", help="Wall time for the model card (default: the run's record).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def save_pretrained(model, out, half, hardware, wall_time, force) -> None:
    """Write any trained model (a diffusion model's, an autoencoder's or a classifier's run folder,
    or a shipped model's name) as a model folder OUT: config, EMA weights (safetensors), model
    card, recipe. Every command then takes it as --pretrained OUT or -c OUT."""
    from .. import api

    dest = api.save_pretrained(api.resolve_model(model), out, half=half, hardware=hardware, wall_time=wall_time,
                               force=force)
    click.echo(f"saved {model} as {dest}: " + ", ".join(sorted(p.name for p in dest.iterdir())))
