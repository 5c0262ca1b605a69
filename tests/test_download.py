"""Downloads over a loopback HTTP server started by the test (no network)."""

import collections
import http.server
import io
import socketserver
import threading
import time

import pandas as pd
import pytest
from PIL import Image

from laionet.images.attempt import DownloadConfig
from laionet.images.download import failure_reason, run_download
from laionet.images.shards import iter_samples, original_key, safe_key


def _image(mode: str, fmt: str, color) -> bytes:
    out = io.BytesIO()
    image = Image.new(mode, (64, 48), color)
    if mode == "P":
        image.putpalette([0, 0, 0, 200, 30, 30] * 128)
    image.save(out, format=fmt)
    return out.getvalue()


FILES = {
    "/rgb.jpg": (_image("RGB", "JPEG", (255, 0, 0)), {}),
    "/gray.png": (_image("L", "PNG", 128), {}),
    "/palette.png": (_image("P", "PNG", 1), {}),
    "/cmyk.jpg": (_image("CMYK", "JPEG", (0, 255, 255, 0)), {}),
    "/alpha.png": (_image("RGBA", "PNG", (0, 0, 255, 128)), {}),
    "/noai.jpg": (_image("RGB", "JPEG", (0, 255, 0)), {"X-Robots-Tag": "noai"}),
    "/corrupt.jpg": (b"\xff\xd8\xff\xe0 not really a jpeg", {}),
    "/flaky.jpg": (_image("RGB", "JPEG", (9, 9, 9)), {}),
}


@pytest.fixture
def server():
    hits: collections.Counter[str] = collections.Counter()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            hits[self.path] += 1
            if self.path == "/slow.jpg":
                time.sleep(2.5)
            if self.path == "/flaky.jpg" and hits[self.path] == 1:
                self.send_response(503)
                self.end_headers()
                return
            if self.path not in FILES:
                self.send_response(404)
                self.end_headers()
                return
            data, headers = FILES[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


NAMES = ["rgb.jpg", "gray.png", "palette.png", "cmyk.jpg", "alpha.png", "noai.jpg", "corrupt.jpg", "missing.jpg",
         "slow.jpg", "flaky.jpg"]  # fmt: skip


def test_download_converts_counts_retries_and_resumes(tmp_path, server) -> None:
    base, hits = server
    index = pd.DataFrame(
        {
            "key": [f"part-0/{i}.x" for i in range(len(NAMES))],  # '/' and '.' must survive as __key__
            "url": [f"{base}/{name}" for name in NAMES],
            "text": NAMES,
            "wnid": ["n02129165"] * len(NAMES),
            "class_index": [291] * len(NAMES),
        }
    )
    index_path = tmp_path / "index.parquet"
    index.to_parquet(index_path)
    config = DownloadConfig(
        processes=1, threads=4, timeout=1, samples_per_shard=4, image_size=32, retries=0, allow_host=["127.0.0.1"]
    )
    manifest = run_download(str(index_path), str(tmp_path / "shards"), config)
    assert manifest.rows_in == 10 and manifest.rows_in == manifest.rows_out + sum(manifest.dropped.values())
    assert manifest.rows_out == 6  # rgb, gray, palette, cmyk, alpha, and flaky on its second attempt
    assert manifest.dropped == {"opt_out": 1, "decode_error": 1, "http_404": 1, "timeout": 1}
    samples = [s for shard in manifest.outputs for s in iter_samples(shard)]
    keys = {key for key, _, _ in samples}
    assert keys == {f"part-0/{i}.x" for i in (0, 1, 2, 3, 4, 9)}
    for key, image, meta in samples:
        assert image.mode == "RGB" and max(image.size) <= 48 and min(image.size) == 32
        assert meta["key"] == key and meta["wnid"] == "n02129165" and meta["class_index"] == 291
    assert hits["/flaky.jpg"] == 2 and hits["/rgb.jpg"] == 1 and hits["/slow.jpg"] == 2  # transient ones retried
    # a later run retries only the transient failure; finished rows are not fetched again
    again = run_download(str(index_path), str(tmp_path / "shards"), config)
    assert hits["/rgb.jpg"] == 1 and hits["/slow.jpg"] == 4 and hits["/missing.jpg"] == 1
    assert again.rows_out == 6 and again.dropped["timeout"] == 1


def test_keys_are_tar_safe_and_reversible() -> None:
    for key in ["part-0/12", "a.b.c", "ünï code/ 1%"]:
        safe = safe_key(key)
        assert "/" not in safe and "." not in safe and original_key(safe) == key


def test_failure_reasons() -> None:
    assert failure_reason("success", None) == "success"
    assert failure_reason("failed_to_download", "Use of image disallowed by X-Robots-Tag directive") == "opt_out"
    assert failure_reason("failed_to_download", "HTTP Error 404: Not Found") == "http_404"
    assert failure_reason("failed_to_download", "HTTP Error 503: Service Unavailable") == "http_error"
    assert failure_reason("failed_to_download", "timed out") == "timeout"
    assert failure_reason("failed_to_resize", "Image decoding error") == "decode_error"


def test_shards_finished_before_a_kill_are_kept(tmp_path, server) -> None:
    """img2dataset finished its shards but the run died before they were finalised: the next run keeps them."""
    from laionet.images.attempt import run_attempt

    base, hits = server
    names = ["rgb.jpg", "gray.png", "missing.jpg"]
    index = pd.DataFrame(
        {"key": names, "url": [f"{base}/{n}" for n in names], "text": names, "wnid": ["n1"] * 3, "class_index": [0] * 3}
    )
    index.to_parquet(tmp_path / "index.parquet")
    config = DownloadConfig(
        processes=1, threads=2, timeout=1, samples_per_shard=2, image_size=32, retries=0, allow_host=["127.0.0.1"]
    )
    run_attempt(index, str(tmp_path / "out" / "_attempts" / "000"), config)  # the part of a run that got done
    assert hits["/rgb.jpg"] == 1
    manifest = run_download(str(tmp_path / "index.parquet"), str(tmp_path / "out"), config)
    assert hits["/rgb.jpg"] == 1 and hits["/missing.jpg"] == 1  # nothing fetched again
    assert (manifest.rows_out, manifest.dropped) == (2, {"http_404": 1})


def test_a_killed_download_resumes_without_refetching_finished_shards(tmp_path) -> None:
    """`laionet download` is SIGKILLed (whole process group) once a few shards are done; the re-run completes,
    fetches no image of a finished shard again, and leaves no temporary file behind."""
    import os
    import signal
    import subprocess
    import sys

    hits: collections.Counter[str] = collections.Counter()
    payload = _image("RGB", "JPEG", (10, 20, 30))

    class Slow(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            hits[self.path] += 1
            time.sleep(0.2)
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Slow)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    n = 60
    index = pd.DataFrame(
        {"key": [f"k{i}" for i in range(n)], "url": [f"{base}/{i}.jpg" for i in range(n)], "text": "x",
         "wnid": "n1", "class_index": 0}
    )  # fmt: skip
    index.to_parquet(tmp_path / "index.parquet")
    out = tmp_path / "out"
    args = ["--index", str(tmp_path / "index.parquet"), "--out", str(out), "--processes", "1", "--threads", "1",
            "--samples-per-shard", "5", "--timeout", "5", "--image-size", "32",
            "--allow-host", "127.0.0.1"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "laionet", "download", *args],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    raw = out / "_attempts" / "000" / "shards"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(raw.glob("*_stats.json"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name.removesuffix("_stats.json") for p in raw.glob("*_stats.json"))
    assert 2 <= len(finished) < n // 5, "the kill must land mid-download"
    fetched_before = sum(hits.values())
    assert fetched_before < n
    finished_keys = {key for shard in finished for key in pd.read_parquet(raw / f"{shard}.parquet")["sample_key"]}
    config = DownloadConfig(
        processes=1, threads=8, samples_per_shard=5, timeout=5, image_size=32, allow_host=[base.removeprefix("http://")]
    )
    manifest = run_download(str(tmp_path / "index.parquet"), str(out), config)
    httpd.shutdown()
    httpd.server_close()
    assert (manifest.rows_in, manifest.rows_out, manifest.dropped) == (n, n, {})
    assert not (out / "_attempts").exists()  # a complete download keeps no raw copy of its images
    assert all(hits[f"/{k.removeprefix('k')}.jpg"] == 1 for k in finished_keys)  # not fetched again
    assert not list(out.rglob("*.tmp-*"))
    assert sorted(k for s in manifest.outputs for k, _, _ in iter_samples(s)) == sorted(index["key"])


def test_download_on_rays_distributor_gives_the_multiprocessing_result(tmp_path, server) -> None:
    """img2dataset's `ray` distributor (shards as Ray tasks; here a local Ray instance started for the download, as on
    a cluster at `ray_address`): the same samples, counts and guard (the opt-out refused) as the default one."""
    base, _ = server
    names = ["rgb.jpg", "gray.png", "noai.jpg", "missing.jpg", "palette.png"]
    n = len(names)
    index = pd.DataFrame({"key": [f"k{i}" for i in range(n)], "url": [f"{base}/{x}" for x in names], "text": names,
                          "wnid": ["n02129165"] * n, "class_index": [291] * n})  # fmt: skip
    index.to_parquet(tmp_path / "index.parquet")
    common = dict(processes=1, threads=2, timeout=2, samples_per_shard=2, image_size=32, retries=0, attempts=1,
                  allow_host=["127.0.0.1"])  # fmt: skip
    import glob

    sessions = set(glob.glob("/tmp/ray/session_2*"))  # Ray's session directories (its default temp dir)
    result = {}
    for distributor in ("multiprocessing", "ray"):
        config = DownloadConfig(distributor=distributor, **common)
        manifest = run_download(str(tmp_path / "index.parquet"), str(tmp_path / distributor), config)
        keys = sorted(key for shard in manifest.outputs for key, _, _ in iter_samples(shard))
        result[distributor] = (manifest.rows_out, manifest.dropped, keys)
    assert result["ray"] == result["multiprocessing"] == (3, {"opt_out": 1, "http_404": 1}, ["k0", "k1", "k4"])
    assert set(glob.glob("/tmp/ray/session_2*")) - sessions, "the ray distributor started a Ray instance"
