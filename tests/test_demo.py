import json

from laionet.demo import run_demo
from laionet.manifest import read_manifest


def test_demo_runs_every_built_stage_on_the_real_openclipart_corpus(tmp_path) -> None:
    lines: list[str] = []
    summary = run_demo(str(tmp_path), mode="default", echo=lines.append)
    match = read_manifest(str(tmp_path / "matches"))
    assert match is not None and match.rows_in > 8000
    assert match.rows_in == match.rows_out + sum(match.dropped.values())
    assert summary["classes_hit"] > 100  # openclipart's titles mention many ImageNet classes
    assert summary["rows_single_class"] + summary["rows_multi_class"] == summary["rows_matched"]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert any(line.startswith("matching (default)") for line in lines)
    # the paper mode over the same corpus matches fewer captions (case-sensitive, punctuated lemmas unreachable)
    paper = run_demo(str(tmp_path / "paper"), mode="paper", echo=lines.append)
    assert paper["rows_matched"] < summary["rows_matched"]
