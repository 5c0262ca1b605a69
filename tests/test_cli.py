import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from laionet.cli import app
from tests.conftest import write_corpus_part

runner = CliRunner()


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["catalog"],
        ["lemmas"],
        ["match"],
        ["summary"],
        ["similarity"],
        ["select"],
        ["accuracy"],
        ["intra-class"],
        ["download"],
        ["ingest"],
        ["verify"],
        ["ocr"],
        ["demo"],
        ["run"],
        ["status"],
        ["doctor"],
        ["export", "hf"],
        ["report"],
        ["corpus", "openclipart"],
        ["wordnet", "install"],
    ],
)
def test_every_command_has_help(command) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_catalog_lemmas_match_summary_from_the_command_line(tmp_path) -> None:
    wnids = tmp_path / "classes.txt"
    wnids.write_text("n02125311\nn02129165\nn07749582\n")
    cat, lemmas, out = tmp_path / "cat.parquet", tmp_path / "lemmas.parquet", tmp_path / "m"
    assert runner.invoke(app, ["catalog", "--classes", str(wnids), "--out", str(cat)]).exit_code == 0
    result = runner.invoke(app, ["lemmas", "--catalog", str(cat), "--mode", "default", "--out", str(lemmas)])
    assert result.exit_code == 0, result.output
    assert "over 3 classes" in result.output
    write_corpus_part(tmp_path / "c" / "p.parquet", ["a Mountain Lion", "lemons", "a lemon tree", "lion"])
    args = ["match", "--corpus", str(tmp_path / "c" / "*.parquet"), "--out", str(out), "--lemma-map", str(lemmas)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "rows in=4 out=3 dropped: unmatched=1" in result.output
    result = runner.invoke(app, ["summary", "--matches", str(out), "--catalog", str(cat), "--json"])
    summary = json.loads(result.output)
    assert summary["classes_hit"] == 3
    assert {r["name"] for r in summary["top_classes"]} == {"cougar", "lion", "lemon"}
    assert pd.read_parquet(out / "p.parquet")["key"].tolist() == ["p/0", "p/2", "p/3"]


def test_cli_errors_are_one_clear_line(tmp_path) -> None:
    write_corpus_part(tmp_path / "c" / "p.parquet", ["lion"])
    lemmas = tmp_path / "l.parquet"
    pd.DataFrame({"lemma": ["lion"], "wnid": ["n02129165"]}).to_parquet(lemmas)
    args = ["match", "--corpus", str(tmp_path / "c"), "--out", str(tmp_path / "m"), "--lemma-map", str(lemmas)]
    result = runner.invoke(app, [*args, "--text-col", "caption"])
    assert result.exit_code == 2
    assert "column 'caption' (for text) not found" in result.output
    result = runner.invoke(app, [*args, "--mode", "fuzzy"], env={"COLUMNS": "240"})
    assert result.exit_code == 2 and "'fuzzy' is not one of 'paper', 'default'" in result.output
    result = runner.invoke(app, ["summary"])
    assert (
        result.exit_code == 2
        and result.output == "error: missing option --matches (the output directory of `laionet match`)\n"
    )


def test_old_spellings_still_work(tmp_path) -> None:
    """``lemmas --policy`` (now ``--mode``, with a warning) and the match directory of ``summary`` as a positional."""
    wnids = tmp_path / "classes.txt"
    wnids.write_text("n02129165\n")
    cat, lemmas, out = tmp_path / "cat.parquet", tmp_path / "lemmas.parquet", tmp_path / "m"
    assert runner.invoke(app, ["catalog", "--classes", str(wnids), "--out", str(cat)]).exit_code == 0
    result = runner.invoke(app, ["lemmas", "--catalog", str(cat), "--policy", "paper", "--out", str(lemmas)])
    assert result.exit_code == 0, result.output
    assert "--policy is deprecated; use --mode" in result.output
    assert "Panthera leo" in pd.read_parquet(lemmas)["lemma"].tolist()  # the paper policy: case kept
    write_corpus_part(tmp_path / "c" / "p.parquet", ["a lion"])
    args = ["match", "--corpus", str(tmp_path / "c"), "--out", str(out), "--lemma-map", str(lemmas), "--mode", "paper"]
    assert runner.invoke(app, args).exit_code == 0
    assert json.loads(runner.invoke(app, ["summary", str(out), "--json"]).output)["rows_matched"] == 1


def test_similarity_out_is_the_directory_select_reads(tmp_path) -> None:
    """``similarity --out S`` writes into S itself, and ``select --similarity S`` takes the same path (precomputed
    caption and synset embeddings: no text model loads)."""
    wnids = tmp_path / "classes.txt"
    wnids.write_text("n02129165\nn07749582\n")  # lion, lemon
    cat, lemmas, matches = tmp_path / "cat.parquet", tmp_path / "lemmas.parquet", tmp_path / "m"
    assert runner.invoke(app, ["catalog", "--classes", str(wnids), "--out", str(cat)]).exit_code == 0
    assert runner.invoke(app, ["lemmas", "--catalog", str(cat), "--out", str(lemmas)]).exit_code == 0
    captions = ["a lion", "a lemon", "the sea"]
    write_corpus_part(tmp_path / "c" / "p.parquet", captions)
    args = ["match", "--corpus", str(tmp_path / "c"), "--out", str(matches), "--lemma-map", str(lemmas)]
    assert runner.invoke(app, args).exit_code == 0
    emb = tmp_path / "emb"
    emb.mkdir()
    np.save(emb / "text_emb_0.npy", np.eye(4, dtype=np.float16)[:3])
    urls = [f"http://127.0.0.1:1/{i}.jpg" for i in range(3)]  # write_corpus_part's URLs
    pd.DataFrame({"url": urls, "caption": captions}).to_parquet(emb / "metadata_0.parquet")
    np.save(tmp_path / "synsets.npy", np.array([[1, 0, 0, 0], [0.6, 0.8, 0, 0]], dtype=np.float32))
    sim = tmp_path / "sim"
    precomputed = ["--caption-embeddings", str(emb / "text_emb_*.npy"), "--caption-metadata",
                   str(emb / "metadata_*.parquet"), "--synset-embeddings", str(tmp_path / "synsets.npy")]  # fmt: skip
    args = ["similarity", "--matches", str(matches), "--catalog", str(cat), "--out", str(sim), *precomputed]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (sim / "_manifest.json").exists()
    result = runner.invoke(app, ["select", "--matches", str(matches), "--similarity", str(sim), "--catalog", str(cat),
                                 "--out", str(tmp_path / "sel"), "--threshold", "0.5"])  # fmt: skip
    assert result.exit_code == 0, result.output
    index = pd.read_parquet(tmp_path / "sel" / "laionet.parquet")
    assert index.set_index("text")["wnid"].to_dict() == {"a lion": "n02129165", "a lemon": "n07749582"}
    assert index.set_index("text")["text_similarity"].to_dict() == pytest.approx({"a lion": 1.0, "a lemon": 0.8})
