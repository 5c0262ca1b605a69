import urllib.error
import urllib.request
from pathlib import Path

import pytest

from laionet.images.serve import ImageServer


def test_image_server_renders_svg_and_refuses_escapes(tmp_path) -> None:
    (tmp_path / "a.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="5"><rect width="10" height="5"/></svg>'
    )
    (tmp_path / "b.svg").write_text("<svg not really")
    (tmp_path / "c.txt").write_text("plain")
    with ImageServer(tmp_path, svg_width=40, cache_dir=tmp_path / "cache") as base:
        with urllib.request.urlopen(f"{base}/a.svg") as response:
            assert response.headers["Content-Type"] == "image/png"
            assert response.read()[:8] == b"\x89PNG\r\n\x1a\n"
        with urllib.request.urlopen(f"{base}/c.txt") as response:
            assert response.read() == b"plain"
        for path, code in (("/b.svg", 500), ("/missing.svg", 404), ("/../etc/passwd", 404)):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"{base}{path}")
            assert err.value.code == code


def _count_renders(monkeypatch) -> list[str]:
    import cairosvg

    calls: list[str] = []
    real = cairosvg.svg2png

    def counting(*args, **kwargs):
        calls.append(kwargs.get("url", ""))
        return real(*args, **kwargs)

    monkeypatch.setattr(cairosvg, "svg2png", counting)
    return calls


def test_each_svg_is_rendered_once_across_servers(tmp_path, monkeypatch) -> None:
    root, cache = tmp_path / "root", tmp_path / "cache"
    root.mkdir()
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="5"><rect width="10" height="{h}"/></svg>'
    (root / "a.svg").write_text(svg.format(h=5))
    (root / "b.svg").write_text("<svg not really")
    calls = _count_renders(monkeypatch)
    bodies = []
    for _ in range(2):  # two runs: two server instances on the same cache
        with ImageServer(root, svg_width=40, cache_dir=cache, render_workers=0) as base:
            for _ in range(2):
                with urllib.request.urlopen(f"{base}/a.svg") as response:
                    bodies.append(response.read())
                with pytest.raises(urllib.error.HTTPError) as err:
                    urllib.request.urlopen(f"{base}/b.svg")
                assert err.value.code == 500
    assert len(set(bodies)) == 1 and bodies[0][:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(Path(c).name for c in calls) == ["a.svg", "b.svg"]  # a broken SVG is not tried again either
    with ImageServer(root, svg_width=80, cache_dir=cache, render_workers=0) as base:  # another size: another PNG
        urllib.request.urlopen(f"{base}/a.svg").read()
    (root / "a.svg").write_text(svg.format(h=4) + "\n")  # an edited SVG is rendered again
    with ImageServer(root, svg_width=40, cache_dir=cache, render_workers=0) as base:
        urllib.request.urlopen(f"{base}/a.svg").read()
    assert sorted(Path(c).name for c in calls) == ["a.svg", "a.svg", "a.svg", "b.svg"]


def test_concurrent_requests_render_once(tmp_path, monkeypatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    (tmp_path / "a.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="5"><rect width="10" height="5"/></svg>'
    )
    calls = _count_renders(monkeypatch)
    server = ImageServer(tmp_path, svg_width=40, cache_dir=tmp_path / "cache", render_workers=0)
    with server as base, ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda _: urllib.request.urlopen(f"{base}/a.svg").read(), range(16)))
    assert len(calls) == 1 and len(set(bodies)) == 1


def test_render_processes_serve_what_the_serving_thread_renders(tmp_path, monkeypatch) -> None:
    """With render workers, a miss is rendered in another process (this process's renderer is broken here, yet the
    PNG comes back), byte for byte what the serving thread renders; a broken SVG is a 500 there too and remembered;
    each SVG is rendered once however many ask at once; leaving the server ends the render processes."""
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    from laionet.images import serve

    root = tmp_path / "root"
    root.mkdir()
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="5"><rect width="{w}" height="5"/></svg>'
    for i in range(6):
        (root / f"{i}.svg").write_text(svg.format(w=i + 1))
    (root / "broken.svg").write_text("<svg not really")
    expected = {i: serve.render_svg(root / f"{i}.svg", 40) for i in range(6)}

    def broken_here(path, width):
        raise AssertionError("rendered in the serving process")

    monkeypatch.setattr(serve, "render_svg", broken_here)
    server = ImageServer(root, svg_width=40, cache_dir=tmp_path / "cache", render_workers=2)
    with server as base, ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda i: urllib.request.urlopen(f"{base}/{i % 6}.svg").read(), range(24)))
        for _ in range(2):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"{base}/broken.svg")
            assert err.value.code == 500
        workers = multiprocessing.active_children()
    assert bodies == [expected[i % 6] for i in range(24)]
    assert server.cache.renders == 7  # six SVGs and the broken one, once each
    assert list((tmp_path / "cache").rglob("*.err"))
    assert workers and not any(child.is_alive() for child in workers)
    with pytest.raises(ValueError, match=r"0 .* or more"):
        ImageServer(root, render_workers=-1)


def test_a_render_process_that_dies_is_replaced_and_nothing_is_remembered(tmp_path) -> None:
    """A render worker killed mid-run (or crashed inside the renderer) costs the request in flight a 500, but the SVG
    is not remembered as broken (no ``.err``), and the next request renders it in a new pool."""
    import os
    import signal

    root = tmp_path / "root"
    root.mkdir()
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="5"><rect width="{w}" height="5"/></svg>'
    for name in ("a", "b"):
        (root / f"{name}.svg").write_text(svg.format(w=3 if name == "a" else 7))
    cache = tmp_path / "cache"
    server = ImageServer(root, svg_width=40, cache_dir=cache, render_workers=1)
    with server as base:
        assert urllib.request.urlopen(f"{base}/a.svg").read()[:4] == b"\x89PNG"
        pool = server.cache._pool
        assert pool is not None
        for pid in list(pool._processes):  # the pool's one worker, killed between two requests
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/b.svg")
        assert err.value.code == 500
        assert not list(cache.rglob("*.err"))
        assert urllib.request.urlopen(f"{base}/b.svg").read()[:4] == b"\x89PNG"
        assert server.cache._pool is not pool and server.cache.renders == 3


def test_render_cache_location_follows_laionet_cache_then_xdg(monkeypatch, tmp_path) -> None:
    from laionet.images.serve import default_cache_dir

    monkeypatch.setenv("LAIONET_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "mine" / "svg-png"
    monkeypatch.delenv("LAIONET_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "laionet" / "svg-png"


def test_the_suite_never_renders_into_the_users_cache() -> None:
    """conftest points ``$LAIONET_CACHE`` at the session's tmp directory, so servers started by tests (and their child
    processes) never write rendered SVGs into ``~/.cache``."""
    from laionet.images.serve import default_cache_dir

    assert not default_cache_dir().is_relative_to(Path.home())
