"""Shared fixtures: tiny data built in tmp directories, and the real 1000-class catalog built once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import cachetools
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laionet.text.catalog import build_catalog, load_class_set


@pytest.fixture(scope="session")
def catalog_1k() -> pd.DataFrame:
    """The ImageNet-1k catalog from real WordNet 3.0 (built once per test session)."""
    return build_catalog(load_class_set("imagenet1k"))


def write_corpus_part(path: Path, texts: list[object], **extra: list[object]) -> Path:
    """Write a LAION-style corpus part with the given captions (other columns filled in)."""
    n = len(texts)
    columns: dict[str, object] = {
        "SAMPLE_ID": pa.array(range(n), pa.int64()),
        "URL": pa.array([f"http://127.0.0.1:1/{i}.jpg" for i in range(n)], pa.string()),
        "TEXT": texts if isinstance(texts, pa.Array) else pa.array(texts, pa.string()),
        "HEIGHT": pa.array([64] * n, pa.int64()),
        "WIDTH": pa.array([48] * n, pa.int64()),
        "LICENSE": pa.array(["?"] * n, pa.string()),
        "NSFW": pa.array(["UNLIKELY"] * n, pa.string()),
        "similarity": pa.array([0.3] * n, pa.float64()),
    }
    columns.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A Prefect API for the whole session (temporary SQLite server), with Prefect's home and result storage in tmp.

    Not autouse: only tests that run flows pay its ~15 s start-up. Prefect is imported here, after the environment
    is set, so that importing it does not create ``~/.prefect``; tests import flows/tasks inside the test body.
    """
    from laionet.core.runtime import PREFECT_DEFAULTS

    home = tmp_path_factory.mktemp("prefect-home")
    # the server's settings of `laionet run` and `make demo` (its task-run recorder writing in batches among them)
    server = {name: value for name, value in PREFECT_DEFAULTS.items() if name.startswith("PREFECT_SERVER_")}
    env = {"PREFECT_HOME": str(home), "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"), **server}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        from prefect.concurrency import services
        from prefect.settings import (
            PREFECT_HOME,
            PREFECT_LOCAL_STORAGE_PATH,
            PREFECT_SERVER_ANALYTICS_ENABLED,
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
            temporary_settings,
        )
        from prefect.testing.utilities import prefect_test_harness

        # Every task here is tagged, so each task run first asks the API for its tags' concurrency slots; Prefect
        # remembers "these tags have no limit" for only 5 s, and against the harness's SQLite server that request
        # often collides with the server recording the run's events ("database is locked" → 503 → the client
        # retries after a 2 s back-off): ~2 s per task run of every flow run. No test creates a tag limit, so keep
        # the answer for the session. (Private Prefect state: if it is renamed this just stops having an effect.)
        patch.setattr(services, "_no_limits_cache", cachetools.TTLCache(maxsize=1000, ttl=3600), raising=False)

        updates = {
            PREFECT_HOME: home,
            PREFECT_LOCAL_STORAGE_PATH: home / "storage",
            PREFECT_SERVER_ANALYTICS_ENABLED: False,
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 120,
        }
        # settings too, in case Prefect was imported before this fixture ran (then the environment came too late)
        with temporary_settings(updates=updates), prefect_test_harness(server_startup_timeout=None):
            yield home


T = TypeVar("T")


def eventually(read: Callable[[], T], ready: Callable[[T], bool], timeout: float = 20) -> T:
    """``read()`` again (every 0.3 s) until ``ready`` of its result, or ``timeout`` seconds: the server records task
    runs from the client's events in batches (every 2 s; the harness's recorder settings), so a read joined with task
    runs, such as artifacts read with a task-run filter, can miss the newest for a moment after a flow returns."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        result = read()
        if ready(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.3)


def read_artifacts(artifact_filter: Any, limit: int = 50) -> list[Any]:
    """The artifacts ``artifact_filter`` selects, newest first, joined with their task runs (Prefect's task-run and
    flow-run filters given, empty: every field explicit, as the server rejects the client's None defaults)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        return list(
            client.read_artifacts(
                artifact_filter=artifact_filter,
                flow_run_filter=FlowRunFilter(),
                task_run_filter=TaskRunFilter(),
                sort=ArtifactSort.CREATED_DESC,
                limit=limit,
                offset=0,
            )
        )


def final_task_runs(flow_run_id: Any, expected: int, timeout: float = 20) -> list[tuple[str, str]]:
    """(task name, final state name) of a flow run's task runs, once ``expected`` of them are final (task-run states
    reach the API as events, a moment after the flow returns) or after ``timeout`` seconds."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    def read() -> list[Any]:
        with get_client(sync_client=True) as client:
            runs = (
                client.read_task_runs(  # prefect 3.8.8's client sends None sort/limit/offset, which the server rejects
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                    sort=TaskRunSort.EXPECTED_START_TIME_ASC,
                    limit=200,
                    offset=0,
                )
            )
        return [run for run in runs if run.state and run.state.is_final()]

    final = eventually(read, lambda runs: len(runs) >= expected, timeout)
    return [(task_name(run.name), run.state.name) for run in final]


def task_name(run_name: str) -> str:
    """The task of a task run name: ``<task> <detail> · <run dir>`` (``tasks._common.run_name``), or Prefect's default
    ``<task>-<key>``."""
    return run_name.split(" ", 1)[0] if " " in run_name else run_name.rsplit("-", 1)[0]


TINY_CLIP = "laionet-test-tiny-clip"


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """A 2-layer, 32-wide open_clip model registered from a JSON config (random weights: exercises the real code
    path without any download). Returns its open_clip model name."""
    import json

    import open_clip

    directory = tmp_path_factory.mktemp("open_clip_configs")
    config = {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    (directory / f"{TINY_CLIP}.json").write_text(json.dumps(config))
    open_clip.add_model_config(directory)
    return TINY_CLIP


def write_class_file(path: Path, wnids: list[str]) -> str:
    path.write_text("\n".join(wnids) + "\n")
    return str(path)


@pytest.fixture(scope="session", autouse=True)
def _caches_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The pipeline's own caches (the rendered-SVG cache of ``images.serve``, ``$LAIONET_CACHE``) live in the session's
    tmp directory: tests never write to the user's ``~/.cache`` (child processes inherit the variable)."""
    import os

    before = os.environ.get("LAIONET_CACHE")
    os.environ["LAIONET_CACHE"] = str(tmp_path_factory.mktemp("laionet-cache"))
    yield
    if before is None:
        os.environ.pop("LAIONET_CACHE", None)
    else:
        os.environ["LAIONET_CACHE"] = before


@pytest.fixture(autouse=True)
def _openvino_stays_out_of_the_test_process() -> Iterator[None]:
    """OpenVINO is loaded only in child processes (``in_child``; the OCR stage's spawned workers): a test that loads it
    here fails, naming itself, instead of the suite crashing later at a random test."""
    yield
    import sys

    if "openvino" in sys.modules:
        pytest.fail("this test loaded OpenVINO into the test process: run that code through tests.conftest.in_child")


def in_child(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a fresh spawned interpreter (``fn`` a module-level function); its return value, or its
    exception raised here. For code that loads OpenVINO: its native libraries in the long test process, beside
    torch, faiss and Prefect, segfaulted the suite at a later, unrelated test (twice, at random points); the pipeline
    itself runs the OCR engine in spawned workers for the same reason."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def run_without_prefect_settings(code: str, tmp_path: Path, **env: str) -> Any:
    """``python -c code`` at the project's root in a fresh interpreter that sees none of this environment's
    ``PREFECT_*`` variables (the test harness's API, say), with Prefect's home under ``tmp_path`` and ``env`` added:
    as ``make demo`` starts on a machine without Prefect settings. Returns the ``subprocess.CompletedProcess``."""
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    clean["PREFECT_HOME"] = str(tmp_path / "home")
    root = Path(__file__).resolve().parents[1]
    return subprocess.run(
        [sys.executable, "-c", code], cwd=root, env={**clean, **env}, capture_output=True, text=True, timeout=300
    )
