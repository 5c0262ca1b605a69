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
Outputs are tidy parquet tables plus a manifest whose counts add up.
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
from laionet.evaluation.groups import by_class, check_group, concat_parts, in_group
from laionet.evaluation.metrics import (
    bootstrap_interval,
    compared_accuracy,
    paper_interval,
    per_class_recall,
    recall_difference,
    weighted_accuracy,
)
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


def _intra_finish(tables: dict[str, pd.DataFrame], min_pairs: int) -> dict[str, pd.DataFrame]:
    """The intra-class stage's tables from its per-class tables (of one pass, or the groups' concatenated)."""
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
    return out


def _write_tables(out_dir: str, tables: dict[str, pd.DataFrame]) -> list[str]:
    outputs = []
    for name, table in tables.items():
        path = join(out_dir, f"{name}.parquet")
        write_parquet_atomic(pa.Table.from_pandas(table, preserve_index=False), path)
        outputs.append(path)
    return outputs


def _read_parts(part_dirs: Sequence[str], stage: str) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """The groups' per-class tables, concatenated per kind, and the first part's ``extra["counts"]`` (every group
    counts the whole stage's inputs alike). Each part must be complete and one group of the same split."""
    from laionet.core.stage import require_complete

    if not part_dirs:
        raise ValueError(f"{stage}: no class-group parts to merge")
    frames: dict[str, list[pd.DataFrame]] = {}
    counts: dict[str, Any] = {}
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


def _part_manifest(
    stage: str,
    config: dict[str, Any],
    outputs: list[str],
    inputs: list[str],
    rows: int,
    counts: dict[str, Any],
    timer: Timer,
) -> Manifest:
    return Manifest(
        stage=f"{stage}-group",
        config=config,
        config_hash=config_hash(config),
        inputs=inputs,
        outputs=outputs,
        rows_in=rows,
        rows_out=rows,
        dropped={},
        wall_time_s=timer.elapsed,
        extra={"counts": counts},
    )


def _intra_inputs(
    embeddings_a: str, labels_a: str, embeddings_b: str, labels_b: str, flags_a: str | None, flags_b: str | None
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], dict[str, Any]]:
    emb_a, cls_a, unlabelled_a, flagged_a = _labelled(embeddings_a, labels_a, flags_a)
    emb_b, cls_b, unlabelled_b, flagged_b = _labelled(embeddings_b, labels_b, flags_b)
    counts: dict[str, Any] = {
        "rows_in": len(emb_a) + len(emb_b) + unlabelled_a + unlabelled_b + flagged_a + flagged_b,
        "rows_out": len(emb_a) + len(emb_b),
        "dropped": {"no_label": unlabelled_a + unlabelled_b, "flagged": flagged_a + flagged_b},
    }
    return (emb_a, cls_a, emb_b, cls_b), counts


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


def _intra_manifest(
    out_dir: str, tables: dict[str, pd.DataFrame], config: dict[str, Any], counts: dict[str, Any], timer: Timer
) -> Manifest:
    outputs = _write_tables(out_dir, tables)
    a, b = config["a"], config["b"]
    manifest = Manifest(
        stage="intra-class",
        config=config,
        config_hash=config_hash(config),
        inputs=[p for p in (*a, *b) if p],
        outputs=outputs,
        rows_in=int(counts["rows_in"]),
        rows_out=int(counts["rows_out"]),
        dropped=dict(counts["dropped"]),
        wall_time_s=timer.elapsed,
        extra={"proportions": tables["summary"].to_dict("records")},
    )
    write_manifest(out_dir, manifest)
    return manifest


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
    timer = Timer()
    (emb_a, cls_a, emb_b, cls_b), counts = _intra_inputs(
        embeddings_a, labels_a, embeddings_b, labels_b, flags_a, flags_b
    )
    tables = _intra_finish(_intra_tables(emb_a, cls_a, emb_b, cls_b, cap, n_boot, seed, min_pairs), min_pairs)
    config = _intra_config(
        embeddings_a, labels_a, flags_a, embeddings_b, labels_b, flags_b, cap, n_boot, seed, min_pairs
    )
    return _intra_manifest(out_dir, tables, config, counts, timer)


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
    check_group(group, groups)
    timer = Timer()
    (emb_a, cls_a, emb_b, cls_b), counts = _intra_inputs(
        embeddings_a, labels_a, embeddings_b, labels_b, flags_a, flags_b
    )
    ka, kb = in_group(cls_a, group, groups), in_group(cls_b, group, groups)
    tables = _intra_tables(emb_a[ka], cls_a[ka], emb_b[kb], cls_b[kb], cap, n_boot, seed, min_pairs)
    config = {
        **_intra_config(embeddings_a, labels_a, flags_a, embeddings_b, labels_b, flags_b, cap, n_boot, seed, min_pairs),
        "group": group,
        "groups": groups,
    }
    manifest = _part_manifest(
        "intra-class",
        config,
        _write_tables(part_dir, tables),
        [p for p in (embeddings_a, labels_a, flags_a, embeddings_b, labels_b, flags_b) if p],
        int(ka.sum() + kb.sum()),
        counts,
        timer,
    )
    write_manifest(part_dir, manifest)
    return manifest


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
    timer = Timer()
    parts, counts = _read_parts(part_dirs, "intra-class")
    tables = _intra_finish(parts, min_pairs)
    config = _intra_config(
        embeddings_a, labels_a, flags_a, embeddings_b, labels_b, flags_b, cap, n_boot, seed, min_pairs
    )
    return _intra_manifest(out_dir, tables, config, counts, timer)


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
    ks: list[int],
    method: str,
    n_boot: int,
    seed: int,
    level: float,
    weights: str | None,
) -> dict[str, object]:
    return {
        "a": per_class_a,
        "b": per_class_b,
        "ks": ks,
        "method": method,
        "n_boot": n_boot,
        "seed": seed,
        "level": level,
        "weights": weights,
    }


def _recall_finish(
    out_dir: str,
    tables: dict[str, pd.DataFrame],
    a: pd.DataFrame,
    b: pd.DataFrame,
    config: dict[str, Any],
    timer: Timer,
) -> Manifest:
    """Writes the recall-difference stage's outputs from its per-class tables (of one pass or the class groups'):
    the tables per k, the summary, the pair's accuracy, the manifest."""
    chosen, method, weights = config["ks"], config["method"], config["weights"]
    n_boot, seed, level = config["n_boot"], config["seed"], config["level"]
    classes_a, classes_b = set(a["class"]), set(b["class"])
    scored = set(a.loc[a["n"] > 0, "class"]) & set(b.loc[b["n"] > 0, "class"])
    dropped = {
        "only_in_a": len(classes_a - classes_b),
        "only_in_b": len(classes_b - classes_a),
        "no_scored_samples": len((classes_a & classes_b) - scored),
    }
    outputs, rows = [], []
    for k in chosen:
        table = by_class(tables[f"recall_at_{k}"])
        path = join(out_dir, f"recall_at_{k}.parquet")
        write_parquet_atomic(pa.Table.from_pandas(table, preserve_index=False), path)
        outputs.append(path)
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
    summary = pd.DataFrame(rows)
    outputs.append(join(out_dir, "summary.parquet"))
    write_parquet_atomic(pa.Table.from_pandas(summary, preserve_index=False), outputs[-1])
    share = read_columns(weights, ["class_index", "share"]).set_index("class_index")["share"] if weights else None
    accuracy = _pair_accuracy(a, b, chosen, share, n_boot, seed, level)
    outputs.append(join(out_dir, "accuracy.parquet"))
    write_parquet_atomic(pa.Table.from_pandas(accuracy, preserve_index=False), outputs[-1])
    manifest = Manifest(
        stage="recall-difference",
        config=config,
        config_hash=config_hash(config),
        inputs=[config["a"], config["b"], *([weights] if weights else [])],
        outputs=outputs,
        rows_in=len(classes_a | classes_b),
        rows_out=len(scored),
        dropped=dropped,
        wall_time_s=timer.elapsed,
        extra={"proportions": summary.to_dict("records")},
    )
    write_manifest(out_dir, manifest)
    return manifest


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
    timer = Timer()
    a, b, chosen = _recall_inputs(per_class_a, per_class_b, ks, method)
    tables = _recall_tables(a, b, chosen, method, n_boot, seed, level)
    config = _recall_config(per_class_a, per_class_b, chosen, method, n_boot, seed, level, weights)
    return _recall_finish(out_dir, tables, a, b, config, timer)


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
    check_group(group, groups)
    timer = Timer()
    a, b, chosen = _recall_inputs(per_class_a, per_class_b, ks, method)
    a, b = a[in_group(a["class"], group, groups)], b[in_group(b["class"], group, groups)]
    tables = _recall_tables(a, b, chosen, method, n_boot, seed, level)
    config = {
        **_recall_config(per_class_a, per_class_b, chosen, method, n_boot, seed, level, weights),
        "group": group,
        "groups": groups,
    }
    rows = sum(len(t) for t in tables.values())
    inputs = [per_class_a, per_class_b, *([weights] if weights else [])]
    manifest = _part_manifest("recall-difference", config, _write_tables(part_dir, tables), inputs, rows, {}, timer)
    write_manifest(part_dir, manifest)
    return manifest


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
    timer = Timer()
    a, b, chosen = _recall_inputs(per_class_a, per_class_b, ks, method)
    tables, _ = _read_parts(part_dirs, "recall-difference")
    config = _recall_config(per_class_a, per_class_b, chosen, method, n_boot, seed, level, weights)
    return _recall_finish(out_dir, tables, a, b, config, timer)


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


def _own_finish(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The own-similarity stage's tables from its per-class tables (of one pass, or the groups' concatenated)."""
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
    return {"per_class": per_class, "distribution": distribution, "summary": pd.DataFrame(rows)}


def _own_inputs(
    predictions_a: str, labels_a: str, predictions_b: str, labels_b: str, flags_a: str | None, flags_b: str | None
) -> tuple[dict[object, np.ndarray], dict[object, np.ndarray], dict[str, Any]]:
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
    return values_a, values_b, counts


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


def _own_manifest(
    out_dir: str, tables: dict[str, pd.DataFrame], config: dict[str, Any], counts: dict[str, Any], timer: Timer
) -> Manifest:
    outputs = _write_tables(out_dir, tables)
    manifest = Manifest(
        stage="own-similarity",
        config=config,
        config_hash=config_hash(config),
        inputs=[p for p in (*config["a"], *config["b"]) if p],
        outputs=outputs,
        rows_in=counts["rows_in"],
        rows_out=counts["rows_out"],
        dropped=counts["dropped"],
        wall_time_s=timer.elapsed,
        extra={
            "proportions": proportions(tables["per_class"]),
            **{k: counts[k] for k in ("dropped_a", "dropped_b", "classes_a", "classes_b", "classes_common")},
        },
    )
    write_manifest(out_dir, manifest)
    return manifest


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
    timer = Timer()
    values_a, values_b, counts = _own_inputs(predictions_a, labels_a, predictions_b, labels_b, flags_a, flags_b)
    tables = _own_finish(_own_tables(values_a, values_b, n_boot, seed, level))
    config = _own_config(predictions_a, labels_a, flags_a, predictions_b, labels_b, flags_b, n_boot, seed, level)
    return _own_manifest(out_dir, tables, config, counts, timer)


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
    check_group(group, groups)
    timer = Timer()
    values_a, values_b, counts = _own_inputs(predictions_a, labels_a, predictions_b, labels_b, flags_a, flags_b)
    mine_a = {c: v for c, v in values_a.items() if in_group([c], group, groups)[0]}
    mine_b = {c: v for c, v in values_b.items() if in_group([c], group, groups)[0]}
    tables = _own_tables(mine_a, mine_b, n_boot, seed, level)
    config = {
        **_own_config(predictions_a, labels_a, flags_a, predictions_b, labels_b, flags_b, n_boot, seed, level),
        "group": group,
        "groups": groups,
    }
    rows = sum(len(v) for v in mine_a.values()) + sum(len(v) for v in mine_b.values())
    inputs = [p for p in (predictions_a, labels_a, flags_a, predictions_b, labels_b, flags_b) if p]
    manifest = _part_manifest("own-similarity", config, _write_tables(part_dir, tables), inputs, rows, counts, timer)
    write_manifest(part_dir, manifest)
    return manifest


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
    timer = Timer()
    parts, counts = _read_parts(part_dirs, "own-similarity")
    tables = _own_finish(parts)
    config = _own_config(predictions_a, labels_a, flags_a, predictions_b, labels_b, flags_b, n_boot, seed, level)
    return _own_manifest(out_dir, tables, config, counts, timer)
