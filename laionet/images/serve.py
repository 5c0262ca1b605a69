"""A loopback HTTP image server for offline runs: serves the files under a root directory, rendering SVG files to
PNG (cairosvg), so the openclipart corpus can be downloaded like web images.

Each SVG is rendered once: the PNG goes to an on-disk cache keyed by the SVG's resolved path, size and mtime and the
render width (``cache_dir``; default ``$LAIONET_CACHE/svg-png``, else ``$XDG_CACHE_HOME/laionet/svg-png`` or
``~/.cache/laionet/svg-png``, else a directory under the system's temp dir), shared by every server instance and
every run; an SVG that cannot be rendered is remembered too. An edited SVG (new size or mtime) is rendered again.

Misses are rendered in ``render_workers`` spawned processes (default: one per core, at most 8), so a cold cache
renders on every core and outside the GIL of the process that serves (the demo's flow process); ``render_workers=0``
renders in the serving thread.

Binds 127.0.0.1 only, on a free port; use it as a context manager. Requests outside the root or for missing files
get 404; SVGs that cannot be rendered get 500 (the download stage counts both).
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socketserver
import tempfile
import threading
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlparse

from laionet.core.runtime import cores

MAX_RENDER_WORKERS = 8
_RENDER_VERSION = "1"  # bump when the rendering (options, library) changes what a cached PNG would hold


def default_cache_dir() -> Path:
    """Where rendered SVGs are kept between runs (see the module docstring)."""
    if os.environ.get("LAIONET_CACHE"):
        return Path(os.environ["LAIONET_CACHE"]) / "svg-png"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "laionet" / "svg-png"


def render_svg(path: Path, width: int) -> bytes:
    """The SVG at ``path`` as a PNG ``width`` pixels wide (cairosvg). Raises whatever cairosvg raises."""
    import cairosvg

    png = cairosvg.svg2png(url=str(path), output_width=width)
    if not isinstance(png, bytes):
        raise ValueError(f"cairosvg returned no PNG for {path}")
    return png


class RenderWorkerLostError(RuntimeError):
    """A render process died before answering: the SVG may be fine, so nothing is remembered about it."""


def _render_or_error(path: Path, width: int) -> tuple[bytes | None, str | None]:
    """``render_svg`` in a render worker: (PNG, None), or (None, the error as text) — an exception of cairosvg's
    need not survive the trip back between processes."""
    try:
        return render_svg(path, width), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


class SvgCache:
    """Rendered PNGs on disk, one file per (SVG path, size, mtime, width); each rendered at most once.

    ``get`` returns the PNG (rendering and storing it on a miss) or raises ``ValueError`` for an SVG that could not
    be rendered (remembered in a ``.err`` file beside where its PNG would be). Concurrent requests for the same SVG in
    one process wait for one rendering; files are written under a temporary name and renamed, so another process
    never reads half a PNG. ``renders`` counts this instance's renderings. With ``workers`` > 0 a miss is rendered in
    a pool of that many spawned processes (started on the first miss; ``close`` ends it), else in the calling thread.
    """

    def __init__(self, directory: Path | None = None, workers: int = 0) -> None:
        self.directory = directory if directory is not None else default_cache_dir()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only home: a cache for this machine's session still beats rendering per request
            self.directory = Path(tempfile.gettempdir()) / "laionet-svg-png"
            self.directory.mkdir(parents=True, exist_ok=True)
        if workers < 0:
            raise ValueError(f"render workers must be 0 (render in the calling thread) or more, not {workers}")
        self.workers = workers
        self.renders = 0
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._pool: Executor | None = None

    def _render(self, path: Path, width: int) -> bytes:
        if self.workers == 0:
            return render_svg(path, width)
        with self._guard:
            if self._pool is None:
                import multiprocessing

                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            pool = self._pool
        try:
            png, error = pool.submit(_render_or_error, path, width).result()
        except BrokenProcessPool as exc:  # a worker died (killed, or crashed inside the renderer): not this SVG's fault
            with self._guard:
                if self._pool is pool:
                    self._pool = None  # the next miss starts a new pool
            raise RenderWorkerLostError(f"the render process died while rendering {path}") from exc
        if png is None:
            raise ValueError(error)
        return png

    def close(self) -> None:
        """End the render processes, if any were started (the cache on disk stays)."""
        with self._guard:
            pool, self._pool = self._pool, None
            self.workers = 0  # a request still in flight renders in its own thread rather than start a new pool
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def key(self, path: Path, width: int) -> str:
        stat = path.stat()
        ident = f"{_RENDER_VERSION}\0{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{width}"
        return hashlib.sha256(ident.encode()).hexdigest()[:32]

    def get(self, path: Path, width: int) -> bytes:
        key = self.key(path, width)
        png, err = self.directory / key[:2] / f"{key}.png", self.directory / key[:2] / f"{key}.err"
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if png.is_file():
                return png.read_bytes()
            if err.is_file():
                raise ValueError(f"{path} could not be rendered: {err.read_text()}")
            with self._guard:
                self.renders += 1
            try:
                data = self._render(path, width)
            except RenderWorkerLostError:  # not remembered: a later request tries again (a 500 the download retries)
                raise
            except Exception as exc:  # a broken SVG: remembered, so it is not tried again on every request
                _write_atomic(err, f"{type(exc).__name__}: {exc}".encode())
                raise ValueError(f"{path} could not be rendered: {exc}") from exc
            _write_atomic(png, data)
            return data


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _QuietServer(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hung up (timeout, cancelled download) is not worth a traceback on the console."""


class ImageServer:
    """``with ImageServer(root) as base_url: ...`` serves ``root`` at ``base_url`` (``http://127.0.0.1:<port>``).

    SVGs are rendered ``svg_width`` pixels wide through ``SvgCache(cache_dir, render_workers)`` (``self.cache``);
    ``render_workers`` None: one per core, at most ``MAX_RENDER_WORKERS`` (each holds cairosvg; a big machine's cores
    would mostly wait for requests).
    """

    def __init__(
        self, root: Path, svg_width: int = 512, cache_dir: Path | None = None, render_workers: int | None = None
    ) -> None:
        self.root = root.resolve()
        self.svg_width = svg_width
        workers = render_workers if render_workers is not None else min(cores(), MAX_RENDER_WORKERS)
        self.cache = SvgCache(cache_dir, workers)
        self._httpd: socketserver.ThreadingTCPServer | None = None

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        root, width, cache = self.root, self.svg_width, self.cache

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: bytes = b"", kind: str = "application/octet-stream") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = (root / unquote(urlparse(self.path).path).lstrip("/")).resolve()
                if root not in path.parents or not path.is_file():
                    self._send(404)
                    return
                if path.suffix.lower() != ".svg":
                    self._send(200, path.read_bytes())
                    return
                try:
                    png = cache.get(path, width)
                except Exception:  # a broken SVG is the client's problem to count, not the server's to die of
                    self._send(500)
                    return
                self._send(200, png, "image/png")

        return Handler

    def __enter__(self) -> str:
        self._httpd = _QuietServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self.cache.close()
