import json
from pathlib import Path

import pandas as pd
import pytest

from laionet.text.lemmas import build_lemma_map, reachability

REFERENCE_MAP = Path(__file__).parent / "data" / "paper_lemma2wnid_unique_in_ilsvrc.json"


def test_paper_policy_reproduces_the_reference_map(catalog_1k: pd.DataFrame) -> None:
    """The authors' map came from a 999-row class list; on the true 1000 classes exactly two entries change."""
    reference = json.loads(REFERENCE_MAP.read_text())
    assert len(reference) == 1825 and len(set(reference.values())) == 995
    ours = build_lemma_map(catalog_1k, "paper")
    mapping = dict(zip(ours.table["lemma"], ours.table["wnid"], strict=True))
    only_reference = {k: v for k, v in reference.items() if mapping.get(k) != v}
    only_ours = {k: v for k, v in mapping.items() if reference.get(k) != v}
    assert only_reference == {"crane": "n02012849", "Siberian husky": "n02112837"}
    assert only_ours == {"Siberian husky": "n02110185"}
    dropped = ours.dropped.set_index("lemma")
    assert dropped.loc["crane", "wnids"] == ["n02012849", "n03126707"]
    assert dropped.loc["crane", "reason"] == "ambiguous"


def test_paper_policy_keeps_case_and_punctuation(catalog_1k: pd.DataFrame) -> None:
    lemmas = set(build_lemma_map(catalog_1k, "paper").table["lemma"])
    assert {"Shih-Tzu", "go-kart", "jack-o'-lantern", "Persian cat"} <= lemmas
    assert "persian cat" not in lemmas


def test_default_policy_normalises_and_resolves_head_names(catalog_1k: pd.DataFrame) -> None:
    result = build_lemma_map(catalog_1k, "default")
    mapping = dict(zip(result.table["lemma"], result.table["wnid"], strict=True))
    assert mapping["shih tzu"] == "n02086240"
    assert mapping["go kart"] == "n03444034"
    assert mapping["jack o lantern"] == "n03590841"
    assert mapping["persian cat"] == "n02123394"
    assert mapping["siberian husky"] == "n02110185"
    assert "crane" not in mapping  # head name of two classes: ambiguous, dropped
    dropped = result.dropped.set_index("lemma")
    assert dropped.loc["crane", "reason"] == "ambiguous"
    resolved = dropped[dropped["reason"] == "resolved_to_head_name"]
    for lemma in resolved.index:
        winner = mapping[lemma]
        assert catalog_1k.set_index("wnid").loc[winner, "name"].lower() == lemma
    assert result.table["lemma"].is_unique


def test_unknown_policy_and_bad_catalog(catalog_1k: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="unknown lemma policy"):
        build_lemma_map(catalog_1k, "fuzzy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"lacks columns \['lemmas'\]"):
        build_lemma_map(catalog_1k.drop(columns=["lemmas"]), "paper")


def test_reachability_reproduces_the_reference_defect_counts(catalog_1k: pd.DataFrame) -> None:
    """REFERENCE.md defects 2-3: 64 punctuated lemmas never match (15 classes), 94 nested pairs, 42 classes
    effectively unreachable under the paper rule; the default policy leaves none unreachable."""
    paper = reachability(build_lemma_map(catalog_1k, "paper").table, "paper")
    assert paper == {
        "lemmas": 1824,
        "lemmas_never_matching": 64,
        "nested_pairs": 94,
        "classes": 994,
        "classes_unreachable": 42,
    }
    default = reachability(build_lemma_map(catalog_1k, "default").table, "default")
    assert default["lemmas_never_matching"] == 0 and default["nested_pairs"] == 0
    assert default["classes_unreachable"] == 0 and default["classes"] == 996
