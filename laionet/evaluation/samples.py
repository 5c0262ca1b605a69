"""What the evaluation drivers share: the samples of a variant that every metric scores, embedding shards, and two
helpers of the pairwise per-class comparisons (``intra_class``, ``recall``, ``own_similarity``).

File contracts (extra columns are ignored):
- labels: parquet with ``key`` and ``class_index`` (e.g. the LAIONet index or an ingested reference dataset);
- flags (optional): parquet with ``key`` and ``flagged`` (bool, e.g. the OCR filter); flagged samples are excluded;
- embeddings: ``<stem>.npy`` (float16/32 (N, D), L2-normalised) with ``<stem>.keys.parquet`` (``key``, N rows), e.g.
  the glob ``inference/<dataset>/<model>/*.npy``.
"""

from __future__ import annotations

from typing import Any

import fsspec
import numpy as np
import pandas as pd

from laionet.core.tables import expand as _glob
from laionet.core.tables import read_columns
from laionet.core.tables import read_file_columns as _read


def read_embeddings(pattern: str) -> tuple[np.ndarray, np.ndarray]:
    """Load ``<stem>.npy`` + ``<stem>.keys.parquet`` shards: (float32 (N, D), keys (N,)).

    Raises:
        ValueError: naming both files when an embedding file and its keys disagree in length.
    """
    arrays, keys = [], []
    for path in _glob(pattern):
        keys_path = path.removesuffix(".npy") + ".keys.parquet"
        with fsspec.open(path, "rb") as f:
            emb = np.load(f)
        k = _read(keys_path, ["key"])["key"].to_numpy()
        if emb.ndim != 2 or len(emb) != len(k):
            raise ValueError(f"{path} has {len(emb)} rows but {keys_path} has {len(k)} keys: refusing to pair them")
        arrays.append(emb.astype(np.float32))
        keys.append(k)
    return np.concatenate(arrays), np.concatenate(keys)


def variant_samples(labels: str, flags: str | None = None) -> tuple[pd.DataFrame, int]:
    """The samples of a variant that every metric scores: its labels (``key``, ``class_index``) minus the keys flagged
    in ``flags`` (``key``, ``flagged``; e.g. the OCR filter). Returns (labels kept, number flagged). Accuracy,
    intra-class similarity and own-synset similarity all read a variant through this, so per-class accuracy and
    intra-class similarity joined in one figure (Fig. 7) describe the same images."""
    frame = read_columns(labels, ["key", "class_index"])
    if not flags:
        return frame, 0
    flag_frame = read_columns(flags, ["key", "flagged"])
    flagged = frame["key"].isin(flag_frame.loc[flag_frame["flagged"].astype(bool), "key"]).to_numpy()
    return frame[~flagged], int(flagged.sum())


def comparison_paths(config: dict[str, Any]) -> list[str]:
    """The input paths of a comparison whose config lists them per dataset (``a``, ``b``; None: not given)."""
    return [p for p in (*config["a"], *config["b"]) if p]


def verdict_label(table: pd.DataFrame) -> pd.Series:
    """Per row, ``lower`` / ``higher`` / ``neither``: A significantly lower / higher than B / neither."""
    return pd.Series(
        np.where(table["significantly_lower"], "lower", np.where(table["significantly_higher"], "higher", "neither")),
        index=table.index,
        dtype="object",
    )
