"""The digit classifier of the identity metric, and the local I3D network of FVD.

* :func:`digit_classifier`: the image domain's :class:`~diffuse.domains.image.LeNet`, trained
  (with the image domain's own :func:`~diffuse.domains.image.train_lenet`) on what the identity
  metric shows it: crops of the bundled digits as they appear in clips (shrunk to the clip's
  ``digit_size``, drawn at random sub-pixel positions, tracked and cropped by
  :func:`~diffuse.domains.video.tracking.digit_crops`). The image domain's LeNet, trained on
  sharp 28-pixel digits, recognises only 74 % of these blurrier crops; this one, trained on all
  5,000 bundled digits like the image domain's, is shipped for the default 14-pixel digits
  (``data/digit_lenet14.safetensors``; reproduce with ``python -m diffuse.domains.video.features``,
  seeded, about a minute) and trained on the fly for another ``digit_size``.
* :class:`I3DFeatures`: features of whole clips for FVD (Unterthiner et al. 2018, "Towards
  Accurate Generative Models of Video: A New Metric & Challenges") from an I3D network (Carreira &
  Zisserman 2017) in a local TorchScript file the user supplies (the one StyleGAN-V and
  common FVD code use takes ``[B, 3, T, 224, 224]`` in ``[-1, 1]``): never downloaded, the
  pattern of the image domain's :class:`~diffuse.domains.image.InceptionFeatures`.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffuse.core import DataError, MissingPathError
from diffuse.domains.image import LeNet, train_lenet

from .moving import bundled_digits, render_clip
from .tracking import digit_crops, track

__all__ = ["digit_classifier", "train_digit_classifier", "training_crops", "I3DFeatures", "DIGIT_WEIGHTS"]

log = logging.getLogger(__name__)
DATA_DIR = Path(__file__).resolve().parent / "data"
#: the shipped classifier's digit size and weights
DIGIT_WEIGHTS = {14: DATA_DIR / "digit_lenet14.safetensors"}
_CACHE: dict[int, LeNet] = {}


def training_crops(digits: Tensor, labels: Tensor, copies: int = 4, size: int = 32, seed: int = 0
                   ) -> tuple[Tensor, Tensor]:
    """``copies`` crops of each digit ``[N, s, s]`` drawn at a random sub-pixel position in a
    ``size`` frame, tracked and cropped as the metric does: ``([N * copies, 1, 28, 28], labels)``."""
    g = np.random.default_rng(seed)
    s = digits.shape[-1]
    d = digits.repeat(copies, 1, 1)[:, None]                                 # [M, 1, s, s]
    start = torch.from_numpy(g.uniform(0, size - s, (len(d), 1, 2)))
    crops = []
    for i in range(0, len(d), 1024):
        frames, _ = render_clip(d[i:i + 1024], start[i:i + 1024], torch.zeros_like(start[i:i + 1024]), 1, size)
        clips = frames[:, None] * 2 - 1                                      # [m, 1, 1, H, W]
        crops.append(digit_crops(clips, track(clips, 1, s), s)[:, 0, 0])
    return torch.cat(crops), labels.repeat(copies)


def train_digit_classifier(digit_size: int = 14, copies: int = 4, epochs: int = 6, seed: int = 0,
                           digits: Tensor | None = None, labels: Tensor | None = None) -> LeNet:
    """A LeNet trained on :func:`training_crops` of the bundled digits (or of ``digits``)."""
    if digits is None:
        digits, labels = bundled_digits(digit_size)
    x, y = training_crops(digits, labels, copies, seed=seed)
    return train_lenet(x.float(), y, 10, epochs=epochs, batch_size=128, seed=seed, max_images=len(x))


def digit_classifier(digit_size: int) -> LeNet:
    """The identity metric's classifier for digits of ``digit_size`` pixels: shipped for 14,
    trained once per process (seeded) for another size."""
    if digit_size in _CACHE:
        return _CACHE[digit_size]
    path = DIGIT_WEIGHTS.get(digit_size)
    if path is not None and path.is_file():
        from safetensors.torch import load_file
        net = LeNet(1, 10)
        net.load_state_dict(load_file(str(path)))
    else:
        log.info("training the identity metric's digit classifier for %d-pixel digits (about a minute)", digit_size)
        net = train_digit_classifier(digit_size)
    _CACHE[digit_size] = net.eval()
    return _CACHE[digit_size]


class I3DFeatures(nn.Module):
    """Clip features for FVD from a local I3D TorchScript file (module docstring).

    The network is called as ``net(x)`` (or ``net(x, rescale=False, resize=False,
    return_features=True)`` when it takes those keywords, as StyleGAN-V's ``i3d_torchscript.pt``
    does) on ``[B, 3, T, 224, 224]`` in ``[-1, 1]``: grayscale clips are repeated to three channels
    and frames resized bilinearly. It must return ``[B, D]`` features (or a tuple whose first item is)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        path = Path(path).expanduser()
        if not path.exists():
            raise MissingPathError(f"{path}: I3D network not found (give a TorchScript .pt file of an I3D network)")
        if not path.is_file():
            raise DataError(f"{path}: the I3D network must be a TorchScript file, not a folder")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)   # torch.jit is deprecated but still loads
                self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:  # torch raises RuntimeError / ValueError flavours
            raise DataError(f"{path}: cannot load as a TorchScript I3D network ({type(exc).__name__}); "
                            "script it once with torch.jit.script and give that file") from None
        self.path = str(path)
        self._styled: bool | None = None

    @torch.no_grad()
    def features(self, clips: Tensor, size: int = 224) -> Tensor:
        """``[B, C, T, H, W]`` clips in ``[-1, 1]`` -> ``float [B, D]``."""
        x = clips.float().clamp(-1, 1)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1, 1)
        b, c, t, h, w = x.shape
        if (h, w) != (size, size):
            x = F.interpolate(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), size=(size, size),
                              mode="bilinear", align_corners=False)
            x = x.reshape(b, t, c, size, size).permute(0, 2, 1, 3, 4)
        if self._styled is not False:
            try:
                out = self.net(x, rescale=False, resize=False, return_features=True)
                self._styled = True
                return _flat(out)
            except (RuntimeError, TypeError):
                if self._styled:
                    raise
                self._styled = False
        return _flat(self.net(x))


def _flat(out) -> Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.reshape(out.shape[0], -1).float()


def _main() -> None:
    """Reproduce the shipped digit classifier from the bundled digits."""
    import argparse

    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("--digit-size", type=int, default=14)
    parser.add_argument("--out", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    digits, labels = bundled_digits(args.digit_size)
    perm = torch.randperm(len(digits), generator=torch.Generator().manual_seed(123))
    test, train = perm[:500], perm[500:]
    net = train_digit_classifier(args.digit_size, digits=digits[train], labels=labels[train], seed=args.seed)
    x, y = training_crops(digits[test], labels[test], 4, seed=1)
    with torch.no_grad():
        acc = float((net(x.float()).argmax(1) == y).float().mean())
    log.info("accuracy on crops of 500 held-out digits (model trained on the other 4,500): %.4f", acc)
    net = train_digit_classifier(args.digit_size, seed=args.seed)
    out = args.out or str(DATA_DIR / f"digit_lenet{args.digit_size}.safetensors")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out,
              metadata={"source": "diffuse.domains.video.features (bundled mnist_5k, all 5000 digits)",
                        "digit_size": str(args.digit_size), "seed": str(args.seed),
                        "heldout_accuracy_4500_model": f"{acc:.4f}"})
    log.info("wrote %s", out)


if __name__ == "__main__":
    _main()
