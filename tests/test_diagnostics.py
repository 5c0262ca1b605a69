"""Section 4 diagnostics on tiny constructed data with known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from laionet.core.manifest import read_manifest
from laionet.diagnostics.filtered import image_threshold_for, run_filtered_variants, variant_name
from laionet.diagnostics.selection_frequency import Comparison, run_selection_frequency, wilson_interval
from laionet.diagnostics.text_alone import (
    bin_means,
    own_class_stats,
    read_labelled_captions,
    run_text_alone,
    sufficient_similarity,
)
from laionet.evaluation.intra_class import run_intra_class
from laionet.text.catalog import run_catalog
from tests.conftest import write_class_file

WNIDS = ["n02129165", "n02125311", "n07749582", "n02123045", "n02123159"]  # lion, cougar, lemon, tabby, tiger cat


def test_own_class_stats_equal_a_plain_loop() -> None:
    rng = np.random.default_rng(0)
    classes = rng.normal(size=(7, 5))
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    captions = rng.normal(size=(11, 5))
    captions /= np.linalg.norm(captions, axis=1, keepdims=True)
    own = rng.integers(0, 7, size=11)
    sim, rank, p = own_class_stats(captions, own, classes)
    for i in range(11):
        s = [float(captions[i] @ classes[c]) for c in range(7)]
        more = sum(1 for c in range(7) if c != own[i] and s[c] > s[own[i]])
        assert sim[i] == pytest.approx(s[own[i]], abs=1e-6)
        assert rank[i] == more + 1 and p[i] == pytest.approx(more / 6)


class BasisEncoder:
    """Synset texts → basis vectors (class i ↦ e_i); captions → the vectors given by name."""

    def __init__(self, names: list[str], captions: dict[str, np.ndarray]) -> None:
        self.names, self.captions, self.spec = names, captions, "st:basis"

    def encode(self, texts: list[str], progress: object = None) -> np.ndarray:
        rows = []
        for text in texts:
            if " which is " in text:
                v = np.zeros(len(self.names))
                v[self.names.index(text.split(" which is ")[0])] = 1.0
            else:
                v = self.captions[text]
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, dtype=np.float32)


@pytest.fixture
def catalog(tmp_path) -> str:
    path = str(tmp_path / "catalog.parquet")
    run_catalog(write_class_file(tmp_path / "classes.txt", WNIDS), path)
    return path


def test_text_alone_shares_by_construction_and_streaming(catalog, tmp_path) -> None:
    names = pd.read_parquet(catalog)["name"].tolist()
    e = np.eye(5)
    vectors = {
        "exactly its class": e[0],  # own similarity 1, nothing above: p = 0
        "two others above": 0.3 * e[1] + 0.9 * e[2] + 0.8 * e[3],  # class 1: classes 2 and 3 above → p = 2/4
        "all others above": 0.1 * e[4] + np.ones(5) * 0.5,  # class 4 (0.6 cos share) vs 0.5s: own first → p = 0
        "dominated": 0.05 * e[0] + e[1] + e[2] + e[3] + e[4],  # class 0: 4 others above → p = 1
    }
    rows = [("k1", "exactly its class", WNIDS[0]), ("k2", "two others above", WNIDS[1]),
            ("k3", "all others above", WNIDS[4]), ("k4", "dominated", WNIDS[0]),
            ("k5", "exactly its class", "n99999999"), ("k6", None, WNIDS[0])]  # fmt: skip
    captions = tmp_path / "captions.parquet"
    pd.DataFrame(rows, columns=["key", "text", "wnid"]).to_parquet(captions)
    manifest = run_text_alone(str(captions), catalog, str(tmp_path / "a"), encoder="st:basis",
                              encoder_factory=lambda spec: BasisEncoder(names, vectors), batch_size=2)  # fmt: skip
    per = pd.read_parquet(tmp_path / "a" / "per_caption.parquet").set_index("key")
    assert per["p_more_similar"].to_dict() == pytest.approx({"k1": 0.0, "k2": 0.5, "k3": 0.0, "k4": 1.0})
    assert per["rank"].to_dict() == {"k1": 1, "k2": 3, "k3": 1, "k4": 5}
    assert manifest.dropped == {"class_not_in_catalog": 1, "null_text": 1} and manifest.rows_out == 4
    summary = pd.read_parquet(tmp_path / "a" / "summary.parquet").iloc[0]
    assert summary["denominator"].startswith("the 4 other classes")
    # one batch for everything: the same table
    run_text_alone(str(captions), catalog, str(tmp_path / "b"), encoder="st:basis",
                   encoder_factory=lambda spec: BasisEncoder(names, vectors), batch_size=1000)  # fmt: skip
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "b" / "per_caption.parquet"), per.reset_index())


def test_bins_and_the_sufficient_similarity() -> None:
    own = np.array([0.1, 0.15, 0.45, 0.5, 0.72, 0.75, 0.8, 0.95])
    p = np.array([0.3, 0.1, 0.05, 0.0, 0.0, 0.001, 0.0, 0.0])
    bins = bin_means(own, p, np.round(np.arange(0.0, 1.0001, 0.25), 6))
    assert bins["captions"].tolist() == [2, 1, 2, 3]
    assert bins["mean_p"].tolist() == pytest.approx([0.2, 0.05, 0.0, 0.001 / 3])
    assert sufficient_similarity(bins, tolerance=0.005) == 0.5
    assert sufficient_similarity(bins, tolerance=0.0) is None  # the top bin's mean is above 0
    assert bins.loc[0, "lower"] <= 0.2 <= bins.loc[0, "upper"]


def test_imagenet_captions_json_text_is_title_tags_description(tmp_path) -> None:
    path = tmp_path / "ic.json"
    records = [
        {"filename": "a/x.JPEG", "title": "Lion", "tags": ["big", "cat"], "description": "at  dusk", "wnid": WNIDS[0]},
        {"filename": "a/x.JPEG", "title": "dup", "tags": [], "description": "", "wnid": "n1"},
        {"filename": "b/y.JPEG", "title": None, "tags": None, "description": "lemon", "wnid": WNIDS[2]},
    ]
    path.write_text(json.dumps(records))
    frame = read_labelled_captions(str(path))
    assert frame.to_dict("records") == [
        {"key": "imagenet-captions/x", "text": "Lion big cat at dusk", "wnid": WNIDS[0]},
        {"key": "imagenet-captions/y", "text": "lemon", "wnid": WNIDS[2]},
    ]


def test_image_threshold_hits_the_target_exactly_or_says_why_not() -> None:
    rng = np.random.default_rng(1)
    scores = rng.random(1000)
    for target in (0, 1, 500, 999, 1000):
        t, kept = image_threshold_for(scores, target)
        assert kept == target == int((scores > t).sum())
    t, kept = image_threshold_for(np.array([0.9, 0.5, 0.5, 0.5, 0.1]), 2)  # a tie at the cut: fewer, never more
    assert kept == 1 and t == 0.5
    with pytest.raises(ValueError, match="cannot keep 6 samples of 5"):
        image_threshold_for(np.zeros(5), 6)


def test_filtered_variants_keep_the_same_number_of_samples(tmp_path) -> None:
    rng = np.random.default_rng(2)
    n = 400
    keys = [f"k{i}" for i in range(n)]
    index = pd.DataFrame({"key": keys, "wnid": "n1", "class_index": rng.integers(0, 10, n),
                          "text_similarity": rng.uniform(0.7, 0.9, n)})  # fmt: skip
    index.to_parquet(tmp_path / "candidates.parquet")
    scores = pd.DataFrame({"key": keys[:-20], "own_score": rng.random(n - 20)})  # 20 candidates without an image
    scores.to_parquet(tmp_path / "scores.predictions.parquet")
    candidates, image_scores = str(tmp_path / "candidates.parquet"), str(tmp_path / "scores.predictions.parquet")
    manifests = run_filtered_variants(candidates, image_scores, str(tmp_path / "v"), (0.72, 0.76, 0.79, 0.81), 60)
    assert [m.rows_out for m in manifests] == [60, 60, 60, 60]
    for manifest, t in zip(manifests, (0.72, 0.76, 0.79, 0.81), strict=True):
        labels = pd.read_parquet(tmp_path / "v" / variant_name("laionet", t) / "labels.parquet")
        sims = index.set_index("key").loc[labels["key"], "text_similarity"]
        assert (sims > t).all() and len(labels) == 60
        manifest.check_counts()
    thresholds = [m.extra["image_threshold"] for m in manifests]
    assert thresholds == sorted(thresholds, reverse=True)  # a stricter text threshold needs a laxer image threshold
    with pytest.raises(ValueError, match="above the"):
        run_filtered_variants(candidates, image_scores, str(tmp_path / "w"), target=10_000)


def _write_dataset(root, name: str, spread: float, centres: np.ndarray, per_class: int, seed: int) -> tuple[str, str]:
    """Embeddings of a dataset whose images scatter around their class centre by ``spread``."""
    rng = np.random.default_rng(seed)
    classes = np.repeat(np.arange(len(centres)), per_class)
    emb = centres[classes] + spread * rng.normal(size=(len(classes), centres.shape[1]))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    keys = [f"{name}/{i}" for i in range(len(classes))]
    folder = root / name
    folder.mkdir()
    np.save(folder / "00000.npy", emb.astype(np.float16))
    pd.DataFrame({"key": keys}).to_parquet(folder / "00000.keys.parquet")
    pd.DataFrame({"key": keys, "class_index": classes}).to_parquet(folder / "labels.parquet")
    return str(folder / "*.npy"), str(folder / "labels.parquet")


def test_planted_spreads_order_the_proportions_by_selection_frequency(tmp_path) -> None:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(12, 16))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    reference = _write_dataset(tmp_path, "imagenet", 0.12, centres, 15, 0)
    versions = {"v2-b": (0.73, 0.40), "v2-a": (0.85, 0.22), "v2-c": (0.93, 0.12)}  # lower frequency, more spread
    comparisons = []
    for i, (name, (frequency, spread)) in enumerate(versions.items()):
        emb, labels = _write_dataset(tmp_path, name, spread, centres, 15, 10 + i)
        out = str(tmp_path / f"intra-{name}")
        run_intra_class(*reference, emb, labels, out, cap=15, n_boot=200, seed=0)
        comparisons.append(Comparison(a="imagenet", b=name, x=frequency, intra_dir=out))
    pooled = {"v2-b": (str(tmp_path / "v2-b" / "*.npy"), str(tmp_path / "v2-b" / "labels.parquet")),
              "v2-c": (str(tmp_path / "v2-c" / "*.npy"), str(tmp_path / "v2-c" / "labels.parquet"))}  # fmt: skip
    manifest = run_selection_frequency(comparisons, str(tmp_path / "sf"), pooled=pooled)
    table = pd.read_parquet(tmp_path / "sf" / "proportions.parquet")
    v2_lower = table[(table["method"] == "bootstrap") & (table["side"] == "b_lower")].sort_values("x")
    assert v2_lower["share"].tolist() == sorted(v2_lower["share"], reverse=True)  # V2 lower less often as x rises
    assert v2_lower["share"].iloc[0] > 0.5 and v2_lower["share"].iloc[-1] < 0.5
    assert (v2_lower["lower"] <= v2_lower["share"]).all() and (v2_lower["share"] <= v2_lower["upper"]).all()
    dist = pd.read_parquet(tmp_path / "sf" / "pooled.parquet")
    assert dist.groupby("dataset")["similarity"].mean()["v2-b"] < dist.groupby("dataset")["similarity"].mean()["v2-c"]
    stored = read_manifest(str(tmp_path / "sf"))
    assert stored is not None and stored.config_hash == manifest.config_hash
    again = run_selection_frequency(comparisons, str(tmp_path / "sf"), pooled=pooled)  # complete: not redone
    assert again.created_at == stored.created_at


def test_wilson_interval_matches_the_formula() -> None:
    low, high = wilson_interval(3, 10)
    assert (low, high) == pytest.approx((0.1078, 0.6032), abs=1e-4)  # the textbook Wilson interval of 3/10
    assert wilson_interval(0, 0) != wilson_interval(0, 0)  # nan


def test_text_alone_from_the_command_line_with_the_offline_text_encoder(catalog, tmp_path) -> None:
    from typer.testing import CliRunner

    from laionet.cli import app

    rows = [
        ("k1", "a lion resting in the grass at dusk", WNIDS[0]),
        ("k2", "fresh lemon tart with a lemon slice", WNIDS[2]),
        ("k3", "a lemon tart recipe", WNIDS[0]),
    ]
    pd.DataFrame(rows, columns=["key", "text", "wnid"]).to_parquet(tmp_path / "captions.parquet")
    result = CliRunner().invoke(app, ["text-alone", "--captions", str(tmp_path / "captions.parquet"), "--catalog",
                                      catalog, "--out", str(tmp_path / "t")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "shares over the 4 other classes" in result.output
    per = pd.read_parquet(tmp_path / "t" / "per_caption.parquet").set_index("key")
    assert per.loc["k1", "rank"] == 1 and per.loc["k2", "rank"] == 1  # real MiniLM: own classes first
    assert per.loc["k3", "p_more_similar"] > 0  # a lemon caption labelled lion: lemon is more similar
    bad = CliRunner().invoke(app, ["text-alone", "--captions", str(catalog), "--catalog", catalog, "--out",
                                   str(tmp_path / "u")])  # fmt: skip
    assert bad.exit_code == 2 and "needs columns key, text, wnid" in bad.output
