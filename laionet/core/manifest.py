"""Stage manifests and atomic writes.

Every stage writes its manifest last (``<dir>/_manifest.json``, or ``<file>.manifest.json`` for a single-file
output); a stage is complete iff its manifest exists.
Writers never open a final path directly: they write ``<name>.tmp-<uuid>`` beside it and rename.
All paths go through fsspec, so a directory may be local or object storage.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from pydantic import BaseModel, Field

from laionet import __version__

MANIFEST_NAME = "_manifest.json"


@lru_cache(maxsize=1)
def code_version() -> str:
    """``laionet.__version__`` plus a digest of the package's files (source and bundled data), so an edit to the
    library changes it even without a version bump."""
    root = Path(__file__).resolve().parents[1]  # the laionet package (this module is laionet/core/manifest.py)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


class CountMismatchError(ValueError):
    """Rows in ≠ rows out + rows dropped."""


class Manifest(BaseModel):
    """What a stage read, wrote, dropped and how long it took."""

    stage: str
    config: dict[str, Any]
    config_hash: str
    code_version: str = Field(default_factory=code_version)
    inputs: list[str] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)
    rows_in: int
    rows_out: int
    dropped: dict[str, int] = Field(default_factory=dict)
    wall_time_s: float = 0.0
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    extra: dict[str, Any] = Field(default_factory=dict)

    def check_counts(self) -> None:
        """Raise if the row counts do not add up."""
        total = self.rows_out + sum(self.dropped.values())
        if total != self.rows_in:
            raise CountMismatchError(
                f"stage {self.stage}: rows_in={self.rows_in} but rows_out + dropped = {self.rows_out} + "
                f"{sum(self.dropped.values())} = {total} ({self.dropped})"
            )


def config_hash(config: Any) -> str:
    """A short, stable hash of a JSON-serialisable config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_digest(path: str, chunk: int = 1 << 20) -> str:
    """sha256 (first 16 hex digits) of a file's bytes."""
    digest = hashlib.sha256()
    with fsspec.open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:16]


def join(base: str, *parts: str) -> str:
    """Join path segments with '/', for local paths and URLs alike."""
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def is_local(fs: Any) -> bool:
    """Whether an fsspec filesystem is the local one (where fsync and hard links exist)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error delete it.

    On the local filesystem the file is fsync'ed before the rename and the directory after it, so a crash (or a
    power loss) leaves either the old file or the complete new one, never a truncated file under the final name.
    """
    fs, real = url_to_fs(path)
    parent = real.rsplit("/", 1)[0] if "/" in real else "."
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{real}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        if is_local(fs):
            _fsync_file(tmp)
            os.replace(tmp, real)  # never fsspec's mv: onto an existing directory it moves *into* it
            _fsync_dir(parent)
        else:
            fs.mv(tmp, real)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    with atomic_path(path) as tmp, fsspec.open(tmp, "w") as f:
        f.write(text)


def write_json_atomic(path: str, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet_atomic(table: pa.Table, path: str) -> None:
    with atomic_path(path) as tmp, fsspec.open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd")


def manifest_path(target: str) -> str:
    """Where the manifest of a stage output lives: ``<dir>/_manifest.json`` for a directory output,
    ``<file>.manifest.json`` for a single-file output (``*.parquet``)."""
    if target.endswith(".parquet"):
        return f"{target}.manifest.json"
    return join(target, MANIFEST_NAME)


def incomplete_marker(target: str) -> str:
    """The marker of an output being (re)built: ``<dir>/_INCOMPLETE`` or ``<file>.incomplete``."""
    if target.endswith(".parquet"):
        return f"{target}.incomplete"
    return join(target, "_INCOMPLETE")


def write_manifest(target: str, manifest: Manifest) -> str:
    """Check the counts and write the manifest of ``target`` (see ``manifest_path``) atomically, then remove the
    output's ``_INCOMPLETE`` marker; return the manifest's path. Call it last: the output is complete from here."""
    manifest.check_counts()
    path = manifest_path(target)
    write_text_atomic(path, manifest.model_dump_json(indent=2) + "\n")
    fs, marker = url_to_fs(incomplete_marker(target))
    if fs.exists(marker):
        fs.rm(marker)
    return path


def read_manifest(target: str) -> Manifest | None:
    """The manifest of a stage output, or None if the stage is not complete."""
    path = manifest_path(target)
    fs, real = url_to_fs(path)
    if not fs.exists(real):
        return None
    with fsspec.open(path, "r") as f:
        text = f.read()
    try:
        return Manifest.model_validate_json(text)
    except ValueError as exc:  # pydantic's ValidationError does not say which file
        raise ValueError(f"{path} is not a valid stage manifest (delete it to redo the stage): {exc}") from exc


def completed(target: str, chash: str) -> Manifest | None:
    """The manifest of ``target`` if that stage output is complete for config hash ``chash`` and every output it
    lists still exists; else None (the stage must run)."""
    manifest = read_manifest(target)
    if manifest is None or manifest.config_hash != chash:
        return None
    for output in manifest.outputs:
        fs, real = url_to_fs(output)
        if not fs.exists(real):
            return None
    return manifest


def part_stem(path: str) -> str:
    """The name of a part file without directory and ``.parquet``: outputs and records are named after it."""
    return path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".parquet")


def _output_identity(paths: list[str]) -> dict[str, Any] | None:
    """Size and modification time of each output file (None if one is missing): a part's outputs as its record saw
    them. A run of another configuration that rewrites an output (and is killed before its own record) changes
    them, so the stale record no longer vouches for the file."""
    found: dict[str, Any] = {}
    for path in paths:
        fs, real = url_to_fs(path)
        try:
            info = fs.info(real)
        except FileNotFoundError:
            return None
        found[path] = [int(info.get("size") or 0), str(info.get("mtime") or info.get("LastModified") or "")]
    return found


def _record_outputs(record: dict[str, Any]) -> list[str]:
    outputs = [str(o) for o in record.get("outputs") or []]
    return outputs or ([str(record["output"])] if record.get("output") else [])


def write_part_record(out_dir: str, part: str, record: dict[str, Any]) -> None:
    """Record that one input part is done (write its output first): ``<out_dir>/_parts/<stem>.json``. The record
    should carry ``config_hash`` and the input's ``identity`` (``laionet.core.stage.input_identity``); it is stamped
    with its outputs' size and mtime (``output_identity``), which ``read_part_record`` checks."""
    stamped = {k: v for k, v in record.items() if k != "output_identity"}
    stamped["output_identity"] = _output_identity(_record_outputs(stamped))
    write_json_atomic(join(out_dir, "_parts", f"{part_stem(part)}.json"), {"part": part, **stamped})


def read_part_record(
    out_dir: str, part: str, part_hash: str, identity: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The record of a part finished under ``part_hash`` from the same input (``identity``, when given) whose
    output still exists, else None (redo the part). An unreadable record is redone too, never trusted."""
    path = join(out_dir, "_parts", f"{part_stem(part)}.json")
    fs, real = url_to_fs(path)
    if not fs.exists(real):
        return None
    try:
        with fsspec.open(path, "r") as f:
            record: dict[str, Any] = json.load(f)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    out_fs, out_real = url_to_fs(str(record.get("output", "")))
    if record.get("config_hash") != part_hash or record.get("part") != part or not out_fs.exists(out_real):
        return None
    if identity is not None and record.get("identity") != identity:
        return None
    stamp = record.get("output_identity")
    if stamp is not None and _output_identity(list(stamp)) != stamp:  # an output rewritten since (another config)
        return None
    return record


def parquet_rows(path: str) -> int | None:
    """Row count from a parquet file's footer, or None if it cannot be read (the real read reports why)."""
    try:
        with fsspec.open(path, "rb") as f:
            return int(pq.ParquetFile(f).metadata.num_rows)
    except Exception:
        return None


class Timer:
    """Wall-clock seconds since construction."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return round(time.perf_counter() - self._start, 3)
