"""Intra-class similarity of two datasets and its per-class comparison (bootstrap over images, and the paper's normal
approximation), from image embeddings (``run_intra_class``).

File contracts (extra columns are ignored):
- embeddings: ``<stem>.npy`` with ``<stem>.keys.parquet`` (``samples.read_embeddings``), e.g. the glob
  ``inference/<dataset>/<model>/*.npy``;
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
from laionet.evaluation.samples import comparison_paths, read_embeddings, variant_samples
from laionet.evaluation.stats import (
    compare_bootstrap,
    compare_paper,
    intra_class,
    matched_pair_counts,
    pair_similarities,
    pooled_pairs,
    proportions,
    sample_by_class,
)


def _labelled(embeddings: str, labels: str, flags: str | None = None) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Embeddings of a variant's samples (``variant_samples``): (float32 (N, D), class (N,), unlabelled, flagged)."""
    emb, keys = read_embeddings(embeddings)
    label_frame, _ = variant_samples(labels, flags)
    flagged = 0
    if flags:  # embeddings of flagged samples: not in the variant's sample set (counted apart from unlabelled ones)
        every = read_columns(labels, ["key"])["key"]
        flagged = int(pd.Series(keys).isin(set(every) - set(label_frame["key"])).sum())
    lookup = label_frame.drop_duplicates("key").set_index("key")["class_index"]
    cls = pd.Series(keys).map(lookup)
    known = cls.notna().to_numpy()
    return emb[known], cls[known].astype(np.int64).to_numpy(), int((~known).sum()) - flagged, flagged


def _intra_tables(
    emb_a: np.ndarray,
    cls_a: np.ndarray,
    emb_b: np.ndarray,
    cls_b: np.ndarray,
    cap: int | None,
    n_boot: int,
    seed: int,
    min_pairs: int,
) -> dict[str, pd.DataFrame]:
    """The per-class tables of the intra-class comparison over the classes of the given samples (every statistic
    seeded per class: a class's rows do not depend on the other classes given). ``pooled_pairs`` keeps its ``class``
    column here; ``_intra_finish`` drops it."""
    min_images = int(np.ceil((1 + np.sqrt(1 + 8 * min_pairs)) / 2))  # n(n−1)/2 ≥ min_pairs
    boot = compare_bootstrap(emb_a, cls_a, emb_b, cls_b, cap=cap, n_boot=n_boot, seed=seed, min_images=min_images)
    pairs_a = {c: pair_similarities(emb_a[i]) for c, i in sample_by_class(cls_a, cap, seed).items()}
    pairs_b = {c: pair_similarities(emb_b[i]) for c, i in sample_by_class(cls_b, cap, seed + 1).items()}
    counts = matched_pair_counts(pairs_a, pairs_b)
    pooled = []
    for i, (g, pairs) in enumerate((("a", pairs_a), ("b", pairs_b))):
        values = [pooled_pairs({c: pairs[c]}, seed=seed + i, counts={c: n}) for c, n in counts.items()]
        pooled.append(
            pd.DataFrame(
                {
                    "group": g,
                    "class": np.repeat(list(counts), [len(v) for v in values]),
                    "value": np.concatenate(values) if values else np.empty(0),
                }
            )
        )
    return {
        "intra_a": intra_class(emb_a, cls_a, cap, seed),
        "intra_b": intra_class(emb_b, cls_b, cap, seed + 1),
        "compare_bootstrap": boot,
        "compare_paper": compare_paper(pairs_a, pairs_b, min_values=min_pairs),
        "pooled_pairs": pd.concat(pooled, ignore_index=True),
    }


_IntraData = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # embeddings and classes of A, then of B


def _intra_finish(
    tables: dict[str, pd.DataFrame], data: _IntraData | None, config: dict[str, Any], counts: dict[str, Any]
) -> tuple[dict[str, pd.DataFrame], dict[str, Any], dict[str, Any]]:
    """The intra-class stage's tables from its per-class tables (of one pass, or the groups' concatenated), its counts
    and its manifest's ``extra``."""
    min_pairs = config["min_pairs"]
    min_images = int(np.ceil((1 + np.sqrt(1 + 8 * min_pairs)) / 2))
    boot, paper = by_class(tables["compare_bootstrap"]), by_class(tables["compare_paper"])
    common = set(boot["class"]) & set(paper["class"])
    out = {
        "intra_a": by_class(tables["intra_a"]),
        "intra_b": by_class(tables["intra_b"]),
        "compare_bootstrap": boot[boot["class"].isin(common)].reset_index(drop=True),
        "compare_paper": paper[paper["class"].isin(common)].reset_index(drop=True),
        "pooled_pairs": by_class(tables["pooled_pairs"], "group", ["a", "b"]).drop(columns="class"),
    }
    class_set = f"classes with ≥ {min_images} images (≥ {min_pairs} pairs) in both"
    out["summary"] = pd.DataFrame(
        [{"method": m, **proportions(out[f"compare_{m}"]), "class_set": class_set} for m in ("bootstrap", "paper")]
    )
    return out, counts, {"proportions": out["summary"].to_dict("records")}


def _intra_inputs(config: dict[str, Any]) -> tuple[_IntraData, dict[str, Any]]:
    (embeddings_a, labels_a, flags_a), (embeddings_b, labels_b, flags_b) = config["a"], config["b"]
    emb_a, cls_a, unlabelled_a, flagged_a = _labelled(embeddings_a, labels_a, flags_a)
    emb_b, cls_b, unlabelled_b, flagged_b = _labelled(embeddings_b, labels_b, flags_b)
    counts: dict[str, Any] = {
        "rows_in": len(emb_a) + len(emb_b) + unlabelled_a + unlabelled_b + flagged_a + flagged_b,
        "rows_out": len(emb_a) + len(emb_b),
        "dropped": {"no_label": unlabelled_a + unlabelled_b, "flagged": flagged_a + flagged_b},
    }
    return (emb_a, cls_a, emb_b, cls_b), counts


def _intra_select(data: _IntraData, group: int, groups: int) -> _IntraData:
    emb_a, cls_a, emb_b, cls_b = data
    ka, kb = in_group(cls_a, group, groups), in_group(cls_b, group, groups)
    return emb_a[ka], cls_a[ka], emb_b[kb], cls_b[kb]


def _intra_config(
    embeddings_a: str,
    labels_a: str,
    flags_a: str | None,
    embeddings_b: str,
    labels_b: str,
    flags_b: str | None,
    cap: int | None,
    n_boot: int,
    seed: int,
    min_pairs: int,
) -> dict[str, Any]:
    return {
        "a": [embeddings_a, labels_a, flags_a],
        "b": [embeddings_b, labels_b, flags_b],
        "cap": cap,
        "n_boot": n_boot,
        "seed": seed,
        "min_pairs": min_pairs,
    }


_INTRA_CLASS = PerClassStatistic[_IntraData](
    stage="intra-class",
    read=_intra_inputs,
    select=_intra_select,
    tables=lambda data, c: _intra_tables(*data, c["cap"], c["n_boot"], c["seed"], c["min_pairs"]),
    rows=lambda data, tables: len(data[1]) + len(data[3]),
    finish=_intra_finish,
    inputs=comparison_paths,
)


@rebuilds("intra-class")
def run_intra_class(
    embeddings_a: str,
    labels_a: str,
    embeddings_b: str,
    labels_b: str,
    out_dir: str,
    cap: int | None = 100,
    n_boot: int = 1000,
    seed: int = 0,
    flags_a: str | None = None,
    flags_b: str | None = None,
    min_pairs: int = 7,
) -> Manifest:
    """Intra-class similarity of datasets A and B and their per-class comparison (bootstrap over images, and the
    paper's normal approximation). Writes ``intra_a``, ``intra_b``, ``compare_bootstrap``, ``compare_paper`` and
    ``summary`` parquet tables; embeddings without a label are counted (``no_label``), those of samples flagged in
    ``flags_a``/``flags_b`` (the variant's OCR flags, as for accuracy: ``variant_samples``) as ``flagged``.

    Both comparisons cover the same classes — those with at least ``min_pairs`` pairs (the paper's ≥ 7 values, so
    ≥ 5 images) in both datasets — so the two proportions share a denominator; ``summary`` names it (``class_set``).
    ``pooled_pairs`` (Figure 6a: ``group`` a/b, ``value``): per class with pairs in both, the same number
    min(#pairs A, #pairs B, 100) of pair similarities drawn with replacement from each dataset, pooled.

    The same tables, split by class group: ``run_intra_class_group`` per group, then ``merge_intra_class``."""
    config = _intra_config(
        embeddings_a, labels_a, flags_a, embeddings_b, labels_b, flags_b, cap, n_boot, seed, min_pairs
    )
    return run_statistic(_INTRA_CLASS, config, out_dir)


@rebuilds("intra-class-group", target="part_dir")
def run_intra_class_group(
    embeddings_a: str,
    labels_a: str,
    embeddings_b: str,
    labels_b: str,
    part_dir: str,
    group: int,
    groups: int,
    cap: int | None = 100,
    n_boot: int = 1000,
    seed: int = 0,
    flags_a: str | None = None,
    flags_b: str | None = None,
    min_pairs: int = 7,
) -> Manifest:
    """One class group of ``run_intra_class`` (``groups.class_group``): its per-class tables in ``part_dir``."""
    config = _intra_config(
        embeddings_a, labels_a, flags_a, embeddings_b, labels_b, flags_b, cap, n_boot, seed, min_pairs
    )
    return run_statistic_group(_INTRA_CLASS, config, part_dir, group, groups)


@rebuilds("intra-class")
def merge_intra_class(
    embeddings_a: str,
    labels_a: str,
    embeddings_b: str,
    labels_b: str,
    out_dir: str,
    part_dirs: Sequence[str],
    cap: int | None = 100,
    n_boot: int = 1000,
    seed: int = 0,
    flags_a: str | None = None,
    flags_b: str | None = None,
    min_pairs: int = 7,
) -> Manifest:
    """``run_intra_class``'s output from the parts of every class group (``run_intra_class_group``): the same tables
    and manifest (same config, same config hash) as one pass."""
    config = _intra_config(
        embeddings_a, labels_a, flags_a, embeddings_b, labels_b, flags_b, cap, n_boot, seed, min_pairs
    )
    return merge_statistic(_INTRA_CLASS, config, out_dir, part_dirs)
