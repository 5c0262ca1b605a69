import json

from laionet.core.manifest import read_manifest
from laionet.demo import run_demo
from laionet.text.match import MatchConfig, run_match
from tests.conftest import run_without_prefect_settings


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


def test_the_demo_starts_prefects_ephemeral_api_early_and_the_flows_use_that_one(tmp_path) -> None:
    """``python -m flows demo`` starts the ephemeral API server before importing the flows (its process boots
    meanwhile): the client the flow runs get is that server, not a second one; with an API URL set, none starts."""
    import json

    code = (
        "import json, sys\n"
        "from laionet.core.runtime import apply_prefect_defaults\n"
        "apply_prefect_defaults()\n"  # as the launcher does first (no telemetry; the server's start-up time limit)
        "from flows.demo import start_ephemeral_api\n"
        "start_ephemeral_api()()\n"
        "server_module = sys.modules.get('prefect.server.api.server')\n"
        "if server_module is None:\n    print('no server'); sys.exit(0)\n"
        "from prefect.client.orchestration import get_client\n"
        "servers = server_module.SubprocessASGIServer._instances\n"
        "started = [s.api_url for s in servers.values() if s.running]\n"
        "with get_client(sync_client=True) as client:\n"
        "    client.api_healthcheck()\n"
        "    print(json.dumps([str(client.api_url).rstrip('/'), started, len(servers)]))\n"
    )
    ran = run_without_prefect_settings(code, tmp_path)
    assert ran.returncode == 0, ran.stderr
    url, started, count = json.loads(ran.stdout.strip().splitlines()[-1])
    assert url.startswith("http://127.0.0.1:") and started == [url] and count == 1, ran.stdout
    ran = run_without_prefect_settings(code, tmp_path, PREFECT_API_URL="http://127.0.0.1:9/api")  # the user's own
    assert ran.returncode == 0 and ran.stdout.strip().splitlines()[-1] == "no server", ran.stdout + ran.stderr
