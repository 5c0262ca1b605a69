"""A real, offline image-text corpus: Debian's openclipart-svg turned into a LAION-style parquet part.

Reads ``/usr/share/openclipart/svg/**.svg`` (public-domain clip art whose RDF metadata holds an author-written
title, description and keywords); writes ``<out>/openclipart.parquet`` with LAION-400M's columns
``SAMPLE_ID, URL, TEXT, HEIGHT, WIDTH, LICENSE, NSFW, similarity`` plus ``PATH`` (the local file), and a manifest.
``TEXT`` = title + description + keywords joined by spaces (null when all three are empty); ``URL`` =
``<base_url>/<path relative to the root>`` so a loopback HTTP server over the root can serve every row.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from tqdm.auto import tqdm

from laionet.core.manifest import Manifest, Timer, config_hash, join, write_manifest, write_parquet_atomic
from laionet.core.stage import stage_run

DEFAULT_ROOT = Path("/usr/share/openclipart/svg")
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
STAGE = "corpus-openclipart"
_NS = {
    "dc": "http://purl.org/dc/elements/1.1/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "cc": "http://web.resource.org/cc/",
}
_METADATA = re.compile(rb"<metadata\b.*?</metadata>", re.S)
_ROOT_TAG = re.compile(rb"<svg\b[^>]*>", re.S)
_LENGTH = re.compile(r"^\s*([0-9]*\.?[0-9]+)")
_READ_BYTES = 256 * 1024  # metadata and the root tag sit at the top of the file


@dataclass(frozen=True)
class ClipArt:
    """What one SVG file says about itself."""

    title: str
    description: str
    keywords: list[str]
    width: int | None
    height: int | None

    @property
    def text(self) -> str | None:
        joined = " ".join(t for t in [self.title, self.description, *self.keywords] if t)
        return " ".join(joined.split()) or None


def _length(value: bytes | None) -> int | None:
    if not value:
        return None
    m = _LENGTH.match(value.decode("utf-8", "replace"))
    return round(float(m.group(1))) if m else None


def _attr(tag: bytes, name: bytes) -> bytes | None:
    m = re.search(rb"\s" + name + rb"\s*=\s*[\"']([^\"']*)[\"']", tag)
    return m.group(1) if m else None


def parse_svg(head: bytes) -> ClipArt:
    """Parse the metadata and size of an SVG from its first bytes (malformed metadata gives empty fields)."""
    title = description = ""
    keywords: list[str] = []
    meta = _METADATA.search(head)
    if meta:
        try:
            root = ET.fromstring(meta.group(0))
        except ET.ParseError:
            root = None
        if root is not None:
            work = root.find(".//cc:Work", _NS)
            scope = work if work is not None else root
            title = (scope.findtext("dc:title", default="", namespaces=_NS) or "").strip()
            description = (scope.findtext("dc:description", default="", namespaces=_NS) or "").strip()
            keywords = [
                (li.text or "").strip() for li in scope.findall("dc:subject//rdf:li", _NS) if (li.text or "").strip()
            ]
    width = height = None
    tag = _ROOT_TAG.search(head)
    if tag:
        width, height = _length(_attr(tag.group(0), b"width")), _length(_attr(tag.group(0), b"height"))
        box = _attr(tag.group(0), b"viewBox")
        if (width is None or height is None) and box:
            numbers = box.replace(b",", b" ").split()
            if len(numbers) == 4:
                width = width or _length(numbers[2])
                height = height or _length(numbers[3])
    return ClipArt(title, description, keywords, width, height)


_log = logging.getLogger("laionet.corpus")


def build_openclipart_corpus(
    out_dir: str, root: Path = DEFAULT_ROOT, base_url: str = DEFAULT_BASE_URL, limit: int | None = None
) -> Manifest:
    """Convert every SVG under ``root`` into one LAION-style parquet part in ``out_dir`` (no work if complete).

    Raises:
        FileNotFoundError: if ``root`` holds no SVG (install Debian's openclipart-svg).
    """
    timer = Timer()
    config = {"root": str(root), "base_url": base_url, "limit": limit}
    _log.info("openclipart corpus from %s → %s, %s", root, out_dir, config)
    with stage_run(out_dir, config_hash(config), STAGE) as done:
        if done:
            return done
        files = sorted(root.rglob("*.svg"))
        if limit is not None:
            files = files[:limit]
        if not files:
            raise FileNotFoundError(
                f"no .svg files under {root}; install Debian's openclipart-svg (apt-get install ...)"
            )
        columns: dict[str, list[object]] = {k: [] for k in ["SAMPLE_ID", "URL", "TEXT", "HEIGHT", "WIDTH", "PATH"]}
        unreadable = 0
        for index, path in enumerate(tqdm(files, desc="openclipart", unit="svg", disable=None)):
            try:
                with path.open("rb") as f:
                    art = parse_svg(f.read(_READ_BYTES))
            except OSError:
                unreadable += 1
                continue
            rel = path.relative_to(root).as_posix()
            columns["SAMPLE_ID"].append(index)
            columns["URL"].append(f"{base_url.rstrip('/')}/{rel}")
            columns["TEXT"].append(art.text)
            columns["HEIGHT"].append(art.height)
            columns["WIDTH"].append(art.width)
            columns["PATH"].append(str(path))
        n = len(columns["URL"])
        table = pa.table(
            {
                "SAMPLE_ID": pa.array(columns["SAMPLE_ID"], pa.int64()),
                "URL": pa.array(columns["URL"], pa.string()),
                "TEXT": pa.array(columns["TEXT"], pa.string()),
                "HEIGHT": pa.array(columns["HEIGHT"], pa.int64()),
                "WIDTH": pa.array(columns["WIDTH"], pa.int64()),
                "LICENSE": pa.array(["public domain"] * n, pa.string()),
                "NSFW": pa.array(["UNLIKELY"] * n, pa.string()),
                "similarity": pa.nulls(n, pa.float64()),
                "PATH": pa.array(columns["PATH"], pa.string()),
            }
        )
        out_path = join(out_dir, "openclipart.parquet")
        write_parquet_atomic(table, out_path)
        manifest = Manifest(
            stage=STAGE,
            config=config,
            config_hash=config_hash(config),
            inputs=[str(root)],
            outputs=[out_path],
            rows_in=len(files),
            rows_out=n,
            dropped={"unreadable": unreadable},
            wall_time_s=timer.elapsed,
            extra={"rows_without_text": sum(t is None for t in columns["TEXT"])},
        )
        write_manifest(out_dir, manifest)
        return manifest
