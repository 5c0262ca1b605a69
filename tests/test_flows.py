"""The Prefect layer: the build flow on tiny data, cross-run caching and its invalidation, the deployment file.

Every test here runs against the session's temporary Prefect API (``prefect_harness``). Prefect, the flows and the
tasks are imported inside the tests, after the harness has pointed Prefect's home at a tmp directory.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from laionet.manifest import manifest_path, read_manifest
from laionet.match_stage import read_matches
from tests.conftest import write_corpus_part

pytestmark = pytest.mark.prefect

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {
    "n02110185": "Siberian husky",
    "n02125311": "cougar",
    "n02129165": "lion",
    "n07749582": "lemon",
    "n03126707": "crane",
}
CAPTIONS = [
    "a mountain lion at dusk",
    "Siberian husky puppy in the snow",
    "lion cub sleeping",
    "fresh lemon slices",
    "a construction crane over the city",
    "sunset over the sea",
    "my cat on the sofa",
    None,
    "Cougar and lion side by side",
    "lemonade stand",
]
TASKS = ("catalog", "lemma-map", "match")


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, str]:
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    write_corpus_part(tmp_path / "laion" / "part-00000.parquet", CAPTIONS)
    return {"classes": str(classes), "corpus": str(tmp_path / "laion" / "*.parquet"), "run_dir": str(tmp_path / "run")}


def run_build(**parameters: Any) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Run the build flow; return its manifests and the final state name of each task run, by task name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    from flows.build import build

    state = build(**parameters, return_state=True)
    assert state.is_completed(), state
    flow_run_id = state.state_details.flow_run_id
    states: dict[str, str] = {}
    deadline = time.monotonic() + 20
    with get_client(sync_client=True) as client:
        # task-run states reach the API as events: wait until every task run is recorded as final
        while time.monotonic() < deadline:
            runs = client.read_task_runs(  # prefect 3.8.8's server rejects the client's default sort/limit (None)
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,
                limit=50,
            )
            states = {run.name.rsplit("-", 1)[0]: run.state.name for run in runs if run.state and run.state.is_final()}
            if len(states) == len(state.result()):
                break
            time.sleep(0.2)
    return state.result(), states


def mtimes(run_dir: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(Path(run_dir).rglob("*")) if p.is_file()}


def wnids_of(run_dir: str) -> dict[str, list[str]]:
    table = read_matches(f"{run_dir}/matches")
    return {text: sorted(wnids) for text, wnids in zip(table["text"], table["wnids"], strict=True)}


def test_build_flow_on_tiny_data(prefect_harness: Path, inputs: dict[str, str]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort

    manifests, states = run_build(**inputs)

    assert set(manifests) == {"catalog", "lemmas", "match"}  # a corpus was given: no openclipart stage
    assert states == dict.fromkeys(TASKS, "Completed")
    run_dir = Path(inputs["run_dir"])
    for target in ["catalog.parquet", "lemma_map_default.parquet", "matches"]:
        assert read_manifest(str(run_dir / target)) is not None, target
    assert not (run_dir / "corpus").exists()

    catalog = manifests["catalog"]
    assert (catalog["stage"], catalog["rows_in"], catalog["rows_out"]) == ("catalog", 5, 5)
    assert manifests["lemmas"]["config"]["policy"] == "default"
    assert manifests["lemmas"]["extra"]["classes_covered"] == 5
    match = manifests["match"]
    assert manifests == {
        "catalog": read_manifest(str(run_dir / "catalog.parquet")).model_dump(mode="json"),
        "lemmas": read_manifest(str(run_dir / "lemma_map_default.parquet")).model_dump(mode="json"),
        "match": read_manifest(str(run_dir / "matches")).model_dump(mode="json"),
    }
    assert match["config"]["mode"] == "default"
    assert (match["rows_in"], match["rows_out"]) == (10, 6)
    assert match["dropped"]["unmatched"] == 3 and match["dropped"]["null_text"] == 1
    assert wnids_of(inputs["run_dir"]) == {
        "a mountain lion at dusk": ["n02125311"],  # the cougar only: leftmost-longest, not also the lion
        "Siberian husky puppy in the snow": ["n02110185"],
        "lion cub sleeping": ["n02129165"],
        "fresh lemon slices": ["n07749582"],
        "a construction crane over the city": ["n03126707"],
        "Cougar and lion side by side": ["n02125311", "n02129165"],
    }

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(  # every field explicit: the server here rejects the client's None defaults
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["laionet-match"])),
            flow_run_filter=FlowRunFilter(),
            task_run_filter=TaskRunFilter(),
            sort=ArtifactSort.CREATED_DESC,
            limit=10,
            offset=0,
        )
    assert artifacts, "the match task publishes a Markdown summary"
    assert artifacts[0].type == "markdown"
    assert "| 10 | 6 | 4 |" in artifacts[0].data and "| unmatched | 3 |" in artifacts[0].data


def test_second_run_is_cached_and_mode_change_recomputes(prefect_harness: Path, inputs: dict[str, str]) -> None:
    first, states = run_build(**inputs)
    assert states == dict.fromkeys(TASKS, "Completed")
    before = mtimes(inputs["run_dir"])

    second, states = run_build(**inputs)
    assert states == dict.fromkeys(TASKS, "Cached")
    assert second == first
    assert mtimes(inputs["run_dir"]) == before  # nothing rewritten

    paper, states = run_build(**inputs, mode="paper")
    assert states == {"catalog": "Cached", "lemma-map": "Completed", "match": "Completed"}
    assert paper["match"]["config"]["mode"] == "paper"
    assert paper["catalog"] == first["catalog"]
    # paper rule: nested lemmas both match, and matching is case-sensitive
    assert wnids_of(inputs["run_dir"])["a mountain lion at dusk"] == ["n02125311", "n02129165"]
    assert wnids_of(inputs["run_dir"])["Cougar and lion side by side"] == ["n02129165"]

    # matches/ now holds paper results, so the default-mode result cached in the first run is stale: recomputed
    back, states = run_build(**inputs)
    assert states == {"catalog": "Cached", "lemma-map": "Cached", "match": "Completed"}
    assert back["lemmas"] == first["lemmas"]
    assert back["match"]["config"]["mode"] == "default"
    assert wnids_of(inputs["run_dir"])["a mountain lion at dusk"] == ["n02125311"]


def test_deleted_output_is_recomputed(prefect_harness: Path, inputs: dict[str, str]) -> None:
    run_dir = Path(inputs["run_dir"])
    first, _ = run_build(**inputs)

    shutil.rmtree(run_dir / "matches")
    second, states = run_build(**inputs)
    assert states == {"catalog": "Cached", "lemma-map": "Cached", "match": "Completed"}
    assert read_manifest(str(run_dir / "matches")) is not None
    assert second["match"]["created_at"] >= first["match"]["created_at"]
    assert (second["match"]["rows_in"], second["match"]["rows_out"]) == (10, 6)

    # an upstream output rebuilt: the catalog reruns and the lemma task reruns; the lemma driver sees a catalog
    # with the same content (same digest) and keeps its complete output, so match stays cached
    (run_dir / "catalog.parquet").unlink()
    Path(manifest_path(str(run_dir / "catalog.parquet"))).unlink()
    third, states = run_build(**inputs)
    assert states == {"catalog": "Completed", "lemma-map": "Completed", "match": "Cached"}
    assert (run_dir / "catalog.parquet").exists()
    assert third["lemmas"] == second["lemmas"]

    _, states = run_build(**inputs)
    assert states == dict.fromkeys(TASKS, "Cached")


def test_failure_fails_the_flow(prefect_harness: Path, inputs: dict[str, str]) -> None:
    from flows.build import build
    from laionet.corpus import CorpusError

    missing = str(Path(inputs["run_dir"]).parent / "nowhere" / "*.parquet")
    state = build(**{**inputs, "corpus": missing}, return_state=True)
    assert state.is_failed()
    with pytest.raises(CorpusError, match="no parquet parts"):
        state.result()
    assert read_manifest(f"{inputs['run_dir']}/matches") is None


@pytest.mark.skipif(not Path("/usr/share/openclipart/svg").is_dir(), reason="Debian openclipart-svg not installed")
def test_openclipart_corpus_when_no_corpus_given(prefect_harness: Path, tmp_path: Path) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    manifests, states = run_build(run_dir=str(tmp_path / "run"), classes=str(classes), corpus_limit=20)
    assert states == dict.fromkeys([*TASKS, "openclipart-corpus"], "Completed")
    assert manifests["corpus"]["rows_in"] == 20
    assert manifests["match"]["inputs"] == [str(tmp_path / "run" / "corpus" / "openclipart.parquet")]
    assert manifests["match"]["rows_in"] == manifests["corpus"]["rows_out"]


def test_deployment_file(prefect_harness: Path) -> None:
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.flows import load_flow_from_entrypoint

    raw = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    config = PrefectYamlModel.model_validate(raw)
    assert [d.name for d in config.deployments] == ["build"]
    deployment = config.deployments[0]
    assert deployment.entrypoint == "flows/build.py:build"
    assert deployment.work_pool is not None and deployment.work_pool.name == "gpu"
    assert deployment.schedules and all(s.active is False for s in deployment.schedules)  # example, off by default

    flow = load_flow_from_entrypoint(str(ROOT / deployment.entrypoint), use_placeholder_flow=False)
    assert flow.name == "build"
    assert set(deployment.parameters) <= set(flow.parameters.properties)
    assert set(flow.parameters.required) <= set(deployment.parameters)
    flow.validate_parameters(deployment.parameters)  # raises if a default parameter has the wrong type
