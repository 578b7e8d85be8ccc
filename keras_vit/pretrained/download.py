"""Download with verification: cache, sha256, temp file + rename, one retry, offline mode.

- Cache: `$KERAS_VIT_CACHE` (default `$XDG_CACHE_HOME/keras_vit`, i.e. `~/.cache/keras_vit`),
  files under `checkpoints/`.
- A download goes to a temporary file in the cache directory, is hashed while it streams, and
  is renamed into place only when complete and verified: an interrupted or corrupt download
  never becomes a cache entry.
- sha256: checked against the pinned digest when the registry has one; otherwise recorded on
  first download in a `<file>.sha256` sidecar and checked on every later use.
- `KERAS_VIT_OFFLINE=1`: no network at all; a missing file raises an error naming the URL and
  the path to put it at. `KERAS_VIT_HUB_ENDPOINT` replaces `https://huggingface.co` (a mirror).
- urllib only; the progress bar goes to stderr (tqdm if installed, else a plain line).
"""

import hashlib
import http.client
import os
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

HF_ENDPOINT = "https://huggingface.co"
_CHUNK = 1 << 20
_NETWORK_ERRORS = (
    urllib.error.URLError,
    http.client.HTTPException,  # IncompleteRead, RemoteDisconnected, ...
    ConnectionError,
    socket.timeout,
    TimeoutError,
)


class OfflineError(FileNotFoundError):
    """The file is not cached and `KERAS_VIT_OFFLINE=1` forbids fetching it."""


class DownloadError(OSError):
    """The download failed (network) after its retry."""


def cache_dir():
    root = os.environ.get("KERAS_VIT_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "keras_vit")
    return Path(root)


def offline():
    return os.environ.get("KERAS_VIT_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _mirror(url):
    endpoint = os.environ.get("KERAS_VIT_HUB_ENDPOINT", "").rstrip("/")
    if endpoint and url.startswith(HF_ENDPOINT + "/"):
        return endpoint + url[len(HF_ENDPOINT) :]
    return url


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_cached(path, sha256):
    """Verify a cache entry against the pinned digest or its recorded sidecar."""
    sidecar = path.with_name(path.name + ".sha256")
    recorded = sidecar.read_text().split()[0] if sidecar.is_file() else None
    expected = sha256 or recorded
    actual = sha256_of(path)
    if expected is None:  # put there by hand (offline use): record it now
        sidecar.write_text(f"{actual}  {path.name}\n")
        return path
    if actual != expected:
        raise ValueError(
            f"Cached file {str(path)!r} has sha256 {actual}, expected {expected}: it changed "
            "or is corrupt. Delete it (and its .sha256) to download again."
        )
    return path


def fetch(url, filename, sha256=None, progress=True, timeout=60.0):
    """Path of `filename` in the cache, downloading `url` first if it is not there."""
    target = cache_dir() / "checkpoints" / filename
    if target.is_file():
        return _check_cached(target, sha256)
    url = _mirror(url)
    if offline():
        raise OfflineError(
            f"KERAS_VIT_OFFLINE is set and {filename} is not cached: download {url} and save "
            f"it as {target}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in (1, 2):  # one retry for network failures; a wrong hash is not retried
        try:
            digest = _download(url, target, sha256, progress, timeout)
            break
        except _NETWORK_ERRORS as err:
            if attempt == 2:
                raise DownloadError(f"Downloading {url} failed twice: {err}") from err
            print(f"keras_vit: download of {url} failed ({err}); retrying", file=sys.stderr)
    target.with_name(target.name + ".sha256").write_text(f"{digest}  {target.name}\n")
    return target


def _download(url, target, sha256, progress, timeout):
    """Stream `url` into a temp file beside `target`; rename only after every check."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        request = urllib.request.Request(url, headers={"User-Agent": "keras_vit"})
        with open(fd, "wb") as f, urllib.request.urlopen(request, timeout=timeout) as response:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            bar = _progress_bar(total, target.name) if progress else None
            received = 0
            while True:
                block = response.read(_CHUNK)
                if not block:
                    break
                f.write(block)
                digest.update(block)
                received += len(block)
                if bar:
                    bar.update(len(block))
            if bar:
                bar.close()
        if total is not None and received != total:
            raise http.client.IncompleteRead(b"", total - received)
        actual = digest.hexdigest()
        if sha256 and actual != sha256:
            raise ValueError(
                f"Downloaded {url} has sha256 {actual}, expected {sha256}; refused "
                "(nothing was cached)."
            )
        os.replace(tmp, target)
        return actual
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _PlainBar:
    """A one-line progress display for when tqdm is not installed."""

    def __init__(self, total, desc):
        self.total, self.desc, self.n, self._shown = total, desc, 0, -1

    def update(self, n):
        self.n += n
        pct = int(100 * self.n / self.total) if self.total else self.n >> 20
        if pct != self._shown:
            self._shown = pct
            unit = "%" if self.total else " MiB"
            print(f"\r{self.desc}: {pct}{unit}", end="", file=sys.stderr, flush=True)

    def close(self):
        print(file=sys.stderr)


def _progress_bar(total, desc):
    try:
        from tqdm import tqdm
    except ImportError:
        return _PlainBar(total, desc)
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr, leave=False)
