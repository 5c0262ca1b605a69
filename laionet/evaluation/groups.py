"""Class groups: the per-class evaluation split into ``groups`` disjoint sets of classes, computed apart (one task per
comparison and group) and merged into exactly the tables of one pass.

A class belongs to group ``class_group(cls, groups)``: an integer class (an ImageNet class index) to ``cls % groups``,
any other label by the CRC-32 of its text. Every per-class statistic is seeded per class (``stats.class_rng``), so
a class's row does not depend on the other classes of its group; the merge concatenates the groups' per-class tables in
class order and computes what spans classes (summaries, pooled distributions, accuracies) from them, as the single pass
does. A group's tables live in a *part directory* with its own manifest (stage ``<stage>-group``), outside the stage's
output directory (e.g. ``evaluate/_groups/intra/<a>--<b>/<model>/<g>-of-<n>/``), so readers of the stage's output never
see them.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np
import pandas as pd


def class_group(cls: object, groups: int) -> int:
    """The group (0 … ``groups``-1) of a class."""
    if groups <= 1:
        return 0
    value = cls.item() if hasattr(cls, "item") else cls
    if isinstance(value, int) and not isinstance(value, bool):
        return value % groups
    return zlib.crc32(str(value).encode()) % groups


def in_group(classes: Iterable[object], group: int, groups: int) -> np.ndarray:
    """A boolean mask: which of ``classes`` belong to ``group`` (all of them when ``groups`` is 1)."""
    values = list(classes)
    if groups <= 1:
        return np.ones(len(values), dtype=bool)
    return np.array([class_group(c, groups) == group for c in values], dtype=bool)


def check_group(group: int, groups: int) -> None:
    if groups < 1 or not 0 <= group < groups:
        raise ValueError(f"class group {group} of {groups}: expected 0 <= group < groups, groups >= 1")


def part_name(group: int, groups: int) -> str:
    """The directory name of one group's part: ``<g>-of-<n>``."""
    return f"{group}-of-{groups}"


def _rank(values: pd.Series) -> np.ndarray:
    """Each value's position in the class order of ``stats._ordered`` (sorted; by text for mixed types)."""
    from laionet.evaluation.stats import _ordered

    order = {c: i for i, c in enumerate(_ordered(set(values)))}
    return values.map(order).to_numpy(np.int64)


def by_class(frame: pd.DataFrame, first: str | None = None, first_order: list[str] | None = None) -> pd.DataFrame:
    """``frame`` in class order (stable), optionally first by column ``first`` in ``first_order`` (e.g. the ``group``
    a/b of a pooled distribution); index reset."""
    if frame.empty:
        return frame.reset_index(drop=True)
    keys = [_rank(frame["class"])]
    if first is not None:
        rank = {g: i for i, g in enumerate(first_order or [])}
        keys.insert(0, frame[first].map(rank).to_numpy(np.int64))
    order = np.lexsort(keys[::-1])
    return frame.iloc[order].reset_index(drop=True)


def concat_parts(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The groups' tables of one kind as one table (empty groups left out, so they cannot change a column's dtype)."""
    kept = [f for f in frames if len(f)]
    if not kept:
        return frames[0].iloc[0:0].reset_index(drop=True)
    return pd.concat(kept, ignore_index=True) if len(kept) > 1 else kept[0].reset_index(drop=True)


def part_dirs(out_dir: str, evaluate_dir: str, groups: int) -> list[str]:
    """The part directories of a stage output ``out_dir`` under ``evaluate_dir`` (``run_dir/evaluate``), one per group:
    ``<evaluate_dir>/_groups/<out_dir below evaluate_dir>/<g>-of-<groups>``."""
    root, target = evaluate_dir.rstrip("/"), out_dir.rstrip("/")
    if not target.startswith(root + "/"):
        raise ValueError(f"{out_dir} is not below {evaluate_dir}")
    below = target[len(root) + 1 :]
    return [f"{root}/_groups/{below}/{part_name(g, groups)}" for g in range(groups)]
