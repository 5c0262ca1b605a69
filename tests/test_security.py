"""Untrusted input (issue 17): the downloader fetches only http(s) from public addresses (or named hosts), bounded in
bytes, time and pixels; names from presets and reference files cannot leave the run directory.

Everything runs on loopback: the hostile server is started here; redirects to 169.254.169.254 and 10.0.0.1 must be
refused before any connection (``_spy_connections`` records every address the fetch connects to).
"""

from __future__ import annotations

import base64
import http.client
import http.server
import io
import json
import os
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
import types
import zlib
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from laionet.images import fetch as fetch_module
from laionet.images.attempt import DownloadConfig
from laionet.images.download import TRANSIENT, failure_reason
from laionet.images.fetch import REFUSAL_REASONS, Policy, RefusedError, fetch, is_public, parse_allowed

CAP = 2_000_000  # the size cap of these tests (the default is 20 MB)


def _jpeg(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(out, format="JPEG")
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_bomb(path: Path, width: int = 30_000, height: int = 30_000) -> None:
    """A valid 1-bit grayscale PNG of ``width`` × ``height`` (all black), compressed row by row into ``path``: the
    900-megapixel image is never held in memory (the file is ~100 KB)."""
    row = bytes(1 + (width + 7) // 8)  # filter byte 0 + packed bits
    compressor = zlib.compressobj(9)
    with path.open("wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)))
        pending = b""
        for _ in range(height):
            pending += compressor.compress(row)
            if len(pending) > 1 << 16:
                f.write(_chunk(b"IDAT", pending))
                pending = b""
        f.write(_chunk(b"IDAT", pending + compressor.flush()))
        f.write(_chunk(b"IEND", b""))


class HostileServer:
    """A loopback server of good images and hostile answers; counts the requests per path. Every loop is bounded."""

    def __init__(self, bomb: Path) -> None:
        self.hits: Counter[str] = Counter()
        hits, images = self.hits, {f"/ok-{i}.jpg": _jpeg((60 * i, 20, 200)) for i in range(4)}

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _redirect(self, code: int, location: str) -> None:
                self.send_response(code)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _head(self, length: int | None) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                if length is not None:
                    self.send_header("Content-Length", str(length))
                else:
                    self.send_header("Connection", "close")
                self.end_headers()

            def do_GET(self) -> None:  # one branch per hostile answer
                hits[self.path] += 1
                path = self.path
                try:
                    if path in images:
                        self._head(len(images[path]))
                        self.wfile.write(images[path])
                    elif path == "/to-metadata":  # the cloud metadata service
                        self._redirect(302, "http://169.254.169.254/latest/meta-data/iam/")
                    elif path == "/chain-1":
                        self._redirect(301, "/chain-2")
                    elif path == "/chain-2":
                        self._redirect(307, "http://10.0.0.1/internal.jpg")
                    elif path == "/to-file":
                        self._redirect(302, "file:///etc/passwd")
                    elif path == "/to-ok":  # a redirect within the allowed host is followed
                        self._redirect(302, "/ok-3.jpg")
                    elif path == "/bare-redirect":  # a 302 without a Location: an HTTP error, not an empty image
                        self.send_response(302)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    elif path == "/endless":  # no length, bytes as fast as they go (bounded: 200 MB or 20 s)
                        self._head(None)
                        block, end = b"\0" * (1 << 16), time.monotonic() + 20
                        for _ in range(3200):
                            if time.monotonic() > end:
                                break
                            self.wfile.write(block)
                    elif path == "/over-declared":  # Content-Length one byte over the cap
                        self._head(CAP + 1)
                        self.wfile.write(b"\xff" * (CAP + 1))
                    elif path == "/over-streamed":  # no Content-Length, one byte over the cap
                        self._head(None)
                        self.wfile.write(b"\xff" * (CAP + 1))
                    elif path == "/drip":  # a byte every 0.2 s: each read is quick, the whole never ends (≤ 30 s)
                        self._head(1000)
                        for _ in range(150):
                            self.wfile.write(b"\xff")
                            self.wfile.flush()
                            time.sleep(0.2)
                    elif path == "/bomb.png":
                        self._head(bomb.stat().st_size)
                        with bomb.open("rb") as f:
                            while block := f.read(1 << 16):
                                self.wfile.write(block)
                    else:
                        self.send_response(404)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                except OSError:  # the client hung up (a refusal mid-body): expected
                    pass
                self.close_connection = True

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HostileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    bomb = tmp_path_factory.mktemp("served") / "bomb.png"
    write_png_bomb(bomb)
    with HostileServer(bomb) as server:
        yield server


@pytest.fixture
def connections(monkeypatch) -> list[tuple]:
    """Every address ``laionet.images.fetch`` connects a socket to (its ``socket`` module is wrapped)."""
    seen: list[tuple] = []

    class Recording(socket.socket):
        def connect(self, address):  # type: ignore[override]
            seen.append(address)
            return super().connect(address)

    spy = types.SimpleNamespace(**{n: getattr(socket, n) for n in dir(socket) if not n.startswith("__")})
    spy.socket = Recording
    monkeypatch.setattr(fetch_module, "socket", spy)
    return seen


def _refusal(url: str, policy: Policy, timeout: float = 5, max_bytes: int = CAP) -> str:
    with pytest.raises(RefusedError) as caught:
        fetch(url, policy, timeout, max_bytes)
    return caught.value.reason


def test_schemes_other_than_http_are_refused_before_anything_opens(tmp_path, hostile, connections) -> None:
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(secret)
    png = base64.b64encode(secret.read_bytes()).decode()
    policy = Policy.of([f"127.0.0.1:{hostile.port}"])
    for url in [f"file://{secret}", "file:///dev/zero", f"data:image/png;base64,{png}",
                f"ftp://127.0.0.1:{hostile.port}/ok-0.jpg", "gopher://127.0.0.1/", "http:///no-host"]:  # fmt: skip
        assert _refusal(url, policy) == "bad_scheme", url
    assert connections == []


def test_private_addresses_and_redirects_to_them_are_refused_before_connecting(hostile, connections) -> None:
    policy = Policy.of([f"127.0.0.1:{hostile.port}"])
    assert _refusal(f"{hostile.base}/to-metadata", policy) == "redirect_refused"
    assert _refusal(f"{hostile.base}/chain-1", policy) == "redirect_refused"  # 301 → 307 → 10.0.0.1
    assert _refusal(f"{hostile.base}/to-file", policy) == "redirect_refused"
    for url in ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x.jpg", "http://[::1]:9/x",
                f"http://localhost:{hostile.port}/ok-0.jpg", f"http://127.0.0.1:{hostile.port + 1}/x"]:  # fmt: skip
        assert _refusal(url, policy) == "private_address", url
    assert {address[0] for address in connections} == {"127.0.0.1"}  # only the allowed server was ever connected
    assert all(address[1] == hostile.port for address in connections)
    assert fetch(f"{hostile.base}/to-ok", policy, 5, CAP).data == fetch(f"{hostile.base}/ok-3.jpg", policy, 5, CAP).data
    assert _refusal(f"{hostile.base}/ok-0.jpg", Policy()) == "private_address"  # nothing allowed: loopback refused


def test_a_name_with_any_private_address_is_refused_and_the_connected_address_is_checked(
    hostile, monkeypatch, connections
) -> None:
    """DNS answers are checked as a whole, and the address actually connected is checked again (a resolver that
    changes its answer between the check and the connection gains nothing)."""
    real = socket.getaddrinfo

    def resolver(host, port, *args, **kwargs):
        if host == "mixed.test":  # one public and one private address: refused, nothing connected
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port))]  # fmt: skip
        if host == "rebind.test":
            return real("127.0.0.1", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(fetch_module.socket, "getaddrinfo", resolver)
    assert _refusal(f"http://mixed.test:{hostile.port}/ok-0.jpg", Policy()) == "private_address"
    assert connections == []
    verdicts = iter([True])  # the resolution check is fooled once (as by a rebinding resolver); the peer check is not
    monkeypatch.setattr(fetch_module, "is_public", lambda address: next(verdicts, False))
    hits = hostile.hits["/ok-0.jpg"]
    assert _refusal(f"http://rebind.test:{hostile.port}/ok-0.jpg", Policy()) == "private_address"
    assert [address[0] for address in connections] == ["127.0.0.1"]
    assert hostile.hits["/ok-0.jpg"] == hits  # refused once connected, before any request was sent


def test_size_and_time_bounds(hostile) -> None:
    policy = Policy.of([f"127.0.0.1:{hostile.port}"])
    for path, reason in [("/bare-redirect", "http_error"), ("/missing", "http_404")]:
        with pytest.raises(http.client.HTTPException) as caught:
            fetch(f"{hostile.base}{path}", policy, 5, CAP)
        assert failure_reason("failed_to_download", str(caught.value)) == reason
    started = time.monotonic()
    assert _refusal(f"{hostile.base}/endless", policy) == "too_large"
    assert _refusal(f"{hostile.base}/over-declared", policy) == "too_large"
    assert _refusal(f"{hostile.base}/over-streamed", policy) == "too_large"
    assert len(fetch(f"{hostile.base}/over-streamed", policy, 5, CAP + 1).data) == CAP + 1  # at the cap: fetched
    assert time.monotonic() - started < 10
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out"):
        fetch(f"{hostile.base}/drip", policy, 1.5, CAP)  # every read answers within 0.2 s; the whole never does
    assert time.monotonic() - started < 3


def test_policy_pieces() -> None:
    for address in ["127.0.0.1", "10.0.0.1", "172.16.3.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
                    "224.0.0.1", "240.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:10.0.0.1", "ff02::1"]:  # fmt: skip
        assert not is_public(address), address
    assert is_public("93.184.216.34") and is_public("2606:2800:220:1:248:1893:25c8:1946")
    assert parse_allowed(["127.0.0.1:8000", "Mirror.LAN", "[::1]:80"]) == {
        ("127.0.0.1", 8000), ("mirror.lan", None), ("::1", 80)
    }  # fmt: skip
    for bad in ["http://x", "x:y", "", "a/b"]:
        with pytest.raises(ValueError, match="allow_host"):
            parse_allowed([bad])
    with pytest.raises(ValueError, match="allow_host"):
        DownloadConfig(allow_host=["http://127.0.0.1:80/"])
    assert not set(REFUSAL_REASONS) & set(TRANSIENT)  # never retried
    for reason in REFUSAL_REASONS:
        assert failure_reason("failed_to_download", str(RefusedError(reason, "x connection refused"))) == reason


ROWS = {  # url path (or whole URL) → the reason the download must count
    "/ok-0.jpg": "success",
    "/ok-1.jpg": "success",
    "MIRROR-2": "success",
    "MIRROR-TO-OK": "success",
    "FILE": "bad_scheme",
    "DATA": "bad_scheme",
    "FTP": "bad_scheme",
    "/to-metadata": "redirect_refused",
    "/chain-1": "redirect_refused",
    "OTHER-LOOPBACK": "private_address",
    "/endless": "too_large",
    "/over-declared": "too_large",
    "/over-streamed": "too_large",
    "/drip": "timeout",
    "/bomb.png": "too_many_pixels",
}


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and skip not in p.parents
    }


def test_one_download_of_hostile_rows_counts_each_and_keeps_the_rest(tmp_path, hostile) -> None:
    """One `laionet download` run (img2dataset, one shard) over good rows and every hostile kind: each hostile row is
    counted by its reason, the good rows of the same shard are downloaded, the run's peak memory stays under 1 GB,
    and no file outside the run directory is read or written. The hostile server is named with --allow-host
    (127.0.0.1:PORT); two good rows come through a mirror given to the URL rewrite (`prepare_index`, as the acquire
    flow's `rewrite_urls` does), localhost:PORT, which is allowed without being named."""
    from laionet.images.download import prepare_index

    run = tmp_path / "run"
    run.mkdir()
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(secret)
    png = base64.b64encode(secret.read_bytes()).decode()
    os.utime(secret, (0, secret.stat().st_mtime))  # atime before mtime: a read would update it (relatime)
    special = {
        "FILE": f"file://{secret}",
        "DATA": f"data:image/png;base64,{png}",
        "FTP": f"ftp://127.0.0.1:{hostile.port}/ok-0.jpg",
        "OTHER-LOOPBACK": f"http://127.0.0.2:{hostile.port}/ok-1.jpg",  # loopback, but not the named host
        "MIRROR-2": "http://images.invalid/ok-2.jpg",
        "MIRROR-TO-OK": "http://images.invalid/to-ok",
    }
    urls = [special.get(k, f"{hostile.base}{k}") for k in ROWS]
    keys = [f"row-{i}" for i in range(len(ROWS))]
    index = pd.DataFrame({"key": keys, "url": urls, "text": list(ROWS), "wnid": "n01440764", "class_index": 0})
    index.to_parquet(run / "laionet.parquet")
    mirror = {"http://images.invalid/": f"http://localhost:{hostile.port}/"}
    prepare_index(str(run / "laionet.parquet"), str(run / "index.parquet"), rewrite=mirror)
    before = _snapshot(tmp_path, run)
    hits_before = Counter(hostile.hits)
    args = ["--index", str(run / "index.parquet"), "--out", str(run / "shards"), "--processes", "1", "--threads", "16",
            "--samples-per-shard", "100", "--timeout", "2", "--image-size", "32", "--attempts", "1",
            "--max-bytes", str(CAP), "--allow-host", f"127.0.0.1:{hostile.port}"]  # fmt: skip
    measure = (
        "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
        "print('maxrss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
    )
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", measure, sys.executable, "-m", "laionet", "download", *args],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    peak_kb = int(done.stdout.rsplit("maxrss_kb", 1)[1].split()[0])
    print(f"download of {len(ROWS)} rows: {elapsed:.1f} s, peak RSS of the run's processes {peak_kb / 1024:.0f} MB")
    assert peak_kb < 1024 * 1024, f"peak memory {peak_kb / 1024:.0f} MB"

    manifest = json.loads((run / "shards" / "_manifest.json").read_text())
    expected = Counter(ROWS.values())
    assert manifest["rows_out"] == expected.pop("success")
    assert manifest["dropped"] == dict(expected)
    listings = [p for p in (run / "shards").glob("*.parquet")]
    assert len(listings) == 1  # one shard: the good rows shared it with every hostile one
    listing = pd.read_parquet(listings[0]).set_index("key")
    assert listing.loc[keys, "reason"].tolist() == list(ROWS.values())
    tars = list((run / "shards").glob("*.tar"))
    from laionet.images.shards import iter_samples

    samples = {key: image for tar in tars for key, image, _ in iter_samples(str(tar))}
    assert sorted(samples) == [keys[i] for i, reason in enumerate(ROWS.values()) if reason == "success"]
    assert all(image.mode == "RGB" and min(image.size) == 30 for image in samples.values())
    fetched = hostile.hits - hits_before
    assert fetched["/to-metadata"] == 1 and fetched["/chain-1"] == 1 and fetched["/bomb.png"] == 1  # never retried
    assert fetched["/ok-0.jpg"] == 1  # the ftp: row never reached the server
    assert _snapshot(tmp_path, run) == before  # nothing outside the run directory written
    assert secret.stat().st_atime == 0  # ... nor read


def test_a_preset_name_with_a_path_is_an_error_naming_the_field(tmp_path) -> None:
    from laionet.core.config import load_preset
    from laionet.core.layout import accuracy_dir, intra_dir, shards_dir, variant_labels

    reference = {"kind": "imagenet-val", "paths": {"root": "val", "labels": "labels.csv"}}
    for field, data in [
        ("references", {"references": {"../../escaped": reference}}),
        ("references", {"references": {"/etc": reference}}),
        ("compare", {"compare": [["laionet", "../x"]]}),
    ]:
        preset = tmp_path / f"{field}.json"
        preset.write_text(json.dumps({"name": "bad", **data}))
        with pytest.raises(ValueError, match=rf"{field}[\s\S]*is not a plain name"):
            load_preset(str(preset))
    run = str(tmp_path / "run")
    for make in [lambda: shards_dir(run, "../x"), lambda: variant_labels(run, ".."),
                 lambda: accuracy_dir(run, "a/../../b", "m"), lambda: intra_dir(run, "a", "..", "m")]:  # fmt: skip
        with pytest.raises(ValueError, match=r"(dataset|variant|variant_b): .* is not a plain name"):
            make()
    assert shards_dir(run, "imagenet-val") == f"{run}/references/imagenet-val"
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "run").exists()


def test_an_imagenet_captions_file_name_with_a_path_is_refused_before_any_read_or_write(tmp_path) -> None:
    from laionet.images.references import ingest

    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (20, 10)).save(images / "n02129165_1.JPEG")
    outside = tmp_path / "outside.JPEG"
    Image.new("RGB", (20, 10)).save(outside)
    os.utime(outside, (0, outside.stat().st_mtime))  # a read would move atime (relatime)
    out = tmp_path / "run" / "references" / "imagenet-captions"
    for bad in ["../outside.JPEG", str(outside), "sub/../../outside.JPEG"]:
        captions = tmp_path / "captions.json"
        records = [{"filename": "n02129165_1.JPEG", "wnid": "n02129165"}, {"filename": bad, "wnid": "n02129165"}]
        captions.write_text(json.dumps(records))
        with pytest.raises(ValueError, match=r"record 1: filename: .* is not a plain name"):
            ingest("imagenet-captions", str(out), captions=captions, images=images)
    assert not out.exists()  # nothing written (the check comes before the output is touched)
    assert outside.stat().st_atime == 0  # and the file outside was never read


def test_every_pil_decode_applies_the_one_pixel_limit(tmp_path) -> None:
    """An 8,000 × 8,000 PNG (64 MP: under PIL's own default of 89 MP, over ours of 50 MP) inside a shard is refused
    without being decoded by verify, the download's and references' re-encoding, OCR, inference batches and the
    report's image reader."""
    from laionet.core.runtime import MAX_IMAGE_PIXELS, max_image_pixels
    from laionet.images.ocr import _ocr_shard
    from laionet.images.shard_writer import ShardWriter, encode_rgb_jpeg
    from laionet.images.shards import read_images
    from laionet.images.verify import verify_shard

    big = tmp_path / "big.png"
    write_png_bomb(big, 8000, 8000)
    writer = ShardWriter(str(tmp_path / "shards"), per_shard=10)
    writer.write("big", big.read_bytes(), "x", {"wnid": "n01440764", "class_index": 0})
    writer.write("small", _jpeg((1, 2, 3)), "x", {"wnid": "n01440764", "class_index": 0})
    (shard,) = writer.close()
    assert max_image_pixels() == MAX_IMAGE_PIXELS == 50_000_000
    with pytest.raises(OSError, match="pixels"):
        encode_rgb_jpeg(big.read_bytes())  # the download's finalise and the references ingest
    assert verify_shard(shard)[1] == [("big", "undecodable_image")]
    assert set(read_images(shard, {"big", "small"})) == {"small"}  # the report's thumbnails

    class Engine:
        def read(self, image) -> str:
            return ""

    record = _ocr_shard(shard, str(tmp_path / "ocr"), Engine(), {}, set())
    assert record["dropped"]["undecodable"] == 1
    from laionet.inference.batches import decode_shard

    (last,) = list(decode_shard(shard, {}, set(), batch_size=8))
    assert last["counts"]["undecodable"] == 1 and last["keys"] == ["small"]
    assert Image.MAX_IMAGE_PIXELS == 50_000_000


def test_https_is_verified_and_bounded_like_http(tmp_path, monkeypatch, hostile) -> None:
    """TLS on loopback with a self-signed certificate for 127.0.0.1: trusted only through SSL_CERT_FILE; the
    whole-response timeout covers the handshake and the body (the watchdog shuts the TLS socket)."""
    import shutil
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    tls = HostileServer(Path(os.devnull))
    tls.httpd.socket = context.wrap_socket(tls.httpd.socket, server_side=True)
    with tls:
        base, policy = f"https://127.0.0.1:{tls.port}", Policy.of([f"127.0.0.1:{tls.port}"])
        fetch_module._tls.cache_clear()
        with pytest.raises(ssl.SSLError):  # not trusted: refused by verification (no silent fallback)
            fetch(f"{base}/ok-0.jpg", policy, 5, CAP)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        fetch_module._tls.cache_clear()
        try:
            assert fetch(f"{base}/ok-0.jpg", policy, 5, CAP).data[:2] == b"\xff\xd8"
            assert _refusal(f"{base}/to-metadata", policy) == "redirect_refused"
            assert _refusal(f"{base}/over-streamed", policy) == "too_large"
            started = time.monotonic()
            with pytest.raises(TimeoutError, match="timed out"):
                fetch(f"{base}/drip", policy, 1.5, CAP)
            assert time.monotonic() - started < 3
        finally:
            fetch_module._tls.cache_clear()


def test_img2dataset_is_given_the_guarded_downloader_and_opencvs_limit(monkeypatch) -> None:
    """What `_img2dataset_download` hands img2dataset (faked here; the real run is the test above): its Downloader
    wrapped (picklable for spawned workers), OPENCV_IO_MAX_IMAGE_PIXELS set while it runs, both undone after."""
    import importlib
    import pickle

    from laionet.images import attempt as attempt_module

    seen: dict = {}

    def fake_download(**kwargs) -> None:
        seen["env"] = os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS")
        seen["downloader"] = fake.Downloader(thread_count=1)
        seen["kwargs"] = kwargs

    fake = types.SimpleNamespace(Downloader=dict, LoggerProcess=object, download=fake_download)
    real_import = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda n: fake if n == "img2dataset.main" else real_import(n))
    monkeypatch.delenv("OPENCV_IO_MAX_IMAGE_PIXELS", raising=False)
    guard = attempt_module._Guard(Policy.of(["mirror.lan"]), 1000, 1234)
    attempt_module._img2dataset_download(guard, url_list="x")
    assert seen["env"] == "1234" and seen["kwargs"] == {"url_list": "x"}
    wrapped = seen["downloader"]
    assert isinstance(wrapped, attempt_module._GuardedDownloader) and wrapped.inner == {"thread_count": 1}
    again = pickle.loads(pickle.dumps(wrapped))  # as img2dataset sends it to its worker processes
    assert again.inner == {"thread_count": 1} and again.guard == guard
    assert fake.Downloader is dict and "OPENCV_IO_MAX_IMAGE_PIXELS" not in os.environ  # undone
