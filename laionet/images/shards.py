"""WebDataset shards: the format (tar-safe keys, the ``cls`` label, ``_info.json``) and reading samples back.

A shard is a tar of samples ``<__key__>.jpg`` / ``.txt`` / ``.json`` / ``.cls``. ``__key__`` is our sample key made
tar-safe by percent-encoding everything but letters, digits, ``-`` and ``_`` (so no ``.`` or ``/`` reaches webdataset's
key/extension split), which ``original_key`` reverses.

``cls`` (webdataset's and timm's label convention: the class index as decimal text) is the **ImageNet-1k class
index** of the sample's ``wnid`` — its position among the 1000 ILSVRC-2012 wnids in sorted order, as timm and
torchvision number them (``imagenet1k_index``). A sample whose wnid is not an ImageNet-1k class (a run over another
class set) gets **no** ``cls`` member: its ``json`` still holds ``wnid`` and the run's own ``class_index``, and the
directory's ``_info.json`` counts it under ``counts.without_cls`` (a loader that needs a label filters with
``.select(lambda s: "cls" in s)``). An index in the run's catalog was not used: it changes with the class set, so
the same ``cls`` would name different classes in different runs.

Each shard directory written by a stage also has ``_info.json`` (``shard_writer.write_shard_info``): the format, the
1000 wnids in ``cls`` order, counts (samples, by wnid, with and without ``cls``) and timm's ``splits`` entry
(``num_samples``, ``filenames``, ``shard_lengths``), written atomically just before the stage's manifest (and removed
when a stage starts over); the per-shard ``.parquet`` listings stay the source of truth for what each shard should
hold.

Reading (``iter_raw`` and everything built on it) goes through a webdataset pipeline (``shard_pipeline``): a shard
URL may be a local path, any fsspec URL (``http(s)://`` is streamed without range requests; ``s3://``, ``gs://``…)
or a ``pipe:`` command (webdataset's ``gopen``). Errors never stop a stage and are never dropped silently: they go to
an ``ErrorLog``, webdataset's handler, which records (shard, key, reason) — ``truncated_shard`` (key ``*``: the tar
could not be opened or read to its end, or lacks its end-of-archive marker, checked on the bytes streamed, with the
semantics of ``ends_cleanly``) and ``duplicate_member`` (key ``*``) at the shard level; stages record per-sample
reasons (``undecodable_image``, ``no_image``, ``no_metadata``…) in the same log. The sample being read when a shard
was cut is passed on with the members read completely (a member is never half-read), so its missing members are
counted like any other sample's.

Writing (``ShardWriter``, ``TarStream``, ``write_shard_info``) is ``laionet.images.shard_writer``; listing the shards
of a directory, a glob or webdataset's URL notation (``list_shards``) is ``laionet.images.shard_list``; checking every
sample of a shard (``verify_shard``) is ``laionet.images.verify``.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import IO, Any
from urllib.parse import quote, unquote

from fsspec.core import url_to_fs

from laionet.core.runtime import limit_image_pixels

_log = logging.getLogger("laionet.shards")

TRUNCATED = "truncated_shard"  # the shard-level reason (key "*") of a shard that could not be read to a clean end


def safe_key(key: str) -> str:
    """Tar/webdataset-safe, reversible form of a sample key (``"part-0/12"`` → ``"part-0%2F12"``)."""
    return quote(key, safe="-_").replace(".", "%2E").replace("~", "%7E")  # quote() keeps . and ~ as they are


def original_key(safe: str) -> str:
    """Inverse of ``safe_key``."""
    return unquote(safe)


@lru_cache(maxsize=1)
def imagenet1k_classes() -> dict[str, int]:
    """The 1000 ImageNet-1k wnids, each mapped to its class index (sorted-wnid order, as timm and torchvision)."""
    from laionet.text.catalog import load_class_set

    return {w: i for i, w in enumerate(load_class_set("imagenet1k"))}


def imagenet1k_index(wnid: object) -> int | None:
    """The ImageNet-1k class index (sorted-wnid order) of ``wnid``, or None when it is not an ImageNet-1k class."""
    return imagenet1k_classes().get(str(wnid)) if wnid is not None else None


# ---------------------------------------------------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class ShardError:
    shard: str
    key: str  # our key, or "*" for the shard as a whole
    reason: str
    detail: str = ""


@dataclass
class ErrorLog:
    """The exception handler of the reading pipelines: records (shard, key, reason) and lets the stage go on.

    ``handler(shard)`` is a webdataset handler (``exn → True``: continue); ``add`` records a per-sample reason found
    by the stage itself (an image that does not decode). A shard's ``truncated_shard`` is recorded once.
    """

    errors: list[ShardError] = field(default_factory=list)

    def add(self, shard: str, key: str, reason: str, detail: str = "") -> None:
        if key == "*" and any(e.shard == shard and e.key == "*" and e.reason == reason for e in self.errors):
            return
        self.errors.append(ShardError(shard, key, reason, detail[:500]))
        _log.debug("%s: %s %s (%s)", shard, key, reason, detail[:200])

    def handler(self, shard: str, reason: str = TRUNCATED) -> Callable[[BaseException], bool]:
        def handle(exn: BaseException) -> bool:
            self.add(shard, "*", reason, f"{type(exn).__name__}: {exn}")
            return True

        return handle

    def truncated(self, shard: str) -> bool:
        return any(e.shard == shard and e.reason == TRUNCATED for e in self.errors)

    def of(self, shard: str) -> list[ShardError]:
        return [e for e in self.errors if e.shard == shard]


class _Tracked:
    """A read-only stream that counts its bytes and keeps the last 1024 (the end-of-archive check, on the stream), and
    reads its source in chunks of ``chunk`` bytes (tarfile asks for 10 KB at a time: over HTTP each call would be a
    round trip through fsspec's event loop)."""

    def __init__(self, raw: IO[bytes], chunk: int = 1 << 20) -> None:
        self.raw, self.chunk, self.size, self.tail = raw, chunk, 0, b""
        self._buffer, self._at = b"", 0

    def _take(self, n: int) -> bytes:
        if self._at >= len(self._buffer):
            self._buffer, self._at = self.raw.read(max(n, self.chunk)), 0
        data = self._buffer[self._at : self._at + n]
        self._at += len(data)
        return data

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            data = self._buffer[self._at :] + self.raw.read()
            self._buffer, self._at = b"", 0
        else:
            parts = []
            while n > 0 and (part := self._take(n)):
                parts.append(part)
                n -= len(part)
            data = b"".join(parts)
        self.size += len(data)
        self.tail = data[-1024:] if len(data) >= 1024 else (self.tail + data)[-1024:]
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    def ends_cleanly(self) -> bool:
        return self.size >= 1024 and self.size % 512 == 0 and self.tail == bytes(1024)

    def close(self) -> None:
        self.raw.close()


def open_shard(url: str) -> IO[bytes]:
    """A binary stream of a shard: ``pipe:CMD`` through webdataset's ``gopen``, a local path directly, any other URL
    through fsspec (``http(s)`` as a plain stream: no range requests needed)."""
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen

        stream: IO[bytes] = gopen(url, "rb")
        return stream
    from laionet.core.manifest import is_local

    fs, real = url_to_fs(url)
    if is_local(fs):
        return open(real, "rb")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    opened: IO[bytes] = fs.open(real, "rb", **({"block_size": 0} if protocol in ("http", "https") else {}))
    return opened


def _expand(urls: Iterable[Any], errors: ErrorLog) -> Iterator[dict[str, Any]]:
    """Pipeline stage: shard URLs (or webdataset's ``{"url": ...}``) → tar members (``fname``, ``data``, ``__url__``),
    then ``{}`` (end of shard, so the last sample is flushed). Read errors and a missing end-of-archive marker go to
    ``errors``; the members read before them are kept."""
    from webdataset.tariterators import tar_file_iterator

    for item in urls:
        url = item["url"] if isinstance(item, dict) else str(item)
        stream: _Tracked | None = None
        try:
            stream = _Tracked(open_shard(url))
            for member in tar_file_iterator(stream, skip_meta=None, handler=errors.handler(url)):
                member["__url__"] = member["url"] = url  # "url": what group_by_keys names in its errors
                yield member
            if not errors.truncated(url):
                stream.drain()  # the padding after the end-of-archive blocks: the marker check needs the real end
                if not stream.ends_cleanly():  # a cut at a 512-byte boundary reads like a normal end of archive
                    errors.add(url, "*", TRUNCATED, f"no end-of-archive marker ({stream.size} bytes)")
        except Exception as exn:  # not opened, or cut: the shard is recorded, the stage goes on
            errors.add(url, "*", TRUNCATED, f"{type(exn).__name__}: {exn}")
        finally:
            if stream is not None:
                try:
                    stream.close()  # a pipe: raises when its command failed
                except Exception as exn:
                    errors.add(url, "*", TRUNCATED, f"{type(exn).__name__}: {exn}")
        yield {}


def shard_pipeline(urls: Sequence[str], errors: ErrorLog, split: bool = False) -> Any:
    """A webdataset ``DataPipeline`` of the raw samples (``__key__``, ``__url__``, ``{ext: bytes}``) of ``urls``, in
    order. ``split``: each node (``split_by_node``) and each DataLoader worker (``split_by_worker``) takes its share of
    the shards."""
    import webdataset as wds
    from webdataset.tariterators import group_by_keys

    def group(members: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        def duplicate(exn: BaseException) -> bool:  # two members of one sample with the same extension
            shard = str(exn.args[-1]) if exn.args else "?"
            errors.add(shard, "*", "duplicate_member", str(exn.args[0]) if exn.args else "")
            return True

        return group_by_keys(members, handler=duplicate)

    stages: list[Any] = [wds.SimpleShardList(list(urls))]
    if split:
        stages += [wds.split_by_node, wds.split_by_worker]
    stages += [lambda src: _expand(src, errors), group]
    return wds.DataPipeline(*stages)


def iter_raw(path: str, errors: ErrorLog | None = None) -> Generator[tuple[str, dict[str, bytes]], None, None]:
    """Stream a shard's samples undecoded: (tar-safe key, {extension: bytes}) in tar order, through webdataset.

    Errors go to ``errors`` (see ``ErrorLog``) and the samples read before them are kept. Without ``errors`` a damaged
    shard raises instead, after the samples read before the damage.

    Raises:
        OSError: without ``errors``, when the shard cannot be read to a clean end (``truncated_shard``).
    """
    log = errors if errors is not None else ErrorLog()
    for sample in shard_pipeline([path], log):
        members = {k: v for k, v in sample.items() if not k.startswith("__")}
        yield str(sample["__key__"]).rpartition("/")[2], members
    if errors is None and log.errors:
        first = log.errors[0]
        raise OSError(f"{path}: {first.reason}: {first.detail}")


def ends_cleanly(path: str) -> bool:
    """Whether a tar file ends with its end-of-archive marker (two zero 512-byte blocks, size a multiple of 512).

    ``tarfile`` reads a tar cut at a 512-byte boundary as a normal end of archive; this check tells the two apart.
    (The readers make the same check on the bytes they stream, for shards that are not files.)
    """
    fs, real = url_to_fs(path)
    size = int(fs.size(real))
    if size < 1024 or size % 512:
        return False
    with fs.open(real, "rb") as f:
        f.seek(size - 1024)
        return f.read(1024) == bytes(1024)


def decode_rgb(data: bytes) -> Any:
    """A PIL RGB image from encoded bytes (under the pixel limit of ``laionet.core.runtime.limit_image_pixels``).

    Raises:
        Exception: PIL raises many types for broken images (and ``DecompressionBombError`` over the limit).
    """
    from PIL import Image

    limit_image_pixels()
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def iter_samples(path: str, errors: ErrorLog | None = None) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """Stream a shard: (our key, RGB PIL image, json metadata) per sample with an image, in tar order.

    With ``errors``, an undecodable image is recorded there (``undecodable_image``) and skipped; without, it raises.
    """
    for key, sample in iter_raw(path, errors):
        if "jpg" not in sample:
            if errors is not None:
                errors.add(path, original_key(key), "no_image")
            continue
        meta = json.loads(sample["json"]) if "json" in sample else {}
        try:
            image = decode_rgb(sample["jpg"])
        except Exception as exc:
            if errors is None:
                raise
            errors.add(path, original_key(key), "undecodable_image", f"{type(exc).__name__}: {exc}")
            continue
        yield original_key(key), image, meta


def read_images(tar: str, keys: set[str]) -> dict[str, Any]:
    """Decoded RGB images of ``keys`` from one shard, read up to the last of them. Undecodable samples and the
    samples after a truncation are left out, each logged (shard, key, reason) as a warning."""
    errors = ErrorLog()
    out: dict[str, Any] = {}
    samples = iter_raw(tar, errors)
    try:
        for safe, sample in samples:
            key = original_key(safe)
            if key not in keys or "jpg" not in sample:
                continue
            try:
                out[key] = decode_rgb(sample["jpg"])
            except Exception as exc:
                errors.add(tar, key, "undecodable_image", f"{type(exc).__name__}: {exc}")
                continue
            if len(out) == len(keys):
                break
    finally:
        samples.close()  # a generator: closes the shard it holds open
    for error in errors.errors:
        _log.warning("%s: %s left out of the images: %s (%s)", error.shard, error.key, error.reason, error.detail)
    return out
