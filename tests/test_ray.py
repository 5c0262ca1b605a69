"""The task runner chosen by configuration (``tasks.runners``), and one real build-flow run on a local Ray instance.

The Ray run uses the tiny corpus and class list of ``tests/test_flows.py`` (whose selection at ``THRESHOLD`` is
known), runs every stage task in Ray worker processes through prefect-ray, and checks the same outcomes as the
thread-pool run there: the manifests' row counts, the files on disk, and each task run's final state. Ray starts
small (2 CPUs, no dashboard, a 100 MB object store) with its session directory in a short temporary directory
(its socket paths must stay under 108 bytes, which a pytest tmp_path exceeds) that is removed afterwards.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from laionet.core.manifest import read_manifest
from tests.conftest import write_corpus_part
from tests.test_flows import CAPTIONS, CLASSES, NSFW, SELECTED, SIM_DIR, TASKS, THRESHOLD, run_build, selected

pytestmark = pytest.mark.prefect


def test_task_runner_specs(prefect_harness: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
    from prefect_ray import RayTaskRunner

    from tasks.runners import ENV_VAR, REPO_ROOT, task_runner, with_task_runner

    monkeypatch.delenv(ENV_VAR, raising=False)
    from flows.build import build  # imported (its default runner read from the environment) before the env changes

    assert type(task_runner()) is ThreadPoolTaskRunner
    assert task_runner("threads:3")._max_workers == 3
    processes = task_runner("processes:2")
    assert isinstance(processes, ProcessPoolTaskRunner) and processes._max_workers == 2

    local = task_runner("ray", ray_init={"num_cpus": 2, "runtime_env": {"env_vars": {"A": "1"}}})
    assert isinstance(local, RayTaskRunner) and local.address is None
    assert local.init_kwargs["num_cpus"] == 2
    env_vars = local.init_kwargs["runtime_env"]["env_vars"]
    assert env_vars["A"] == "1" and env_vars["PYTHONPATH"].split(":")[0] == str(REPO_ROOT)

    remote = task_runner("ray://head:10001")
    assert isinstance(remote, RayTaskRunner) and remote.address == "ray://head:10001"
    assert "runtime_env" not in remote.init_kwargs  # a cluster brings its own environment

    monkeypatch.setenv(ENV_VAR, "ray://10.0.0.5:10001")
    assert task_runner().address == "ray://10.0.0.5:10001"
    assert task_runner("threads").__class__ is ThreadPoolTaskRunner  # an explicit spec wins over the environment

    for bad in ["dask", "threads:0", "threads:x", "ray:", "ray://", "Ray"]:
        with pytest.raises(ValueError, match="accepted forms: 'threads'"):
            task_runner(bad)

    monkeypatch.setenv(ENV_VAR, "threads:2")
    configured = with_task_runner(build)
    assert configured.name == "build" and configured.task_runner._max_workers == 2
    assert type(build.task_runner) is ThreadPoolTaskRunner and build.task_runner is not configured.task_runner


@pytest.fixture
def ray_temp_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A short session directory for Ray, removed afterwards; no token file or usage report in the home directory."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # else Ray 2.60 writes ~/.ray/auth_token
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    directory = tempfile.mkdtemp(prefix="ray-")
    yield directory
    import ray

    if ray.is_initialized():  # the runner shuts down the instance it started; this is for a failed test
        ray.shutdown()
    shutil.rmtree(directory, ignore_errors=True)


def test_build_flow_on_local_ray(
    prefect_harness: Path, ray_temp_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from flows import build as build_module
    from tasks.runners import task_runner

    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    write_corpus_part(tmp_path / "laion" / "part-00000.parquet", CAPTIONS, NSFW=pa.array(NSFW, pa.string()))
    inputs: dict[str, Any] = {
        "classes": str(classes),
        "corpus": str(tmp_path / "laion" / "*.parquet"),
        "run_dir": str(tmp_path / "run"),
        "threshold": THRESHOLD,
    }
    runner = task_runner(
        "ray",
        ray_init={
            "num_cpus": 2,
            "include_dashboard": False,
            "object_store_memory": 100 * 1024**2,
            "_temp_dir": ray_temp_dir,
        },
    )
    monkeypatch.setattr(build_module, "build", build_module.build.with_options(task_runner=runner))  # run_build's
    manifests, states = run_build(**inputs)
    assert not ray.is_initialized(), "the runner shuts down the Ray instance it started"

    assert states == dict.fromkeys(TASKS, "Completed")
    run_dir = Path(inputs["run_dir"])
    assert manifests["match"] == read_manifest(str(run_dir / "matches")).model_dump(mode="json")
    assert (manifests["catalog"]["rows_in"], manifests["catalog"]["rows_out"]) == (5, 5)
    assert (manifests["match"]["rows_in"], manifests["match"]["rows_out"]) == (13, 9)
    assert (manifests["similarity"]["rows_in"], manifests["similarity"]["rows_out"]) == (10, 10)
    chosen = manifests["select"]
    assert (chosen["rows_in"], chosen["rows_out"]) == (9, 6)
    assert chosen["dropped"] == {"multi_label": 1, "nsfw": 1, "no_similarity": 0, "below_threshold": 1}
    assert (run_dir / "matches" / "part-00000.parquet").is_file()
    assert (run_dir / SIM_DIR / "part-00000.parquet").is_file()
    assert selected(inputs["run_dir"]) == SELECTED

    # the stages ran in Ray's worker processes: their Prefect logs are in the Ray session's worker logs
    worker_logs = "".join(p.read_text(errors="replace") for p in Path(ray_temp_dir).glob("session_*/logs/worker-*"))
    for name in TASKS:
        assert f"Task run '{name} " in worker_logs, name  # run names: "<task> <detail> · <run dir>"
