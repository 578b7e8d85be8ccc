"""Pretrained downloads against a local server that answers like the Hugging Face Hub.

Two servers on 127.0.0.1: the "Hub" answers HEAD/GET on /{repo}/resolve/{rev}/{file} with a 302
to the "CDN" and the headers huggingface_hub reads (X-Repo-Commit, X-Linked-Etag = the file's
sha256, X-Linked-Size); the CDN serves the bytes (Range requests too) and can serve other bytes
than the advertised hash, or cut the connection mid-file. Each claim is checked on the wire:
a good file loads; bytes that differ from the advertised sha256 are refused and nothing stays
cached; an interrupted transfer leaves nothing usable behind; offline mode makes no request.
"""

import hashlib
import http.server
import os
import threading

import huggingface_hub
import numpy as np
import pytest
from helpers import (
    assert_parity,
    nchw_to_nhwc,
    randomize_timm_model,
    structured_images,
    structured_pixels,
    timm_forward,
)

import keras_vit
from keras_vit.pretrained import download, get_pretrained_cfg

NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
REPO = f"timm/{NAME}"
RESOLVE = f"/{REPO}/resolve/main/model.safetensors"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Http:
    def __init__(self, handler):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class HubServer:
    """`publish(path, body)`: the Hub advertises sha256(body); the CDN serves `served` (default
    `body`). `cut_first`: that many CDN responses stop after half of what they send;
    `cut_all`: every CDN response stops after half of the first one's bytes."""

    def __init__(self):
        self.files, self.log, self.cut_first, self.cut_all = {}, [], 0, False
        hub = self

        class Base(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

        class Hub(Base):
            def _resolve(self):
                hub.log.append((self.command, "hub", self.path))
                entry = hub.files.get(self.path)
                if entry is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                advertised, _ = entry
                self.send_response(302)
                self.send_header("Location", f"{hub.cdn.url}/blob{self.path}")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("X-Linked-Etag", f'"{hashlib.sha256(advertised).hexdigest()}"')
                self.send_header("X-Linked-Size", str(len(advertised)))
                self.send_header("ETag", '"0000000000000000000000000000000000000000"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_HEAD = do_GET = _resolve

        class Cdn(Base):
            def do_GET(self):
                hub.log.append(("GET", "cdn", self.path))
                _, body = hub.files[self.path[len("/blob") :]]
                start = 0
                if self.headers.get("Range", "").startswith("bytes="):
                    start = int(self.headers["Range"][len("bytes=") :].split("-")[0])
                part = body[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(part)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                cut = hub.cut_all or hub.cut_first > 0
                if cut:
                    hub.cut_first -= 1
                    self.wfile.write(part[: len(part) // 2] if start == 0 else b"")
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(part)

        self.hub, self.cdn = _Http(Hub), _Http(Cdn)
        self.url = self.hub.url

    def publish(self, path, body, served=None):
        self.files[path] = (body, body if served is None else served)

    def gets(self):
        return [entry for entry in self.log if entry[:2] == ("GET", "cdn")]

    def close(self):
        self.hub.close()
        self.cdn.close()


@pytest.fixture()
def server(tmp_path, monkeypatch):
    srv = HubServer()
    monkeypatch.setenv("KERAS_VIT_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("KERAS_VIT_HUB_ENDPOINT", srv.url)
    for var in ("KERAS_VIT_OFFLINE", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def checkpoint():
    """A depth-1 timm ViT-Ti (the tag's 1000 classes) as safetensors bytes."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save

    ref = timm.create_model("vit_tiny_patch16_224", depth=1).eval()
    randomize_timm_model(ref, seed=7)
    return ref, save({k: v.contiguous() for k, v in ref.state_dict().items()})


def _cached(tmp_path):
    """Every file in the cache's blobs/ and snapshots/ (relative paths), `.incomplete` apart."""
    root = tmp_path / "hub" / f"models--timm--{NAME}"
    out = {"complete": [], "incomplete": []}
    for sub in ("blobs", "snapshots"):
        for path in sorted((root / sub).rglob("*")) if (root / sub).exists() else []:
            if path.is_file() or path.is_symlink():
                kind = "incomplete" if path.name.endswith(".incomplete") else "complete"
                out[kind].append(str(path.relative_to(root)))
    return out


def _fetch():
    return keras_vit.pretrained.checkpoint_path(NAME, progress=False)


def test_good_file_downloads_verifies_and_loads(server, checkpoint, tmp_path, capsys):
    ref, body = checkpoint
    server.publish(RESOLVE, body)
    model = keras_vit.create_model(NAME, weights="pretrained", depth=1)
    assert len(server.gets()) == 1
    cfg = model.pretrained_cfg
    assert cfg.name == NAME and cfg.num_classes == 1000 and model.mean == (0.5, 0.5, 0.5)
    assert "model.safetensors" not in capsys.readouterr().out  # progress goes to stderr only
    # the standard HF cache layout: the blob is named by its sha256, no sidecar of ours
    digest = hashlib.sha256(body).hexdigest()
    assert _cached(tmp_path) == {
        "complete": [f"blobs/{digest}", f"snapshots/{COMMIT}/model.safetensors"],
        "incomplete": [],
    }
    # it is the right model: 0..255 pixels through the tag's preprocessing match timm
    pixels = structured_pixels(2, 224, 224, seed=1)
    normalised = np.ascontiguousarray(((pixels / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2))
    assert_parity(model.predict_on_batch(pixels), timm_forward(ref, normalised))
    # second use: from the cache (a HEAD to check the revision, no download)
    keras_vit.create_model(NAME, weights="pretrained", depth=1)
    assert len(server.gets()) == 1


def test_a_file_timm_already_fetched_is_reused(server, checkpoint, tmp_path):
    server.publish(RESOLVE, checkpoint[1])
    # what timm's `pretrained=True` does: hf_hub_download of the same repo and file
    theirs = huggingface_hub.hf_hub_download(
        REPO, "model.safetensors", cache_dir=str(tmp_path / "hub"), endpoint=server.url
    )
    assert len(server.gets()) == 1
    assert os.path.samefile(_fetch(), theirs) and len(server.gets()) == 1


def test_bytes_that_differ_from_the_advertised_sha256_are_refused_and_not_cached(
    server, checkpoint, tmp_path
):
    body = checkpoint[1]
    tampered = bytearray(body)
    tampered[len(body) // 2] ^= 0xFF  # same size: huggingface_hub's own size check passes
    server.publish(RESOLVE, body, served=bytes(tampered))
    with pytest.raises(ValueError, match="sha256 published by the Hub.*refused"):
        _fetch()
    assert _cached(tmp_path) == {"complete": [], "incomplete": []}
    with pytest.raises(ValueError, match="refused"):
        keras_vit.create_model(NAME, weights="pretrained", depth=1)
    assert _cached(tmp_path) == {"complete": [], "incomplete": []}


def test_a_pinned_sha256_wins_over_the_hub(server, checkpoint, tmp_path, monkeypatch):
    body = checkpoint[1]
    server.publish(RESOLVE, body)
    url = get_pretrained_cfg(NAME).url
    with pytest.raises(ValueError, match="pinned sha256"):
        download.fetch(url, sha256="0" * 64, progress=False)  # the Hub's hash would pass
    assert _cached(tmp_path)["complete"] == []
    right = hashlib.sha256(body).hexdigest()
    assert download.fetch(url, sha256=right, progress=False).read_bytes() == body


def test_a_cached_file_that_changed_on_disk_is_refused_and_removed(server, checkpoint, tmp_path):
    server.publish(RESOLVE, checkpoint[1])
    cached = _fetch()
    blob = os.path.realpath(cached)
    data = bytearray(open(blob, "rb").read())
    data[-1] ^= 0xFF  # one flipped byte in the cache
    with open(blob, "wb") as f:
        f.write(data)
    with pytest.raises(ValueError, match="refused"):
        _fetch()
    assert _cached(tmp_path)["complete"] == [] and len(server.gets()) == 1


def test_interrupted_transfer_leaves_nothing_usable_and_the_next_call_completes(
    server, checkpoint, tmp_path, monkeypatch
):
    body = checkpoint[1]
    server.publish(RESOLVE, body)
    server.cut_all = True  # every attempt (huggingface_hub resumes 5 times) dies mid-file
    with pytest.raises(download.DownloadError, match="failed"):
        _fetch()
    # no blob, no snapshot link, no partial file: nothing can load it
    assert _cached(tmp_path) == {"complete": [], "incomplete": []}
    monkeypatch.setenv("KERAS_VIT_OFFLINE", "1")
    with pytest.raises(download.OfflineError):
        _fetch()
    monkeypatch.delenv("KERAS_VIT_OFFLINE")
    server.cut_all = False
    path = _fetch()  # a fresh download, verified as a whole
    assert path.read_bytes() == body and _cached(tmp_path)["incomplete"] == []


def test_one_cut_is_healed_by_resuming(server, checkpoint, tmp_path):
    server.publish(RESOLVE, checkpoint[1])
    server.cut_first = 1
    assert _fetch().read_bytes() == checkpoint[1]
    assert len(server.gets()) == 2  # the cut one, and the resumed Range request


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "KERAS_VIT_OFFLINE"])
def test_offline_makes_no_request(server, checkpoint, tmp_path, monkeypatch, variable):
    server.publish(RESOLVE, checkpoint[1])
    monkeypatch.setenv(variable, "1")
    with pytest.raises(FileNotFoundError) as info:
        keras_vit.create_model(NAME, weights="pretrained", depth=1)
    assert server.log == []
    assert f"{REPO}/model.safetensors" in str(info.value) and str(tmp_path / "hub") in str(
        info.value
    )
    # fetched once online, the file is then used (and verified) offline without a request
    monkeypatch.delenv(variable)
    _fetch()
    requests = len(server.log)
    monkeypatch.setenv(variable, "1")
    model = keras_vit.create_model(NAME, weights="pretrained", depth=1, include_preprocessing=False)
    assert len(server.log) == requests
    images = structured_images(2, 224, 224)
    assert_parity(model.predict_on_batch(nchw_to_nhwc(images)), timm_forward(checkpoint[0], images))


def test_hf_endpoint_is_honoured(server, checkpoint, monkeypatch):
    server.publish(RESOLVE, checkpoint[1])
    monkeypatch.delenv("KERAS_VIT_HUB_ENDPOINT")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    assert _fetch().read_bytes() == checkpoint[1]
    assert server.log and server.log[0][:2] == ("HEAD", "hub")


def test_default_cache_is_the_hugging_face_cache_and_registry_url(monkeypatch, tmp_path):
    monkeypatch.delenv("KERAS_VIT_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    assert download.cache_dir() == tmp_path / "hf"
    cfg = get_pretrained_cfg(NAME)
    assert cfg.url == f"https://huggingface.co/{REPO}/resolve/main/model.safetensors"
    assert download.split_hub_url(cfg.url) == (REPO, "main", "model.safetensors")
