"""The ``camcli`` program (console script and ``python -m camcli``): :func:`camcli.cli.main`,
then an exit that skips the interpreter's teardown.

Once a command has finished, its files are complete and closed, stdout and stderr are flushed
and Python's exit handlers (``atexit``: multiprocessing's worker clean-up, temporary folders,
logging) have run, nothing is left for the process to do. CPython would still tear down every
module, and with torch and the torchvision it imports (``torch._dynamo``, sympy) that takes
0.7-0.9 s on the 2-core CI machine, about a tenth of a ``cam`` run over 256 photos, and a
window in which Ctrl-C prints nothing. :func:`run` ends the process with ``os._exit`` instead,
with the command's exit code.

The normal exit is kept when a thread that Python would wait for is still running (a
non-daemon thread: camcli joins its writers before returning and closes its forward streams,
:func:`camcli.runs.streams.close_all`, here), and with ``CAMCLI_DEBUG=1`` (leak
hunting, tracebacks at exit). :func:`camcli.cli.main` itself returns or raises as before, so
that tests and callers embedding it keep their interpreter.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

__all__ = ["run"]


def run(argv: list[str] | None = None) -> NoReturn:
    """Run the command of ``argv`` (default ``sys.argv[1:]``) and end the process with its
    exit code (module doc). Never returns."""
    from camcli.sysinfo import pause_gc

    pause_gc()  # start-up: no cyclic collections while torch and the network are loaded
    from camcli.cli import main

    try:
        main(argv)
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    exit_now(code)


def exit_now(code: object) -> NoReturn:
    """End the process with ``code`` as ``sys.exit`` would interpret it (None: 0; an int; any
    other value printed to stderr: 1), after flushing the standard streams and running the
    ``atexit`` handlers, without the interpreter's teardown (module doc). Falls back to
    ``sys.exit`` when a non-daemon thread is alive or ``CAMCLI_DEBUG=1``."""
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    from camcli.runs.streams import close_all

    close_all()  # a session's idle forward threads (non-daemon)
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if others or os.environ.get("CAMCLI_DEBUG") == "1":
        sys.exit(code)
    _flush_std()
    atexit._run_exitfuncs()  # what Python runs at exit before its teardown
    _flush_std()
    os._exit(code & 0xFF)


def _flush_std() -> None:
    """Flush stdout and stderr; a reader that went away (``| head``) is not an error here
    (the command already reported what it had to)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
