"""Text-in-image filter: flag samples whose image shows their class's name as text (the paper's rule).

Reads shards (``shards.iter_samples``) and the catalog; writes ``<out>/<shard stem>.parquet`` with ``key``,
``wnid``, ``flagged`` and the recognised ``text``, one file per shard (resumable), and the manifest. Rule
(REFERENCE.md): recognise the image's text, lower-case it and join it; flag the sample iff the class's WordNet head
name, punctuation-normalised and space-padded, occurs in the punctuation-normalised, space-padded text.
The OCR engine is pluggable (``OcrEngine``); the offline default is RapidOCR (PP-OCRv4 detection + recognition
ONNX models shipped inside the ``rapidocr-onnxruntime`` wheel).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa
from fsspec.core import url_to_fs
from tqdm.auto import tqdm

from laionet.core.manifest import (
    Manifest,
    Timer,
    completed,
    config_hash,
    join,
    part_stem,
    write_manifest,
    write_parquet_atomic,
)
from laionet.images.shards import iter_samples
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


def run_ocr(
    shards_dir: str,
    catalog_path: str,
    out_dir: str,
    engine_factory: Callable[[], OcrEngine] = RapidOcrEngine,
    progress: Callable[[int, int], None] | None = None,
) -> Manifest:
    """Flag every sample of every shard; skip shards already done; manifest last. ``progress(done, total)`` is
    called after each shard (e.g. to update a Prefect progress artifact)."""
    timer = Timer()
    fs, real = url_to_fs(shards_dir)
    shards = sorted(fs.glob(real.rstrip("/") + "/*.tar"))
    if not shards:
        raise FileNotFoundError(f"no .tar shards in {shards_dir}")
    chash = config_hash({"shards": shards, "sizes": [fs.size(s) for s in shards], "catalog": catalog_path})
    complete = completed(out_dir, chash)
    if complete:
        if progress:
            progress(len(shards), len(shards))
        return complete
    catalog = read_catalog(catalog_path)
    names = dict(zip(catalog["wnid"], catalog["name"], strict=True))
    engine: OcrEngine | None = None
    outputs, total, flagged, unknown = [], 0, 0, 0
    for i, shard in enumerate(tqdm(shards, desc="ocr", unit="shard", disable=None)):
        if progress and i:
            progress(i, len(shards))
        out_path = join(out_dir, f"{part_stem(shard.removesuffix('.tar'))}.parquet")
        out_fs, out_real = url_to_fs(out_path)
        if not out_fs.exists(out_real):
            engine = engine or engine_factory()
            rows = []
            for key, image, meta in iter_samples(shard):
                wnid = meta.get("wnid")
                text = engine.read(image)
                name = names.get(wnid)
                rows.append({"key": key, "wnid": wnid, "flagged": bool(name and shows_name(name, text)), "text": text})
            table = pd.DataFrame(rows, columns=["key", "wnid", "flagged", "text"])
            write_parquet_atomic(pa.Table.from_pandas(table, preserve_index=False), out_path)
        with out_fs.open(out_real, "rb") as f:
            done = pd.read_parquet(f)
        outputs.append(out_path)
        total += len(done)
        flagged += int(done["flagged"].sum())
        unknown += int((~done["wnid"].isin(names)).sum())
    if progress:
        progress(len(shards), len(shards))
    manifest = Manifest(
        stage="ocr",
        config={"shards": shards_dir, "catalog": catalog_path},
        config_hash=chash,
        inputs=shards,
        outputs=outputs,
        rows_in=total,
        rows_out=total,
        wall_time_s=timer.elapsed,
        extra={"flagged": flagged, "class_not_in_catalog": unknown},
    )
    write_manifest(out_dir, manifest)
    return manifest
