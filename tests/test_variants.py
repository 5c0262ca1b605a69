import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from laionet.cli import app
from laionet.core.manifest import read_manifest
from laionet.evaluation.variants import run_variants


def _listing(shards, stem: str, rows: list[tuple[str, int, str]]) -> None:
    """A download shard: ``<stem>.tar`` (content not read here) and its listing (key, wnid, class_index, status)."""
    shards.mkdir(parents=True, exist_ok=True)
    (shards / f"{stem}.tar").write_bytes(b"")
    table = pa.table({"key": [r[0] for r in rows], "wnid": [f"n{r[1]:08d}" for r in rows],
                      "class_index": [r[1] for r in rows], "status": [r[2] for r in rows],
                      "error_message": [None] * len(rows)})  # fmt: skip
    pq.write_table(table, shards / f"{stem}.parquet")


def _run(tmp_path):
    shards = tmp_path / "shards"
    # attempt 000: k0-k5 (k5 timed out); attempt 001 retried k5 successfully; k6 failed for good
    _listing(shards, "00000000", [(f"k{i}", i % 3, "success") for i in range(5)] + [("k5", 2, "failed_to_download")])
    _listing(shards, "00100000", [("k5", 2, "success"), ("k6", 0, "failed_to_download")])
    quarantine = tmp_path / "verify" / "quarantine.parquet"
    quarantine.parent.mkdir()
    reasons = ["undecodable_image", "truncated_shard", "missing_from_tar"]
    pq.write_table(pa.table({"shard": ["s", "s", "s"], "key": ["k1", "*", "k4"], "reason": reasons}), quarantine)
    preds = tmp_path / "inference" / "laionet" / "efficientnet_lite0"
    preds.mkdir(parents=True)
    # k0 (class 0): class at rank 5 → kept; k2 (class 2): class at rank 6 → dropped; k3: no row; k5: empty top-k
    topk = [[9, 8, 7, 6, 0, 1], [1, 3, 4, 5, 6, 2], [], [2]]
    pq.write_table(pa.table({"key": ["k0", "k2", "k5", "unrelated"], "topk": pa.array(topk, pa.list_(pa.int32())),
                             "scores": pa.array([[0.1] * len(t) for t in topk], pa.list_(pa.float32())),
                             "own_score": pa.array([0.05, 0.3, float("nan"), 0.9], pa.float32())}),
                   preds / "00000000.predictions.parquet")  # fmt: skip
    return shards, quarantine, preds


def test_variant_counts_add_up_with_quarantine_and_image_filter(tmp_path) -> None:
    shards, quarantine, preds = _run(tmp_path)
    out = tmp_path / "variants"
    manifest = run_variants(str(shards), str(out), quarantine=str(quarantine), predictions=str(preds))
    # 7 listed keys: k6 not downloaded; k1, k4 quarantined; k0 k2 k3 k5 kept (k5 from its second attempt)
    assert (manifest.rows_in, manifest.rows_out) == (7, 4)
    assert manifest.dropped == {"not_downloaded": 1, "undecodable_image": 1, "missing_from_tar": 1}
    text = pd.read_parquet(out / "laionet" / "labels.parquet")
    assert list(text.columns) == ["key", "wnid", "class_index"] and text["key"].tolist() == ["k0", "k2", "k3", "k5"]
    assert text["class_index"].dtype == "int64" and read_manifest(str(out / "laionet")) == manifest
    image = read_manifest(str(out / "laionet-image"))
    assert image is not None and (image.rows_in, image.rows_out) == (4, 1)
    assert image.dropped == {"no_prediction": 2, "image_disagrees": 1}  # k3 and k5 (empty); k2 outside the top-5
    assert image.config["image_filter"] == {"rule": "topk", "model": "efficientnet_lite0", "k": 5,
                                            "predictions": str(preds / "*.predictions.parquet")}  # fmt: skip
    assert pd.read_parquet(out / "laionet-image" / "labels.parquet")["key"].tolist() == ["k0"]
    assert manifest.extra["filtered"]["rows_out"] == 1

    rule = {"model": "clip", "rule": "own_score", "threshold": 0.2}
    glob = str(preds / "*.predictions.parquet")
    by_score = run_variants(str(shards), str(out), name="laionet", quarantine=str(quarantine), predictions=glob,
                            image_filter=rule, filtered_name="by-score")  # fmt: skip
    scored = read_manifest(str(out / "by-score"))
    assert scored is not None and scored.dropped == {"no_prediction": 2, "image_disagrees": 1}  # k0: 0.05 < 0.2
    assert pd.read_parquet(out / "by-score" / "labels.parquet")["key"].tolist() == ["k2"]
    assert "own_score" in by_score.extra["filtered"]["rule"] and "0.2" in by_score.extra["filtered"]["rule"]


def test_reference_shards_without_status_and_errors(tmp_path) -> None:
    shards = tmp_path / "ref"
    shards.mkdir()
    (shards / "00000.tar").write_bytes(b"")
    pq.write_table(pa.table({"key": ["v0", "v1"], "wnid": ["n1", "n2"], "class_index": [3, 4], "dataset": ["x"] * 2}),
                   shards / "00000.parquet")  # fmt: skip
    manifest = run_variants(str(shards), str(tmp_path / "variants"), name="imagenet-val")
    assert (manifest.rows_in, manifest.rows_out, manifest.dropped) == (2, 2, {"not_downloaded": 0})
    with pytest.raises(ValueError, match="own_score needs a threshold"):
        run_variants(str(shards), str(tmp_path / "v"), predictions="p", image_filter={"rule": "own_score"})
    with pytest.raises(ValueError, match="needs the filter model's predictions"):
        run_variants(str(shards), str(tmp_path / "v"), image_filter={"rule": "topk"})
    (shards / "00001.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"00001\.tar has no listing .*00001\.parquet"):
        run_variants(str(shards), str(tmp_path / "v"))


def test_variants_cli(tmp_path) -> None:
    shards, quarantine, preds = _run(tmp_path)
    out = tmp_path / "variants"
    result = CliRunner().invoke(app, ["variants", "--shards", str(shards), "--out", str(out), "--quarantine",
                                      str(quarantine), "--predictions", str(preds), "--k", "6"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "laionet-image: 2 kept" in result.output  # with k = 6, k2's class (rank 6) agrees too
    assert json.loads((out / "laionet-image" / "_manifest.json").read_text())["config"]["image_filter"]["k"] == 6
    result = CliRunner().invoke(app, ["variants", "--shards", str(shards), "--out", str(out), "--predictions",
                                      str(preds), "--rule", "own_score"])  # fmt: skip
    assert result.exit_code == 2 and "own_score needs a threshold" in result.output
    result = CliRunner().invoke(app, ["variants", "--shards", str(shards), "--out", str(out), "--predictions",
                                      str(preds), "--rule", "best"], env={"COLUMNS": "240"})  # fmt: skip
    assert result.exit_code == 2 and "'best' is not one of 'topk', 'own_score'" in result.output  # named choices


def test_top_k_variant_ranks_the_usable_samples_of_the_selected_index(tmp_path) -> None:
    """Per class the k most similar of the text-only variant, after the OCR filter (the reference's order)."""
    from laionet.evaluation.variants import run_top_k_variant

    keys = ["a", "b", "c", "d", "e", "f", "z"]
    source = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"key": keys, "wnid": ["n0"] * 4 + ["n1"] * 3, "class_index": [0] * 4 + [1] * 3}), source)
    index = tmp_path / "laionet.parquet"  # "z" is not in the index; "g" is in it but was never downloaded
    sims = {"a": 0.95, "b": 0.9, "c": 0.8, "d": 0.85, "e": 0.7, "f": 0.75, "g": 0.99}
    pq.write_table(pa.table({"key": list(sims), "text_similarity": list(sims.values())}), index)
    flags = tmp_path / "ocr.parquet"
    pq.write_table(pa.table({"key": ["a", "c"], "flagged": [True, False]}), flags)
    manifest = run_top_k_variant(str(source), str(index), str(tmp_path / "top2"), k=2, flags=str(flags))
    kept = pd.read_parquet(tmp_path / "top2" / "labels.parquet")
    assert sorted(kept["key"]) == ["b", "d", "e", "f"]  # a flagged; of b, c, d the two most similar
    assert list(kept.columns) == ["key", "wnid", "class_index"]
    assert manifest.dropped == {"flagged": 1, "not_in_index": 1, "beyond_top_k": 1}
    assert manifest.rows_in == 7 == manifest.rows_out + sum(manifest.dropped.values())
