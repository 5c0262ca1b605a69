"""Fetching one untrusted image URL: the URL policy and the bounds, checked before and while bytes arrive.

LAION's URLs are written by strangers, so ``fetch`` opens only what it should and never more than it should:

- **Schemes**: ``http`` and ``https`` only (``file:``, ``data:``, ``ftp:`` ... are refused: ``bad_scheme``).
- **Addresses**: the host is resolved here and every address it resolves to must be public (not loopback, private,
  link-local, multicast, reserved, unspecified or shared: ``ipaddress``'s ``is_global``), else ``private_address``.
  The socket is connected to an address that was checked (no second resolution), and the connected peer is checked
  again, so a DNS answer that changes between check and use (rebinding) gains nothing. Redirects are followed by hand
  (at most ``MAX_REDIRECTS``), each hop checked the same way; a hop to a refused scheme or address, or one hop too
  many, is ``redirect_refused``. ``Policy.allowed`` names ``HOST[:PORT]`` exceptions (a loopback mirror, the demo's
  server); an allowed host is connected whatever it resolves to. Environment proxies are not used: the address
  checked must be the address connected.
- **Size**: a ``Content-Length`` over ``max_bytes`` is refused before the body, and the body is counted while it
  streams (chunked or endless responses included): ``too_large``.
- **Time**: ``timeout`` covers the whole exchange — connect, headers, body —, not each read: every socket operation
  gets the time left, and a watchdog shuts the socket at the deadline (a server dripping bytes cannot keep it open).
  Name resolution is bounded by the system resolver's own timeout.
- **Pixels**: ``image_pixels`` reads the dimensions from the image header (PIL, lazily: nothing is decoded), so the
  caller can refuse a small file that declares a huge image (``too_many_pixels``) before anything decodes it.

Refusals raise ``RefusedError`` whose message starts ``refused (<reason>)``; ``refusal_reason`` reads the reason back
from such a message (img2dataset passes error messages, not exceptions). ``laionet.images.attempt`` is the only
user: it gives this fetch to img2dataset (see its module docstring). Standard library only, PIL for headers.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import io
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.message import Message
from urllib.parse import SplitResult, quote, urljoin, urlsplit

REFUSAL_REASONS = ("bad_scheme", "private_address", "redirect_refused", "too_large", "too_many_pixels")
SCHEMES = {"http": 80, "https": 443}
MAX_REDIRECTS = 10
REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 1 << 16
_REFUSAL = re.compile(r"^refused \((\w+)\)")


class RefusedError(Exception):
    """A URL or response refused by the policy; ``reason`` is one of ``REFUSAL_REASONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"refused ({reason}): {detail}")
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        return (_refused, (self.reason, str(self)))


def _refused(reason: str, message: str) -> RefusedError:
    return RefusedError(reason, message.split(": ", 1)[-1])


def refusal_reason(message: str | None) -> str | None:
    """The reason of a ``RefusedError`` message (``refused (too_large): ...`` → ``too_large``), or None."""
    match = _REFUSAL.match(message or "")
    return match.group(1) if match and match.group(1) in REFUSAL_REASONS else None


def parse_allowed(entries: Iterable[str]) -> frozenset[tuple[str, int | None]]:
    """``HOST[:PORT]`` entries (``127.0.0.1:8000``, ``mirror.lan``, ``[::1]:8080``) → (lower-case host, port or None).

    Raises:
        ValueError: an entry with a scheme, a path, an empty host or a port that is not a number.
    """
    out = set()
    for entry in entries:
        text = entry.strip()
        if not text or "/" in text or "@" in text:
            raise ValueError(f"allow_host {entry!r}: expected HOST or HOST:PORT (no scheme, no path)")
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = rest.removeprefix(":") if rest.startswith(":") else ("" if not rest else None)
        elif text.count(":") == 1:
            host, port = text.split(":")
        else:
            host, port = text, ""
        if not host or port is None or (port and not port.isdigit()):
            raise ValueError(f"allow_host {entry!r}: expected HOST or HOST:PORT (no scheme, no path)")
        out.add((host.lower(), int(port) if port else None))
    return frozenset(out)


def host_port(url: str) -> str:
    """``HOST:PORT`` of an http(s) URL (the default port filled in), for ``allow_host``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or SCHEMES.get(parts.scheme.lower(), 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_public(address: str) -> bool:
    """Whether an IP address may be fetched from without being named: globally routable and not multicast."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_link_local)


@dataclass(frozen=True)
class Policy:
    """What may be fetched: ``allowed`` hosts (``parse_allowed``) are exempt from the address check."""

    allowed: frozenset[tuple[str, int | None]] = field(default_factory=frozenset)

    @classmethod
    def of(cls, allow_host: Iterable[str] = ()) -> Policy:
        return cls(parse_allowed(allow_host))

    def allows(self, host: str, port: int) -> bool:
        host = host.lower()
        return (host, port) in self.allowed or (host, None) in self.allowed


@dataclass
class Response:
    """A fetched body with the final URL and the last response's headers."""

    url: str
    headers: Message
    data: bytes


class _Deadline:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.end = time.monotonic() + timeout

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"timed out: the whole response took over {self.timeout:g} s")
        return left


def _connect(host: str, port: int, policy: Policy, deadline: _Deadline, reason: str) -> socket.socket:
    """A TCP socket to ``host:port`` connected to an address that passed the policy (checked again once connected)."""
    allowed = policy.allows(host, port)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not allowed:
        bad = sorted({str(info[4][0]) for info in infos if not is_public(str(info[4][0]))})
        if bad:
            raise RefusedError(reason, f"{host} resolves to {', '.join(bad)} (not a public address)")
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(deadline.left())
            sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        peer = str(sock.getpeername()[0])
        if not allowed and not is_public(peer):  # the address actually connected
            sock.close()
            raise RefusedError(reason, f"{host} connected to {peer} (not a public address)")
        return sock
    raise error or OSError(f"connection to {host}:{port} failed: no address")


def _selector(parts: SplitResult) -> str:
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    query = parts.query
    return f"{path}?{quote(query, safe='/%:@!$&()*+,;=-._~?')}" if query else path


def fetch(
    url: str,
    policy: Policy,
    timeout: float,
    max_bytes: int,
    headers: dict[str, str] | None = None,
    check_headers: Callable[[Message], str | None] | None = None,
) -> Response:
    """GET ``url`` under ``policy``, following redirects, within ``timeout`` seconds and ``max_bytes`` of body.

    ``check_headers(headers)`` may return a message to stop before the body (an opt-out directive): it is raised as
    ``PermissionError(message)``.

    Raises:
        RefusedError: bad_scheme, private_address, redirect_refused, too_large.
        TimeoutError: the whole exchange took longer than ``timeout``.
        http.client.HTTPException: ``HTTP Error <status>: <reason>`` for a status of 400 or more, or a broken response.
        OSError: connection errors.
    """
    deadline = _Deadline(timeout)
    for hop in range(MAX_REDIRECTS + 1):
        reason = "redirect_refused" if hop else "bad_scheme"
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES or not parts.hostname:
            raise RefusedError(reason, f"{url[:200]!r}: only http(s) URLs with a host are fetched")
        host, port = parts.hostname, parts.port or SCHEMES[scheme]
        sock = _connect(host, port, policy, deadline, "redirect_refused" if hop else "private_address")
        current = [sock]  # the socket the watchdog shuts at the deadline (the TLS one once wrapped)
        watchdog = threading.Timer(deadline.end - time.monotonic(), _shut, (current,))
        watchdog.daemon = True
        watchdog.start()
        conn: http.client.HTTPConnection | None = None
        try:
            if scheme == "https":  # certificate and host name verified; the handshake is under the watchdog too
                sock = current[0] = _tls().wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
                sock.settimeout(deadline.left())
                sock.do_handshake()
                conn = http.client.HTTPSConnection(host, port, timeout=deadline.left(), context=_tls())
            else:
                conn = http.client.HTTPConnection(host, port, timeout=deadline.left())
            conn.sock = sock  # already connected to a checked address: http.client must not connect again
            conn.request("GET", _selector(parts), headers=headers or {})
            response = conn.getresponse()
            location = response.getheader("Location")
            if response.status in REDIRECTS and location:
                url = urljoin(url, location)
                continue
            if not 200 <= response.status < 300:
                raise http.client.HTTPException(f"HTTP Error {response.status}: {response.reason}")
            if check_headers is not None and (message := check_headers(response.msg)):
                raise PermissionError(message)
            return Response(url, response.msg, _read(response, sock, deadline, max_bytes))
        except (OSError, http.client.HTTPException) as exc:
            if time.monotonic() >= deadline.end and not isinstance(exc, PermissionError):
                raise TimeoutError(f"timed out: the whole response took over {timeout:g} s") from exc
            raise
        finally:
            watchdog.cancel()
            if conn is not None:
                conn.close()
            sock.close()
    raise RefusedError("redirect_refused", f"more than {MAX_REDIRECTS} redirects")


@functools.cache
def _tls() -> ssl.SSLContext:
    """The system's default TLS context (certificates verified; ``SSL_CERT_FILE`` honoured), one per process."""
    return ssl.create_default_context()


def _shut(current: list[socket.socket]) -> None:
    with contextlib.suppress(OSError):
        current[0].shutdown(socket.SHUT_RDWR)


def _read(response: http.client.HTTPResponse, sock: socket.socket, deadline: _Deadline, max_bytes: int) -> bytes:
    """The body, counted while it streams: over ``max_bytes`` → ``RefusedError('too_large')``."""
    declared = response.getheader("Content-Length")
    if declared and declared.strip().isdigit() and int(declared) > max_bytes:
        raise RefusedError("too_large", f"Content-Length {int(declared)} > {max_bytes} bytes")
    body = bytearray()
    while True:
        sock.settimeout(deadline.left())
        chunk = response.read1(_CHUNK)
        if not chunk:
            deadline.left()  # a watchdog shutdown reads like the end of the body: it is a timeout
            return bytes(body)
        body += chunk
        if len(body) > max_bytes:
            raise RefusedError("too_large", f"body over {max_bytes} bytes")


def image_pixels(data: bytes) -> int | None:
    """Pixels (width × height) declared by an image's header, read without decoding it; None if PIL does not know the
    format (a decoder that does still applies its own limit, e.g. ``OPENCV_IO_MAX_IMAGE_PIXELS``)."""
    import sys

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.width * image.height
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # over PIL's own limit
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return int(found.group(1)) if found else sys.maxsize
    except Exception:  # PIL raises many types for data it cannot identify
        return None
