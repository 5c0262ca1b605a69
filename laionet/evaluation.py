"""Evaluation drivers: accuracy of one model's predictions and intra-class similarity of two datasets, from files.

File contracts (what the inference stage writes and these drivers read):
- predictions: parquet files with ``key`` (string) and ``topk`` (list of int class indices, best first; empty or
  null = no prediction);
- labels: parquet with ``key`` and ``class_index`` (e.g. the LAIONet index or an ingested reference dataset);
- flags (optional): parquet with ``key`` and ``flagged`` (bool, e.g. the OCR filter); flagged samples are excluded;
- weights (optional): parquet with ``class_index`` and ``share`` (e.g. the selection stage's class_frequency);
- embeddings: ``<stem>.npy`` (float16/32 (N, D), L2-normalised) with ``<stem>.keys.parquet`` (``key``, N rows).
Outputs are tidy parquet tables plus a manifest whose counts add up.
"""

from __future__ import annotations

from collections.abc import Sequence

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from laionet.manifest import Manifest, Timer, config_hash, join, write_manifest, write_parquet_atomic
from laionet.metrics import bootstrap_interval, paper_interval, per_class_recall, weighted_accuracy
from laionet.stats import compare_bootstrap, compare_paper, intra_class, pair_similarities, proportions, sample_by_class


def _glob(pattern: str) -> list[str]:
    fs, path = url_to_fs(pattern)
    paths = sorted(fs.glob(path)) if any(c in path for c in "*?[") else ([path] if fs.exists(path) else [])
    if not paths:
        raise FileNotFoundError(f"nothing matches {pattern!r}")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return paths if protocol in ("file", "local") else [f"{protocol}://{p}" for p in paths]


def _read(path: str, columns: list[str]) -> pd.DataFrame:
    with fsspec.open(path, "rb") as f:
        table = pq.read_table(f)
    missing = set(columns) - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)} (has {table.column_names})")
    return table.select(columns).to_pandas()


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
    """Per-class recall@k and accuracy (equally and, with ``weights``, LAION-weighted) with paper and bootstrap
    intervals. Writes ``per_class.parquet``, ``summary.parquet``; counts labelled samples in = scored + dropped
    (``no_prediction``, ``flagged``)."""
    timer = Timer()
    label_frame = pd.concat([_read(p, ["key", "class_index"]) for p in _glob(labels)], ignore_index=True)
    pred_frame = pd.concat([_read(p, ["key", "topk"]) for p in _glob(predictions)], ignore_index=True)
    frame = label_frame.merge(pred_frame, on="key", how="left")
    dropped = {"flagged": 0, "no_prediction": 0}
    if flags:
        flag_frame = pd.concat([_read(p, ["key", "flagged"]) for p in _glob(flags)], ignore_index=True)
        flagged = frame["key"].isin(flag_frame.loc[flag_frame["flagged"].astype(bool), "key"])
        dropped["flagged"] = int(flagged.sum())
        frame = frame[~flagged]
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
        w = pd.concat([_read(p, ["class_index", "share"]) for p in _glob(weights)], ignore_index=True)
        share = w.set_index("class_index")["share"]
    rows = []
    for k in ks:
        recall = table.set_index("class")[f"recall@{k}"]
        for weighting, wts in [("equal", None), *([("laion", share)] if share is not None else [])]:
            acc = weighted_accuracy(recall, wts)
            _, plo, phi = paper_interval(table, k, wts)
            _, blo, bhi = bootstrap_interval(table, k, wts, n_boot=n_boot, seed=seed)
            rows.append(
                {
                    "k": k,
                    "weighting": weighting,
                    "accuracy": acc,
                    "paper_lower": plo,
                    "paper_upper": phi,
                    "bootstrap_lower": blo,
                    "bootstrap_upper": bhi,
                    "classes": int((table["n"] > 0).sum()),
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
        rows_in=len(label_frame),
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


def _labelled(embeddings: str, labels: str) -> tuple[np.ndarray, np.ndarray, int]:
    emb, keys = read_embeddings(embeddings)
    label_frame = pd.concat([_read(p, ["key", "class_index"]) for p in _glob(labels)], ignore_index=True)
    lookup = label_frame.drop_duplicates("key").set_index("key")["class_index"]
    cls = pd.Series(keys).map(lookup)
    known = cls.notna().to_numpy()
    return emb[known], cls[known].astype(np.int64).to_numpy(), int((~known).sum())


def run_intra_class(
    embeddings_a: str,
    labels_a: str,
    embeddings_b: str,
    labels_b: str,
    out_dir: str,
    cap: int | None = 100,
    n_boot: int = 1000,
    seed: int = 0,
) -> Manifest:
    """Intra-class similarity of datasets A and B and their per-class comparison (bootstrap over images, and the
    paper's normal approximation). Writes ``intra_a``, ``intra_b``, ``compare_bootstrap``, ``compare_paper`` and
    ``summary`` parquet tables; embeddings without a label are counted (``no_label``)."""
    timer = Timer()
    emb_a, cls_a, unlabelled_a = _labelled(embeddings_a, labels_a)
    emb_b, cls_b, unlabelled_b = _labelled(embeddings_b, labels_b)
    tables = {
        "intra_a": intra_class(emb_a, cls_a, cap, seed),
        "intra_b": intra_class(emb_b, cls_b, cap, seed + 1),
        "compare_bootstrap": compare_bootstrap(emb_a, cls_a, emb_b, cls_b, cap=cap, n_boot=n_boot, seed=seed),
    }
    pairs_a = {c: pair_similarities(emb_a[i]) for c, i in sample_by_class(cls_a, cap, seed).items()}
    pairs_b = {c: pair_similarities(emb_b[i]) for c, i in sample_by_class(cls_b, cap, seed + 1).items()}
    tables["compare_paper"] = compare_paper(pairs_a, pairs_b)
    summary = pd.DataFrame([{"method": m, **proportions(tables[f"compare_{m}"])} for m in ("bootstrap", "paper")])
    tables["summary"] = summary
    outputs = []
    for name, table in tables.items():
        path = join(out_dir, f"{name}.parquet")
        write_parquet_atomic(pa.Table.from_pandas(table, preserve_index=False), path)
        outputs.append(path)
    config = {"a": [embeddings_a, labels_a], "b": [embeddings_b, labels_b], "cap": cap, "n_boot": n_boot, "seed": seed}
    manifest = Manifest(
        stage="intra-class",
        config=config,
        config_hash=config_hash(config),
        inputs=[embeddings_a, labels_a, embeddings_b, labels_b],
        outputs=outputs,
        rows_in=len(emb_a) + len(emb_b) + unlabelled_a + unlabelled_b,
        rows_out=len(emb_a) + len(emb_b),
        dropped={"no_label": unlabelled_a + unlabelled_b},
        wall_time_s=timer.elapsed,
        extra={"proportions": summary.to_dict("records")},
    )
    write_manifest(out_dir, manifest)
    return manifest
