"""Every statistic pinned on a small worked example computed independently of the code (by hand or a plain loop in the
test), weighted and unweighted, plus hypothesis property tests (issue 13)."""

from __future__ import annotations

import itertools
import math
import warnings
import zlib

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from laionet.evaluation.metrics import (
    bootstrap_interval,
    compared_accuracy,
    paper_interval,
    recall_difference,
    weighted_accuracy,
    wilson_interval,
)
from laionet.evaluation.stats import compare_bootstrap, compare_paper, spearman_interval

Z = 1.959963984540054
PROPERTY = settings(max_examples=60, deadline=None)


def _wilson_by_hand(c: int, n: int, z: float = Z) -> tuple[float, float]:
    p = c / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _table(n: list[int], correct: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"class": range(len(n)), "n": n, "correct@1": correct,
                         "recall@1": [c / m for c, m in zip(correct, n, strict=True)]})  # fmt: skip


# accuracy and its paper interval ------------------------------------------------------------------------------------


def test_weighted_accuracy_worked_example() -> None:
    recall = pd.Series({0: 0.5, 1: 1.0, 2: 0.25})
    assert weighted_accuracy(recall) == pytest.approx((0.5 + 1.0 + 0.25) / 3)
    shares = pd.Series({0: 0.5, 1: 0.2, 2: 0.1, 7: 0.2})  # class 7: in LAIONet, not scored
    assert weighted_accuracy(recall, shares) == pytest.approx((0.25 + 0.2 + 0.025) / 0.8)
    assert weighted_accuracy(recall, shares, normalize=False) == pytest.approx(0.25 + 0.2 + 0.025)


def test_paper_interval_worked_example_weighted_and_not() -> None:
    table = _table([10, 4, 25], [8, 1, 25])
    halves = []
    for c, n in [(8, 10), (1, 4), (25, 25)]:
        lo, hi = _wilson_by_hand(c, n)
        halves.append((hi - lo) / 2)
    recalls = [0.8, 0.25, 1.0]
    acc, lo, hi = paper_interval(table, 1)
    err = math.sqrt(sum(h * h for h in halves)) / 3
    assert (acc, lo, hi) == pytest.approx((sum(recalls) / 3, sum(recalls) / 3 - err, sum(recalls) / 3 + err))
    w = [0.6, 0.3, 0.1]
    shares = pd.Series(dict(enumerate(w)))
    acc, lo, hi = paper_interval(table, 1, shares)
    mean = sum(wi * r for wi, r in zip(w, recalls, strict=True))  # Σw = 1
    err = math.sqrt(sum((wi * h) ** 2 for wi, h in zip(w, halves, strict=True)))  # √Σ(w·h)², not √Σw·h²
    assert (acc, lo, hi) == pytest.approx((mean, mean - err, mean + err))
    half_shares = pd.Series({i: wi / 2 for i, wi in enumerate(w)})  # shares of a larger LAIONet: Σw = 0.5 here
    acc, lo, hi = paper_interval(table, 1, half_shares, normalize=False)
    err = math.sqrt(sum((wi / 2 * h) ** 2 for wi, h in zip(w, halves, strict=True)))
    assert (acc, lo, hi) == pytest.approx((mean / 2, mean / 2 - err, mean / 2 + err))


def _normal_width(n: np.ndarray, correct: np.ndarray, w: np.ndarray) -> float:
    """2·z·sd of Σw·p*/Σw when each p* is a Binomial(n, p̃)/n draw, p̃ = (c + ½)/(n + 1)."""
    smoothed = (correct + 0.5) / (n + 1)
    return 2 * Z * math.sqrt(float(np.sum(w**2 * smoothed * (1 - smoothed) / n))) / float(w.sum())


@pytest.mark.parametrize("weighted", [False, True])
def test_accuracy_bootstrap_width_is_the_sampling_error_of_the_equally_or_laion_weighted_mean(weighted: bool) -> None:
    """Class sizes 20 and 2000 at recall ½: the equally-weighted mean's error is dominated by the small class (a pooled
    accuracy would be ~5× narrower); with LAION shares 0.9 / 0.1 it is the weighted one's."""
    n, correct = np.array([20, 2000]), np.array([10, 1000])
    w = np.array([0.9, 0.1]) if weighted else np.ones(2)
    shares = pd.Series({0: 0.9, 1: 0.1}) if weighted else None
    acc, lo, hi = bootstrap_interval(_table(n.tolist(), correct.tolist()), 1, shares, n_boot=4000, seed=3)
    assert acc == pytest.approx(0.5)
    assert hi - lo == pytest.approx(_normal_width(n, correct, w), rel=0.08)
    assert (lo + hi) / 2 == pytest.approx(acc, abs=0.01)
    small = _table([20, 30], [5, 9])
    assert bootstrap_interval(small, 1) == bootstrap_interval(small, 1, level=0.95)


def test_accuracy_bootstrap_level_sets_the_width() -> None:
    table = _table([400, 400], [200, 300])
    _, lo95, hi95 = bootstrap_interval(table, 1, n_boot=6000, seed=1)
    _, lo90, hi90 = bootstrap_interval(table, 1, n_boot=6000, seed=1, level=0.90)
    assert (hi95 - lo95) / (hi90 - lo90) == pytest.approx(Z / 1.6448536269514722, rel=0.06)


def test_compared_accuracy_worked_example() -> None:
    a = _table([4, 6, 10], [1, 3, 10])
    b = pd.DataFrame({"class": [1, 0, 5], "n": [10, 10, 10], "correct@1": [6, 5, 0], "recall@1": [0.6, 0.5, 0.0]})
    out = compared_accuracy(a, b, 1, n_boot=3000)
    assert out["classes"] == 2  # classes 0 and 1 only
    assert out["accuracy_a"] == pytest.approx((0.25 + 0.5) / 2) and out["accuracy_b"] == pytest.approx(0.55)
    assert out["difference"] == pytest.approx(0.375 - 0.55)
    width = 2 * Z * math.sqrt(sum(p * (1 - p) / m for p, m in [(1.5 / 5, 4), (3.5 / 7, 6), (5.5 / 11, 10),
                                                                   (6.5 / 11, 10)])) / 2  # fmt: skip
    assert out["upper"] - out["lower"] == pytest.approx(width, rel=0.1)
    weighted = compared_accuracy(a, b, 1, pd.Series({0: 0.3, 1: 0.1, 2: 0.6}))
    assert weighted["accuracy_a"] == pytest.approx((0.3 * 0.25 + 0.1 * 0.5) / 0.4)
    assert weighted["accuracy_b"] == pytest.approx((0.3 * 0.5 + 0.1 * 0.6) / 0.4)


# per-class recall differences ---------------------------------------------------------------------------------------


def test_newcombe_worked_example() -> None:
    a = _table([2, 20], [2, 5])
    b = _table([50, 20], [45, 15])
    table = recall_difference(a, b, 1).set_index("class")
    for cls, (ca, na, cb, nb) in enumerate([(2, 2, 45, 50), (5, 20, 15, 20)]):
        pa, pb = ca / na, cb / nb
        (la, ua), (lb, ub) = _wilson_by_hand(ca, na), _wilson_by_hand(cb, nb)
        lower = pa - pb - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)
        upper = pa - pb + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
        assert table.loc[cls, ["delta", "lower", "upper"]].tolist() == pytest.approx([pa - pb, lower, upper])
    assert table["significantly_lower"].tolist() == [False, True]  # 5/20 vs 15/20


def test_recall_difference_bootstrap_resamples_both_datasets() -> None:
    a, b = _table([2000], [1000]), _table([2000], [1400])
    row = recall_difference(a, b, 1, n_boot=4000, method="bootstrap").iloc[0]
    width = 2 * Z * math.sqrt(0.25 / 2000 + 0.21 / 2000)
    assert row["upper"] - row["lower"] == pytest.approx(width, rel=0.08)
    level90 = recall_difference(a, b, 1, n_boot=4000, method="bootstrap", level=0.9).iloc[0]
    assert (row["upper"] - row["lower"]) / (level90["upper"] - level90["lower"]) == pytest.approx(1.19, rel=0.06)


# intra-class similarity ---------------------------------------------------------------------------------------------


def _distinct_pair_mean(gram: np.ndarray, idx: np.ndarray) -> float:
    """Mean cosine over the pairs of a resample whose two members are different images (plain loop)."""
    values = [gram[idx[i], idx[j]] for i, j in itertools.combinations(range(len(idx)), 2) if idx[i] != idx[j]]
    return float(np.mean(values)) if values else float("nan")


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_image_bootstrap_never_counts_an_image_paired_with_itself() -> None:
    """Equiangular images: every pair of distinct images has cosine exactly c, so every resample's mean is c and the
    difference of two such datasets is exactly c_a − c_b (an image paired with itself would add 1s)."""
    eye = np.eye(6)
    emb_a = _unit(eye + 1.0)  # (e_i + 1)·(e_j + 1) = 0 + 1 + 1 + 6 = 8, |e_i + 1|² = 1 + 2 + 6 = 9: cosine 8/9
    emb_b = eye  # pairwise cosine 0
    labels = np.zeros(6, dtype=int)
    row = compare_bootstrap(emb_a, labels, emb_b, labels, n_boot=300, min_images=2).iloc[0]
    assert row["delta"] == pytest.approx(8 / 9)
    assert row["lower"] == pytest.approx(8 / 9) and row["upper"] == pytest.approx(8 / 9)


def test_image_bootstrap_matches_a_plain_loop_over_resamples_of_both_datasets() -> None:
    rng = np.random.default_rng(5)
    emb_a, emb_b = _unit(rng.normal(size=(8, 6)) + 1.0), _unit(rng.normal(size=(8, 6)) + 0.5)
    gram_a, gram_b = emb_a @ emb_a.T, emb_b @ emb_b.T
    loop = np.random.default_rng(11)
    diffs = np.array([
        _distinct_pair_mean(gram_a, loop.integers(0, 8, 8)) - _distinct_pair_mean(gram_b, loop.integers(0, 8, 8))
        for _ in range(3000)
    ])  # fmt: skip
    lo, hi = np.nanquantile(diffs, [0.025, 0.975])
    labels = np.zeros(8, dtype=int)
    row = compare_bootstrap(emb_a, labels, emb_b, labels, n_boot=3000, seed=2).iloc[0]
    assert row["delta"] == pytest.approx(_distinct_pair_mean(gram_a, np.arange(8)) - _distinct_pair_mean(
        gram_b, np.arange(8)))  # fmt: skip
    assert row["upper"] - row["lower"] == pytest.approx(hi - lo, rel=0.08)
    assert row["lower"] == pytest.approx(lo, abs=0.08 * (hi - lo)) and row["upper"] == pytest.approx(
        hi, abs=0.08 * (hi - lo)
    )
    # A is constant under resampling (equiangular): all of the interval's width must come from resampling B
    constant = _unit(np.eye(8) + 1.0)
    only_b = compare_bootstrap(constant, labels, emb_b, labels, n_boot=3000, seed=2).iloc[0]
    loop_b = np.array([_distinct_pair_mean(gram_b, loop.integers(0, 8, 8)) for _ in range(3000)])
    assert only_b["upper"] - only_b["lower"] == pytest.approx(float(np.ptp(np.nanquantile(loop_b, [0.025, 0.975]))),
                                                              rel=0.1)  # fmt: skip


def test_paper_comparison_both_bounds_worked_example() -> None:
    a = np.array([0.5, 0.6, 0.7, 0.6, 0.5, 0.6, 0.7, 0.6])
    b = np.array([0.8, 0.9, 0.8, 0.9, 0.8, 0.9, 0.8, 0.9, 0.7])
    row = compare_paper({0: a}, {0: b}).iloc[0]

    def err(values: np.ndarray) -> float:
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        return Z * std / math.sqrt(len(values) - 1)

    delta = a.mean() - b.mean()
    total = math.sqrt(err(a) ** 2 + err(b) ** 2)
    assert (row["lower"], row["upper"]) == pytest.approx((delta - total, delta + total))
    assert compare_paper({0: a}, {0: a + 0.001})["significantly_lower"].tolist() == [False]


# Spearman -----------------------------------------------------------------------------------------------------------


def _average_ranks(values: list[float]) -> list[float]:
    ranks = [0.0] * len(values)
    order = sorted(range(len(values)), key=lambda i: values[i])
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    num = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    return num / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def test_spearman_worked_example_with_ties() -> None:
    x = [0.1, 0.4, 0.4, 0.9, 0.2, 0.7]
    y = [0.0, 0.5, 1.0, 1.0, 0.5, 0.5]
    rho, lo, hi = spearman_interval(np.array(x), np.array(y), n_boot=500)
    assert rho == pytest.approx(_pearson(_average_ranks(x), _average_ranks(y)))
    assert lo <= rho <= hi


def test_spearman_interval_width_matches_a_plain_bootstrap_loop_at_its_level() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=300)
    y = np.round(x + rng.normal(size=300), 1)  # ties
    loop = np.random.default_rng(9)
    rhos = []
    for _ in range(2000):
        idx = loop.integers(0, 300, 300)
        rhos.append(_pearson(_average_ranks(list(x[idx])), _average_ranks(list(y[idx]))))
    for level in (0.95, 0.90):
        lo, hi = np.quantile(rhos, [(1 - level) / 2, (1 + level) / 2])
        _, got_lo, got_hi = spearman_interval(x, y, n_boot=2000, seed=0, level=level)
        assert got_hi - got_lo == pytest.approx(hi - lo, rel=0.1)
    assert spearman_interval(x, y, n_boot=300) == spearman_interval(x, y, n_boot=300, level=0.95)


# properties ---------------------------------------------------------------------------------------------------------


@PROPERTY
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_the_estimate_and_stays_in_the_unit_interval(cn: tuple[int, int]) -> None:
    c, n = cn
    lo, hi = wilson_interval(np.array([c]), np.array([n]))
    assert -1e-12 <= lo[0] <= c / n + 1e-12 and c / n - 1e-12 <= hi[0] <= 1 + 1e-12
    assert (lo[0], hi[0]) == pytest.approx(_wilson_by_hand(c, n))


counts = st.integers(1, 60).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n)))


@PROPERTY
@given(st.lists(st.tuples(counts, counts), min_size=1, max_size=6))
def test_newcombe_is_antisymmetric_and_holds_its_estimate(rows: list[tuple[tuple[int, int], tuple[int, int]]]) -> None:
    a = _table([r[0][1] for r in rows], [r[0][0] for r in rows])
    b = _table([r[1][1] for r in rows], [r[1][0] for r in rows])
    ab, ba = recall_difference(a, b, 1), recall_difference(b, a, 1)
    assert (ab["lower"] <= ab["delta"] + 1e-12).all() and (ab["delta"] <= ab["upper"] + 1e-12).all()
    assert np.allclose(ab["lower"], -ba["upper"]) and np.allclose(ab["upper"], -ba["lower"])
    assert (ab["lower"] >= -1 - 1e-12).all() and (ab["upper"] <= 1 + 1e-12).all()


@PROPERTY
@given(
    st.lists(st.tuples(st.floats(0, 1), st.floats(0.01, 10)), min_size=1, max_size=8),
    st.floats(0.1, 100),
)
def test_weighted_accuracy_is_a_weighted_mean(rows: list[tuple[float, float]], scale: float) -> None:
    recall = pd.Series([r for r, _ in rows])
    weights = pd.Series([w for _, w in rows])
    acc = weighted_accuracy(recall, weights)
    assert min(recall) - 1e-12 <= acc <= max(recall) + 1e-12
    assert acc == pytest.approx(weighted_accuracy(recall, weights * scale))  # shares or counts: same accuracy
    by_loop = sum(r * w for r, w in rows) / sum(w for _, w in rows)
    assert acc == pytest.approx(by_loop)
    assert weighted_accuracy(recall, weights, normalize=False) == pytest.approx(sum(r * w for r, w in rows))


@PROPERTY
@given(st.lists(st.tuples(st.integers(-20, 20), st.integers(-20, 20)), min_size=3, max_size=25))
def test_spearman_point_estimate_properties(points: list[tuple[int, int]]) -> None:
    x, y = np.array([p[0] / 4 for p in points]), np.array([p[1] / 4 for p in points])  # small grids: many ties
    rho, _, _ = spearman_interval(x, y, n_boot=20)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        assert math.isnan(rho)
        return
    assert rho == pytest.approx(_pearson(_average_ranks(list(x)), _average_ranks(list(y))), abs=1e-9)
    assert spearman_interval(np.exp(3 * x), y, n_boot=20)[0] == pytest.approx(rho, abs=1e-9)  # monotone invariance
    assert spearman_interval(y, x, n_boot=20)[0] == pytest.approx(rho, abs=1e-9)


@PROPERTY
@given(
    st.lists(st.floats(0, 1), min_size=7, max_size=15),
    st.lists(st.floats(0, 1), min_size=7, max_size=15),
)
def test_paper_comparison_is_antisymmetric(a: list[float], b: list[float]) -> None:
    ab = compare_paper({0: np.array(a)}, {0: np.array(b)}).iloc[0]
    ba = compare_paper({0: np.array(b)}, {0: np.array(a)}).iloc[0]
    assert ab["delta"] == pytest.approx(-ba["delta"], abs=1e-12)
    assert ab["lower"] == pytest.approx(-ba["upper"], abs=1e-12)
    assert ab["upper"] == pytest.approx(-ba["lower"], abs=1e-12)


# edges and defaults the statistics depend on ------------------------------------------------------------------------


def test_per_class_recall_edges() -> None:
    from laionet.evaluation.metrics import per_class_recall

    table = per_class_recall(np.array([0, 1, 1]), np.array([[0], [-1], [1]]), ks=(1,))  # a prediction of class 0 counts
    assert table["n"].tolist() == [1, 1] and table["missing"].tolist() == [0, 1]
    assert table["recall@1"].tolist() == [1, 1]
    assert all(table[c].dtype == np.int64 for c in ("n", "missing", "correct@1"))
    with pytest.raises(ValueError, match="topk must be"):
        per_class_recall(np.array([0, 1]), np.array([[0]]), ks=(1,))
    with pytest.raises(ValueError, match="topk must be"):
        per_class_recall(np.array([0]), np.array([0]), ks=(1,))


def test_unscored_classes_and_missing_weights_are_left_out() -> None:
    """A class without a scored sample (n = 0) takes no part; a class scored on one image does; a class absent from
    the weights has weight 0."""
    table = pd.DataFrame({"class": [0, 1, 2], "n": [10, 1, 0], "correct@1": [5, 1, 0], "recall@1": [0.5, 1.0, np.nan]})
    acc, _, hi = paper_interval(table, 1)
    h = [(b - a) / 2 for a, b in (_wilson_by_hand(5, 10), _wilson_by_hand(1, 1))]
    assert (acc, hi - acc) == pytest.approx((0.75, math.sqrt(h[0] ** 2 + h[1] ** 2) / 2))
    shares = pd.Series({1: 0.25, 0: 0.75})  # another order than the table's, class 2 absent
    assert paper_interval(table, 1, shares)[0] == pytest.approx(0.75 * 0.5 + 0.25 * 1.0)
    only = pd.Series({0: 1.0})
    assert paper_interval(table, 1, only)[0] == pytest.approx(0.5)
    assert bootstrap_interval(table, 1, only)[0] == pytest.approx(0.5)


def test_compared_accuracy_edges_and_defaults() -> None:
    a = pd.DataFrame({"class": [0, 1, 2], "n": [10, 1, 0], "correct@1": [5, 1, 0], "recall@1": [0.5, 1.0, np.nan]})
    b = pd.DataFrame({"class": [0, 1, 2], "n": [10, 10, 10], "correct@1": [8, 2, 10], "recall@1": [0.8, 0.2, 1.0]})
    out = compared_accuracy(a, b, 1)
    assert out["classes"] == 2 and out["accuracy_a"] == pytest.approx(0.75) and out["accuracy_b"] == pytest.approx(0.5)
    assert compared_accuracy(b, a, 1)["classes"] == 2  # unscored in either: left out
    assert out == compared_accuracy(a, b, 1, n_boot=1000, seed=0, level=0.95)  # seeded, reproducible defaults
    shares = pd.Series({0: 0.5})  # class 1 has no weight
    assert compared_accuracy(a, b, 1, shares)["accuracy_a"] == pytest.approx(0.5)
    paper = compared_accuracy(a, b, 1, pd.Series({0: 0.2, 1: 0.1}), normalize=False)
    assert (paper["accuracy_a"], paper["accuracy_b"]) == pytest.approx((0.2 * 0.5 + 0.1, 0.2 * 0.8 + 0.1 * 0.2))
    big_a, big_b = _table([2000, 2000], [1000, 1200]), _table([2000, 2000], [1400, 1000])
    widths = []
    for level in (0.95, 0.90):
        c = compared_accuracy(big_a, big_b, 1, n_boot=6000, level=level)
        widths.append(c["upper"] - c["lower"])
    sd = math.sqrt(sum(p * (1 - p) / 2000 for p in (0.5, 0.6, 0.7, 0.5))) / 2
    assert widths[0] == pytest.approx(2 * Z * sd, rel=0.08) and widths[1] == pytest.approx(2 * 1.6449 * sd, rel=0.08)


def test_intra_class_worked_example() -> None:
    from laionet.evaluation.stats import intra_class

    emb = _unit(np.array([[1.0, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 1]]))
    table = intra_class(emb, np.array([7, 7, 7, 9]))
    assert list(table.columns) == ["class", "n", "n_pairs", "mean", "std"]
    cos = [1 / math.sqrt(2), 1 / math.sqrt(3), 2 / math.sqrt(6)]  # pairs (0,1), (0,2), (1,2) of class 7
    mean = sum(cos) / 3
    std = math.sqrt(sum((c - mean) ** 2 for c in cos) / 3)  # over all pairs: population std
    row = table.set_index("class").loc[7]
    assert (row["n"], row["n_pairs"], row["mean"], row["std"]) == pytest.approx((3, 3, mean, std))
    single = table.set_index("class").loc[9]
    assert single["n_pairs"] == 0 and math.isnan(single["mean"]) and math.isnan(single["std"])
    many = intra_class(_unit(np.random.default_rng(0).normal(size=(150, 3))), np.zeros(150, dtype=int))
    assert many["n"].tolist() == [100]  # the reference's 100 per class, by default
    pd.testing.assert_frame_equal(many, intra_class(_unit(np.random.default_rng(0).normal(size=(150, 3))),
                                                    np.zeros(150, dtype=int), cap=100, seed=0))  # fmt: skip


def test_matched_resample_edges() -> None:
    from laionet.evaluation.stats import matched_resample

    values = {"a": np.array([1.0, 2.0]), "b": np.array([3.0]), "c": np.array([]), "d": np.array([4.0])}
    out = matched_resample(values, {"a": 5, "b": 1, "c": 3, "d": 0, "e": 2})
    assert {k: len(v) for k, v in out.items()} == {"a": 5, "b": 1}  # with replacement: 5 draws from 2 values
    assert set(out["a"]) <= {1.0, 2.0} and out["b"].tolist() == [3.0]
    for k, v in matched_resample(values, {"a": 5}).items():
        assert np.array_equal(v, matched_resample(values, {"a": 5}, seed=0)[k])  # seeded by default


def test_compare_means_worked_example() -> None:
    from laionet.evaluation.stats import compare_means

    a = {0: np.array([1.0, 0, 0, 0, 0]), 1: np.array([0.5, 0.7]), 2: np.array([0.1]), 3: np.array([0.2, 0.3])}
    b = {0: np.zeros(5), 1: np.array([0.1, 0.2, 0.3]), 2: np.array([0.1, 0.2]), 3: np.array([0.2])}
    table = compare_means(a, b, n_boot=2000)
    assert list(table.columns) == ["class", "mean_a", "mean_b", "delta", "lower", "upper", "significantly_lower",
                                   "significantly_higher", "n_a", "n_b"]  # fmt: skip
    assert table["class"].tolist() == [0, 1]  # classes 2 and 3 have a single value in one dataset
    row = table.set_index("class").loc[1]
    assert (row["mean_a"], row["mean_b"], row["delta"], row["n_a"], row["n_b"]) == pytest.approx((0.6, 0.2, 0.4, 2, 3))
    first = table.set_index("class").loc[0]
    assert first["lower"] == 0 and first["upper"] > 0  # the one non-zero value of A is drawn in some resamples
    assert compare_means(a, b).equals(compare_means(a, b, n_boot=1000, seed=0, level=0.95, min_values=2))
    rng = np.random.default_rng(2)
    big_a, big_b = {0: rng.normal(0, 1, 400)}, {0: rng.normal(0, 1, 400)}
    for level, z in ((0.95, Z), (0.90, 1.6449)):
        got = compare_means(big_a, big_b, n_boot=6000, level=level).iloc[0]
        sd = math.sqrt(big_a[0].var() / 400 + big_b[0].var() / 400)
        assert got["upper"] - got["lower"] == pytest.approx(2 * z * sd, rel=0.08)


def test_comparisons_cover_classes_in_both_datasets_at_their_minimum_sizes() -> None:
    seven, six = np.linspace(0.1, 0.7, 7), np.linspace(0.1, 0.6, 6)
    paper = compare_paper({0: seven, 1: seven, 2: six, 3: seven}, {0: seven + 0.1, 1: six, 2: seven, 4: seven})
    assert paper["class"].tolist() == [0]  # 7 values in both; 1 and 2 have 6 in one; 3 and 4 are in one dataset
    assert list(paper.columns) == ["class", "mean_a", "mean_b", "delta", "lower", "upper", "significantly_lower",
                                   "significantly_higher"]  # fmt: skip
    assert (paper.loc[0, "mean_a"], paper.loc[0, "mean_b"]) == pytest.approx((0.4, 0.5))
    rng = np.random.default_rng(0)
    emb = _unit(rng.normal(size=(40, 5)))
    labels_a = np.repeat([0, 1, 2, 3], [4, 3, 4, 4])
    labels_b = np.repeat([0, 1, 2, 5], [4, 4, 3, 4])
    table = compare_bootstrap(emb[:15], labels_a, emb[15:30], labels_b, n_boot=50)
    assert table["class"].tolist() == [0]  # ≥ 4 images in both, and in both datasets
    assert table.equals(compare_bootstrap(emb[:15], labels_a, emb[15:30], labels_b, n_boot=50, seed=0, cap=100,
                                          min_images=4))  # fmt: skip
    from laionet.evaluation.stats import proportions

    empty = proportions(table.iloc[0:0])
    assert empty["classes"] == 0 and math.isnan(empty["lower"]) and math.isnan(empty["higher"])


def test_image_bootstrap_draws_every_image() -> None:
    """Image 0 is the only one unlike the others: only resamples that draw it have a mean below 1."""
    emb_a = np.array([[1.0, 0.0]] + [[0.0, 1.0]] * 4)
    constant = _unit(np.eye(5) + 1.0)
    labels = np.zeros(5, dtype=int)
    row = compare_bootstrap(emb_a, labels, constant, labels, n_boot=400).iloc[0]
    assert row["lower"] < row["upper"] == pytest.approx(1 - 7 / 8)  # B: cosine 7/8 between any two images


def test_recall_difference_edges() -> None:
    a = pd.DataFrame({"class": [0, 1, 2], "n": [4, 0, 10], "correct@1": [2, 0, 10], "recall@1": [0.5, np.nan, 1.0]})
    b = pd.DataFrame({"class": [0, 1, 2], "n": [4, 5, 0], "correct@1": [2, 5, 0], "recall@1": [0.5, 1.0, np.nan]})
    for method in ("newcombe", "bootstrap"):
        table = recall_difference(a, b, 1, method=method)  # type: ignore[arg-type]
        assert table["class"].tolist() == [0]  # classes unscored in either are left out
        assert list(table.columns) == ["class", "n_a", "n_b", "recall_a", "recall_b", "delta", "lower", "upper",
                                       "significantly_lower", "significantly_higher"]  # fmt: skip
        assert table[["n_a", "n_b"]].values.tolist() == [[4, 4]] and table["recall_a"].tolist() == [0.5]
    boot = recall_difference(a, b, 1, method="bootstrap")
    assert boot.equals(recall_difference(a, b, 1, method="bootstrap", n_boot=1000, seed=0, level=0.95))
    empty = recall_difference(a.iloc[1:2], b, 1, method="bootstrap")
    assert empty.empty
    # a worked example at 90 %: the Wilson intervals at z = 1.6449
    row = recall_difference(_table([20], [15]), _table([20], [5]), 1, level=0.90).iloc[0]
    (la, ua), (lb, ub) = _wilson_by_hand(15, 20, 1.6448536269514722), _wilson_by_hand(5, 20, 1.6448536269514722)
    assert (row["lower"], row["upper"]) == pytest.approx((0.5 - math.hypot(0.75 - la, ub - 0.25),
                                                          0.5 + math.hypot(ua - 0.75, 0.25 - lb)))  # fmt: skip
    assert bool(row["significantly_higher"]) and not bool(row["significantly_lower"])
    zero = pd.DataFrame({"class": [0], "n_a": [1], "n_b": [1], "upper": [0.0], "lower": [0.0]})
    assert not (zero["upper"] < 0).any()  # a bound at exactly 0 is not significant (strict inequalities)
    tie = recall_difference(_table([50], [50]), _table([50], [50]), 1, method="bootstrap").iloc[0]
    assert (tie["lower"], tie["upper"]) == (0.0, 0.0)
    assert not tie["significantly_lower"] and not tie["significantly_higher"]


# the seeded draws, pinned exactly (mutation testing) ----------------------------------------------------------------
# Each class's generator is np.random.default_rng([stream, seed mod 2⁶⁴, class key]) (stream 0: the image sample,
# 1: bootstrap resamples, 2: the matched resample, 3: the pooled pair draws; key: a non-negative integer class itself,
# any other label 2³² + CRC-32 of its text): the tests below rebuild those streams and recompute every statistic with
# plain loops, so a changed seed, stream, default or draw changes a pinned value.


def _stream(stream: int, seed: int, cls: object) -> np.random.Generator:
    key = cls if isinstance(cls, int) and not isinstance(cls, bool) and cls >= 0 else 2**32 + zlib.crc32(
        str(cls).encode())  # fmt: skip
    return np.random.default_rng([stream, seed % 2**64, key])


def _first_draws(rng: np.random.Generator) -> list[int]:
    return rng.integers(0, 2**62, size=4).tolist()


def test_class_rng_seeds_from_stream_seed_and_class() -> None:
    from laionet.evaluation.stats import BOOTSTRAP, POOL, class_rng

    assert _first_draws(class_rng(0, 5)) == _first_draws(np.random.default_rng([0, 0, 5]))
    assert _first_draws(class_rng(0, np.int64(5))) == _first_draws(np.random.default_rng([0, 0, 5]))  # numpy scalar
    assert _first_draws(class_rng(3, 0, BOOTSTRAP)) == _first_draws(np.random.default_rng([1, 3, 0]))  # class 0
    assert _first_draws(class_rng(5, 1)) == _first_draws(np.random.default_rng([0, 5, 1]))
    for label in ("cat", np.str_("cat"), -3, True, 2.5):  # not a non-negative integer: by the CRC-32 of its text
        key = 2**32 + zlib.crc32(str(label).encode())
        assert _first_draws(class_rng(7, label, POOL)) == _first_draws(np.random.default_rng([3, 7, key]))
    assert _first_draws(class_rng(-1, 5)) == _first_draws(np.random.default_rng([0, 2**64 - 1, 5]))  # seed mod 2⁶⁴
    assert _first_draws(class_rng(2**64 + 5, 5)) == _first_draws(np.random.default_rng([0, 5, 5]))


def test_sample_by_class_draws_the_seeded_sample_without_replacement() -> None:
    from laionet.evaluation.stats import sample_by_class

    labels = np.random.default_rng(1).permutation(np.repeat([2, 5, 9], [101, 100, 3]))
    out = sample_by_class(labels)  # defaults: at most 100 per class, seed 0
    assert list(out) == [2, 5, 9] and all(type(k) is int for k in out)  # plain Python keys, not numpy scalars
    positions = np.flatnonzero(labels == 2)
    expected = sorted(_stream(0, 0, 2).choice(positions, size=100, replace=False).tolist())
    assert out[2].tolist() == expected and len(set(expected)) == 100
    assert (
        out[5].tolist() == np.flatnonzero(labels == 5).tolist()
        and out[9].tolist() == np.flatnonzero(labels == 9).tolist()
    )
    seeded = sample_by_class(labels, cap=3, seed=6)
    for cls in (2, 5):
        positions = np.flatnonzero(labels == cls)
        assert seeded[cls].tolist() == sorted(_stream(0, 6, cls).choice(positions, size=3, replace=False).tolist())
    texts = sample_by_class(np.array(["b", "a", "b"]))
    assert list(texts) == ["a", "b"] and all(type(k) is str for k in texts)
    objects = sample_by_class(np.array(["b", "a", "b"], dtype=object))  # elements without .item()
    assert list(objects) == ["a", "b"] and objects["b"].tolist() == [0, 2]


def test_pair_similarities_compute_in_float64() -> None:
    from laionet.evaluation.stats import pair_similarities

    emb = np.array([[0.1, 0.2, 0.3], [0.7, 0.3, 0.1], [0.2, 0.9, 0.4]], dtype=np.float32)
    rows = [[float(v) for v in row] for row in emb]  # the float32 values, exactly, as Python floats
    expected = [sum(a * b for a, b in zip(rows[i], rows[j], strict=True)) for i, j in ((0, 1), (0, 2), (1, 2))]
    got = pair_similarities(emb)
    assert got.dtype == np.float64 and got.tolist() == pytest.approx(expected, rel=1e-14)


def test_intra_class_uses_the_seeded_sample_and_is_quiet_on_single_images() -> None:
    from laionet.evaluation.stats import intra_class

    emb = _unit(np.random.default_rng(3).normal(size=(9, 4)))
    labels = np.array([0, 0, 1, 0, 0, 1, 0, 2, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a single image has no pair: NaN, without a "mean of empty slice" warning
        table = intra_class(emb, labels, cap=2, seed=4).set_index("class")
    for cls in (0, 1):
        i, j = sorted(_stream(0, 4, cls).choice(np.flatnonzero(labels == cls), size=2, replace=False))
        assert table.loc[cls, "mean"] == pytest.approx(float(emb[i] @ emb[j]), rel=1e-12)
        assert table.loc[cls, "std"] == 0
    assert table.loc[2, "n"] == 1 and math.isnan(table.loc[2, "mean"]) and math.isnan(table.loc[2, "std"])
    empty = intra_class(np.empty((0, 4)), np.array([], dtype=int))
    assert empty.empty and list(empty.columns) == ["class", "n", "n_pairs", "mean", "std"]


def test_image_bootstrap_exact_interval_from_the_seeded_resamples() -> None:
    """Class 0: 8 images in A, 6 in B, 4 sampled of each (A's sample from seed, B's from seed + 1); class 1: too few
    images in A (left out, also before a class that is kept); class 2: 4 each; class 3: only in B."""
    rng = np.random.default_rng(8)
    labels_a = np.array([1, 0, 0, 2, 0, 0, 2, 0, 1, 2, 2, 0, 0, 0])
    labels_b = np.array([0, 3, 1, 0, 2, 0, 1, 0, 2, 1, 0, 2, 2, 3, 0, 1, 3, 3])
    emb_a, emb_b = _unit(rng.normal(size=(14, 5)) + 0.5), _unit(rng.normal(size=(18, 5)) + 0.2)
    seed, n_boot = 3, 300
    table = compare_bootstrap(emb_a, labels_a, emb_b, labels_b, cap=4, n_boot=n_boot, seed=seed)
    assert table["class"].tolist() == [0, 2]
    for row in table.itertuples():
        cls = row[1]
        chosen = []
        for emb, labels, s in ((emb_a, labels_a, seed), (emb_b, labels_b, seed + 1)):
            idx = np.flatnonzero(labels == cls)
            if len(idx) > 4:
                idx = np.sort(_stream(0, s, cls).choice(idx, size=4, replace=False))
            chosen.append(emb[idx])
        grams = [e @ e.T for e in chosen]
        means = [_distinct_pair_mean(g, np.arange(len(g))) for g in grams]
        boot = _stream(1, seed, cls)
        draws_a = boot.integers(0, len(grams[0]), size=(n_boot, len(grams[0])))
        draws_b = boot.integers(0, len(grams[1]), size=(n_boot, len(grams[1])))
        diffs = [_distinct_pair_mean(grams[0], da) - _distinct_pair_mean(grams[1], db)
                 for da, db in zip(draws_a, draws_b, strict=True)]  # fmt: skip
        lo, hi = np.quantile([d for d in diffs if math.isfinite(d)], [0.025, 0.975])
        got = table.set_index("class").loc[cls]
        assert (got["mean_a"], got["mean_b"], got["delta"]) == pytest.approx((means[0], means[1], means[0] - means[1]))
        assert (got["lower"], got["upper"]) == pytest.approx((lo, hi), abs=1e-6)  # the Gram matrix is float32
    empty = compare_bootstrap(emb_a, labels_a, emb_b, labels_b + 10)  # no class in both
    assert empty.empty and list(empty.columns) == ["class", "mean_a", "mean_b", "delta", "lower", "upper",
                                                   "significantly_lower", "significantly_higher"]  # fmt: skip


def test_image_bootstrap_defaults_are_100_images_and_1000_resamples() -> None:
    rng = np.random.default_rng(2)
    emb_a, emb_b = _unit(rng.normal(size=(101, 4)) + 1.0), _unit(rng.normal(size=(101, 4)) + 1.0)
    labels = np.zeros(101, dtype=int)
    default = compare_bootstrap(emb_a, labels, emb_b, labels)
    explicit = compare_bootstrap(emb_a, labels, emb_b, labels, cap=100, n_boot=1000, seed=0, level=0.95, min_images=4)
    pd.testing.assert_frame_equal(default, explicit)
    assert not default.equals(compare_bootstrap(emb_a, labels, emb_b, labels, cap=101))


def test_image_bootstrap_single_image_resamples_are_dropped_quietly() -> None:
    """A resample that draws one image only has no pair: 0/0, or ±x/0 when the float32 self-similarity is not exactly 1
    (class 3 of A: norms of √(1 − 2⁻²⁴), a unit vector as float32 storage leaves it). Left out, without a
    RuntimeWarning; with two images per class, every resample kept holds both: the interval is the one cosine
    difference."""
    rng = np.random.default_rng(0)
    emb_a = np.vstack([_unit(rng.normal(size=(6, 7))), _unit(rng.normal(size=(3, 7))) * math.sqrt(1 - 2**-24)])
    emb_b = np.vstack([[[1.0, 0] + [0] * 5, [0, 1] + [0] * 5] * 2, [[0.6, 0.8] + [0] * 5, [0.8, 0.6] + [0] * 5],
                       _unit(rng.normal(size=(3, 7)))])  # fmt: skip
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = compare_bootstrap(emb_a, labels, emb_b, labels, n_boot=200, min_images=2)
    assert table["class"].tolist() == [0, 1, 2, 3] and np.isfinite(table[["lower", "upper"]].to_numpy()).all()
    for cls in (0, 1, 2):
        a, b = emb_a[2 * cls : 2 * cls + 2], emb_b[2 * cls : 2 * cls + 2]
        assert table.loc[cls, ["lower", "upper"]].tolist() == pytest.approx([a[0] @ a[1] - b[0] @ b[1]] * 2, abs=1e-6)


def test_compare_means_exact_interval_from_the_seeded_resamples() -> None:
    from laionet.evaluation.stats import compare_means

    a = {0: np.array([0.1, 0.4, 0.35]), 1: np.array([0.9]), 2: np.array([0.2, 0.3, 0.5, 0.6]), 4: np.array([1.0, 2])}
    b = {0: np.array([0.3, 0.2, 0.25, 0.1]), 1: np.array([0.5, 0.6]), 2: np.array([0.1, 0.7]), 3: np.array([0.0, 1])}
    seed, n_boot = 5, 400
    table = compare_means(a, b, n_boot=n_boot, seed=seed, level=0.9).set_index("class")
    assert table.index.tolist() == [0, 2]  # 1: a single value in A; 3, 4: in one dataset only; 2: two values in B
    for cls in (0, 2):
        rng = _stream(1, seed, cls)
        draws_a = rng.integers(0, len(a[cls]), size=(n_boot, len(a[cls])))
        draws_b = rng.integers(0, len(b[cls]), size=(n_boot, len(b[cls])))
        diffs = [sum(a[cls][i] for i in da) / len(da) - sum(b[cls][i] for i in db) / len(db)
                 for da, db in zip(draws_a, draws_b, strict=True)]  # fmt: skip
        mean_a, mean_b = sum(a[cls]) / len(a[cls]), sum(b[cls]) / len(b[cls])
        row = table.loc[cls]
        assert row[["mean_a", "mean_b", "delta"]].tolist() == pytest.approx([mean_a, mean_b, mean_a - mean_b])
        assert row[["lower", "upper"]].tolist() == pytest.approx(np.quantile(diffs, [0.05, 0.95]).tolist(), abs=1e-12)
        assert (row["n_a"], row["n_b"]) == (len(a[cls]), len(b[cls]))
    single = np.array([0.1, 0.2, 0.7], dtype=np.float32)  # float32 values are averaged in float64
    row = compare_means({0: single}, {0: single[:2]}, n_boot=20).iloc[0]
    by_loop = sum(float(v) for v in single) / 3, sum(float(v) for v in single[:2]) / 2
    assert (row["mean_a"], row["mean_b"]) == pytest.approx(by_loop, rel=1e-15, abs=0)
    tie = compare_means({0: np.array([0.5, 0.5])}, {0: np.array([0.5, 0.5])}).iloc[0]
    assert (tie["lower"], tie["upper"]) == (0.0, 0.0)  # bounds at exactly 0: neither lower nor higher
    assert not tie["significantly_lower"] and not tie["significantly_higher"]
    empty = compare_means(a, {9: np.array([1.0, 2.0])})
    assert empty.empty and list(empty.columns)[-4:] == ["significantly_lower", "significantly_higher", "n_a", "n_b"]
    assert list(empty.columns)[:6] == ["class", "mean_a", "mean_b", "delta", "lower", "upper"]


def test_paper_comparison_without_classes_in_both_has_the_columns() -> None:
    empty = compare_paper({0: np.arange(10.0)}, {1: np.arange(10.0)})
    assert empty.empty and list(empty.columns) == ["class", "mean_a", "mean_b", "delta", "lower", "upper",
                                                   "significantly_lower", "significantly_higher"]  # fmt: skip


def test_pooled_and_matched_draws_are_the_seeded_ones() -> None:
    from laionet.evaluation.stats import matched_pair_counts, matched_resample, pooled_pairs

    pairs = {"a": np.arange(150.0), "b": np.arange(3.0), "c": np.array([])}
    expected = np.concatenate([_stream(3, 0, "a").choice(pairs["a"], size=100, replace=True),
                               _stream(3, 0, "b").choice(pairs["b"], size=3, replace=True)])  # fmt: skip
    assert pooled_pairs(pairs).tolist() == expected.tolist()  # defaults: ≤ 100 per class, seed 0
    counts = {"a": 1, "b": 5, "c": 2, "d": 4}  # a: one draw; b: more draws than pairs; c: no pairs; d: not in pairs
    expected = np.concatenate([_stream(3, 9, "a").choice(pairs["a"], size=1, replace=True),
                               _stream(3, 9, "b").choice(pairs["b"], size=5, replace=True)])  # fmt: skip
    assert pooled_pairs(pairs, seed=9, counts=counts).tolist() == expected.tolist()
    none = pooled_pairs({})
    assert none.shape == (0,) and none.dtype == np.float64
    assert matched_pair_counts({"x": np.zeros(150), "w": np.ones(3)}, {"x": np.zeros(120), "w": np.array([])}) == {
        "x": 100}  # fmt: skip
    values = {"a": np.arange(5.0), "b": np.arange(3.0)}
    out = matched_resample(values, {"a": 7, "b": 2}, seed=4)
    assert out["a"].tolist() == _stream(2, 4, "a").choice(values["a"], size=7, replace=True).tolist()
    assert out["b"].tolist() == _stream(2, 4, "b").choice(values["b"], size=2, replace=True).tolist()


def test_spearman_interval_exact_from_the_seeded_resamples_at_the_defaults() -> None:
    x = [0.0, 0.25, 0.25, 1.0, 0.5, 0.75, 0.5, 0.1]  # a range of exactly 1
    y = [0.1, 0.5, 1.0, 1.0, 0.5, 0.5, 0.0, 0.2]
    rho, lo, hi = spearman_interval(np.array(x), np.array(y))  # 1000 resamples, seed 0
    draws = np.random.default_rng(0).integers(0, len(x), size=(1000, len(x)))
    rhos = []
    for idx in draws:
        xs, ys = [x[i] for i in idx], [y[i] for i in idx]
        rhos.append(_pearson(_average_ranks(xs), _average_ranks(ys)) if len(set(xs)) > 1 and len(set(ys)) > 1 else
                    math.nan)  # fmt: skip
    assert rho == pytest.approx(_pearson(_average_ranks(x), _average_ranks(y)))
    assert (lo, hi) == pytest.approx(tuple(np.nanquantile(rhos, [0.025, 0.975])), abs=1e-12)
    flags = np.array([0, 1, 1, 1, 0, 1, 0, 0], dtype=bool)  # booleans count as 0 / 1
    as_float = spearman_interval(flags.astype(float), np.array(y), n_boot=50)
    assert spearman_interval(flags, np.array(y), n_boot=50) == as_float
    assert spearman_interval(np.array(y), flags, n_boot=50) == spearman_interval(np.array(y), flags.astype(float),
                                                                                 n_boot=50)  # fmt: skip
    with_nan = spearman_interval(np.array([*x, math.nan]), np.array([*y, 0.3]), n_boot=50)  # the point is left out
    assert with_nan == spearman_interval(np.array(x), np.array(y), n_boot=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one constant variable: NaN without an all-NaN warning
        assert all(math.isnan(v) for v in spearman_interval(np.ones(8), np.array(y), n_boot=50))


def test_pearson_rows_centres_each_row_on_its_own_mean() -> None:
    from laionet.evaluation.stats import _pearson_rows

    a = np.array([[1.0, 2.0, 4.0, 3.0], [10.0, 30.0, 20.0, 60.0], [2.0, 2.0, 2.0, 2.0]])
    b = np.array([[2.0, 1.0, 5.0, 4.0], [0.5, 0.1, 0.9, 0.7], [1.0, 2.0, 3.0, 4.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a constant row: NaN, quietly
        got = _pearson_rows(a, b)
    assert got[:2].tolist() == pytest.approx([_pearson(list(a[r]), list(b[r])) for r in range(2)], rel=1e-12)
    assert math.isnan(got[2])


def test_ks_statistic_of_an_empty_sample_is_nan_quietly() -> None:
    from laionet.evaluation.stats import ks_statistic

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(ks_statistic(np.array([]), np.array([1.0, 2.0])))
        assert math.isnan(ks_statistic(np.array([1.0]), np.array([])))


def _jeffreys_shifts(
    n: list[int], correct: list[int], w: list[float], n_boot: int, rng: np.random.Generator
) -> list[float]:
    """acc* − acc(p̃) per resample: each class's correct* ~ Binomial(n, p̃), p̃ = (c + ½)/(n + 1), drawn as one
    (n_boot × classes) array from ``rng``; weighted sums by plain loops."""
    smoothed = [(c + 0.5) / (m + 1) for c, m in zip(correct, n, strict=True)]
    centre = sum(s * wi for s, wi in zip(smoothed, w, strict=True))
    draws = rng.binomial(np.array(n), np.array(smoothed), size=(n_boot, len(n)))
    return [sum(d[j] / n[j] * w[j] for j in range(len(n))) - centre for d in draws]


def test_accuracy_bootstrap_exact_from_the_seeded_draws() -> None:
    n, correct = [71, 33, 127], [50, 3, 120]  # large enough that the quantiles move with every draw
    recall = [c / m for c, m in zip(correct, n, strict=True)]
    acc = sum(recall) / 3
    shifts = _jeffreys_shifts(n, correct, [1 / 3] * 3, 1000, np.random.default_rng(0))
    lo, hi = np.quantile(shifts, [0.025, 0.975])
    expected = (acc, max(acc + lo, 0.0), min(acc + hi, 1.0))
    assert bootstrap_interval(_table(n, correct), 1) == pytest.approx(expected, abs=1e-12)  # 1000 draws, seed 0
    without_counts = _table(n, correct).drop(columns="correct@1")  # counts from recall × n
    assert bootstrap_interval(without_counts, 1) == pytest.approx(expected, abs=1e-12)
    # the counts, when given, are the ones drawn from (a recall rounded to 2 digits: 0.71 × 700 = 497, not 500)
    rounded = pd.DataFrame({"class": [0, 1], "n": [700, 3], "correct@1": [500, 0], "recall@1": [0.71, 0.0]})
    shifts = _jeffreys_shifts([700, 3], [500, 0], [0.5, 0.5], 200, np.random.default_rng(1))
    lo, hi = np.quantile(shifts, [0.025, 0.975])
    assert bootstrap_interval(rounded, 1, n_boot=200, seed=1) == pytest.approx((0.355, 0.355 + lo, 0.355 + hi))
    # the reference's LAION weighting: the shares as they are (Σ = 0.6 over the scored classes)
    shares = pd.Series({2: 0.3, 0: 0.2, 1: 0.1, 9: 0.4})
    w = [0.2, 0.1, 0.3]
    shifts = _jeffreys_shifts(n, correct, w, 300, np.random.default_rng(4))
    lo, hi = np.quantile(shifts, [0.05, 0.95])
    acc = sum(r * wi for r, wi in zip(recall, w, strict=True))
    got = bootstrap_interval(_table(n, correct), 1, shares, n_boot=300, seed=4, level=0.9, normalize=False)
    assert got == pytest.approx((acc, acc + lo, acc + hi), abs=1e-12)
    # the binomial bootstrap: percentile interval of Σ w·Binomial(n, p̂)/n
    draws = np.random.default_rng(2).binomial(np.array(n), np.array(recall), size=(300, 3))
    accs = [sum(d[j] / n[j] for j in range(3)) / 3 for d in draws]
    got = bootstrap_interval(_table(n, correct), 1, n_boot=300, seed=2, method="binomial")
    assert got == pytest.approx((sum(recall) / 3, *np.quantile(accs, [0.025, 0.975])), abs=1e-12)


def test_compared_accuracy_exact_from_the_seeded_draws_and_clipped_at_minus_one() -> None:
    a, b = _table([6, 4, 9], [2, 4, 5]), _table([8, 5, 3], [7, 1, 3])
    rng = np.random.default_rng(0)
    shifts_a = _jeffreys_shifts([6, 4, 9], [2, 4, 5], [1 / 3] * 3, 1000, rng)
    shifts_b = _jeffreys_shifts([8, 5, 3], [7, 1, 3], [1 / 3] * 3, 1000, rng)  # A's then B's draws, one stream
    lo, hi = np.quantile([x - y for x, y in zip(shifts_a, shifts_b, strict=True)], [0.025, 0.975])
    acc_a, acc_b = (2 / 6 + 1 + 5 / 9) / 3, (7 / 8 + 1 / 5 + 1) / 3
    out = compared_accuracy(a, b, 1)
    assert out["difference"] == pytest.approx(acc_a - acc_b)
    assert (out["lower"], out["upper"]) == pytest.approx((acc_a - acc_b + lo, acc_a - acc_b + hi), abs=1e-12)
    # A wrong and B right on single images: Δ = −1 and the recentred interval would reach below −1
    worst = compared_accuracy(_table([1, 1], [0, 0]), _table([1, 1], [1, 1]), 1)
    assert worst["difference"] == -1.0 and worst["lower"] == -1.0 and -1.0 < worst["upper"] < 1.0


def test_paper_interval_aligns_shares_by_class() -> None:
    table = _table([10, 4, 6], [5, 1, 6])
    shares = pd.Series({2: 0.5, 0: 0.3, 7: 0.2})  # another order, class 1 without a share, class 7 not scored
    h = [(hi - lo) / 2 for lo, hi in (_wilson_by_hand(5, 10), _wilson_by_hand(6, 6))]
    acc = (0.3 * 0.5 + 0.5 * 1.0) / 0.8
    err = math.sqrt((0.3 * h[0]) ** 2 + (0.5 * h[1]) ** 2) / 0.8
    assert paper_interval(table, 1, shares) == pytest.approx((acc, acc - err, acc + err))


def test_recall_difference_bootstrap_exact_from_the_seeded_draws() -> None:
    a = _table([53, 8, 71], [31, 8, 50])
    b = _table([67, 1, 89], [20, 1, 80])  # class 1: a single image in B
    table = recall_difference(a, b, 1, method="bootstrap")  # 1000 draws, seed 0
    assert table["class"].tolist() == [0, 1, 2]
    for cls, (na, ca, nb, cb) in enumerate([(53, 31, 67, 20), (8, 8, 1, 1), (71, 50, 89, 80)]):
        rng = _stream(1, 0, cls)
        da = rng.binomial(na, ca / na, size=1000) / na
        db = rng.binomial(nb, cb / nb, size=1000) / nb
        lo, hi = np.quantile([x - y for x, y in zip(da, db, strict=True)], [0.025, 0.975])
        assert table.loc[cls, ["lower", "upper"]].tolist() == pytest.approx([lo, hi], abs=1e-12)


def test_recall_difference_newcombe_uses_the_counts_and_keeps_the_dtypes() -> None:
    a = pd.DataFrame({"class": [0], "n": [300.0], "correct@1": [100], "recall@1": [0.33]})  # recall rounded
    b = pd.DataFrame({"class": [0], "n": [300.0], "correct@1": [200], "recall@1": [0.67]})
    row = recall_difference(a, b, 1).iloc[0]
    (la, ua), (lb, ub) = _wilson_by_hand(100, 300), _wilson_by_hand(200, 300)
    lower = 0.33 - 0.67 - math.sqrt((0.33 - la) ** 2 + (ub - 0.67) ** 2)
    upper = 0.33 - 0.67 + math.sqrt((ua - 0.33) ** 2 + (0.67 - lb) ** 2)
    assert (row["lower"], row["upper"]) == pytest.approx((lower, upper), rel=1e-12)
    ints = pd.DataFrame({"class": [0, 1], "n": [4.0, 2.0], "correct@1": [4, 0], "recall@1": [1, 0]})  # int recalls
    table = recall_difference(ints, ints, 1)
    assert table["n_a"].dtype == np.int64 and table["n_b"].dtype == np.int64
    assert all(table[c].dtype == np.float64 for c in ("recall_a", "recall_b", "delta", "lower", "upper"))


def test_weighted_accuracy_equal_weights_and_no_weighted_class() -> None:
    recall = pd.Series({0: 0.5, 1: 1.0, 2: 0.25})
    assert weighted_accuracy(recall, normalize=False) == 1.75  # weights of 1, not renormalised: Σ recall
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(weighted_accuracy(recall, pd.Series({9: 1.0})))  # no scored class has a weight


def test_wilson_in_float64_and_nan_without_samples() -> None:
    c, n = np.array([1, 7], dtype=np.float32), np.array([3, 11], dtype=np.float32)
    lo, hi = wilson_interval(c, n)
    expected = [_wilson_by_hand(1, 3), _wilson_by_hand(7, 11)]
    assert lo.tolist() == pytest.approx([e[0] for e in expected], rel=1e-13)
    assert hi.tolist() == pytest.approx([e[1] for e in expected], rel=1e-13)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lo, hi = wilson_interval(np.array([0]), np.array([0]))
    assert math.isnan(lo[0]) and math.isnan(hi[0])


def test_z_value() -> None:
    from statistics import NormalDist

    from laionet.evaluation.metrics import z_value

    assert z_value(0.95) == Z  # the constant (NormalDist gives 1.9599639845400536)
    assert z_value(0.9) == NormalDist().inv_cdf(0.95) and z_value(0.99) == NormalDist().inv_cdf(0.995)
