"""Writing WebDataset shards in the format that ``laionet.images.shards`` describes: RGB JPEG encoding
(``encode_rgb_jpeg``), a sample's members (``sample_members``), one tar streamed sample by sample (``TarStream``), the
rolling ``ShardWriter`` (``NNNNN.tar`` plus its ``NNNNN.parquet`` listing) and the directory's ``_info.json``
(``write_shard_info``).

Writing (``ShardWriter``) streams sample by sample into ``webdataset.TarWriter`` inside ``atomic_path``: memory is
bounded by one sample (plus each sample's few metadata fields for the shard's listing), not by a shard.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from types import TracebackType
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from laionet.core.runtime import limit_image_pixels
from laionet.images.shards import imagenet1k_classes, imagenet1k_index, safe_key

INFO_NAME = "_info.json"


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

    classes = list(imagenet1k_classes())
    total = sum(n for _, n in shards)
    with_cls = sum(n for w, n in by_wnid.items() if w in imagenet1k_classes())
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
