"""Feature networks for FID / KID and the conditional-accuracy classifier.

* :class:`LeNet`: a small LeNet-style CNN (LeCun et al. 1998, with ReLU, max-pooling and an
  adaptive pool so any image size works). FID on MNIST-like data is customarily computed on such a
  classifier's penultimate layer rather than on ImageNet's Inception network. The framework
  trains it itself:

  - for the bundled MNIST subset its weights ship in ``data/lenet_mnist5k.safetensors``;
    reproduce them with ``python -m diffuse.domains.image.features`` (seeded, about a minute);
  - for other data with class labels it is trained on the fly on the reference images
    (a few seconds for a few thousand small images);
  - for data without labels it is trained on a self-supervised pretext task, predicting which
    of four rotations (0, 90, 180, 270 degrees) was applied (Gidaris et al. 2018, "Unsupervised
    representation learning by predicting image rotations"); its features still separate
    realistic images from noise or blur, but FIDs are only comparable within one data set.

* :class:`InceptionFeatures`: Inception-v3 pool features (2048-d, Heusel et al. 2017) from a
  local file given by the user: a TorchScript archive (e.g. the FID Inception network used by
  StyleGAN / clean-fid, called as ``model(x_uint8_range, return_features=True)``), any
  TorchScript module returning ``[B, D]`` features, or a ``torch.export`` program (``.pt2``) taking
  ``[B, 3, 299, 299]``. A bare state dict is not enough (it needs torchvision's Inception-v3 class,
  which is not a dependency): script or export the network once where torchvision is installed.
  Nothing is downloaded.

Images enter every feature network in model space (``[-1, 1]``, ``[B, C, H, W]``).
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...core.training.fit import epoch_batches, fit

__all__ = ["LeNet", "train_lenet", "bundled_lenet", "InceptionFeatures", "BUNDLED_WEIGHTS", "extract_features"]

log = logging.getLogger(__name__)
BUNDLED_WEIGHTS = Path(__file__).resolve().parent / "data" / "lenet_mnist5k.safetensors"


class LeNet(nn.Module):
    """``conv3x3(32) -> pool -> conv3x3(64) -> pool -> adaptive-avg(4x4) -> fc(feature_dim) -> fc(classes)``.

    :meth:`features` returns the ``feature_dim`` penultimate activations (after ReLU) used for FID/KID;
    ``forward`` returns class logits.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, feature_dim: int = 128) -> None:
        super().__init__()
        self.in_channels, self.num_classes, self.feature_dim = in_channels, num_classes, feature_dim
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 16, feature_dim)
        self.fc2 = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.adaptive_avg_pool2d(h, 4).flatten(1)
        return F.relu(self.fc1(h))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.features(x))

    def config(self) -> dict[str, int]:
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "feature_dim": self.feature_dim}


def _rotate_batch(x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Rotate each image by a random multiple of 90 degrees; the multiple is the label."""
    k = torch.randint(0, 4, (x.shape[0],), generator=generator)
    if x.shape[-1] != x.shape[-2]:  # non-square: 0 / 180 degrees only, keeps the shape
        k = k % 2 * 2
    out = torch.stack([torch.rot90(img, int(r), dims=(-2, -1)) for img, r in zip(x, k)])
    return out, k


def train_lenet(images: Tensor, labels: Tensor | None, num_classes: int | None = None, steps: int | None = 300,
                epochs: int | None = None, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                max_images: int = 20000) -> LeNet:
    """Train a :class:`LeNet` on ``images`` (``uint8 [N, C, H, W]`` or float in ``[-1, 1]``).

    With ``labels`` it is a classifier of the ``num_classes`` classes; without, it learns to predict
    rotations (4 classes). Cross-entropy, Adam with a one-cycle learning rate (15 % warm-up), a
    fresh permutation of the images every epoch, random shifts of up to 2 pixels; seeded
    (:func:`~diffuse.core.training.fit.fit`). Runs ``steps`` optimizer steps, or ``epochs`` passes
    over the data when given.
    """
    g = torch.Generator().manual_seed(seed)
    x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()
    if len(x) > max_images:
        keep = torch.randperm(len(x), generator=g)[:max_images]
        x = x[keep]
        labels = None if labels is None else labels[keep]
    rotations = labels is None
    n_cls = 4 if rotations else int(num_classes or int(labels.max()) + 1)
    torch.manual_seed(seed)
    net = LeNet(x.shape[1], n_cls)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    if epochs is not None:
        steps = epochs * math.ceil(len(x) / batch_size)
    steps = max(1, int(steps or 1))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)

    def loss(model: LeNet, idx: Tensor) -> Tensor:
        xb = x[idx]
        if rotations:
            xb, yb = _rotate_batch(xb, g)
        else:
            yb = labels[idx].long()
        # random shifts of up to 2 pixels (padding with the background value -1)
        dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
        xb = torch.roll(F.pad(xb, (2, 2, 2, 2), value=-1.0), (dy, dx), dims=(-2, -1))[..., 2:-2, 2:-2]
        return F.cross_entropy(model(xb), yb)

    last = fit(net, loss, epoch_batches(len(x), batch_size, g), steps, opt, sched)
    log.info("trained a LeNet feature network (%s, %d images, %d steps, last loss %.3f)",
             "rotation pretext" if rotations else f"{n_cls} classes", len(x), steps, last)
    return net


def bundled_lenet() -> LeNet:
    """The LeNet trained on the bundled MNIST subset (weights shipped with the package)."""
    from safetensors.torch import load_file
    state = load_file(str(BUNDLED_WEIGHTS))
    net = LeNet(1, 10)
    net.load_state_dict(state)
    return net.eval()


class InceptionFeatures(nn.Module):
    """Inception-v3 features from a local TorchScript file (no download, no torchvision).

    The module is called as ``net(x, return_features=True)`` when it accepts that keyword (the
    StyleGAN / clean-fid FID network, which takes pixel values in ``[0, 255]`` at any size and
    resizes to 299 itself), else as ``net(x)`` on ``[-1, 1]`` input resized to 299x299. Grayscale
    images are repeated to three channels.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        from ...core.errors import DataError
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: Inception weights not found (expected a TorchScript .pt file)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still loads
                if path.suffix == ".pt2":
                    self.net = torch.export.load(str(path)).module()
                else:
                    self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:  # torch raises RuntimeError / ValueError flavours
            raise DataError(f"{path}: cannot load as TorchScript or torch.export (.pt2) ({type(exc).__name__}); "
                            f"export the Inception network with torch.jit.script or torch.export and give that file") from None
        self.path = str(path)
        self._styled = None

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if self._styled is not False:
            try:
                out = self.net((x.clamp(-1, 1) + 1) * 127.5, return_features=True)
                self._styled = True
                return out.flatten(1).float()
            except (RuntimeError, TypeError):
                if self._styled:
                    raise
                self._styled = False
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        out = self.net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.flatten(1).float()


@torch.no_grad()
def extract_features(net: Any, images: Tensor, batch_size: int = 256) -> Tensor:
    """Features of ``images`` (float ``[-1, 1]`` or uint8), in batches, as float64 ``[N, D]``."""
    outs = []
    for i in range(0, len(images), batch_size):
        xb = images[i:i + batch_size]
        xb = xb.float() / 127.5 - 1.0 if xb.dtype == torch.uint8 else xb.float().clamp(-1, 1)
        outs.append(net.features(xb).double())
    return torch.cat(outs) if outs else torch.zeros(0, 0, dtype=torch.float64)


def _main() -> None:
    """Reproduce the shipped LeNet weights from the bundled data."""
    import argparse

    from safetensors.torch import save_file

    from .data import load_bundled

    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("--out", default=str(BUNDLED_WEIGHTS))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    arr, lab = load_bundled()
    images = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(lab)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(123))
    test, train = perm[:500], perm[500:]
    net = train_lenet(images[train], labels[train], 10, epochs=args.epochs, batch_size=128, seed=args.seed)
    with torch.no_grad():
        acc = (net(images[test].float() / 127.5 - 1).argmax(1) == labels[test]).float().mean()
    log.info("held-out accuracy of the 4,500-image model: %.4f", float(acc))
    net = train_lenet(images, labels, 10, epochs=args.epochs, batch_size=128, seed=args.seed)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, args.out,
              metadata={"source": "diffuse.domains.image.features (bundled mnist_5k, all 5000 images)",
                        "epochs": str(args.epochs), "seed": str(args.seed),
                        "heldout_accuracy_4500_model": f"{float(acc):.4f}"})
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    _main()
