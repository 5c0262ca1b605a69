"""Intervals that hold their level: seeded simulations with a known truth (issue 13, items 5-7)."""

import numpy as np
import pandas as pd
import pytest

from laionet.evaluation.metrics import bootstrap_interval, recall_difference
from laionet.evaluation.stats import spearman_interval

REGIMES = {  # the three regimes of the issue: LAIONet's tail of tiny classes, a typical spread, ImageNet val's 50
    "1-2 images, 164 classes": lambda rng: rng.integers(1, 3, size=164),
    "5-60 images, 400 classes": lambda rng: rng.integers(5, 61, size=400),  # 900 in the benchmark
    "50 images, 200 classes": lambda rng: np.full(200, 50),
}


def _coverage(sizes, method: str | None = None, trials: int = 200, seed: int = 0) -> float:
    """Share of simulated datasets whose interval holds the true equally-weighted accuracy (mean true recall)."""
    rng = np.random.default_rng(seed)
    n = sizes(rng)
    covered = 0
    for t in range(trials):
        true = rng.beta(2.5, 0.8, size=len(n))  # recall-like: mean 0.76, many classes near 1
        correct = rng.binomial(n, true)
        table = pd.DataFrame({"class": range(len(n)), "n": n, "correct@1": correct, "recall@1": correct / n})
        chosen = {"method": method} if method else {}  # None: the default method
        _, lo, hi = bootstrap_interval(table, 1, n_boot=250, seed=t, **chosen)
        covered += lo <= true.mean() <= hi
    return covered / trials


@pytest.mark.parametrize("regime", list(REGIMES))
def test_accuracy_interval_holds_its_level_in_every_regime(regime: str) -> None:
    assert _coverage(REGIMES[regime]) >= 0.93


def test_default_accuracy_interval_is_the_smoothed_one_and_the_binomial_bootstrap_under_covers_tiny_classes() -> None:
    n = np.array([1, 1, 2, 2, 1])
    table = pd.DataFrame({"class": range(5), "n": n, "correct@1": [1, 1, 2, 0, 0], "recall@1": [1, 1, 1, 0, 0]})
    # every recall is 0 or 1: a binomial resample has no variance at all
    assert bootstrap_interval(table, 1, method="binomial")[1:] == pytest.approx((0.6, 0.6))
    acc, lo, hi = bootstrap_interval(table, 1)
    assert acc == pytest.approx(0.6) and lo < 0.45 and hi > 0.75
    assert _coverage(REGIMES["1-2 images, 164 classes"], "binomial", trials=100) < 0.8


def test_weighted_accuracy_interval_uses_the_weights() -> None:
    table = pd.DataFrame({"class": [0, 1], "n": [40, 40], "correct@1": [40, 20], "recall@1": [1.0, 0.5]})
    weights = pd.Series({0: 0.9, 1: 0.1})
    acc, lo, hi = bootstrap_interval(table, 1, weights, n_boot=2000)
    assert acc == pytest.approx(0.95)
    # the spread is that of 0.9·p0* + 0.1·p1*: about 1.96·√(0.81·v0 + 0.01·v1), v = p̃(1−p̃)/40
    v0, v1 = (40.5 / 41) * (0.5 / 41) / 40, (20.5 / 41) * (20.5 / 41) / 40
    assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.81 * v0 + 0.01 * v1), rel=0.15)
    with pytest.raises(ValueError, match="unknown method"):
        bootstrap_interval(table, 1, method="exact")  # type: ignore[arg-type]


def test_recall_difference_default_covers_small_classes() -> None:
    """Many independent classes at once: A has 1-10 images per class, B 50; coverage of the true p_a − p_b."""
    rng = np.random.default_rng(7)
    m = 4000
    na, nb = rng.choice([1, 2, 3, 5, 10], size=m), np.full(m, 50)
    pa, pb = rng.beta(2.5, 0.8, size=m), rng.beta(2.5, 0.8, size=m)
    ca, cb = rng.binomial(na, pa), rng.binomial(nb, pb)
    a = pd.DataFrame({"class": range(m), "n": na, "correct@1": ca, "recall@1": ca / na})
    b = pd.DataFrame({"class": range(m), "n": nb, "correct@1": cb, "recall@1": cb / nb})
    table = recall_difference(a, b, 1)
    covered = ((table["lower"] <= pa - pb) & (pa - pb <= table["upper"])).mean()
    assert covered >= 0.93
    boot = recall_difference(a, b, 1, method="bootstrap", n_boot=200)
    assert ((boot["lower"] <= pa - pb) & (pa - pb <= boot["upper"])).mean() < 0.9  # why it is no longer the default


def test_recall_difference_two_of_two_is_not_significantly_above_nine_in_ten() -> None:
    a = pd.DataFrame({"class": [0], "n": [2], "correct@1": [2], "recall@1": [1.0]})
    b = pd.DataFrame({"class": [0], "n": [50], "correct@1": [45], "recall@1": [0.9]})
    row = recall_difference(a, b, 1).iloc[0]
    assert row["lower"] < 0 < row["upper"] and not row["significantly_higher"]


def test_spearman_interval_holds_the_estimate_under_heavy_ties() -> None:
    """Recall-like y with three values against a continuous x: the estimate lies inside its interval."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=300)
        y = np.clip(np.round((1 / (1 + np.exp(-2 * x)) + rng.normal(0, 0.05, size=300)) * 2), 0, 2) / 2
        rho, lo, hi = spearman_interval(x, y, n_boot=500, seed=0)
        assert lo <= rho <= hi
        assert hi - lo < 0.1


def test_accuracy_interval_stays_within_zero_and_one() -> None:
    """Every class all right (or all wrong): the recentred smoothed draws must not carry a bound past 1 (or 0)."""
    perfect = pd.DataFrame({"class": range(5), "n": [1, 2, 3, 4, 5], "correct@1": [1, 2, 3, 4, 5], "recall@1": 1.0})
    acc, lo, hi = bootstrap_interval(perfect, 1)
    assert acc == 1.0 and lo < 1.0 and hi == 1.0
    wrong = perfect.assign(**{"correct@1": 0, "recall@1": 0.0})
    acc, lo, hi = bootstrap_interval(wrong, 1)
    assert acc == 0.0 and lo == 0.0 and hi > 0.0
    from laionet.evaluation.metrics import compared_accuracy

    out = compared_accuracy(perfect, wrong, 1)
    assert out["difference"] == 1.0 and out["upper"] == 1.0 and out["lower"] < 1.0
