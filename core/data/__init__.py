"""Data: the Domain plug-in contract (``domain``) and its optional capabilities
(``capabilities``), Spaces (``space``, ``graph``), conditions (``condition``), the domain
registry (``registry``), data-file helpers (``datafiles``) and the cache (``cache``). Import
from the modules; this package imports nothing."""
