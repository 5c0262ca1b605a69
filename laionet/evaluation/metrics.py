"""Accuracy metrics: per-class recall@k, equally- and LAION-weighted accuracy, and their uncertainty.

Pure: arrays in (true class per sample, top-k predicted classes per sample), tidy tables out. Samples without a
prediction (a row of ``-1``) are excluded and counted, never scored as wrong (the reference scored CLIP's NaN
similarities as wrong). Uncertainty: the reference's Wilson-per-class combination (``paper``) and a
class-stratified bootstrap (default), which, for per-class binary outcomes, is exactly a binomial resample per class.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist
from typing import Literal

import numpy as np
import pandas as pd

Z95 = 1.959963984540054


def per_class_recall(labels: np.ndarray, topk: np.ndarray, ks: Sequence[int] = (1, 5)) -> pd.DataFrame:
    """Per-class counts and recall@k.

    Args:
        labels: int (N,) true class per sample.
        topk: int (N, K) predicted classes, best first; a row of -1 means "no prediction".
        ks: the k of recall@k (each ≤ K).

    Returns:
        One row per class present: ``class``, ``n`` (samples with a prediction), ``missing`` (without),
        ``correct@k`` and ``recall@k`` for each k.
    """
    labels = np.asarray(labels)
    topk = np.asarray(topk)
    if topk.ndim != 2 or len(topk) != len(labels):
        raise ValueError(f"topk must be (N, K) with N={len(labels)}, got {topk.shape}")
    if max(ks) > topk.shape[1]:
        raise ValueError(f"recall@{max(ks)} needs at least {max(ks)} predictions per sample, got {topk.shape[1]}")
    has = ~(topk < 0).all(axis=1)
    classes, inverse = np.unique(labels, return_inverse=True)
    table = pd.DataFrame({"class": classes})
    table["n"] = np.bincount(inverse, weights=has, minlength=len(classes)).astype(np.int64)
    table["missing"] = np.bincount(inverse, weights=~has, minlength=len(classes)).astype(np.int64)
    for k in ks:
        hit = (topk[:, :k] == labels[:, None]).any(axis=1) & has
        table[f"correct@{k}"] = np.bincount(inverse, weights=hit, minlength=len(classes)).astype(np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            table[f"recall@{k}"] = table[f"correct@{k}"] / table["n"]
    return table


def weighted_accuracy(recall: pd.Series, weights: pd.Series | None = None) -> float:
    """Σ w_y·recall_y / Σ w_y over the classes of ``recall`` (equal weights when ``weights`` is None).

    LAION-weighted accuracy: ``weights`` = class shares in the full LAIONet (before OCR filtering), indexed by class.
    """
    recall = recall.dropna()
    w = pd.Series(1.0, index=recall.index) if weights is None else weights.reindex(recall.index).fillna(0.0)
    if w.sum() <= 0:
        return float("nan")
    return float((w * recall).sum() / w.sum())


def wilson_interval(correct: np.ndarray, n: np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for binomial proportions: (lower, upper) arrays."""
    correct, n = np.asarray(correct, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = correct / n
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return centre - half, centre + half


def paper_interval(table: pd.DataFrame, k: int, weights: pd.Series | None = None) -> tuple[float, float, float]:
    """The reference's interval: per-class Wilson half-widths combined as √Σ(w·h)² / Σw around the weighted
    accuracy. Returns (accuracy, lower, upper)."""
    t = table[table["n"] > 0].set_index("class")
    lo, hi = wilson_interval(t[f"correct@{k}"].to_numpy(), t["n"].to_numpy())
    half = (hi - lo) / 2
    w = np.ones(len(t)) if weights is None else weights.reindex(t.index).fillna(0.0).to_numpy()
    acc = weighted_accuracy(t[f"recall@{k}"], None if weights is None else weights)
    err = float(np.sqrt(np.sum((w * half) ** 2)) / w.sum())
    return acc, acc - err, acc + err


def bootstrap_interval(
    table: pd.DataFrame,
    k: int,
    weights: pd.Series | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Class-stratified bootstrap of the weighted accuracy: each class's samples are resampled with replacement
    (its count kept), i.e. correct_y* ~ Binomial(n_y, recall_y). Returns (accuracy, lower, upper) percentiles."""
    t = table[table["n"] > 0].set_index("class")
    n = t["n"].to_numpy()
    p = t[f"recall@{k}"].to_numpy()
    w = np.ones(len(t)) if weights is None else weights.reindex(t.index).fillna(0.0).to_numpy()
    rng = np.random.default_rng(seed)
    resampled = rng.binomial(n, p, size=(n_boot, len(n))) / n
    accs = resampled @ w / w.sum()
    alpha = (1 - level) / 2
    acc = float(p @ w / w.sum())
    return acc, float(np.quantile(accs, alpha)), float(np.quantile(accs, 1 - alpha))


def z_value(level: float) -> float:
    """The two-sided standard normal quantile of a confidence ``level`` (1.96 for 0.95)."""
    return Z95 if level == 0.95 else NormalDist().inv_cdf((1 + level) / 2)


def recall_difference(
    a: pd.DataFrame,
    b: pd.DataFrame,
    k: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    method: Literal["bootstrap", "newcombe"] = "bootstrap",
) -> pd.DataFrame:
    """Per-class recall@k of dataset A minus dataset B over the classes scored in both (``n > 0``), with bounds.

    Args:
        a: per-class table of A (``per_class_recall``): ``class``, ``n``, ``recall@k`` (and ``correct@k`` for
            ``newcombe``).
        b: the same for B.
        k: the k of recall@k.
        method: ``bootstrap`` — each dataset's samples resampled within the class (correct* ~ Binomial(n, recall),
            independently for A and B), percentile interval of the difference; ``newcombe`` — Newcombe's hybrid score
            interval for a difference of two independent proportions (from the Wilson intervals of each: lower =
            Δ − √((p_a − l_a)² + (u_b − p_b)²), upper = Δ + √((u_a − p_a)² + (p_b − l_b)²)), closed form and
            better behaved than the bootstrap when a recall is 0 or 1.

    Returns:
        One row per class (sorted): ``class``, ``n_a``, ``n_b``, ``recall_a``, ``recall_b``, ``delta`` (A − B),
        ``lower``, ``upper``, ``significantly_lower`` (upper < 0: A lower), ``significantly_higher`` (lower > 0).
    """
    ta, tb = a[a["n"] > 0].set_index("class"), b[b["n"] > 0].set_index("class")
    common = ta.index.intersection(tb.index).sort_values()
    ta, tb = ta.loc[common], tb.loc[common]
    na, nb = ta["n"].to_numpy(np.int64), tb["n"].to_numpy(np.int64)
    pa_, pb_ = ta[f"recall@{k}"].to_numpy(float), tb[f"recall@{k}"].to_numpy(float)
    if method == "bootstrap":
        rng = np.random.default_rng(seed)
        da = rng.binomial(na, pa_, size=(n_boot, len(common))) / na
        db = rng.binomial(nb, pb_, size=(n_boot, len(common))) / nb
        alpha = (1 - level) / 2
        diff = da - db
        lower = np.quantile(diff, alpha, axis=0) if len(common) else np.empty(0)
        upper = np.quantile(diff, 1 - alpha, axis=0) if len(common) else np.empty(0)
    elif method == "newcombe":
        z = z_value(level)
        la, ua = wilson_interval(np.round(pa_ * na), na, z)
        lb, ub = wilson_interval(np.round(pb_ * nb), nb, z)
        lower = pa_ - pb_ - np.sqrt((pa_ - la) ** 2 + (ub - pb_) ** 2)
        upper = pa_ - pb_ + np.sqrt((ua - pa_) ** 2 + (pb_ - lb) ** 2)
    else:
        raise ValueError(f"unknown method {method!r}; expected bootstrap or newcombe")
    table = pd.DataFrame(
        {
            "class": common,
            "n_a": na,
            "n_b": nb,
            "recall_a": pa_,
            "recall_b": pb_,
            "delta": pa_ - pb_,
            "lower": np.asarray(lower, float),
            "upper": np.asarray(upper, float),
        }
    )
    table["significantly_lower"] = table["upper"] < 0
    table["significantly_higher"] = table["lower"] > 0
    return table
