"""The built-in domains (``image``, ``audio``, ``molecules``, ``video``) and what they share.

:data:`PLUGIN_API` names the modules a domain may import when it is written as a third-party
package would write it (the ``video`` domain is, and ``tests/test_video_boundary.py`` holds it to
that): from each, only the names in its ``__all__`` (``diffuse.core``: the lazily loaded plug-in
names), never a name with a leading underscore, never another module of ``diffuse``. Where a
domain needs more, the name is added to one of these for every domain.
"""

#: module -> what a domain from outside takes from it (names in the module's ``__all__``)
PLUGIN_API: dict[str, str] = {
    "diffuse.core": "the plug-in contract (Domain, DomainDataset, Batch, spaces, conditions, Backbone records, "
                    "errors, folder scanning) and the shared Frechet distance",
    "diffuse.api": "the Python API (train, load, sample, evaluate) for scripts and benchmarks; a domain inside "
                   "the package cannot import it (layers import downwards only)",
    "diffuse.domains.layers": "shared network pieces: timestep embedding, GroupNorm group rule, N-d attention",
    "diffuse.domains.image": "the image U-Net and its building blocks, the digit LeNet, the Inception loader, "
                             "the bundled MNIST digits, PNG helpers",
}
