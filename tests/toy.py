"""Helpers shared by the trainer / CLI tests: the README's toy 2-D points domain."""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def points_domain():
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    from points2d import PointsDomain
    from diffuse.core.data.registry import register_domain

    register_domain(PointsDomain)
    return PointsDomain
