"""Shared fixtures: tiny data built in tmp directories, and the real 1000-class catalog built once."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laionet.catalog import build_catalog, load_class_set


@pytest.fixture(scope="session")
def catalog_1k() -> pd.DataFrame:
    """The ImageNet-1k catalog from real WordNet 3.0 (built once per test session)."""
    return build_catalog(load_class_set("imagenet1k"))


def write_corpus_part(path: Path, texts: list[object], **extra: list[object]) -> Path:
    """Write a LAION-style corpus part with the given captions (other columns filled in)."""
    n = len(texts)
    columns: dict[str, object] = {
        "SAMPLE_ID": pa.array(range(n), pa.int64()),
        "URL": pa.array([f"http://127.0.0.1:1/{i}.jpg" for i in range(n)], pa.string()),
        "TEXT": texts if isinstance(texts, pa.Array) else pa.array(texts, pa.string()),
        "HEIGHT": pa.array([64] * n, pa.int64()),
        "WIDTH": pa.array([48] * n, pa.int64()),
        "LICENSE": pa.array(["?"] * n, pa.string()),
        "NSFW": pa.array(["UNLIKELY"] * n, pa.string()),
        "similarity": pa.array([0.3] * n, pa.float64()),
    }
    columns.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path
