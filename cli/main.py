"""``diffuse``: the command line. Thin: parse, call :mod:`diffuse.api`, report.

The commands live by group (``cli.train``, ``cli.sample``, ``cli.evaluate``, ``cli.manage``, ``cli.distill``)
and are added to the ``diffuse`` group here, in one visible place. User mistakes (a
:class:`~diffuse.core.errors.UserInputError` anywhere, or a bad option) are printed as one line
``error: ...`` with exit code 2; anything else is a bug and shows its traceback (``cli.common``).
"""

from __future__ import annotations

import logging
import sys

import click

from .common import LOG_FORMAT, DiffuseGroup
from .distill import distill
from .evaluate import evaluate, optimize_grid
from .demo import demo
from .manage import cache, domains, export_pretrained, save_pretrained
from .sample import edit, inpaint, sample, upscale
from .threads import apply_threads, parse_threads
from .train import reflow, train, train_autoencoder, train_classifier
from .vocode import vocode

__all__ = ["main", "COMMANDS"]


@click.group(cls=DiffuseGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log more (INFO level).")
@click.option("--threads", default=None, metavar="N",
              help="CPU threads for torch (default: $DIFFUSE_THREADS, else $OMP_NUM_THREADS, else one per core).")
@click.version_option(package_name="diffuse")
def main(verbose: bool, threads: str | None) -> None:
    """diffuse: one diffusion framework for images, audio and 3-D molecules.

    \b
      diffuse train --domain image          train on the bundled default data
      diffuse sample --checkpoint runs/image --num 16 --sampler ddim --steps 50
      diffuse evaluate --checkpoint runs/image --num 256
      diffuse domains                        list built-in and plugged-in domains
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=LOG_FORMAT)
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)   # (the handler may exist)
    apply_threads(parse_threads(threads, "--threads"))


#: every command, in the order ``diffuse --help`` lists them
COMMANDS = (domains, train, sample, evaluate, inpaint, edit, upscale, optimize_grid, reflow, distill,
            train_autoencoder, train_classifier, vocode, cache, export_pretrained, save_pretrained, demo)
for _command in COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
