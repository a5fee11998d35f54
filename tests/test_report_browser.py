"""`camcli report` in a real headless browser (Chromium from the system packages).

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages ending in NUL on file descriptors 3 and 4), so no driver or Python package is needed.
Skipped, with the reason, where no Chromium can be found or started (``.ci/run`` installs it
where it can). The browser is found on PATH (chromium, chromium-browser, google-chrome) or
given by ``CAMCLI_CHROMIUM``. The screenshot goes to ``$CAMCLI_ARTIFACTS`` (else the test's
temporary folder); its path is printed.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from report_fixture import EVIL_LABEL, EVIL_NAME, EXPECT, FAILED, H, W, build_run

pytestmark = pytest.mark.browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    env = os.environ.get("CAMCLI_CHROMIUM")
    if env:
        return env
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """Headless Chromium and one page, over the DevTools protocol on a pipe."""

    def __init__(self, exe: str, profile: Path, size=(1400, 1100)) -> None:
        to_r, to_w = os.pipe()  # we write, Chromium reads (its fd 3)
        from_r, from_w = os.pipe()  # Chromium writes (its fd 4), we read
        # inheritable copies at 10 or above, so the dup2 onto 3 and 4 in the child cannot
        # clobber one another
        child_r = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10)
        child_w = fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)

        def fds() -> None:
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        args = [
            exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--remote-debugging-pipe", f"--user-data-dir={profile}", "--no-first-run",
            "--no-default-browser-check", "--allow-file-access-from-files",
            f"--window-size={size[0]},{size[1]}", "about:blank",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args,
            preexec_fn=fds,
            close_fds=False,  # the pipes' other ends are close-on-exec
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for fd in (to_r, from_w, child_r, child_w):
            os.close(fd)
        self.w = os.fdopen(to_w, "wb", buffering=0)
        self.r = os.fdopen(from_r, "rb", buffering=0)
        self.next_id = 0
        self.replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self.cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.session = None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def _read(self) -> None:
        buf = b""
        while True:
            chunk = self.r.read(65536)
            if not chunk:
                with self.cv:
                    self.cv.notify_all()
                return
            buf += chunk
            *msgs, buf = buf.split(b"\0")
            with self.cv:
                for m in msgs:
                    msg = json.loads(m)
                    if "id" in msg:
                        self.replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                self.cv.notify_all()

    def send(self, method: str, timeout: float = 20, **params) -> dict:
        self.next_id += 1
        n = self.next_id
        msg = {"id": n, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        self.w.write(json.dumps(msg).encode() + b"\0")
        with self.cv:
            if not self.cv.wait_for(lambda: n in self.replies, timeout):
                raise TimeoutError(f"no reply to {method} in {timeout} s")
            reply = self.replies.pop(n)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def open(self, path: Path) -> None:
        """Load a page and wait for the report's script to have drawn it; console messages
        of earlier pages are forgotten."""
        with self.cv:
            self.events.clear()
        self.send("Page.navigate", url=path.as_uri())
        self.wait("document.body && document.body.dataset.ready === '1'")

    def js(self, expr: str):
        """Value of a JavaScript expression in the page (awaited if a promise)."""
        res = self.send("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"{expr}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait(self, expr: str, timeout: float = 10):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            v = self.js(expr)
            if v:
                return v
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expr}")

    def click(self, selector: str) -> None:
        sel = json.dumps(selector)
        expr = f"(() => {{ const e = document.querySelector({sel}); if (!e) return false; "
        assert self.js(expr + "e.click(); return true; })()"), selector

    def select(self, selector: str, value: str) -> None:
        """Choose ``value`` in a <select> as a user would (a change event follows)."""
        args = f"{json.dumps(selector)}, {json.dumps(value)}"
        assert self.js(
            f"((sel, v) => {{ const s = document.querySelector(sel); s.value = v; "
            f"s.dispatchEvent(new Event('change')); return s.value === v; }})({args})"
        ), (selector, value)

    def console_errors(self) -> list[str]:
        out = []
        with self.cv:
            events = list(self.events)
        for ev in events:
            p = ev.get("params", {})
            if ev["method"] == "Runtime.exceptionThrown":
                out.append(json.dumps(p["exceptionDetails"])[:300])
            elif ev["method"] == "Runtime.consoleAPICalled" and p.get("type") in (
                "error",
                "assert",
            ):
                out.append(json.dumps(p.get("args"))[:300])
            elif ev["method"] == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        path.write_bytes(base64.b64decode(data["data"]))

    def close(self) -> None:
        with contextlib.suppress(OSError, TimeoutError, RuntimeError):
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.w.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = find_browser()
    if exe is None:
        pytest.skip(
            "no Chromium found (apt-get install chromium, or set CAMCLI_CHROMIUM to a "
            "Chromium/Chrome binary); .ci/run installs it when it runs as root with apt-get"
        )
    try:
        b = Chromium(exe, tmp_path_factory.mktemp("chromium-profile"))
    except (OSError, TimeoutError, RuntimeError) as exc:
        pytest.skip(f"{exe} does not start headless: {exc}")
    yield b
    b.close()


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    from camcli.cli import main

    root = tmp_path_factory.mktemp("report-run")
    run = build_run(root)
    out = root / "report"
    with pytest.raises(SystemExit) as ex:
        main([
            "report", str(run["cams"]), str(run["boxes"]), str(run["eval"]),
            "--gt", str(run["gt"]), "--out", str(out), "--quiet",
        ])  # fmt: skip
    assert ex.value.code == 0
    return out / "index.html"


def names(b: Chromium) -> list[str]:
    """File names of the rows shown, top to bottom."""
    return b.js("[...document.querySelectorAll('#tbody tr.row .name')].map(e => e.textContent)")


def stem(path: str) -> str:
    return "evil" if path.endswith(EVIL_NAME) else Path(path).stem


def test_report_in_browser(browser, report_page, tmp_path):
    b = browser
    b.open(report_page)

    # every image is a row, in input order; the failed one says so
    shown = [stem(n) for n in names(b)]
    assert shown == [*EXPECT, FAILED]
    assert b.js("document.getElementById('page-info').textContent").endswith("7 of 7 images")

    # sorting by IoU (lowest first, images without IoU last), then reversed
    b.click("button.sort[data-key=iou]")
    by_iou = sorted(EXPECT, key=lambda s: (EXPECT[s][3], list(EXPECT).index(s)))
    assert [stem(n) for n in names(b)] == [*by_iou, FAILED]
    ious = b.js("[...document.querySelectorAll('#tbody td.iou')].map(e => e.firstChild ? "
                "e.firstChild.textContent : '')")  # fmt: skip
    assert ious == [f"{EXPECT[s][3]:.3f}" for s in by_iou] + [""]
    b.click("button.sort[data-key=iou]")
    desc = sorted(EXPECT, key=lambda s: (-EXPECT[s][3], list(EXPECT).index(s)))
    assert [stem(n) for n in names(b)] == [*desc, FAILED]
    # by top-1 score (highest first, then reversed), by error (failed, wrong class, missed)
    b.click("button.sort[data-key=score]")
    assert [stem(n) for n in names(b)] == [*EXPECT, FAILED]  # the fixture's scores fall
    b.click("button.sort[data-key=score]")
    assert [stem(n) for n in names(b)] == [*reversed(EXPECT), FAILED]
    b.click("button.sort[data-key=error]")
    assert [stem(n) for n in names(b)] == [FAILED, "wrong", "missed", "nobox", "good", "evil",
                                           "html"]  # fmt: skip
    b.click("button.sort[data-key=order]")

    # filters: box missed, wrong class, failed to decode
    b.click("#f-missed")
    assert [stem(n) for n in names(b)] == [s for s in EXPECT if EXPECT[s][5]]
    b.click("#f-missed")
    b.click("#f-wrong")
    assert [stem(n) for n in names(b)] == ["wrong"]
    b.click("#f-wrong")
    b.click("#f-failed")
    assert [stem(n) for n in names(b)] == [FAILED]
    b.click("#f-failed")
    # class filter by the HTML-holding label: an option whose text is that label
    b.select("#f-class", EVIL_LABEL)
    assert [stem(n) for n in names(b)] == ["html"]
    b.select("#f-class", "")
    assert len(names(b)) == 7

    # user strings are text: the names and labels read back literally, nothing ran or was made
    assert b.js("window.pwned === undefined")
    assert any(n.endswith(EVIL_NAME) for n in names(b))
    assert EVIL_LABEL + " (0.500)" in b.js(
        "[...document.querySelectorAll('ol.preds li')].map(e => e.textContent)"
    )
    assert b.js("document.querySelectorAll('img[src=x]').length") == 0

    # clicking an overlay thumbnail opens the overlay at full resolution
    assert b.js("document.getElementById('viewer').hidden")
    b.click("#tbody tr.row:nth-child(1) .ov .thumb")
    assert not b.js("document.getElementById('viewer').hidden")
    b.wait("document.getElementById('viewer-img').complete && "
           "document.getElementById('viewer-img').naturalWidth > 0")  # fmt: skip
    assert b.js("[document.getElementById('viewer-img').naturalWidth, "
                "document.getElementById('viewer-img').naturalHeight]") == [W, H]  # fmt: skip
    assert b.js("decodeURIComponent(document.getElementById('viewer-img').src)").endswith(
        "/cams/good/1_0.jpg"
    )
    cap = b.js("document.getElementById('viewer-cap').textContent")
    assert cap == f"1. cat · {report_page.parents[1] / 'images' / 'good.jpg'} · IoU 1.000"
    # its boxes: the top-1 box and the GT box
    assert b.js("document.querySelectorAll('#viewer-svg rect').length") == 2
    # thumbnails are thumbnails (longest side 160)
    assert b.js("document.querySelector('#tbody .thumb img').naturalWidth") == 160

    art = Path(os.environ.get("CAMCLI_ARTIFACTS") or tmp_path)
    art.mkdir(parents=True, exist_ok=True)
    shot = art / "report-browser.png"
    b.screenshot(shot)
    print(f"screenshot: {shot}")
    b.click("#viewer")
    assert b.js("document.getElementById('viewer').hidden")
    b.screenshot(art / "report-browser-table.png")
    assert shot.stat().st_size > 10_000

    # nothing failed in the console: no script error, no missing file
    assert b.console_errors() == []


def test_report_pages_in_browser(browser, tmp_path):
    """120 records-only rows: 50 a page, the next page, 25 a page, a filter back to page 1."""
    from camcli.api.report_html import write_report

    recs = tmp_path / "r.jsonl"
    recs.write_text("".join(
        json.dumps({"image": f"img{i:03d}.jpg", "width": 10, "height": 10, "predictions": [
            {"class_index": i % 2, "label": "odd" if i % 2 else "even", "score": 0.5}]}) + "\n"
        for i in range(120)
    ))  # fmt: skip
    page = write_report([recs], tmp_path / "rep").index
    b = browser
    b.open(page)
    info = "document.getElementById('page-info').textContent"
    assert b.js(info) == "page 1 of 3 · 120 of 120 images"
    assert names(b) == [f"img{i:03d}.jpg" for i in range(50)]
    b.click("#next")
    assert names(b) == [f"img{i:03d}.jpg" for i in range(50, 100)]
    b.click("#next")
    assert names(b) == [f"img{i:03d}.jpg" for i in range(100, 120)]
    assert b.js("document.getElementById('next').disabled")
    b.select("#page-size", "25")
    assert b.js(info) == "page 1 of 5 · 120 of 120 images"
    b.click("#next")
    b.select("#f-class", "odd")
    assert b.js(info) == "page 1 of 3 · 60 of 120 images"
    assert names(b)[:2] == ["img001.jpg", "img003.jpg"]
    assert b.console_errors() == []
