"""Text-to-synset similarity stage: the cosine between each matched caption and each of its matched classes'
synset texts (``"<name> which is <definition>"``), under one text encoder.

Reads a completed match stage (``key``, ``text``, ``wnids`` per part) and the catalog; writes, per match part,
``<out>/<stem>.parquet`` with one row per (caption, matched wnid): ``key``, ``wnid``, ``similarity`` (float32);
``<out>/_synsets.npy`` (the catalog's synset-text embeddings, encoded once), per-part records and the manifest.
Similarities are stored once per encoder, so selection at any threshold re-reads them and never re-encodes.
Pairs whose wnid is not in the catalog are skipped and counted (``wnid_not_in_catalog``). With precomputed caption
embeddings (``laionet.selection.precomputed``), captions without one are skipped and counted (``no_caption_embedding``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from pydantic import BaseModel
from tqdm.auto import tqdm

from laionet.core.manifest import (
    Manifest,
    Timer,
    atomic_path,
    config_hash,
    file_digest,
    join,
    parquet_rows,
    part_stem,
    read_part_record,
    write_json_atomic,
    write_manifest,
    write_parquet_atomic,
    write_part_record,
)
from laionet.core.stage import prune, prune_records, require_complete, stage_run
from laionet.selection.encoders import TextEncoder, canonical_spec, create_text_encoder, spec_slug
from laionet.selection.precomputed import EmbeddingShardError, gather, pair_shards
from laionet.text.catalog import read_catalog

STAGE = "similarity"
SIM_SCHEMA = pa.schema([("key", pa.string()), ("wnid", pa.string()), ("similarity", pa.float32())])
EncoderFactory = Callable[["SimilarityConfig"], TextEncoder]
DROP_REASONS = ("wnid_not_in_catalog", "no_caption_embedding")


class SimilarityConfig(BaseModel):
    """Settings of the similarity stage."""

    encoder: str = "minilm"
    device: str = "auto"
    batch_size: int | None = None
    precision: str = "auto"  # auto | fp32 | fp16 | bf16 (see encoders.create_text_encoder)
    # Precomputed caption embeddings instead of encoding captions (LAION's text_emb_<i>.npy + metadata_<i>.parquet,
    # joined on url + caption), and optionally precomputed synset-text embeddings (.npy in catalog row order):
    # with both, no text model is loaded at all. ``encoder`` must then name the model they came from.
    caption_embeddings: str | None = None
    caption_metadata: str | None = None
    metadata_url_col: str = "url"
    metadata_text_col: str = "caption"
    synset_embeddings: str | None = None


def default_factory(config: SimilarityConfig) -> TextEncoder:
    return create_text_encoder(
        config.encoder, device=config.device, batch_size=config.batch_size, precision=config.precision
    )


def similarity_dir(base: str, encoder: str) -> str:
    """Where the similarities of one encoder live under a run's ``similarity`` directory."""
    return join(base, spec_slug(encoder))


def explode_pairs(table: pa.Table, wnid_index: dict[str, int]) -> tuple[pa.Table, np.ndarray, np.ndarray, int]:
    """One row per (caption, matched wnid) for the wnids in ``wnid_index``.

    Returns:
        (pairs with ``key``, ``wnid``; caption row per pair int64 (M,); class row per pair int64 (M,);
        number of pairs skipped because their wnid is not in the index)
    """
    wnids = table.column("wnids").combine_chunks()
    lengths = pc.list_value_length(wnids).to_numpy(zero_copy_only=False)
    caption_row = np.repeat(np.arange(len(table), dtype=np.int64), lengths)
    flat = pc.list_flatten(wnids).to_numpy(zero_copy_only=False)
    class_row = np.fromiter((wnid_index.get(w, -1) for w in flat), dtype=np.int64, count=len(flat))
    known = class_row >= 0
    keys = table.column("key").combine_chunks().take(pa.array(caption_row[known]))
    pairs = pa.table({"key": keys, "wnid": pa.array(flat[known], type=pa.string())})
    return pairs, caption_row[known], class_row[known], int((~known).sum())


def pair_similarity(
    caption_emb: np.ndarray, synset_emb: np.ndarray, caption_row: np.ndarray, class_row: np.ndarray
) -> np.ndarray:
    """Cosine per pair from L2-normalised embeddings: float32 (M,)."""
    out = np.empty(len(caption_row), dtype=np.float32)
    step = 1 << 16
    for start in range(0, len(caption_row), step):
        a = caption_emb[caption_row[start : start + step]]
        b = synset_emb[class_row[start : start + step]]
        out[start : start + step] = np.einsum("md,md->m", a, b)
    return out


def score_part(
    table: pa.Table,
    encoder: TextEncoder | None,
    synset_emb: np.ndarray,
    wnid_index: dict[str, int],
    progress: Any = None,
    caption_emb: np.ndarray | None = None,
) -> tuple[pa.Table, dict[str, int]]:
    """Similarities of one match part (``key``, ``text``, ``wnids``), encoding its captions with ``encoder`` or
    taking them from ``caption_emb`` (rows aligned with ``table``; NaN rows: no embedding).

    Returns:
        (SIM_SCHEMA table, pairs skipped by reason: ``wnid_not_in_catalog``, ``no_caption_embedding``)
    """
    pairs, caption_row, class_row, skipped = explode_pairs(table, wnid_index)
    dropped = {"wnid_not_in_catalog": skipped, "no_caption_embedding": 0}
    used = np.unique(caption_row)
    if caption_emb is not None:
        emb = caption_emb[used].astype(np.float32)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        has = ~np.isnan(emb).any(axis=1)
        if not has.all():
            keep = has[np.searchsorted(used, caption_row)]
            dropped["no_caption_embedding"] = int((~keep).sum())
            pairs, caption_row, class_row = pairs.filter(pa.array(keep)), caption_row[keep], class_row[keep]
    elif encoder is not None:
        texts = table.column("text").combine_chunks().take(pa.array(used)).to_pylist()
        emb = encoder.encode([t or "" for t in texts], progress=progress)
    else:
        raise ValueError("score_part needs an encoder or precomputed caption embeddings")
    local = np.searchsorted(used, caption_row)
    sims = pair_similarity(emb, synset_emb, local, class_row)
    return pairs.append_column("similarity", pa.array(sims, type=pa.float32())), dropped


def _load_synset_embeddings(path: str, n_classes: int) -> np.ndarray:
    """Precomputed synset-text embeddings (.npy, catalog row order), L2-normalised float32."""
    with fsspec.open(path, "rb") as f:
        emb = np.asarray(np.load(f), dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != n_classes:
        raise EmbeddingShardError(f"{path} has shape {emb.shape}; expected ({n_classes}, D), one row per catalog class")
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def _synsets_current(out_dir: str, part_hash: str) -> bool:
    """Whether ``_synsets.npy`` is this configuration's (its json names the part hash it was encoded for)."""
    meta = join(out_dir, "_synsets.json")
    fs, real = url_to_fs(meta)
    if not fs.exists(real):
        return False
    with fsspec.open(meta, "r") as f:
        return bool(json.load(f).get("part_hash") == part_hash)


def _remove_synsets(out_dir: str) -> None:
    for name in ("_synsets.json", "_synsets.npy"):  # the json first: without it the npy is never trusted
        fs, real = url_to_fs(join(out_dir, name))
        if fs.exists(real):
            fs.rm(real)


def _synset_embeddings(out_dir: str, catalog: Any, encoder: TextEncoder, part_hash: str) -> np.ndarray:
    """Encode the catalog's synset texts once per configuration (cached in ``_synsets.npy``; ``_synsets.json``, written
    after it, names the encoder, the wnids and texts, and the part hash they were encoded for)."""
    path, meta = join(out_dir, "_synsets.npy"), join(out_dir, "_synsets.json")
    fs, real = url_to_fs(meta)
    wnids = catalog["wnid"].tolist()
    texts = catalog["synset_text"].tolist()
    if fs.exists(real):
        with fsspec.open(meta, "r") as f:
            info = json.load(f)
        if (info.get("wnids") == wnids and info.get("texts") == texts and info.get("encoder") == encoder.spec
                and info.get("part_hash") == part_hash):  # fmt: skip
            with fsspec.open(path, "rb") as f:
                return np.asarray(np.load(f), dtype=np.float32)
    emb = encoder.encode(texts)
    with atomic_path(path) as tmp, fsspec.open(tmp, "wb") as f:  # the json written after it marks it valid
        np.save(f, emb)
    write_json_atomic(meta, {"encoder": encoder.spec, "wnids": wnids, "texts": texts, "part_hash": part_hash})
    return emb


_log = logging.getLogger("laionet.similarity")


def run_similarity(
    matches_dir: str,
    catalog_path: str,
    out_dir: str,
    config: SimilarityConfig | None = None,
    encoder_factory: EncoderFactory = default_factory,
) -> Manifest:
    """Score every (caption, matched wnid) pair of a match stage; resume per part; manifest last.

    Raises:
        FileNotFoundError: if the match stage is not complete.
        EncoderError: for an encoder that cannot be resolved or loaded (before any part is processed).
    """
    config = config or SimilarityConfig()
    spec = canonical_spec(config.encoder)
    timer = Timer()
    _log.info("similarity of %s (catalog %s) under %s → %s, %s", matches_dir, catalog_path, spec, out_dir, config)
    matches = require_complete(matches_dir, "match", hint="re-run `laionet match` (or the build flow)")
    catalog = read_catalog(catalog_path)
    # what a part's similarities depend on: encoder, numeric precision, catalog (device and batch size do not)
    sources = {
        "caption_embeddings": config.caption_embeddings,
        "caption_metadata": config.caption_metadata,
        "synset_embeddings": config.synset_embeddings and file_digest(config.synset_embeddings),
    }
    part_hash = config_hash(
        {"encoder": spec, "precision": config.precision, "catalog": file_digest(catalog_path), **sources}
    )
    chash = config_hash({"part_hash": part_hash, "matches": matches.config_hash, "parts": matches.outputs})
    with stage_run(out_dir, chash, STAGE) as done:
        if done:
            return done

        # each part's result also depends on that match part's content (a rebuilt match stage must not be reused)
        hashes = {part: config_hash({"stage": part_hash, "part": file_digest(part)}) for part in matches.outputs}
        records: dict[str, dict[str, Any]] = {}
        todo = []
        for part in matches.outputs:
            record = read_part_record(out_dir, part, hashes[part])
            if record:
                records[part] = record
            else:
                todo.append(part)
        if todo:
            shards = None
            if config.caption_embeddings or config.caption_metadata:
                if not (config.caption_embeddings and config.caption_metadata):
                    raise ValueError("precomputed caption embeddings need both caption_embeddings and caption_metadata")
                shards = pair_shards(config.caption_embeddings, config.caption_metadata)  # checked before any work
            # a text model is needed unless both captions and synset texts come precomputed
            encoder = None if (shards and config.synset_embeddings) else encoder_factory(config)
            wnid_index = {w: i for i, w in enumerate(catalog["wnid"])}
            if config.synset_embeddings:
                synset_emb = _load_synset_embeddings(config.synset_embeddings, len(catalog))
            else:
                assert encoder is not None
                synset_emb = _synset_embeddings(out_dir, catalog, encoder, part_hash)
            gathered = (
                gather(todo, shards, out_dir, config.metadata_url_col, config.metadata_text_col) if shards else {}
            )
            total = sum(parquet_rows(p) or 0 for p in todo)
            with tqdm(total=total, desc=f"similarity {spec}", unit="captions", unit_scale=True, disable=None) as bar:
                for part in todo:
                    part_timer = Timer()
                    with fsspec.open(part, "rb") as f:
                        table = pq.read_table(f, columns=["key", "text", "wnids"])
                    encoded = [0]

                    def advance(n: int, encoded: list[int] = encoded) -> None:
                        encoded[0] += n
                        bar.update(n)

                    caption_emb = None
                    if part in gathered:
                        with fsspec.open(gathered[part], "rb") as f:
                            caption_emb = np.load(f)
                        if caption_emb.shape[0] and caption_emb.shape[1] != synset_emb.shape[1]:
                            raise EmbeddingShardError(
                                f"caption embeddings are {caption_emb.shape[1]}-d but synset embeddings are "
                                f"{synset_emb.shape[1]}-d: they must come from the same model"
                            )
                    scored, dropped = score_part(
                        table, encoder, synset_emb, wnid_index, progress=advance, caption_emb=caption_emb
                    )
                    out_path = join(out_dir, f"{part_stem(part)}.parquet")
                    write_parquet_atomic(scored, out_path)
                    record = {
                        "output": out_path,
                        "config_hash": hashes[part],
                        "rows_in": scored.num_rows + sum(dropped.values()),
                        "rows_out": scored.num_rows,
                        "dropped": dropped,
                        "captions": table.num_rows,
                        "wall_time_s": part_timer.elapsed,
                    }
                    write_part_record(out_dir, part, record)
                    records[part] = {"part": part, **record}
                    bar.update(max(0, table.num_rows - encoded[0]))  # duplicates were encoded once

        if config.synset_embeddings:  # precomputed: a cache another configuration left is not this run's output
            _remove_synsets(out_dir)
        elif not todo and not _synsets_current(out_dir, part_hash):
            # every part resumed, but the synset cache is another configuration's (a run of it was killed after
            # re-encoding the synsets, before any part): the outputs must be exactly this configuration's
            _synset_embeddings(out_dir, catalog, encoder_factory(config), part_hash)
        ordered = [records[p] for p in matches.outputs]
        manifest = Manifest(
            stage=STAGE,
            config={**config.model_dump(mode="json"), "encoder": spec, "catalog": catalog_path, "matches": matches_dir},
            config_hash=chash,
            inputs=matches.outputs,
            outputs=[r["output"] for r in ordered],
            rows_in=sum(r["rows_in"] for r in ordered),
            rows_out=sum(r["rows_out"] for r in ordered),
            dropped={reason: sum(r["dropped"].get(reason, 0) for r in ordered) for reason in DROP_REASONS},
            wall_time_s=timer.elapsed,
            extra={"captions": sum(r["captions"] for r in ordered), "parts_skipped": len(ordered) - len(todo)},
        )
        prune(out_dir, manifest.outputs, ["*.parquet"])  # parts of an earlier match stage
        prune_records(out_dir, matches.outputs)
        write_manifest(out_dir, manifest)
        return manifest
