"""The ``diffuse`` command line (:mod:`diffuse.cli.main`).

Importing this package sets the CLI's OpenMP wait policy (:mod:`diffuse.cli.threads`): it must
happen before torch is imported, which :mod:`diffuse.cli.main` does, and this package is
always imported first.
"""

from .threads import configure as _configure

_configure()
