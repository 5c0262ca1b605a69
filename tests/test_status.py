"""``laionet status`` on complete, incomplete, stale and missing stages; ``laionet doctor`` on this machine."""

from __future__ import annotations

import json
import socket

from typer.testing import CliRunner

from laionet.cli import app
from laionet.core.doctor import run_checks
from laionet.core.status import run_status
from laionet.text.catalog import run_catalog
from laionet.text.lemmas import run_lemmas
from tests.conftest import write_class_file

LION, LEMON = "n02129165", "n07749582"


def _states(run_dir) -> dict[str, str]:
    return {s.path: s.state for s in run_status(str(run_dir))}


def test_status_tells_complete_stale_incomplete_and_missing(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    catalog = str(run / "catalog.parquet")
    run_catalog(write_class_file(tmp_path / "a.txt", [LION, LEMON]), catalog)
    run_lemmas(catalog, "default", str(run / "lemma_map_default.parquet"))
    states = _states(run)
    assert states["catalog.parquet"] == "complete" and states["lemma_map_default.parquet"] == "complete"
    assert states["shards"] == "missing" and states["report"] == "missing"
    # the catalog is rebuilt with other classes: the lemma map built from the old one is stale
    run_catalog(write_class_file(tmp_path / "b.txt", [LION]), catalog)
    status = {s.path: s for s in run_status(str(run))}
    assert status["lemma_map_default.parquet"].state == "stale"
    assert "catalog.parquet rebuilt after it" in status["lemma_map_default.parquet"].detail
    # a match stage killed midway: a marker, two part records, no manifest
    (run / "matches" / "_parts").mkdir(parents=True)
    (run / "matches" / "_INCOMPLETE").write_text("{}")
    for name in ("a", "b"):
        (run / "matches" / "_parts" / f"{name}.json").write_text("{}")
    status = {s.path: s for s in run_status(str(run))}
    assert status["matches"].state == "incomplete" and status["matches"].detail == "2 part(s) done"
    result = CliRunner().invoke(app, ["status", "--run-dir", str(run)])
    assert result.exit_code == 0
    assert "STALE" in result.output and "INCOMPLETE" in result.output and "re-run the stages" in result.output
    rows = json.loads(CliRunner().invoke(app, ["status", "--run-dir", str(run), "--json"]).output)
    assert {r["path"]: r["state"] for r in rows}["catalog.parquet"] == "complete"
    missing = CliRunner().invoke(app, ["status", "--run-dir", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no such run directory" in missing.output


def test_doctor_answers_every_check_on_this_machine(tmp_path, monkeypatch) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on: the API check fails with its fix
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{port}/api")
    checks = run_checks(str(tmp_path))
    names = [c.name for c in checks]
    assert names[:2] == ["WordNet", "torch"] and any(n.startswith("disk under") for n in names)
    by_name = {c.name: c for c in checks}
    assert by_name["WordNet"].ok is True and by_name["torch"].ok is True
    assert by_name["Prefect API"].ok is False and "prefect server start" in by_name["Prefect API"].fix
    assert all(c.found for c in checks)
    result = CliRunner().invoke(app, ["doctor", "--run-dir", str(tmp_path)])
    assert result.exit_code == 1 and "FAIL  Prefect API" in result.output and "fix:" in result.output
