"""Precomputed caption embeddings (LAION's released CLIP ViT-B/32 ``text_emb_<i>.npy`` + ``metadata_<i>.parquet``)
used in place of a text model for captions.

Reads embedding shards (``(N, D)`` arrays, any float dtype) paired with their metadata parquet (same ``<i>``, same
row order) and the match parts; writes, per match part, ``<out>/_caption_emb/<stem>.npy`` (float16 ``(rows, D)``,
aligned with the part's rows; NaN where the caption has no precomputed embedding). Rows are joined on
(url, caption) — LAION's metadata carries both — so no key scheme has to agree. Shards are streamed one at a time;
memory follows the matched rows' hashes (8 bytes each) plus one shard.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from tqdm.auto import tqdm

from laionet.core.manifest import atomic_path, join, part_stem

_INDEX = re.compile(r"(\d+)(?!.*\d)")


class EmbeddingShardError(ValueError):
    """Embedding files that cannot be used as given."""


def pair_shards(embeddings: str, metadata: str) -> list[tuple[str, str]]:
    """Pair ``text_emb_<i>.npy`` files with ``metadata_<i>.parquet`` files by the last number in their names.

    Raises:
        EmbeddingShardError: if a glob matches nothing or a file has no partner.
    """
    emb_fs, emb_glob = url_to_fs(embeddings)
    meta_fs, meta_glob = url_to_fs(metadata)
    emb = {_number(p): p for p in emb_fs.glob(emb_glob)}
    meta = {_number(p): p for p in meta_fs.glob(meta_glob)}
    if not emb or not meta:
        raise EmbeddingShardError(f"no files match {embeddings if not emb else metadata!r}")
    lonely = sorted(set(emb) ^ set(meta))
    if lonely:
        i = lonely[0]
        have = emb.get(i) or meta.get(i)
        raise EmbeddingShardError(f"{have} has no partner with number {i} among {embeddings!r} / {metadata!r}")
    return [(emb[i], meta[i]) for i in sorted(emb)]


def _number(path: str) -> int:
    m = _INDEX.search(path.rsplit("/", 1)[-1])
    if not m:
        raise EmbeddingShardError(f"{path}: no shard number in the file name")
    return int(m.group(1))


def caption_hashes(urls: pd.Series, texts: pd.Series) -> np.ndarray:
    """64-bit hashes of (url, caption) pairs: uint64 (N,)."""
    joined = urls.fillna("").astype(str) + "\x1f" + texts.fillna("").astype(str)
    return pd.util.hash_array(joined.to_numpy(dtype=object))


def _load_shard(emb_path: str, meta_path: str, url_col: str, text_col: str) -> tuple[np.ndarray, np.ndarray]:
    with fsspec.open(meta_path, "rb") as f:
        meta = pq.read_table(f, columns=[url_col, text_col]).to_pandas()
    with fsspec.open(emb_path, "rb") as f:
        emb = np.load(f)
    if emb.ndim != 2 or emb.shape[0] != len(meta):
        raise EmbeddingShardError(
            f"{emb_path} has {emb.shape[0] if emb.ndim else 0} rows but {meta_path} has {len(meta)}: refusing to "
            "join misaligned files"
        )
    return caption_hashes(meta[url_col], meta[text_col]), emb


def gather(
    parts: list[str],
    shards: list[tuple[str, str]],
    out_dir: str,
    url_col: str = "url",
    text_col: str = "caption",
) -> dict[str, str]:
    """Collect the precomputed embedding of every row of every match part (NaN rows where none exists).

    Returns:
        match part → path of its float16 (rows, D) ``.npy``, rows aligned with the part.
    """
    hashes = []
    for part in parts:
        with fsspec.open(part, "rb") as f:
            frame = pq.read_table(f, columns=["url", "text"]).to_pandas()
        hashes.append(caption_hashes(frame["url"], frame["text"]))
    wanted = np.concatenate(hashes) if hashes else np.empty(0, dtype=np.uint64)
    owner = np.repeat(np.arange(len(parts)), [len(h) for h in hashes])
    row = np.concatenate([np.arange(len(h)) for h in hashes]) if hashes else np.empty(0, dtype=np.int64)
    order = np.argsort(wanted, kind="stable")
    wanted, owner, row = wanted[order], owner[order], row[order]
    arrays: list[np.ndarray] = []
    for shard_hash, emb in _stream(shards, url_col, text_col):
        if not arrays:
            arrays = [np.full((len(h), emb.shape[1]), np.nan, dtype=np.float16) for h in hashes]
        lo = np.searchsorted(wanted, shard_hash, side="left")
        hi = np.searchsorted(wanted, shard_hash, side="right")
        single = np.flatnonzero(hi - lo == 1)
        for p in np.unique(owner[lo[single]]):  # the common case, vectorised per part
            sel = single[owner[lo[single]] == p]
            arrays[p][row[lo[sel]]] = emb[sel]
        for shard_row in np.flatnonzero(hi - lo > 1):  # the same (url, caption) in several rows
            for j in range(lo[shard_row], hi[shard_row]):
                arrays[owner[j]][row[j]] = emb[shard_row]
    out: dict[str, str] = {}
    for i, part in enumerate(parts):
        path = join(out_dir, "_caption_emb", f"{part_stem(part)}.npy")
        with atomic_path(path) as tmp, fsspec.open(tmp, "wb") as f:
            np.save(f, arrays[i])
        out[part] = path
    return out


def _stream(shards: list[tuple[str, str]], url_col: str, text_col: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for emb_path, meta_path in tqdm(shards, desc="embedding shards", unit="shard", disable=None):
        yield _load_shard(emb_path, meta_path, url_col, text_col)
