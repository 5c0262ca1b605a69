"""WebDataset shards: tar-safe keys and reading samples back.

A shard is a tar of samples ``<__key__>.jpg`` / ``.txt`` / ``.json``. ``__key__`` is our sample key made tar-safe
by percent-encoding everything but letters, digits, ``-`` and ``_`` (so no ``.`` or ``/`` reaches webdataset's
key/extension split), which ``original_key`` reverses.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote

import fsspec


def safe_key(key: str) -> str:
    """Tar/webdataset-safe, reversible form of a sample key (``"part-0/12"`` → ``"part-0%2F12"``)."""
    return quote(key, safe="-_").replace(".", "%2E").replace("~", "%7E")  # quote() keeps . and ~ as they are


def original_key(safe: str) -> str:
    """Inverse of ``safe_key``."""
    return unquote(safe)


def iter_samples(path: str) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """Stream a shard: (our key, RGB PIL image, json metadata) per sample with an image, in tar order."""
    from PIL import Image

    def emit(sample: dict[str, bytes], key: str) -> tuple[str, Any, dict[str, Any]] | None:
        if "jpg" not in sample:
            return None
        meta = json.loads(sample["json"]) if "json" in sample else {}
        image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
        return original_key(key), image, meta

    current: str | None = None
    sample: dict[str, bytes] = {}
    with fsspec.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.rpartition("/")[2].partition(".")
            if key != current and current is not None:
                item = emit(sample, current)
                if item:
                    yield item
                sample = {}
            current = key
            handle = tar.extractfile(member)
            sample[ext] = handle.read() if handle else b""
        if current is not None:
            item = emit(sample, current)
            if item:
                yield item
