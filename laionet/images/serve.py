"""A loopback HTTP image server for offline runs: serves the files under a root directory, rendering SVG files to
PNG (cairosvg), so the openclipart corpus can be downloaded like web images.

Each SVG is rendered once: the PNG goes to an on-disk cache keyed by the SVG's resolved path, size and mtime and the
render width (``cache_dir``; default ``$LAIONET_CACHE/svg-png``, else ``$XDG_CACHE_HOME/laionet/svg-png`` or
``~/.cache/laionet/svg-png``, else a directory under the system's temp dir), shared by every server instance and
every run; an SVG that cannot be rendered is remembered too. An edited SVG (new size or mtime) is rendered again.

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
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlparse

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


class SvgCache:
    """Rendered PNGs on disk, one file per (SVG path, size, mtime, width); each rendered at most once.

    ``get`` returns the PNG (rendering and storing it on a miss) or raises ``ValueError`` for an SVG that could not
    be rendered (remembered in a ``.err`` file beside where its PNG would be). Concurrent requests for the same SVG in
    one process wait for one rendering; files are written under a temporary name and renamed, so another process
    never reads half a PNG. ``renders`` counts this instance's cairosvg calls.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory if directory is not None else default_cache_dir()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only home: a cache for this machine's session still beats rendering per request
            self.directory = Path(tempfile.gettempdir()) / "laionet-svg-png"
            self.directory.mkdir(parents=True, exist_ok=True)
        self.renders = 0
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

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
                data = render_svg(path, width)
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

    SVGs are rendered ``svg_width`` pixels wide through ``SvgCache(cache_dir)`` (``self.cache``).
    """

    def __init__(self, root: Path, svg_width: int = 512, cache_dir: Path | None = None) -> None:
        self.root = root.resolve()
        self.svg_width = svg_width
        self.cache = SvgCache(cache_dir)
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
