"""``diffuse demo``: a local web page (Gradio, the ``demo`` extra) to sample the shipped models and
any run or model folder.

The page is generic over domains: it samples through :mod:`diffuse.api`, lets the domain's own
writer write the files, and shows them by kind: images and GIFs in a gallery, WAVs in audio
players, SDF files as 2-D depictions (RDKit) with the domain's reference-free table and the file
to download, anything else as files to download. A domain added from outside (video) is shown
through its writer the same way. A user's mistake (a ``UserInputError``) is one message on the
page; nothing is drawn.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

from .common import UserError

__all__ = ["demo", "build_demo", "draw"]

#: audio players on the page (a domain that writes more clips offers the rest as files)
AUDIO_SLOTS = 8
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".gif", ".webp"}
AUDIO_EXT = {".wav", ".flac", ".ogg", ".mp3"}
NO_LABEL = "(unconditional)"


class _Models:
    """Models loaded once per page, by the text the user chose."""

    def __init__(self, device: str) -> None:
        self.device, self.cache = device, {}

    def get(self, source: str):
        from .. import api

        source = (source or "").strip()
        if source not in self.cache:
            path = api.resolve_model(source)
            if api.model_kind(path) != "diffusion":
                raise UserError(f"{source} is an {api.model_kind(path)}, not a diffusion model")
            self.cache[source] = api.load(path, device=self.device)
        return self.cache[source]


def labels_of(model: Any) -> list[str]:
    """The label choices of a model: its class names, or none for a model without labels."""
    kind = model.condition_kinds().get("label")
    names = list(getattr(kind, "class_names", None) or [])
    return [NO_LABEL] + names


def molecule_pictures(sdf: Path, out: Path, limit: int = 16) -> list[Path]:
    """2-D depictions (RDKit) of the first ``limit`` molecules of an SDF file, one PNG each."""
    from rdkit import Chem
    from rdkit.Chem import AllChem, Draw

    pictures = []
    for k, mol in enumerate(Chem.SDMolSupplier(str(sdf), sanitize=False, removeHs=False)):
        if mol is None or k >= limit:
            continue
        try:
            mol.UpdatePropertyCache(strict=False)
            flat = Chem.RemoveHs(mol, sanitize=False)
            AllChem.Compute2DCoords(flat)
            img = Draw.MolToImage(flat, size=(240, 240), kekulize=False)
        except Exception:  # noqa: BLE001 - a molecule RDKit cannot draw is left out of the pictures
            continue
        path = out / f"molecule_{k:04d}.png"
        img.save(path)
        pictures.append(path)
    return pictures


def draw(models: _Models, source: str, num: int, steps: int, seed: int, label: str, scale: float,
         progress: Any = None) -> dict[str, Any]:
    """Sample ``num`` items of the model ``source`` and sort the written files for the page:
    ``{"images", "audio", "files", "table", "message"}``. UserInputError for bad input."""
    from .. import api

    model = models.get(source)
    num, steps, seed = int(num), int(steps), int(seed)
    cond = None if not label or label == NO_LABEL else {"label": label}
    guidance = float(scale) if cond is not None else None
    sampler, default_steps = model.default_sampling(None, None)
    model.prepare_condition(num, cond, guidance)
    model.check_sampling(num, sampler=sampler, steps=steps, seed=seed, batch_size=num)
    total = max(num * model.steps_for(sampler, steps), 1)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(min(done[0] / total, 1.0), desc=f"sampling ({sampler}, {steps} steps)")

    samples = model.sample(num, sampler=sampler, steps=steps, seed=seed, batch_size=num, cond=cond,
                           guidance_scale=guidance, progress=tick)
    out = Path(tempfile.mkdtemp(prefix="diffuse-demo-"))
    written = model.write(samples, out)
    summary = model.describe(samples) or {}
    images = [p for p in written if p.suffix.lower() in IMAGE_EXT]
    audio = [p for p in written if p.suffix.lower() in AUDIO_EXT]
    files = [p for p in written if p not in images and p not in audio]
    for sdf in [p for p in files if p.suffix.lower() == ".sdf"]:
        images += molecule_pictures(sdf, out)
    files += audio[AUDIO_SLOTS:]
    table = [[k, f"{v:.4g}" if isinstance(v, float) else str(v)] for k, v in summary.items()]
    message = (f"{num} sample{'s' if num != 1 else ''} of {source} ({model.domain.name}, {sampler}, "
               f"{steps} steps, seed {seed}{', label ' + label + ', guidance ' + str(scale) if cond else ''})")
    api_files = [str(p) for p in files]
    return {"images": [str(p) for p in images], "audio": [str(p) for p in audio[:AUDIO_SLOTS]],
            "files": api_files, "table": table, "message": message}


def build_demo(sources: list[str], device: str = "cpu"):
    """The Gradio page (a ``gr.Blocks``) for the models ``sources``."""
    import gradio as gr

    from ..core.errors import UserInputError

    models = _Models(device)

    with gr.Blocks(title="diffuse demo") as page:
        gr.Markdown("# diffuse: sample a model\nA shipped model's name, a run folder or a model folder "
                    "(save_pretrained).")
        with gr.Row():
            source = gr.Dropdown(choices=sources, value=sources[0], allow_custom_value=True, label="model",
                                 elem_id="model")
            label = gr.Dropdown(choices=[NO_LABEL], value=NO_LABEL, allow_custom_value=True, label="label",
                                elem_id="label")
            scale = gr.Slider(0.0, 6.0, value=2.0, step=0.5, label="guidance scale", elem_id="scale")
        with gr.Row():
            num = gr.Number(value=4, precision=0, label="samples", elem_id="num")
            steps = gr.Number(value=20, precision=0, label="sampler steps", elem_id="steps")
            seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
        button = gr.Button("Sample", variant="primary", elem_id="sample")
        status = gr.Markdown(elem_id="status")
        gallery = gr.Gallery(label="samples", columns=8, elem_id="gallery")
        players = [gr.Audio(visible=False, type="filepath", label=f"clip {k + 1}") for k in range(AUDIO_SLOTS)]
        table = gr.Dataframe(headers=["metric", "value"], label="samples' table", visible=False, elem_id="table")
        files = gr.File(file_count="multiple", label="files", visible=False, elem_id="files")

        def on_model(src):
            try:
                return gr.update(choices=labels_of(models.get(src)), value=NO_LABEL), ""
            except UserInputError as exc:
                return gr.update(choices=[NO_LABEL], value=NO_LABEL), f"**error:** {exc}"

        def on_sample(src, n, st, sd, lab, sc, progress=gr.Progress()):
            try:
                r = draw(models, src, n or 0, st or 0, sd or 0, lab, sc, progress)
            except UserInputError as exc:
                return [f"**error:** {exc}", [], *[gr.update(visible=False, value=None)] * AUDIO_SLOTS,
                        gr.update(visible=False), gr.update(visible=False, value=None)]
            clips = [gr.update(visible=k < len(r["audio"]), value=r["audio"][k] if k < len(r["audio"]) else None)
                     for k in range(AUDIO_SLOTS)]
            return [r["message"], r["images"], *clips, gr.update(visible=bool(r["table"]), value=r["table"] or None),
                    gr.update(visible=bool(r["files"]), value=r["files"] or None)]

        source.change(on_model, [source], [label, status])
        page.load(on_model, [source], [label, status])
        button.click(on_sample, [source, num, steps, seed, label, scale], [status, gallery, *players, table, files])
    return page


@click.command()
@click.option("--model", "models", multiple=True, metavar="NAME|DIR",
              help="A model to offer (repeatable): a shipped model's name, a run folder or a model folder. "
                   "Default: the shipped models.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on (local by default).")
@click.option("--port", type=int, default=7860, show_default=True)
@click.option("--device", default="auto", show_default=True)
def demo(models, host, port, device) -> None:
    """A local web page to sample the shipped models and any run or model folder (needs the demo
    extra: pip install "diffuse[demo]")."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError('the demo needs Gradio: pip install "diffuse[demo]"') from None
    from .. import api
    from ..core.validation import check_device
    from ..pretrained import available

    check_device(device)
    sources = list(models) or available()
    for s in sources:
        api.resolve_model(s)                  # a missing folder is one line before the server starts
    if not sources:
        raise UserError("no model to offer: give --model RUN_DIR (no shipped model is installed)")
    build_demo(sources, device=device).queue().launch(server_name=host, server_port=port, show_error=True)
