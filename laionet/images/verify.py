"""Shard verification: read every shard before inference, check tar integrity and that every sample decodes,
and quarantine bad samples with their reason.

Reads ``<shards>/*.tar`` (+ the per-shard ``.parquet`` listings when present) through webdataset, one sample in
memory at a time (local, any fsspec URL — ``http(s)://`` included: shards are streamed — or webdataset's notation,
``pipe:`` commands and brace ranges: ``shard_list.list_shards``);
writes ``<out>/quarantine.parquet`` (``shard``, ``key``, ``reason``: ``truncated_shard`` with key ``*``,
``undecodable_image``, ``no_image``, ``no_metadata``, ``bad_metadata``, ``missing_from_tar``) and the manifest (samples
in = good + quarantined by reason). Nothing is deleted: downstream stages skip the quarantined keys.
"""

from __future__ import annotations

import json
import logging

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from tqdm.auto import tqdm

from laionet.core.manifest import Manifest, Timer, config_hash, join, write_manifest, write_parquet_atomic
from laionet.core.stage import stage_rebuild
from laionet.images.shard_list import list_shards, shard_size
from laionet.images.shards import ErrorLog, decode_rgb, iter_raw, original_key

_log = logging.getLogger("laionet.verify")


def _check_sample(sample: dict[str, bytes]) -> str | None:
    """The reason a sample is unusable, or None."""
    if "jpg" not in sample:
        return "no_image"
    if "json" not in sample:
        return "no_metadata"
    try:
        meta = json.loads(sample["json"])
    except ValueError:
        return "bad_metadata"
    if not isinstance(meta, dict) or "key" not in meta:
        return "bad_metadata"
    try:
        decode_rgb(sample["jpg"]).load()
    except Exception:  # PIL raises a zoo of types for broken images
        return "undecodable_image"
    return None


def verify_shard(path: str, errors: ErrorLog | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """Read a whole shard: (keys of good samples, [(key, reason)] of bad ones). A shard that cannot be read to a clean
    end adds ``("*", "truncated_shard")``; samples its ``.parquet`` lists as downloaded but the tar lacks are
    ``missing_from_tar``. Each sample is checked as it streams by (one sample in memory)."""
    log = errors if errors is not None else ErrorLog()
    good: list[str] = []
    bad: list[tuple[str, str]] = []
    for safe, sample in iter_raw(path, log):
        key = original_key(safe)
        reason = _check_sample(sample)
        if reason is None:
            good.append(key)
        else:
            bad.append((key, reason))
            log.add(path, key, reason)
    shard_level = [(e.key, e.reason) for e in log.of(path) if e.key == "*"]
    bad[:0] = shard_level
    listing = path.removesuffix(".tar") + ".parquet"
    if not listing.startswith("pipe:"):
        fs, real = url_to_fs(listing)
        if fs.exists(real):
            with fs.open(real, "rb") as f:
                table = pq.read_table(f).to_pandas()
            expected = table.loc[table["status"] == "success", "key"] if "status" in table.columns else table["key"]
            seen = set(good) | {k for k, _ in bad}
            missing = [str(k) for k in expected if str(k) not in seen]
            bad.extend((k, "missing_from_tar") for k in missing)
            for k in missing:
                log.add(path, k, "missing_from_tar")
    return good, bad


def run_verify(shards_dir: str, out_dir: str) -> Manifest:
    """Verify every shard of a directory; write the quarantine table and the manifest."""
    timer = Timer()
    _log.info("verify of %s → %s", shards_dir, out_dir)
    shards = list_shards(shards_dir)  # the shard stage's current shards (its manifest), checked complete
    with stage_rebuild(out_dir, "verify"):
        return _verify(shards_dir, shards, out_dir, timer)


def _verify(shards_dir: str, shards: list[str], out_dir: str, timer: Timer) -> Manifest:
    rows: list[dict[str, str]] = []
    good_total = 0
    for shard in tqdm(shards, desc="verify", unit="shard", disable=None):
        errors = ErrorLog()
        good, bad = verify_shard(shard, errors)  # streamed through webdataset; local, fsspec URL or pipe: alike
        for error in errors.errors:
            if error.key == "*":  # what made the shard unreadable, for the log (the quarantine has the reason)
                _log.warning("%s: %s (%s)", shard, error.reason, error.detail)
        good_total += len(good)
        rows.extend({"shard": shard, "key": key, "reason": reason} for key, reason in bad)
    quarantine = pd.DataFrame(rows, columns=["shard", "key", "reason"])
    write_parquet_atomic(pa.Table.from_pandas(quarantine, preserve_index=False), join(out_dir, "quarantine.parquet"))
    per_sample = quarantine[quarantine["key"] != "*"]
    dropped = per_sample["reason"].value_counts().to_dict()
    manifest = Manifest(
        stage="verify",
        config={"shards": shards_dir},
        config_hash=config_hash({"shards": shards_dir, "files": [(s, shard_size(s)) for s in shards]}),
        inputs=shards,
        outputs=[join(out_dir, "quarantine.parquet")],
        rows_in=good_total + len(per_sample),
        rows_out=good_total,
        dropped={str(k): int(v) for k, v in dropped.items()},
        wall_time_s=timer.elapsed,
        extra={"truncated_shards": int((quarantine["reason"] == "truncated_shard").sum()), "shards": len(shards)},
    )
    write_manifest(out_dir, manifest)
    return manifest
