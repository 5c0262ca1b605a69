"""The Prefect layer: the build flow on tiny data, cross-run caching and its invalidation, the deployment file.

The similarity stage runs the real offline MiniLM (sentence-transformers all-MiniLM-L6-v2) on a dozen captions
against 5 synset texts: a couple of seconds per run. The captions are chosen so that the selection at ``THRESHOLD``
is known (MiniLM caption-to-synset cosines, measured once, in the comments of ``CAPTIONS``).

Every test here runs against the session's temporary Prefect API (``prefect_harness``). Prefect, the flows and the
tasks are imported inside the tests, after the harness has pointed Prefect's home at a tmp directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from laionet.core.manifest import manifest_path, read_manifest
from laionet.selection.select import DROP_REASONS as SELECT_DROP_REASONS
from laionet.text.match import read_matches
from tests.conftest import eventually, final_task_runs, read_artifacts, write_corpus_part

pytestmark = pytest.mark.prefect

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {
    "n02110185": "Siberian husky",
    "n02125311": "cougar",
    "n02129165": "lion",
    "n07749582": "lemon",
    "n03126707": "crane",
}
# MiniLM cosine with the matched class's synset text (default mode) in brackets
CAPTIONS = [
    "a mountain lion at dusk",  # cougar (0.50)
    "Siberian husky puppy in the snow",  # husky (0.69)
    "lion cub sleeping",  # lion (0.40)
    "fresh lemon slices",  # lemon (0.65)
    "a construction crane over the city",  # crane (0.56)
    "sunset over the sea",
    "my cat on the sofa",
    None,
    "Cougar and lion side by side",  # cougar + lion: multi-label
    "lemonade stand",
    "a lion resting in the savanna grass",  # lion (0.55)
    "Lion brand yarn 3 pack sale",  # lion (0.26): below the threshold
    "crane lifting steel beams",  # crane (0.62), but tagged NSFW "UNSURE"
]
NSFW = ["UNSURE" if text == "crane lifting steel beams" else "UNLIKELY" for text in CAPTIONS]
THRESHOLD = 0.33  # between the yarn ad (0.26) and the lion cub (0.40)
HIGHER = 0.45  # between the lion cub (0.40) and the mountain lion (0.50)
SELECTED = {  # (caption, class) of the index at THRESHOLD
    ("a mountain lion at dusk", "n02125311"),
    ("Siberian husky puppy in the snow", "n02110185"),
    ("lion cub sleeping", "n02129165"),
    ("fresh lemon slices", "n07749582"),
    ("a construction crane over the city", "n03126707"),
    ("a lion resting in the savanna grass", "n02129165"),
}
TASKS = ("catalog", "lemma-map", "match", "similarity", "select")
SIM_DIR = "similarity/st-all-MiniLM-L6-v2"


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Any]:
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    write_corpus_part(tmp_path / "laion" / "part-00000.parquet", CAPTIONS, NSFW=pa.array(NSFW, pa.string()))
    return {
        "classes": str(classes),
        "corpus": str(tmp_path / "laion" / "*.parquet"),
        "run_dir": str(tmp_path / "run"),
        "threshold": THRESHOLD,
    }


def run_build(**parameters: Any) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Run the build flow; return its manifests and the final state name of each task run, by task name."""
    from flows.build import build

    state = build(**parameters, return_state=True)
    assert state.is_completed(), state
    states = dict(final_task_runs(state.state_details.flow_run_id, len(state.result())))
    return state.result(), states


def mtimes(run_dir: str, under: str = "") -> dict[str, int]:
    root = Path(run_dir) / under
    return {str(p): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def wnids_of(run_dir: str) -> dict[str, list[str]]:
    table = read_matches(f"{run_dir}/matches")
    return {text: sorted(wnids) for text, wnids in zip(table["text"], table["wnids"], strict=True)}


def keys_of(run_dir: str) -> dict[str, str]:
    table = read_matches(f"{run_dir}/matches")
    return dict(zip(table["text"], table["key"], strict=True))


def selected(run_dir: str) -> set[tuple[str, str]]:
    """(caption, class) of the index in ``run_dir/selection``; checks its keys are those of the matched captions."""
    index = pq.read_table(f"{run_dir}/selection/laionet.parquet").to_pylist()
    keys = keys_of(run_dir)
    assert [row["key"] for row in index] == [keys[row["text"]] for row in index]
    return {(row["text"], row["wnid"]) for row in index}


def similarity_pairs(run_dir: str) -> set[tuple[str, str]]:
    """(key, class) pairs stored by the similarity stage."""
    table = pq.read_table(f"{run_dir}/{SIM_DIR}/part-00000.parquet")
    return set(zip(table["key"].to_pylist(), table["wnid"].to_pylist(), strict=True))


def matched_pairs(run_dir: str) -> set[tuple[str, str]]:
    """(key, class) pairs of the match stage."""
    table = read_matches(f"{run_dir}/matches")
    return {(key, wnid) for key, wnids in zip(table["key"], table["wnids"], strict=True) for wnid in wnids}


def assert_select_counts(manifest: dict[str, Any]) -> None:
    """Every matched caption is either selected or dropped under exactly one reason."""
    assert set(manifest["dropped"]) == set(SELECT_DROP_REASONS)
    assert manifest["rows_in"] == manifest["rows_out"] + sum(manifest["dropped"].values())


def test_build_flow_on_tiny_data(prefect_harness: Path, inputs: dict[str, Any]) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    manifests, states = run_build(**inputs)

    # a corpus was given: no openclipart stage
    assert set(manifests) == {"catalog", "lemmas", "match", "similarity", "select"}
    assert states == dict.fromkeys(TASKS, "Completed")
    run_dir = Path(inputs["run_dir"])
    targets = {
        "catalog": "catalog.parquet",
        "lemmas": "lemma_map_default.parquet",
        "match": "matches",
        "similarity": SIM_DIR,
        "select": "selection",
    }
    assert manifests == {
        stage: read_manifest(str(run_dir / target)).model_dump(mode="json") for stage, target in targets.items()
    }
    assert not (run_dir / "corpus").exists()

    catalog = manifests["catalog"]
    assert (catalog["stage"], catalog["rows_in"], catalog["rows_out"]) == ("catalog", 5, 5)
    assert manifests["lemmas"]["config"]["policy"] == "default"
    assert manifests["lemmas"]["extra"]["classes_covered"] == 5
    match = manifests["match"]
    assert match["config"]["mode"] == "default"
    assert (match["rows_in"], match["rows_out"]) == (13, 9)
    assert match["dropped"]["unmatched"] == 3 and match["dropped"]["null_text"] == 1
    assert wnids_of(inputs["run_dir"]) == {
        "a mountain lion at dusk": ["n02125311"],  # the cougar only: leftmost-longest, not also the lion
        "Siberian husky puppy in the snow": ["n02110185"],
        "lion cub sleeping": ["n02129165"],
        "fresh lemon slices": ["n07749582"],
        "a construction crane over the city": ["n03126707"],
        "Cougar and lion side by side": ["n02125311", "n02129165"],
        "a lion resting in the savanna grass": ["n02129165"],
        "Lion brand yarn 3 pack sale": ["n02129165"],
        "crane lifting steel beams": ["n03126707"],
    }

    # similarity: one row per (matched caption, matched class), under the offline MiniLM
    sim = manifests["similarity"]
    assert sim["config"]["encoder"] == "st:all-MiniLM-L6-v2"
    assert (sim["rows_in"], sim["rows_out"], sim["extra"]["captions"]) == (10, 10, 9)
    assert sum(sim["dropped"].values()) == 0
    assert similarity_pairs(inputs["run_dir"]) == matched_pairs(inputs["run_dir"])

    # selection: each matched caption selected or dropped once; the exact index is known at THRESHOLD
    chosen = manifests["select"]
    assert_select_counts(chosen)
    assert (chosen["rows_in"], chosen["rows_out"]) == (9, 6)
    assert chosen["dropped"] == {"multi_label": 1, "nsfw": 1, "no_similarity": 0, "below_threshold": 1}
    assert chosen["extra"]["threshold"] == THRESHOLD and chosen["extra"]["threshold_rule"] == "given"
    assert chosen["config"]["similarity"] == str(run_dir / SIM_DIR)
    assert selected(inputs["run_dir"]) == SELECTED

    def read() -> dict[str, list[Any]]:  # <run dir name>-<stage>-<output below the run dir>
        keys = ("run-match-matches", "run-similarity-st-all-minilm-l6-v2", "run-select-selection")
        return {key: read_artifacts(ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=10) for key in keys}

    artifacts = eventually(read, lambda found: all(found.values()))
    assert all(artifacts.values()), "every stage task publishes a Markdown summary"
    match_summary = artifacts["run-match-matches"][0]
    assert match_summary.type == "markdown"
    assert "| 13 | 9 | 4 |" in match_summary.data and "| unmatched | 3 |" in match_summary.data
    select_summary = artifacts["run-select-selection"][0].data
    assert "| 9 | 6 | 3 |" in select_summary and "| below_threshold | 1 |" in select_summary


def test_second_run_is_cached_and_mode_change_recomputes(prefect_harness: Path, inputs: dict[str, Any]) -> None:
    first, states = run_build(**inputs)
    assert states == dict.fromkeys(TASKS, "Completed")
    before = mtimes(inputs["run_dir"])

    second, states = run_build(**inputs)
    assert states == dict.fromkeys(TASKS, "Cached")
    assert second == first
    assert mtimes(inputs["run_dir"]) == before  # nothing rewritten

    paper, states = run_build(**inputs, mode="paper")
    assert states == {**dict.fromkeys(TASKS, "Completed"), "catalog": "Cached"}
    assert paper["match"]["config"]["mode"] == "paper"
    assert paper["catalog"] == first["catalog"]
    # paper rule: nested lemmas both match, and matching is case-sensitive
    assert wnids_of(inputs["run_dir"])["a mountain lion at dusk"] == ["n02125311", "n02129165"]
    assert wnids_of(inputs["run_dir"])["Cougar and lion side by side"] == ["n02129165"]
    assert "Lion brand yarn 3 pack sale" not in wnids_of(inputs["run_dir"])
    assert paper["similarity"]["config"]["matches"] == paper["select"]["config"]["matches"]
    assert_select_counts(paper["select"])
    assert paper["select"]["rows_in"] == paper["match"]["rows_out"]

    # matches/ now holds paper results, so the default-mode result cached in the first run is stale: recomputed
    back, states = run_build(**inputs)
    assert states == {**dict.fromkeys(TASKS, "Completed"), "catalog": "Cached", "lemma-map": "Cached"}
    assert back["lemmas"] == first["lemmas"]
    assert back["match"]["config"]["mode"] == "default"
    assert wnids_of(inputs["run_dir"])["a mountain lion at dusk"] == ["n02125311"]
    assert (back["select"]["rows_in"], back["select"]["rows_out"]) == (9, 6)


def test_similarity_follows_rebuilt_matches(prefect_harness: Path, inputs: dict[str, Any]) -> None:
    run_build(**inputs)
    run_build(**inputs, mode="paper")
    assert similarity_pairs(inputs["run_dir"]) == matched_pairs(inputs["run_dir"])


def test_threshold_change_reruns_only_selection(prefect_harness: Path, inputs: dict[str, Any]) -> None:
    run_dir = inputs["run_dir"]
    first, states = run_build(**inputs)
    assert states == dict.fromkeys(TASKS, "Completed")
    similarities = mtimes(run_dir, SIM_DIR)

    # similarities are stored once per encoder: selecting at another threshold re-reads them, never re-encodes
    higher, states = run_build(**{**inputs, "threshold": HIGHER})
    assert states == {**dict.fromkeys(TASKS, "Cached"), "select": "Completed"}
    assert mtimes(run_dir, SIM_DIR) == similarities
    assert higher["similarity"] == first["similarity"]
    assert_select_counts(higher["select"])
    assert higher["select"]["dropped"]["below_threshold"] == 2
    assert selected(run_dir) == SELECTED - {("lion cub sleeping", "n02129165")}

    auto, states = run_build(**{**inputs, "threshold": "auto"})
    assert states == {**dict.fromkeys(TASKS, "Cached"), "select": "Completed"}
    assert auto["select"]["extra"]["threshold_rule"].startswith("calibrated")  # MiniLM has no paper threshold
    assert isinstance(auto["select"]["extra"]["threshold"], float)
    assert_select_counts(auto["select"])

    # selection/ now holds the 'auto' index: the result cached for THRESHOLD is stale and the task runs again
    again, states = run_build(**inputs)
    assert states == {**dict.fromkeys(TASKS, "Cached"), "select": "Completed"}
    assert mtimes(run_dir, SIM_DIR) == similarities
    assert {k: v for k, v in again["select"].items() if k not in ("created_at", "wall_time_s")} == {
        k: v for k, v in first["select"].items() if k not in ("created_at", "wall_time_s")
    }
    assert selected(run_dir) == SELECTED

    _, states = run_build(**inputs)
    assert states == dict.fromkeys(TASKS, "Cached")


def test_similarity_task_device_and_batch_size_keep_the_cache(prefect_harness: Path, inputs: dict[str, Any]) -> None:
    from prefect import flow

    from tasks.build import similarity

    run_dir = inputs["run_dir"]
    run_build(**inputs)
    before = mtimes(run_dir, SIM_DIR)

    @flow
    def rescore(device: str, batch_size: int) -> str:
        state = similarity(
            f"{run_dir}/matches",
            f"{run_dir}/catalog.parquet",
            f"{run_dir}/{SIM_DIR}",
            "minilm",
            device=device,
            batch_size=batch_size,
            return_state=True,
        )
        return state.name

    assert rescore("cpu", 3) == "Cached"  # how it runs, not what it computes: same key
    assert mtimes(run_dir, SIM_DIR) == before
    assert {"gpu"} == set(similarity.tags)  # the `gpu` tag concurrency limit applies to it


def test_only_the_tags_that_carry_a_concurrency_limit() -> None:
    """Prefect asks the API for concurrency slots for every tag of a task run, limit or not (a round trip each: about
    a quarter of an all-cached demo run went there); so tasks carry only the tags a limit is meant for — `gpu`
    (device tasks) and `network` (the download) — and the UI finds a stage by its task name."""
    import importlib
    import pkgutil

    from prefect import Task

    import tasks

    found = {}
    for info in pkgutil.iter_modules(tasks.__path__):
        module = importlib.import_module(f"tasks.{info.name}")
        found.update({t.name: set(t.tags) for t in vars(module).values() if isinstance(t, Task)})
    assert len(found) > 20
    assert set().union(*found.values()) == {"gpu", "network"}, found
    assert found["download"] == {"network"} and found["infer-shards"] == {"gpu"} and found["accuracy"] == set()


def test_deleted_output_is_recomputed(prefect_harness: Path, inputs: dict[str, Any]) -> None:
    run_dir = Path(inputs["run_dir"])
    first, _ = run_build(**inputs)

    shutil.rmtree(run_dir / "matches")
    second, states = run_build(**inputs)
    # the match is redone; the similarity and select tasks see a new match manifest and run, and their drivers
    # find their complete outputs for the same match config (nothing re-encoded)
    assert states == {**dict.fromkeys(TASKS, "Completed"), "catalog": "Cached", "lemma-map": "Cached"}
    assert read_manifest(str(run_dir / "matches")) is not None
    assert second["match"]["created_at"] >= first["match"]["created_at"]
    assert (second["match"]["rows_in"], second["match"]["rows_out"]) == (13, 9)
    assert second["similarity"] == first["similarity"] and second["select"] == first["select"]

    shutil.rmtree(run_dir / SIM_DIR)
    third, states = run_build(**inputs)
    assert states == {**dict.fromkeys(TASKS, "Cached"), "similarity": "Completed", "select": "Completed"}
    assert third["similarity"]["created_at"] > first["similarity"]["created_at"]
    assert (third["select"]["rows_in"], third["select"]["rows_out"]) == (9, 6)
    assert selected(inputs["run_dir"]) == SELECTED

    # an upstream output rebuilt: the catalog reruns and the lemma task reruns; the lemma driver sees a catalog
    # with the same content (same digest) and keeps its complete output, so match stays cached
    (run_dir / "catalog.parquet").unlink()
    Path(manifest_path(str(run_dir / "catalog.parquet"))).unlink()
    fourth, states = run_build(**inputs)
    assert states == {**dict.fromkeys(TASKS, "Completed"), "match": "Cached"}
    assert (run_dir / "catalog.parquet").exists()
    assert fourth["lemmas"] == third["lemmas"] and fourth["similarity"] == third["similarity"]

    _, states = run_build(**inputs)
    assert states == dict.fromkeys(TASKS, "Cached")


def test_failure_fails_the_flow(prefect_harness: Path, inputs: dict[str, Any]) -> None:
    from flows.build import build
    from laionet.text.corpus import CorpusError
    from tasks._common import StageFailedError

    missing = str(Path(inputs["run_dir"]).parent / "nowhere" / "*.parquet")
    state = build(**{**inputs, "corpus": missing}, return_state=True)
    assert state.is_failed()
    # the flow's error names the failed task run, then the stage's own error
    with pytest.raises(StageFailedError, match=r"task run 'match default · .*' failed: CorpusError: no parquet") as e:
        state.result()
    assert isinstance(e.value.__cause__, CorpusError)
    for target in ["matches", SIM_DIR, "selection"]:
        assert read_manifest(f"{inputs['run_dir']}/{target}") is None


@pytest.mark.skipif(not Path("/usr/share/openclipart/svg").is_dir(), reason="Debian openclipart-svg not installed")
def test_openclipart_corpus_when_no_corpus_given(prefect_harness: Path, tmp_path: Path) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    manifests, states = run_build(run_dir=str(tmp_path / "run"), classes=str(classes), corpus_limit=20)
    assert states == dict.fromkeys([*TASKS, "openclipart-corpus"], "Completed")
    assert manifests["corpus"]["rows_in"] == 20
    assert manifests["match"]["inputs"] == [str(tmp_path / "run" / "corpus" / "openclipart.parquet")]
    assert manifests["match"]["rows_in"] == manifests["corpus"]["rows_out"]
    assert manifests["similarity"]["extra"]["captions"] == manifests["match"]["rows_out"]
    assert manifests["select"]["rows_in"] == manifests["match"]["rows_out"]
    assert_select_counts(manifests["select"])


def test_deployment_file(prefect_harness: Path) -> None:
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.flows import load_flow_from_entrypoint

    raw = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    config = PrefectYamlModel.model_validate(raw)
    names = ["build", "acquire", "infer", "evaluate", "diagnose", "report", "laion400m", "demo"]
    assert [d.name for d in config.deployments] == names
    for entry in config.deployments:  # every entrypoint loads (import errors are not hidden by a placeholder flow)
        load_flow_from_entrypoint(entry.entrypoint, use_placeholder_flow=False)  # a module of the installed package
    assert all(d.work_pool is not None and d.work_pool.name == "gpu" for d in config.deployments)
    deployment = config.deployments[0]
    assert deployment.entrypoint == "flows.build.build"
    assert config.pull == [{"tasks.deployment.deployment_home": {}}]  # no checkout: only where runs work
    assert deployment.work_pool is not None and deployment.work_pool.name == "gpu"
    assert deployment.schedules and all(s.active is False for s in deployment.schedules)  # example, off by default

    flow = load_flow_from_entrypoint(deployment.entrypoint, use_placeholder_flow=False)
    assert flow.name == "build"
    assert set(deployment.parameters) <= set(flow.parameters.properties)
    assert set(flow.parameters.required) <= set(deployment.parameters)
    assert {"encoder", "threshold", "top_k"} <= set(deployment.parameters)
    flow.validate_parameters(deployment.parameters)  # raises if a default parameter has the wrong type


def test_flows_take_a_typed_preset(prefect_harness: Path, tmp_path: Path) -> None:
    """The run form of the Prefect UI is built from the flow's parameter schema: with a typed preset it shows (and
    submits) the preset's fields; a name still works; a run given a whole Preset is named after it."""
    from prefect.client.orchestration import get_client
    from prefect.utilities.callables import parameter_schema

    from flows.diagnose import diagnose
    from flows.reproduce import reproduce
    from laionet.core.config import PRESETS, Preset

    for flow_ in (reproduce, diagnose):
        schema = parameter_schema(flow_).model_dump()
        preset_schema = schema["properties"]["preset"]
        refs = [item.get("$ref", "") for item in preset_schema.get("anyOf", [])]
        assert any(ref.endswith("/Preset") for ref in refs), preset_schema
        fields = schema["definitions"]["Preset"]["properties"]
        assert {"encoder", "threshold", "models", "n_boot", "diagnose"} <= set(fields)

    submitted = PRESETS["demo"].model_dump(mode="json") | {"name": "mine", "n_boot": 7}  # what the form posts
    params = reproduce.validate_parameters({"run_dir": "r", "preset": submitted})
    assert isinstance(params["preset"], Preset) and params["preset"].n_boot == 7
    assert reproduce.validate_parameters({"run_dir": "r", "preset": "demo"})["preset"] == "demo"

    run_dir = str(tmp_path / "run")
    state = diagnose(run_dir, Preset(name="mine", diagnose=None), return_state=True)
    assert state.is_completed() and state.result() == {}
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(state.state_details.flow_run_id).name == f"diagnose mine · {run_dir}"
