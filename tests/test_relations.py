import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from laionet.cli import app
from laionet.core.manifest import read_manifest
from laionet.evaluation.relations import run_relations


def _parquet(frame: pd.DataFrame, path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return str(path)


def _inputs(tmp_path):
    """12 classes built so that: recall on A rises with the intra-class disparity (A − B) and the recall drop (A − B)
    does too; the class share falls as A's intra-class similarity rises; recall on A falls with the class share.
    Class 11 has no scored sample on A; class 12 exists only in the class frequency table."""
    classes = np.arange(12)
    disparity = np.linspace(-0.2, 0.1, 12)
    recall_a = np.r_[np.linspace(0.3, 0.9, 11), np.nan]
    n_a = np.r_[np.full(11, 20), 0]
    a = pd.DataFrame({"class": classes, "n": n_a, "recall@1": recall_a, "recall@5": np.minimum(recall_a + 0.1, 1)})
    b = pd.DataFrame({"class": classes, "n": 20, "recall@1": 0.8, "recall@5": 0.9})
    intra = tmp_path / "intra"
    _parquet(pd.DataFrame({"class": classes, "mean_a": 0.5 + disparity, "mean_b": 0.5, "delta": disparity,
                           "lower": disparity - 0.05, "upper": disparity + 0.05}),
             intra / "compare_bootstrap.parquet")  # fmt: skip
    intra_a = 0.3 + 0.02 * classes
    _parquet(pd.DataFrame({"class": classes, "n": 20, "n_pairs": 190, "mean": intra_a, "std": 0.1}),
             intra / "intra_a.parquet")  # fmt: skip
    share = np.r_[np.linspace(0.2, 0.01, 12), 0.05]
    freq = pd.DataFrame({"wnid": [f"n{i:08d}" for i in range(13)], "class_index": np.arange(13), "name": "x",
                         "n": (share * 1000).astype(int), "share": share})  # fmt: skip
    return (_parquet(a, tmp_path / "a" / "per_class.parquet"), _parquet(b, tmp_path / "b" / "per_class.parquet"),
            str(intra), _parquet(freq, tmp_path / "selection" / "class_frequency.parquet"))  # fmt: skip


def test_relations_have_the_constructed_spearman_signs(tmp_path) -> None:
    per_a, per_b, intra, freq = _inputs(tmp_path)
    out = tmp_path / "relations" / "laionet--imagenet-val"
    manifest = run_relations(per_class_a=per_a, per_class_b=per_b, intra_dir=intra, class_frequency=freq,
                             out_dir=str(out), n_boot=300)  # fmt: skip
    summary = pd.read_parquet(out / "summary.parquet").set_index("relation")
    per_k = ("recall_vs_intra_disparity", "recall_drop_vs_intra_disparity", "recall_vs_frequency")
    assert set(summary.index) == {f"{r}_at_{k}" for r in per_k for k in (1, 5)} | {"intra_vs_frequency"}
    assert summary.loc["recall_vs_intra_disparity_at_1", "spearman"] == pytest.approx(1.0)
    assert summary.loc["recall_drop_vs_intra_disparity_at_1", "lower"] > 0.9
    assert summary.loc["recall_vs_frequency_at_1", "spearman"] == pytest.approx(-1.0)
    assert summary.loc["intra_vs_frequency", "spearman"] == pytest.approx(-1.0)
    assert (
        summary.loc["intra_vs_frequency", "upper"] < -0.9 and summary.loc["intra_vs_frequency", "figure"] == "Fig. 15"
    )
    assert summary.loc["recall_vs_intra_disparity_at_1", "n"] == 11  # class 11 has no recall on A
    fig7 = pd.read_parquet(out / "recall_drop_vs_intra_disparity_at_1.parquet")
    assert list(fig7.columns) == ["class", "x", "y", "intra_disparity", "recall_drop_at_1"]
    row = fig7.set_index("class").loc[0]
    assert (
        row["x"] == pytest.approx(-0.2) and row["y"] == pytest.approx(0.3 - 0.8) and row["y"] == row["recall_drop_at_1"]
    )
    fig15 = pd.read_parquet(out / "intra_vs_frequency.parquet")
    assert len(fig15) == 12 and list(fig15.columns[3:]) == ["class_share", "intra_similarity_a"]  # class 12: no intra
    assert read_manifest(str(out)) == manifest
    assert (manifest.rows_in, manifest.rows_out, manifest.dropped) == (13, 12, {"in_no_relation": 1})
    axes = manifest.extra["axes"]["recall_vs_intra_disparity_at_5"]
    assert (axes["x"], axes["y"]) == ("intra_disparity", "recall_at_5_a")
    assert "laionet − imagenet-val" in axes["x_label"] and axes["title"].startswith("Recall@5 on laionet")


def test_relations_with_partial_inputs_and_the_cli(tmp_path) -> None:
    per_a, per_b, intra, freq = _inputs(tmp_path)
    only = run_relations(per_a, str(tmp_path / "freq-only"), class_frequency=freq, ks=(1,), n_boot=100)
    assert [o.rsplit("/", 1)[-1] for o in only.outputs] == ["recall_vs_frequency_at_1.parquet", "summary.parquet"]
    with pytest.raises(ValueError, match="no relation to compute"):
        run_relations(per_a, str(tmp_path / "none"), per_class_b=per_b)
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["relations", "--per-class-a", per_a, "--per-class-b", per_b, "--intra", intra,
                                      "--class-frequency", freq, "--out", str(out), "--k", "1", "--n-boot", "100",
                                      "--label-a", "L", "--label-b", "I"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "recall_vs_intra_disparity_at_1: Spearman 1.000" in result.output
    assert json.loads((out / "_manifest.json").read_text())["extra"]["labels"] == {"a": "L", "b": "I"}
    bad = _parquet(pd.DataFrame({"class_index": [0], "n": [1]}), tmp_path / "bad_freq.parquet")
    result = CliRunner().invoke(app, ["relations", "--per-class-a", per_a, "--class-frequency", bad, "--out",
                                      str(tmp_path / "bad")])  # fmt: skip
    assert result.exit_code == 2 and "bad_freq.parquet: missing columns ['share']" in result.output


def test_relations_per_model_take_the_pair_names_from_the_parent_directory(tmp_path) -> None:
    """The evaluate flow fans relations out per model: ``relations/<a>--<b>/<model>``."""
    per_a, per_b, intra, _ = _inputs(tmp_path)
    out = tmp_path / "relations" / "laionet--imagenet-val" / "resnet50"
    manifest = run_relations(per_a, str(out), per_class_b=per_b, intra_dir=intra, ks=(1,), n_boot=50)
    assert manifest.extra["labels"] == {"a": "laionet", "b": "imagenet-val"}


def test_evaluate_flow_fans_relations_out_per_model() -> None:
    """Figs. 7 and 14 show several models: one relations task per scored model, not the first model only."""
    import ast
    from pathlib import Path

    source = Path(__file__).parents[1] / "flows" / "evaluate.py"
    tree = ast.parse(source.read_text())
    loops = [node for node in ast.walk(tree) if isinstance(node, ast.For) and ast.unparse(node.iter) == "scored"]
    assert any("relations.submit" in ast.unparse(loop) for loop in loops)
