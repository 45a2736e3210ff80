"""Shared test helpers: the tiny image U-Net and a 2-step CLI training run with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TINY_UNET = {"base_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_levels": [1], "groups": 4,
             "head_dim": 8}


def train_tiny_image(root: Path, name: str, extra: list[str], model: dict[str, Any] | None = None) -> Path:
    """``diffuse train --domain image`` for 2 steps with the tiny U-Net (or ``model``) into ``root/name``."""
    from click.testing import CliRunner

    from diffuse.cli.main import main

    cfg = root / f"{name}.json"
    cfg.write_text(json.dumps({"model": model or TINY_UNET, "train": {"final_eval": False}}))
    out = root / name
    res = CliRunner().invoke(main, ["train", "--domain", "image", "--config", str(cfg), "--steps", "2",
                                    "--batch-size", "8", "--no-progress", "--device", "cpu",
                                    "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    return out
