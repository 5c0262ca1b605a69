import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laionet.evaluation import read_embeddings, run_accuracy, run_intra_class
from laionet.manifest import read_manifest


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
    assert manifest.dropped == {"no_label": 4} and manifest.rows_out == 236
    summary = pd.read_parquet(tmp_path / "out" / "summary.parquet").set_index("method")
    assert summary.loc["bootstrap", "higher"] == 1.0 and summary.loc["bootstrap", "classes"] == 4
    assert summary.loc["paper", "higher"] == 1.0


def test_embeddings_and_keys_of_different_length_are_refused(tmp_path) -> None:
    _embeddings(tmp_path, "00000", np.eye(3), ["a", "b"])
    with pytest.raises(ValueError, match=r"00000\.npy has 3 rows but .*00000\.keys\.parquet has 2 keys"):
        read_embeddings(str(tmp_path / "*.npy"))
