"""Verified, cached downloads from a local HTTP server (127.0.0.1 only)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch
import torchvision

import camcli.cli
from camcli.models import hub


class _Server:
    """Serves ``files`` {url path: bytes}; ``/short/...`` lies about Content-Length."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                extra = 1000 if self.path.startswith("/short/") else 0
                self.send_header("Content-Length", str(len(body) + extra))
                self.end_headers()
                self.wfile.write(body)  # then the connection closes (HTTP/1.0)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path, server) -> Path:
    monkeypatch.setenv("CAMCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server.requests.clear()
    return tmp_path / "cache" / "weights"


def _cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


BLOB = bytes(range(256)) * 4096 + b"camcli"  # 1 MiB + 6 bytes: more than one read chunk
DIGEST = hashlib.sha256(BLOB).hexdigest()


def test_split_url():
    assert hub.split_url("https://h/x/resnet18-f37072fd.pth") == (
        "https://h/x/resnet18-f37072fd.pth",
        "f37072fd",
    )
    assert hub.split_url("https://h/x/w.pth#sha256=ABCDEF0123") == (
        "https://h/x/w.pth",
        "abcdef0123",
    )
    assert hub.split_url("https://h/x/w.pth") == ("https://h/x/w.pth", None)
    with pytest.raises(hub.WeightsError, match="fragment must be #sha256="):
        hub.split_url("https://h/x/w.pth#md5=00")


def test_cached_path_names(cache):
    assert hub.cached_path("https://h/a/b/w-0123abcd.pth") == cache / "w-0123abcd.pth"
    # no digest pinned: keyed by the whole URL (issue 15 W7)
    unpinned = hub.cached_path("https://h/a/w.pth?token=1")
    assert unpinned.name == "w.pth" and unpinned.parent.parent == cache / "by-url"
    assert hub.cached_path("https://h/b/w.pth").parent != unpinned.parent
    assert hub.cached_path("https://h/a/w.pth", "0123abcd") == cache / "w.pth"
    odd = hub.cached_path("https://h/a/")
    assert odd.parent.parent == cache / "by-url" and odd.name.startswith("url-")


def test_download_by_file_name_hash_is_cached_and_reused(server, cache):
    server.files[f"/m/blob-{DIGEST[:8]}.pth"] = BLOB
    url = f"{server.url}/m/blob-{DIGEST[:8]}.pth"
    path = hub.download(url, None, progress=False)
    assert path == cache / f"blob-{DIGEST[:8]}.pth"
    assert path.read_bytes() == BLOB
    assert _cache_files(cache) == [path.name]  # no temporary file left
    assert server.requests == [f"/m/blob-{DIGEST[:8]}.pth"]
    assert hub.download(url, None, progress=False) == path
    assert hub.download(url, None, offline=True) == path
    assert len(server.requests) == 1


def test_download_by_fragment_hash(server, cache):
    server.files["/plain.bin"] = BLOB
    path = hub.download(f"{server.url}/plain.bin#sha256={DIGEST}", None, progress=False)
    assert path == cache / "plain.bin" and path.read_bytes() == BLOB
    assert server.requests == ["/plain.bin"]


def test_wrong_hash_leaves_nothing(server, cache):
    server.files["/w-deadbeef.pth"] = BLOB
    with pytest.raises(hub.WeightsError, match="sha256 mismatch, expected deadbeef"):
        hub.download(f"{server.url}/w-deadbeef.pth", None, progress=False)
    # an explicit expected hash wins over the file name's
    server.files["/plain2.bin"] = BLOB
    with pytest.raises(hub.WeightsError, match="sha256 mismatch"):
        hub.download(f"{server.url}/plain2.bin", "0" * 64, progress=False)
    assert _cache_files(cache) == []


def test_interrupted_download_leaves_nothing(server, cache):
    server.files[f"/short/s-{DIGEST[:8]}.pth"] = BLOB
    with pytest.raises(hub.WeightsError, match="broken off after 1048582 of 1049582 bytes"):
        hub.download(f"{server.url}/short/s-{DIGEST[:8]}.pth", None, progress=False)
    assert _cache_files(cache) == []


def test_http_error_and_refused_connection(server, cache):
    with pytest.raises(hub.WeightsError, match="download failed .*Not Found"):
        hub.download(f"{server.url}/missing-0123abcd.pth", None, progress=False)
    with pytest.raises(hub.WeightsError, match="download failed"):
        hub.download("http://127.0.0.1:9/x-0123abcd.pth", None, progress=False, timeout=5)
    assert _cache_files(cache) == []


def test_offline_without_cache_names_the_path(server, cache):
    with pytest.raises(hub.WeightsError) as ei:
        hub.download(f"{server.url}/never-0123abcd.pth", None, offline=True)
    assert str(cache / "never-0123abcd.pth") in str(ei.value)
    assert server.requests == []


def test_corrupt_cached_copy_is_replaced_online_and_refused_offline(server, cache):
    name = f"c-{DIGEST[:8]}.pth"
    server.files["/" + name] = BLOB
    cache.mkdir(parents=True)
    (cache / name).write_bytes(b"not the weights")
    with pytest.raises(hub.WeightsError, match="does not match its sha256"):
        hub.download(f"{server.url}/{name}", None, offline=True)
    assert server.requests == []
    assert hub.download(f"{server.url}/{name}", None, progress=False).read_bytes() == BLOB
    assert server.requests == ["/" + name]


def test_progress_bar_path(server, cache):
    server.files[f"/p-{DIGEST[:8]}.pth"] = BLOB
    assert hub.download(f"{server.url}/p-{DIGEST[:8]}.pth", None, progress=True).is_file()


# --- through the CLI ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> tuple[bytes, str]:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sd") / "sd.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


@pytest.fixture
def image(tmp_path) -> Path:
    from PIL import Image

    p = tmp_path / "img.jpg"
    Image.new("RGB", (20, 14), (200, 30, 60)).save(p)
    return p


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ei:
        camcli.cli.main(list(args))
    out, err = capsys.readouterr()
    return ei.value.code, out, err


def test_cli_downloads_verifies_and_reuses(server, cache, resnet18_file, image, capsys):
    data, digest = resnet18_file
    name = f"resnet18-{digest[:8]}.pth"
    server.files["/" + name] = data
    args = ["predict", str(image), "--model", "resnet18", "--weights", f"{server.url}/{name}"]
    code, out, err = _cli(capsys, *args, "--workers", "0", "--output", "-", "-k", "2")
    assert code == 0, err
    assert out.count("\n") == 1 and '"predictions"' in out
    assert _cache_files(cache) == [name]
    code, out2, _ = _cli(capsys, *args, "--workers", "0", "--output", "-", "-k", "2", "--offline")
    assert code == 0 and out2 == out
    assert server.requests == ["/" + name]


def test_cli_wrong_hash_exits_4(server, cache, resnet18_file, image, capsys):
    server.files["/resnet18-deadbeef.pth"] = resnet18_file[0]
    url = f"{server.url}/resnet18-deadbeef.pth"
    code, out, err = _cli(capsys, "predict", str(image), "--model", "resnet18", "--weights", url)
    assert code == 4
    assert out == ""
    assert "sha256 mismatch" in err and err.count("\n") == 1 and "Traceback" not in err
    assert _cache_files(cache) == []


def test_cli_offline_nothing_cached_exits_4(server, cache, image, capsys):
    url = f"{server.url}/resnet18-0123abcd.pth"
    code, _, err = _cli(
        capsys, "predict", str(image), "-m", "resnet18", "-w", url, "--offline", "--workers", "0"
    )
    assert code == 4
    assert str(cache / "resnet18-0123abcd.pth") in err.replace("\n", "")
    code, _, err = _cli(capsys, "predict", str(image), "-m", "resnet18", "--offline")
    assert code == 4
    assert str(cache / "resnet18-f37072fd.pth") in err.replace("\n", "")
    assert server.requests == []
