"""Image download into WebDataset shards with img2dataset (run by ``laionet.images.attempt``, the only module that
imports it).

Reads an index parquet (``key``, ``url``, ``text``, ``wnid``, ``class_index``: the LAIONet index); writes
``<out>/NNNNN.tar`` shards whose samples are ``<__key__>.jpg`` (RGB), ``.txt`` (caption), ``.json`` (``key``,
``wnid``, ``class_index``, caption, size, url) and ``.cls`` (the ImageNet-1k class index as text; absent for a wnid
outside ImageNet-1k: see ``laionet.images.shards``), ``__key__`` being our key made tar-safe (``shards.safe_key``,
reversible), plus ``NNNNN.parquet`` (every row of the shard with its status), then ``_info.json`` (classes, counts,
timm's ``train`` split) and the manifest (last).

img2dataset downloads into ``<out>/_attempts/<n>/`` (its own shard layout, one ``attempt.run_attempt`` each; a killed
run resumes there: shards whose ``_stats.json`` exists are not fetched again). Each finished attempt shard is rewritten
into a final shard sample by sample (read through webdataset, written through ``webdataset.TarWriter`` under a
temporary name, renamed: one sample in memory) with our keys and grayscale/palette/CMYK images converted to RGB
(img2dataset already mattes alpha onto white). ``_attempts/`` is removed once every attempt is finalised (just before
``_info.json`` and the manifest): it exists only while a download is incomplete, and a later run's retries number
their attempts after the final shards' (``<attempt:03d><img2dataset shard:05d>.tar``). Rows that failed for a transient
reason (timeout, connection error, HTTP 5xx/429) are retried in a further attempt — also when the stage is run again
later (``retry_failed``); 404s, opt-outs and undecodable images are final. Counts: rows in = downloaded + failed by
reason.

Untrusted URLs are fetched under ``laionet.images.fetch``'s policy, which ``laionet.images.attempt`` installs in
img2dataset's worker processes (see its module docstring); refusals (``bad_scheme``, ``private_address``,
``redirect_refused``, ``too_large``, ``too_many_pixels``) are counted by reason and never retried. The host of a mirror
that ``prepare_index`` rewrote URLs to is allowed automatically (``mirror_hosts``, read from ``<index>.source.json``).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from laionet.core.manifest import Manifest, Timer, atomic_path, config_hash, join, write_manifest, write_parquet_atomic
from laionet.core.stage import require_file_input, stage_rebuild
from laionet.images.attempt import DownloadConfig, run_attempt
from laionet.images.fetch import host_port, refusal_reason
from laionet.images.shard_writer import (
    TarStream,
    encode_rgb_jpeg,
    remove_shard_info,
    sample_members,
    write_shard_info,
)
from laionet.images.shards import ErrorLog, iter_raw, safe_key

TRANSIENT = ("timeout", "connection", "http_error")  # reasons worth another attempt
MISSING_FROM_TAR = "missing from img2dataset's shard"  # a success row whose sample its tar lacks


def failure_reason(status: str | None, message: str | None) -> str:
    """A coarse reason for a row's outcome: success, a refusal (bad_scheme, private_address, redirect_refused,
    too_large, too_many_pixels), http_404, http_error, timeout, connection, opt_out, decode_error, missing_from_tar,
    other."""
    if status == "success":
        return "success"
    text = message or ""
    refused = refusal_reason(text)
    if refused:
        return refused
    if text == MISSING_FROM_TAR:
        return "missing_from_tar"
    if "X-Robots-Tag" in text:
        return "opt_out"
    if "HTTP Error 404" in text:
        return "http_404"
    if "timed out" in text.lower() or "timeout" in text.lower():
        return "timeout"
    if text.startswith("HTTP Error"):
        return "http_error"
    if status == "failed_to_resize":
        return "decode_error"
    if re.search(r"connection|reset|refused", text, re.I):
        return "connection"
    return "other"


def _finalise(raw_tar: str, raw_parquet: str, out_tar: str, quality: int) -> pd.DataFrame:
    """Rewrite one img2dataset shard with our keys, RGB images and ``cls``, sample by sample (read through webdataset,
    written through ``webdataset.TarWriter`` under a temporary name: one sample in memory); return its rows (with
    status). A sample whose image PIL cannot read, and a row img2dataset counts a success but whose sample its tar
    lacks (or lost in a damaged tar), are marked failed: never silently kept, never silently lost."""
    with fsspec.open(raw_parquet, "rb") as f:
        rows = pd.read_parquet(f)
    by_raw_key = rows.set_index("key")
    undecodable: set[str] = set()
    written: set[str] = set()
    errors = ErrorLog()
    with TarStream(out_tar) as out:
        for raw_key, sample in iter_raw(raw_tar, errors):
            if raw_key not in by_raw_key.index or "jpg" not in sample:
                continue
            row = by_raw_key.loc[raw_key]
            try:
                jpg = encode_rgb_jpeg(sample["jpg"], quality)
            except OSError:  # img2dataset wrote it, PIL cannot read it: not silently kept
                undecodable.add(raw_key)
                continue
            try:
                meta = json.loads(sample.get("json", b"{}"))
            except ValueError:
                meta = {}
            meta = {k: v for k, v in meta.items() if k != "key"}
            meta["img2dataset_key"] = raw_key
            text = sample.get("txt", b"").decode("utf-8", "replace")
            out.write(sample_members(str(row["sample_key"]), jpg, text, meta))
            written.add(raw_key)
    for error in errors.errors:
        _log.warning("%s: %s (%s)", raw_tar, error.reason, error.detail)
    failed = rows["key"].isin(undecodable)
    rows.loc[failed, "status"] = "failed_to_resize"
    rows.loc[failed, "error_message"] = "undecodable after download"
    lost = (rows["status"] == "success") & ~rows["key"].isin(written)
    rows.loc[lost, "status"] = "failed_to_download"
    rows.loc[lost, "error_message"] = MISSING_FROM_TAR
    return rows


_log = logging.getLogger("laionet.download")


def run_download(index_path: str, out_dir: str, config: DownloadConfig | None = None) -> Manifest:
    """Download every row of an index into final shards; retry transient failures; manifest last.

    Re-running a complete stage retries only its transiently failed rows (new shards); finished shards are kept.
    """
    config = config or DownloadConfig()
    timer = Timer()
    _log.info("download of %s → %s, %s", index_path, out_dir, config)
    require_file_input(index_path, "select", hint="re-run `laionet select` (or the build flow)")
    with stage_rebuild(out_dir, "download"):
        return _download(index_path, out_dir, config, timer)


def _download(index_path: str, out_dir: str, config: DownloadConfig, timer: Timer) -> Manifest:
    """The body of ``run_download`` under the stage lock."""
    with fsspec.open(index_path, "rb") as f:
        index = pq.read_table(f, columns=["key", "url", "text", "wnid", "class_index"]).to_pandas()
    if index["key"].duplicated().any():
        repeated = index["key"][index["key"].duplicated()].iloc[0]
        raise ValueError(f"{index_path}: keys must be unique; {repeated!r} repeats")
    wanted = set(index["key"].astype(str))
    mirrors = mirror_hosts(index_path)
    remove_shard_info(out_dir)  # written again, just before the manifest, when the download is complete
    attempt = _next_attempt(out_dir)
    for previous in range(attempt):  # a run killed after img2dataset wrote shards: keep what it finished
        folder = join(out_dir, "_attempts", f"{previous:03d}")
        if url_to_fs(folder)[0].exists(url_to_fs(folder)[1]):
            _finalise_attempt(folder, out_dir, config.encode_quality, wanted)
    _restrict(out_dir, wanted)  # shards of an earlier index keep only the rows this index still has
    status = _collect(out_dir)
    fs, out_real = url_to_fs(out_dir)
    todo = index if status.empty else index[~index["key"].isin(status["key"])]  # never tried (or killed)
    retry = status[status["reason"].isin(TRANSIENT)]["key"]
    for _ in range(config.attempts):
        batch = pd.concat([todo, index[index["key"].isin(retry)]]).drop_duplicates("key")
        if batch.empty:
            break
        folder = join(out_dir, "_attempts", f"{attempt:03d}")
        run_attempt(batch, folder, config, mirrors)
        _finalise_attempt(folder, out_dir, config.encode_quality, wanted)
        status = _collect(out_dir)
        todo = index.iloc[0:0]
        retry = status[status["reason"].isin(TRANSIENT) & status["key"].isin(batch["key"])]["key"]
        attempt += 1
    reasons = status.set_index("key")["reason"].reindex(index["key"]).fillna("not_attempted")
    counts = reasons.value_counts().to_dict()
    success = int(counts.pop("success", 0))
    shards = sorted(fs.glob(out_real.rstrip("/") + "/*.tar"))
    attempts_fs, attempts = url_to_fs(join(out_dir, "_attempts"))
    if attempts_fs.exists(attempts):  # every attempt is finalised: the raw tars would store each image twice
        attempts_fs.rm(attempts, recursive=True)
    _write_info(out_dir, [join(out_dir, s.rsplit("/", 1)[-1]) for s in shards])
    cfg = config.model_dump(mode="json")
    digest = config_hash({"index": pd.util.hash_pandas_object(index, index=False).tolist()})
    manifest = Manifest(
        stage="download",
        config=cfg,
        config_hash=config_hash({**cfg, "index": digest}),
        inputs=[index_path],
        outputs=shards,
        rows_in=len(index),
        rows_out=success,
        dropped={k: int(v) for k, v in counts.items()},
        wall_time_s=timer.elapsed,
        extra={"attempts": attempt},
    )
    write_manifest(out_dir, manifest)
    return manifest


def _write_info(out_dir: str, shards: list[str]) -> None:
    """``_info.json`` of the final shards, from their listings (the source of truth: a success row is in its tar)."""
    lengths: list[tuple[str, int]] = []
    by_wnid: dict[str, int] = {}
    for tar in shards:
        with fsspec.open(tar.removesuffix(".tar") + ".parquet", "rb") as f:
            rows = pq.read_table(f, columns=["status", "wnid"]).to_pandas()
        done = rows[rows["status"] == "success"]
        lengths.append((tar, len(done)))
        for wnid, n in done["wnid"].astype(str).value_counts().items():
            by_wnid[str(wnid)] = by_wnid.get(str(wnid), 0) + int(n)
    write_shard_info(out_dir, lengths, by_wnid, "train", "download")


def mirror_hosts(index_path: str) -> tuple[str, ...]:
    """``HOST:PORT`` of every URL prefix ``prepare_index`` rewrote ``index_path``'s URLs to (``<index>.source.json``):
    a configured mirror is fetched even on a loopback or private address."""
    fs, real = url_to_fs(index_path + ".source.json")
    if not fs.exists(real):
        return ()
    with fs.open(real, "r") as f:
        rewrite = json.load(f).get("rewrite") or {}
    return tuple(host_port(new) for new in rewrite.values() if str(new).lower().startswith(("http://", "https://")))


def _next_attempt(out_dir: str) -> int:
    """The number of the next attempt: after every attempt folder still there and every attempt whose final shards
    (``<attempt:03d><img2dataset shard:05d>``) exist — ``_attempts/`` is removed once a download is complete, and a
    later run's retries must not reuse an earlier attempt's shard names."""
    fs, real = url_to_fs(join(out_dir, "_attempts"))
    used = [-1]
    if fs.exists(real):
        used += [int(n) for p in fs.ls(real) if (n := p.rstrip("/").rsplit("/", 1)[-1]).isdigit()]
    out_fs, out_real = url_to_fs(out_dir)
    if out_fs.exists(out_real):
        stems = (
            p.rstrip("/").rsplit("/", 1)[-1].removesuffix(".parquet") for p in out_fs.glob(out_real + "/*.parquet")
        )
        used += [int(stem[:-5]) for stem in stems if stem.isdigit() and len(stem) > 5]
    return max(used) + 1


def _finalise_attempt(folder: str, out_dir: str, quality: int, wanted: set[str]) -> None:
    """Turn every finished raw shard of an attempt into a final shard (skipping those already done, and those
    holding none of the ``wanted`` keys: an earlier index's)."""
    fs, raw = url_to_fs(join(folder, "shards"))
    if not fs.exists(raw):
        return
    attempt = folder.rstrip("/").rsplit("/", 1)[-1]
    for stats in sorted(fs.glob(raw.rstrip("/") + "/*_stats.json")):
        shard = stats.rsplit("/", 1)[-1].removesuffix("_stats.json")
        final = join(out_dir, f"{attempt}{shard}.tar")
        final_rows = join(out_dir, f"{attempt}{shard}.parquet")
        out_fs, final_real = url_to_fs(final_rows)
        if out_fs.exists(final_real):
            continue
        base = stats.removesuffix("_stats.json")
        with fs.open(f"{base}.parquet", "rb") as f:
            raw_keys = pq.read_table(f, columns=["sample_key"]).column("sample_key").to_pylist()
        if not wanted.intersection(map(str, raw_keys)):
            continue
        rows = _finalise(f"{base}.tar", f"{base}.parquet", final, quality)
        rows["reason"] = [failure_reason(s, m) for s, m in zip(rows["status"], rows["error_message"], strict=True)]
        table = rows.rename(columns={"key": "img2dataset_key", "sample_key": "key"})
        with atomic_path(final_rows) as tmp, fsspec.open(tmp, "wb") as f:
            pq.write_table(pa.Table.from_pandas(table, preserve_index=False), f)


def _restrict(out_dir: str, wanted: set[str]) -> None:
    """Make the final shards hold only ``wanted`` keys: a shard with none is removed (tar first, then its row
    table), a shard with some is rewritten without the others (tar, then row table; each under a temp name). Idempotent,
    so a run killed midway is finished by the next."""
    fs, real = url_to_fs(out_dir)
    if not fs.exists(real):
        return
    for rows_path in sorted(fs.glob(real.rstrip("/") + "/*.parquet")):
        if rows_path.rsplit("/", 1)[-1].startswith("_"):
            continue
        with fs.open(rows_path, "rb") as f:
            rows = pq.read_table(f).to_pandas()
        keep = rows["key"].astype(str).isin(wanted)
        if keep.all():
            continue
        tar = rows_path.removesuffix(".parquet") + ".tar"
        if not keep.any():
            if fs.exists(tar):
                fs.rm(tar)
            fs.rm(rows_path)
            continue
        safe = {safe_key(str(k)) for k in rows.loc[keep, "key"]}
        if fs.exists(tar):
            errors = ErrorLog()
            with TarStream(tar) as out:  # streamed, sample by sample, under a temporary name
                for key, sample in iter_raw(tar, errors):
                    if key in safe:
                        out.write({"__key__": key, **sample})
            for error in errors.errors:
                _log.warning("%s: %s (%s)", tar, error.reason, error.detail)
        with atomic_path(rows_path) as tmp, fsspec.open(tmp, "wb") as f:
            pq.write_table(pa.Table.from_pandas(rows[keep], preserve_index=False), f)


def _collect(out_dir: str) -> pd.DataFrame:
    """Latest status of every key in the final shards' row tables (later attempts override earlier ones)."""
    fs, real = url_to_fs(out_dir)
    if not fs.exists(real):
        return pd.DataFrame(columns=["key", "status", "reason"])
    frames: list[Any] = []
    for path in sorted(fs.glob(real.rstrip("/") + "/*.parquet")):
        with fs.open(path, "rb") as f:
            frames.append(pq.read_table(f, columns=["key", "status", "reason"]).to_pandas())
    if not frames:
        return pd.DataFrame(columns=["key", "status", "reason"])
    return pd.concat(frames, ignore_index=True).drop_duplicates("key", keep="last")


def prepare_index(
    index_path: str,
    out_path: str,
    rewrite: dict[str, str] | None = None,
    limit: int | None = None,
    shards_dir: str | None = None,
) -> str:
    """The download index of a run: ``index_path`` (the LAIONet index) limited to its first ``limit`` rows, with URL
    prefixes rewritten (``{"http://original/": "http://mirror:port/"}``: a local mirror, or the demo's loopback
    server, whose port changes from run to run) → ``out_path``.

    The file is left untouched — so the download stage's cache stays valid — when it holds the same rows before the
    rewrite and the download into ``shards_dir`` is complete; it is rewritten otherwise (an unfinished download needs
    this run's mirror address). The digest of the un-rewritten rows is kept in ``<out_path>.source.json``.
    """
    import json

    from laionet.core.manifest import read_manifest, write_json_atomic

    require_file_input(index_path, "select", hint="re-run `laionet select` (or the build flow)")
    with fsspec.open(index_path, "rb") as f:
        index = pq.read_table(f, columns=["key", "url", "text", "wnid", "class_index"]).to_pandas()
    if limit is not None:
        index = index.head(limit)
    digest = config_hash({"rows": pd.util.hash_pandas_object(index, index=False).tolist(), "source": index_path})
    source = out_path + ".source.json"
    fs, real = url_to_fs(source)
    if fs.exists(real) and fs.exists(url_to_fs(out_path)[1]) and shards_dir and read_manifest(shards_dir):
        with fsspec.open(source, "r") as f:
            if json.load(f).get("digest") == digest:
                return out_path
    for old, new in (rewrite or {}).items():
        index["url"] = index["url"].str.replace(old, new, regex=False)
    write_parquet_atomic(pa.Table.from_pandas(index, preserve_index=False), out_path)
    write_json_atomic(source, {"digest": digest, "index": index_path, "rows": len(index), "rewrite": rewrite})
    return out_path
