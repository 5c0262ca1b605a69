import json

from laionet.core.manifest import read_manifest
from laionet.demo import run_demo
from laionet.text.match import MatchConfig, run_match


def test_demo_runs_every_built_stage_on_the_real_openclipart_corpus(tmp_path) -> None:
    lines: list[str] = []
    summary = run_demo(str(tmp_path), mode="default", echo=lines.append, image_limit=12)
    match = read_manifest(str(tmp_path / "matches"))
    assert match is not None and match.rows_in > 8000
    assert match.rows_in == match.rows_out + sum(match.dropped.values())
    assert summary["classes_hit"] > 100  # openclipart's titles mention many ImageNet classes
    assert summary["rows_single_class"] + summary["rows_multi_class"] == summary["rows_matched"]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    selection = read_manifest(str(tmp_path / "selection"))
    assert selection is not None and selection.rows_in == match.rows_out
    assert selection.rows_in == selection.rows_out + sum(selection.dropped.values())
    assert 0 < selection.rows_out < selection.rows_in  # the text filter removes web noise, not everything
    assert selection.extra["threshold_rule"].startswith("calibrated")
    assert any(line.startswith("threshold sweep") for line in lines)
    # the first 12 selected clip-art images, served over loopback HTTP as rendered PNGs, end up in verified shards
    download, verify, ocr = (read_manifest(str(tmp_path / d)) for d in ("shards", "verify", "ocr"))
    assert download is not None and verify is not None and ocr is not None
    assert download.rows_in == 12 and download.rows_out >= 10
    assert verify.rows_out == download.rows_out and ocr.rows_in == download.rows_out
    # a second run reuses every complete stage (no re-encoding)
    again: list[str] = []
    repeat = run_demo(str(tmp_path), mode="default", echo=again.append, image_limit=12)
    assert repeat["selection"] == summary["selection"] and repeat["ocr"] == summary["ocr"]
    # the paper rule over the same corpus matches fewer captions (case-sensitive, punctuated lemmas unreachable)
    paper = run_match(
        str(tmp_path / "corpus"),
        str(tmp_path / "paper"),
        str(tmp_path / "lemma_map_paper.parquet"),
        MatchConfig(mode="paper"),
    )
    assert paper.rows_out < match.rows_out


def test_the_flows_package_launches_the_demo_flow_and_names_its_one_command() -> None:
    """``python -m flows demo`` (what ``make demo`` runs) is the demo flow's command line; anything else is a usage
    line and exit 2. (A package ``__main__``: processes the stages spawn do not import the flows again.)"""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    shown = subprocess.run([sys.executable, "-m", "flows", "demo", "--help"], cwd=root, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: python -m flows demo") and "--run-dir" in shown.stdout
    wrong = subprocess.run([sys.executable, "-m", "flows", "dmeo"], cwd=root, capture_output=True, text=True)
    assert wrong.returncode == 2 and "python -m flows demo" in wrong.stderr and "(got dmeo)" in wrong.stderr
    assert "python -m flows demo" in (root / "Makefile").read_text()
