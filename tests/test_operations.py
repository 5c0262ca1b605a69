"""Operating the flows: failures name the task and the file, the retry rule, timeouts, run names, artifact keys,
library logs in Prefect, subflow tags (issue 14). The real server + worker side is in ``tests/test_deployments.py``.

Prefect is imported inside the tests that use the session harness (``conftest.prefect_harness``).
"""

from __future__ import annotations

import errno
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from laionet.core.config import load_preset
from laionet.images.child import ChildError, is_transient, run_in_child
from tests.conftest import eventually

# --- the retry rule ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), False),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), False),
        (OSError(errno.EACCES, "Permission denied"), False),
        (OSError(errno.EPERM, "Operation not permitted"), False),
        (PermissionError(errno.EACCES, "Permission denied"), False),
        (FileNotFoundError(errno.ENOENT, "No such file"), False),
        (FileExistsError(errno.EEXIST, "File exists"), False),
        (OSError(errno.EIO, "Input/output error"), True),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (ValueError("bad threshold"), False),
        (pa.ArrowInvalid("Parquet magic bytes not found in footer"), False),
        (ChildError("img2dataset failed", "builtins.ValueError", transient=False), False),
        (ChildError("img2dataset failed", "builtins.ConnectionError", transient=True), True),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_retry_condition_classifies_errors(error: BaseException, transient: bool) -> None:
    from tasks._common import is_transient as retry_condition

    class State:
        def result(self) -> Any:
            raise error

    class Task:
        name = "t"

    assert is_transient(error) is transient
    assert retry_condition(Task(), None, State()) is transient  # the Prefect retry condition applies the same rule


def _fail_with(kind: str) -> None:
    if kind == "config":
        raise ValueError("unknown resize_mode 'squash'")
    if kind == "network":
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    if kind == "disk":
        raise OSError(errno.ENOSPC, "No space left on device")
    if kind == "killed":
        os.kill(os.getpid(), signal.SIGKILL)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


@pytest.mark.parametrize(
    ("kind", "transient", "named"),
    [
        ("config", False, "builtins.ValueError: unknown resize_mode"),
        ("network", True, "ConnectionResetError"),
        ("disk", False, "No space left on device"),
        ("killed", True, "killed by signal 9"),
    ],
)
def test_child_failures_are_classified(kind: str, transient: bool, named: str) -> None:
    # how the download's img2dataset child process fails: configuration → not retried, network or killed → retried
    with pytest.raises(ChildError, match=named) as caught:
        run_in_child(_fail_with, {"kind": kind}, "img2dataset downloading into /x")
    assert caught.value.transient is transient and is_transient(caught.value) is transient
    assert "img2dataset downloading into /x" in str(caught.value)
    if kind != "killed":
        assert "Traceback" in caught.value.child_traceback and "_fail_with" in caught.value.child_traceback


def test_download_runs_img2dataset_through_the_classifying_child() -> None:
    import inspect

    from laionet.images import attempt

    source = inspect.getsource(attempt.run_attempt)
    assert "run_in_child(_img2dataset_download" in source and "RuntimeError" not in source


def test_download_and_ocr_have_configurable_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks import acquire

    assert acquire.download.timeout_seconds == acquire.DOWNLOAD_TIMEOUT_S == 24 * 3600
    assert acquire.ocr.timeout_seconds == acquire.OCR_TIMEOUT_S == 12 * 3600
    monkeypatch.setenv("LAIONET_X_TIMEOUT_S", "90")
    assert acquire.timeout_s("LAIONET_X_TIMEOUT_S", 5.0) == 90.0
    monkeypatch.setenv("LAIONET_X_TIMEOUT_S", "none")
    assert acquire.timeout_s("LAIONET_X_TIMEOUT_S", 5.0) is None


# --- in flows (session Prefect harness) ----------------------------------------------------------------------------


def _logs(flow_run_id: Any, timeout: float = 20, want: str = "") -> list[Any]:
    """The log records of a flow run (its tasks' included), once one contains ``want`` (they arrive in batches)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    def read() -> list[Any]:
        with get_client(sync_client=True) as client:
            return list(
                client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                    sort=LogSort.TIMESTAMP_ASC,
                    limit=200,
                    offset=0,
                )
            )

    return eventually(read, lambda logs: any(want in log.message for log in logs), timeout)


@pytest.mark.prefect
def test_rejected_retry_logs_the_traceback_and_disk_full_is_not_retried(prefect_harness: Path) -> None:
    from prefect import flow, task

    from tasks._common import IO_RETRIES

    attempts: list[int] = []

    @task(name="broken-read", **IO_RETRIES)
    def broken_read(kind: str) -> None:
        attempts.append(1)
        if kind == "disk":
            raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/shards/00000.tar")
        raise pa.ArrowInvalid("/runs/x/verify/quarantine.parquet: not a readable parquet file")

    @flow
    def reads(kind: str) -> None:
        broken_read(kind)

    started = time.monotonic()
    state = reads("disk", return_state=True)
    assert state.is_failed() and len(attempts) == 1  # not retried (the backoff would have waited 10 + 20 s)
    assert time.monotonic() - started < 10
    state = reads("arrow", return_state=True)
    assert state.is_failed() and len(attempts) == 2
    messages = [log.message for log in _logs(state.state_details.flow_run_id, want="Traceback")]
    rejected = [m for m in messages if "not retried" in m]
    assert rejected and "Traceback" in rejected[0] and "quarantine.parquet" in rejected[0], messages


@pytest.mark.prefect
def test_flow_failure_names_the_failed_shard_group(
    prefect_harness: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # infer-shards fails, so `infer` never runs: the flow used to fail with "UnfinishedRun: Run is in PENDING state"
    import tasks.infer
    from flows.infer import infer_flow

    run = tmp_path / "run"
    (run / "shards").mkdir(parents=True)
    for i in range(4):
        (run / "shards" / f"{i:05d}.tar").write_bytes(b"")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise pa.ArrowInvalid(f"{run}/verify/quarantine.parquet: not a readable parquet file")

    monkeypatch.setattr(tasks.infer, "run_inference", broken)
    preset = load_preset("demo").model_copy(update={"shard_batches": 2})  # one task per shard group
    state = infer_flow(str(run), preset, return_state=True)
    assert state.is_failed()
    assert "UnfinishedRun" not in state.message
    assert f"task run 'infer-shards laionet 00000-00001 (2 shards) · {run}' failed" in state.message, state.message
    assert "quarantine.parquet: not a readable parquet file" in state.message


@pytest.mark.prefect
def test_artifact_keys_are_distinct_per_run_stage_variant_and_model(prefect_harness: Path, tmp_path: Path) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.client.schemas.sorting import ArtifactSort

    from laionet.core.layout import accuracy_dir
    from laionet.core.manifest import Manifest
    from tasks._common import publish

    @flow
    def two_accuracies(run_dir: str) -> None:
        for variant in ("laionet", "laionet-image"):
            manifest = Manifest(stage="accuracy", config={}, config_hash="abc", rows_in=3, rows_out=3)
            publish(manifest, accuracy_dir(run_dir, variant, "efficientnet_lite0"))

    state = two_accuracies(str(tmp_path / "demo-run"), return_state=True)
    assert state.is_completed()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])),
            sort=ArtifactSort.KEY_ASC,
            limit=10,
            offset=0,
        )
    keys = sorted(a.key for a in artifacts)
    assert keys == [
        "demo-run-accuracy-evaluate-laionet-efficientnet-lite0",
        "demo-run-accuracy-evaluate-laionet-image-efficientnet-lite0",
    ]


@pytest.mark.prefect
def test_library_logs_reach_the_task_run(prefect_harness: Path) -> None:
    import logging

    from prefect import flow, task

    import tasks._common  # importing the task layer forwards the laionet loggers

    @task(name="logs")
    def logs() -> None:
        logging.getLogger("laionet.match").info("matched %d captions", 9)

    @flow
    def with_logs() -> None:
        logs()

    state = with_logs(return_state=True)
    found = [(log.task_run_id, log.name) for log in _logs(state.state_details.flow_run_id, want="matched 9") if
             log.message == "matched 9 captions"]  # fmt: skip
    assert found and found[0][0] is not None and found[0][1] == "laionet.match"
    assert os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS") == "laionet"  # for child processes
    tasks._common.forward_library_logs()  # again: still one API handler, so one copy of each record
    assert len(logging.getLogger("laionet").handlers) == 1
    with warnings.catch_warnings():  # outside a run (a driver called directly): no "without a flow run id" warning
        warnings.simplefilter("error")
        logging.getLogger("laionet.match").info("outside any run")


@pytest.mark.prefect
def test_subflows_carry_the_runs_tags(prefect_harness: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a deployment's flow run has tags of its own (not a `tags` context); reproduce's subflows must carry them
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.runtime import flow_run

    import flows.reproduce

    seen: dict[str, list[str]] = {}

    def stand_in(name: str) -> Any:
        @flow(name=f"stand-in-{name}")
        def stage(*args: Any, **kwargs: Any) -> dict[str, Any]:
            seen[name] = list(flow_run.tags)
            return {}

        return stage

    subflows = [n for n in ("build", "acquire", "infer_flow", "evaluate", "diagnose", "report_flow")
                if hasattr(flows.reproduce, n)]  # fmt: skip
    for name in subflows:
        monkeypatch.setattr(flows.reproduce, name, stand_in(name))
    parameters = {"run_dir": str(tmp_path / "run"), "preset": "demo"}
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(flows.reproduce.reproduce, parameters=parameters, tags=["laionet", "reproduce"])
    run_flow(flows.reproduce.reproduce, flow_run=run, parameters=parameters, return_type="state")
    assert {"build", "acquire", "infer_flow", "evaluate", "report_flow"} <= set(seen) <= set(subflows)
    assert all({"laionet", "reproduce"} <= set(tags) for tags in seen.values()), seen


def test_unreadable_table_error_names_the_file(tmp_path: Path) -> None:
    from laionet.core.tables import read_columns

    broken = tmp_path / "verify" / "quarantine.parquet"
    broken.parent.mkdir()
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(pa.ArrowInvalid, match=f"{broken}: not a readable parquet file .*magic bytes"):
        read_columns(str(broken), ["key"])


@pytest.mark.prefect
def test_task_timeout_stops_a_child_process_waited_for_in_a_worker_thread(prefect_harness: Path) -> None:
    # the download waits for img2dataset's child in a task-runner thread: Prefect's time limit can only interrupt
    # Python code there, so the child is polled; when the limit strikes the child is terminated, not left behind
    import multiprocessing

    from prefect import flow, task

    @task(name="slow-child", timeout_seconds=3)
    def slow_child() -> None:
        run_in_child(_sleep, {"seconds": 60}, "a child that sleeps")

    @flow
    def waits() -> None:
        slow_child.submit().result()

    started = time.monotonic()
    state = waits(return_state=True)
    assert state.is_failed() and "timeout" in str(state.message).lower(), state.message
    assert time.monotonic() - started < 30
    assert not multiprocessing.active_children()
