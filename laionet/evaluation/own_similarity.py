"""Image-to-own-synset similarity of two datasets from a zero-shot model's ``own_score``: per-class mean differences,
the distribution of A as it is, A resampled to B's per-class counts and B (Appendix C, ``run_own_similarity``).

File contracts (extra columns are ignored):
- predictions: parquet files with ``key`` and ``own_score`` (float: the model's score of the sample's own class — a
  CLIP image-to-synset-text cosine for zero-shot models; NaN = none), e.g. the glob
  ``inference/<dataset>/<model>/*.predictions.parquet``;
- labels, flags (optional): a variant's samples (``samples.variant_samples``).
Outputs are tidy parquet tables plus a manifest whose counts add up. The comparison runs in one pass, or per class
group and then merged, through ``per_class``'s drivers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from laionet.core.manifest import Manifest
from laionet.core.stage import rebuilds
from laionet.core.tables import read_columns
from laionet.evaluation.groups import by_class, in_group
from laionet.evaluation.per_class import PerClassStatistic, merge_statistic, run_statistic, run_statistic_group
from laionet.evaluation.samples import comparison_paths, variant_samples, verdict_label
from laionet.evaluation.stats import compare_means, ks_statistic, matched_resample, proportions


def _scores(predictions: str, labels: str, flags: str | None) -> tuple[dict[object, np.ndarray], int, dict[str, int]]:
    """Per class, the ``own_score`` of each labelled sample: ({class: float64 (n,)}, rows in, dropped by reason)."""
    kept, _ = variant_samples(labels, flags)
    every = read_columns(labels, ["key"])["key"].drop_duplicates()
    label_frame = kept.drop_duplicates("key")
    pred_frame = read_columns(predictions, ["key", "own_score"]).drop_duplicates("key", keep="last")
    frame = label_frame.merge(pred_frame, on="key", how="left", indicator=True)
    dropped = {"flagged": len(every) - len(label_frame), "no_prediction": 0, "no_score": 0}
    absent = (frame["_merge"] == "left_only").to_numpy()
    score = frame["own_score"].to_numpy(float)
    dropped["no_prediction"] = int(absent.sum())
    dropped["no_score"] = int((~absent & ~np.isfinite(score)).sum())
    frame = frame[np.isfinite(score)]
    values = {
        (cls.item() if hasattr(cls, "item") else cls): group.to_numpy(float)
        for cls, group in frame.groupby("class_index", sort=True)["own_score"]
    }
    return values, len(every), dropped


def _own_tables(
    values_a: dict[object, np.ndarray], values_b: dict[object, np.ndarray], n_boot: int, seed: int, level: float
) -> dict[str, pd.DataFrame]:
    """The per-class tables of the own-synset comparison (``per_class``, ``distribution``) over the classes given
    (seeded per class)."""
    per_class = compare_means(values_a, values_b, n_boot=n_boot, seed=seed, level=level)
    per_class["verdict"] = verdict_label(per_class)
    common = [c for c in values_a if c in values_b]
    matched = matched_resample({c: values_a[c] for c in common}, {c: len(values_b[c]) for c in common}, seed=seed)
    groups = {"a": {c: values_a[c] for c in common}, "a_matched": matched, "b": {c: values_b[c] for c in common}}
    parts = [
        pd.DataFrame(
            {
                "group": name,
                "class": np.repeat(list(by_cls), [len(v) for v in by_cls.values()]),
                "value": np.concatenate(list(by_cls.values())) if by_cls else np.empty(0),
            }
        )
        for name, by_cls in groups.items()
    ]
    return {"per_class": per_class, "distribution": pd.concat(parts, ignore_index=True)}


OWN_GROUPS = ["a", "a_matched", "b"]
_OwnData = tuple[dict[object, np.ndarray], dict[object, np.ndarray]]  # the own scores of A and of B, per class


def _own_finish(
    tables: dict[str, pd.DataFrame], data: _OwnData | None, config: dict[str, Any], counts: dict[str, Any]
) -> tuple[dict[str, pd.DataFrame], dict[str, Any], dict[str, Any]]:
    """The own-similarity stage's tables from its per-class tables (of one pass, or the groups' concatenated), its
    counts and its manifest's ``extra``."""
    per_class = by_class(tables["per_class"])
    distribution = by_class(tables["distribution"], "group", OWN_GROUPS)
    pooled_b = distribution.loc[distribution["group"] == "b", "value"].to_numpy()
    rows = []
    for name in OWN_GROUPS:
        mine = distribution[distribution["group"] == name]
        v = mine["value"].to_numpy()
        q = np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95]) if len(v) else np.full(5, np.nan)
        rows.append(
            {
                "group": name,
                "n": len(v),
                "classes": mine["class"].nunique(),
                "mean": float(v.mean()) if len(v) else np.nan,
                "std": float(v.std()) if len(v) else np.nan,
                "q05": q[0],
                "q25": q[1],
                "median": q[2],
                "q75": q[3],
                "q95": q[4],
                "ks_vs_b": ks_statistic(v, pooled_b),
            }
        )
    extra = {
        "proportions": proportions(per_class),
        **{k: counts[k] for k in ("dropped_a", "dropped_b", "classes_a", "classes_b", "classes_common")},
    }
    return {"per_class": per_class, "distribution": distribution, "summary": pd.DataFrame(rows)}, counts, extra


def _own_inputs(config: dict[str, Any]) -> tuple[_OwnData, dict[str, Any]]:
    (predictions_a, labels_a, flags_a), (predictions_b, labels_b, flags_b) = config["a"], config["b"]
    values_a, rows_a, dropped_a = _scores(predictions_a, labels_a, flags_a)
    values_b, rows_b, dropped_b = _scores(predictions_b, labels_b, flags_b)
    counts = {
        "rows_in": rows_a + rows_b,
        "rows_out": sum(len(v) for v in values_a.values()) + sum(len(v) for v in values_b.values()),
        "dropped": {k: dropped_a[k] + dropped_b[k] for k in dropped_a},
        "dropped_a": dropped_a,
        "dropped_b": dropped_b,
        "classes_a": len(values_a),
        "classes_b": len(values_b),
        "classes_common": len([c for c in values_a if c in values_b]),
    }
    return (values_a, values_b), counts


def _own_select(data: _OwnData, group: int, groups: int) -> _OwnData:
    values_a, values_b = data
    mine_a = {c: v for c, v in values_a.items() if in_group([c], group, groups)[0]}
    mine_b = {c: v for c, v in values_b.items() if in_group([c], group, groups)[0]}
    return mine_a, mine_b


def _own_config(
    predictions_a: str,
    labels_a: str,
    flags_a: str | None,
    predictions_b: str,
    labels_b: str,
    flags_b: str | None,
    n_boot: int,
    seed: int,
    level: float,
) -> dict[str, Any]:
    return {
        "a": [predictions_a, labels_a, flags_a],
        "b": [predictions_b, labels_b, flags_b],
        "n_boot": n_boot,
        "seed": seed,
        "level": level,
    }


_OWN_SIMILARITY = PerClassStatistic[_OwnData](
    stage="own-similarity",
    read=_own_inputs,
    select=_own_select,
    tables=lambda data, c: _own_tables(*data, c["n_boot"], c["seed"], c["level"]),
    rows=lambda data, tables: sum(len(v) for v in data[0].values()) + sum(len(v) for v in data[1].values()),
    finish=_own_finish,
    inputs=comparison_paths,
)


@rebuilds("own-similarity")
def run_own_similarity(
    predictions_a: str,
    labels_a: str,
    predictions_b: str,
    labels_b: str,
    out_dir: str,
    flags_a: str | None = None,
    flags_b: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Manifest:
    """Image-to-own-synset similarity of A against B (Appendix C, Figure 13), from a zero-shot model's ``own_score``.

    Writes, over the classes with values in both datasets:
    ``per_class.parquet`` — per class, mean of A − mean of B with a bootstrap interval (``stats.compare_means``:
    class, mean_a, mean_b, delta, lower, upper, significantly_lower, significantly_higher, n_a, n_b, verdict);
    ``distribution.parquet`` — the values behind Figure 13a, long format ``group``, ``class``, ``value`` with
    ``group`` ∈ {``a``: A as it is, ``a_matched``: A resampled with replacement to B's per-class counts
    (``stats.matched_resample``), ``b``: B}, so ``a_matched`` and ``b`` have the same count in every class;
    ``summary.parquet`` — per group: ``group``, ``n``, ``classes``, ``mean``, ``std``, ``q05``, ``q25``,
    ``median``, ``q75``, ``q95``, and ``ks_vs_b`` (Kolmogorov-Smirnov statistic against ``b``).
    Manifest ``extra``: the share of classes where A is significantly lower / higher. Counts: labelled samples of
    A and B = scored + dropped (``no_prediction``, ``no_score`` (NaN), ``flagged``: in ``flags_a``/``flags_b``)."""
    config = _own_config(predictions_a, labels_a, flags_a, predictions_b, labels_b, flags_b, n_boot, seed, level)
    return run_statistic(_OWN_SIMILARITY, config, out_dir)


@rebuilds("own-similarity-group", target="part_dir")
def run_own_similarity_group(
    predictions_a: str,
    labels_a: str,
    predictions_b: str,
    labels_b: str,
    part_dir: str,
    group: int,
    groups: int,
    flags_a: str | None = None,
    flags_b: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Manifest:
    """One class group of ``run_own_similarity``: its per-class tables in ``part_dir``."""
    config = _own_config(predictions_a, labels_a, flags_a, predictions_b, labels_b, flags_b, n_boot, seed, level)
    return run_statistic_group(_OWN_SIMILARITY, config, part_dir, group, groups)


@rebuilds("own-similarity")
def merge_own_similarity(
    predictions_a: str,
    labels_a: str,
    predictions_b: str,
    labels_b: str,
    out_dir: str,
    part_dirs: Sequence[str],
    flags_a: str | None = None,
    flags_b: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Manifest:
    """``run_own_similarity``'s output from the parts of every class group: the same tables and manifest."""
    config = _own_config(predictions_a, labels_a, flags_a, predictions_b, labels_b, flags_b, n_boot, seed, level)
    return merge_statistic(_OWN_SIMILARITY, config, out_dir, part_dirs)
