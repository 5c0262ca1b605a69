"""Accuracy of one model's predictions on a variant: per-class recall@k and equally or LAION-weighted accuracy, with
the paper's and bootstrap intervals (``run_accuracy``).

File contracts (what the inference stage writes and this driver reads; extra columns are ignored):
- predictions: parquet files with ``key`` (string) and ``topk`` (list of int class indices, best first; empty or
  null = no prediction), e.g. the glob ``inference/<dataset>/<model>/*.predictions.parquet``;
- labels, flags (optional): a variant's samples (``samples.variant_samples``);
- weights (optional): parquet with ``class_index`` and ``share`` (e.g. the selection stage's class_frequency).
Outputs are tidy parquet tables plus a manifest whose counts add up.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from laionet.core.manifest import Manifest, Timer, config_hash, join, write_manifest, write_parquet_atomic
from laionet.core.stage import rebuilds
from laionet.core.tables import read_columns
from laionet.evaluation.metrics import bootstrap_interval, paper_interval, per_class_recall, weighted_accuracy
from laionet.evaluation.samples import variant_samples


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
