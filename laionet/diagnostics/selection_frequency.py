"""Section 4.1 — weakening the image-to-selection link (paper Fig. 8).

The pairwise intra-class comparisons themselves are ``laionet intra-class`` runs (``laionet.evaluation.intra_class``:
bootstrap and paper test on one class set): one per ordered pair (LAIONet vs ImageNetV2-x, ImageNet val vs
ImageNetV2-x). This module collects them against the versions' average MTurk selection frequency (a 0.85, b 0.73,
c 0.93) — Fig. 8b/8c, the proportion of shared classes where each side is significantly lower, with a Wilson
interval on each proportion — and pools the pair similarities of two versions resampled per class (Fig. 8a).

The offline demo has no ImageNetV2; it uses image filters of increasing strictness on the same text-selected clip
art as the stand-in for selection frequency (``x`` = the share of text-selected samples the filter rejects).

Reads ``intra-class`` output directories (``summary.parquet``) and, for the pooled distributions, embeddings and
labels; writes ``<out>/proportions.parquet`` (``a``, ``b``, ``x``, ``method``, ``side`` — ``a_lower`` or
``b_lower`` —, ``share``, ``lower``, ``upper``, ``classes``, ``class_set``) and ``pooled.parquet`` (``dataset``,
``similarity``), then the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel

from laionet.core.manifest import Manifest, Timer, config_hash, join, write_manifest, write_parquet_atomic
from laionet.core.stage import require_complete, stage_run
from laionet.core.tables import read_columns
from laionet.evaluation.samples import read_embeddings, variant_samples
from laionet.evaluation.stats import pair_similarities, pooled_pairs, sample_by_class

STAGE = "selection-frequency"


class Comparison(BaseModel):
    """One ordered pair's intra-class comparison (an ``intra-class`` output directory) and its x value."""

    a: str
    b: str
    x: float
    intra_dir: str


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n; (nan, nan) for n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if k == 0 else max(0.0, float(centre - half))  # exact at the edges (no rounding residue)
    return low, 1.0 if k == n else min(1.0, float(centre + half))


def proportion_rows(comparison: Comparison, summary: pd.DataFrame, level: float = 0.95) -> list[dict[str, object]]:
    """Rows of ``proportions.parquet`` from one intra-class ``summary`` (``method``, ``classes``, ``lower``,
    ``higher`` shares of A significantly lower / higher)."""
    rows = []
    for rec in summary.to_dict("records"):
        n = int(rec["classes"])
        for side, share in (("a_lower", rec["lower"]), ("b_lower", rec["higher"])):
            k = round(float(share) * n) if n else 0
            low, high = wilson_interval(k, n, level)
            rows.append({"a": comparison.a, "b": comparison.b, "x": comparison.x, "method": rec["method"],
                         "side": side, "share": float(share) if n else float("nan"), "lower": low, "upper": high,
                         "classes": n, "class_set": rec.get("class_set", "")})  # fmt: skip
    return rows


def pooled_distributions(
    datasets: dict[str, tuple[np.ndarray, np.ndarray]], per_class: int = 100, cap: int | None = 100, seed: int = 0
) -> pd.DataFrame:
    """Fig. 8a: per dataset (embeddings (N, D), classes (N,)), on the classes all datasets share, min(#pairs,
    ``per_class``) pair similarities per class drawn with replacement, pooled. Columns: dataset, similarity."""
    shared = set.intersection(*(set(np.unique(c).tolist()) for _, c in datasets.values())) if datasets else set()
    frames = []
    for i, (name, (emb, cls)) in enumerate(datasets.items()):
        keep = np.isin(cls, list(shared))
        pairs = {c: pair_similarities(emb[keep][idx]) for c, idx in sample_by_class(cls[keep], cap, seed + i).items()}
        values = pooled_pairs(pairs, per_class, seed + i)
        frames.append(pd.DataFrame({"dataset": name, "similarity": values}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["dataset", "similarity"])


def run_selection_frequency(
    comparisons: Sequence[Comparison | dict[str, object]],
    out_dir: str,
    pooled: dict[str, tuple[str, str]] | None = None,
    x_label: str = "average MTurk selection frequency",
    per_class: int = 100,
    cap: int | None = 100,
    seed: int = 0,
) -> Manifest:
    """Collect the intra-class comparisons against their x value, and pool pair similarities (see module docstring).

    Args:
        comparisons: the ordered pairs, each with its ``intra-class`` directory (complete) and x value.
        pooled: dataset name → (embeddings glob, labels parquet) for Fig. 8a (e.g. V2-b and V2-c); None: skipped.
        x_label: what x is (stated in the manifest and the figure).

    Raises:
        UpstreamError: an intra-class directory that is not complete (naming it).
    """
    timer = Timer()
    items = [c if isinstance(c, Comparison) else Comparison.model_validate(c) for c in comparisons]
    upstream = {c.intra_dir: require_complete(c.intra_dir, "intra-class", hint="re-run `laionet intra-class`")
                for c in items}  # fmt: skip
    settings = {"x_label": x_label, "per_class": per_class, "cap": cap, "seed": seed, "pooled": pooled}
    chash = config_hash({**settings, "comparisons": [c.model_dump() for c in items],
                         "upstream": {k: m.config_hash for k, m in upstream.items()}})  # fmt: skip
    with stage_run(out_dir, chash, STAGE) as done:
        if done:
            return done
        rows: list[dict[str, object]] = []
        for c in items:
            columns = ["method", "classes", "lower", "higher", "class_set"]
            rows.extend(proportion_rows(c, read_columns(join(c.intra_dir, "summary.parquet"), columns)))
        table = pd.DataFrame(rows, columns=["a", "b", "x", "method", "side", "share", "lower", "upper", "classes",
                                            "class_set"])  # fmt: skip
        outputs = [join(out_dir, "proportions.parquet")]
        write_parquet_atomic(pa.Table.from_pandas(table, preserve_index=False), outputs[0])
        if pooled:
            datasets = {}
            for name, (embeddings, labels) in pooled.items():
                emb, keys = read_embeddings(embeddings)
                frame, _ = variant_samples(labels)
                lookup = frame.drop_duplicates("key").set_index("key")["class_index"]
                cls = pd.Series(keys).map(lookup)
                known = cls.notna().to_numpy()
                datasets[name] = (emb[known], cls[known].astype(np.int64).to_numpy())
            outputs.append(join(out_dir, "pooled.parquet"))
            pooled_table = pooled_distributions(datasets, per_class, cap, seed)
            write_parquet_atomic(pa.Table.from_pandas(pooled_table, preserve_index=False), outputs[1])
        manifest = Manifest(
            stage=STAGE,
            config=settings | {"comparisons": [c.model_dump() for c in items]},
            config_hash=chash,
            inputs=[c.intra_dir for c in items],
            outputs=outputs,
            rows_in=len(items),
            rows_out=len(items),
            wall_time_s=timer.elapsed,
            extra={"x_label": x_label},
        )
        write_manifest(out_dir, manifest)
        return manifest
