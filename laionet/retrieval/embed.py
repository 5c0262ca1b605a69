"""Caption embeddings of a whole corpus, in clip-retrieval's layout (every caption, not only the matched ones).

Reads corpus parts (LAION-style parquet; column names as in the match stage); writes per part ``i`` (sorted part
order) ``<out>/text_emb/text_emb_<i>.npy`` — float16 (N, D), L2-normalised, one row per *distinct* caption of the
part, written chunk by chunk into a memory-mapped file so a 13M-row part never sits in memory as float32 — and
``<out>/metadata/metadata_<i>.parquet`` (``key``, ``url``, ``caption``, ``rows``: the caption's first key and URL and
how many rows of the part carry it), then the manifest. clip-retrieval / autofaiss read this layout as is, and so do
``laionet.retrieval.index`` and the similarity stage (``laionet.selection.precomputed``): LAION's released
``text_emb_<i>.npy`` / ``metadata_<i>.parquet`` need no re-encoding.

Resumable per part (a record per part carries the config hash and the part's identity); counts: rows in = distinct
captions out + ``duplicate_caption`` + the corpus reader's bad-caption reasons.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from fsspec.core import url_to_fs
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from laionet.core.manifest import (
    Manifest,
    Timer,
    atomic_path,
    config_hash,
    is_local,
    join,
    read_part_record,
    write_manifest,
    write_parquet_atomic,
    write_part_record,
)
from laionet.core.stage import input_identity, prune, prune_records, stage_run
from laionet.selection.encoders import TextEncoder, canonical_spec
from laionet.text.corpus import BAD_REASONS, ColumnMap, iter_part
from laionet.text.match import resolve_parts

STAGE = "caption-embeddings"
DROP_REASONS = ("duplicate_caption", *BAD_REASONS)
_log = logging.getLogger("laionet.retrieval")


class EmbedConfig(BaseModel):
    """Settings of the caption-embedding stage."""

    encoder: str = "minilm"
    columns: ColumnMap = Field(default_factory=ColumnMap)
    chunk: int = Field(65_536, gt=0, description="captions encoded and written at a time")
    max_text_bytes: int = Field(65_536, gt=0)


def _embed_part(index: int, part: str, out_dir: str, config: EmbedConfig, encoder: TextEncoder) -> dict[str, Any]:
    """Embed the distinct captions of one part; write its embeddings and metadata; return its record."""
    frames, dropped = [], dict.fromkeys(DROP_REASONS, 0)
    rows_in = 0
    for batch, counts in iter_part(part, config.columns, max_text_bytes=config.max_text_bytes):
        rows_in += batch.num_rows
        for reason, n in counts.bad.items():
            dropped[reason] += n
        frame = pa.table({"key": batch.column("key"), "url": batch.column("url"), "caption": batch.column("text")})
        frames.append(frame.filter(pa.compute.is_valid(frame.column("caption"))).to_pandas())
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["key", "url", "caption"])
    counts_by_caption = table.groupby("caption", sort=False).size()
    unique = table.drop_duplicates("caption", keep="first").reset_index(drop=True)
    unique["rows"] = unique["caption"].map(counts_by_caption).astype(np.int64)
    dropped["duplicate_caption"] = len(table) - len(unique)
    emb_path = join(out_dir, "text_emb", f"text_emb_{index}.npy")
    meta_path = join(out_dir, "metadata", f"metadata_{index}.parquet")
    captions = unique["caption"].tolist()
    dim = int(encoder.encode(["dimension probe"]).shape[1])
    with atomic_path(emb_path) as tmp:
        fs, real = url_to_fs(tmp)
        target = real if is_local(fs) and captions else None
        if target is None:  # object storage (or nothing to write): build in memory (float16), then write
            out = np.empty((len(captions), dim), dtype=np.float16)
        else:
            out = np.lib.format.open_memmap(target, mode="w+", dtype=np.float16, shape=(len(captions), dim))
        for start in range(0, len(captions), config.chunk):
            out[start : start + config.chunk] = encoder.encode(captions[start : start + config.chunk])
        if target is None:
            with fs.open(real, "wb") as f:
                np.save(f, out)
        else:
            out.flush()  # type: ignore[attr-defined]
            del out
    write_parquet_atomic(pa.Table.from_pandas(unique[["key", "url", "caption", "rows"]], preserve_index=False),
                         meta_path)  # fmt: skip
    return {"index": index, "outputs": [emb_path, meta_path], "output": meta_path, "rows_in": rows_in,
            "rows_out": len(unique), "dropped": dropped, "dim": dim}  # fmt: skip


def run_caption_embeddings(
    corpus: str,
    out_dir: str,
    config: EmbedConfig | None = None,
    encoder_factory: Callable[[str], TextEncoder] | None = None,
    max_parts: int | None = None,
) -> Manifest:
    """Embed every distinct caption of every corpus part (see module docstring); resume per part; manifest last.

    Args:
        corpus: glob / directory / file of parquet parts (as ``laionet match``).
        encoder_factory: ``factory(spec)`` → text encoder (default ``create_text_encoder``); loaded only if a part
            needs work.
        max_parts: only the first N parts in sorted order.
    """
    config = config or EmbedConfig()
    timer = Timer()
    spec = canonical_spec(config.encoder)
    parts = resolve_parts(corpus)[:max_parts]
    settings = config.model_dump(mode="json") | {"encoder": spec}
    part_hash = config_hash(settings)
    identities = {p: input_identity(p) for p in parts}
    chash = config_hash({"part_hash": part_hash, "parts": [[p, identities[p]] for p in parts]})
    with stage_run(out_dir, chash, STAGE) as done:
        if done:
            return done
        encoder: TextEncoder | None = None
        records = []
        for index, part in enumerate(tqdm(parts, desc="caption embeddings", unit="part", disable=None)):
            record = read_part_record(out_dir, part, part_hash, identities[part])
            if record is None or record.get("index") != index:
                if encoder is None:
                    if encoder_factory is None:
                        from laionet.selection.encoders import create_text_encoder

                        encoder = create_text_encoder(spec)
                    else:
                        encoder = encoder_factory(spec)
                record = _embed_part(index, part, out_dir, config, encoder)
                record.update(part=part, config_hash=part_hash, identity=identities[part])
                write_part_record(out_dir, part, {k: v for k, v in record.items() if k != "part"})
            records.append(record)
        outputs = [o for r in records for o in r["outputs"]]
        for sub, pattern in (("text_emb", "*.npy"), ("metadata", "*.parquet")):  # parts no longer in the corpus
            prune(join(out_dir, sub), [o for o in outputs if f"/{sub}/" in o], [pattern])
        prune_records(out_dir, parts)
        dims = {r["dim"] for r in records}
        manifest = Manifest(
            stage=STAGE,
            config=settings | {"corpus": corpus},
            config_hash=chash,
            inputs=parts,
            outputs=outputs,
            rows_in=sum(r["rows_in"] for r in records),
            rows_out=sum(r["rows_out"] for r in records),
            dropped={reason: sum(r["dropped"][reason] for r in records) for reason in DROP_REASONS},
            wall_time_s=timer.elapsed,
            extra={"encoder": spec, "dim": dims.pop() if len(dims) == 1 else sorted(dims), "parts": len(parts)},
        )
        write_manifest(out_dir, manifest)
        _log.info("caption embeddings: %d captions of %d rows in %d parts", manifest.rows_out, manifest.rows_in,
                  len(parts))  # fmt: skip
        return manifest
