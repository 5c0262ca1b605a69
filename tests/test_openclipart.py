import pandas as pd

from laionet.core.manifest import read_manifest
from laionet.text.openclipart import build_openclipart_corpus, parse_svg

SVG = b"""<?xml version="1.0"?>
<svg width="210mm" height="297.5" xmlns="http://www.w3.org/2000/svg">
  <metadata>
    <rdf:RDF xmlns:cc="http://web.resource.org/cc/" xmlns:dc="http://purl.org/dc/elements/1.1/"
             xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
      <cc:Work rdf:about="">
        <dc:title>Red  lemon</dc:title>
        <dc:description>A lemon, drawn
          by hand</dc:description>
        <dc:subject><rdf:Bag><rdf:li>fruit</rdf:li><rdf:li> citrus </rdf:li><rdf:li></rdf:li></rdf:Bag></dc:subject>
        <dc:publisher><cc:Agent><dc:title>Open Clip Art Library</dc:title></cc:Agent></dc:publisher>
      </cc:Work>
    </rdf:RDF>
  </metadata>
  <path d="M 0 0"/>
</svg>"""


def test_parse_svg_reads_title_description_keywords_and_size() -> None:
    art = parse_svg(SVG)
    assert art.title == "Red  lemon"
    assert art.keywords == ["fruit", "citrus"]
    assert art.text == "Red lemon A lemon, drawn by hand fruit citrus"  # publisher's title is not the work's
    assert (art.width, art.height) == (210, 298)


def test_parse_svg_falls_back_to_viewbox_and_survives_broken_metadata() -> None:
    art = parse_svg(b'<svg viewBox="0 0 64.4 32"><metadata><dc:title>unclosed</metadata></svg>')
    assert (art.width, art.height) == (64, 32)
    assert art.text is None


def test_corpus_builder_writes_a_laion_style_part(tmp_path) -> None:
    root = tmp_path / "svg"
    (root / "food").mkdir(parents=True)
    (root / "food" / "lemon.svg").write_bytes(SVG)
    (root / "empty.svg").write_bytes(b"<svg width='5' height='6'></svg>")
    manifest = build_openclipart_corpus(str(tmp_path / "out"), root=root, base_url="http://127.0.0.1:9/x/")
    assert (manifest.rows_in, manifest.rows_out, manifest.extra["rows_without_text"]) == (2, 2, 1)
    assert read_manifest(str(tmp_path / "out")) == manifest
    table = pd.read_parquet(tmp_path / "out" / "openclipart.parquet")
    laion = ["SAMPLE_ID", "URL", "TEXT", "HEIGHT", "WIDTH", "LICENSE", "NSFW", "similarity"]
    assert list(table.columns) == [*laion, "PATH"]
    assert table["URL"].tolist() == ["http://127.0.0.1:9/x/empty.svg", "http://127.0.0.1:9/x/food/lemon.svg"]
    assert table["TEXT"].tolist()[1].startswith("Red lemon")
    assert table["NSFW"].eq("UNLIKELY").all()


def test_real_openclipart_package_is_parsed() -> None:
    """The Debian package the demo uses: thousands of SVGs, nearly all with text."""
    from laionet.text.openclipart import DEFAULT_ROOT

    files = sorted(DEFAULT_ROOT.rglob("*.svg"))
    assert len(files) > 8000
    texts = [parse_svg(f.read_bytes()[:262144]).text for f in files[::100]]
    assert sum(t is not None for t in texts) >= 0.95 * len(texts)
