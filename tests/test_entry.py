"""The ``camcli`` program's exit (:mod:`camcli.cli.entry`): after the command, exit handlers
run, the standard streams are flushed and the interpreter's teardown is skipped; the exit code
is the command's. Each case runs a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# An object whose finaliser only runs in the interpreter's teardown (a module global), an
# exit handler, and buffered stdout: what the fast exit must skip, run and flush.
PRELUDE = textwrap.dedent(
    """
    import atexit, sys, threading, time
    class Teardown:
        def __del__(self):
            sys.stderr.write("TEARDOWN\\n"); sys.stderr.flush()
    KEEP = Teardown()
    atexit.register(lambda: sys.stderr.write("ATEXIT\\n"))
    sys.stdout.write("BUFFERED\\n")  # a pipe: block-buffered, not flushed yet
    from camcli.cli.entry import run
    """
)


def _run(body: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CAMCLI_DEBUG"}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_fast_exit_runs_exit_handlers_flushes_and_skips_teardown():
    p = _run("run(['--version'])")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == "BUFFERED"
    assert p.stdout.splitlines()[1].startswith("camcli ")
    assert "ATEXIT" in p.stderr
    assert "TEARDOWN" not in p.stderr  # the interpreter's teardown was skipped


def test_exit_code_of_a_usage_error_is_kept():
    p = _run("run(['cam', '--top-k', '0', 'nothing-here'])")
    assert p.returncode == 2, p.stderr
    assert "TEARDOWN" not in p.stderr
    assert "ATEXIT" in p.stderr
    assert "error:" in p.stderr


def test_debug_keeps_the_normal_exit():
    p = _run("run(['--version'])", {"CAMCLI_DEBUG": "1"})
    assert p.returncode == 0
    assert "TEARDOWN" in p.stderr and "ATEXIT" in p.stderr


def test_a_running_non_daemon_thread_is_waited_for():
    p = _run(
        """
        def late():
            time.sleep(0.5)
            sys.stderr.write("THREAD DONE\\n")
        threading.Thread(target=late).start()
        run(['--version'])
        """
    )
    assert p.returncode == 0
    assert "THREAD DONE" in p.stderr  # normal exit: Python waited for the thread
    assert "TEARDOWN" in p.stderr


def test_forward_streams_are_closed_and_the_exit_stays_fast():
    p = _run(
        """
        from camcli.runs.streams import Streams
        s = Streams(2, 1)
        assert [r for _, r in s.ordered([1, 2, 3], lambda i: i * 2)] == [2, 4, 6]
        run(['--version'])
        """
    )
    assert p.returncode == 0, p.stderr
    assert "TEARDOWN" not in p.stderr  # its idle threads did not force the slow exit


@pytest.mark.parametrize("code, expected", [(None, 0), (3, 3), ("bye", 1)])
def test_exit_codes_as_sys_exit_reads_them(code, expected):
    p = _run(f"from camcli.cli.entry import exit_now\nexit_now({code!r})")
    assert p.returncode == expected
    assert ("bye" in p.stderr) == (code == "bye")
    assert "TEARDOWN" not in p.stderr
