"""The video domain: clips ``[B, C, T, H, W]`` in ``[-1, 1]``; bundled Moving-MNIST clips made from
the image domain's digits, or a folder of the user's clips; a 2-D U-Net over stacked frames;
per-frame FID, identity, physics and speed metrics; GIF / MP4 / PNG-strip output.

It is written against the public plug-in API only (``diffuse.domains.PLUGIN_API``:
``diffuse.core``'s plug-in names, ``diffuse.domains.layers`` and ``diffuse.domains.image``'s
public parts) and registered through the ``diffuse.domains`` entry-point group like a
third-party domain (``docs/guides/adding-a-domain.md`` walks through it).

Data options (``default_data``; given to :meth:`VideoDomain.load_data`):

=============== ============================================================================
``frames``      frames per clip (10; the bundled clips are drawn with it, user clips cut into it)
``size``        frame side: 32 for the bundled clips; for user clips ``None`` keeps their size
``digit_size``  bundled: side of the shrunk digits (14)
``num_digits``  bundled: digits per clip (1; 2 as in Srivastava et al. 2015 works too)
``speed``       bundled: ``[lo, hi]`` pixels per frame (``[1.0, 2.5]``)
``num_clips``   bundled: clips in the data set (20,000; drawn on demand, nothing stored)
``seed``        bundled: seed of the clips
``conditional`` feed the digit's class as the condition ``label`` (one digit per clip;
                ``diffuse train --condition label``)
``channels``    user clips: ``None`` (1 if every clip is gray, else 3), 1 or 3
``max_clips``   user clips: read at most this many
``i3d``         a local I3D TorchScript file: adds FVD to the metrics (never downloaded)
=============== ============================================================================

No latent video: the image autoencoder per frame does not pay at 32 x 32 (the stacked-frames
U-Net already costs one small image U-Net per clip, and an autoencoder's 8 x 8 latents of a
14-pixel digit would lose what identity needs); the domain declares no autoencoder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffuse.core import Batch, Condition, ConditionKind, DataError, DenseSpace, Domain, DomainDataset, UserInputError
from diffuse.core import frechet_from_features

from .backbones import BACKBONES
from .clips import load_clips
from .features import I3DFeatures
from .metrics import clip_features, frame_features, frame_network, frames_of, is_digit_data, motion_report, \
    wasserstein_1d
from .moving import label_kind, load_moving
from .writer import write_clips

__all__ = ["VideoDomain", "DATA_DEFAULTS"]

log = logging.getLogger(__name__)

DATA_DEFAULTS: dict[str, Any] = {"frames": 10, "size": None, "digit_size": 14, "num_digits": 1,
                                 "speed": [1.0, 2.5], "num_clips": 20000, "seed": 0, "conditional": False,
                                 "channels": None, "max_clips": None, "i3d": None}
#: the bundled clips' frame side when ``size`` is not given
BUNDLED_SIZE = 32
#: at most this many reference clips enter the metrics
MAX_REFERENCE = 1000


def reference_clips(reference: DomainDataset, limit: int = MAX_REFERENCE) -> Tensor:
    """The first ``limit`` clips of ``reference`` in model space (evenly spread over it)."""
    n = len(reference)
    idx = torch.linspace(0, n - 1, min(n, limit)).round().long() if n > limit else torch.arange(n)
    return torch.cat([reference.batch(idx[i:i + 256]).x for i in range(0, len(idx), 256)])


class VideoDomain(Domain):
    """Clips: Moving-MNIST from the bundled digits or the user's GIF / MP4 / NumPy clips; a 2-D U-Net
    over stacked frames; per-frame FID, identity, physics; GIF / MP4 / PNG strips."""

    name = "video"
    description = ("clips [C, T, H, W] (GIF / MP4 / .npy folders; bundled: Moving-MNIST from the bundled digits); "
                   "stacked-frames U-Net; per-frame FID, identity, physics")
    layout_keys = ("channels", "frames", "height", "width")
    backbones = BACKBONES
    default_backbone = "unet"
    #: 8-bit frames on [-1, 1], as images
    likelihood_bins = 256

    def __init__(self) -> None:
        self._cache: dict[tuple, dict[str, Any]] = {}

    # ------------------------------------------------------------------ configuration
    def default_diffusion(self) -> dict[str, Any]:
        # as the image domain: v-prediction (accurate at t = 1 of the linear schedule)
        return {"schedule": {"kind": "linear"}, "parameterization": "v"}

    def default_train(self) -> dict[str, Any]:
        # the quickstart: digits that move after about 10 minutes on two CPU cores (docs/guides/video.md)
        return {"steps": 600, "batch_size": 16, "lr": 1e-3, "warmup_steps": 50, "ema_decay": 0.99,
                "checkpoint_every": 200, "eval_samples": 16, "eval_steps": 25, "sample_every": 0}

    def default_data(self) -> dict[str, Any]:
        return dict(DATA_DEFAULTS)

    # ------------------------------------------------------------------ data
    def load_data(self, path: str | Path | None, options: dict[str, Any]) -> DomainDataset:
        unknown = sorted(set(options) - set(DATA_DEFAULTS))
        if unknown:
            raise DataError(f"unknown video data option(s): {', '.join(unknown)}; known: {', '.join(sorted(DATA_DEFAULTS))}")
        opts = {**DATA_DEFAULTS, **options}
        if opts["i3d"] is not None and not Path(str(opts["i3d"])).expanduser().is_file():
            raise DataError(f"video data option i3d: {opts['i3d']} is not a file (a TorchScript I3D network)")
        if path is None:
            opts["size"] = BUNDLED_SIZE if opts["size"] is None else opts["size"]
            data = load_moving(opts)
            if opts["i3d"]:
                data._info["i3d"] = str(opts["i3d"])
            return data
        if opts["conditional"]:
            raise DataError("the label condition needs the bundled digit clips; user clips carry no labels")
        return load_clips(path, opts)

    def template(self, num: int, generator: torch.Generator | None = None, structure: Any = None) -> Batch:
        i = self.info
        return Batch(torch.zeros(int(num), int(i.get("channels", 1)), int(i["frames"]), int(i["height"]),
                                 int(i["width"])), DenseSpace())

    # ------------------------------------------------------------------ conditions
    def condition_kinds(self) -> dict[str, ConditionKind]:
        """``{"label": LabelKind}`` for a model trained on labelled digit clips, else ``{}``."""
        if self.info.get("conditional"):
            return {"label": label_kind()}
        return super().condition_kinds()

    def condition_data_options(self, names: list[str]) -> dict[str, Any]:
        unknown = sorted(set(names) - {"label"})
        if unknown:
            raise UserInputError(f"the video domain cannot condition on {', '.join(unknown)}; it supports: label")
        return {"conditional": True} if names else {}

    # ------------------------------------------------------------------ results
    def _reference(self, reference: DomainDataset) -> dict[str, Any]:
        """The reference clips' features (per-frame FID, FVD) and speeds, cached per set."""
        key = (id(reference), len(reference))
        if key in self._cache:
            return self._cache[key]
        clips = reference_clips(reference)
        net = frame_network(self.info, frames_of(clips))
        out: dict[str, Any] = {"net": net, "frames": frame_features(net, clips)}
        if is_digit_data(self.info):
            out["speeds"] = motion_report(clips, self.info)["speeds"]
        if self.info.get("i3d"):
            out["i3d"] = I3DFeatures(self.info["i3d"])
            out["clips"] = clip_features(out["i3d"], clips)
        self._cache = {key: out}
        return out

    def metrics(self, samples: Batch, reference: DomainDataset) -> dict[str, float]:
        """Per-frame FID; for digit clips identity, physics and speed; FVD with a local I3D file."""
        ref = self._reference(reference)
        x = samples.x.detach().float().cpu()
        out = {"frame_fid": frechet_from_features(frame_features(ref["net"], x), ref["frames"])}
        if is_digit_data(self.info):
            rep = motion_report(x, self.info)
            out.update({k: rep[k] for k in ("identity", "identity_strict", "physics_median_px", "physics_within_1px")})
            out["speed_w1"] = wasserstein_1d(rep["speeds"], ref["speeds"])
            labels = samples.cond.get("label") if isinstance(samples.cond, Condition) else None
            if labels is not None:
                out.update(self._class_accuracy(x, labels))
        if "i3d" in ref and len(x) >= 2:
            out["fvd"] = frechet_from_features(clip_features(ref["i3d"], x), ref["clips"])
        return out

    def _class_accuracy(self, x: Tensor, labels: Tensor) -> dict[str, float]:
        """The share of a label-conditioned sample's digit crops classified as its label."""
        from .features import digit_classifier
        from .tracking import digit_crops, track

        keep = labels.cpu() < 10
        if not bool(keep.any()):
            return {}
        x, labels = x[keep], labels.cpu()[keep]
        s = int(self.info["digit_size"])
        tr = track(x, 1, s)
        with torch.no_grad():
            pred = digit_classifier(s)(digit_crops(x, tr, s).reshape(-1, 1, 28, 28)).argmax(1).reshape(len(x), -1)
        hit = (pred == labels[:, None]) & tr.visible[..., 0]
        return {"class_accuracy": float(hit.sum() / tr.visible.sum().clamp_min(1))}

    def describe_samples(self, samples: Batch) -> dict[str, float] | None:
        """Identity and physics of digit clips (they need no reference data)."""
        if not is_digit_data(self.info) or not len(samples):
            return None
        rep = motion_report(samples.x.detach().float().cpu(), self.info)
        return {k: rep[k] for k in ("identity", "physics_median_px", "physics_within_1px")}

    def write(self, samples: Batch, out_dir: Path) -> list[Path]:
        return write_clips(samples.x, out_dir, samples.extras.get("keep_frames"))

    # ------------------------------------------------------------------ completion
    def completion_input(self, path: str | Path, options: dict[str, Any]) -> tuple[Batch, Tensor]:
        """A clip file and the mask of its known frames (``span`` to interpolate, frames past its
        end to predict; ``continue``); see ``inpaint``."""
        from .inpaint import video_completion_input
        return video_completion_input(path, options, self.info)
