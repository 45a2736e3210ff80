"""``torch.compile`` of each domain's backbone: one graph reused across batch sizes (atom counts
for molecules) and sampling steps, with no recompilation (dynamo's counters). Dynamo only (the
``eager`` backend): what recompiles is decided while tracing, and inductor's code generation would
take minutes on 2 CPU cores (the slow end-to-end check is ``test_compile_trains_like_eager``)."""

from __future__ import annotations

import pytest
import torch

import diffuse.api as api
from tiny import TINY_UNET

dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.utils import counters  # noqa: E402

#: the smallest network of each domain's default backbone, with the shipped model's data layout
TINY = {
    "image": TINY_UNET,
    "audio": {"channels": [8, 16], "factors": [4], "num_res_blocks": 1, "dilations": [1], "attn_levels": [-1],
              "heads": 2},
    "molecules": {"hidden": 16, "layers": 2},
}


def _recompiles() -> int:
    return sum(counters["recompiles"].values()) if "recompiles" in counters else 0


@pytest.mark.parametrize("domain", sorted(TINY))
def test_a_compiled_backbone_does_not_recompile(domain):
    shipped = api.from_pretrained(domain, device="cpu")
    model = api.build(domain, shipped.data_info, model=TINY[domain], diffusion=shipped.config.diffusion, device="cpu")
    eager = [model.sample(n, sampler="ddim", steps=s, seed=0, batch_size=n).x for n, s in ((2, 3), (3, 2))]
    dynamo.reset()
    counters.clear()
    model.denoiser.backbone.compile(backend="eager", dynamic=True)
    compiled = []
    for num, steps in ((2, 3), (3, 2), (5, 4)):          # batch sizes (and atom counts) and time grids change
        compiled.append(model.sample(num, sampler="ddim", steps=steps, seed=0, batch_size=num).x)
        assert _recompiles() == 0, dict(counters["recompiles"])
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    # graph breaks: none in the U-Nets; the EGNN's data-dependent shapes (atoms per molecule) break
    # its graph at a few fixed places, still without recompiling
    breaks = sum(counters["graph_break"].values())
    assert breaks == 0 if domain != "molecules" else breaks <= 8, dict(counters["graph_break"])
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)   # the same function
    dynamo.reset()
