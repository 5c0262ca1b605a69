"""The Hugging Face ``datasets`` export of a run (``export_hf``): one parquet config per index variant, the WebDataset
shards, and a dataset card (``README.md``) whose YAML front matter declares the configs, features (``label`` a
``ClassLabel`` over the catalog's class names), splits and row counts, so that ``datasets.load_dataset(<out>)`` needs
no script and ``webdataset.WebDataset(<out>/shards/{…}.tar)`` reads the images.

The folder is built under a temporary name and renamed into place; the tables, class names and shards come from
``laionet.export.data``, the card (what each config is, the counts by class, how the run was made, the licence
situation of LAION's URLs and captions, and the paper to cite) from ``laionet.export.card``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import uuid
from typing import Any

import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from laionet.core.layout import shards_dir
from laionet.core.manifest import (
    MANIFEST_NAME,
    Manifest,
    Timer,
    config_hash,
    is_local,
    join,
    read_manifest,
)
from laionet.export.card import dataset_card, stage_manifests
from laionet.export.data import (
    SPLIT,
    ExportError,
    catalog_path,
    class_names,
    copy_shards,
    features,
    read_table,
    variant_configs,
    with_label,
)

STAGE = "export-hf"
ROWS_PER_FILE = 500_000
_log = logging.getLogger("laionet.export")


def export_hf(
    run_dir: str, out: str, *, force: bool = False, shards: bool = True, rows_per_file: int = ROWS_PER_FILE
) -> Manifest:
    """Write the run's LAIONet index (and its variants and shards, where present) to ``out`` as a Hugging Face
    ``datasets`` folder; built under ``<out>.tmp-<id>`` and renamed into place.

    Args:
        run_dir: the run directory (local path or fsspec URL); its selection stage must be complete.
        out: the folder to write; it must not exist or be empty, unless ``force`` (then it is replaced).
        force: replace a non-empty ``out``.
        shards: also export ``<run>/shards/*.tar`` when the download stage is complete.
        rows_per_file: rows per parquet file.

    Returns:
        The export's manifest (also written as ``<out>/_manifest.json``).

    Raises:
        FileNotFoundError: the selection stage of ``run_dir`` is missing or incomplete.
        ExportError: ``out`` exists and is not empty (without ``force``), or is a file.
    """
    timer = Timer()
    selection = join(run_dir, "selection")
    select_manifest = read_manifest(selection)
    if select_manifest is None:
        raise FileNotFoundError(
            f"{selection} has no complete selection (no {MANIFEST_NAME}): run the build stage first"
        )
    fs, target = url_to_fs(out)
    target = target.rstrip("/")
    if fs.exists(target):
        if not fs.isdir(target):
            raise ExportError(f"{out} exists and is a file")
        if fs.ls(target) and not force:
            raise ExportError(f"{out} exists and is not empty: pass --force to replace it")
    staging = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
    fs.makedirs(staging, exist_ok=False)
    try:
        manifest = _write(run_dir, out, fs, staging, select_manifest, shards, rows_per_file, timer)
        _swap(fs, staging, target)
    except BaseException:
        if fs.exists(staging):
            fs.rm(staging, recursive=True)
        raise
    _log.info("exported %s → %s", run_dir, out)
    return manifest


def _write(
    run_dir: str,
    out: str,
    fs: Any,
    staging: str,
    select_manifest: Manifest,
    shards: bool,
    rows_per_file: int,
    timer: Timer,
) -> Manifest:
    names, wnids = class_names(catalog_path(run_dir, select_manifest))
    index = read_table(join(run_dir, "selection", "laionet.parquet"))
    configs = [("laionet", "the LAIONet index: every caption selected by text alone", index)]
    for path in select_manifest.outputs:
        found = re.fullmatch(r"top(\d+)\.parquet", path.rsplit("/", 1)[-1])
        if found:
            configs.append((f"laionet-top{found.group(1)}", f"the {found.group(1)} most similar rows of each class",
                            read_table(path)))  # fmt: skip
    configs += variant_configs(run_dir, index)

    outputs, infos, rows = [], [], {}
    for name, _, table in configs:
        table = with_label(table)
        rows[name] = table.num_rows
        files = max(1, math.ceil(table.num_rows / rows_per_file))
        fs.makedirs(f"{staging}/data/{name}", exist_ok=True)
        for i in range(files):
            file = f"data/{name}/{SPLIT}-{i:05d}-of-{files:05d}.parquet"
            with fs.open(f"{staging}/{file}", "wb") as handle:
                pq.write_table(table.slice(i * rows_per_file, rows_per_file), handle, compression="zstd")
            outputs.append(join(out, file))
        infos.append(
            {
                "config_name": name,
                "features": features(table.schema, names),
                "splits": [{"name": SPLIT, "num_examples": table.num_rows}],
            }
        )

    shard_info = copy_shards(run_dir, fs, staging) if shards else None
    if shard_info:
        outputs += [join(out, "shards", n) for n in shard_info["files"]]
    stages = stage_manifests(run_dir, select_manifest)
    card = dataset_card(
        configs=[(n, doc, rows[n]) for n, doc, _ in configs],
        infos=infos,
        index=index,
        names=names,
        wnids=wnids,
        stages=stages,
        select_manifest=select_manifest,
        shard_info=shard_info,
    )
    with fs.open(f"{staging}/README.md", "w") as handle:
        handle.write(card)
    outputs.insert(0, join(out, "README.md"))
    settings = {"run_dir": run_dir, "shards": shards, "rows_per_file": rows_per_file}
    manifest = Manifest(
        stage=STAGE,
        config={**settings, "out": out},
        config_hash=config_hash({**settings, "selection": select_manifest.config_hash}),
        inputs=[join(run_dir, "selection")] + ([shards_dir(run_dir)] if shard_info else []),
        outputs=outputs,
        rows_in=index.num_rows,
        rows_out=index.num_rows,
        wall_time_s=timer.elapsed,
        extra={"configs": rows, "classes": len(names), "shards": len(shard_info["files"]) if shard_info else 0},
    )
    manifest.check_counts()
    with fs.open(f"{staging}/{MANIFEST_NAME}", "w") as handle:  # renamed into place with the rest
        handle.write(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def _swap(fs: Any, staging: str, target: str) -> None:
    """Put the finished ``staging`` folder at ``target``, replacing what is there (``export_hf`` checked ``force``)."""
    old = None
    if fs.exists(target):
        old = f"{target}.old-{uuid.uuid4().hex[:8]}"
        _rename(fs, target, old)
    _rename(fs, staging, target)
    if old is not None:
        fs.rm(old, recursive=True)


def _rename(fs: Any, source: str, destination: str) -> None:
    if is_local(fs):
        os.replace(source, destination)  # never fsspec's mv: onto an existing directory it moves *into* it
    else:
        fs.mv(source, destination, recursive=True)


__all__ = ["ROWS_PER_FILE", "STAGE", "export_hf"]
