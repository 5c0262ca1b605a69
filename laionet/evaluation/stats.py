"""Intra-class image similarity and dataset comparisons.

Pure: L2-normalised embeddings and class labels in, tidy tables out. Per class, a seeded random sample of at most
``cap`` images (the reference took the first 100 in hash order); all pairwise cosines from one matrix product.
Comparing datasets A and B class by class:
``paper`` — the reference's normal approximation over pairs: err = 1.96·std/√(n_pairs−1) per dataset,
Δ = mean_A − mean_B, err_Δ = √(err_A² + err_B²); lower iff Δ + err_Δ < 0, higher iff Δ − err_Δ > 0 (pairs sharing
an image are not independent, so these intervals are too narrow);
``bootstrap`` (default) — images (not pairs) resampled with replacement in each class; the mean over pairs of
distinct images of a resample is computed for all resamples at once from the Gram matrix; percentile interval.

Random draws are seeded per class (``class_rng``: from the seed, the class and what is drawn), never from one stream
over the classes, so a class's numbers do not depend on which other classes are computed with it: the evaluation can be
split into class groups (``laionet.evaluation.groups``) and merged into exactly the tables of one pass.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

Z95 = 1.959963984540054
# what a per-class generator draws (one independent stream each): the image sample, bootstrap resamples, the matched
# resample of Appendix C, the pooled pair draws of Figure 6a
SAMPLE, BOOTSTRAP, RESAMPLE, POOL = 0, 1, 2, 3


def class_rng(seed: int, cls: object, stream: int = SAMPLE) -> np.random.Generator:
    """The random generator of one class: seeded from (``stream``, ``seed``, the class), independent of every other
    class. A class that is a non-negative integer (an ImageNet class index) counts as itself, any other label by the
    CRC-32 of its text."""
    value = cls.item() if hasattr(cls, "item") else cls
    key = value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
    if key is None:
        key = 2**32 + zlib.crc32(str(value).encode())  # apart from every integer class below 2**32
    return np.random.default_rng([stream, seed % 2**64, key])


def sample_by_class(labels: np.ndarray, cap: int | None = 100, seed: int = 0) -> dict[object, np.ndarray]:
    """Positions of at most ``cap`` randomly chosen samples per class (seeded per class; sorted positions)."""
    labels = np.asarray(labels)
    out: dict[object, np.ndarray] = {}
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        if cap is not None and len(idx) > cap:
            idx = np.sort(class_rng(seed, cls, SAMPLE).choice(idx, size=cap, replace=False))
        out[cls.item() if hasattr(cls, "item") else cls] = idx
    return out


def pair_similarities(emb: np.ndarray) -> np.ndarray:
    """Cosines of all pairs i < j of L2-normalised rows: float64 (n(n−1)/2,)."""
    emb = np.asarray(emb, dtype=np.float64)
    gram = emb @ emb.T
    return gram[np.triu_indices(len(emb), k=1)]


def intra_class(emb: np.ndarray, labels: np.ndarray, cap: int | None = 100, seed: int = 0) -> pd.DataFrame:
    """Per class: images used, pairs, mean/std of pairwise cosine similarity. Columns: class, n, n_pairs, mean, std."""
    rows = []
    for cls, idx in sample_by_class(labels, cap, seed).items():
        sims = pair_similarities(emb[idx])
        rows.append(
            {
                "class": cls,
                "n": len(idx),
                "n_pairs": len(sims),
                "mean": float(sims.mean()) if len(sims) else np.nan,
                "std": float(sims.std(ddof=0)) if len(sims) else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=["class", "n", "n_pairs", "mean", "std"])


def compare_paper(
    pairs_a: dict[object, np.ndarray], pairs_b: dict[object, np.ndarray], min_values: int = 7
) -> pd.DataFrame:
    """The reference's per-class comparison over pair similarities (classes with ≥ ``min_values`` in both)."""
    rows = []
    for cls in _ordered(set(pairs_a) & set(pairs_b)):
        a, b = np.asarray(pairs_a[cls]), np.asarray(pairs_b[cls])
        if len(a) < min_values or len(b) < min_values:
            continue
        err_a = Z95 * a.std() / np.sqrt(len(a) - 1)
        err_b = Z95 * b.std() / np.sqrt(len(b) - 1)
        delta, err = a.mean() - b.mean(), float(np.hypot(err_a, err_b))
        rows.append(_row(cls, a.mean(), b.mean(), delta - err, delta + err))
    return _verdict(pd.DataFrame(rows, columns=["class", "mean_a", "mean_b", "delta", "lower", "upper"]))


def _resampled_means(emb: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Mean cosine over pairs of distinct images for ``n_boot`` with-replacement resamples: float64 (n_boot,).

    With multiplicities w (a resample), Σ_{i≠j images} w_i w_j G_ij / Σ_{i≠j} w_i w_j
    = (wᵀGw − Σ w_i² G_ii) / ((Σw)² − Σ w_i²): no identical-image pair is counted as similarity 1.
    """
    n = len(emb)
    gram = (emb @ emb.T).astype(np.float32)
    draws = rng.integers(0, n, size=(n_boot, n))  # image multiplicities of each resample, via one bincount
    w = np.bincount((draws + np.arange(n_boot)[:, None] * n).ravel(), minlength=n_boot * n).reshape(n_boot, n)
    w = w.astype(np.float32)
    quad = np.einsum("bi,bi->b", w @ gram, w, dtype=np.float64)
    self_terms = (w.astype(np.float64) ** 2) @ np.diag(gram).astype(np.float64)
    denom = n * n - (w.astype(np.float64) ** 2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (quad - self_terms) / denom


def compare_bootstrap(
    emb_a: np.ndarray,
    labels_a: np.ndarray,
    emb_b: np.ndarray,
    labels_b: np.ndarray,
    cap: int | None = 100,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    min_images: int = 4,
) -> pd.DataFrame:
    """Per-class Δ = mean intra-class similarity of A − of B, with a bootstrap interval that resamples images."""
    sample_a, sample_b = sample_by_class(labels_a, cap, seed), sample_by_class(labels_b, cap, seed + 1)
    alpha = (1 - level) / 2
    rows = []
    for cls in _ordered(set(sample_a) & set(sample_b)):
        ea, eb = np.asarray(emb_a[sample_a[cls]], np.float64), np.asarray(emb_b[sample_b[cls]], np.float64)
        if len(ea) < min_images or len(eb) < min_images:
            continue
        mean_a, mean_b = pair_similarities(ea).mean(), pair_similarities(eb).mean()
        rng = class_rng(seed, cls, BOOTSTRAP)
        diff = _resampled_means(ea, n_boot, rng) - _resampled_means(eb, n_boot, rng)
        diff = diff[np.isfinite(diff)]
        rows.append(_row(cls, mean_a, mean_b, np.quantile(diff, alpha), np.quantile(diff, 1 - alpha)))
    return _verdict(pd.DataFrame(rows, columns=["class", "mean_a", "mean_b", "delta", "lower", "upper"]))


def _row(cls: object, mean_a: float, mean_b: float, lower: float, upper: float) -> dict[str, object]:
    return {"class": cls, "mean_a": float(mean_a), "mean_b": float(mean_b), "delta": float(mean_a - mean_b),
            "lower": float(lower), "upper": float(upper)}  # fmt: skip


def _ordered(classes: set[object]) -> list[object]:
    try:
        return sorted(classes)  # type: ignore[type-var]
    except TypeError:  # mixed label types
        return sorted(classes, key=str)


def _verdict(table: pd.DataFrame) -> pd.DataFrame:
    table["significantly_lower"] = table["upper"] < 0
    table["significantly_higher"] = table["lower"] > 0
    return table


def proportions(comparison: pd.DataFrame) -> dict[str, float]:
    """Share of compared classes where A is significantly lower / higher than B."""
    n = len(comparison)
    return {
        "classes": n,
        "lower": float(comparison["significantly_lower"].mean()) if n else float("nan"),
        "higher": float(comparison["significantly_higher"].mean()) if n else float("nan"),
    }


def pooled_pairs(
    pairs: dict[object, np.ndarray], per_class: int = 100, seed: int = 0, counts: dict[object, int] | None = None
) -> np.ndarray:
    """Figure 6a's pooled distribution: per class, min(#pairs, ``per_class``) pair similarities drawn with
    replacement, pooled over classes; with ``counts``, exactly ``counts[class]`` draws for each class in ``counts``
    (e.g. the same count for A and B in every class, so the two pooled distributions weight classes alike)."""
    if counts is not None:
        chosen = [(c, np.asarray(pairs[c]), int(counts[c])) for c in _ordered(set(counts) & set(pairs))]
    else:
        chosen = [(c, np.asarray(v), min(len(v), per_class)) for c, v in pairs.items()]
    draws = [class_rng(seed, c, POOL).choice(v, size=k, replace=True) for c, v, k in chosen if len(v) and k > 0]
    return np.concatenate(draws) if draws else np.empty(0)


def matched_pair_counts(
    pairs_a: dict[object, np.ndarray], pairs_b: dict[object, np.ndarray], per_class: int = 100
) -> dict[object, int]:
    """Per class with pairs in both: min(#pairs in A, #pairs in B, ``per_class``), the number of pair similarities to
    draw from each dataset so that A's pooled distribution has B's class sizes and the reverse (Figure 6a)."""
    return {
        c: min(len(pairs_a[c]), len(pairs_b[c]), per_class)
        for c in _ordered(set(pairs_a) & set(pairs_b))
        if len(pairs_a[c]) and len(pairs_b[c])
    }


def spearman_interval(
    x: np.ndarray, y: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Spearman correlation with a percentile bootstrap interval over (x, y) points: (rho, lower, upper).

    Ranks are average ranks (ties share the mean of their positions, ``scipy.stats.rankdata``), in the estimate and
    in every resample alike: recalls are heavily tied (0, ½, 1, ...) and arbitrary tie-breaking biases the resampled
    correlations toward 0, which once left the estimate outside its own interval. Resamples in which x or y is
    constant have no correlation and are ignored."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:  # undefined: too few points, or a constant
        return float("nan"), float("nan"), float("nan")
    x, y = x[keep], y[keep]
    rho = float(_pearson_rows(rankdata(x)[None], rankdata(y)[None])[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    rhos = _pearson_rows(rankdata(x[idx], axis=1), rankdata(y[idx], axis=1))
    alpha = (1 - level) / 2
    return rho, float(np.nanquantile(rhos, alpha)), float(np.nanquantile(rhos, 1 - alpha))


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (NaN where a row is constant)."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=1) / np.sqrt((a**2).sum(axis=1) * (b**2).sum(axis=1))


def matched_resample(
    values: dict[object, np.ndarray], counts: dict[object, int], seed: int = 0
) -> dict[object, np.ndarray]:
    """Resample each class of ``values`` (with replacement) to the class's count in ``counts`` (classes in both):
    the paper's matching of LAIONet's class sizes to ImageNet's before pooling distributions (Figure 6a, Appendix C)."""
    return {
        cls: class_rng(seed, cls, RESAMPLE).choice(np.asarray(values[cls]), size=int(counts[cls]), replace=True)
        for cls in _ordered(set(values) & set(counts))
        if len(values[cls]) and counts[cls] > 0
    }


def compare_means(
    values_a: dict[object, np.ndarray],
    values_b: dict[object, np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    min_values: int = 2,
) -> pd.DataFrame:
    """Per class, mean of A − mean of B for per-sample values (e.g. each image's similarity to its own class's
    synset text, Appendix C), with a percentile bootstrap over samples of each dataset. Classes with fewer than
    ``min_values`` values in either dataset are left out. Columns: class, mean_a, mean_b, delta, lower, upper,
    significantly_lower, significantly_higher, n_a, n_b."""
    alpha = (1 - level) / 2
    rows = []
    for cls in _ordered(set(values_a) & set(values_b)):
        a, b = np.asarray(values_a[cls], float), np.asarray(values_b[cls], float)
        if len(a) < min_values or len(b) < min_values:
            continue
        rng = class_rng(seed, cls, BOOTSTRAP)
        boot_a = a[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(axis=1)
        boot_b = b[rng.integers(0, len(b), size=(n_boot, len(b)))].mean(axis=1)
        diff = boot_a - boot_b
        row = _row(cls, a.mean(), b.mean(), np.quantile(diff, alpha), np.quantile(diff, 1 - alpha))
        rows.append({**row, "n_a": len(a), "n_b": len(b)})
    columns = ["class", "mean_a", "mean_b", "delta", "lower", "upper", "n_a", "n_b"]
    table = _verdict(pd.DataFrame(rows, columns=columns))
    return table[[*columns[:6], "significantly_lower", "significantly_higher", "n_a", "n_b"]]


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs of ``a`` and ``b``."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    if not len(a) or not len(b):
        return float("nan")
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())
