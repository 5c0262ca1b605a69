"""Evaluation drivers, from files: accuracy of one model's predictions, intra-class similarity of two datasets,
per-class recall differences (Appendix B) and image-to-own-synset similarity (Appendix C).

File contracts (what the inference stage writes and these drivers read; extra columns are ignored):
- predictions: parquet files with ``key`` (string) and ``topk`` (list of int class indices, best first; empty or
  null = no prediction) and, for ``run_own_similarity``, ``own_score`` (float: the model's score of the sample's own
  class — a CLIP image-to-synset-text cosine for zero-shot models; NaN = none), e.g. the glob
  ``inference/<dataset>/<model>/*.predictions.parquet``;
- labels: parquet with ``key`` and ``class_index`` (e.g. the LAIONet index or an ingested reference dataset);
- flags (optional): parquet with ``key`` and ``flagged`` (bool, e.g. the OCR filter); flagged samples are excluded;
- weights (optional): parquet with ``class_index`` and ``share`` (e.g. the selection stage's class_frequency);
- embeddings: ``<stem>.npy`` (float16/32 (N, D), L2-normalised) with ``<stem>.keys.parquet`` (``key``, N rows), e.g.
  the glob ``inference/<dataset>/<model>/*.npy``;
- per-class accuracy: ``per_class.parquet`` of ``run_accuracy`` (``class``, ``n``, ``correct@k``, ``recall@k``).
Outputs are tidy parquet tables plus a manifest whose counts add up. The per-class comparisons (intra-class, recall
difference, own similarity) run in one pass, or per class group and then merged, through ``per_class``'s drivers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from laionet.core.manifest import Manifest, Timer, config_hash, join, write_manifest, write_parquet_atomic
from laionet.core.stage import rebuilds
from laionet.core.tables import expand as _glob
from laionet.core.tables import read_columns
from laionet.core.tables import read_file_columns as _read
from laionet.evaluation.groups import by_class, in_group
from laionet.evaluation.metrics import (
    bootstrap_interval,
    compared_accuracy,
    paper_interval,
    per_class_recall,
    recall_difference,
    weighted_accuracy,
)
from laionet.evaluation.per_class import PerClassStatistic, merge_statistic, run_statistic, run_statistic_group
from laionet.evaluation.stats import (
    compare_bootstrap,
    compare_means,
    compare_paper,
    intra_class,
    ks_statistic,
    matched_pair_counts,
    matched_resample,
    pair_similarities,
    pooled_pairs,
    proportions,
    sample_by_class,
)


@rebuilds("accuracy")
def run_accuracy(
    predictions: str,
    labels: str,
    out_dir: str,
    weights: str | None = None,
    flags: str | None = None,
    ks: Sequence[int] = (1, 5),
    n_boot: int = 1000,
    seed: int = 0,
) -> Manifest:
    """Per-class recall@k and accuracy with paper and bootstrap intervals. Writes ``per_class.parquet`` and
    ``summary.parquet`` (per k and weighting: ``accuracy``, ``paper_lower``/``upper``, ``bootstrap_lower``/``upper``,
    ``bootstrap_method``, ``classes``, ``class_set``); counts labelled samples in = scored + dropped
    (``no_prediction``, ``flagged``).

    Weightings, all over this variant's classes with a scored sample: ``equal`` (mean of per-class recalls);
    with ``weights``: ``laion`` (default: Σ p_y·recall_y / Σ p_y over the scored classes) and ``laion-paper`` (the
    reference: Σ p_y·recall_y with the shares of the full pre-OCR LAIONet, an unscored class counting as 0; see
    ``metrics.weighted_accuracy``)."""
    timer = Timer()
    label_frame, n_flagged = variant_samples(labels, flags)
    pred_frame = read_columns(predictions, ["key", "topk"])
    frame = label_frame.merge(pred_frame, on="key", how="left")
    dropped = {"flagged": n_flagged, "no_prediction": 0}
    width = max(ks)
    topk = np.full((len(frame), width), -1, dtype=np.int64)
    for i, row in enumerate(frame["topk"]):
        if isinstance(row, list | np.ndarray) and len(row):  # NaN after the merge: no prediction row
            values = np.asarray(row, dtype=np.int64)[:width]
            topk[i, : len(values)] = values
    has = (topk >= 0).any(axis=1)
    dropped["no_prediction"] = int((~has).sum())
    table = per_class_recall(frame["class_index"].to_numpy(), topk, ks)
    share = None
    if weights:
        w = read_columns(weights, ["class_index", "share"])
        share = w.set_index("class_index")["share"]
    rows = []
    scored = int((table["n"] > 0).sum())
    weightings: list[tuple[str, pd.Series | None, bool]] = [("equal", None, True)]
    if share is not None:
        weightings += [("laion", share, True), ("laion-paper", share, False)]
    for k in ks:
        recall = table.set_index("class")[f"recall@{k}"]
        for weighting, wts, normalize in weightings:
            acc = weighted_accuracy(recall, wts, normalize)
            _, plo, phi = paper_interval(table, k, wts, normalize)
            _, blo, bhi = bootstrap_interval(table, k, wts, n_boot=n_boot, seed=seed, normalize=normalize)
            rows.append(
                {
                    "k": k,
                    "weighting": weighting,
                    "accuracy": acc,
                    "paper_lower": plo,
                    "paper_upper": phi,
                    "bootstrap_lower": blo,
                    "bootstrap_upper": bhi,
                    "bootstrap_method": "jeffreys",
                    "classes": scored,
                    "class_set": f"the {scored} classes of this variant with a scored sample",
                }
            )
    summary = pd.DataFrame(rows)
    outputs = [join(out_dir, "per_class.parquet"), join(out_dir, "summary.parquet")]
    write_parquet_atomic(pa.Table.from_pandas(table, preserve_index=False), outputs[0])
    write_parquet_atomic(pa.Table.from_pandas(summary, preserve_index=False), outputs[1])
    config = {"predictions": predictions, "labels": labels, "weights": weights, "flags": flags, "ks": list(ks),
              "n_boot": n_boot, "seed": seed}  # fmt: skip
    manifest = Manifest(
        stage="accuracy",
        config=config,
        config_hash=config_hash(config),
        inputs=[predictions, labels, *(x for x in (weights, flags) if x)],
        outputs=outputs,
        rows_in=len(label_frame) + n_flagged,
        rows_out=int(has.sum()),
        dropped=dropped,
        wall_time_s=timer.elapsed,
    )
    write_manifest(out_dir, manifest)
    return manifest


def read_embeddings(pattern: str) -> tuple[np.ndarray, np.ndarray]:
    """Load ``<stem>.npy`` + ``<stem>.keys.parquet`` shards: (float32 (N, D), keys (N,)).

    Raises:
        ValueError: naming both files when an embedding file and its keys disagree in length.
    """
    arrays, keys = [], []
    for path in _glob(pattern):
        keys_path = path.removesuffix(".npy") + ".keys.parquet"
        with fsspec.open(path, "rb") as f:
            emb = np.load(f)
        k = _read(keys_path, ["key"])["key"].to_numpy()
        if emb.ndim != 2 or len(emb) != len(k):
            raise ValueError(f"{path} has {len(emb)} rows but {keys_path} has {len(k)} keys: refusing to pair them")
        arrays.append(emb.astype(np.float32))
        keys.append(k)
    return np.concatenate(arrays), np.concatenate(keys)


def variant_samples(labels: str, flags: str | None = None) -> tuple[pd.DataFrame, int]:
    """The samples of a variant that every metric scores: its labels (``key``, ``class_index``) minus the keys flagged
    in ``flags`` (``key``, ``flagged``; e.g. the OCR filter). Returns (labels kept, number flagged). Accuracy,
    intra-class similarity and own-synset similarity all read a variant through this, so per-class accuracy and
    intra-class similarity joined in one figure (Fig. 7) describe the same images."""
    frame = read_columns(labels, ["key", "class_index"])
    if not flags:
        return frame, 0
    flag_frame = read_columns(flags, ["key", "flagged"])
    flagged = frame["key"].isin(flag_frame.loc[flag_frame["flagged"].astype(bool), "key"]).to_numpy()
    return frame[~flagged], int(flagged.sum())


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


def _paths(config: dict[str, Any]) -> list[str]:
    """The input paths of a comparison whose config lists them per dataset (``a``, ``b``; None: not given)."""
    return [p for p in (*config["a"], *config["b"]) if p]


_INTRA_CLASS = PerClassStatistic[_IntraData](
    stage="intra-class",
    read=_intra_inputs,
    select=_intra_select,
    tables=lambda data, c: _intra_tables(*data, c["cap"], c["n_boot"], c["seed"], c["min_pairs"]),
    rows=lambda data, tables: len(data[1]) + len(data[3]),
    finish=_intra_finish,
    inputs=_paths,
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


def _verdict_label(table: pd.DataFrame) -> pd.Series:
    return pd.Series(
        np.where(table["significantly_lower"], "lower", np.where(table["significantly_higher"], "higher", "neither")),
        index=table.index,
        dtype="object",
    )


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
        table["verdict"] = _verdict_label(table)
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
    per_class["verdict"] = _verdict_label(per_class)
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
    inputs=_paths,
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
