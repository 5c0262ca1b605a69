"""Per-class statistics of two datasets as stage drivers, in one pass or split by class group: a ``PerClassStatistic``
says how one statistic reads its inputs, computes its per-class tables for a set of classes and finishes its stage
tables; ``run_statistic``, ``run_statistic_group`` and ``merge_statistic`` are the drivers all of them share
(``intra_class``: intra-class similarity, ``recall``: recall differences, ``own_similarity``: own-synset similarity).

A group's part directory (``groups.part_dirs``) holds its per-class tables (``<kind>.parquet``) and a manifest of stage
``<stage>-group`` (the stage's config plus ``group`` and ``groups``; ``extra["counts"]``: the counts of the whole
stage's inputs, alike in every group). The merge concatenates the parts' tables per kind and writes the stage output
(``<name>.parquet`` per finished table, then ``_manifest.json``) exactly as one pass does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pandas as pd
import pyarrow as pa

from laionet.core.manifest import Manifest, Timer, config_hash, join, write_manifest, write_parquet_atomic
from laionet.evaluation.groups import check_group, concat_parts

D = TypeVar("D")
Tables = dict[str, pd.DataFrame]
Config = dict[str, Any]
Counts = dict[str, Any]


def _same_config(config: Config, data: Any) -> Config:
    return config


@dataclass(frozen=True)
class PerClassStatistic(Generic[D]):
    """One per-class statistic of a stage ``stage``, as functions of its config (the stage manifest's config).

    Attributes:
        stage: the stage's name (its parts': ``<stage>-group``).
        read: config → (the inputs' data, the counts of the whole stage's inputs).
        select: (data, group, groups) → the data of the classes of one group.
        tables: (data, config) → the per-class tables of the data's classes (each class seeded on its own).
        rows: (data, its per-class tables) → the rows a group's part counts.
        finish: (per-class tables of every class, data or None, config, counts) → (the stage's tables in output order,
            its counts ``rows_in``, ``rows_out``, ``dropped``, its manifest ``extra``).
        inputs: config → the input paths a manifest lists.
        settle: (config, data) → the config with what the inputs decide (e.g. the ks compared).
        merge_reads: whether ``finish`` needs the data, so that the merge reads the inputs too (else None).
    """

    stage: str
    read: Callable[[Config], tuple[D, Counts]]
    select: Callable[[D, int, int], D]
    tables: Callable[[D, Config], Tables]
    rows: Callable[[D, Tables], int]
    finish: Callable[[Tables, D | None, Config, Counts], tuple[Tables, Counts, dict[str, Any]]]
    inputs: Callable[[Config], list[str]]
    settle: Callable[[Config, D], Config] = _same_config
    merge_reads: bool = False


def write_tables(out_dir: str, tables: Tables) -> list[str]:
    """``<out_dir>/<name>.parquet`` per table, in order (each written to a temp name, then renamed); their paths."""
    outputs = []
    for name, table in tables.items():
        path = join(out_dir, f"{name}.parquet")
        write_parquet_atomic(pa.Table.from_pandas(table, preserve_index=False), path)
        outputs.append(path)
    return outputs


def run_statistic(stat: PerClassStatistic[D], config: Config, out_dir: str) -> Manifest:
    """The stage output of ``stat`` in one pass over every class."""
    timer = Timer()
    data, counts = stat.read(config)
    config = stat.settle(config, data)
    return _write_stage(stat, out_dir, stat.tables(data, config), data, config, counts, timer)


def run_statistic_group(stat: PerClassStatistic[D], config: Config, part_dir: str, group: int, groups: int) -> Manifest:
    """One class group of ``stat`` (``groups.class_group``): its per-class tables and part manifest in ``part_dir``."""
    check_group(group, groups)
    timer = Timer()
    data, counts = stat.read(config)
    config = stat.settle(config, data)
    mine = stat.select(data, group, groups)
    tables = stat.tables(mine, config)
    part_config = {**config, "group": group, "groups": groups}
    rows = stat.rows(mine, tables)
    manifest = Manifest(
        stage=f"{stat.stage}-group",
        config=part_config,
        config_hash=config_hash(part_config),
        inputs=stat.inputs(config),
        outputs=write_tables(part_dir, tables),
        rows_in=rows,
        rows_out=rows,
        dropped={},
        wall_time_s=timer.elapsed,
        extra={"counts": counts},
    )
    write_manifest(part_dir, manifest)
    return manifest


def merge_statistic(stat: PerClassStatistic[D], config: Config, out_dir: str, part_dirs: Sequence[str]) -> Manifest:
    """``run_statistic``'s output from the parts of every class group: the same tables and manifest (same config, same
    config hash)."""
    timer = Timer()
    data = None
    if stat.merge_reads:
        data, _ = stat.read(config)
        config = stat.settle(config, data)
    tables, counts = read_parts(part_dirs, stat.stage)
    return _write_stage(stat, out_dir, tables, data, config, counts, timer)


def _write_stage(
    stat: PerClassStatistic[D],
    out_dir: str,
    per_class: Tables,
    data: D | None,
    config: Config,
    counts: Counts,
    timer: Timer,
) -> Manifest:
    tables, totals, extra = stat.finish(per_class, data, config, counts)
    outputs = write_tables(out_dir, tables)
    manifest = Manifest(
        stage=stat.stage,
        config=config,
        config_hash=config_hash(config),
        inputs=stat.inputs(config),
        outputs=outputs,
        rows_in=int(totals["rows_in"]),
        rows_out=int(totals["rows_out"]),
        dropped=dict(totals["dropped"]),
        wall_time_s=timer.elapsed,
        extra=extra,
    )
    write_manifest(out_dir, manifest)
    return manifest


def read_parts(part_dirs: Sequence[str], stage: str) -> tuple[Tables, Counts]:
    """The groups' per-class tables, concatenated per kind, and the first part's ``extra["counts"]`` (every group
    counts the whole stage's inputs alike). Each part must be complete and one group of the same split.

    Raises:
        ValueError: when there are no parts, or they are not every group of one split.
        UpstreamError: naming a part that is not complete.
    """
    from laionet.core.stage import require_complete

    if not part_dirs:
        raise ValueError(f"{stage}: no class-group parts to merge")
    frames: dict[str, list[pd.DataFrame]] = {}
    counts: Counts = {}
    seen = set()
    for part in part_dirs:
        manifest = require_complete(part, f"{stage}-group", hint=f"re-run the {stage} group task of {part}")
        seen.add((manifest.config["group"], manifest.config["groups"]))
        counts = counts or dict(manifest.extra["counts"])
        for path in manifest.outputs:
            name = path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".parquet")
            frames.setdefault(name, []).append(pd.read_parquet(path))
    groups = {g for _, g in seen}
    if len(groups) != 1 or {g for g, _ in seen} != set(range(next(iter(groups)))):
        raise ValueError(f"{stage}: the parts {list(part_dirs)} are not every group of one split: {sorted(seen)}")
    return {name: concat_parts(parts) for name, parts in frames.items()}, counts
