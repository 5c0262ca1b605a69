"""Section 4.3: for every labelled query caption, the most similar corpus caption — the nearest-caption dataset.

Each query (ImageNet-Captions text, or any caption set with classes) is encoded with the encoder of the corpus
embeddings, searched in the index (top ``k`` candidates), and re-scored exactly against the stored embeddings; its
best candidate is kept iff the similarity is **>** ``threshold`` (0.7 in the paper). Rule for a corpus caption that is
the nearest caption of several queries: of one class, it is kept once (``duplicate_pick``); of several classes, it is
dropped (``conflicting_classes``) — as the selection drops multi-label captions. With ``exclude_keys`` (the offline
demo, whose queries come from the corpus itself) a candidate whose key is a query's key is skipped.

Reads the labelled queries, the caption embeddings (clip-retrieval layout) and their index; writes
``<out>/index.parquet`` in the format of ``selection/laionet.parquet`` (so download, verify, inference and every
evaluation run on it unchanged; ``text_similarity`` = the query–caption similarity), ``pairs.parquet`` (every
query's best candidate, kept or not: query key and class, corpus key, similarity — the Fig. 16 sweep reads it) and
``sweep.parquet`` (per threshold 0.5–0.9: captions kept, classes covered), then the manifest.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from laionet.core.manifest import (
    Manifest,
    Timer,
    atomic_path,
    config_hash,
    file_digest,
    join,
    write_manifest,
    write_parquet_atomic,
)
from laionet.core.stage import require_complete, require_file_input, stage_run
from laionet.diagnostics.text_alone import read_labelled_captions
from laionet.retrieval.index import load_shard, open_index
from laionet.selection.encoders import TextEncoder, canonical_spec
from laionet.selection.select import INDEX_SCHEMA
from laionet.text.catalog import read_catalog

STAGE = "nearest-captions"
DROP_REASONS = ("class_not_in_catalog", "not_above_threshold", "duplicate_pick", "conflicting_classes")
SWEEP = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))


def rescore(
    queries: np.ndarray, candidates: np.ndarray, shards: list[np.ndarray], offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact similarity of each query to its candidate ids (−1 = none) from the stored embeddings: the best id and
    its similarity per query (−1 and −inf when no candidate)."""
    best_id = np.full(len(queries), -1, dtype=np.int64)
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    for i, row in enumerate(candidates):
        ids = row[row >= 0]
        if not len(ids):
            continue
        shard_of = np.searchsorted(offsets, ids, side="right") - 1
        rows = [np.asarray(shards[s][j - offsets[s]], dtype=np.float32) for s, j in zip(shard_of, ids, strict=True)]
        vectors = np.stack(rows)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        sims = vectors @ queries[i]
        j = int(sims.argmax())
        best_id[i], best[i] = ids[j], sims[j]
    return best_id, best


def run_nearest_captions(
    queries: str,
    emb_dir: str,
    index_dir: str,
    catalog_path: str,
    out_dir: str,
    threshold: float = 0.7,
    k: int = 10,
    nprobe: int | None = None,
    exclude_keys: bool = False,
    encoder_factory: Callable[[str], TextEncoder] | None = None,
    batch_size: int = 4096,
    index_name: str = "index.parquet",
) -> Manifest:
    """The nearest-caption dataset of a labelled query set (see module docstring).

    ``index_name``: the file name of the index (``laionet.parquet`` makes ``out_dir`` the ``selection/`` of a run
    directory of its own, which the image stages then take as they take LAIONet's).

    Raises:
        UpstreamError: an incomplete embedding or index stage; ValueError: bad query table.
    """
    timer = Timer()
    embedded = require_complete(emb_dir, "caption-embeddings", hint="re-run `laionet caption-embeddings`")
    built = require_complete(index_dir, "caption-index", hint="re-run `laionet caption-index`")
    require_file_input(catalog_path, "catalog", hint="re-run `laionet catalog`")
    spec = canonical_spec(str(embedded.extra.get("encoder", embedded.config.get("encoder"))))
    settings = {
        "threshold": threshold,
        "k": k,
        "nprobe": nprobe,
        "exclude_keys": exclude_keys,
        "encoder": spec,
        "index_name": index_name,
    }
    chash = config_hash({**settings, "queries": file_digest(queries), "embeddings": embedded.config_hash,
                         "index": built.config_hash, "catalog": file_digest(catalog_path)})  # fmt: skip
    with stage_run(out_dir, chash, STAGE) as done:
        if done:
            return done
        catalog = read_catalog(catalog_path)
        class_index = dict(zip(catalog["wnid"], catalog["class_index"], strict=True))
        frame = read_labelled_captions(queries)
        dropped = dict.fromkeys(DROP_REASONS, 0)
        known = frame["wnid"].isin(class_index) & frame["text"].notna()
        dropped["class_not_in_catalog"] = int((~known).sum())
        frame = frame[known].reset_index(drop=True)
        if encoder_factory is None:
            from laionet.selection.encoders import create_text_encoder

            encoder = create_text_encoder(spec)
        else:
            encoder = encoder_factory(spec)
        index = open_index(index_dir)
        if nprobe is not None and hasattr(index, "nprobe"):
            index.nprobe = nprobe
        shard_paths = [e for e, _ in built.extra["shards"]]
        shards = [load_shard(p) for p in shard_paths]
        offsets = np.asarray(built.extra["offsets"], dtype=np.int64)
        metadata = []
        for _, meta in built.extra["shards"]:
            with fsspec.open(meta, "rb") as f:
                metadata.append(pq.read_table(f, columns=["key", "url", "caption"]).to_pandas())
        meta = pd.concat(metadata, ignore_index=True)
        query_keys = set(frame["key"].astype(str)) if exclude_keys else set()
        corpus_keys = meta["key"].astype(str).to_numpy()
        best_ids, best_sims = [], []
        for start in range(0, len(frame), batch_size):
            q = encoder.encode(frame["text"].iloc[start : start + batch_size].tolist()).astype(np.float32)
            _, cand = index.search(q, k + (len(query_keys) and k))  # room for skipped self-matches
            if query_keys:
                cand = np.where(np.isin(corpus_keys[np.clip(cand, 0, None)], list(query_keys)) & (cand >= 0), -1, cand)
            ids, sims = rescore(q, cand, shards, offsets)
            best_ids.append(ids)
            best_sims.append(sims)
        ids = np.concatenate(best_ids) if best_ids else np.empty(0, np.int64)
        sims = np.concatenate(best_sims) if best_sims else np.empty(0, np.float32)
        pairs = pd.DataFrame({"query_key": frame["key"], "wnid": frame["wnid"],
                              "corpus_key": [corpus_keys[i] if i >= 0 else None for i in ids],
                              "corpus_id": ids, "similarity": sims.astype(np.float64)})  # fmt: skip
        kept, extra_drops = _select(pairs, threshold)
        for reason, n in extra_drops.items():
            dropped[reason] += n
        rows = meta.iloc[kept["corpus_id"].to_numpy()].reset_index(drop=True)
        index_table = pd.DataFrame(
            {
                "key": rows["key"].astype(str),
                "url": rows["url"],
                "text": rows["caption"],
                "wnid": kept["wnid"].to_numpy(),
                "class_index": kept["wnid"].map(class_index).astype("int64").to_numpy(),
                "text_similarity": kept["similarity"].astype("float32").to_numpy(),
                "nsfw": None,
                "width": None,
                "height": None,
                "laion_similarity": None,
            }
        )
        sweep = pd.DataFrame([_sweep_row(pairs, t) for t in SWEEP])
        outputs = {
            "index": join(out_dir, index_name),
            "pairs": join(out_dir, "pairs.parquet"),
            "sweep": join(out_dir, "sweep.parquet"),
        }
        write_parquet_atomic(pa.Table.from_pandas(index_table, schema=INDEX_SCHEMA, preserve_index=False),
                             outputs["index"])  # fmt: skip
        write_parquet_atomic(pa.Table.from_pandas(pairs, preserve_index=False), outputs["pairs"])
        write_parquet_atomic(pa.Table.from_pandas(sweep, preserve_index=False), outputs["sweep"])
        manifest = Manifest(
            stage=STAGE,
            config=settings | {"queries": queries, "embeddings": emb_dir, "index": index_dir},
            config_hash=chash,
            inputs=[queries, emb_dir, index_dir, catalog_path],
            outputs=list(outputs.values()),
            rows_in=len(frame) + dropped["class_not_in_catalog"],
            rows_out=len(index_table),
            dropped=dropped,
            wall_time_s=timer.elapsed,
            extra={
                "classes": int(index_table["wnid"].nunique()),
                "index_kind": built.extra.get("kind"),
                "threshold": threshold,
                "query_classes": int(frame["wnid"].nunique()),
            },
        )
        write_manifest(out_dir, manifest)
        return manifest


def _select(pairs: pd.DataFrame, threshold: float) -> tuple[pd.DataFrame, dict[str, int]]:
    """Apply the threshold (strict) and the rule for corpus captions picked by several queries."""
    above = pairs[(pairs["corpus_id"] >= 0) & (pairs["similarity"] > threshold)]
    drops = {"not_above_threshold": len(pairs) - len(above)}
    classes = above.groupby("corpus_id")["wnid"].nunique()
    conflicting = above["corpus_id"].map(classes) > 1
    drops["conflicting_classes"] = int(conflicting.sum())
    single = above[~conflicting].sort_values("similarity", ascending=False, kind="stable")
    kept = single.drop_duplicates("corpus_id", keep="first")
    drops["duplicate_pick"] = len(single) - len(kept)
    return kept.sort_values(["wnid", "corpus_id"]).reset_index(drop=True), drops


def _sweep_row(pairs: pd.DataFrame, threshold: float) -> dict[str, float]:
    kept, _ = _select(pairs, threshold)
    return {"threshold": threshold, "captions": len(kept), "classes": int(kept["wnid"].nunique())}


def variant_queries(labels_path: str, index_path: str, out_path: str) -> Manifest:
    """A labelled query set from a variant of a run: its samples' captions (``text`` of the selection index) with
    the variant's classes → ``out_path`` (``key``, ``text``, ``wnid``; the offline stand-in for ImageNet-Captions), its
    manifest beside it (redone when the variant or the index changes).

    Raises:
        UpstreamError: an incomplete variant or selection; ValueError: a label key missing from the index.
    """
    timer = Timer()
    require_file_input(labels_path, "variants", hint="re-run `laionet variants` (or the evaluate flow)")
    require_file_input(index_path, "select", hint="re-run `laionet select` (or the build flow)")
    chash = config_hash({"labels": file_digest(labels_path), "index": file_digest(index_path)})
    with stage_run(out_path, chash, "nearest-queries") as done:
        if done:
            return done
        with fsspec.open(labels_path, "rb") as f:
            labels = pq.read_table(f, columns=["key", "wnid"]).to_pandas()
        with fsspec.open(index_path, "rb") as f:
            texts = pq.read_table(f, columns=["key", "text"]).to_pandas().drop_duplicates("key")
        frame = labels.merge(texts, on="key", how="left")
        missing = frame["text"].isna()
        if missing.any():
            raise ValueError(f"{labels_path}: {int(missing.sum())} keys have no caption in {index_path}, e.g. "
                             f"{frame.loc[missing, 'key'].iloc[0]!r}")  # fmt: skip
        write_parquet_atomic(pa.Table.from_pandas(frame[["key", "text", "wnid"]], preserve_index=False), out_path)
        manifest = Manifest(
            stage="nearest-queries", config={"labels": labels_path, "index": index_path}, config_hash=chash,
            inputs=[labels_path, index_path], outputs=[out_path], rows_in=len(frame), rows_out=len(frame),
            wall_time_s=timer.elapsed,
        )  # fmt: skip
        write_manifest(out_path, manifest)
        return manifest


def copy_catalog(catalog_path: str, run_dir: str) -> str:
    """The catalog of the run whose ``selection/`` a search wrote, as ``<run_dir>/catalog.parquet`` (the image
    stages read class names from it); rewritten only when its content differs."""
    require_file_input(catalog_path, "catalog", hint="re-run `laionet catalog`")
    target = join(run_dir, "catalog.parquet")
    fs, real = url_to_fs(target)
    if fs.exists(real) and file_digest(target) == file_digest(catalog_path):
        return target  # untouched: its mtime is part of the cache keys of the stages that read it
    # a byte copy (not a parquet re-encoding, whose bytes would never equal the source's: rewritten on every run)
    with atomic_path(target) as tmp, fsspec.open(catalog_path, "rb") as src, fsspec.open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return target
