"""Streaming reader for corpus metadata parts (LAION-style parquet) with configurable column names.

Reads one parquet part in record batches (bounded memory) and yields batches in our canonical schema:
``row`` (position in the part), ``key``, ``text``, ``url``, ``nsfw``, ``width``, ``height``, ``laion_similarity``.
Captions that cannot be used are nulled and counted by reason (``null_text``, ``invalid_utf8``, ``too_long``,
``null_key``), never silently lost. Problems that concern a whole file or column raise ``CorpusError`` naming
the file and the column.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

# canonical name → Arrow type of the carried columns
CARRIED_TYPES: dict[str, pa.DataType] = {
    "text": pa.string(),
    "url": pa.string(),
    "nsfw": pa.string(),
    "width": pa.int64(),
    "height": pa.int64(),
    "laion_similarity": pa.float64(),
}
BAD_REASONS = ("null_text", "invalid_utf8", "too_long", "null_key", "duplicate_key")
DUPLICATE_SAMPLE = 5  # keys named in a part's record when duplicates are dropped


class CorpusError(ValueError):
    """A corpus file or column cannot be read as configured."""


class ColumnMap(BaseModel):
    """Where each canonical column comes from in the corpus files (LAION-400M names by default).

    ``key=None`` derives keys as ``<part stem>/<row>``. Any other column set to None is not read and comes out
    null; a named column that is absent from a file is an error.
    """

    key: str | None = None
    text: str = "TEXT"
    url: str | None = "URL"
    nsfw: str | None = "NSFW"
    width: str | None = "WIDTH"
    height: str | None = "HEIGHT"
    laion_similarity: str | None = "similarity"

    def sources(self) -> dict[str, str]:
        """canonical name → corpus column, for the columns that are read (key excluded)."""
        named = {name: getattr(self, name) for name in CARRIED_TYPES}
        return {k: v for k, v in named.items() if v}


@dataclass
class BatchCounts:
    rows: int = 0
    bad: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BAD_REASONS, 0))
    duplicate_keys: list[str] = field(default_factory=list)  # a sample of the keys dropped as duplicate_key


def open_part(path: str, columns: ColumnMap) -> pq.ParquetFile:
    """Open a corpus part and check that every configured column exists.

    Raises:
        CorpusError: if the file is missing/unreadable/not parquet, or a configured column is absent.
    """
    try:
        handle = fsspec.open(path, "rb").open()
        part = pq.ParquetFile(handle)
    except FileNotFoundError as exc:
        raise CorpusError(f"{path}: file not found") from exc
    except (OSError, pa.ArrowException) as exc:
        raise CorpusError(f"{path}: not a readable parquet file ({exc})") from exc
    names = set(part.schema_arrow.names)
    wanted = {**columns.sources(), **({"key": columns.key} if columns.key else {})}
    for canonical, column in wanted.items():
        if column not in names:
            raise CorpusError(
                f"{path}: column {column!r} (for {canonical}) not found; columns are {sorted(names)}. "
                f"Set the column name with --{canonical.replace('_', '-')}-col."
            )
    return part


def _repeated_keys(key: pa.Array, seen: set[str]) -> pa.Array | None:
    """Mask of the rows whose (non-null) key occurred earlier in the part — in ``seen`` or earlier in this batch —
    and add this batch's keys to ``seen``; None when no key repeats."""
    values = key.to_pylist()
    mask = []
    for value in values:
        if value is None:
            mask.append(False)
        elif value in seen:
            mask.append(True)
        else:
            seen.add(value)
            mask.append(False)
    return pa.array(mask, pa.bool_()) if any(mask) else None


def _decode_text(array: pa.Array, path: str, column: str, counts: BatchCounts) -> pa.Array:
    """Return a valid string array; rows that are not valid UTF-8 become null and are counted."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_null(array.type):  # a column with no caption at all (Arrow type null): every row is null_text
        return pa.nulls(len(array), pa.string())
    if pa.types.is_large_string(array.type):
        array = array.cast(pa.string())
    if pa.types.is_string(array.type):
        try:
            array.validate(full=True)
            return array
        except pa.ArrowInvalid:
            array = array.view(pa.binary())
    if pa.types.is_large_binary(array.type):
        array = array.cast(pa.binary())
    if not pa.types.is_binary(array.type):
        raise CorpusError(f"{path}: caption column {column!r} has type {array.type}, expected string or binary")
    decoded: list[str | None] = []
    for raw in array.to_pylist():
        if raw is None:
            decoded.append(None)
            continue
        try:
            decoded.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            decoded.append(None)
            counts.bad["invalid_utf8"] += 1
    return pa.array(decoded, type=pa.string())


def _carried(array: pa.Array, target: pa.DataType, path: str, column: str) -> pa.Array:
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    try:
        return array.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise CorpusError(f"{path}: column {column!r} ({array.type}) cannot be read as {target}: {exc}") from exc


def _batches(part: pq.ParquetFile, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
    """Record batches of at most ``batch_size`` rows, one row group in memory at a time.

    (``ParquetFile.iter_batches`` keeps memory growing with the number of row groups read; reading row group by
    row group keeps the peak at one row group whatever the part size.)
    """
    for index in range(part.num_row_groups):
        yield from part.read_row_group(index, columns=columns).to_batches(max_chunksize=batch_size)


def iter_part(
    path: str, columns: ColumnMap, batch_size: int = 65_536, max_text_bytes: int = 65_536
) -> Iterator[tuple[pa.RecordBatch, BatchCounts]]:
    """Stream a corpus part as canonical record batches.

    Yields:
        (batch, counts): ``batch`` has ``row, key`` and the carried columns; unusable captions are null in
        ``text`` and counted in ``counts.bad`` (exactly one reason per row).

    Raises:
        CorpusError: naming the file (and column) when the part is unreadable, truncated or mistyped.
    """
    part = open_part(path, columns)
    sources = columns.sources()
    read_cols = sorted({*sources.values(), *([columns.key] if columns.key else [])})
    stem = path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".parquet")
    start = 0
    seen: set[str] = set()  # keys of this part so far: a repeated key keeps its first row (duplicate_key)
    try:
        for batch in _batches(part, read_cols, batch_size):
            counts = BatchCounts(rows=batch.num_rows)
            n = batch.num_rows
            rows = pa.array(np.arange(start, start + n, dtype=np.int64))
            data: dict[str, pa.Array] = {"row": rows}
            if columns.key:
                key = _carried(batch.column(columns.key), pa.string(), path, columns.key)
            else:
                key = pc.binary_join_element_wise(f"{stem}/", rows.cast(pa.string()), "")
            data["key"] = key
            for canonical, target in CARRIED_TYPES.items():
                column = sources.get(canonical)
                if column is None:
                    data[canonical] = pa.nulls(n, type=target)
                elif canonical == "text":
                    data[canonical] = _decode_text(batch.column(column), path, column, counts)
                else:
                    data[canonical] = _carried(batch.column(column), target, path, column)
            text = data["text"]
            null_key = pc.is_null(key)
            too_long = pc.fill_null(pc.greater(pc.binary_length(text), max_text_bytes), False)
            unusable = pc.or_(null_key, too_long)
            # one reason per row, in this order: null_text (null at the source), invalid_utf8 (counted when it was
            # nulled above), null_key, too_long
            counts.bad["null_text"] = int(pc.sum(pc.is_null(text)).as_py() or 0) - counts.bad["invalid_utf8"]
            counts.bad["null_key"] = int(pc.sum(pc.and_(null_key, pc.is_valid(text))).as_py() or 0)
            counts.bad["too_long"] = int(pc.sum(pc.and_(too_long, pc.invert(null_key))).as_py() or 0)
            repeated = _repeated_keys(key, seen) if columns.key else None  # '<stem>/<row>' keys are unique
            if repeated is not None:  # counted only where no earlier reason applies
                dup = pc.and_(repeated, pc.invert(pc.or_(unusable, pc.is_null(text))))
                counts.bad["duplicate_key"] = int(pc.sum(dup).as_py() or 0)
                counts.duplicate_keys = pc.filter(key, dup).to_pylist()[:DUPLICATE_SAMPLE]
                unusable = pc.or_(unusable, repeated)
            data["text"] = pc.if_else(unusable, pa.scalar(None, pa.string()), text)
            yield pa.RecordBatch.from_pydict(data), counts
            start += n
    except CorpusError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise CorpusError(f"{path}: failed reading after row {start} ({exc}); the part may be truncated") from exc
    finally:
        part.close(force=True)  # the file handle open_part opened
