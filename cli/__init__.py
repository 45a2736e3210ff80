"""The ``diffuse`` command line (:mod:`diffuse.cli.main`).

Importing this package sets the CLI's OpenMP wait policy (:mod:`diffuse.cli.threads`): it must
happen before torch is imported, which :mod:`diffuse.cli.main` does, and this package is
always imported first. Started as the ``diffuse`` command (or ``python -m diffuse.cli``), it
also makes Ctrl-C and SIGTERM during the start-up (seconds of imports) end the process with one
line instead of a traceback; the command's own handling takes over when it starts
(``cli.common.DiffuseGroup``).
"""

import os as _os
import signal as _signal
import sys as _sys
import threading as _threading

from .threads import configure as _configure

_configure()


def _quiet_startup_handler(signum, frame):  # pragma: no cover - exercised through subprocesses
    name = "Ctrl-C" if signum == _signal.SIGINT else _signal.Signals(signum).name
    _os.write(2, f"error: interrupted by {name} while starting; nothing was done\n".encode())
    _os._exit(128 + signum)


def _as_command() -> bool:
    argv0 = _sys.argv[0] if _sys.argv else ""
    return argv0 == "-m" or _os.path.basename(argv0) in ("diffuse", "diffuse.exe")


if _as_command() and _threading.current_thread() is _threading.main_thread():
    for _sig in (_signal.SIGINT, _signal.SIGTERM):
        if _signal.getsignal(_sig) in (_signal.default_int_handler, _signal.SIG_DFL):
            _signal.signal(_sig, _quiet_startup_handler)
