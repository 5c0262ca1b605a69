import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laionet.core.manifest import read_manifest
from laionet.text import match as match_stage
from laionet.text.corpus import ColumnMap, CorpusError
from laionet.text.match import MATCH_SCHEMA, MatchConfig, read_matches, run_match
from tests.conftest import write_corpus_part

COUGAR, LION, LEMON = "n02125311", "n02129165", "n07749582"


@pytest.fixture
def lemma_map(tmp_path) -> str:
    path = tmp_path / "lemma_map.parquet"
    table = pd.DataFrame({"lemma": ["mountain lion", "lion", "lemon", "puma"], "wnid": [COUGAR, LION, LEMON, COUGAR]})
    table.to_parquet(path)
    return str(path)


def _corpus(tmp_path) -> str:
    write_corpus_part(tmp_path / "corpus" / "part-00000.parquet", ["a lion", "nothing here", None, "Puma shoes"])
    # SAMPLE_IDs unique across the corpus, as the key column's contract asks (LAION's are)
    write_corpus_part(
        tmp_path / "corpus" / "part-00001.parquet",
        ["lemon tart", "a mountain lion and a lion", "x"],
        SAMPLE_ID=pa.array([10, 11, 12], pa.int64()),
    )
    return str(tmp_path / "corpus" / "*.parquet")


def test_match_writes_one_part_per_input_and_counts_add_up(tmp_path, lemma_map) -> None:
    out = str(tmp_path / "matches")
    manifest = run_match(_corpus(tmp_path), out, lemma_map, MatchConfig(mode="default"))
    assert manifest.rows_in == 7
    assert manifest.rows_out == 4
    assert manifest.dropped == {
        "unmatched": 2,
        "null_text": 1,
        "invalid_utf8": 0,
        "too_long": 0,
        "null_key": 0,
        "duplicate_key": 0,
    }
    assert [os.path.basename(p) for p in manifest.outputs] == ["part-00000.parquet", "part-00001.parquet"]
    assert read_manifest(out) == manifest
    first = pq.read_table(manifest.outputs[0])
    assert first.schema.equals(MATCH_SCHEMA)
    rows = read_matches(out).set_index("key")
    assert rows.loc["part-00000/0", "wnids"].tolist() == [LION]
    assert rows.loc["part-00000/3", "wnids"].tolist() == [COUGAR]
    assert rows.loc["part-00001/1", "wnids"].tolist() == [COUGAR, LION]
    assert rows.loc["part-00001/1", "lemmas"].tolist() == ["lion", "mountain lion"]
    assert rows.loc["part-00001/0", "url"] == "http://127.0.0.1:1/0.jpg"
    assert rows.loc["part-00001/0", "nsfw"] == "UNLIKELY"
    assert rows.loc["part-00001/0", "width"] == 48 and rows.loc["part-00001/0", "laion_similarity"] == 0.3


def test_paper_mode_keeps_the_reference_semantics(tmp_path, lemma_map) -> None:
    out = str(tmp_path / "matches")
    run_match(_corpus(tmp_path), out, lemma_map, MatchConfig(mode="paper"))
    rows = read_matches(out).set_index("key")
    assert "part-00000/3" not in rows.index  # 'Puma' ≠ 'puma'
    assert rows.loc["part-00001/1", "wnids"].tolist() == [COUGAR, LION]


def test_key_column_and_small_batches_give_the_same_matches(tmp_path, lemma_map) -> None:
    corpus = _corpus(tmp_path)
    base = read_matches(str(run_match(corpus, str(tmp_path / "a"), lemma_map).outputs[0].rsplit("/", 1)[0]))
    config = MatchConfig(columns=ColumnMap(key="SAMPLE_ID"), batch_size=1)
    keyed = read_matches(str(tmp_path / "b")) if run_match(corpus, str(tmp_path / "b"), lemma_map, config) else None
    assert keyed is not None
    assert keyed["row"].tolist() == base["row"].tolist()
    assert keyed["wnids"].map(list).tolist() == base["wnids"].map(list).tolist()
    sample_ids = [r if k.startswith("part-00000") else 10 + r for k, r in zip(base["key"], base["row"], strict=True)]
    assert keyed["key"].tolist() == [str(i) for i in sample_ids]


def test_bad_captions_are_skipped_and_counted_by_reason(tmp_path, lemma_map) -> None:
    raw = pa.array([b"a lion", b"lion \xff\xfe bad", None, b"lion " * 100, b"lemon"], type=pa.binary())
    write_corpus_part(tmp_path / "c" / "bad.parquet", raw.view(pa.string()))  # invalid UTF-8 inside a string column
    manifest = run_match(str(tmp_path / "c"), str(tmp_path / "m"), lemma_map, MatchConfig(max_text_bytes=100))
    assert manifest.dropped == {
        "unmatched": 0,
        "null_text": 1,
        "invalid_utf8": 1,
        "too_long": 1,
        "null_key": 0,
        "duplicate_key": 0,
    }
    assert manifest.rows_out == 2 and manifest.rows_in == 5
    assert read_matches(str(tmp_path / "m"))["key"].tolist() == ["bad/0", "bad/4"]


def test_binary_caption_column_is_decoded(tmp_path, lemma_map) -> None:
    raw = pa.array([b"a lion", b"\xc3\x28 lemon"], type=pa.binary())
    write_corpus_part(tmp_path / "c" / "p.parquet", raw)
    manifest = run_match(str(tmp_path / "c"), str(tmp_path / "m"), lemma_map)
    assert (manifest.rows_out, manifest.dropped["invalid_utf8"]) == (1, 1)


def test_missing_or_mistyped_columns_name_the_file_and_column(tmp_path, lemma_map) -> None:
    part = write_corpus_part(tmp_path / "c" / "p.parquet", ["a lion"])
    with pytest.raises(CorpusError, match=r"p\.parquet: column 'CAPTION' \(for text\) not found.*--text-col"):
        run_match(str(part), str(tmp_path / "m"), lemma_map, MatchConfig(columns=ColumnMap(text="CAPTION")))
    write_corpus_part(tmp_path / "d" / "q.parquet", ["a lion"], TEXT=pa.array([7], pa.int64()))
    with pytest.raises(CorpusError, match=r"q\.parquet: caption column 'TEXT' has type int64"):
        run_match(str(tmp_path / "d"), str(tmp_path / "m"), lemma_map)
    write_corpus_part(tmp_path / "e" / "r.parquet", ["a lion"], WIDTH=pa.array(["wide"], pa.string()))
    with pytest.raises(CorpusError, match=r"r\.parquet: column 'WIDTH' \(string\) cannot be read as int64"):
        run_match(str(tmp_path / "e"), str(tmp_path / "m"), lemma_map)
    assert not (tmp_path / "m" / "_manifest.json").exists()


def test_truncated_part_fails_cleanly_and_leaves_no_partial_output(tmp_path, lemma_map) -> None:
    good = write_corpus_part(tmp_path / "c" / "a.parquet", ["a lion"] * 10)
    bad = write_corpus_part(tmp_path / "c" / "b.parquet", ["a lemon"] * 5000)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match=r"b\.parquet: not a readable parquet file"):
        run_match(str(tmp_path / "c"), str(tmp_path / "m"), lemma_map)
    left = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert left == [
        "_INCOMPLETE",
        "_parts",
        "a.parquet",
    ]  # the good part is complete and recorded; nothing of b; no manifest
    assert sorted(p.name for p in (tmp_path / "m" / "_parts").iterdir()) == ["a.json"]
    assert good.exists()


def test_crash_mid_part_leaves_no_partial_file_and_rerun_resumes(tmp_path, lemma_map, monkeypatch) -> None:
    corpus = _corpus(tmp_path)
    out = tmp_path / "m"
    real = match_stage.match_part
    calls: list[str] = []
    crash = [True]

    def crash_on_second(part, out_path, matcher, config, on_rows=None):
        calls.append(part)
        if crash[0] and len(calls) == 2:
            raise RuntimeError("killed")
        return real(part, out_path, matcher, config, on_rows)

    monkeypatch.setattr(match_stage, "match_part", crash_on_second)
    with pytest.raises(RuntimeError, match="killed"):
        run_match(corpus, str(out), lemma_map)
    assert sorted(p.name for p in out.iterdir()) == ["_INCOMPLETE", "_parts", "part-00000.parquet"]
    first_mtime = (out / "part-00000.parquet").stat().st_mtime_ns
    crash[0] = False
    calls.clear()
    manifest = run_match(corpus, str(out), lemma_map)
    assert [os.path.basename(c) for c in calls] == ["part-00001.parquet"]  # only the unfinished part
    assert manifest.extra["parts_skipped"] == 1 and manifest.rows_in == 7
    assert (out / "part-00000.parquet").stat().st_mtime_ns == first_mtime
    calls.clear()
    assert run_match(corpus, str(out), lemma_map) == manifest and calls == []  # complete: nothing to do
    run_match(corpus, str(out), lemma_map, MatchConfig(mode="paper"))
    assert len(calls) == 2  # another config: every part again


def test_parallel_workers_match_the_sequential_run(tmp_path, lemma_map) -> None:
    corpus = _corpus(tmp_path)
    seq = run_match(corpus, str(tmp_path / "seq"), lemma_map)
    par = run_match(corpus, str(tmp_path / "par"), lemma_map, workers=2)
    assert (par.rows_in, par.rows_out, par.dropped) == (seq.rows_in, seq.rows_out, seq.dropped)
    a, b = read_matches(str(tmp_path / "seq")), read_matches(str(tmp_path / "par"))
    assert a["key"].tolist() == b["key"].tolist()


def test_no_parts_and_colliding_names(tmp_path, lemma_map) -> None:
    with pytest.raises(CorpusError, match="no parquet parts match"):
        run_match(str(tmp_path / "nothing" / "*.parquet"), str(tmp_path / "m"), lemma_map)
    write_corpus_part(tmp_path / "x" / "p.parquet", ["lion"])
    write_corpus_part(tmp_path / "y" / "p.parquet", ["lion"])
    with pytest.raises(CorpusError, match="share the name 'p'"):
        run_match(str(tmp_path / "*" / "p.parquet"), str(tmp_path / "m"), lemma_map)


def test_a_new_part_is_matched_alone_and_finished_parts_are_kept(tmp_path, lemma_map) -> None:
    corpus = _corpus(tmp_path)
    first = run_match(corpus, str(tmp_path / "m"), lemma_map)
    kept = (tmp_path / "m" / "part-00000.parquet").stat().st_mtime_ns
    write_corpus_part(tmp_path / "corpus" / "part-00002.parquet", ["lion", "lemon"])
    second = run_match(corpus, str(tmp_path / "m"), lemma_map)
    assert second.extra["parts_skipped"] == 2
    assert (second.rows_in, second.rows_out) == (first.rows_in + 2, first.rows_out + 2)
    assert (tmp_path / "m" / "part-00000.parquet").stat().st_mtime_ns == kept
