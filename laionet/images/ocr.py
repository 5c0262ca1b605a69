"""Text-in-image filter: flag samples whose image shows their class's name as text (the paper's rule).

Reads shards (``shards.iter_raw``: through webdataset, local or any fsspec URL, one sample at a time) and the catalog;
writes ``<out>/<shard stem>.parquet`` with ``key``, ``wnid``, ``flagged`` and the recognised ``text``, one file per
shard (resumable), and the manifest. Rule
(REFERENCE.md): recognise the image's text, lower-case it and join it; flag the sample iff the class's WordNet head
name, punctuation-normalised and space-padded, occurs in the punctuation-normalised, space-padded text.
The OCR engine is pluggable (``OcrEngine``); the offline default is RapidOCR (PP-OCRv4 detection + recognition
ONNX models shipped inside the ``rapidocr-onnxruntime`` wheel).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

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
from laionet.core.stage import input_identity, prune, prune_records, require_file_input, stage_run
from laionet.core.tables import read_columns
from laionet.images.shards import ErrorLog, iter_raw, list_shards, original_key
from laionet.text.catalog import read_catalog
from laionet.text.normalize import paper_normalize


class OcrEngine(Protocol):
    def read(self, image: Any) -> str:
        """All text recognised in a PIL RGB image, joined by spaces."""
        ...


class RapidOcrEngine:
    """RapidOCR (PP-OCRv4, ONNX Runtime, CPU); images are shrunk so their longer side is at most ``max_side``."""

    def __init__(self, max_side: int = 960) -> None:
        from rapidocr_onnxruntime import RapidOCR

        self._engine = RapidOCR()
        self.max_side = max_side

    def read(self, image: Any) -> str:
        import numpy as np

        if max(image.size) > self.max_side:
            image = image.copy()
            image.thumbnail((self.max_side, self.max_side))
        result, _ = self._engine(np.asarray(image)[:, :, ::-1])  # OpenCV order
        return " ".join(str(item[1]) for item in result or [])


def shows_name(name: str, text: str) -> bool:
    """The paper's rule: the punctuation-normalised class name, space-padded, occurs in the lower-cased text."""
    needle = " " + " ".join(paper_normalize(name.lower()).split()) + " "
    haystack = " " + " ".join(paper_normalize(text.lower()).split()) + " "
    return needle.strip() != "" and needle in haystack


_log = logging.getLogger("laionet.ocr")


def run_ocr(
    shards_dir: str,
    catalog_path: str,
    out_dir: str,
    engine_factory: Callable[[], OcrEngine] = RapidOcrEngine,
    progress: Callable[[int, int], None] | None = None,
    quarantine: str | None = None,
) -> Manifest:
    """Flag every sample of every shard; resume per shard; manifest last. ``progress(done, total)`` is called after
    each shard (e.g. to update a Prefect progress artifact).

    Shards are the shard stage's current ones (its manifest). With ``quarantine`` (``quarantine.parquet`` of
    ``laionet verify``; run verify first) its keys are skipped and counted ``quarantined``. A sample whose image does
    not decode is counted ``undecodable``, and a truncated shard keeps the samples read before the cut (counted in
    ``extra.truncated_shards``): neither stops the stage. A shard's flags are reused on a re-run only if its record
    names the same shard content (size, mtime), catalog and quarantine.
    """
    timer = Timer()
    _log.info("OCR of %s (catalog %s, quarantine %s) → %s", shards_dir, catalog_path, quarantine, out_dir)
    shards = list_shards(shards_dir)
    require_file_input(catalog_path, "catalog", hint="re-run `laionet catalog`")
    bad: set[str] = set()
    if quarantine is not None:
        require_file_input(quarantine, "verify", hint="re-run `laionet verify`")
        bad = set(read_columns(quarantine, ["key"])["key"].astype(str)) - {"*"}
    part_hash = config_hash(
        {"catalog": file_digest(catalog_path), "quarantine": file_digest(quarantine) if quarantine else None}
    )
    identities = {shard: input_identity(shard) for shard in shards}
    chash = config_hash({"part_hash": part_hash, "shards": [[s, identities[s]] for s in shards]})
    with stage_run(out_dir, chash, "ocr") as complete:
        if complete:
            if progress:
                progress(len(shards), len(shards))
            return complete
        catalog = read_catalog(catalog_path)
        names = dict(zip(catalog["wnid"], catalog["name"], strict=True))
        engine: OcrEngine | None = None
        records = []
        for i, shard in enumerate(tqdm(shards, desc="ocr", unit="shard", disable=None)):
            if progress and i:
                progress(i, len(shards))
            record = read_part_record(out_dir, shard, part_hash, identities[shard])
            if record is None:
                engine = engine or engine_factory()
                record = _ocr_shard(shard, out_dir, engine, names, bad)
                record.update(part=shard, config_hash=part_hash, identity=identities[shard])
                write_part_record(out_dir, shard, record)
            records.append(record)
        if progress:
            progress(len(shards), len(shards))
        outputs = [r["output"] for r in records]
        dropped = {reason: sum(r["dropped"][reason] for r in records) for reason in OCR_DROP_REASONS}
        manifest = Manifest(
            stage="ocr",
            config={"shards": shards_dir, "catalog": catalog_path, "quarantine": quarantine},
            config_hash=chash,
            inputs=shards,
            outputs=outputs,
            rows_in=sum(r["rows_in"] for r in records),
            rows_out=sum(r["rows_out"] for r in records),
            dropped=dropped,
            wall_time_s=timer.elapsed,
            extra={
                "flagged": sum(r["flagged"] for r in records),
                "class_not_in_catalog": sum(r["class_not_in_catalog"] for r in records),
                "truncated_shards": [r["part"] for r in records if r.get("truncated")],
            },
        )
        prune(out_dir, outputs, ["*.parquet"])  # flags of shards that are no longer in the shard stage
        prune_records(out_dir, shards)
        write_manifest(out_dir, manifest)
        return manifest


OCR_DROP_REASONS = ("quarantined", "undecodable")


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
        wnid = meta.get("wnid")
        text = engine.read(image)
        name = names.get(str(wnid)) if wnid is not None else None
        rows.append({"key": key, "wnid": wnid, "flagged": bool(name and shows_name(name, text)), "text": text})
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
