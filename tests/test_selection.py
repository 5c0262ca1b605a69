import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from laionet.core.manifest import read_manifest
from laionet.selection.encoders import EncoderError
from laionet.selection.precomputed import EmbeddingShardError
from laionet.selection.select import (
    SelectionConfig,
    calibrate_threshold,
    candidates,
    run_select,
    sweep_counts,
    top_k_per_class,
)
from laionet.selection.similarity import SimilarityConfig, run_similarity
from laionet.text.catalog import run_catalog
from laionet.text.match import run_match
from tests.conftest import write_class_file, write_corpus_part

LION, COUGAR, LEMON = "n02129165", "n02125311", "n07749582"


def _vec(cos: float, axis: int) -> list[float]:
    """A unit vector whose cosine with basis vector ``axis`` is ``cos``."""
    v = [0.0, 0.0, 0.0, 0.0]
    v[axis], v[3] = cos, math.sqrt(max(0.0, 1 - cos * cos))
    return v


@dataclass
class FakeEncoder:
    """Synset texts of class i → basis vector i; captions → vectors with a chosen cosine to their class."""

    spec: str
    table: dict[str, list[float]]
    calls: list[int] = field(default_factory=list)
    dim: int = 4

    def encode(self, texts, progress=None) -> np.ndarray:
        self.calls.append(len(texts))
        rows = []
        for text in texts:
            if " which is " in text:  # a synset text: class by name
                rows.append(_vec(1.0, ["lion", "cougar", "lemon"].index(text.split(" which is ")[0])))
            else:
                rows.append(self.table[text])
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), 4)


CAPTIONS = {
    "a lion resting in the grass": _vec(0.9, 0),
    "Lion brand yarn, 3 pack": _vec(0.2, 0),
    "lion": _vec(0.5, 0),  # exactly at a 0.5 threshold: dropped (strict >)
    "a mountain lion at dusk": _vec(0.85, 1),
    "lemon tart recipe": _vec(0.83, 2),
    "a lion and a lemon": _vec(0.99, 0),  # two classes: multi-label
}


@pytest.fixture
def stages(tmp_path):
    catalog = str(tmp_path / "catalog.parquet")
    run_catalog(write_class_file(tmp_path / "classes.txt", [LION, COUGAR, LEMON]), catalog)
    lemma_map = tmp_path / "lemmas.parquet"
    pd.DataFrame({"lemma": ["lion", "mountain lion", "lemon"], "wnid": [LION, COUGAR, LEMON]}).to_parquet(lemma_map)
    texts = [*CAPTIONS, "nothing to see"]
    nsfw = ["UNLIKELY"] * len(texts)
    nsfw[3] = "NSFW"  # the mountain lion row
    write_corpus_part(tmp_path / "corpus" / "p.parquet", texts, NSFW=nsfw)
    run_match(str(tmp_path / "corpus"), str(tmp_path / "matches"), str(lemma_map))
    return tmp_path, catalog


def _similarity(tmp_path, catalog, spec="clip"):
    encoder = FakeEncoder(spec=spec, table=CAPTIONS)
    manifest = run_similarity(
        str(tmp_path / "matches"), catalog, str(tmp_path / "sim"), SimilarityConfig(encoder=spec), lambda c: encoder
    )
    return manifest, encoder


def test_similarity_scores_every_caption_class_pair_once(stages) -> None:
    tmp_path, catalog = stages
    manifest, encoder = _similarity(tmp_path, catalog)
    assert (manifest.rows_in, manifest.rows_out, manifest.dropped) == (
        7,
        7,
        {"wnid_not_in_catalog": 0, "no_caption_embedding": 0},
    )
    table = pd.read_parquet(manifest.outputs[0]).set_index(["key", "wnid"])["similarity"]
    assert table[("p/0", LION)] == pytest.approx(0.9, abs=1e-6)
    assert table[("p/3", COUGAR)] == pytest.approx(0.85, abs=1e-6)
    assert table[("p/5", LEMON)] == pytest.approx(0.0, abs=1e-6) and table[("p/5", LION)] == pytest.approx(0.99)
    assert encoder.calls == [3, 6]  # synset texts once, then the part's 6 distinct captions
    again, encoder2 = _similarity(tmp_path, catalog)
    assert again == manifest and encoder2.calls == []  # complete: not re-encoded


def test_selection_rules_threshold_and_counts(stages) -> None:
    tmp_path, catalog = stages
    _similarity(tmp_path, catalog)
    out = str(tmp_path / "sel")
    manifest = run_select(
        str(tmp_path / "matches"), str(tmp_path / "sim"), catalog, out, SelectionConfig(threshold=0.5)
    )
    assert manifest.rows_in == 6
    assert manifest.dropped == {"multi_label": 1, "nsfw": 1, "no_similarity": 0, "below_threshold": 2}
    assert manifest.rows_out == 2
    index = pd.read_parquet(f"{out}/laionet.parquet")
    assert index["text"].tolist() == ["a lion resting in the grass", "lemon tart recipe"]
    assert index["class_index"].tolist() == [0, 2]  # the class file's order: lion, cougar, lemon
    freq = pd.read_parquet(f"{out}/class_frequency.parquet")
    assert freq.set_index("wnid")["n"].to_dict() == {LION: 1, LEMON: 1}
    sweep = pd.read_parquet(f"{out}/sweep.parquet").set_index("threshold")
    assert sweep.loc[0.5, "n_samples"] == 2 and sweep.loc[0.49, "n_samples"] == 3  # strict >: 0.5 itself is out
    assert sweep.loc[0.0, "n_classes"] == 2  # candidates: lion ×3, lemon ×1 (cougar's only caption is NSFW)
    top = pd.read_parquet(f"{out}/top50.parquet")  # built from the selected index: nothing at or below 0.5
    assert sorted(top["text"]) == sorted(index["text"]) and (top["text_similarity"] > 0.5).all()
    assert manifest.extra["top_k_rows"] == 2 and manifest.extra["top_k_classes"] == 2


def test_paper_threshold_applies_to_the_paper_encoder_and_reselection_reuses_similarities(stages) -> None:
    tmp_path, catalog = stages
    _similarity(tmp_path, catalog, spec="clip")
    config = SelectionConfig(nsfw_keep=None)
    manifest = run_select(str(tmp_path / "matches"), str(tmp_path / "sim"), catalog, str(tmp_path / "a"), config)
    assert manifest.extra["threshold"] == 0.82 and manifest.extra["threshold_rule"] == "paper value for this encoder"
    index = pd.read_parquet(tmp_path / "a" / "laionet.parquet")
    assert sorted(index["text"]) == ["a lion resting in the grass", "a mountain lion at dusk", "lemon tart recipe"]
    best = SelectionConfig(nsfw_keep=None, multi_label="best", threshold=0.95)
    manifest = run_select(str(tmp_path / "matches"), str(tmp_path / "sim"), catalog, str(tmp_path / "b"), best)
    assert manifest.dropped["multi_label"] == 0 and manifest.rows_out == 1
    assert pd.read_parquet(tmp_path / "b" / "laionet.parquet")["wnid"].tolist() == [LION]  # 0.99 beats lemon's 0


def test_candidates_rules_on_literal_rows() -> None:
    matches = pd.DataFrame(
        {
            "key": ["a", "b", "c", "d"],
            "wnids": [[LION], [LION, LEMON], [LEMON], [COUGAR]],
            "nsfw": ["UNLIKELY", "UNLIKELY", "UNSURE", "UNLIKELY"],
        }
    )
    sims = pd.DataFrame(
        {"key": ["a", "b", "b", "c"], "wnid": [LION, LION, LEMON, LEMON], "similarity": [0.7, 0.2, 0.6, 0.9]}
    )
    cand, dropped = candidates(matches, sims, SelectionConfig())
    assert cand.to_dict("records") == [{"key": "a", "wnid": LION, "similarity": 0.7}]
    assert dropped == {"multi_label": 1, "nsfw": 1, "no_similarity": 1, "below_threshold": 0}
    cand, _ = candidates(matches, sims, SelectionConfig(multi_label="best", nsfw_keep=None))
    assert cand.set_index("key")["wnid"].to_dict() == {"a": LION, "b": LEMON, "c": LEMON}


def test_sweep_is_strict_and_knee_finds_the_drop() -> None:
    assert sweep_counts(np.array([0.5, 0.6, 0.6]), np.array([0.4, 0.5, 0.6])).tolist() == [3, 2, 0]
    grid = np.round(np.arange(0.0, 1.0001, 0.1), 2)
    coverage = [100, 100, 99, 99, 98, 97, 95, 90, 40, 5, 0]  # flat, then falls sharply after 0.7
    sweep = pd.DataFrame({"threshold": grid, "n_samples": 0, "n_classes": coverage})
    assert calibrate_threshold(sweep, "knee") == 0.7
    assert calibrate_threshold(sweep, "coverage", 0.97) == 0.5
    with pytest.raises(ValueError, match="unknown calibration rule"):
        calibrate_threshold(sweep, "elbow")


def test_top_k_keeps_the_most_similar_rows_per_class() -> None:
    frame = pd.DataFrame(
        {"key": list("abcde"), "wnid": [LION] * 3 + [LEMON] * 2, "similarity": [0.1, 0.9, 0.5, 0.3, 0.4]}
    )
    assert top_k_per_class(frame, 2)["key"].tolist() == ["b", "c", "e", "d"]  # lion (n02…) first, then lemon


def test_bad_encoder_fails_before_any_part_is_written(stages) -> None:
    tmp_path, catalog = stages
    with pytest.raises(EncoderError):
        run_similarity(
            str(tmp_path / "matches"), catalog, str(tmp_path / "sim"), SimilarityConfig(encoder="open_clip:ViT-Nope")
        )
    assert not (tmp_path / "sim").exists() or not any((tmp_path / "sim").glob("*.parquet"))
    assert read_manifest(str(tmp_path / "sim")) is None


def test_wnid_missing_from_the_catalog_is_skipped_and_counted(stages) -> None:
    tmp_path, _ = stages
    small = str(tmp_path / "small.parquet")
    run_catalog(write_class_file(tmp_path / "small.txt", [LION, COUGAR]), small)
    encoder = FakeEncoder(spec="clip", table=CAPTIONS)
    manifest = run_similarity(
        str(tmp_path / "matches"), small, str(tmp_path / "s2"), SimilarityConfig(encoder="clip"), lambda c: encoder
    )
    assert manifest.dropped == {"wnid_not_in_catalog": 2, "no_caption_embedding": 0} and manifest.rows_out == 5
    sel = run_select(
        str(tmp_path / "matches"), str(tmp_path / "s2"), small, str(tmp_path / "x"), SelectionConfig(threshold=0.5)
    )
    assert sel.dropped["no_similarity"] == 1  # the lemon tart
    assert sel.rows_in == sel.rows_out + sum(sel.dropped.values())


def test_empty_and_all_null_parts_flow_through_every_stage(tmp_path) -> None:
    catalog = str(tmp_path / "catalog.parquet")
    run_catalog(write_class_file(tmp_path / "classes.txt", [LION]), catalog)
    lemma_map = tmp_path / "lemmas.parquet"
    pd.DataFrame({"lemma": ["lion"], "wnid": [LION]}).to_parquet(lemma_map)
    write_corpus_part(tmp_path / "corpus" / "empty.parquet", [])
    write_corpus_part(tmp_path / "corpus" / "nulls.parquet", [None, None])
    write_corpus_part(tmp_path / "corpus" / "some.parquet", ["a lion resting in the grass"])
    match = run_match(str(tmp_path / "corpus"), str(tmp_path / "m"), str(lemma_map))
    assert (match.rows_in, match.rows_out, match.dropped["null_text"]) == (3, 1, 2)
    encoder = FakeEncoder(spec="clip", table=CAPTIONS)
    sims = run_similarity(
        str(tmp_path / "m"), catalog, str(tmp_path / "s"), SimilarityConfig(encoder="clip"), lambda c: encoder
    )
    assert (sims.rows_in, sims.rows_out, len(sims.outputs)) == (1, 1, 3)
    sel = run_select(
        str(tmp_path / "m"), str(tmp_path / "s"), catalog, str(tmp_path / "x"), SelectionConfig(threshold=0.5)
    )
    assert (sel.rows_in, sel.rows_out) == (1, 1)


def _write_laion_embeddings(directory, rows: list[tuple[str, str, list[float]]], shard: int, extra_rows: int = 0):
    """A LAION-style pair text_emb_<i>.npy + metadata_<i>.parquet (float16 embeddings, url + caption columns)."""
    (directory / "text_emb").mkdir(parents=True, exist_ok=True)
    (directory / "metadata").mkdir(parents=True, exist_ok=True)
    emb = np.asarray([r[2] for r in rows] + [[0.0, 0.0, 0.0, 1.0]] * extra_rows, dtype=np.float16)
    np.save(directory / "text_emb" / f"text_emb_{shard}.npy", emb)
    pd.DataFrame({"url": [r[0] for r in rows], "caption": [r[1] for r in rows]}).to_parquet(
        directory / "metadata" / f"metadata_{shard}.parquet"
    )


def test_precomputed_caption_and_synset_embeddings_need_no_text_model(stages) -> None:
    tmp_path, catalog = stages
    urls = [f"http://127.0.0.1:1/{i}.jpg" for i in range(7)]  # write_corpus_part's URLs
    texts = list(CAPTIONS)
    emb_dir = tmp_path / "laion"
    # shard 0 holds rows 0-2 and an unrelated row; shard 1 holds rows 4-5; row 3 (mountain lion) has no embedding
    _write_laion_embeddings(
        emb_dir, [(urls[i], texts[i], CAPTIONS[texts[i]]) for i in range(3)] + [("x", "y", _vec(0, 0))], 0
    )
    _write_laion_embeddings(emb_dir, [(urls[i], texts[i], CAPTIONS[texts[i]]) for i in (4, 5)], 1)
    synsets = tmp_path / "synsets.npy"
    np.save(synsets, np.eye(3, 4, dtype=np.float32))  # catalog order: lion, cougar, lemon

    def no_model(config):
        raise AssertionError("no text model may be loaded")

    config = SimilarityConfig(
        encoder="clip",
        caption_embeddings=str(emb_dir / "text_emb" / "text_emb_*.npy"),
        caption_metadata=str(emb_dir / "metadata" / "metadata_*.parquet"),
        synset_embeddings=str(synsets),
    )
    manifest = run_similarity(str(tmp_path / "matches"), catalog, str(tmp_path / "sim"), config, no_model)
    assert manifest.dropped == {"wnid_not_in_catalog": 0, "no_caption_embedding": 1}
    assert manifest.rows_out == 6
    table = pd.read_parquet(manifest.outputs[0]).set_index(["key", "wnid"])["similarity"]
    assert table[("p/0", LION)] == pytest.approx(0.9, abs=2e-3)  # float16 storage, as LAION ships it
    assert table[("p/4", LEMON)] == pytest.approx(0.83, abs=2e-3)
    assert ("p/3", COUGAR) not in table.index


def test_misaligned_or_unpaired_embedding_files_are_refused(stages) -> None:
    tmp_path, catalog = stages
    emb_dir = tmp_path / "laion"
    _write_laion_embeddings(emb_dir, [("u", "t", _vec(1, 0))], 0)
    np.save(emb_dir / "text_emb" / "text_emb_0.npy", np.zeros((3, 4), dtype=np.float16))  # 3 rows vs 1 metadata row
    config = SimilarityConfig(
        encoder="clip",
        caption_embeddings=str(emb_dir / "text_emb" / "*.npy"),
        caption_metadata=str(emb_dir / "metadata" / "*.parquet"),
        synset_embeddings=None,
    )
    encoder = FakeEncoder(spec="clip", table=CAPTIONS)
    with pytest.raises(EmbeddingShardError, match=r"text_emb_0\.npy has 3 rows but .*metadata_0\.parquet has 1"):
        run_similarity(str(tmp_path / "matches"), catalog, str(tmp_path / "s"), config, lambda c: encoder)
    np.save(emb_dir / "text_emb" / "text_emb_1.npy", np.zeros((1, 4), dtype=np.float16))
    with pytest.raises(EmbeddingShardError, match=r"text_emb_1\.npy has no partner with number 1"):
        run_similarity(str(tmp_path / "matches"), catalog, str(tmp_path / "s"), config, lambda c: encoder)


def test_similarities_of_a_rebuilt_match_stage_are_not_reused(stages) -> None:
    """Rebuilding matches/ with other contents must re-score the changed part (its records key on its content)."""
    tmp_path, catalog = stages
    _similarity(tmp_path, catalog)
    lemma_map = tmp_path / "lemmas_lion_only.parquet"
    pd.DataFrame({"lemma": ["lion"], "wnid": [LION]}).to_parquet(lemma_map)
    run_match(str(tmp_path / "corpus"), str(tmp_path / "matches"), str(lemma_map))  # same dir, new contents
    again, encoder2 = _similarity(tmp_path, catalog)
    assert encoder2.calls  # re-encoded
    pairs = pd.read_parquet(again.outputs[0])
    assert set(pairs["wnid"]) == {LION}  # no stale cougar/lemon pairs from the first match stage
    sel = run_select(
        str(tmp_path / "matches"), str(tmp_path / "sim"), catalog, str(tmp_path / "x"), SelectionConfig(threshold=0.5)
    )
    assert sel.rows_in == sel.rows_out + sum(sel.dropped.values())


def test_selection_ignores_similarities_of_classes_the_caption_did_not_match() -> None:
    matches = pd.DataFrame({"key": ["a"], "wnids": [[LION]], "nsfw": ["UNLIKELY"]})
    stale = pd.DataFrame({"key": ["a", "a"], "wnid": [COUGAR, LION], "similarity": [0.99, 0.4]})
    cand, _ = candidates(matches, stale, SelectionConfig())
    assert cand.to_dict("records") == [{"key": "a", "wnid": LION, "similarity": 0.4}]


def _knee_by_loop(t: list[float], c: list[int]) -> float:
    """Kneedle by hand: up to the first threshold with no class left (else the last), the threshold whose coverage
    lies farthest above the chord joining the end points (the first such one)."""
    if not c or c[0] <= 0:
        return t[0] if t else 0.0
    end = next((i for i, v in enumerate(c) if v == 0), len(c) - 1)
    if end == 0:
        return t[0]
    best, arg = -math.inf, 0
    for i in range(end + 1):
        position = (t[i] - t[0]) / (t[end] - t[0])  # 0 and 1 exactly at the end points: they lie on the chord
        above = c[i] - (c[0] + (c[end] - c[0]) * position)
        if above > best:
            best, arg = above, i
    return t[arg]


def test_knee_matches_a_plain_loop_on_random_coverage_curves() -> None:
    rng = np.random.default_rng(7)
    for trial in range(40):
        size = int(rng.integers(3, 16))
        start, step = float(rng.choice([0.1, 0.25, 0.4])), float(rng.choice([0.01, 0.05]))
        t = [round(start + step * i, 6) for i in range(size)]
        falls = np.sort(rng.integers(0, 40, size=size - 1))[::-1] if trial % 2 else rng.integers(0, 40, size - 1)
        c = [int(v) for v in np.maximum(200 - np.concatenate([[0], np.cumsum(falls)]), 0)]  # non-increasing
        if trial % 3 == 0:
            c[-1] = 0  # ends with no class left
        sweep = pd.DataFrame({"threshold": t, "n_samples": 0, "n_classes": c})
        assert calibrate_threshold(sweep) == _knee_by_loop(t, c), (t, c)  # the knee by default


def test_calibration_edges_and_coverage_rule_boundary() -> None:
    def sweep(t: list[float], c: list[int]) -> pd.DataFrame:
        return pd.DataFrame({"threshold": t, "n_samples": 0, "n_classes": c})

    assert calibrate_threshold(sweep([], [])) == 0.0
    assert calibrate_threshold(sweep([], []), "coverage") == 0.0
    for rule in ("knee", "coverage"):
        assert calibrate_threshold(sweep([0.3, 0.4, 0.5], [0, 0, 0]), rule) == 0.3  # no class at all
    # nothing left after the first: the end point lies on the chord, not 1e-15 above it (it was taken: a threshold
    # with no class left)
    assert calibrate_threshold(sweep([0.3, 0.4, 0.5], [5, 0, 0])) == 0.3
    assert calibrate_threshold(sweep([0.3, 0.4, 0.5], [5, 1, 0])) == 0.3  # below the chord throughout
    assert calibrate_threshold(sweep([0.3, 0.4, 0.5], [6, 5, 1])) == 0.4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a grid of one threshold: that threshold, without a 0/0 chord
        assert calibrate_threshold(sweep([0.3], [5])) == 0.3
        assert calibrate_threshold(sweep([0.3], [5]), "coverage") == 0.3
    assert calibrate_threshold(sweep([0.3, 0.4, 0.5], [1, 1, 0]), "coverage") == 0.4  # a single class is coverage
    t = [0.2, 0.3, 0.4, 0.5, 0.6]
    assert calibrate_threshold(sweep(t, [100, 80, 50, 49, 10]), "coverage", 0.5) == 0.4  # 50 ≥ 0.5 × 100: kept
    assert calibrate_threshold(sweep(t, [100, 99, 98, 97, 10]), "coverage") == 0.4  # default: ≥ 98 % of 100
    assert calibrate_threshold(sweep(t, [100, 99, 98, 97, 10]), "coverage", 0.97) == 0.5
