"""The image domain: a 2-D U-Net on ``[B, C, H, W]`` images in ``[-1, 1]``.

Data options (``default_data``; given to :meth:`ImageDomain.load_data`):

=============== ============================================================================
``image_size``  ``None`` (the data's own size) or an int / ``[height, width]``: resize to cover, centre-crop
``channels``    ``None`` (1 if every image is grayscale, else 3), 1 or 3
``flip``        random horizontal flips in training (off: digits are not mirror-symmetric)
``conditional`` feed class labels to the model as the condition ``label`` (needs labels; set by
                ``diffuse train --condition label``)
``text``        feed captions made from the class labels as the condition ``text`` (needs labels;
                set by ``diffuse train --condition text``)
``labels``      ``"auto"`` (sub-folder names when every image sits in one), ``True`` or ``False``
``labels_file`` an IDX label file for an IDX image file whose name does not follow MNIST's
``max_images``  read at most this many images
``feature_net`` ``"auto"`` (LeNet: shipped for the bundled data, else trained on the reference
                set) or the path of an Inception-v3 TorchScript file for FID / KID
=============== ============================================================================

Conditions: ``label`` (class labels; :class:`~diffuse.core.data.condition.LabelKind`, null label
``num_classes``, which the U-Net's class embedding reserves). Labels are given by index, class
name, or, for digit classes ``"0".."9"``, the English word (``--label seven``).

``text`` (text prompts; :class:`~diffuse.domains.text.TextKind`, null = the empty prompt): the
training captions are drawn per sample from phrasings of the class (``"a handwritten seven"``,
``"the digit 7"``, ...; :func:`~diffuse.domains.image.data.image_phrases`); the prompt goes through
the shipped word tokenizer and a small text encoder inside the U-Net (trained with it) into the
U-Net's cross-attention. Model option ``text_encoder`` chooses the encoder
(:func:`~diffuse.domains.text.build_text_encoder`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...core.data.condition import ConcatKind, Condition, ConditionKind, LabelKind
from ...core.data.domain import Batch, Domain, DomainDataset
from ...core.errors import DataError, UserInputError
from ...core.trust import check_program
from ...core.data.space import DenseSpace
from ..text import text_kind_for
from .data import BUNDLED_SOURCE, DIGIT_WORDS, ImageDataset, load_images
from .features import InceptionFeatures, LeNet, bundled_lenet, extract_features, train_lenet
from .metrics import conditional_accuracy, fid_from_features, kid_from_features
from .backbones import BACKBONES
from .writer import write_pngs

__all__ = ["ImageDomain"]

log = logging.getLogger(__name__)

_DATA_DEFAULTS: dict[str, Any] = {"image_size": None, "channels": None, "flip": False, "conditional": False,
                                  "labels": "auto", "labels_file": None, "max_images": None, "feature_net": "auto",
                                  "text": False, "lowres": None}
_DIGIT_WORDS = DIGIT_WORDS


def reference_images(reference: DomainDataset) -> tuple[Tensor, Tensor | None]:
    """All images of ``reference`` in model space (no augmentation) and their labels, if any."""
    if isinstance(reference, ImageDataset):
        return reference.images.float() / 127.5 - 1.0, reference.labels
    b = reference.batch(torch.arange(len(reference)), torch.Generator().manual_seed(0))
    return b.x.float(), b.extras.get("labels")


class ImageDomain(Domain):
    """Images: U-Net backbone; PNG/JPEG folders, IDX files, bundled MNIST digits; FID / KID; PNG output."""

    name = "image"
    description = "2-D images (PNG/JPEG folders, MNIST IDX files; bundled: 5,000 MNIST digits); U-Net; FID/KID"
    restoration_conditions = ("lowres",)
    layout_keys = ("channels", "height", "width")
    backbones = BACKBONES
    default_backbone = "unet"
    #: 8-bit images on [-1, 1]: bits/dim of the discrete data adds log2(256 / 2) = 7 bits (Song et al. 2021)
    likelihood_bins = 256

    def __init__(self) -> None:
        self._feature_cache: dict[tuple, tuple[Any, Tensor]] = {}

    # ------------------------------------------------------------------ configuration
    def default_diffusion(self) -> dict[str, Any]:
        # v-prediction (Salimans & Ho 2022): unlike eps it stays accurate at t = 1, where the linear
        # schedule leaves alpha ~ 0.006; in short trainings eps models then leave noisy samples.
        return {"schedule": {"kind": "linear"}, "parameterization": "v"}

    def default_train(self) -> dict[str, Any]:
        # 1500 x 32 = 48k images (about 11 passes over the 4,500 training digits): recognisable digits
        # in about four minutes on two CPU cores.
        return {"steps": 1500, "batch_size": 32, "lr": 1e-3, "warmup_steps": 100, "ema_decay": 0.995,
                "checkpoint_every": 500, "eval_samples": 64, "eval_steps": 50}

    def default_data(self) -> dict[str, Any]:
        return dict(_DATA_DEFAULTS)

    def memory_format(self) -> torch.memory_format:
        """``train.channels_last``: NHWC activations and convolution weights (faster bf16 convolutions on GPUs)."""
        return torch.channels_last

    # ------------------------------------------------------------------ data and model
    def load_data(self, path: str | Path | None, options: dict[str, Any]) -> DomainDataset:
        unknown = sorted(set(options) - set(_DATA_DEFAULTS))
        if unknown:
            raise DataError(f"unknown image data option(s): {', '.join(unknown)}; known: {', '.join(sorted(_DATA_DEFAULTS))}")
        return load_images(path, {**_DATA_DEFAULTS, **options})

    def build_autoencoder(self, config: dict[str, Any]) -> nn.Module:
        """The convolutional KL autoencoder (``autoencoder.py``)."""
        from .autoencoder import ImageAutoencoder
        return ImageAutoencoder(config, self.info)

    def default_autoencoder(self) -> dict[str, Any]:
        return {"model": {}, "train": {"steps": 1000, "batch_size": 32, "lr": 1e-3, "warmup_steps": 50,
                                       "ema_decay": 0.99, "checkpoint_every": 0}}

    # --- noise-aware classifier (clf helper) ---
    def build_classifier(self, model: dict[str, Any], target: Any) -> nn.Module:
        """The U-Net's down path with the time embedding, pooled, and a linear head (``classifier.py``)."""
        from .classifier import DEFAULT_CLASSIFIER, ImageClassifier

        unknown = sorted(set(model) - set(DEFAULT_CLASSIFIER) - {"dropout"})
        if unknown:
            raise UserInputError(f"unknown {self.name} classifier option(s): {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(DEFAULT_CLASSIFIER))}")
        return ImageClassifier(int(self.info.get("channels", 1)), target.out_dim, **{**DEFAULT_CLASSIFIER, **model})

    def template(self, num: int, generator: torch.Generator | None = None, structure: Any = None) -> Batch:
        info = self.info
        shape = (int(num), int(info.get("channels", 1)), int(info.get("height", 28)), int(info.get("width", 28)))
        return Batch(torch.zeros(shape), DenseSpace())

    # ------------------------------------------------------------------ conditions
    def condition_kinds(self) -> dict[str, ConditionKind]:
        """``{"label": LabelKind}`` for a model trained with labels, ``{"text": TextKind}`` for one
        trained with captions, ``{"lowres": ConcatKind}`` for a super-resolution model (any
        combination), else ``{}``."""
        data_info = self.info
        kinds: dict[str, ConditionKind] = {}
        names = data_info.get("class_names")
        if data_info.get("conditional") and data_info.get("num_classes"):
            aliases = ({w: i for i, w in enumerate(_DIGIT_WORDS)}
                       if names is not None and list(names) == [str(i) for i in range(10)] else None)
            kinds["label"] = LabelKind(int(data_info["num_classes"]), names, aliases)
        if data_info.get("text"):
            kinds["text"] = text_kind_for(names)
        if data_info.get("lowres"):
            kinds["lowres"] = ConcatKind(int(data_info.get("channels", 1)),
                                         [int(data_info.get("height", 28)), int(data_info.get("width", 28))])
        return kinds or super().condition_kinds()

    def condition_data_options(self, names: list[str]) -> dict[str, Any]:
        unknown = sorted(set(names) - {"label", "text", "lowres"})
        if unknown:
            raise UserInputError(f"the image domain cannot condition on {', '.join(unknown)}; it supports: label, text, lowres")
        out: dict[str, Any] = {**({"conditional": True} if "label" in names else {}),
                               **({"text": True} if "text" in names else {})}
        if "lowres" in names:          # SR3 at 4x (7x7 -> 28x28 digits); data_options.lowres sets another factor
            out["lowres"] = 4
        return out

    # ------------------------------------------------------------------ results
    def program_files(self, options: dict[str, Any]) -> list[str]:
        """A ``feature_net`` path (TorchScript Inception) is a program: loaded only if the user gave it."""
        spec = (options or {}).get("feature_net")
        return [spec] if isinstance(spec, str) and spec not in ("auto", "lenet") else []

    def feature_network(self, reference: DomainDataset) -> tuple[Any, Tensor]:
        """The feature network for ``reference`` and the reference features (cached per set)."""
        data_info = self.info
        spec = data_info.get("feature_net") or "auto"
        key = (spec, id(reference), len(reference))
        if key in self._feature_cache:
            return self._feature_cache[key]
        images, labels = reference_images(reference)
        shape = (data_info.get("channels"), data_info.get("height"), data_info.get("width"))
        net: Any
        if spec not in ("auto", "lenet"):
            net = InceptionFeatures(check_program(spec, "feature network", "--feature-net"))
        elif data_info.get("source") == BUNDLED_SOURCE and shape == (1, 28, 28):
            net = bundled_lenet()
        else:
            log.info("training a LeNet feature network on %d reference images (%s)", len(images),
                     "class labels" if labels is not None else "rotation pretext task")
            net = train_lenet(images, labels, data_info.get("num_classes"), steps=300)
        feats = extract_features(net, images)
        self._feature_cache = {key: (net, feats)}
        return net, feats

    def metrics(self, samples: Batch, reference: DomainDataset) -> dict[str, float]:
        """FID and KID on the feature network; class accuracy when samples carry class labels."""
        net, ref = self.feature_network(reference)
        x = samples.x.detach().float().cpu()
        feats = extract_features(net, x)
        out = {"fid": fid_from_features(feats, ref)}
        out["kid"], out["kid_std"] = kid_from_features(feats, ref)
        labels = samples.cond.get("label") if isinstance(samples.cond, Condition) else samples.cond
        if not isinstance(labels, Tensor) or labels.is_floating_point():
            labels = None
        n_cls = self.info.get("num_classes")
        if labels is not None and isinstance(net, LeNet) and n_cls and net.num_classes == n_cls:
            keep = labels.cpu() < n_cls  # the null class has no accuracy
            if keep.any():
                out["class_accuracy"] = conditional_accuracy(net, x[keep], labels.cpu()[keep])
        return out

    def write(self, samples: Batch, out_dir: Path) -> list[Path]:
        return write_pngs(samples.x, out_dir)

    # --- completion (inpaint helper) ---
    def completion_input(self, path, options):
        """An image file and its mask (``mask`` PNG, white = generate, or ``rect``); see ``inpaint``."""
        from .inpaint import image_completion_input
        return image_completion_input(path, options, self.info)

    def restoration_input(self, path):
        """SR3: a low-resolution image file -> ``{"lowres": upsampled [C, H, W]}``; see ``inpaint``."""
        from .inpaint import lowres_condition
        return lowres_condition(path, self.info)
