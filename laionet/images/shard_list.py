"""Which shards a stage reads: the ``.tar`` shards of a directory (from its stage's manifest), a glob or webdataset's
URL notation (``list_shards``), their split into per-worker groups (``shard_groups``), a shard's size and which tar
holds each key (``keys_by_tar``).
"""

from __future__ import annotations

import logging
import re

import fsspec
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from laionet.images.shards import ErrorLog, iter_raw, original_key

_log = logging.getLogger("laionet.shards")

_BRACES = re.compile(r"\{[^{}]*(\.\.|,)[^{}]*\}")  # webdataset's brace notation: {00000..00099} or {a,b}


def list_shards(shards: str, missing_ok: bool = False) -> list[str]:
    """The ``.tar`` shards of a directory or a glob, sorted; or the URLs of webdataset's notation, in its order.

    A directory written by a stage (download, ingest) is listed from its manifest — exactly the shards of its
    current input, never a leftover of an earlier one — and must be complete; a directory without a manifest or
    marker (shards made elsewhere) and a glob are listed as they are. A ``pipe:`` command or a URL with braces
    (``https://host/shards/{00000..00099}.tar``, ``pipe:curl -s https://host/{00000..00009}.tar``; ``::`` joins
    several) is expanded as ``webdataset.WebDataset`` expands it, without checking that each exists: a missing one is
    read as a damaged shard.

    Raises:
        FileNotFoundError: when there are none (unless ``missing_ok``); ``UpstreamError`` (a FileNotFoundError) for a
            stage directory that is incomplete.
    """
    from laionet.core.manifest import incomplete_marker, join, read_manifest
    from laionet.core.stage import UpstreamError

    if shards.startswith("pipe:") or _BRACES.search(shards) or "::" in shards:
        from webdataset.shardlists import expand_urls

        urls = [str(u) for u in expand_urls(shards)]
        if not urls and not missing_ok:
            raise FileNotFoundError(f"no shards in {shards!r}")
        return urls
    fs, real = url_to_fs(shards)
    if not any(c in real for c in "*?[") and fs.isdir(real):
        manifest = read_manifest(shards)
        if manifest is not None:
            # the manifest's shards, by name inside this directory (a copied or synced run directory still reads)
            tars = sorted(
                join(shards, o.rstrip("/").rsplit("/", 1)[-1]) for o in manifest.outputs if o.endswith(".tar")
            )
            gone = [t for t in tars if not fs.exists(url_to_fs(t)[1])]
            if gone:
                raise UpstreamError(f"{shards}: shards listed by its manifest are gone ({gone[:3]}); re-run that stage")
            if tars or missing_ok:
                return tars
            raise FileNotFoundError(f"no .tar shards in {shards!r} (its manifest lists none)")
        marker_fs, marker = url_to_fs(incomplete_marker(shards))
        if marker_fs.exists(marker) and not missing_ok:
            raise UpstreamError(
                f"{shards}: the shards are incomplete (a download or ingest was interrupted); re-run that stage"
            )
    pattern = real if any(c in real for c in "*?[") else real.rstrip("/") + "/*.tar"
    found = sorted(fs.glob(pattern))
    if not found and not missing_ok:
        raise FileNotFoundError(f"no .tar shards match {shards!r}")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return found if protocol in ("file", "local") else [f"{protocol}://{p}" for p in found]


def shard_groups(shards: str, groups: int) -> list[list[str]]:
    """The shards of ``shards`` (``list_shards``) split into at most ``groups`` contiguous, disjoint groups of
    near-equal size: the unit of work of a fanned-out per-shard stage (inference, OCR)."""
    listed = list_shards(shards)
    size = -(-len(listed) // max(1, groups))
    return [listed[i : i + size] for i in range(0, len(listed), size)]


def shard_size(url: str) -> int | None:
    """The size of a shard file (None for a ``pipe:`` command, which has none until it runs)."""
    if url.startswith("pipe:"):
        return None
    fs, real = url_to_fs(url)
    return int(fs.size(real))


def keys_by_tar(shards: str) -> dict[str, str]:
    """Which tar of a shard directory holds each key: from the parquet beside each tar, or, without one, by listing
    the tar's members."""
    where: dict[str, str] = {}
    for tar in list_shards(shards, missing_ok=True):
        index = tar.removesuffix(".tar") + ".parquet"
        try:
            if url_to_fs(index)[0].exists(url_to_fs(index)[1]):
                with fsspec.open(index, "rb") as f:
                    keys = pq.read_table(f, columns=["key"]).column("key").to_pylist()
            else:
                errors = ErrorLog()
                keys = [original_key(safe) for safe, _ in iter_raw(tar, errors)]
                for error in errors.errors:
                    _log.warning("%s: %s %s (%s)", error.shard, error.key, error.reason, error.detail)
        except Exception:  # an unreadable index: its images are not shown
            _log.warning("%s: its listing cannot be read; its images are not shown", index, exc_info=True)
            continue
        where.update(dict.fromkeys((str(k) for k in keys), tar))
    return where
