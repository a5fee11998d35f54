"""The camcli command line (Typer). Thin: parses, checks flags, calls camcli.api, prints.

torch is imported only inside commands, so `camcli --help` and completion stay fast.
"""

from __future__ import annotations

import errno
import os
import sys
import warnings
from typing import Annotated, NoReturn

import typer

from camcli import __version__
from camcli.console import error
from camcli.errors import CamcliError, Exit, Terminated, UsageError

app = typer.Typer(
    name="camcli",
    help="Class activation maps (Zhou et al., CVPR 2016) and weakly-supervised boxes for "
    "folders of images.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"camcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """Class activation maps and weakly-supervised boxes from GAP networks."""


def _plain_help_types() -> None:
    """Help without typer's type column where it says nothing: no ``<bool>`` beside a flag,
    ``<str>`` rather than ``<list[str]>`` for a repeatable option or the INPUTS argument."""
    try:
        from typer.core import TyperArgument, TyperOption
    except ImportError:  # pragma: no cover - other typer versions
        return
    for cls in (TyperArgument, TyperOption):
        shown_type = getattr(cls, "display_type_rich", None)
        if shown_type is None or getattr(shown_type, "_camcli", False):
            continue

        def display_type_rich(self, ctx, _shown=shown_type):
            if getattr(self, "is_flag", False) and getattr(self, "metavar", None) is None:
                return None
            text = _shown(self, ctx)
            if isinstance(text, str) and text.startswith("<list[") and "]>" in text:
                text = "<" + text[len("<list[") :].replace("]>", ">", 1)
            return text

        display_type_rich._camcli = True  # type: ignore[attr-defined]
        cls.display_type_rich = display_type_rich


_plain_help_types()


def _register() -> None:
    from camcli.cli import (
        bbox_cmd,
        cam_cmd,
        eval_cmd,
        merge_cmd,
        models_cmd,
        predict_cmd,
        report_cmd,
        train_cmd,
    )

    for m in (
        models_cmd,
        predict_cmd,
        cam_cmd,
        bbox_cmd,
        eval_cmd,
        train_cmd,
        merge_cmd,
        report_cmd,
    ):
        m.register(app)


_register()


# errno values of a failed write: disk full, quota, file too large, read-only file system
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def _exit_for(exc: BaseException) -> int:
    """The exit code of an exception that ended a command: a domain error carries its own
    (:mod:`camcli.errors`); anything else is an unexpected failure (1)."""
    return exc.exit_code if isinstance(exc, CamcliError) else Exit.SOME_FAILED


_SIGTERM_SEEN = [False]


def _on_sigterm(signum, frame) -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the clean-up it starts is not cut short
    _SIGTERM_SEEN[0] = True
    raise Terminated()


def _terminated(exc: BaseException | None) -> bool:
    if _SIGTERM_SEEN[0]:
        return True
    while exc is not None:
        if isinstance(exc, Terminated):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _interrupted(exc: BaseException) -> NoReturn:
    if _terminated(exc):
        error("terminated (SIGTERM)")
        sys.exit(Exit.TERMINATED)
    error("interrupted")
    sys.exit(Exit.INTERRUPTED)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one-line errors, exit codes; CAMCLI_DEBUG=1 adds the
    traceback (same exit code).

    SIGTERM is handled as Ctrl-C (:class:`camcli.errors.Terminated`), exit 143. glibc's
    allocator is tuned to keep freed memory for reuse (:func:`camcli.sysinfo.tune_allocator`;
    ``CAMCLI_MALLOC=system`` keeps its defaults)."""
    import signal
    import threading

    from camcli.sysinfo import tune_allocator

    tune_allocator()
    prev = None
    _SIGTERM_SEEN[0] = False
    if threading.current_thread() is threading.main_thread():
        prev = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _main(argv)
    finally:
        if prev is not None:
            signal.signal(signal.SIGTERM, prev)


def _wide_help_when_piped(argv: list[str] | None) -> None:
    """Help piped to a file or pager is 110 columns wide: rich's 80 cut the longest option
    names ("--tight-loose-heurist…"). ``TERMINAL_WIDTH`` or ``COLUMNS`` set by the user win;
    nothing is imported unless help is asked for (typer's help formatter costs 90 ms)."""
    args = sys.argv[1:] if argv is None else argv
    if args and not {"-h", "--help"} & set(args):
        return
    if {"TERMINAL_WIDTH", "COLUMNS"} & os.environ.keys() or sys.stdout.isatty():
        return
    import typer.rich_utils

    if typer.rich_utils.MAX_WIDTH is None:
        typer.rich_utils.MAX_WIDTH = 110


def _main(argv: list[str] | None) -> None:
    debug = os.environ.get("CAMCLI_DEBUG") == "1"
    _wide_help_when_piped(argv)
    try:
        with warnings.catch_warnings():
            if not debug:
                # numpy's RuntimeWarning family (ComplexWarning, invalid value, overflow):
                # camcli reports what matters as one-line errors; the rest is noise.
                warnings.simplefilter("ignore", RuntimeWarning)
            # "camcli" in usage and error lines also under `python -m camcli` (click would
            # name the program after how Python was started), as camcli's own errors say
            rv = app(args=argv, prog_name="camcli", standalone_mode=False)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort as exc:
        _interrupted(exc)
    except BrokenPipeError:
        _exit_stdout_closed()
    except SystemExit as exc:
        # click (after wrapping the streams) and rich (help: Console.on_broken_pipe) turn a
        # broken pipe into exit 1
        if exc.code == 1 and (
            type(sys.stdout).__name__ == "PacifyFlushWrapper"
            or isinstance(exc.__context__, BrokenPipeError)
        ):
            _exit_stdout_closed()
        raise
    except Exception as exc:  # noqa: BLE001
        if _SIGTERM_SEEN[0]:  # e.g. DataLoader workers killed by the same SIGTERM first
            _interrupted(exc)
        _exit_on_usage_error(exc, argv)
        if debug:  # the traceback, then the one line and the documented exit code
            import traceback

            traceback.print_exc()
        _exit_on_error(exc, argv)
    if rv == Exit.INTERRUPTED:  # typer turns a KeyboardInterrupt into a returned 130
        _interrupted(Terminated() if _terminated(None) else KeyboardInterrupt())
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _exit_stdout_closed()
    sys.exit(rv if isinstance(rv, int) else 0)


def _exit_stdout_closed() -> NoReturn:
    """The reader of stdout went away (``camcli ... | head``): exit 0 quietly, as Unix tools
    do, with no error line and no "Exception ignored" when Python flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    sys.exit(Exit.OK)


def _exit_on_usage_error(exc: Exception, argv: list[str] | None = None) -> None:
    """A click usage error: its message and exit 2; anything else returns."""
    try:
        from typer._click.exceptions import ClickException
    except ImportError:  # typer versions that depend on click
        from click.exceptions import ClickException

    if isinstance(exc, ClickException):
        # one line, as every camcli error: the message and where the help is
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else _command_path(argv)
        text = " ".join(exc.format_message().replace("Value error, ", "").split())
        if text:  # none: the help was shown (no arguments at all)
            error(f"{text.rstrip('.')} (see '{where} -h')")
        sys.exit(Exit.USAGE)


def _command_path(argv: list[str] | None) -> str:
    """``camcli COMMAND`` of ``argv`` (``camcli`` when it names none): where the help of an
    error without click's context (a missing option value) is."""
    import typer.main

    args = sys.argv[1:] if argv is None else argv
    first = next((a for a in args if not a.startswith("-")), None)
    commands = getattr(typer.main.get_command(app), "commands", {})
    return f"camcli {first}" if first in commands else "camcli"


def _exit_on_error(exc: Exception, argv: list[str] | None = None) -> NoReturn:
    """One error line and the exit code of ``exc`` (a full disk etc.: the write error's); a
    :class:`camcli.errors.UsageError` names where the command's help is."""
    if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
        from camcli.errors import write_error

        werr = write_error(exc, exc.filename or "the output", resumable=False)
        error(str(werr))
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - no second failure at exit
        sys.exit(werr.code)
    code = _exit_for(exc)
    text = str(exc).strip()
    # camcli's own messages are one line: a line break in them comes from a file name or label
    # and is shown escaped; another library's message is cut to its first line
    msg = text if isinstance(exc, CamcliError) else text.split("\n")[0]
    msg = msg or type(exc).__name__
    if code == 1 and not isinstance(exc, CamcliError):
        hint = (
            ""
            if os.environ.get("CAMCLI_DEBUG") == "1"
            else " (set CAMCLI_DEBUG=1 for the traceback)"
        )
        msg = f"{type(exc).__name__}: {msg}{hint}"
    elif isinstance(exc, UsageError):
        msg = f"{msg.rstrip('.')} (see '{_command_path(argv)} -h')"
    error(msg)
    sys.exit(code)
