"""A faiss inner-product index over caption embeddings in clip-retrieval's layout (the only faiss import).

Reads ``<emb>/text_emb/text_emb_<i>.npy`` + ``<emb>/metadata/metadata_<i>.parquet`` (ours or LAION's released ones);
writes ``<out>/index.faiss`` and the manifest, whose ``extra`` holds what a reader needs — the shard files and their
row offsets (index id = offset of its shard + row in it) — and what the index is worth: its kind and parameters, its
size in bytes and per vector, and recall@1 against exact search on held-out queries.

Kinds: ``flat`` (exact inner product) for small corpora; ``ivfpq`` (IVF with ``nlist`` lists, product quantisation of
``m`` codes of ``nbits`` per vector) for large ones — a 400M-caption index then takes ~``m·nbits/8`` bytes per
vector plus ids, and is opened memory-mapped (``faiss.IO_FLAG_MMAP``) so it need not fit in RAM. ``auto`` picks flat
up to ``flat_max`` vectors. Vectors are added shard by shard in float32 chunks: memory is bounded by a chunk, not the
corpus.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from fsspec.core import url_to_fs
from pydantic import BaseModel, Field

from laionet.core.manifest import Manifest, Timer, atomic_path, config_hash, is_local, join, write_manifest
from laionet.core.stage import input_identity, require_complete, stage_run
from laionet.selection.precomputed import pair_shards

STAGE = "caption-index"


class IndexConfig(BaseModel):
    """How the index is built."""

    kind: str = Field("auto", pattern="^(auto|flat|ivfpq)$")
    flat_max: int = Field(1_000_000, gt=0, description="auto: exact search up to this many vectors")
    nlist: int | None = Field(None, description="IVF lists (default ≈ 4·√N)")
    m: int | None = Field(None, description="PQ sub-quantisers per vector (default D/8)")
    nbits: int = Field(8, ge=4, le=8, description="bits per sub-quantiser code (8: 256 centroids each; 4: 16)")
    nprobe: int = Field(32, gt=0, description="lists searched per query")
    train_size: int = Field(200_000, gt=0, description="vectors sampled to train IVF-PQ")
    chunk: int = Field(100_000, gt=0, description="vectors added at a time")
    recall_queries: int = Field(1000, ge=0, description="held-out queries for the recall@1 measurement (0: skip)")
    seed: int = 0


def shard_files(emb_dir: str) -> list[tuple[str, str]]:
    """The (embeddings, metadata) file pairs of a clip-retrieval layout directory, in shard order."""
    return pair_shards(join(emb_dir, "text_emb", "text_emb_*.npy"), join(emb_dir, "metadata", "metadata_*.parquet"))


def load_shard(path: str) -> np.ndarray:
    """One embedding shard, memory-mapped where the file system allows (float16/32 (N, D))."""
    fs, real = url_to_fs(path)
    if is_local(fs):
        return np.load(real, mmap_mode="r")
    with fs.open(real, "rb") as f:
        return np.load(f)


def _normalised(block: np.ndarray) -> np.ndarray:
    x = np.asarray(block, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def exact_top1(queries: np.ndarray, shards: list[np.ndarray], chunk: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest neighbour by inner product over every shard, chunk by chunk: (ids int64 (Q,), scores (Q,))."""
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    ids = np.full(len(queries), -1, dtype=np.int64)
    offset = 0
    for shard in shards:
        for start in range(0, len(shard), chunk):
            block = _normalised(shard[start : start + chunk])
            sims = queries @ block.T
            arg = sims.argmax(axis=1)
            top = sims[np.arange(len(queries)), arg]
            better = top > best
            best[better], ids[better] = top[better], offset + start + arg[better]
        offset += len(shard)
    return ids, best


def _build(kind: str, d: int, n: int, config: IndexConfig, sample: np.ndarray) -> tuple[Any, dict[str, Any]]:
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(d), {"kind": "flat"}
    nlist = config.nlist or max(1, int(4 * math.sqrt(n)))
    nlist = min(nlist, max(1, len(sample) // 39))  # faiss wants ≥ 39 training points per list
    m = config.m or max(1, d // 8)
    while d % m:
        m -= 1
    index: Any = faiss.index_factory(d, f"IVF{nlist},PQ{m}x{config.nbits}", faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    nprobe = min(config.nprobe, nlist)
    faiss.extract_index_ivf(index).nprobe = nprobe
    params = {"kind": "ivfpq", "nlist": nlist, "m": m, "nbits": config.nbits, "nprobe": nprobe}
    return index, params | {"trained_on": len(sample)}


def run_index(emb_dir: str, out_dir: str, config: IndexConfig | None = None) -> Manifest:
    """Build the index of a caption-embedding directory (see module docstring); manifest last.

    Raises:
        EmbeddingShardError: unpaired or missing shard files; ValueError: shards of different dimensions.
    """
    import faiss

    config = config or IndexConfig()
    timer = Timer()
    if url_to_fs(join(emb_dir, "_manifest.json"))[0].exists(url_to_fs(join(emb_dir, "_manifest.json"))[1]):
        require_complete(emb_dir, "caption-embeddings", hint="re-run `laionet caption-embeddings`")
    pairs = shard_files(emb_dir)
    chash = config_hash({"config": config.model_dump(), "shards": [[e, input_identity(e)] for e, _ in pairs]})
    with stage_run(out_dir, chash, STAGE) as done:
        if done:
            return done
        shards = [load_shard(e) for e, _ in pairs]
        dims = {s.shape[1] for s in shards if s.ndim == 2 and len(s)}
        if len(dims) > 1:
            raise ValueError(f"{emb_dir}: embedding shards of different dimensions {sorted(dims)}")
        d = dims.pop() if dims else 0
        sizes = [len(s) for s in shards]
        n = sum(sizes)
        if n == 0:
            raise ValueError(f"{emb_dir}: no caption embeddings")
        kind = config.kind if config.kind != "auto" else ("flat" if n <= config.flat_max else "ivfpq")
        rng = np.random.default_rng(config.seed)
        sample = np.empty((0, d), dtype=np.float32)
        if kind == "ivfpq":  # a uniform sample over all shards
            take = min(n, config.train_size)
            picks = np.sort(rng.choice(n, size=take, replace=False))
            offsets = np.cumsum([0, *sizes])
            sample = np.concatenate([_normalised(s[picks[(picks >= a) & (picks < b)] - a])
                                     for s, a, b in zip(shards, offsets[:-1], offsets[1:], strict=True)])  # fmt: skip
        index, params = _build(kind, d, n, config, sample)
        for shard in shards:
            for start in range(0, len(shard), config.chunk):
                index.add(_normalised(shard[start : start + config.chunk]))
        path = join(out_dir, "index.faiss")
        with atomic_path(path) as tmp:
            faiss.write_index(index, url_to_fs(tmp)[1])
        size = url_to_fs(path)[0].size(url_to_fs(path)[1])
        recall = None
        if config.recall_queries:
            queries = _held_out_queries(shards, sizes, config.recall_queries, rng)
            truth, best = exact_top1(queries, shards)
            _, found = index.search(queries, 1)
            recall = recall_at_1(queries, found[:, 0], truth, best, shards)
        manifest = Manifest(
            stage=STAGE,
            config=config.model_dump() | {"embeddings": emb_dir},
            config_hash=chash,
            inputs=[e for e, _ in pairs],
            outputs=[path],
            rows_in=n,
            rows_out=int(index.ntotal),
            wall_time_s=timer.elapsed,
            extra={
                **params,
                "dim": d,
                "bytes": int(size),
                "bytes_per_vector": size / n,
                "recall_at_1": recall,
                "recall_queries": config.recall_queries,
                "shards": [[e, m] for e, m in pairs],
                "offsets": np.cumsum([0, *sizes]).tolist(),
            },
        )
        write_manifest(out_dir, manifest)
        return manifest


def recall_at_1(
    queries: np.ndarray, found: np.ndarray, truth: np.ndarray, best: np.ndarray, shards: list[np.ndarray]
) -> float:
    """The share of queries whose returned neighbour is a true nearest one: the exact search's id, or another stored
    vector exactly as similar (within 1e-5: near-duplicate captions tie, and the two searches sum in different orders,
    so an exact index would otherwise score below 1)."""
    offsets = np.cumsum([0, *(len(s) for s in shards)])
    hits = found == truth
    for i in np.flatnonzero(~hits & (found >= 0)):
        s = int(np.searchsorted(offsets, found[i], side="right") - 1)
        vector = _normalised(np.asarray(shards[s][found[i] - offsets[s]])[None, :])[0]
        hits[i] = float(queries[i] @ vector) >= float(best[i]) - 1e-5
    return float(hits.mean()) if len(hits) else float("nan")


def _held_out_queries(shards: list[np.ndarray], sizes: list[int], q: int, rng: np.random.Generator) -> np.ndarray:
    """Queries near (not at) stored vectors: a random stored vector plus noise of norm ≈ 0.5, renormalised (cosine ≈
    0.9 to it) — like a caption close to one in the corpus, in the regime the search's 0.7 threshold keeps."""
    offsets = np.cumsum([0, *sizes])
    picks = rng.choice(offsets[-1], size=min(q, int(offsets[-1])), replace=False)
    rows = []
    for p in picks:
        s = int(np.searchsorted(offsets, p, side="right") - 1)
        rows.append(np.asarray(shards[s][p - offsets[s]], dtype=np.float32))
    base = _normalised(np.stack(rows))
    noise = rng.normal(scale=0.5 / np.sqrt(base.shape[1]), size=base.shape)  # norm ≈ 0.5: cosine ≈ 0.9 to its vector
    return _normalised(base + noise.astype(np.float32))


def open_index(out_dir: str, mmap: bool = True) -> Any:
    """The index of ``out_dir``, memory-mapped (the inverted lists stay on disk) unless ``mmap`` is False."""
    import faiss

    path = url_to_fs(join(out_dir, "index.faiss"))[1]
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    return faiss.read_index(path, flags)
