"""Parquet tables by glob: the columns a reader needs from every file matching a pattern, local or fsspec URL.

Shared by every stage that reads another stage's tables (inference, evaluation, variants, relations).
"""

from __future__ import annotations

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs


def expand(pattern: str) -> list[str]:
    """The files a glob (or one path) names, sorted; fsspec URLs keep their protocol.

    Raises:
        FileNotFoundError: nothing matches.
    """
    fs, path = url_to_fs(pattern)
    paths = sorted(fs.glob(path)) if any(c in path for c in "*?[") else ([path] if fs.exists(path) else [])
    if not paths:
        raise FileNotFoundError(f"nothing matches {pattern!r}")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return paths if protocol in ("file", "local") else [f"{protocol}://{p}" for p in paths]


def read_file_columns(path: str, columns: list[str]) -> pd.DataFrame:
    """``columns`` of one parquet file (only those are read; others, e.g. prediction ``scores``, are skipped).

    Raises:
        ValueError: naming the file and the missing columns; ``pyarrow.ArrowInvalid`` (a ValueError) naming the file
            when it is not parquet or is corrupt.
    """
    with fsspec.open(path, "rb") as f:
        try:
            parquet = pq.ParquetFile(f)
        except pa.ArrowInvalid as exc:  # "Parquet magic bytes not found in footer" alone does not say which file
            raise pa.ArrowInvalid(f"{path}: not a readable parquet file ({exc})") from exc
        names = parquet.schema_arrow.names
        missing = set(columns) - set(names)
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)} (has {names})")
        return parquet.read(columns=columns).to_pandas()


def read_columns(pattern: str, columns: list[str]) -> pd.DataFrame:
    """``columns`` of every parquet file matching ``pattern``, concatenated."""
    return pd.concat([read_file_columns(p, columns) for p in expand(pattern)], ignore_index=True)
