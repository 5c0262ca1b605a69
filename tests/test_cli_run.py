"""``laionet run``: the build stage's Prefect flow from the command line on a tiny corpus (``--max-parts 1`` of two
parts), then the same command again: every task comes back Cached and no file is rewritten. Also: a typo'd stage is
one line naming the stages, and an environment without the packaged flows is one line naming what to install."""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from laionet.cli import app
from laionet.core.manifest import read_manifest
from laionet.core.runtime import PREFECT_DEFAULTS
from tests.conftest import final_task_runs, run_without_prefect_settings, write_class_file, write_corpus_part

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
BUILD_TASKS = ("catalog", "lemma-map", "match", "similarity", "select")
PREFECT_ENV = tuple(PREFECT_DEFAULTS)


@pytest.fixture
def prefect_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables ``laionet run`` defaults are put back after the test (it sets them in this process)."""
    for name in PREFECT_ENV:
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)


def _task_states(output: str, expected: int) -> dict[str, str]:
    run_id = re.search(r"\[build\] flow run ([0-9a-f-]{36}): Completed", output)
    assert run_id, output
    return dict(final_task_runs(run_id.group(1), expected))


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.prefect
def test_run_one_stage_then_it_comes_back_cached(prefect_harness: Path, prefect_env: None, tmp_path: Path) -> None:
    classes = write_class_file(tmp_path / "classes.txt", ["n02129165", "n07749582"])  # lion, lemon
    write_corpus_part(tmp_path / "laion" / "part-00000.parquet", ["a lion resting in the grass", "fresh lemon", "sea"])
    write_corpus_part(tmp_path / "laion" / "part-00001.parquet", ["lion cub sleeping", "lemon tree"])
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps({"name": "tiny", "classes": classes, "corpus": str(tmp_path / "laion" / "*.parquet"),
                                  "threshold": 0.2, "top_k": None}))  # fmt: skip
    run_dir = tmp_path / "run"
    argv = ["run", "--preset", str(preset), "--run-dir", str(run_dir), "--stage", "build", "--max-parts", "1"]

    first = runner.invoke(app, argv)
    assert first.exit_code == 0, first.output
    assert _task_states(first.output, len(BUILD_TASKS)) == dict.fromkeys(BUILD_TASKS, "Completed")
    match = read_manifest(str(run_dir / "matches"))
    assert match is not None and match.rows_in == 3  # only the first part
    assert "match" in first.output and "rows in=3 out=2" in first.output
    assert (run_dir / "selection" / "laionet.parquet").exists()
    before = _mtimes(run_dir)
    # the flow's final state as the API has it (what the engine hands back when the server answers its Completed
    # with REJECT, as after a retried request under SQLite contention) still reads: flows persist their results
    from prefect.client.orchestration import get_client

    run_id = re.search(r"\[build\] flow run ([0-9a-f-]{36})", first.output)
    assert run_id
    with get_client(sync_client=True) as client:
        stored = client.read_flow_run(run_id.group(1)).state
    assert stored is not None and stored.is_completed()
    assert stored.result()["match"]["rows_out"] == 2

    second = runner.invoke(app, argv)
    assert second.exit_code == 0, second.output
    assert _task_states(second.output, len(BUILD_TASKS)) == dict.fromkeys(BUILD_TASKS, "Cached")
    assert _mtimes(run_dir) == before


@pytest.mark.prefect
def test_a_failed_stage_is_one_error_line_naming_the_task(
    prefect_harness: Path, prefect_env: None, tmp_path: Path
) -> None:
    preset = tmp_path / "broken.json"
    classes = write_class_file(tmp_path / "classes.txt", ["n02129165"])
    preset.write_text(json.dumps({"name": "broken", "classes": classes, "corpus": str(tmp_path / "nowhere/*.parquet")}))
    result = runner.invoke(
        app, ["run", "--preset", str(preset), "--run-dir", str(tmp_path / "run"), "--stage", "build"]
    )
    assert result.exit_code == 2, result.output
    assert re.search(r"\[build\] flow run [0-9a-f-]{36}: Failed", result.output)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the build flow failed" in errors[0] and "task run 'match" in errors[0], result.output
    assert "CorpusError: no parquet" in errors[0]


def test_a_typo_in_a_stage_names_the_stages_in_one_line() -> None:
    result = runner.invoke(app, ["run", "--preset", "demo", "--run-dir", "r", "--stage", "bild"],
                           env={"COLUMNS": "240"})  # fmt: skip
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if "bild" in line]
    assert len(lines) == 1
    assert all(f"'{s}'" in lines[0] for s in ("build", "acquire", "infer", "evaluate", "diagnose", "report"))


def test_an_unknown_preset_is_one_line(prefect_env: None) -> None:
    result = runner.invoke(app, ["run", "--preset", "nope", "--run-dir", "r"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "unknown preset 'nope'" in result.output


def test_without_the_installed_flows_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, prefect_env: None, tmp_path: Path
) -> None:
    """The flows ship in the package (a worker needs no checkout); where they cannot be imported, one line says
    what to install."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("flows", "tasks")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "flows", None)  # an import of `flows` now fails, as without the package
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", "--preset", "demo", "--run-dir", str(tmp_path / "r"), "--stage", "report"])
    assert result.exit_code == 2, result.output
    assert "not installed" in result.output and "pip install" in result.output, result.output
    assert result.output.count("\n") == 1


def test_results_are_one_line_per_manifest_and_the_report_path(capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module("laionet.cli.run")
    manifest = {"stage": "select", "rows_in": 9, "rows_out": 6, "dropped": {"nsfw": 1, "multi_label": 2, "x": 0}}
    report = {"stage": "report", "rows_in": 3, "rows_out": 3, "outputs": ["runs/x/report/index.html"]}
    result = {"build": {"select": manifest}, "infer": {}, "report": report}
    module._echo_results("", result)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["build/select", "report"]
    assert "rows in=9 out=6 dropped: nsfw=1, multi_label=2" in lines[0]
    assert module._find_stage(result, "report") == report and module._find_stage(result, "ocr") is None


def test_stage_flows_get_the_resolved_preset_and_diagnose_the_mirror() -> None:
    """`--stage` runs pass what reproduce passes its subflows: the resolved preset (so `--max-parts` reaches every
    stage, e.g. the caption embeddings of 4.3), and the URL rewrite to diagnose too (its nearest-caption set and
    candidate band are downloaded)."""
    from laionet.cli.run import _stage_arguments
    from laionet.core.config import load_preset

    config = load_preset("demo", max_parts=1)
    mirror = {"http://a/": "http://127.0.0.1:1/"}
    for stage in ("acquire", "infer", "evaluate", "diagnose", "report"):
        arguments = _stage_arguments(stage, "demo", config, 5, mirror)
        assert arguments["preset"].max_parts == 1, stage
    assert _stage_arguments("diagnose", "demo", config, None, mirror)["rewrite_urls"] == mirror
    assert _stage_arguments("acquire", "demo", config, 5, mirror)["image_limit"] == 5


def test_make_demos_launcher_runs_with_laionet_runs_prefect_settings(tmp_path: Path) -> None:
    """``python -m flows demo`` (what ``make demo`` runs, with only PREFECT_HOME set) starts Prefect with ``laionet
    run``'s settings: in a fresh interpreter with no Prefect variables, the launcher (stopped at ``--help``) leaves
    the task-run recorder batched and the library's logger wired to Prefect's log API — which only happens when the
    variable is set before Prefect is imported. A variable the user set wins."""
    code = (
        "import logging, runpy, sys\n"
        "sys.argv = ['flows', 'demo', '--help']\n"
        "try:\n    runpy.run_module('flows', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "from prefect.settings import get_current_settings\n"
        "recorder = get_current_settings().server.services.task_run_recorder\n"
        "handlers = [type(h).__name__ for h in logging.getLogger('laionet').handlers]\n"
        "print(recorder.batch_size, recorder.flush_interval, 'APILogHandler' in handlers)\n"
    )
    ran = run_without_prefect_settings(code, tmp_path)
    assert ran.returncode == 0, ran.stderr
    batch, flush = (
        PREFECT_DEFAULTS[f"PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_{k}"] for k in ("BATCH_SIZE", "FLUSH_INTERVAL")
    )
    assert ran.stdout.split()[-3:] == [batch, f"{float(flush)}", "True"], ran.stdout
    ran = run_without_prefect_settings(code, tmp_path, PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE="7")
    assert ran.stdout.split()[-3] == "7", ran.stdout + ran.stderr
    makefile = (ROOT / "Makefile").read_text()
    assert "python -m flows demo" in makefile[makefile.index("\ndemo:") :].split("\n\n")[0]
