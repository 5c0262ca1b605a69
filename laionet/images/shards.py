"""WebDataset shards: tar-safe keys, the streaming shard writer, and reading samples back through webdataset.

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

Each shard directory written by a stage also has ``_info.json`` (``write_shard_info``): the format, the 1000 wnids in
``cls`` order, counts (samples, by wnid, with and without ``cls``) and timm's ``splits`` entry (``num_samples``,
``filenames``, ``shard_lengths``), written atomically just before the stage's manifest (and removed when a stage
starts over); the per-shard ``.parquet`` listings stay the source of truth for what each shard should hold.

Writing (``ShardWriter``) streams sample by sample into ``webdataset.TarWriter`` inside ``atomic_path``: memory is
bounded by one sample (plus each sample's few metadata fields for the shard's listing), not by a shard.

Reading (``iter_raw`` and everything built on it) goes through a webdataset pipeline (``shard_pipeline``): a shard
URL may be a local path, any fsspec URL (``http(s)://`` is streamed without range requests; ``s3://``, ``gs://``…)
or a ``pipe:`` command (webdataset's ``gopen``). Errors never stop a stage and are never dropped silently: they go to
an ``ErrorLog``, webdataset's handler, which records (shard, key, reason) — ``truncated_shard`` (key ``*``: the tar
could not be opened or read to its end, or lacks its end-of-archive marker, checked on the bytes streamed, with the
semantics of ``ends_cleanly``) and ``duplicate_member`` (key ``*``) at the shard level; stages record per-sample
reasons (``undecodable_image``, ``no_image``, ``no_metadata``…) in the same log. The sample being read when a shard
was cut is passed on with the members read completely (a member is never half-read), so its missing members are
counted like any other sample's.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import lru_cache
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote, unquote

import fsspec
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from laionet.core.runtime import limit_image_pixels

_log = logging.getLogger("laionet.shards")

TRUNCATED = "truncated_shard"  # the shard-level reason (key "*") of a shard that could not be read to a clean end
INFO_NAME = "_info.json"


def safe_key(key: str) -> str:
    """Tar/webdataset-safe, reversible form of a sample key (``"part-0/12"`` → ``"part-0%2F12"``)."""
    return quote(key, safe="-_").replace(".", "%2E").replace("~", "%7E")  # quote() keeps . and ~ as they are


def original_key(safe: str) -> str:
    """Inverse of ``safe_key``."""
    return unquote(safe)


@lru_cache(maxsize=1)
def _imagenet1k() -> dict[str, int]:
    from laionet.text.catalog import load_class_set

    return {w: i for i, w in enumerate(load_class_set("imagenet1k"))}


def imagenet1k_index(wnid: object) -> int | None:
    """The ImageNet-1k class index (sorted-wnid order) of ``wnid``, or None when it is not an ImageNet-1k class."""
    return _imagenet1k().get(str(wnid)) if wnid is not None else None


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


# ---------------------------------------------------------------------------------------------------------------------
# writing


class TarStream:
    """One tar written sample by sample through ``webdataset.TarWriter`` under a temporary name (``atomic_path``),
    renamed to ``path`` by ``close``; ``abort`` (or leaving a ``with`` block by an exception) deletes it. Holds no
    sample after ``write`` returns."""

    def __init__(self, path: str) -> None:
        from webdataset import TarWriter

        from laionet.core.manifest import atomic_path

        self.path, self.samples = path, 0
        self._stack = ExitStack()
        try:
            tmp = self._stack.enter_context(atomic_path(path))
            f = self._stack.enter_context(fsspec.open(tmp, "wb"))
            # no encoding (bytes in, bytes out), PAX headers (keys of any length, as tarfile's default), mtime 0: the
            # same samples always give the same bytes
            self._tar = TarWriter(f, encoder=False, mtime=0, format="PAX_FORMAT")
            self._stack.callback(self._tar.close)  # the end-of-archive blocks, before the file is closed and renamed
        except BaseException:
            self._stack.close()
            raise

    def write(self, sample: Mapping[str, Any]) -> None:
        """Write one sample: ``__key__`` (tar-safe) and ``{extension: bytes}``."""
        self._tar.write(dict(sample))
        self.samples += 1

    def close(self) -> str:
        self._stack.close()
        return self.path

    def abort(self, exc: BaseException | None = None) -> None:
        error = exc or RuntimeError(f"{self.path}: writing abandoned")
        try:
            self._stack.__exit__(type(error), error, error.__traceback__)
        except BaseException as raised:
            if raised is not error:
                raise

    def __enter__(self) -> TarStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


def sample_members(key: str, jpg: bytes, text: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """A sample as written: ``jpg``, ``txt``, ``json`` (``meta``, with ``key`` first) and ``cls`` when the wnid is an
    ImageNet-1k class."""
    members: dict[str, Any] = {
        "__key__": safe_key(key),
        "jpg": jpg,
        "txt": text.encode(),
        "json": json.dumps({"key": key, **{k: v for k, v in meta.items() if k != "key"}}).encode(),
    }
    cls = imagenet1k_index(meta.get("wnid"))
    if cls is not None:
        members["cls"] = str(cls).encode()
    return members


class ShardWriter:
    """Write samples into ``<out>/NNNNN.tar`` shards of at most ``per_shard`` samples, streaming each sample into the
    open shard (``TarStream``: temporary name, renamed when the shard is full or the writer closed), with
    ``NNNNN.parquet`` (its samples' metadata) beside it. Memory: one sample and the shard's metadata rows.

    Use it as a context manager (an exception deletes the unfinished shard) or call ``close``."""

    def __init__(self, out_dir: str, per_shard: int = 10_000, start: int = 0) -> None:
        self.out_dir, self.per_shard, self.shard = out_dir, per_shard, start
        self.outputs: list[str] = []
        self.lengths: list[int] = []
        self.by_wnid: dict[str, int] = {}
        self._rows: list[dict[str, Any]] = []
        self._tar: TarStream | None = None

    def write(self, key: str, jpg: bytes, text: str, meta: dict[str, Any]) -> None:
        from laionet.core.manifest import join

        if self._tar is None:
            self._tar = TarStream(join(self.out_dir, f"{self.shard:05d}.tar"))
        self._tar.write(sample_members(key, jpg, text, meta))
        self._rows.append({"key": key, **meta})
        wnid = str(meta.get("wnid"))
        self.by_wnid[wnid] = self.by_wnid.get(wnid, 0) + 1
        if self._tar.samples >= self.per_shard:
            self.flush()

    def flush(self) -> None:
        """Finish the open shard (rename it, write its listing)."""
        if self._tar is None:
            return
        import pandas as pd
        import pyarrow as pa

        from laionet.core.manifest import write_parquet_atomic

        tar = self._tar.close()
        self._tar = None
        rows = pd.DataFrame(self._rows)
        write_parquet_atomic(pa.Table.from_pandas(rows, preserve_index=False), tar.removesuffix(".tar") + ".parquet")
        self.outputs.append(tar)
        self.lengths.append(len(self._rows))
        self._rows = []
        self.shard += 1

    def close(self) -> list[str]:
        self.flush()
        return self.outputs

    def abort(self, exc: BaseException | None = None) -> None:
        """Delete the unfinished shard (finished ones stay)."""
        if self._tar is not None:
            self._tar.abort(exc)
            self._tar, self._rows = None, []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


def shard_size(url: str) -> int | None:
    """The size of a shard file (None for a ``pipe:`` command, which has none until it runs)."""
    if url.startswith("pipe:"):
        return None
    fs, real = url_to_fs(url)
    return int(fs.size(real))


def info_path(shards_dir: str) -> str:
    from laionet.core.manifest import join

    return join(shards_dir, INFO_NAME)


def remove_shard_info(shards_dir: str) -> None:
    """Remove ``_info.json`` (a stage starting over: it is written again, with the manifest, when the stage ends)."""
    fs, real = url_to_fs(info_path(shards_dir))
    if fs.exists(real):
        fs.rm(real)


def write_shard_info(
    shards_dir: str,
    shards: Sequence[tuple[str, int]],
    by_wnid: Mapping[str, int],
    split: str,
    name: str,
) -> str:
    """Write ``<shards_dir>/_info.json`` (atomically) for timm's and webdataset users' loaders: ``shards`` are
    (tar path, samples) in order, ``by_wnid`` the samples per wnid."""
    from laionet.core.manifest import write_json_atomic

    classes = list(_imagenet1k())
    total = sum(n for _, n in shards)
    with_cls = sum(n for w, n in by_wnid.items() if w in _imagenet1k())
    info = {
        "name": name,
        "format": {
            "type": "webdataset",
            "layout": "img2dataset (NNNNN.tar, NNNNN.parquet listing)",
            "key": "__key__ is the sample key percent-encoded (laionet.images.shards.safe_key); json.key is the key",
            "members": {
                "jpg": "RGB JPEG",
                "txt": "caption (UTF-8)",
                "json": "metadata: key, wnid, class_index (the run's catalog), ...",
                "cls": "ImageNet-1k class index (sorted wnids, as timm/torchvision) as text; absent for other wnids",
            },
        },
        "num_classes": len(classes),
        "classes": classes,
        "counts": {
            "samples": total,
            "with_cls": with_cls,
            "without_cls": total - with_cls,
            "by_wnid": {w: int(n) for w, n in sorted(by_wnid.items())},
        },
        "splits": {
            split: {
                "name": split,
                "num_samples": total,
                "filenames": [tar.rstrip("/").rsplit("/", 1)[-1] for tar, _ in shards],
                "shard_lengths": [int(n) for _, n in shards],
            }
        },
    }
    path = info_path(shards_dir)
    write_json_atomic(path, info)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# stage helpers


def _check_sample(sample: dict[str, bytes]) -> str | None:
    """The reason a sample is unusable, or None."""
    if "jpg" not in sample:
        return "no_image"
    if "json" not in sample:
        return "no_metadata"
    try:
        meta = json.loads(sample["json"])
    except ValueError:
        return "bad_metadata"
    if not isinstance(meta, dict) or "key" not in meta:
        return "bad_metadata"
    try:
        decode_rgb(sample["jpg"]).load()
    except Exception:  # PIL raises a zoo of types for broken images
        return "undecodable_image"
    return None


def verify_shard(path: str, errors: ErrorLog | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """Read a whole shard: (keys of good samples, [(key, reason)] of bad ones). A shard that cannot be read to a clean
    end adds ``("*", "truncated_shard")``; samples its ``.parquet`` lists as downloaded but the tar lacks are
    ``missing_from_tar``. Each sample is checked as it streams by (one sample in memory)."""
    log = errors if errors is not None else ErrorLog()
    good: list[str] = []
    bad: list[tuple[str, str]] = []
    for safe, sample in iter_raw(path, log):
        key = original_key(safe)
        reason = _check_sample(sample)
        if reason is None:
            good.append(key)
        else:
            bad.append((key, reason))
            log.add(path, key, reason)
    shard_level = [(e.key, e.reason) for e in log.of(path) if e.key == "*"]
    bad[:0] = shard_level
    listing = path.removesuffix(".tar") + ".parquet"
    if not listing.startswith("pipe:"):
        fs, real = url_to_fs(listing)
        if fs.exists(real):
            with fs.open(real, "rb") as f:
                table = pq.read_table(f).to_pandas()
            expected = table.loc[table["status"] == "success", "key"] if "status" in table.columns else table["key"]
            seen = set(good) | {k for k, _ in bad}
            missing = [str(k) for k in expected if str(k) not in seen]
            bad.extend((k, "missing_from_tar") for k in missing)
            for k in missing:
                log.add(path, k, "missing_from_tar")
    return good, bad


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


def shard_groups(shards: str, groups: int) -> list[list[str]]:
    """The shards of ``shards`` (``list_shards``) split into at most ``groups`` contiguous, disjoint groups of
    near-equal size: the unit of work of a fanned-out per-shard stage (inference, OCR)."""
    listed = list_shards(shards)
    size = -(-len(listed) // max(1, groups))
    return [listed[i : i + size] for i in range(0, len(listed), size)]
