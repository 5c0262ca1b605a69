"""Download and OCR throughput on this machine, against a loopback HTTP server started by the script.

Download: ``--images`` generated 256x256 JPEGs served over 127.0.0.1 (each response delayed by ``--latency``, as a
web server's would be), fetched by the download stage
(img2dataset, processes x threads, resize, re-encode, final shards) vs a plain sequential loop (urllib + PIL resize +
JPEG encode) on ``--baseline`` of them. OCR: RapidOCR on ``--ocr`` images (``benchmarks/bench_ocr.py`` compares its
engines). Prints images/s and the ratio.

The demo's server (``--svgs``): the first ``--svgs`` openclipart SVGs fetched through ``ImageServer`` twice, each time
from a new server instance on one (new, empty) PNG cache — the first serve renders each SVG with cairosvg in the
server's render processes, the second (a re-run of the demo) reads the cache — against a first serve that renders in
the serving threads (the server before its render processes) and rendering per request (before the cache), all with
``--svg-threads`` concurrent requests. ``--only-svgs`` skips the rest.

    .venv/bin/python benchmarks/bench_download.py [--images 2000] [--baseline 200] [--ocr 20] [--svgs 200]
"""

from __future__ import annotations

import argparse
import http.server
import io
import os
import socketserver
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from laionet.core.runtime import cores
from laionet.images.attempt import DownloadConfig
from laionet.images.download import run_download
from laionet.images.ocr import RapidOcrEngine


def _jpeg(i: int) -> bytes:
    image = Image.new("RGB", (256, 256), (i % 256, (i * 7) % 256, (i * 13) % 256))
    ImageDraw.Draw(image).text((20, 100), f"sample {i}", fill="white", font=ImageFont.load_default(size=28))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def serve(payloads: list[bytes], latency: float) -> str:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            time.sleep(latency)  # a web server's response time; loopback alone has none
            data = payloads[int(self.path.strip("/").split(".")[0]) % len(payloads)]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}"


def baseline(urls: list[str]) -> float:
    t = time.perf_counter()
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as response:
            image = Image.open(io.BytesIO(response.read())).convert("RGB")
        image.thumbnail((224, 224))
        image.save(io.BytesIO(), format="JPEG", quality=95)
    return len(urls) / (time.perf_counter() - t)


def _fetch_all(urls: list[str], threads: int) -> tuple[float, int]:
    from concurrent.futures import ThreadPoolExecutor

    def get(url: str) -> int:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                return len(response.read())
        except OSError:
            return 0

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        sizes = list(pool.map(get, urls))
    return time.perf_counter() - t, sum(1 for size in sizes if size)


def bench_svgs(count: int, threads: int, root: Path) -> None:
    """First and second serve of ``count`` SVGs through the demo's server, and rendering per request."""
    from laionet.images import serve

    svgs = sorted(root.rglob("*.svg"))[:count]
    if not svgs:
        print(f"no SVGs under {root} (Debian package openclipart-svg): skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        urls = [f"/{p.relative_to(root)}" for p in svgs]
        rows = []
        workers = cores()
        # the old first serve (rendered in the serving threads, one GIL) on a cache of its own, then the default
        serves = (
            ("first serve, rendered in serving threads", Path(tmp) / "threads", 0),
            (f"first serve, {workers} render processes", cache, None),
            ("second serve (new server, same cache)", cache, None),
        )
        for label, directory, render_workers in serves:
            server = serve.ImageServer(root, cache_dir=directory, render_workers=render_workers)
            with server as base:
                seconds, ok = _fetch_all([base + u for u in urls], threads)
            rows.append((label, seconds, ok, server.cache.renders))
        per_request = serve.SvgCache.get
        serve.SvgCache.get = lambda self, path, width: serve.render_svg(path, width)  # type: ignore[method-assign]
        try:
            with serve.ImageServer(root, cache_dir=cache, render_workers=0) as base:
                seconds, ok = _fetch_all([base + u for u in urls], threads)
            rows.append(("rendering per request (no cache)", seconds, ok, len(urls)))
        finally:
            serve.SvgCache.get = per_request  # type: ignore[method-assign]
    print(
        f"demo server: {len(svgs)} openclipart SVGs, {threads} concurrent requests, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    for label, seconds, ok, renders in rows:
        print(f"  {label:<40} {seconds:7.2f} s  {ok / seconds:8.1f} images/s  ({ok} served, {renders} renders)")
    print(f"  first serve, render processes vs serving threads: {rows[0][1] / rows[1][1]:.2f}x faster")
    print(f"  second serve vs rendering per request: {rows[3][1] / rows[2][1]:.1f}x faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--baseline", type=int, default=200)
    parser.add_argument("--ocr", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the server waits before answering")
    parser.add_argument("--svgs", type=int, default=200, help="openclipart SVGs served twice (0: skip)")
    parser.add_argument("--svg-threads", type=int, default=16)
    parser.add_argument("--svg-root", default="/usr/share/openclipart/svg")
    parser.add_argument("--only-svgs", action="store_true")
    args = parser.parse_args()
    if args.svgs:
        bench_svgs(args.svgs, args.svg_threads, Path(args.svg_root))
    if args.only_svgs:
        return
    payloads = [_jpeg(i) for i in range(50)]
    base = serve(payloads, args.latency)
    urls = [f"{base}/{i}.jpg" for i in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "index.parquet"
        pd.DataFrame({"key": [f"k/{i}" for i in range(len(urls))], "url": urls, "text": "x", "wnid": "n1",
                      "class_index": 0}).to_parquet(index)  # fmt: skip
        config = DownloadConfig(image_size=224, threads=32, samples_per_shard=1000)
        t = time.perf_counter()
        manifest = run_download(str(index), str(Path(tmp) / "shards"), config)
        ours = manifest.rows_out / (time.perf_counter() - t)
    plain = baseline(urls[: args.baseline])
    engine = RapidOcrEngine()
    images = [Image.open(io.BytesIO(p)).convert("RGB") for p in payloads[: args.ocr]]
    engine.read(images[0])  # warm-up
    t = time.perf_counter()
    for image in images:
        engine.read(image)
    ocr_rate = len(images) / (time.perf_counter() - t)
    print(f"{os.cpu_count()} cores; loopback server in this process, {args.latency * 1000:.0f} ms per response")
    print(f"download stage ({config.processes} processes x {config.threads} threads): {ours:8.1f} images/s "
          f"({manifest.rows_out}/{manifest.rows_in} downloaded)")  # fmt: skip
    print(f"sequential urllib + PIL loop:                  {plain:8.1f} images/s   ratio {ours / plain:.1f}x")
    print(f"OCR (RapidOCR, 256x256, 1 process):            {ocr_rate:8.1f} images/s")


if __name__ == "__main__":
    main()
