"""Text-in-image filter: flag samples whose image shows their class's name as text (the paper's rule).

Reads shards (``shards.iter_raw``: through webdataset, local or any fsspec URL, one sample at a time) and the catalog;
writes ``<out>/<shard stem>.parquet`` with ``key``, ``wnid``, ``flagged`` and the recognised ``text``, one file per
shard (resumable), and the manifest. Rule
(REFERENCE.md): recognise the image's text, lower-case it and join it; flag the sample iff the class's WordNet head
name, punctuation-normalised and space-padded, occurs in the punctuation-normalised, space-padded text.
The OCR engine is pluggable (``OcrEngine``; one with ``read_many`` gets a shard's images in batches); the offline
default is RapidOCR (PP-OCRv4 detection + recognition ONNX models shipped inside the ``rapidocr-onnxruntime`` wheel),
run by ``RapidOcrEngine``'s fast engine (``engine="full"`` is the library's own pipeline, kept as the reference that
``benchmarks/bench_ocr.py`` and the tests compare it with; both in ``laionet.images.ocr_engine``). The fast engine
reads each image quickly (a smaller detector input) and reads again, as the library does, every image whose quick
text comes near its class name without showing it (``read_texts``): a flag is raised where either reading shows the
name. ``workers``
> 1 OCRs shards in parallel processes.
"""

from __future__ import annotations

import functools
import io
import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from laionet.core.manifest import (
    Manifest,
    Timer,
    config_hash,
    file_digest,
    join,
    part_stem,
    read_part_record,
    write_manifest,
    write_parquet_atomic,
    write_part_record,
)
from laionet.core.runtime import cores
from laionet.core.stage import begin, input_identity, prune, prune_records, require_file_input, stage_run
from laionet.core.tables import read_columns
from laionet.images.ocr_engine import DET_SIDE, ENGINES, OCR_DEVICES, OcrEngine, RapidOcrEngine, ocr_providers
from laionet.images.ocr_rule import READING, could_show_name, read_texts, shows_name
from laionet.images.shard_list import list_shards
from laionet.images.shards import ErrorLog, iter_raw, original_key
from laionet.text.catalog import read_catalog

__all__ = ["DET_SIDE", "ENGINES", "OCR_DEVICES", "READING", "OcrEngine", "RapidOcrEngine", "could_show_name",
           "ocr_providers", "read_texts", "run_ocr", "run_ocr_shards", "shows_name"]  # fmt: skip


_log = logging.getLogger("laionet.ocr")


def run_ocr(
    shards_dir: str,
    catalog_path: str,
    out_dir: str,
    engine_factory: Callable[[], OcrEngine] | None = None,
    progress: Callable[[int, int], None] | None = None,
    quarantine: str | None = None,
    workers: int | Literal["auto"] = 1,
    threads: int | None = None,
    device: str = "cpu",
) -> Manifest:
    """Flag every sample of every shard; resume per shard; manifest last. ``progress(done, total)`` is called after
    each shard (e.g. to update a Prefect progress artifact).

    Shards are the shard stage's current ones (its manifest). With ``quarantine`` (``quarantine.parquet`` of
    ``laionet verify``; run verify first) its keys are skipped and counted ``quarantined``. A sample whose image does
    not decode is counted ``undecodable``, and a truncated shard keeps the samples read before the cut (counted in
    ``extra.truncated_shards``): neither stops the stage. A shard's flags are reused on a re-run only if its record
    names the same shard content (size, mtime), catalog and quarantine — whoever wrote it: this call, an earlier
    one, or a fanned-out ``run_ocr_shards`` over a group of the shards (then this call only writes the manifest).

    ``workers`` > 1 OCRs that many shards at once, each in a process of its own (spawned; each builds its engine with
    ``engine_factory``, which must then be picklable); outputs and part records are the serial run's. ``"auto"``:
    ``auto_workers`` of the shards still to do (one process per core once there are enough shards). The default
    engine is ``RapidOcrEngine`` with ``threads`` ONNX Runtime threads (default: this process's cores divided among
    the workers) on ``device`` (``ocr_providers``: ``cuda[:i]`` with onnxruntime-gpu; not part of the stage's hash,
    it changes how fast, not what).
    """
    _check_workers(workers)
    timer = Timer()
    _log.info("OCR of %s (catalog %s, quarantine %s) → %s", shards_dir, catalog_path, quarantine, out_dir)
    plan = _plan(shards_dir, catalog_path, quarantine)
    shards = plan.shards
    with stage_run(out_dir, plan.chash, "ocr") as complete:
        if complete:
            if progress:
                progress(len(shards), len(shards))
            return complete
        records, todo = plan.records(out_dir)
        _ocr_all(plan, out_dir, todo, records, engine_factory, progress, workers, threads, device)
        ordered = [records[shard] for shard in shards]
        outputs = [r["output"] for r in ordered]
        dropped = {reason: sum(r["dropped"][reason] for r in ordered) for reason in OCR_DROP_REASONS}
        manifest = Manifest(
            stage="ocr",
            config={"shards": shards_dir, "catalog": catalog_path, "quarantine": quarantine},
            config_hash=plan.chash,
            inputs=shards,
            outputs=outputs,
            rows_in=sum(r["rows_in"] for r in ordered),
            rows_out=sum(r["rows_out"] for r in ordered),
            dropped=dropped,
            wall_time_s=timer.elapsed,
            extra={
                "flagged": sum(r["flagged"] for r in ordered),
                "class_not_in_catalog": sum(r["class_not_in_catalog"] for r in ordered),
                "truncated_shards": [r["part"] for r in ordered if r.get("truncated")],
            },
        )
        prune(out_dir, outputs, ["*.parquet"])  # flags of shards that are no longer in the shard stage
        prune_records(out_dir, shards)
        write_manifest(out_dir, manifest)
        return manifest


def run_ocr_shards(
    shards_dir: str,
    catalog_path: str,
    out_dir: str,
    only: Sequence[str],
    engine_factory: Callable[[], OcrEngine] | None = None,
    progress: Callable[[int, int], None] | None = None,
    quarantine: str | None = None,
    workers: int | Literal["auto"] = 1,
    threads: int | None = None,
    device: str = "cpu",
) -> int:
    """One group of a fanned-out OCR: flag the samples of the shards of ``shards_dir`` named in ``only`` (paths or
    stems) that no current part record covers, and write their part records — no manifest (a final ``run_ocr``
    finds them done and writes it). Groups must be disjoint; they may run at once, in any process or machine that
    sees ``out_dir``. The output is marked incomplete before the first shard is touched. Returns the number of
    shards OCR'd by this call (0: all were done)."""
    _check_workers(workers)
    plan = _plan(shards_dir, catalog_path, quarantine, only)
    records, todo = plan.records(out_dir)
    _log.info("OCR of %d of %d shards of %s → %s (%d done before)", len(todo), len(plan.shards), shards_dir, out_dir,
              len(records))  # fmt: skip
    if todo:  # visibly incomplete until the final call writes the manifest
        begin(out_dir, "", locked=False)
        _ocr_all(plan, out_dir, todo, records, engine_factory, progress, workers, threads, device)
    elif progress:
        progress(1, 1)
    return len(todo)


def _stem(shard: str) -> str:
    return part_stem(shard.rstrip("/").rsplit("/", 1)[-1].removesuffix(".tar"))


@dataclass
class _Plan:
    """What a call of the stage works from: its shards and their identities, the class names, the quarantined keys,
    the hash part records are written under and the hash of the whole stage ("" for a group of it)."""

    shards: list[str]
    identities: dict[str, dict[str, Any]]
    catalog_path: str
    bad: set[str]
    part_hash: str
    chash: str

    def records(self, out_dir: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """The current part records of the plan's shards and the shards without one, in order."""
        records: dict[str, dict[str, Any]] = {}
        todo = []
        for shard in self.shards:
            record = read_part_record(out_dir, shard, self.part_hash, self.identities[shard])
            if record is None:
                todo.append(shard)
            else:
                records[shard] = record
        return records, todo


def _plan(shards_dir: str, catalog_path: str, quarantine: str | None, only: Sequence[str] | None = None) -> _Plan:
    """What a call works from. With ``only`` (paths or stems of a group), the plan holds just those shards and no
    stage hash: a group task stats its own shards, not every shard of the stage (on object storage, a request each).

    Raises:
        ValueError: a shard of ``only`` is not one of the stage's.
    """
    shards = list_shards(shards_dir)
    if only is not None:
        wanted = set(only)
        unknown = wanted - set(shards) - {_stem(s) for s in shards}
        if unknown:
            raise ValueError(f"OCR of {shards_dir}: {sorted(unknown)[:5]} not among its {len(shards)} shards")
        shards = [s for s in shards if s in wanted or _stem(s) in wanted]
    require_file_input(catalog_path, "catalog", hint="re-run `laionet catalog`")
    bad: set[str] = set()
    if quarantine is not None:
        require_file_input(quarantine, "verify", hint="re-run `laionet verify`")
        bad = set(read_columns(quarantine, ["key"])["key"].astype(str)) - {"*"}
    part_hash = config_hash(
        {
            "catalog": file_digest(catalog_path),
            "quarantine": file_digest(quarantine) if quarantine else None,
            "reading": READING,
        }
    )
    identities = {shard: input_identity(shard) for shard in shards}
    chash = (
        ""
        if only is not None
        else config_hash({"part_hash": part_hash, "shards": [[s, identities[s]] for s in shards]})
    )
    return _Plan(shards, identities, catalog_path, bad, part_hash, chash)


SHARDS_PER_AUTO_WORKER = 4


def auto_workers(shards: int, available: int | None = None) -> int:
    """OCR processes for ``shards`` shards on ``available`` cores (default: this process's): one per core, one
    thread each, but at most one per ``SHARDS_PER_AUTO_WORKER`` shards, so that the last shards do not leave most
    processes idle while a few run one thread each (a demo's 2 shards: one process with every core's thread).

    Why processes rather than threads: the fast engine read 4-29 % more images/s on 2 cores as 2 processes × 1
    thread than as 1 process × 2 threads (``benchmarks/bench_ocr.py --fast 736/openvino --fast '736/openvino*2'``,
    two runs, two image sets, the quick pass alone; more cores not measured). With the exact re-reading the two were
    even (0.99x on the demo's clip art, 1.06x on generated text images; 2026-12-01 evening, an AVX-512 EPYC), so
    processes stay: they are never slower and scale past one machine's thread pool. Where a flow fans OCR out as tasks
    (``shard_batches`` > 1), each task runs one process instead (``per_task_workers``)."""
    return max(1, min(available or cores(), shards // SHARDS_PER_AUTO_WORKER))


def per_task_workers(workers: int | Literal["auto"], tasks: int) -> int | Literal["auto"]:
    """The ``workers`` of each OCR task of a flow that fans OCR out as ``tasks`` tasks (shard groups): the tasks are
    the fan-out then (several at once on one machine, or one per Ray worker), so ``"auto"`` is one process each
    rather than one per core each; a number is kept."""
    return 1 if workers == "auto" and tasks > 1 else workers


def _check_workers(workers: int | str) -> None:
    if workers != "auto" and not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"OCR workers must be a number ≥ 1 or 'auto', not {workers!r}")


def _ocr_all(
    plan: _Plan,
    out_dir: str,
    todo: list[str],
    records: dict[str, dict[str, Any]],
    engine_factory: Callable[[], OcrEngine] | None,
    progress: Callable[[int, int], None] | None,
    workers: int | Literal["auto"],
    threads: int | None,
    device: str = "cpu",
) -> None:
    """OCR the shards of ``todo`` (``workers`` at once; ``"auto"``: ``auto_workers``), writing each one's part record
    and adding it to ``records``; ``progress(done, total)`` counts over ``records`` and ``todo``."""
    total = len(records) + len(todo)
    catalog = read_catalog(plan.catalog_path)
    names = dict(zip(catalog["wnid"], catalog["name"], strict=True))
    count = max(1, min(auto_workers(len(todo)) if workers == "auto" else workers, len(todo)))
    own_engine = engine_factory is None
    if engine_factory is None:
        per_worker = threads or max(1, cores() // count)
        engine_factory = functools.partial(RapidOcrEngine, threads=per_worker, device=device)

    def finish(shard: str, record: dict[str, Any]) -> None:
        record.update(part=shard, config_hash=plan.part_hash, identity=plan.identities[shard])
        write_part_record(out_dir, shard, record)
        records[shard] = record
        if progress:
            progress(len(records), total)

    # The real engine always runs in processes of its own, one worker included: OpenVINO's and ONNX Runtime's thread
    # pools then never live in the calling process (a Prefect worker, a test session); a worker closes its engine at
    # exit (``_start_worker``). The full suite segfaulted twice, at random later tests, after OpenVINO had run in the
    # test process. A given factory runs in-process when one worker is asked for (tests' engines, no pickling needed).
    if count > 1 or own_engine:
        context = get_context("spawn")
        with ProcessPoolExecutor(count, context, _start_worker, (engine_factory, names, plan.bad)) as pool:
            futures = {pool.submit(_worker_shard, shard, out_dir): shard for shard in todo}
            for future in tqdm(as_completed(futures), total=len(futures), desc="ocr", unit="shard", disable=None):
                finish(futures[future], future.result())
    else:
        engine: OcrEngine | None = None
        try:
            for shard in tqdm(todo, desc="ocr", unit="shard", disable=None):
                engine = engine or engine_factory()
                finish(shard, _ocr_shard(shard, out_dir, engine, names, plan.bad))
        finally:
            close = getattr(engine, "close", None)
            if close is not None:
                close()  # its native sessions go now, in this thread, not whenever the collector finds them
    if progress:
        progress(total, total)


_worker: dict[str, Any] = {}  # a worker process's engine factory, engine, class names and quarantined keys


def _start_worker(factory: Callable[[], OcrEngine], names: dict[str, str], bad: set[str]) -> None:
    import atexit

    _worker.update(factory=factory, engine=None, names=names, bad=bad)
    atexit.register(_close_worker_engine)  # a spawned worker ends with sys.exit: this runs before module teardown


def _close_worker_engine() -> None:
    close = getattr(_worker.get("engine"), "close", None)
    if close is not None:
        close()  # the native sessions in their order, before the interpreter tears the modules down


def _worker_shard(shard: str, out_dir: str) -> dict[str, Any]:
    if _worker["engine"] is None:
        _worker["engine"] = _worker["factory"]()
    return _ocr_shard(shard, out_dir, _worker["engine"], _worker["names"], _worker["bad"])


OCR_DROP_REASONS = ("quarantined", "undecodable")
READ_BATCH = 8  # images decoded and handed to the engine at once (``read_many``)


def _ocr_shard(shard: str, out_dir: str, engine: OcrEngine, names: dict[str, str], bad: set[str]) -> dict[str, Any]:
    """OCR one shard into ``<out>/<shard stem>.parquet``; return its record (counts, output)."""
    from PIL import Image

    from laionet.core.runtime import limit_image_pixels

    limit_image_pixels()

    out_path = join(out_dir, f"{part_stem(shard.removesuffix('.tar'))}.parquet")
    rows = []
    dropped = dict.fromkeys(OCR_DROP_REASONS, 0)
    rows_in = 0
    errors = ErrorLog()  # webdataset's handler: a damaged shard keeps the samples read before the damage
    pending: list[tuple[str, Any, Any]] = []  # decoded, waiting for the engine: (key, wnid, image)

    def flush() -> None:
        classes = [names.get(str(wnid)) if wnid is not None else None for _, wnid, _ in pending]
        texts = read_texts(engine, [image for _, _, image in pending], classes)
        for (key, wnid, _), name, text in zip(pending, classes, texts, strict=True):
            rows.append({"key": key, "wnid": wnid, "flagged": bool(name and shows_name(name, text)), "text": text})
        pending.clear()

    for safe, sample in iter_raw(shard, errors):
        if "jpg" not in sample:
            continue  # not an image sample (verify counts it)
        rows_in += 1
        key = original_key(safe)
        if key in bad:
            dropped["quarantined"] += 1
            continue
        try:
            meta = json.loads(sample["json"]) if "json" in sample else {}
            image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            dropped["undecodable"] += 1  # over the pixel limit too
            errors.add(shard, key, "undecodable_image", f"{type(exc).__name__}: {exc}")
            continue
        pending.append((key, meta.get("wnid"), image))
        if len(pending) >= READ_BATCH:
            flush()
    flush()
    truncated = errors.truncated(shard)  # read errors and a missing end-of-archive marker alike
    for error in errors.errors:
        if error.key == "*":  # the samples read before the cut are kept; verify quarantines the shard's rest
            _log.warning("%s: %s (%s)", shard, error.reason, error.detail)
    table = pd.DataFrame(rows, columns=["key", "wnid", "flagged", "text"])
    write_parquet_atomic(pa.Table.from_pandas(table, preserve_index=False), out_path)
    return {
        "output": out_path,
        "rows_in": rows_in,
        "rows_out": len(table),
        "dropped": dropped,
        "flagged": int(table["flagged"].sum()),
        "class_not_in_catalog": int((~table["wnid"].isin(names)).sum()),
        "truncated": truncated,
    }
