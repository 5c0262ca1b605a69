"""Text-to-synset similarity stage: the cosine between each matched caption and each of its matched classes'
synset texts (``"<name> which is <definition>"``), under one text encoder.

Reads a completed match stage (``key``, ``text``, ``wnids`` per part) and the catalog; writes, per match part,
``<out>/<stem>.parquet`` with one row per (caption, matched wnid): ``key``, ``wnid``, ``similarity`` (float32);
``<out>/_synsets.npy`` (the catalog's synset-text embeddings, encoded once), per-part records and the manifest.
Similarities are stored once per encoder, so selection at any threshold re-reads them and never re-encodes.
Pairs whose wnid is not in the catalog are skipped and counted (``wnid_not_in_catalog``).
"""

from __future__ import annotations

import json
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

from laionet.catalog import read_catalog
from laionet.encoders import TextEncoder, canonical_spec, create_text_encoder, spec_slug
from laionet.manifest import (
    Manifest,
    Timer,
    completed,
    config_hash,
    file_digest,
    join,
    part_stem,
    read_manifest,
    read_part_record,
    write_json_atomic,
    write_manifest,
    write_parquet_atomic,
    write_part_record,
)

STAGE = "similarity"
SIM_SCHEMA = pa.schema([("key", pa.string()), ("wnid", pa.string()), ("similarity", pa.float32())])
EncoderFactory = Callable[["SimilarityConfig"], TextEncoder]


class SimilarityConfig(BaseModel):
    """Settings of the similarity stage."""

    encoder: str = "minilm"
    device: str = "auto"
    batch_size: int | None = None
    precision: str = "auto"  # auto | fp32 | fp16 | bf16 (see encoders.create_text_encoder)


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
    table: pa.Table, encoder: TextEncoder, synset_emb: np.ndarray, wnid_index: dict[str, int], progress: Any = None
) -> tuple[pa.Table, int]:
    """Similarities of one match part (``key``, ``text``, ``wnids``). Returns (SIM_SCHEMA table, pairs skipped)."""
    pairs, caption_row, class_row, skipped = explode_pairs(table, wnid_index)
    used = np.unique(caption_row)
    texts = table.column("text").combine_chunks().take(pa.array(used)).to_pylist()
    emb = encoder.encode([t or "" for t in texts], progress=progress)
    local = np.searchsorted(used, caption_row)
    sims = pair_similarity(emb, synset_emb, local, class_row)
    return pairs.append_column("similarity", pa.array(sims, type=pa.float32())), skipped


def _synset_embeddings(out_dir: str, catalog: Any, encoder: TextEncoder) -> np.ndarray:
    """Encode the catalog's synset texts once per encoder (cached in ``_synsets.npy`` with its wnids)."""
    path, meta = join(out_dir, "_synsets.npy"), join(out_dir, "_synsets.json")
    fs, real = url_to_fs(meta)
    wnids = catalog["wnid"].tolist()
    texts = catalog["synset_text"].tolist()
    if fs.exists(real):
        with fsspec.open(meta, "r") as f:
            info = json.load(f)
        if info.get("wnids") == wnids and info.get("texts") == texts and info.get("encoder") == encoder.spec:
            with fsspec.open(path, "rb") as f:
                return np.asarray(np.load(f), dtype=np.float32)
    emb = encoder.encode(texts)
    with fsspec.open(path, "wb") as f:  # the json written after it is what marks it valid
        np.save(f, emb)
    write_json_atomic(meta, {"encoder": encoder.spec, "wnids": wnids, "texts": texts})
    return emb


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
    matches = read_manifest(matches_dir)
    if matches is None:
        raise FileNotFoundError(f"{matches_dir}: match stage is not complete (no _manifest.json)")
    catalog = read_catalog(catalog_path)
    # what a part's similarities depend on: encoder, numeric precision, catalog (device and batch size do not)
    part_hash = config_hash({"encoder": spec, "precision": config.precision, "catalog": file_digest(catalog_path)})
    chash = config_hash({"part_hash": part_hash, "matches": matches.config_hash, "parts": matches.outputs})
    done = completed(out_dir, chash)
    if done:
        return done

    records: dict[str, dict[str, Any]] = {}
    todo = []
    for part in matches.outputs:
        record = read_part_record(out_dir, part, part_hash)
        if record:
            records[part] = record
        else:
            todo.append(part)
    if todo:
        encoder = encoder_factory(config)  # fails here, before any part, for a bad spec
        wnid_index = {w: i for i, w in enumerate(catalog["wnid"])}
        synset_emb = _synset_embeddings(out_dir, catalog, encoder)
        total = sum(pq.ParquetFile(fsspec.open(p, "rb").open()).metadata.num_rows for p in todo)
        with tqdm(total=total, desc=f"similarity {spec}", unit="captions", unit_scale=True, disable=None) as bar:
            for part in todo:
                part_timer = Timer()
                with fsspec.open(part, "rb") as f:
                    table = pq.read_table(f, columns=["key", "text", "wnids"])
                encoded = [0]

                def advance(n: int, encoded: list[int] = encoded) -> None:
                    encoded[0] += n
                    bar.update(n)

                scored, skipped = score_part(table, encoder, synset_emb, wnid_index, progress=advance)
                out_path = join(out_dir, f"{part_stem(part)}.parquet")
                write_parquet_atomic(scored, out_path)
                record = {
                    "output": out_path,
                    "config_hash": part_hash,
                    "rows_in": scored.num_rows + skipped,
                    "rows_out": scored.num_rows,
                    "dropped": {"wnid_not_in_catalog": skipped},
                    "captions": table.num_rows,
                    "wall_time_s": part_timer.elapsed,
                }
                write_part_record(out_dir, part, record)
                records[part] = {"part": part, **record}
                bar.update(max(0, table.num_rows - encoded[0]))  # duplicates were encoded once

    ordered = [records[p] for p in matches.outputs]
    manifest = Manifest(
        stage=STAGE,
        config={**config.model_dump(mode="json"), "encoder": spec, "catalog": catalog_path, "matches": matches_dir},
        config_hash=chash,
        inputs=matches.outputs,
        outputs=[r["output"] for r in ordered],
        rows_in=sum(r["rows_in"] for r in ordered),
        rows_out=sum(r["rows_out"] for r in ordered),
        dropped={"wnid_not_in_catalog": sum(r["dropped"]["wnid_not_in_catalog"] for r in ordered)},
        wall_time_s=timer.elapsed,
        extra={"captions": sum(r["captions"] for r in ordered), "parts_skipped": len(ordered) - len(todo)},
    )
    write_manifest(out_dir, manifest)
    return manifest
