"""A complete toy domain: 2-D point clouds (the "adding a domain" guide in the README).

Each sample is one point in the plane, drawn from a CSV file of ``x,y`` rows or, by default,
from a ring of eight Gaussians. The backbone is a small MLP; the metric is the energy
distance to reference points; the writer saves a CSV. The methods about a data set read its
``data_info`` (here ``{"dim": 2}``) as ``self.info``: core calls them on a domain bound to it. Register it from your package's
``pyproject.toml``::

    [project.entry-points."diffuse.domains"]
    points2d = "points2d:PointsDomain"

and ``diffuse train --domain points2d`` works.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffuse.core import Batch, DataError, DenseSpace, Domain, DomainDataset
from diffuse.core.process.gaussian import energy_distance


def ring_of_gaussians(n: int = 2048, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k.float() * (2 * math.pi / 8)
    centres = torch.stack([torch.cos(angle), torch.sin(angle)], 1) * 2.0
    return centres + 0.15 * torch.randn(n, 2, generator=g)


class PointsDataset(DomainDataset):
    def __init__(self, points: torch.Tensor) -> None:
        self.points = points.float()

    def __len__(self) -> int:
        return len(self.points)

    def info(self) -> dict[str, Any]:
        return {"dim": 2}

    def batch(self, indices, generator=None) -> Batch:
        return Batch(self.points[indices], DenseSpace())


class MLP(nn.Module):
    """eps-network: MLP on [x, sinusoidal(noise level)]."""

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(dim + 32, width), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, dim))
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(16) / 16))

    def forward(self, x, noise_level, cond=None, space=None):
        arg = noise_level[:, None] * self.freqs[None]
        return self.net(torch.cat([x, torch.sin(arg), torch.cos(arg)], 1))


class PointsDomain(Domain):
    name = "points2d"
    description = "Toy 2-D point clouds (a CSV of x,y rows; default: a ring of 8 Gaussians)"

    def default_model(self):
        return {"width": 128, "depth": 3}

    def default_train(self):
        return {"steps": 300, "batch_size": 256, "lr": 1e-3, "warmup_steps": 20, "eval_samples": 512,
                "ema_decay": 0.99}

    def load_data(self, path, options):
        if path is None:
            return PointsDataset(ring_of_gaussians())
        rows = []
        with open(path, newline="") as fh:
            for i, row in enumerate(csv.reader(fh), 1):
                try:
                    rows.append([float(row[0]), float(row[1])])
                except (ValueError, IndexError):
                    raise DataError(f"{path}, line {i}: expected two numbers 'x,y', got {row!r}") from None
        if not rows:
            raise DataError(f"{path} holds no points; expected CSV rows 'x,y'")
        return PointsDataset(torch.tensor(rows))

    def build_backbone(self, model):
        return MLP(self.info.get("dim", 2), **model)

    def template(self, num, generator=None, structure=None):
        return Batch(torch.zeros(num, self.info.get("dim", 2)), DenseSpace())

    def metrics(self, samples, reference):
        ref = reference.batch(torch.arange(len(reference))).x
        return {"energy_distance": energy_distance(samples.x, ref)}

    def write(self, samples, out_dir):
        path = Path(out_dir) / "points.csv"
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows(samples.x.tolist())
        return [path]
