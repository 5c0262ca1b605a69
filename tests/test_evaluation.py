import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laionet.core.manifest import read_manifest
from laionet.evaluation.accuracy import run_accuracy
from laionet.evaluation.intra_class import run_intra_class
from laionet.evaluation.samples import read_embeddings


def _write(path, **columns) -> str:
    pq.write_table(pa.table(columns), path)
    return str(path)


def test_accuracy_from_files_with_flags_weights_and_missing_predictions(tmp_path) -> None:
    labels = _write(tmp_path / "labels.parquet", key=["a", "b", "c", "d", "e"], class_index=[0, 0, 1, 1, 2])
    preds = _write(
        tmp_path / "pred.parquet",
        key=["a", "b", "c", "d", "zz"],
        topk=pa.array([[0, 1], [1, 0], [1, 2], [], [0, 1]], type=pa.list_(pa.int64())),
    )
    flags = _write(tmp_path / "ocr.parquet", key=["c"], flagged=[True])
    weights = _write(tmp_path / "freq.parquet", class_index=[0, 1, 2], share=[0.5, 0.25, 0.25])
    manifest = run_accuracy(preds, labels, str(tmp_path / "acc"), weights=weights, flags=flags, ks=(1, 2), n_boot=200)
    # 5 labelled: c flagged, d (empty list) and e (no row) without prediction → 2 scored
    assert (manifest.rows_in, manifest.rows_out, manifest.dropped) == (5, 2, {"flagged": 1, "no_prediction": 2})
    assert read_manifest(str(tmp_path / "acc")) == manifest
    per_class = pd.read_parquet(tmp_path / "acc" / "per_class.parquet").set_index("class")
    assert per_class.loc[0, "recall@1"] == 0.5 and per_class.loc[0, "recall@2"] == 1.0
    assert per_class.loc[1, "missing"] == 1 and per_class.loc[1, "n"] == 0
    summary = pd.read_parquet(tmp_path / "acc" / "summary.parquet").set_index(["k", "weighting"])
    assert summary.loc[(1, "equal"), "accuracy"] == pytest.approx(0.5)  # only class 0 has scored samples
    assert summary.loc[(2, "laion"), "accuracy"] == pytest.approx(1.0)
    assert summary.loc[(1, "equal"), "bootstrap_lower"] <= 0.5 <= summary.loc[(1, "equal"), "bootstrap_upper"]


def _embeddings(directory, stem: str, emb: np.ndarray, keys: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / f"{stem}.npy", emb.astype(np.float16))
    _write(directory / f"{stem}.keys.parquet", key=keys)


def test_intra_class_comparison_from_embedding_shards(tmp_path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    labels = np.repeat(np.arange(4), 30)

    def dataset(spread: float, seed: int) -> np.ndarray:
        e = centres[labels] + np.random.default_rng(seed).normal(size=(len(labels), 16)) * spread
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    tight, loose = dataset(0.3, 1), dataset(1.5, 2)
    keys = [f"k{i}" for i in range(len(labels))]
    for name, emb in (("a", tight), ("b", loose)):
        _embeddings(tmp_path / name, "00000", emb[:60], keys[:60])
        _embeddings(tmp_path / name, "00001", emb[60:], keys[60:])
        _write(tmp_path / f"labels_{name}.parquet", key=keys[:-2], class_index=labels[:-2])  # 2 unlabelled
    emb, got_keys = read_embeddings(str(tmp_path / "a" / "*.npy"))
    assert emb.shape == (120, 16) and list(got_keys[:2]) == ["k0", "k1"]
    manifest = run_intra_class(
        str(tmp_path / "a" / "*.npy"), str(tmp_path / "labels_a.parquet"),
        str(tmp_path / "b" / "*.npy"), str(tmp_path / "labels_b.parquet"),
        str(tmp_path / "out"), n_boot=200,
    )  # fmt: skip
    assert manifest.dropped == {"no_label": 4, "flagged": 0} and manifest.rows_out == 236
    summary = pd.read_parquet(tmp_path / "out" / "summary.parquet").set_index("method")
    assert summary.loc["bootstrap", "higher"] == 1.0 and summary.loc["bootstrap", "classes"] == 4
    assert summary.loc["paper", "higher"] == 1.0


def test_embeddings_and_keys_of_different_length_are_refused(tmp_path) -> None:
    _embeddings(tmp_path, "00000", np.eye(3), ["a", "b"])
    with pytest.raises(ValueError, match=r"00000\.npy has 3 rows but .*00000\.keys\.parquet has 2 keys"):
        read_embeddings(str(tmp_path / "*.npy"))


def _inference_dir(root, keys: list[str], topk: list[list[int]], own: list[float], emb: np.ndarray):
    """One model's inference output as the inference stage writes it: predictions with extra columns, embeddings."""
    root.mkdir(parents=True, exist_ok=True)
    n = len(keys)
    _write(
        root / "00000.predictions.parquet",
        key=pa.array(keys, pa.string()),
        topk=pa.array(topk, pa.list_(pa.int32())),
        scores=pa.array([[0.5] * len(t) for t in topk], pa.list_(pa.float32())),
        own_score=pa.array(own, pa.float32()),
    )
    _embeddings(root, "00000", emb, keys)
    (root / "_manifest.json").write_text("{}")  # the stage's manifest beside the outputs is not an input
    return n


def test_accuracy_and_intra_class_read_the_inference_layout(tmp_path) -> None:
    rng = np.random.default_rng(0)
    keys = [f"part-0/{i}" for i in range(24)]
    cls = np.arange(24) % 3
    topk = [[int(c), (int(c) + 1) % 3] if i % 4 else [(int(c) + 1) % 3, int(c)] for i, c in enumerate(cls)]
    emb = rng.normal(size=(24, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    model_dir = tmp_path / "inference" / "laionet" / "efficientnet_lite0"
    _inference_dir(model_dir, keys, topk, [0.5] * 24, emb)
    labels = _write(tmp_path / "labels.parquet", key=keys, wnid=["n0"] * 24, class_index=cls)
    manifest = run_accuracy(str(model_dir / "*.predictions.parquet"), labels, str(tmp_path / "acc"), n_boot=50)
    assert (manifest.rows_in, manifest.rows_out) == (24, 24)
    per_class = pd.read_parquet(tmp_path / "acc" / "per_class.parquet")
    assert per_class["recall@1"].tolist() == [0.75, 0.75, 0.75]  # every 4th sample has its class second
    intra = run_intra_class(
        str(model_dir / "*.npy"), labels, str(model_dir / "*.npy"), labels, str(tmp_path / "intra"), cap=8, n_boot=50
    )
    assert intra.rows_out == 48 and (tmp_path / "intra" / "compare_bootstrap.parquet").exists()


def _per_class(path, classes, n, correct) -> str:
    n, correct = np.asarray(n), np.asarray(correct)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = correct / n
    return _write(path, **{"class": classes, "n": n, "missing": [0] * len(n), "correct@1": correct,
                           "recall@1": recall})  # fmt: skip


def test_recall_difference_by_hand(tmp_path) -> None:
    from laionet.evaluation.metrics import wilson_interval
    from laionet.evaluation.recall import run_recall_difference

    # class 0: 8/10 vs 4/10; class 1: 20/20 vs 5/20; class 2 only in A; class 3 only in B; class 4 unscored in B
    a = _per_class(tmp_path / "a.parquet", [0, 1, 2, 4], [10, 20, 5, 5], [8, 20, 1, 5])
    b = _per_class(tmp_path / "b.parquet", [0, 1, 3, 4], [10, 20, 5, 0], [4, 5, 5, 0])
    manifest = run_recall_difference(a, b, str(tmp_path / "diff"), method="newcombe")
    assert (manifest.rows_in, manifest.rows_out) == (5, 2)
    assert manifest.dropped == {"only_in_a": 1, "only_in_b": 1, "no_scored_samples": 1}
    table = pd.read_parquet(tmp_path / "diff" / "recall_at_1.parquet").set_index("class")
    assert list(table.index) == [0, 1] and table["delta"].tolist() == pytest.approx([0.4, 0.75])
    (la, ua), (lb, ub) = wilson_interval(np.array([8]), np.array([10])), wilson_interval(np.array([4]), np.array([10]))
    assert table.loc[0, "lower"] == pytest.approx(0.4 - np.hypot(0.8 - la[0], ub[0] - 0.4))
    assert table.loc[0, "upper"] == pytest.approx(0.4 + np.hypot(ua[0] - 0.8, 0.4 - lb[0]))
    assert round(table.loc[0, "lower"], 3) == -0.023 and round(table.loc[0, "upper"], 3) == 0.673  # worked by hand
    assert table["verdict"].tolist() == ["neither", "higher"]
    summary = pd.read_parquet(tmp_path / "diff" / "summary.parquet")
    assert summary[["k", "classes", "n_higher", "n_lower"]].values.tolist() == [[1, 2, 1, 0]]
    boot = run_recall_difference(a, b, str(tmp_path / "boot"), method="bootstrap", n_boot=400)
    table = pd.read_parquet(tmp_path / "boot" / "recall_at_1.parquet").set_index("class")
    assert table.loc[1, "lower"] > 0.4 and table.loc[0, "lower"] < 0.4 < table.loc[0, "upper"]
    assert boot.extra["proportions"][0]["higher"] == pytest.approx(table["significantly_higher"].mean())
    with pytest.raises(ValueError, match=r"a\.parquet: missing columns \['recall@5', 'correct@5'\]"):
        run_recall_difference(a, b, str(tmp_path / "k5"), ks=(5,))


def test_own_similarity_matches_b_class_counts(tmp_path) -> None:
    from laionet.evaluation.own_similarity import run_own_similarity

    rng = np.random.default_rng(0)
    counts_a, counts_b = {0: 60, 1: 40, 2: 30, 3: 10}, {0: 5, 1: 7, 2: 9, 9: 4}  # class 3 only in A, 9 only in B
    cls_a = np.repeat(list(counts_a), list(counts_a.values()))
    cls_b = np.repeat(list(counts_b), list(counts_b.values()))
    keys_a, keys_b = [f"a{i}" for i in range(len(cls_a))], [f"b{i}" for i in range(len(cls_b))]
    own_a = rng.normal(0.25, 0.02, len(cls_a))
    own_a[0] = np.nan  # a labelled sample the model gave no score
    own_b = rng.normal(np.where(cls_b == 0, 0.30, 0.25), 0.02)
    emb_a, emb_b = np.eye(8)[np.zeros(len(cls_a), int)], np.eye(8)[np.zeros(len(cls_b), int)]
    _inference_dir(tmp_path / "za", [*keys_a, "unlabelled"], [[0]] * (len(keys_a) + 1), [*own_a, 0.3],
                   np.vstack([emb_a, emb_a[:1]]))  # fmt: skip
    _inference_dir(tmp_path / "zb", keys_b[1:], [[0]] * (len(keys_b) - 1), own_b[1:], emb_b[1:])  # b0: no row
    labels_a = _write(tmp_path / "la.parquet", key=keys_a, class_index=cls_a)
    labels_b = _write(tmp_path / "lb.parquet", key=keys_b, class_index=cls_b)
    manifest = run_own_similarity(
        str(tmp_path / "za" / "*.predictions.parquet"), labels_a, str(tmp_path / "zb" / "*.predictions.parquet"),
        labels_b, str(tmp_path / "own"), n_boot=300,
    )  # fmt: skip
    assert manifest.rows_in == len(cls_a) + len(cls_b)
    assert manifest.dropped == {"flagged": 0, "no_prediction": 1, "no_score": 1}
    dist = pd.read_parquet(tmp_path / "own" / "distribution.parquet")
    per_group = dist.groupby(["group", "class"]).size().unstack(0)
    assert per_group["a_matched"].to_dict() == per_group["b"].to_dict() == {0: 4, 1: 7, 2: 9}  # b0 had no row
    assert per_group["a"].to_dict() == {0: 59, 1: 40, 2: 30}  # the NaN score left out; class 3 not in B
    matched = dist[dist["group"] == "a_matched"]
    assert matched["value"].isin(own_a.astype(np.float32).astype(float)).all()  # drawn from A's own (float32) values
    per_class = pd.read_parquet(tmp_path / "own" / "per_class.parquet").set_index("class")
    assert list(per_class.index) == [0, 1, 2] and bool(per_class.loc[0, "significantly_lower"])
    assert per_class.loc[0, "verdict"] == "lower" and per_class["n_b"].tolist() == [4, 7, 9]
    summary = pd.read_parquet(tmp_path / "own" / "summary.parquet").set_index("group")
    assert summary.loc["b", "ks_vs_b"] == 0 and summary.loc["a_matched", "n"] == summary.loc["b", "n"] == 20


def test_laion_weighting_by_the_reference_beside_the_renormalised_default(tmp_path) -> None:
    """Shares of the full pre-OCR LAIONet: 0.5, 0.3, 0.2; class 2's only image is OCR-flagged, so it is unscored."""
    labels = _write(tmp_path / "labels.parquet", key=list("abcdef"), class_index=[0, 0, 1, 1, 1, 2])
    preds = _write(
        tmp_path / "pred.parquet",
        key=list("abcdef"),
        topk=pa.array([[0], [3], [1], [1], [0], [2]], type=pa.list_(pa.int64())),
    )
    flags = _write(tmp_path / "ocr.parquet", key=["f"], flagged=[True])
    weights = _write(tmp_path / "freq.parquet", class_index=[0, 1, 2], share=[0.5, 0.3, 0.2])
    run_accuracy(preds, labels, str(tmp_path / "acc"), weights=weights, flags=flags, ks=(1,), n_boot=200)
    summary = pd.read_parquet(tmp_path / "acc" / "summary.parquet").set_index("weighting")
    recall_0, recall_1 = 1 / 2, 2 / 3
    assert summary.loc["equal", "accuracy"] == pytest.approx((recall_0 + recall_1) / 2)
    assert summary.loc["laion", "accuracy"] == pytest.approx((0.5 * recall_0 + 0.3 * recall_1) / 0.8)
    assert summary.loc["laion-paper", "accuracy"] == pytest.approx(0.5 * recall_0 + 0.3 * recall_1)  # class 2 as 0
    for row in summary.itertuples():
        assert row.bootstrap_lower <= row.accuracy <= row.bootstrap_upper
        assert row.classes == 2 and row.bootstrap_method == "jeffreys" and "2 classes" in row.class_set


def test_pair_accuracy_over_the_classes_both_have_and_all_classes_as_its_own_row(tmp_path) -> None:
    from laionet.evaluation.recall import run_recall_difference

    # A (LAIONet-like) has classes 0, 1; B (val-like) has 0-3, its extra classes easy (recall 1)
    a = _per_class(tmp_path / "a.parquet", [0, 1], [4, 6], [1, 3])
    b = _per_class(tmp_path / "b.parquet", [0, 1, 2, 3], [10, 10, 10, 10], [5, 6, 10, 10])
    weights = _write(tmp_path / "freq.parquet", class_index=[0, 1, 2, 3], share=[0.6, 0.2, 0.1, 0.1])
    run_recall_difference(a, b, str(tmp_path / "diff"), weights=weights, n_boot=500)
    acc = pd.read_parquet(tmp_path / "diff" / "accuracy.parquet").set_index(["weighting", "class_set"])
    both, every = acc.loc[("equal", "both")], acc.loc[("equal", "all")]
    assert (both["classes_a"], both["classes_b"]) == (2, 2)
    assert both["accuracy_a"] == pytest.approx((1 / 4 + 3 / 6) / 2)
    assert both["accuracy_b"] == pytest.approx((0.5 + 0.6) / 2)  # B over A's classes only
    assert both["difference"] == pytest.approx(0.375 - 0.55)
    assert both["lower"] < both["difference"] < both["upper"]
    assert (every["classes_a"], every["classes_b"]) == (2, 4)
    assert every["accuracy_b"] == pytest.approx((0.5 + 0.6 + 1 + 1) / 4)  # the all-classes figure, its own row
    laion = acc.loc[("laion", "both")]
    assert laion["accuracy_b"] == pytest.approx((0.6 * 0.5 + 0.2 * 0.6) / 0.8)
    assert acc.loc[("laion-paper", "all"), "accuracy_b"] == pytest.approx(0.6 * 0.5 + 0.2 * 0.6 + 0.1 + 0.1)


def _clusters(tmp_path, name: str, sizes: list[int], spread: float, seed: int) -> tuple[str, str, list[str]]:
    """One embedding shard and labels: class c has sizes[c] unit vectors around a shared centre."""
    centres = np.random.default_rng(0).normal(size=(len(sizes), 16))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    emb = centres[labels] + np.random.default_rng(seed).normal(size=(len(labels), 16)) * spread
    keys = [f"{name}{i}" for i in range(len(labels))]
    _embeddings(tmp_path / name, "00000", emb / np.linalg.norm(emb, axis=1, keepdims=True), keys)
    labels_path = _write(tmp_path / f"labels_{name}.parquet", key=keys, class_index=labels)
    return str(tmp_path / name / "*.npy"), labels_path, keys


def test_both_intra_class_proportions_share_one_class_set(tmp_path) -> None:
    """Class 0 has 4 images in A: 6 pairs, fewer than the paper's 7, so neither comparison may count it."""
    emb_a, labels_a, _ = _clusters(tmp_path, "a", [4, 12, 12], 0.3, 1)
    emb_b, labels_b, _ = _clusters(tmp_path, "b", [12, 12, 12], 1.5, 2)
    run_intra_class(emb_a, labels_a, emb_b, labels_b, str(tmp_path / "out"), n_boot=200)
    boot = pd.read_parquet(tmp_path / "out" / "compare_bootstrap.parquet")
    paper = pd.read_parquet(tmp_path / "out" / "compare_paper.parquet")
    assert boot["class"].tolist() == paper["class"].tolist() == [1, 2]
    summary = pd.read_parquet(tmp_path / "out" / "summary.parquet").set_index("method")
    assert summary["classes"].tolist() == [2, 2] and summary["class_set"].nunique() == 1
    assert "≥ 7 pairs" in summary.loc["paper", "class_set"]
    # Fig. 6a: per class min(6 or 66 pairs of A, 66 of B, 100) pair similarities drawn from each, pooled
    pooled = pd.read_parquet(tmp_path / "out" / "pooled_pairs.parquet")
    assert pooled.groupby("group").size().to_dict() == {"a": 6 + 66 + 66, "b": 6 + 66 + 66}


def test_one_sample_set_per_variant_for_accuracy_and_intra_class(tmp_path) -> None:
    """OCR-flagged samples leave the variant for every metric: accuracy and intra-class count the same images."""
    emb_a, labels_a, keys = _clusters(tmp_path, "a", [8, 8], 0.5, 1)
    emb_b, labels_b, _ = _clusters(tmp_path, "b", [8, 8], 0.5, 2)
    flags = _write(tmp_path / "ocr.parquet", key=[*keys[:3], keys[9]], flagged=[True, True, True, False])
    preds = _write(tmp_path / "pred.parquet", key=keys, topk=pa.array([[0]] * 16, type=pa.list_(pa.int64())))
    run_accuracy(preds, labels_a, str(tmp_path / "acc"), flags=flags, ks=(1,), n_boot=50)
    intra = run_intra_class(emb_a, labels_a, emb_b, labels_b, str(tmp_path / "intra"), n_boot=50, flags_a=flags)
    per_class = pd.read_parquet(tmp_path / "acc" / "per_class.parquet").set_index("class")
    intra_a = pd.read_parquet(tmp_path / "intra" / "intra_a.parquet").set_index("class")
    assert per_class["n"].tolist() == [5, 8] == intra_a["n"].tolist()  # 3 flagged in class 0, the unflagged row kept
    assert intra.dropped == {"no_label": 0, "flagged": 3} and intra.rows_in == 32
