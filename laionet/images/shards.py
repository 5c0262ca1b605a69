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
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from laionet.core.runtime import limit_image_pixels


def safe_key(key: str) -> str:
    """Tar/webdataset-safe, reversible form of a sample key (``"part-0/12"`` → ``"part-0%2F12"``)."""
    return quote(key, safe="-_").replace(".", "%2E").replace("~", "%7E")  # quote() keeps . and ~ as they are


def original_key(safe: str) -> str:
    """Inverse of ``safe_key``."""
    return unquote(safe)


def iter_raw(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream a shard's samples undecoded: (tar-safe key, {extension: bytes}) in tar order.

    Raises:
        tarfile.TarError / OSError / EOFError: on a truncated or corrupt tar, after the samples read before it.
    """
    current: str | None = None
    sample: dict[str, bytes] = {}
    with fsspec.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.rpartition("/")[2].partition(".")
            if key != current and current is not None:
                yield current, sample
                sample = {}
            current = key
            handle = tar.extractfile(member)
            sample[ext] = handle.read() if handle else b""
    if current is not None:
        yield current, sample


def ends_cleanly(path: str) -> bool:
    """Whether a tar file ends with its end-of-archive marker (two zero 512-byte blocks, size a multiple of 512).

    ``tarfile`` reads a tar cut at a 512-byte boundary as a normal end of archive; this check tells the two apart.
    """
    fs, real = url_to_fs(path)
    size = int(fs.size(real))
    if size < 1024 or size % 512:
        return False
    with fs.open(real, "rb") as f:
        f.seek(size - 1024)
        return f.read(1024) == bytes(1024)


def iter_samples(path: str) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """Stream a shard: (our key, RGB PIL image, json metadata) per sample with an image, in tar order."""
    from PIL import Image

    limit_image_pixels()

    for key, sample in iter_raw(path):
        if "jpg" not in sample:
            continue
        meta = json.loads(sample["json"]) if "json" in sample else {}
        image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
        yield original_key(key), image, meta


def encode_rgb_jpeg(data: bytes, quality: int = 95) -> bytes:
    """The image in ``data`` as an RGB JPEG (kept byte-for-byte when it already is one).

    Raises:
        OSError: if PIL cannot decode it, or it has more pixels than ``laionet.core.runtime.limit_image_pixels``.
    """
    from PIL import Image

    limit = limit_image_pixels()
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode == "RGB" and image.format == "JPEG":
                return data
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=quality)
            return out.getvalue()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise OSError(f"image over {limit} pixels: {exc}") from exc


class ShardWriter:
    """Write samples into ``<out>/NNNNN.tar`` shards of at most ``per_shard`` samples, each tar written under a
    temporary name and renamed when full, with ``NNNNN.parquet`` (its samples' metadata) beside it."""

    def __init__(self, out_dir: str, per_shard: int = 10_000, start: int = 0) -> None:
        self.out_dir, self.per_shard, self.shard = out_dir, per_shard, start
        self.outputs: list[str] = []
        self._rows: list[dict[str, Any]] = []
        self._buffer: list[tuple[str, bytes, str, dict[str, Any]]] = []

    def write(self, key: str, jpg: bytes, text: str, meta: dict[str, Any]) -> None:
        self._buffer.append((key, jpg, text, {"key": key, **meta}))
        if len(self._buffer) >= self.per_shard:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        import pandas as pd
        import pyarrow as pa

        from laionet.core.manifest import atomic_path, join, write_parquet_atomic

        name = join(self.out_dir, f"{self.shard:05d}")
        with atomic_path(f"{name}.tar") as tmp, fsspec.open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w") as tar:
            for key, jpg, text, meta in self._buffer:
                for ext, data in (("jpg", jpg), ("txt", text.encode()), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{safe_key(key)}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        rows = pd.DataFrame([meta for _, _, _, meta in self._buffer])
        write_parquet_atomic(pa.Table.from_pandas(rows, preserve_index=False), f"{name}.parquet")
        self.outputs.append(f"{name}.tar")
        self._buffer = []
        self.shard += 1

    def close(self) -> list[str]:
        self.flush()
        return self.outputs


def _check_sample(sample: dict[str, bytes]) -> str | None:
    """The reason a sample is unusable, or None."""
    from PIL import Image

    limit_image_pixels()

    if "jpg" not in sample:
        return "no_image"
    if "json" not in sample:
        return "no_metadata"
    try:
        meta = json.loads(sample["json"])
    except ValueError:
        return "bad_metadata"
    if "key" not in meta:
        return "bad_metadata"
    try:
        with Image.open(io.BytesIO(sample["jpg"])) as image:
            image.convert("RGB").load()
    except Exception:  # PIL raises a zoo of types for broken images
        return "undecodable_image"
    return None


def verify_shard(path: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Read a whole shard: (keys of good samples, [(key, reason)] of bad ones). A tar that ends early adds
    ``("*", "truncated_shard")``; samples its ``.parquet`` lists as downloaded but the tar lacks are
    ``missing_from_tar``."""
    good: list[str] = []
    bad: list[tuple[str, str]] = []
    samples: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    try:
        with fsspec.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition("/")[2].partition(".")
                handle = tar.extractfile(member)
                if key not in samples:
                    samples[key] = {}
                    order.append(key)
                samples[key][ext] = handle.read() if handle else b""
        if not ends_cleanly(path):
            raise tarfile.ReadError("no end-of-archive marker")
    except (tarfile.TarError, OSError, EOFError):
        bad.append(("*", "truncated_shard"))
    for key in order:
        reason = _check_sample(samples[key])
        (good.append(original_key(key)) if reason is None else bad.append((original_key(key), reason)))
    listing = path.removesuffix(".tar") + ".parquet"
    fs, real = url_to_fs(listing)
    if fs.exists(real):
        with fs.open(real, "rb") as f:
            table = pq.read_table(f).to_pandas()
        expected = table.loc[table["status"] == "success", "key"] if "status" in table.columns else table["key"]
        seen = set(good) | {k for k, _ in bad}
        bad.extend((str(k), "missing_from_tar") for k in expected if str(k) not in seen)
    return good, bad


def list_shards(shards: str, missing_ok: bool = False) -> list[str]:
    """The ``.tar`` shards of a directory or a glob, sorted.

    A directory written by a stage (download, ingest) is listed from its manifest — exactly the shards of its
    current input, never a leftover of an earlier one — and must be complete; a directory without a manifest or
    marker (shards made elsewhere) and a glob are listed as they are.

    Raises:
        FileNotFoundError: when there are none (unless ``missing_ok``); ``UpstreamError`` (a FileNotFoundError) for a
            stage directory that is incomplete.
    """
    from laionet.core.manifest import incomplete_marker, join, read_manifest
    from laionet.core.stage import UpstreamError

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
                keys = [original_key(safe) for safe, _ in iter_raw(tar)]
        except Exception:  # an unreadable index or shard: its images are not shown
            continue
        where.update(dict.fromkeys((str(k) for k in keys), tar))
    return where


def read_images(tar: str, keys: set[str]) -> dict[str, Any]:
    """Decoded RGB images of ``keys`` from one shard, read up to the last of them; undecodable samples and the
    samples after a truncation are skipped."""
    from PIL import Image

    limit_image_pixels()

    out: dict[str, Any] = {}
    try:
        samples = iter_raw(tar)
        try:
            for safe, sample in samples:
                key = original_key(safe)
                if key in keys and "jpg" in sample:
                    try:
                        out[key] = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
                    except Exception:
                        continue
                    if len(out) == len(keys):
                        break
        finally:
            getattr(samples, "close", lambda: None)()  # a generator: closes the tar it holds open
    except Exception:  # a truncated shard: keep what was read before the damage
        pass
    return out
