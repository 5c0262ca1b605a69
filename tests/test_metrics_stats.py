import numpy as np
import pandas as pd
import pytest

from laionet.evaluation.metrics import (
    bootstrap_interval,
    paper_interval,
    per_class_recall,
    recall_difference,
    weighted_accuracy,
    wilson_interval,
)
from laionet.evaluation.stats import (
    compare_bootstrap,
    compare_paper,
    intra_class,
    pair_similarities,
    pooled_pairs,
    proportions,
    sample_by_class,
    spearman_interval,
)


def test_per_class_recall_by_hand() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    topk = np.array(
        [
            [0, 5, 6],  # class 0: hit@1
            [5, 0, 6],  # class 0: hit@2 only
            [-1, -1, -1],  # class 0: no prediction → excluded, counted missing
            [7, 8, 9],  # class 1: miss
            [8, 9, 1],  # class 1: hit@3
            [2, 0, 1],  # class 2: hit@1
        ]
    )
    table = per_class_recall(labels, topk, ks=(1, 3)).set_index("class")
    assert table["n"].tolist() == [2, 2, 1] and table["missing"].tolist() == [1, 0, 0]
    assert table["recall@1"].tolist() == [0.5, 0.0, 1.0]
    assert table["recall@3"].tolist() == [1.0, 0.5, 1.0]
    assert weighted_accuracy(table["recall@1"]) == pytest.approx(0.5)  # (0.5 + 0 + 1) / 3
    shares = pd.Series({0: 0.7, 1: 0.2, 2: 0.1, 99: 5.0})  # LAION shares; class 99 not evaluated
    assert weighted_accuracy(table["recall@1"], shares) == pytest.approx(0.7 * 0.5 + 0.1 * 1.0)
    with pytest.raises(ValueError, match="recall@5 needs at least 5 predictions"):
        per_class_recall(labels, topk, ks=(5,))


def test_wilson_and_the_paper_combination_on_a_worked_example() -> None:
    lo, hi = wilson_interval(np.array([8]), np.array([10]))
    assert (round(float(lo[0]), 4), round(float(hi[0]), 4)) == (0.4902, 0.9433)
    table = pd.DataFrame({"class": [0, 1], "n": [10, 10], "correct@1": [8, 5], "recall@1": [0.8, 0.5]})
    acc, low, high = paper_interval(table, 1)
    lo, hi = wilson_interval(np.array([8, 5]), np.array([10, 10]))
    half = (hi - lo) / 2
    expected = np.sqrt(np.sum(half**2)) / 2  # √Σ(w·h)² / Σw with w = 1
    assert acc == pytest.approx(0.65) and high - acc == pytest.approx(expected) and acc - low == pytest.approx(expected)


def test_class_stratified_bootstrap_covers_close_to_nominal() -> None:
    rng = np.random.default_rng(1)
    true = rng.uniform(0.2, 0.9, size=40)
    n = rng.integers(20, 60, size=40)
    covered = 0
    trials = 200
    for t in range(trials):
        correct = rng.binomial(n, true)
        table = pd.DataFrame({"class": range(40), "n": n, "correct@1": correct, "recall@1": correct / n})
        _, lo, hi = bootstrap_interval(table, 1, n_boot=400, seed=t)
        covered += lo <= true.mean() <= hi
    assert 0.89 <= covered / trials <= 0.99


def test_recall_difference_per_class_bounds() -> None:
    a = pd.DataFrame({"class": [0, 1, 2], "n": [200, 200, 5], "recall@1": [0.9, 0.5, 0.6]})
    b = pd.DataFrame({"class": [0, 1, 3], "n": [200, 200, 9], "recall@1": [0.5, 0.5, 0.1]})
    diff = recall_difference(a, b, 1, seed=0).set_index("class")
    assert list(diff.index) == [0, 1]
    assert diff.loc[0, "lower"] > 0.25 and diff.loc[0, "delta"] == pytest.approx(0.4)
    assert diff.loc[1, "lower"] < 0 < diff.loc[1, "upper"]


def _clustered(n_classes: int, per_class: int, spread: np.ndarray, seed: int, dim: int = 32):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    emb = centres[labels] + rng.normal(size=(len(labels), dim)) * spread[labels, None]
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), labels


def test_intra_class_sampling_is_random_seeded_and_capped() -> None:
    labels = np.repeat([0, 1], [300, 5])
    first, again, other = (
        sample_by_class(labels, 100, 0),
        sample_by_class(labels, 100, 0),
        sample_by_class(labels, 100, 1),
    )
    assert len(first[0]) == 100 and len(first[1]) == 5
    assert np.array_equal(first[0], again[0]) and not np.array_equal(first[0], other[0])
    assert first[0].max() > 100  # not the first 100 in storage order
    emb, labels = _clustered(3, 20, np.array([0.1, 0.5, 2.0]), seed=0)
    table = intra_class(emb, labels, cap=10).set_index("class")
    assert table["n_pairs"].tolist() == [45, 45, 45]
    assert table.loc[0, "mean"] > table.loc[1, "mean"] > table.loc[2, "mean"]


def test_bootstrap_comparison_finds_the_constructed_tighter_classes() -> None:
    """A: classes 0-9 tight, 10-19 as loose as B. A is significantly higher in exactly the first half."""
    spread_a = np.r_[np.full(10, 0.3), np.full(10, 1.0)]
    emb_a, lab_a = _clustered(20, 40, spread_a, seed=1)
    # B uses the same class centres (same seed) with every class loose, drawn with different noise
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(20, 32))
    lab_b = np.repeat(np.arange(20), 40)
    noise = np.random.default_rng(99).normal(size=(len(lab_b), 32))
    emb_b = centres[lab_b] + noise
    emb_b /= np.linalg.norm(emb_b, axis=1, keepdims=True)
    table = compare_bootstrap(emb_a, lab_a, emb_b, lab_b, cap=40, n_boot=300, seed=0)
    higher = table.set_index("class")["significantly_higher"]
    assert higher.loc[0:9].all()
    assert higher.loc[10:19].sum() <= 2  # ~5% false positives expected
    shares = proportions(table)
    assert shares["classes"] == 20 and 0.5 <= shares["higher"] <= 0.6 and shares["lower"] <= 0.1
    again = compare_bootstrap(emb_a, lab_a, emb_b, lab_b, cap=40, n_boot=300, seed=0)
    pd.testing.assert_frame_equal(table, again)  # same inputs and seed → identical table


def test_paper_comparison_reproduces_the_reference_formula() -> None:
    a = np.array([0.5, 0.6, 0.7, 0.6, 0.5, 0.6, 0.7, 0.6])
    b = np.array([0.8, 0.9, 0.8, 0.9, 0.8, 0.9, 0.8, 0.9])
    table = compare_paper({"x": a, "too_few": a[:6]}, {"x": b, "too_few": b[:6]})
    assert table["class"].tolist() == ["x"]  # classes need ≥7 values in both
    err = np.hypot(1.959963984540054 * a.std() / np.sqrt(7), 1.959963984540054 * b.std() / np.sqrt(7))
    row = table.iloc[0]
    assert row["delta"] == pytest.approx(a.mean() - b.mean())
    assert row["upper"] == pytest.approx(a.mean() - b.mean() + err)
    assert bool(row["significantly_lower"]) and not bool(row["significantly_higher"])


def test_pairs_pooling_and_spearman() -> None:
    emb = np.eye(3)
    assert pair_similarities(emb).tolist() == [0.0, 0.0, 0.0]
    pooled = pooled_pairs({"a": np.arange(500.0), "b": np.arange(3.0)}, per_class=100, seed=0)
    assert len(pooled) == 103
    from laionet.evaluation.stats import matched_pair_counts

    a = {"x": np.arange(500.0), "y": np.arange(3.0), "z": np.ones(4)}
    b = {"x": np.arange(10.0) + 1000, "y": np.ones(50)}
    counts = matched_pair_counts(a, b)
    assert counts == {"x": 10, "y": 3}  # min(#pairs A, #pairs B, 100) over the classes in both
    matched = pooled_pairs(a, seed=1, counts=counts)
    assert len(matched) == 13 and np.isin(matched[:10], a["x"]).all() and np.isin(matched[10:], a["y"]).all()
    x = np.arange(50.0)
    rho, lo, hi = spearman_interval(x, x**3, n_boot=200)
    assert rho == pytest.approx(1.0) and lo > 0.95
    noise = np.random.default_rng(0).normal(size=(2, 400))
    rho, lo, hi = spearman_interval(noise[0], noise[1], n_boot=500)
    assert lo < rho < hi and abs(rho) < 0.2
    assert 0.12 < hi - lo < 0.3  # about 2·1.96/√400 wide for independent variables


def test_matched_resampling_and_per_class_mean_comparison() -> None:
    from laionet.evaluation.stats import compare_means, matched_resample

    rng = np.random.default_rng(3)
    laion = {c: rng.normal(0.25, 0.05, size=500) for c in range(6)}  # lower own-synset similarity
    imagenet = {c: rng.normal(0.30 if c < 3 else 0.25, 0.05, size=50) for c in range(6)}
    matched = matched_resample(laion, {c: len(v) for c, v in imagenet.items()}, seed=1)
    assert {c: len(v) for c, v in matched.items()} == dict.fromkeys(range(6), 50)
    assert all(np.isin(matched[c], laion[c]).all() for c in matched)  # drawn from the class's own values
    table = compare_means(laion, imagenet, n_boot=500, seed=0).set_index("class")
    assert table.loc[0:2, "significantly_lower"].all()  # constructed: LAION lower in classes 0-2
    assert table.loc[3:5, "significantly_lower"].sum() <= 1
    again = compare_means(laion, imagenet, n_boot=500, seed=0).set_index("class")
    pd.testing.assert_frame_equal(table, again)


def test_recall_difference_newcombe_and_degenerate_inputs() -> None:
    a = pd.DataFrame({"class": [0, 1], "n": [10, 10], "correct@1": [10, 8], "recall@1": [1.0, 0.8]})
    b = pd.DataFrame({"class": [1, 0], "n": [10, 10], "correct@1": [4, 10], "recall@1": [0.4, 1.0]})
    table = recall_difference(a, b, 1, method="newcombe").set_index("class")
    assert table.loc[0, ["delta", "lower", "upper"]].tolist() == pytest.approx([0.0, -0.2775, 0.2775], abs=1e-4)
    assert (table.loc[1, "n_a"], table.loc[1, "n_b"], table.loc[1, "recall_b"]) == (10, 10, 0.4)
    assert not table["significantly_higher"].any() and not table["significantly_lower"].any()
    empty = recall_difference(a, b.iloc[0:0], 1)
    assert empty.empty and list(empty.columns)[-2:] == ["significantly_lower", "significantly_higher"]
    with pytest.raises(ValueError, match="unknown method"):
        recall_difference(a, b, 1, method="exact")  # type: ignore[arg-type]


def test_spearman_undefined_and_ks_statistic() -> None:
    from laionet.evaluation.stats import ks_statistic

    assert all(np.isnan(v) for v in spearman_interval(np.array([1.0, 2.0]), np.array([3.0, 1.0])))
    assert all(np.isnan(v) for v in spearman_interval(np.ones(10), np.arange(10.0)))  # a constant: undefined
    assert ks_statistic(np.array([0.1, 0.2]), np.array([0.1, 0.2])) == 0.0
    assert ks_statistic(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert ks_statistic(np.array([1.0, 2.0, 3.0, 4.0]), np.array([3.0, 4.0])) == 0.5
