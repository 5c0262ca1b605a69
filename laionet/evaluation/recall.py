"""Per-class recall differences of two datasets for one model, with confidence bounds, and the pair's accuracy over
one class set (Appendix B, ``run_recall_difference``).

File contracts (extra columns are ignored):
- per-class accuracy: ``per_class.parquet`` of ``accuracy.run_accuracy`` (``class``, ``n``, ``correct@k``,
  ``recall@k``);
- weights (optional): parquet with ``class_index`` and ``share`` (e.g. the selection stage's class_frequency).
Outputs are tidy parquet tables plus a manifest whose counts add up. The comparison runs in one pass, or per class
group and then merged, through ``per_class``'s drivers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from laionet.core.manifest import Manifest
from laionet.core.stage import rebuilds
from laionet.core.tables import expand as _glob
from laionet.core.tables import read_columns
from laionet.evaluation.groups import by_class, in_group
from laionet.evaluation.metrics import compared_accuracy, recall_difference, weighted_accuracy
from laionet.evaluation.per_class import PerClassStatistic, merge_statistic, run_statistic, run_statistic_group
from laionet.evaluation.samples import verdict_label
from laionet.evaluation.stats import proportions

Method = Literal["bootstrap", "newcombe"]


def _recall_inputs(
    per_class_a: str, per_class_b: str, ks: Sequence[int] | None, method: str
) -> tuple[pd.DataFrame, pd.DataFrame, list[int]]:
    """The two per-class accuracy tables and the ks compared (checked: each k's columns exist in both)."""
    frames = []
    for path in (per_class_a, per_class_b):
        frame = read_columns(
            path, ["class", "n"] + [c for c in _columns(path) if c.startswith(("recall@", "correct@"))]
        )
        frames.append(frame)
    a, b = frames
    available = sorted(_recall_ks(a) & _recall_ks(b))
    chosen = list(ks) if ks is not None else available
    for k in chosen:
        for path, frame in ((per_class_a, a), (per_class_b, b)):
            needed = [f"recall@{k}", *([f"correct@{k}"] if method == "newcombe" else [])]
            missing = [c for c in needed if c not in frame]
            if missing:
                raise ValueError(f"{path}: missing columns {missing} (has {list(frame.columns)})")
    if not chosen:
        raise ValueError(f"{per_class_a} and {per_class_b} share no recall@k column")
    return a, b, chosen


def _recall_tables(
    a: pd.DataFrame, b: pd.DataFrame, ks: Sequence[int], method: Method, n_boot: int, seed: int, level: float
) -> dict[str, pd.DataFrame]:
    """Per k, the per-class recall differences of the classes in ``a`` and ``b`` (seeded per class)."""
    tables = {}
    for k in ks:
        table = recall_difference(a, b, k, n_boot=n_boot, seed=seed, level=level, method=method)
        table.insert(1, "k", k)
        table["verdict"] = verdict_label(table)
        tables[f"recall_at_{k}"] = table
    return tables


def _recall_config(
    per_class_a: str,
    per_class_b: str,
    ks: Sequence[int] | None,
    method: str,
    n_boot: int,
    seed: int,
    level: float,
    weights: str | None,
) -> dict[str, Any]:
    """The recall-difference config as asked (``ks`` None: every k of both tables, settled by ``_RECALL_DIFFERENCE``
    once the tables are read)."""
    return {
        "a": per_class_a,
        "b": per_class_b,
        "ks": list(ks) if ks is not None else None,
        "method": method,
        "n_boot": n_boot,
        "seed": seed,
        "level": level,
        "weights": weights,
    }


_RecallData = tuple[pd.DataFrame, pd.DataFrame, list[int]]  # the per-class accuracy tables of A and B, the ks compared


def _recall_finish(
    tables: dict[str, pd.DataFrame], data: _RecallData | None, config: dict[str, Any], counts: dict[str, Any]
) -> tuple[dict[str, pd.DataFrame], dict[str, Any], dict[str, Any]]:
    """The recall-difference stage's tables from its per-class tables (of one pass or the class groups'): the tables
    per k, the summary, the pair's accuracy; its counts (classes) and its manifest's ``extra``."""
    if data is None:
        raise ValueError("recall-difference: the per-class accuracy tables are needed to finish")
    a, b, _ = data
    chosen, method, weights = config["ks"], config["method"], config["weights"]
    n_boot, seed, level = config["n_boot"], config["seed"], config["level"]
    classes_a, classes_b = set(a["class"]), set(b["class"])
    scored = set(a.loc[a["n"] > 0, "class"]) & set(b.loc[b["n"] > 0, "class"])
    dropped = {
        "only_in_a": len(classes_a - classes_b),
        "only_in_b": len(classes_b - classes_a),
        "no_scored_samples": len((classes_a & classes_b) - scored),
    }
    out, rows = {}, []
    for k in chosen:
        table = out[f"recall_at_{k}"] = by_class(tables[f"recall_at_{k}"])
        shares = proportions(table)
        rows.append(
            {
                "k": k,
                "method": method,
                "classes": len(table),
                "lower": shares["lower"],
                "higher": shares["higher"],
                "n_lower": int(table["significantly_lower"].sum()),
                "n_higher": int(table["significantly_higher"].sum()),
                "mean_delta": float(table["delta"].mean()) if len(table) else float("nan"),
            }
        )
    out["summary"] = pd.DataFrame(rows)
    share = read_columns(weights, ["class_index", "share"]).set_index("class_index")["share"] if weights else None
    out["accuracy"] = _pair_accuracy(a, b, chosen, share, n_boot, seed, level)
    totals = {"rows_in": len(classes_a | classes_b), "rows_out": len(scored), "dropped": dropped}
    return out, totals, {"proportions": out["summary"].to_dict("records")}


_RECALL_DIFFERENCE = PerClassStatistic[_RecallData](
    stage="recall-difference",
    read=lambda c: (_recall_inputs(c["a"], c["b"], c["ks"], c["method"]), {}),
    select=lambda data, group, groups: (
        data[0][in_group(data[0]["class"], group, groups)],
        data[1][in_group(data[1]["class"], group, groups)],
        data[2],
    ),
    tables=lambda data, c: _recall_tables(data[0], data[1], c["ks"], c["method"], c["n_boot"], c["seed"], c["level"]),
    rows=lambda data, tables: sum(len(t) for t in tables.values()),
    finish=_recall_finish,
    inputs=lambda c: [c["a"], c["b"], *([c["weights"]] if c["weights"] else [])],
    settle=lambda c, data: {**c, "ks": data[2]},
    merge_reads=True,
)


@rebuilds("recall-difference")
def run_recall_difference(
    per_class_a: str,
    per_class_b: str,
    out_dir: str,
    ks: Sequence[int] | None = None,
    method: Literal["bootstrap", "newcombe"] = "newcombe",
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    weights: str | None = None,
) -> Manifest:
    """Per-class recall@k of A minus B with confidence bounds, per k (Appendix B, Figure 12), from two
    ``run_accuracy`` per-class tables of one model (A: e.g. LAIONet, B: e.g. ImageNet val), and the accuracy of the
    pair over one class set.

    ``accuracy.parquet`` (per k and weighting — ``equal`` and, with ``weights`` (``class_index``, ``share``), ``laion``
    and ``laion-paper``, see ``run_accuracy``): ``class_set`` = ``both`` — A and B over the classes scored in both,
    A − B with a bootstrap interval (``metrics.compared_accuracy``): the like-for-like comparison (LAIONet vs
    ImageNet drop, zero-shot comparisons); and ``all`` — each over all its own scored classes (``classes_a`` and
    ``classes_b`` differ; no interval for the difference, which mixes class sets). Columns: ``k``, ``weighting``,
    ``class_set``, ``classes_a``, ``classes_b``, ``accuracy_a``, ``accuracy_b``, ``difference``, ``lower``,
    ``upper``, ``interval`` (the method of the difference's interval).

    Writes ``recall_at_<k>.parquet`` per k (``metrics.recall_difference`` columns plus ``k`` and ``verdict``:
    ``lower`` / ``higher`` / ``neither`` = A significantly lower / higher than B / neither) and ``summary.parquet``
    (per k: ``k``, ``method``, ``classes``, ``lower``, ``higher`` = shares of classes, ``n_lower``, ``n_higher``,
    ``mean_delta``). ``ks`` defaults to every k with a ``recall@k`` column in both tables. Counts: classes in either
    table = compared + dropped (``only_in_a``, ``only_in_b``, ``no_scored_samples``: in both, but without a scored
    sample in one)."""
    config = _recall_config(per_class_a, per_class_b, ks, method, n_boot, seed, level, weights)
    return run_statistic(_RECALL_DIFFERENCE, config, out_dir)


@rebuilds("recall-difference-group", target="part_dir")
def run_recall_difference_group(
    per_class_a: str,
    per_class_b: str,
    part_dir: str,
    group: int,
    groups: int,
    ks: Sequence[int] | None = None,
    method: Literal["bootstrap", "newcombe"] = "newcombe",
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    weights: str | None = None,
) -> Manifest:
    """One class group of ``run_recall_difference``: its per-class tables (``recall_at_<k>``) in ``part_dir``."""
    config = _recall_config(per_class_a, per_class_b, ks, method, n_boot, seed, level, weights)
    return run_statistic_group(_RECALL_DIFFERENCE, config, part_dir, group, groups)


@rebuilds("recall-difference")
def merge_recall_difference(
    per_class_a: str,
    per_class_b: str,
    out_dir: str,
    part_dirs: Sequence[str],
    ks: Sequence[int] | None = None,
    method: Literal["bootstrap", "newcombe"] = "newcombe",
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    weights: str | None = None,
) -> Manifest:
    """``run_recall_difference``'s output from the parts of every class group: the same tables and manifest."""
    config = _recall_config(per_class_a, per_class_b, ks, method, n_boot, seed, level, weights)
    return merge_statistic(_RECALL_DIFFERENCE, config, out_dir, part_dirs)


def _pair_accuracy(
    a: pd.DataFrame, b: pd.DataFrame, ks: Sequence[int], share: pd.Series | None, n_boot: int, seed: int, level: float
) -> pd.DataFrame:
    """The ``accuracy.parquet`` table of ``run_recall_difference``."""
    weightings: list[tuple[str, pd.Series | None, bool]] = [("equal", None, True)]
    if share is not None:
        weightings += [("laion", share, True), ("laion-paper", share, False)]
    rows = []
    for k in ks:
        for weighting, w, normalize in weightings:
            both = compared_accuracy(a, b, k, w, normalize, n_boot=n_boot, seed=seed, level=level)
            rows.append(
                {
                    "k": k,
                    "weighting": weighting,
                    "class_set": "both",
                    "classes_a": both["classes"],
                    "classes_b": both["classes"],
                    "accuracy_a": both["accuracy_a"],
                    "accuracy_b": both["accuracy_b"],
                    "difference": both["difference"],
                    "lower": both["lower"],
                    "upper": both["upper"],
                    "interval": "jeffreys bootstrap",
                }
            )
            own = [weighted_accuracy(t[t["n"] > 0].set_index("class")[f"recall@{k}"], w, normalize) for t in (a, b)]
            rows.append(
                {
                    "k": k,
                    "weighting": weighting,
                    "class_set": "all",
                    "classes_a": int((a["n"] > 0).sum()),
                    "classes_b": int((b["n"] > 0).sum()),
                    "accuracy_a": own[0],
                    "accuracy_b": own[1],
                    "difference": own[0] - own[1],
                    "lower": np.nan,
                    "upper": np.nan,
                    "interval": "none (different class sets)",
                }
            )
    return pd.DataFrame(rows)


def _recall_ks(table: pd.DataFrame) -> set[int]:
    """The k of every ``recall@k`` column."""
    return {int(str(c).split("@")[1]) for c in table.columns if str(c).startswith("recall@")}


def _columns(pattern: str) -> list[str]:
    """The column names of the first parquet file matching ``pattern``."""
    with fsspec.open(_glob(pattern)[0], "rb") as f:
        return list(pq.read_schema(f).names)
