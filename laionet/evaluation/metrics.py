"""Accuracy metrics: per-class recall@k, equally- and LAION-weighted accuracy, and their uncertainty.

Pure: arrays in (true class per sample, top-k predicted classes per sample), tidy tables out. Samples without a
prediction (a row of ``-1``) are excluded and counted, never scored as wrong (the reference scored CLIP's NaN
similarities as wrong). Uncertainty: the reference's Wilson-per-class combination (``paper``) and a class-stratified
parametric bootstrap from Jeffreys-smoothed per-class recalls (default; see ``bootstrap_interval``); per-class recall
differences default to Newcombe's hybrid score interval (``recall_difference``).
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist
from typing import Literal

import numpy as np
import pandas as pd

from laionet.evaluation.stats import BOOTSTRAP, class_rng

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
        with np.errstate(invalid="ignore", divide="ignore"):  # pragma: no mutate (a pandas division: silent anyway)
            table[f"recall@{k}"] = table[f"correct@{k}"] / table["n"]
    return table


def weighted_accuracy(recall: pd.Series, weights: pd.Series | None = None, normalize: bool = True) -> float:
    """Weighted mean of per-class recalls over the classes of ``recall`` (equal weights when ``weights`` is None).

    LAION-weighted accuracy: ``weights`` = class shares in the full LAIONet (before OCR filtering), indexed by class.
    ``normalize=True`` (default): Σ w_y·recall_y / Σ w_y over the scored classes. ``normalize=False``: the reference's
    Σ p_y·recall_y with the shares as they are (they sum to 1 over the full LAIONet), so a LAIONet class without a
    scored sample (never downloaded, every image flagged by OCR) counts as recall 0 and the value falls with download
    and OCR losses, not only with the classifier; the default renormalises, i.e. treats such classes as having the
    weighted mean recall of the scored ones, and equals the reference whenever every weighted class is scored.
    """
    recall = recall.dropna()
    w = pd.Series(1.0, index=recall.index) if weights is None else weights.reindex(recall.index).fillna(0.0)
    if w.sum() <= 0:
        return float("nan")
    return float((w * recall).sum() / (w.sum() if normalize else 1.0))


def wilson_interval(correct: np.ndarray, n: np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for binomial proportions: (lower, upper) arrays."""
    correct, n = np.asarray(correct, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = correct / n
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return centre - half, centre + half


def paper_interval(
    table: pd.DataFrame, k: int, weights: pd.Series | None = None, normalize: bool = True
) -> tuple[float, float, float]:
    """The reference's interval: per-class Wilson half-widths combined as √Σ(w·h)² / Σw around the weighted
    accuracy (``normalize=False``: √Σ(w·h)², the shares summing to 1 over the full LAIONet; see
    ``weighted_accuracy``). Returns (accuracy, lower, upper)."""
    t = table[table["n"] > 0].set_index("class")
    lo, hi = wilson_interval(t[f"correct@{k}"].to_numpy(), t["n"].to_numpy())
    half = (hi - lo) / 2
    w = np.ones(len(t)) if weights is None else weights.reindex(t.index).fillna(0.0).to_numpy()
    acc = weighted_accuracy(t[f"recall@{k}"], None if weights is None else weights, normalize)
    err = float(np.sqrt(np.sum((w * half) ** 2)) / (w.sum() if normalize else 1.0))
    return acc, acc - err, acc + err


BootstrapMethod = Literal["jeffreys", "binomial"]


def bootstrap_interval(
    table: pd.DataFrame,
    k: int,
    weights: pd.Series | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    method: BootstrapMethod = "jeffreys",
    normalize: bool = True,
) -> tuple[float, float, float]:
    """Class-stratified bootstrap interval of the (equally or LAION-) weighted accuracy over the scored classes.

    ``binomial`` (the former default): each class's samples resampled with replacement, i.e.
    correct_y* ~ Binomial(n_y, p̂_y); percentile interval. A class with p̂_y = 0 or 1 then contributes no variance at
    all, so when many classes are small (1-2 images, LAIONet's long tail) the interval is far too narrow: simulated
    coverage of the true mean recall fell to ~53-65 % at a nominal 95 % (``benchmarks/bench_coverage.py``).

    ``jeffreys`` (default): the same parametric bootstrap, but drawn at the Jeffreys-smoothed recall
    p̃_y = (correct_y + ½) / (n_y + 1) (the mean of the Jeffreys posterior Beta(correct + ½, n − correct + ½)), which is
    never 0 or 1, and recentred on the estimate: the interval is acc + the (α/2, 1 − α/2) quantiles of
    acc* − acc(p̃). Each class so contributes a variance p̃(1 − p̃)/n > 0 close to the true p(1 − p)/n, while the point
    estimate stays the unbiased plain mean of recalls. Chosen over a percentile interval of Jeffreys posterior draws
    (posterior means shrink small classes toward ½: biased and, with predictive resampling, ~1.5× wider) and over a
    hierarchical bootstrap of classes then images (it adds the between-class spread of recalls, which is not
    sampling error for a fixed class set: 2-4× wider). Simulated coverage ≥ 94 % with 164 classes of 1-2 images,
    900 classes of 5-60 and 50 per class, at a width within ~10 % of the binomial bootstrap's where that one holds.

    Args:
        table: ``per_class_recall`` table (``class``, ``n``, ``recall@k``; ``correct@k`` if present, else recall·n).
        weights: class weights indexed by class (LAION shares); None: equal weights.
        normalize: divide by the weights of the scored classes (default), or not (the reference's LAION weighting;
            see ``weighted_accuracy``).

    Returns:
        (accuracy, lower, upper).
    """
    t = table[table["n"] > 0].set_index("class")
    n = t["n"].to_numpy()
    p = t[f"recall@{k}"].to_numpy(float)
    w = np.ones(len(t)) if weights is None else weights.reindex(t.index).fillna(0.0).to_numpy(float)
    w = w / w.sum() if normalize else w
    rng = np.random.default_rng(seed)
    alpha = (1 - level) / 2
    acc = float(p @ w)
    if method == "binomial":
        accs = (rng.binomial(n, p, size=(n_boot, len(n))) / n) @ w
        return acc, float(np.quantile(accs, alpha)), float(np.quantile(accs, 1 - alpha))
    if method != "jeffreys":
        raise ValueError(f"unknown method {method!r}; expected jeffreys or binomial")
    shift = _smoothed_shifts(t, k, w, n_boot, rng)
    lower, upper = acc + float(np.quantile(shift, alpha)), acc + float(np.quantile(shift, 1 - alpha))
    return acc, max(lower, 0.0), min(upper, 1.0)  # recentring can step past 0 or 1; an accuracy cannot


def _smoothed_shifts(t: pd.DataFrame, k: int, w: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` draws of acc* − acc(p̃): correct_y* ~ Binomial(n_y, p̃_y), p̃_y = (correct_y + ½)/(n_y + 1), the
    accuracy the weights ``w`` (already normalised or not) give: float64 (n_boot,)."""
    n, p = t["n"].to_numpy(), t[f"recall@{k}"].to_numpy(float)
    correct = t[f"correct@{k}"].to_numpy(float) if f"correct@{k}" in t else np.round(p * n)
    smoothed = (correct + 0.5) / (n + 1)
    return (rng.binomial(n, smoothed, size=(n_boot, len(n))) / n) @ w - smoothed @ w


def compared_accuracy(
    a: pd.DataFrame,
    b: pd.DataFrame,
    k: int,
    weights: pd.Series | None = None,
    normalize: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Accuracy of datasets A and B over the same classes — those scored (``n > 0``) in both — and A − B with a
    bootstrap interval (the ``jeffreys`` resampling of ``bootstrap_interval``, independently in A and B).

    The paper averages "for each class that is present in LAIONet": comparing A's mean recall over A's classes with
    B's over all of B's (ImageNet val: 1000) mixes class sets, and the difference then also measures which classes
    are present. Weights as in ``weighted_accuracy``.

    Returns:
        ``classes`` (compared), ``accuracy_a``, ``accuracy_b``, ``difference`` (A − B), ``lower``, ``upper``.
    """
    ta, tb = a[a["n"] > 0].set_index("class"), b[b["n"] > 0].set_index("class")
    common = ta.index.intersection(tb.index).sort_values()
    if not len(common):
        return {"classes": 0, "accuracy_a": np.nan, "accuracy_b": np.nan, "difference": np.nan, "lower": np.nan,
                "upper": np.nan}  # fmt: skip
    w = np.ones(len(common)) if weights is None else weights.reindex(common).fillna(0.0).to_numpy(float)
    w = w / w.sum() if normalize and w.sum() > 0 else w
    rng = np.random.default_rng(seed)
    accs, shifts = [], []
    for t in (ta.loc[common], tb.loc[common]):
        accs.append(float(t[f"recall@{k}"].to_numpy(float) @ w))
        shifts.append(_smoothed_shifts(t, k, w, n_boot, rng))
    alpha = (1 - level) / 2
    diff = accs[0] - accs[1]
    lower, upper = np.quantile(shifts[0] - shifts[1], [alpha, 1 - alpha])
    return {"classes": len(common), "accuracy_a": accs[0], "accuracy_b": accs[1], "difference": diff,
            "lower": max(diff + float(lower), -1.0), "upper": min(diff + float(upper), 1.0)}  # fmt: skip


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
    method: Literal["bootstrap", "newcombe"] = "newcombe",
) -> pd.DataFrame:
    """Per-class recall@k of dataset A minus dataset B over the classes scored in both (``n > 0``), with bounds.

    Args:
        a: per-class table of A (``per_class_recall``): ``class``, ``n``, ``recall@k`` (and ``correct@k`` for
            ``newcombe``).
        b: the same for B.
        k: the k of recall@k.
        method: ``newcombe`` (default) — Newcombe's hybrid score interval for a difference of two independent
            proportions (from the Wilson intervals of each: lower = Δ − √((p_a − l_a)² + (u_b − p_b)²),
            upper = Δ + √((u_a − p_a)² + (p_b − l_b)²)): closed form, and near its nominal coverage even for tiny
            classes and recalls of 0 or 1; ``bootstrap`` — each dataset's samples resampled within the class
            (correct* ~ Binomial(n, recall), independently for A and B), percentile interval of the difference. The
            bootstrap has no variance for a recall of 0 or 1 (A: 2/2 correct vs B: 45/50 comes out "significantly
            higher"), so it under-covers on small classes; kept for comparison.

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
        da, db = np.empty((n_boot, len(common))), np.empty((n_boot, len(common)))
        for j, cls in enumerate(common):  # seeded per class: a class's bounds do not depend on the other classes
            rng = class_rng(seed, cls, BOOTSTRAP)
            da[:, j] = rng.binomial(na[j], pa_[j], size=n_boot) / na[j]
            db[:, j] = rng.binomial(nb[j], pb_[j], size=n_boot) / nb[j]
        alpha = (1 - level) / 2
        diff = da - db
        lower = np.quantile(diff, alpha, axis=0) if len(common) else np.empty(0)
        upper = np.quantile(diff, 1 - alpha, axis=0) if len(common) else np.empty(0)
    elif method == "newcombe":
        z = z_value(level)
        ca = ta[f"correct@{k}"].to_numpy(float) if f"correct@{k}" in ta else np.round(pa_ * na)
        cb = tb[f"correct@{k}"].to_numpy(float) if f"correct@{k}" in tb else np.round(pb_ * nb)
        la, ua = wilson_interval(ca, na, z)
        lb, ub = wilson_interval(cb, nb, z)
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
