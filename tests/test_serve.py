import urllib.error
import urllib.request

import pytest

from laionet.images.serve import ImageServer


def test_image_server_renders_svg_and_refuses_escapes(tmp_path) -> None:
    (tmp_path / "a.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="5"><rect width="10" height="5"/></svg>'
    )
    (tmp_path / "b.svg").write_text("<svg not really")
    (tmp_path / "c.txt").write_text("plain")
    with ImageServer(tmp_path, svg_width=40) as base:
        with urllib.request.urlopen(f"{base}/a.svg") as response:
            assert response.headers["Content-Type"] == "image/png"
            assert response.read()[:8] == b"\x89PNG\r\n\x1a\n"
        with urllib.request.urlopen(f"{base}/c.txt") as response:
            assert response.read() == b"plain"
        for path, code in (("/b.svg", 500), ("/missing.svg", 404), ("/../etc/passwd", 404)):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"{base}{path}")
            assert err.value.code == code
