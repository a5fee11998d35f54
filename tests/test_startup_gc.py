"""The cyclic garbage collector is off during a command's start-up (imports, the network) and
back on, with the start-up's objects frozen, once the network is ready
(:func:`camcli.sysinfo.pause_gc` / :func:`camcli.sysinfo.resume_gc`). Each case runs a fresh
interpreter: the collector's state is process-wide."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _py(body: str) -> list[str]:
    p = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)], capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_pause_then_resume_freezes_what_start_up_made():
    out = _py(
        """
        import gc
        from camcli.sysinfo import pause_gc, resume_gc
        pause_gc()
        print(gc.isenabled())
        junk = [[i] for i in range(1000)]
        resume_gc()
        print(gc.isenabled(), gc.get_freeze_count() > 1000)
        resume_gc()  # idempotent
        print(gc.isenabled())
        """
    )
    assert out == ["False", "True", "True", "True"]


def test_the_pause_ends_by_itself():
    out = _py(
        """
        import gc, time
        from camcli.sysinfo import pause_gc
        pause_gc(at_most_s=0.2)
        print(gc.isenabled())
        time.sleep(1.0)
        print(gc.isenabled(), gc.get_freeze_count() > 0)
        """
    )
    assert out == ["False", "True", "True"]


def test_a_collector_the_user_turned_off_stays_off():
    out = _py(
        """
        import gc
        gc.disable()
        from camcli.sysinfo import pause_gc, resume_gc
        pause_gc()
        resume_gc()
        print(gc.isenabled(), gc.get_freeze_count())
        """
    )
    assert out == ["False", "0"]


def test_console_script_pauses_and_the_session_resumes(cli_ckpt, tmp_path):
    """``camcli`` (entry.run) starts with the collector off; ``open_session`` (predict, cam,
    bbox) turns it back on once the network is loaded."""
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (10, 200, 30)).save(image)
    out = _py(
        f"""
        import gc
        import camcli.cli.run as run_mod
        real = run_mod.open_session
        def spy(*a, **kw):
            print("before", gc.isenabled())
            session = real(*a, **kw)
            print("after", gc.isenabled(), gc.get_freeze_count() > 10000)
            return session
        run_mod.open_session = spy
        import camcli.cli.predict_cmd as p
        p.open_session = spy
        from camcli.cli.entry import run
        run(["predict", {str(image)!r}, "-w", {str(cli_ckpt)!r}, "-q", "-o", "/dev/null",
             "--workers", "0"])
        """
    )
    assert out == ["before", "False", "after", "True", "True"], out


def test_training_resumes_the_collector():
    out = _py(
        """
        import gc
        from camcli.sysinfo import pause_gc
        import camcli.train.loop as loop
        pause_gc()
        try:
            loop.fit(None, [], None, options=None, device=None)
        except Exception:
            pass  # nothing to train: the collector is back on before that is found
        print(gc.isenabled())
        """
    )
    assert out == ["True"]


def test_a_child_forked_during_the_pause_collects():
    """Trial (session 11) W7: ``train --freeze-backbone`` forks its feature-cache workers
    before ``fit`` resumes collection; the timer thread does not come along, so the
    workers ran without a collector for good."""
    out = _py(
        """
        import gc, os
        from camcli.sysinfo import pause_gc
        pause_gc()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, b"1" if gc.isenabled() else b"0")
            os._exit(0)
        os.waitpid(pid, 0)
        print(os.read(r, 1).decode(), gc.isenabled())
        """
    )
    assert out == ["1", "False"]
