"""A loopback HTTP image server for offline runs: serves the files under a root directory, rendering SVG files to
PNG on request (cairosvg), so the openclipart corpus can be downloaded like web images.

Binds 127.0.0.1 only, on a free port; use it as a context manager. Requests outside the root or for missing files
get 404; SVGs that cannot be rendered get 500 (the download stage counts both).
"""

from __future__ import annotations

import http.server
import socketserver
import threading
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlparse


class _QuietServer(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hung up (timeout, cancelled download) is not worth a traceback on the console."""


class ImageServer:
    """``with ImageServer(root) as base_url: ...`` serves ``root`` at ``base_url`` (``http://127.0.0.1:<port>``)."""

    def __init__(self, root: Path, svg_width: int = 512) -> None:
        self.root = root.resolve()
        self.svg_width = svg_width
        self._httpd: socketserver.ThreadingTCPServer | None = None

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        root, width = self.root, self.svg_width

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
                    import cairosvg

                    png = cairosvg.svg2png(url=str(path), output_width=width)
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
