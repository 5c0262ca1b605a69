"""Match stage driver: corpus parts in, one matched-rows parquet per part out, manifest last.

Reads ``<corpus glob>`` (LAION-style parquet parts) and a lemma map parquet; writes ``<out>/<stem>.parquet`` with
``MATCH_SCHEMA`` (only rows with at least one match), ``<out>/_parts/<stem>.json`` (that part's counts, written
after its parquet) and ``<out>/_manifest.json`` (written last). A part whose record exists with the same config
hash is skipped on re-runs, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import lru_cache
from multiprocessing import get_context
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from pydantic import BaseModel, Field
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
    read_manifest,
    read_part_record,
    write_manifest,
    write_parquet_atomic,
    write_part_record,
)
from laionet.core.stage import input_identity, prune, prune_records, stage_run
from laionet.text.corpus import BAD_REASONS, CARRIED_TYPES, DUPLICATE_SAMPLE, ColumnMap, CorpusError, iter_part
from laionet.text.matcher import LemmaMatcher
from laionet.text.normalize import Mode

STAGE = "match"
MATCH_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("row", pa.int64()),
        *CARRIED_TYPES.items(),
        ("wnids", pa.list_(pa.string())),
        ("lemmas", pa.list_(pa.string())),
    ]
)
DROP_REASONS = ("unmatched", *BAD_REASONS)


class MatchConfig(BaseModel):
    """Settings of the match stage."""

    mode: Mode = "default"
    columns: ColumnMap = Field(default_factory=ColumnMap)
    batch_size: int = Field(65_536, gt=0, description="rows per record batch read from a part")
    max_text_bytes: int = Field(65_536, gt=0, description="longer captions are skipped and counted as too_long")


def resolve_parts(corpus: str) -> list[str]:
    """Expand a corpus glob (or a single file / directory) into sorted part paths with unique stems.

    Raises:
        CorpusError: if nothing matches or two parts share a file name (their outputs would collide).
    """
    fs, root = url_to_fs(corpus)
    if any(ch in root for ch in "*?["):
        paths = fs.glob(root)
    elif fs.isdir(root):
        paths = fs.glob(root.rstrip("/") + "/*.parquet")
    else:
        paths = [root] if fs.exists(root) else []
    parts = sorted(p for p in paths if p.endswith(".parquet"))
    if not parts:
        raise CorpusError(f"no parquet parts match {corpus!r}")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in ("file", "local"):
        parts = [f"{protocol}://{p}" for p in parts]
    stems: dict[str, str] = {}
    for part in parts:
        stem = part_stem(part)
        if stem in stems:
            raise CorpusError(f"parts {stems[stem]} and {part} share the name {stem!r}; outputs would collide")
        stems[stem] = part
    return parts


def match_part(
    part: str,
    out_path: str,
    matcher: LemmaMatcher,
    config: MatchConfig,
    on_rows: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Match one corpus part and write its matched rows to ``out_path`` (atomically).

    Returns:
        Counts: ``rows_in``, ``rows_out`` and ``dropped`` by reason (unmatched + bad-caption reasons).
    """
    dropped = dict.fromkeys(DROP_REASONS, 0)
    rows_in = rows_out = 0
    duplicate_keys: list[str] = []
    with atomic_path(out_path) as tmp, fsspec.open(tmp, "wb") as handle:
        writer = pq.ParquetWriter(handle, MATCH_SCHEMA, compression="zstd")
        try:
            for batch, counts in iter_part(part, config.columns, config.batch_size, config.max_text_bytes):
                found = matcher.match(batch.column("text"))
                rows_in += batch.num_rows
                rows_out += len(found.rows)
                for reason, n in counts.bad.items():
                    dropped[reason] += n
                duplicate_keys = (duplicate_keys + counts.duplicate_keys)[:DUPLICATE_SAMPLE]
                dropped["unmatched"] += batch.num_rows - len(found.rows) - sum(counts.bad.values())
                if len(found.rows):
                    taken = batch.take(pa.array(found.rows))
                    columns = [taken.column(name) for name in MATCH_SCHEMA.names[:-2]]
                    writer.write_batch(
                        pa.RecordBatch.from_arrays([*columns, found.wnids, found.lemmas], schema=MATCH_SCHEMA)
                    )
                if on_rows:
                    on_rows(batch.num_rows)
        finally:
            writer.close()
    result: dict[str, Any] = {"rows_in": rows_in, "rows_out": rows_out, "dropped": dropped}
    if duplicate_keys:
        result["duplicate_keys"] = duplicate_keys
    return result


@lru_cache(maxsize=4)
def _load_matcher(lemma_map_path: str, mode: Mode) -> LemmaMatcher:
    with fsspec.open(lemma_map_path, "rb") as f:
        table = pd.read_parquet(f, columns=["lemma", "wnid"])
    return LemmaMatcher(table, mode)


def _run_one(part: str, out_dir: str, lemma_map_path: str, config: MatchConfig, chash: str) -> dict[str, Any]:
    """Process one part end to end (output, then its record); used in-process and in worker processes."""
    timer = Timer()
    matcher = _load_matcher(lemma_map_path, config.mode)
    stem = part_stem(part)
    out_path = join(out_dir, f"{stem}.parquet")
    bar = tqdm(desc=stem, unit="rows", unit_scale=True, leave=False, disable=None, total=parquet_rows(part))
    try:
        counts = match_part(part, out_path, matcher, config, on_rows=bar.update)
    finally:
        bar.close()
    record = {
        "output": out_path,
        "config_hash": chash,
        "identity": input_identity(part),
        **counts,
        "wall_time_s": timer.elapsed,
    }
    write_part_record(out_dir, part, record)
    return {"part": part, **record}


_log = logging.getLogger("laionet.match")


def run_match(
    corpus: str,
    out_dir: str,
    lemma_map_path: str,
    config: MatchConfig | None = None,
    workers: int = 1,
    max_parts: int | None = None,
) -> Manifest:
    """Match every part of ``corpus`` against a lemma map; resume per part; write the manifest last.

    Args:
        corpus: glob of parquet parts (``DIR/*.parquet``), a directory, or one file; local or fsspec URL.
        out_dir: output directory of the stage.
        lemma_map_path: parquet with ``lemma``, ``wnid`` (from ``laionet lemmas`` with the same policy as the mode).
        config: stage settings (mode, column names, batch size, caption byte limit).
        workers: parts processed in parallel (one process each).
        max_parts: only the first N parts in sorted order (try a real corpus on one part first; raising it later
            reuses the finished parts).

    Raises:
        CorpusError: naming the file and column when a part cannot be read as configured.
    """
    config = config or MatchConfig()
    timer = Timer()
    _log.info("matching %s (parts: %s) with %s → %s, %s", corpus, max_parts or "all", lemma_map_path, out_dir, config)
    parts = resolve_parts(corpus)[:max_parts]
    cfg = config.model_dump(mode="json")
    part_hash = config_hash({"config": cfg, "lemma_map": file_digest(lemma_map_path)})  # what one part depends on
    identities = {part: input_identity(part) for part in parts}  # a part rewritten in place is matched again
    chash = config_hash({"part_hash": part_hash, "parts": [[p, identities[p]] for p in parts]})
    with stage_run(out_dir, chash, STAGE) as complete:
        if complete:
            return complete
        return _match_parts(parts, out_dir, lemma_map_path, config, cfg, part_hash, chash, workers, timer)


def _match_parts(
    parts: list[str],
    out_dir: str,
    lemma_map_path: str,
    config: MatchConfig,
    cfg: dict[str, Any],
    part_hash: str,
    chash: str,
    workers: int,
    timer: Timer,
) -> Manifest:
    """The body of ``run_match`` under the stage lock: resume parts whose record matches, match the rest."""
    records: dict[str, dict[str, Any]] = {}
    todo = []
    for part in parts:
        record = read_part_record(out_dir, part, part_hash, input_identity(part))
        if record and parquet_rows(record["output"]) == record["rows_out"]:  # else: killed between output and record
            records[part] = record
        else:
            todo.append(part)
    if workers > 1 and len(todo) > 1:
        ctx = get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
            futures = {pool.submit(_run_one, p, out_dir, lemma_map_path, config, part_hash): p for p in todo}
            for future in tqdm(as_completed(futures), total=len(futures), desc="parts", unit="part", disable=None):
                records[futures[future]] = future.result()
    else:
        for part in tqdm(todo, desc="parts", unit="part", disable=None if len(todo) > 1 else True):
            records[part] = _run_one(part, out_dir, lemma_map_path, config, part_hash)

    if config.columns.key:  # a key column of the user's: a key may repeat across parts too
        _drop_cross_part_duplicates(out_dir, [records[p] for p in parts])
    ordered = [records[p] for p in parts]
    dropped = {reason: sum(r["dropped"][reason] for r in ordered) for reason in DROP_REASONS}
    manifest = Manifest(
        stage=STAGE,
        config={**cfg, "lemma_map": lemma_map_path},
        config_hash=chash,
        inputs=parts,
        outputs=[r["output"] for r in ordered],
        rows_in=sum(r["rows_in"] for r in ordered),
        rows_out=sum(r["rows_out"] for r in ordered),
        dropped=dropped,
        wall_time_s=timer.elapsed,
        extra={
            "parts_skipped": len(parts) - len(todo),
            "workers": workers,
            "duplicate_keys": [k for r in ordered for k in r.get("duplicate_keys", [])][:DUPLICATE_SAMPLE],
        },
    )
    prune(out_dir, manifest.outputs, ["*.parquet"])  # outputs of parts that are no longer inputs
    prune_records(out_dir, parts)
    write_manifest(out_dir, manifest)
    return manifest


def _drop_cross_part_duplicates(out_dir: str, records: list[dict[str, Any]]) -> None:
    """Across parts (in part order), keep the first matched row of each key: later matched rows with a key already
    seen are removed from their part's output and counted ``duplicate_key`` in its record (output rewritten first,
    record second; a run killed between the two redoes that part, whose row count no longer matches). Unmatched rows
    are not compared across parts: they never reach the selection. Holds the matched keys in memory."""
    seen: set[str] = set()
    for record in records:
        with fsspec.open(record["output"], "rb") as f:
            table = pq.read_table(f)
        keys = table.column("key").to_pylist()
        repeated = [k in seen for k in keys]
        seen.update(keys)
        n = sum(repeated)
        if not n:
            continue
        kept = table.filter(pa.array([not r for r in repeated]))
        write_parquet_atomic(kept, record["output"])
        record["rows_out"] -= n
        record["dropped"]["duplicate_key"] += n
        named = [k for k, r in zip(keys, repeated, strict=True) if r]
        record["duplicate_keys"] = (record.get("duplicate_keys", []) + named)[:DUPLICATE_SAMPLE]
        write_part_record(out_dir, record["part"], {k: v for k, v in record.items() if k != "part"})


def read_matches(out_dir: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Load every matched row of a completed match stage (small corpora / summaries only)."""
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise FileNotFoundError(f"{out_dir}: match stage is not complete (no _manifest.json)")
    frames = []
    for path in manifest.outputs:
        with fsspec.open(path, "rb") as f:
            frames.append(pq.read_table(f, columns=columns).to_pandas())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns or MATCH_SCHEMA.names)
