"""glibc allocator tuning (camcli.sysinfo.tune_allocator): what it changes, when it stays out
of the way, and that the command line applies it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from camcli import sysinfo

GLIBC = sys.platform.startswith("linux") and (
    (getattr(os, "confstr", lambda _: "")("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
)


@pytest.mark.parametrize(
    "env",
    [
        {"CAMCLI_MALLOC": "system"},
        {"CAMCLI_MALLOC": " SYSTEM "},
        {"MALLOC_TRIM_THRESHOLD_": "1000000"},
        {"MALLOC_MMAP_THRESHOLD_": "1000000"},
        {"MALLOC_ARENA_MAX_": "2"},
        {"MALLOC_MMAP_MAX_": "0"},
        {"MALLOC_ARENA_MAX": "2"},
        {"LD_PRELOAD": "/opt/hoard/libhoard.so"},
        {"LD_PRELOAD": "libmimalloc.so.2"},
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
        {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
        {"LD_PRELOAD": "libtcmalloc_minimal.so.4"},
    ],
)
def test_tune_allocator_leaves_a_user_choice_alone(env, monkeypatch):
    import ctypes

    def refuse(*a, **k):  # any libc call would mean the choice was not respected
        raise AssertionError("mallopt called")

    monkeypatch.setattr(ctypes, "CDLL", refuse)
    assert sysinfo.tune_allocator(env) is False


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_tune_allocator_sets_both_thresholds_in_order(monkeypatch):
    import ctypes

    calls = []

    class Libc:
        class mallopt:  # noqa: N801 - stands in for the C function
            argtypes = restype = None

            def __new__(cls, param, value):
                calls.append((param, value))
                return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc)
    assert sysinfo.tune_allocator({}) is True
    # M_MMAP_THRESHOLD (-3) first: the trim threshold alone would pin the mmap one at 128 KiB
    assert calls == [(-3, 32 << 20), (-1, 512 << 20)]


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_unknown_camcli_malloc_value_is_warned_about_and_tuned(monkeypatch, capsys):
    import ctypes

    class Libc:
        class mallopt:  # noqa: N801
            argtypes = restype = None

            def __new__(cls, param, value):
                return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc)
    assert sysinfo.tune_allocator({"CAMCLI_MALLOC": "jemalloc"}) is True
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CAMCLI_MALLOC='jemalloc'" in err[0] and "'system'" in err[0]
    assert sysinfo.tune_allocator({"CAMCLI_MALLOC": "tuned", "MALLOCX": "x"}) is True
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_tune_allocator_refused_value_reports_false(monkeypatch):
    import ctypes

    class Libc:
        class mallopt:  # noqa: N801
            argtypes = restype = None

            def __new__(cls, param, value):
                return 0  # glibc refuses (e.g. an mmap threshold above its maximum)

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc)
    assert sysinfo.tune_allocator({}) is False


_WORKLOAD = textwrap.dedent(
    """
    import resource, sys, threading
    from camcli.sysinfo import tune_allocator
    tuned = tune_allocator({} if sys.argv[1] == "tuned" else {"CAMCLI_MALLOC": "system"})
    import torch
    torch.set_num_threads(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3, 2, 1)
    ).eval()
    def work():
        with torch.inference_mode():
            for _ in range(int(sys.argv[2])):
                net(torch.rand(4, 3, 160, 160)).sum()
    work()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    threads = [threading.Thread(target=work) for _ in range(2)]  # like the forward streams
    [t.start() for t in threads]
    [t.join() for t in threads]
    print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    """
)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_tuned_allocator_reuses_memory_across_forward_threads():
    """Forwards in threads, as the CPU streams run them, reuse the memory of earlier batches:
    50 more forwards per thread add (almost) no page faults. With glibc's defaults on this
    2-core VM each forward faults its activations in again (measured: 28,000 faults after 10
    forwards per thread, 260,000 after 60; tuned: 7,930 and 8,730). The defaults are not
    compared here: where transparent huge pages are always on (a CI machine) they fault far
    less, and an earlier form of this test that needed them 2x worse failed there."""
    faults = {}
    for count in (10, 60):
        out = subprocess.run(
            [sys.executable, "-c", _WORKLOAD, "tuned", str(count)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert out[0] == "True"
        faults[count] = int(out[1])
    # one batch's activations are about 800 pages; re-faulting them every forward would add
    # 80,000 here
    assert faults[60] - faults[10] < 5_000, faults


def test_command_line_tunes_the_allocator_once(monkeypatch):
    from camcli import cli

    seen = []
    monkeypatch.setattr(sysinfo, "tune_allocator", lambda env=None: seen.append(1) or True)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code in (0, None)
    assert seen == [1]


_RELEASE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from camcli import sysinfo

    def rss_mib():
        return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024

    sysinfo.tune_allocator({} if sys.argv[1] == "tuned" else {"CAMCLI_MALLOC": "system"})
    blocks = [np.ones(1 << 20, np.uint8) for _ in range(200)]  # 200 MiB of heap blocks
    keep = np.ones(1 << 10, np.uint8)  # a live block above them: the heap cannot just shrink
    del blocks
    before = rss_mib()
    sysinfo.release_free_memory()
    print(before - rss_mib())
    """
)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc_trim only")
def test_release_free_memory_gives_kept_blocks_back():
    """The tuned allocator keeps freed blocks (up to 512 MiB) for reuse; before a huge image's
    largest arrays camcli gives them back (issue 17: 110 MiB less at the peak of bbox on a
    13000 x 13000 PNG). Untuned, glibc has already returned them and nothing is done."""
    freed = {}
    for mode in ("tuned", "system"):
        out = subprocess.run(
            [sys.executable, "-c", _RELEASE, mode], capture_output=True, text=True, check=True
        )
        freed[mode] = int(out.stdout.strip())
    assert freed["tuned"] > 150, freed
    assert abs(freed["system"]) < 20, freed
