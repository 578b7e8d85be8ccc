"""Download against a real HTTP server on 127.0.0.1: verified, cached, atomic, offline.

The server counts requests and can cut the connection mid-file, so each claim is checked
on the wire: a good file loads; a wrong hash is refused and leaves no cache entry; a cut
leaves no cache entry and the next call succeeds; offline mode makes no request at all.
"""

import hashlib
import http.server
import threading

import numpy as np
import pytest
from helpers import (
    assert_parity,
    nchw_to_nhwc,
    randomize_timm_model,
    structured_images,
    structured_pixels,
)

import keras_vit
from keras_vit.pretrained import download, get_pretrained_cfg

NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
PATH = f"/timm/{NAME}/resolve/main/model.safetensors"


class _Server:
    """Serves `files` {url path: bytes}; `cuts` requests are cut after half the body."""

    def __init__(self):
        self.files, self.requests, self.cuts = {}, 0, 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cuts > 0:
                    server.cuts -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture()
def server(tmp_path, monkeypatch):
    srv = _Server()
    monkeypatch.setenv("KERAS_VIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KERAS_VIT_HUB_ENDPOINT", srv.url)
    monkeypatch.delenv("KERAS_VIT_OFFLINE", raising=False)
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


def _cache_files(tmp_path):
    folder = tmp_path / "cache" / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_file_downloads_verifies_and_loads(server, checkpoint, tmp_path, capsys):
    import torch

    ref, body = checkpoint
    server.files[PATH] = body
    model = keras_vit.create_model(NAME, weights="pretrained", depth=1)
    assert server.requests == 1
    cfg = model.pretrained_cfg
    assert cfg.name == NAME and cfg.num_classes == 1000 and model.mean == (0.5, 0.5, 0.5)
    assert "model.safetensors" not in capsys.readouterr().out  # progress goes to stderr only
    # the file is cached with its sha256 recorded beside it
    digest = hashlib.sha256(body).hexdigest()
    assert _cache_files(tmp_path) == [f"{NAME}.safetensors", f"{NAME}.safetensors.sha256"]
    sidecar = tmp_path / "cache" / "checkpoints" / f"{NAME}.safetensors.sha256"
    assert sidecar.read_text().split()[0] == digest
    # it is the right model: 0..255 pixels through the tag's preprocessing match timm
    pixels = structured_pixels(2, 224, 224, seed=1)
    normalised = np.ascontiguousarray(((pixels / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2))
    with torch.no_grad():
        expected = ref(torch.from_numpy(normalised)).numpy()
    assert_parity(model.predict_on_batch(pixels), expected)
    # second use: from the cache, no request
    keras_vit.create_model(NAME, weights="pretrained", depth=1)
    assert server.requests == 1


def test_recorded_hash_is_checked_on_later_use(server, checkpoint, tmp_path):
    server.files[PATH] = checkpoint[1]
    cached = keras_vit.pretrained.checkpoint_path(NAME, progress=False)
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the cached file
    cached.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        keras_vit.pretrained.checkpoint_path(NAME, progress=False)
    assert server.requests == 1


def test_wrong_pinned_hash_is_refused_and_not_cached(server, checkpoint, tmp_path):
    server.files["/f.safetensors"] = checkpoint[1]
    with pytest.raises(ValueError, match="sha256.*refused"):
        download.fetch(server.url + "/f.safetensors", "f.safetensors", sha256="0" * 64)
    assert _cache_files(tmp_path) == []  # no entry, no sidecar, no temporary file
    # the right pin passes
    right = hashlib.sha256(checkpoint[1]).hexdigest()
    path = download.fetch(server.url + "/f.safetensors", "f.safetensors", sha256=right)
    assert path.read_bytes() == checkpoint[1]


def test_connection_cut_leaves_no_cache_entry_and_next_call_succeeds(server, checkpoint, tmp_path):
    server.files[PATH] = checkpoint[1]
    server.cuts = 2  # the first attempt and its retry are both cut mid-file
    with pytest.raises(download.DownloadError, match="failed twice"):
        keras_vit.pretrained.checkpoint_path(NAME, progress=False)
    assert server.requests == 2 and _cache_files(tmp_path) == []
    path = keras_vit.pretrained.checkpoint_path(NAME, progress=False)
    assert server.requests == 3 and path.read_bytes() == checkpoint[1]


def test_one_cut_is_healed_by_the_retry(server, checkpoint, tmp_path):
    server.files[PATH] = checkpoint[1]
    server.cuts = 1
    path = keras_vit.pretrained.checkpoint_path(NAME, progress=False)
    assert server.requests == 2 and path.read_bytes() == checkpoint[1]


def test_offline_makes_no_connection_and_says_where_to_put_the_file(
    server, checkpoint, tmp_path, monkeypatch
):
    server.files[PATH] = checkpoint[1]
    monkeypatch.setenv("KERAS_VIT_OFFLINE", "1")
    target = tmp_path / "cache" / "checkpoints" / f"{NAME}.safetensors"
    with pytest.raises(FileNotFoundError) as info:
        keras_vit.create_model(NAME, weights="pretrained", depth=1)
    assert server.requests == 0
    message = str(info.value)
    assert server.url + PATH in message and str(target) in message
    # put there by hand, the file is used offline (and its digest recorded)
    target.parent.mkdir(parents=True)
    target.write_bytes(checkpoint[1])
    model = keras_vit.create_model(NAME, weights="pretrained", depth=1, include_preprocessing=False)
    assert server.requests == 0
    images = structured_images(2, 224, 224)
    from helpers import timm_forward

    assert_parity(model.predict_on_batch(nchw_to_nhwc(images)), timm_forward(checkpoint[0], images))
    assert (target.parent / f"{NAME}.safetensors.sha256").exists()


def test_default_cache_dir_and_registry_url(monkeypatch, tmp_path):
    monkeypatch.delenv("KERAS_VIT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert download.cache_dir() == tmp_path / "keras_vit"
    cfg = get_pretrained_cfg(NAME)
    assert cfg.url == f"https://huggingface.co/timm/{NAME}/resolve/main/model.safetensors"
