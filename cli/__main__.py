"""``python -m diffuse.cli``: the ``diffuse`` command (what ``torchrun -m diffuse.cli`` and
``diffuse train --nproc N`` start in every process)."""

import sys

from .main import main

if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses
    sys.exit(main())
