"""Pretrained downloads through `huggingface_hub`, verified against the Hub's published hash.

- Files go into the standard Hugging Face cache (`HF_HUB_CACHE`, `HF_HOME/hub`, default
  `~/.cache/huggingface/hub`) with `hf_hub_download`, so a checkpoint timm or transformers
  already fetched (`timm/<name>` repos) is reused and not downloaded again.
  `KERAS_VIT_CACHE`, if set, is used as that cache directory instead.
- Verification: `hf_hub_download` checks the size only. Here every file is hashed before it is
  used, downloaded or cached, and must equal the registry's pinned sha256 where there is one,
  else the hash the Hub publishes for the file: an LFS file's ETag (`X-Linked-Etag`) is its
  sha256, and the cache names the blob by it; a small git-stored file's is its git blob sha1.
  A mismatch deletes the blob and its snapshot link and raises: nothing wrong stays cached.
- A transfer cut mid-file is resumed by `huggingface_hub` (a Range request, up to 5 times);
  one that still fails leaves no blob, no snapshot link and no partial file (its temporary
  file is removed), so nothing can use it, and raises `DownloadError`.
- Offline: `HF_HUB_OFFLINE=1` or `KERAS_VIT_OFFLINE=1` (read at each call): no request at all;
  a file that is not cached raises `OfflineError`, naming the repository, file and cache.
- Endpoint: `HF_ENDPOINT` (huggingface_hub's variable) or `KERAS_VIT_HUB_ENDPOINT` (a mirror),
  read at each call; the latter wins.
"""

import hashlib
import os
import re
from pathlib import Path

HF_ENDPOINT = "https://huggingface.co"
_CHUNK = 1 << 20
_RESOLVE = re.compile(r"^(?P<endpoint>https?://[^/]+)/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")  # fmt: skip
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_TRUE = ("1", "true", "yes", "on")


class OfflineError(FileNotFoundError):
    """The file is not cached and offline mode forbids fetching it."""


class DownloadError(OSError):
    """The download failed (network) after huggingface_hub's retries."""


def cache_dir():
    """The Hugging Face hub cache keras_vit downloads into (shared with timm/transformers)."""
    root = os.environ.get("KERAS_VIT_CACHE")
    if root:
        return Path(root)
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def offline():
    return any(
        os.environ.get(var, "").strip().lower() in _TRUE
        for var in ("KERAS_VIT_OFFLINE", "HF_HUB_OFFLINE")
    )


def endpoint():
    """The Hub endpoint: KERAS_VIT_HUB_ENDPOINT, else HF_ENDPOINT, else huggingface.co."""
    for var in ("KERAS_VIT_HUB_ENDPOINT", "HF_ENDPOINT"):
        value = os.environ.get(var, "").strip().rstrip("/")
        if value:
            return value
    return HF_ENDPOINT


def split_hub_url(url):
    """'https://huggingface.co/timm/x/resolve/main/model.safetensors' -> (repo, revision, file)."""
    match = _RESOLVE.match(url)
    if match is None:
        raise ValueError(
            f"{url!r} is not a Hugging Face Hub file URL (.../<repo>/resolve/<rev>/<file>)."
        )
    return match["repo"], match["rev"], match["file"]


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def git_sha1_of(path):
    """The git blob id of a file: the Hub's ETag for files stored in git rather than LFS."""
    digest = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _remove_cached(pointer):
    """Delete a snapshot link and the blob it points to."""
    blob = Path(os.path.realpath(pointer))
    for path in {Path(pointer), blob}:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _published_hash(pointer, url):
    """The hash the Hub published for the file: the name of its blob in the cache (the ETag
    huggingface_hub stored it under), or, where the cache holds copies instead of links
    (no symlinks, e.g. Windows), the ETag asked of the Hub again."""
    if os.path.islink(pointer):
        return os.path.basename(os.path.realpath(pointer))
    if offline():
        return None
    from huggingface_hub import get_hf_file_metadata

    return get_hf_file_metadata(url, endpoint=endpoint()).etag


def verify(pointer, sha256=None, where=""):
    """Check a cached file against the pinned `sha256`, else the Hub's hash. On a mismatch
    delete it and raise ValueError."""
    published = "" if sha256 else (_published_hash(pointer, where) or "")
    if sha256:
        expected, actual, kind = sha256.lower(), sha256_of(pointer), "pinned sha256"
    elif _SHA256.match(published):
        expected, actual, kind = published, sha256_of(pointer), "sha256 published by the Hub"
    elif _GIT_SHA1.match(published):
        expected, actual, kind = published, git_sha1_of(pointer), "git blob id published by the Hub"
    else:
        _remove_cached(pointer)
        raise ValueError(
            f"{where or pointer}: the Hub published no hash for this file (ETag {published!r}) "
            "and the registry pins none: refused (nothing was cached)."
        )
    if actual != expected:
        _remove_cached(pointer)
        raise ValueError(
            f"{where or pointer} has {kind.split(' ')[0]} {actual}, but the {kind} is {expected}: "
            "refused and deleted (nothing was cached)."
        )
    return Path(pointer)


def fetch(url, sha256=None, progress=True):
    """Local path of the Hub file at `url`, downloaded into the HF cache if needed, verified."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    repo, revision, filename = split_hub_url(url)
    base = endpoint()
    where = f"{base}/{repo}/resolve/{revision}/{filename}"
    cache = cache_dir()
    if not progress:
        disable_progress_bars()
    try:
        pointer = hf_hub_download(
            repo,
            filename,
            revision=revision,
            cache_dir=str(cache),
            endpoint=base,
            local_files_only=offline(),
        )
    except LocalEntryNotFoundError as err:
        if offline():
            raise OfflineError(
                f"Offline (HF_HUB_OFFLINE / KERAS_VIT_OFFLINE) and {repo}/{filename} is not in the "
                f"Hugging Face cache {cache}: fetch it where there is network ({where}, e.g. "
                f"`hf download {repo} {filename}`, or let timm fetch it) and copy the cache, or "
                "pass weights=<local file>."
            ) from err
        raise DownloadError(f"Downloading {where} failed: {err}") from err
    except OSError as err:  # size mismatch ("Consistency check failed"), connection errors
        raise DownloadError(f"Downloading {where} failed: {err}") from err
    except Exception as err:  # huggingface_hub's HTTP errors (not found, server error, ...)
        if type(err).__module__.startswith(("huggingface_hub", "httpx")):
            raise DownloadError(f"Downloading {where} failed: {err}") from err
        raise
    finally:
        if not progress:
            enable_progress_bars()
    return verify(pointer, sha256, where)
