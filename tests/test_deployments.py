"""Deployments: every entrypoint of ``deployments/prefect.yaml`` loads for real; the ``build`` deployment runs end to
end on a real Prefect server through a process worker; a failed stage is re-run alone with ``prefect flow-run retry``.

The server tests drive Prefect only through the commands the README documents (``prefect server start``,
``prefect work-pool create``, ``prefect concurrency-limit create``, ``prefect deploy``, ``prefect deployment run``,
``prefect worker start --run-once``, ``prefect flow-run retry``), each in a subprocess whose Prefect home, SQLite
database and result storage are in a tmp directory, and read the outcome over the server's REST API (explicit
``sort``/``limit``/``offset``, as Prefect 3.8.8's client leaves them ``None``, which FastAPI ≥ 0.151 rejects).
The worker needs no checkout: it runs from a tmp directory, with neither ``LAIONET_ROOT`` nor ``PYTHONPATH`` in its
environment, and imports the deployments' module entrypoints (``flows.build.build``) from the installed package (here
the editable install, whose finder maps ``flows``/``tasks``/``laionet`` and nothing else of the checkout); the pull
step only moves the flow run to ``$LAIONET_HOME``, where a relative ``run_dir`` lands. The tiny corpus and class list
are those of ``tests/test_flows.py``, whose selection is known.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import task_name, write_corpus_part
from tests.test_flows import CAPTIONS, CLASSES, NSFW, SELECTED, SIM_DIR, TASKS, THRESHOLD

ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = ROOT / "deployments" / "prefect.yaml"
PREFECT = str(Path(sys.executable).with_name("prefect"))
DEPLOYMENTS = yaml.safe_load(PREFECT_FILE.read_text())["deployments"]


# --- a. every deployment's entrypoint and parameters --------------------------------------------------------------


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_deployment_entrypoint_loads_with_valid_parameters(
    prefect_harness: Path, deployment: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from prefect.flows import load_flow_from_entrypoint

    # a module path of the installed package (no file path, nothing relative to a checkout)
    assert re.fullmatch(r"flows\.\w+\.\w+", deployment["entrypoint"]), deployment["entrypoint"]
    monkeypatch.chdir(tmp_path)  # not the checkout: Prefect puts the working directory on the import path
    # placeholders off: an import error in the flow module fails here instead of at run time on the worker
    flow = load_flow_from_entrypoint(deployment["entrypoint"], use_placeholder_flow=False)
    parameters = deployment.get("parameters") or {}
    unknown = set(parameters) - set(flow.parameters.properties)
    assert not unknown, f"{deployment['name']}: parameters the flow does not take: {sorted(unknown)}"
    missing = set(flow.parameters.required or []) - set(parameters)
    assert not missing, f"{deployment['name']}: required flow parameters without a value: {sorted(missing)}"
    flow.validate_parameters(parameters)  # each value has the type the flow's signature declares
    assert deployment["work_pool"]["name"] == "gpu"
    assert all(schedule.get("active") is False for schedule in deployment.get("schedules") or [])


def test_pull_step_works_in_laionet_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The pull step (the same for every deployment) moves a flow run to ``$LAIONET_HOME``, created if missing; unset
    or relative, it fails naming the variable (Prefect's own step would run in the worker's temporary directory, which
    is deleted after the run, taking a relative run_dir with it)."""
    from prefect.utilities.importtools import import_object

    (step,) = yaml.safe_load(PREFECT_FILE.read_text())["pull"]
    ((name, inputs),) = step.items()
    pull = import_object(name)
    monkeypatch.chdir(tmp_path)  # restored at the end: the step changes the working directory
    for value in (None, "", "relative/home"):
        if value is None:
            monkeypatch.delenv("LAIONET_HOME", raising=False)
        else:
            monkeypatch.setenv("LAIONET_HOME", value)
        with pytest.raises(ValueError, match="LAIONET_HOME must be set"):
            pull(**inputs)
    home = tmp_path / "srv" / "laionet"
    monkeypatch.setenv("LAIONET_HOME", str(home))
    assert pull(**inputs) == {"directory": str(home.resolve())}
    assert home.is_dir() and Path.cwd() == home.resolve()


# --- b, c. a real server, a process worker ------------------------------------------------------------------------


@dataclass
class Server:
    url: str  # http://127.0.0.1:<port>/api
    env: dict[str, str]  # the environment of every Prefect command run against it
    home: Path

    def cli(
        self, *args: str, cwd: Path = ROOT, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``prefect --no-prompt <args>`` (``env`` added to the server's); output is stdout and stderr together."""
        return subprocess.run(
            [PREFECT, "--no-prompt", *args],
            cwd=cwd,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str, cwd: Path = ROOT, timeout: float = 120, env: dict[str, str] | None = None) -> str:
        done = self.cli(*args, cwd=cwd, timeout=timeout, env=env)
        assert done.returncode == 0, f"prefect {' '.join(args)} exited {done.returncode}:\n{done.stdout[-4000:]}"
        return done.stdout

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Any) -> Any:
        response = httpx.post(f"{self.url}{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres(sql: str) -> bool:
    """Run ``sql`` on the local PostgreSQL (127.0.0.1:5432, trust auth, user postgres); False if none answers."""
    import asyncio

    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="postgres", timeout=3)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    try:
        asyncio.run(run())
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``prefect server start`` on a free port, with the ``gpu`` process pool, the ``gpu`` tag concurrency limit and
    the ``build`` deployment registered by the documented commands; killed at the end. Its database: a fresh one on
    the local PostgreSQL where that answers (as a service runs it: SQLite locks under a scheduler, a worker and flow
    runs writing at once), dropped at the end; SQLite in tmp elsewhere."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    database = f"laionet_test_{os.getpid()}_{port}"
    postgres = _postgres(f"CREATE DATABASE {database}")
    # nothing that could point a worker at the checkout: no LAIONET_ROOT, no PYTHONPATH (the code a worker runs is the
    # installed package's); LAIONET_HOME is the worker's own (work_once)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PREFECT_") and k not in ("LAIONET_ROOT", "LAIONET_HOME", "PYTHONPATH")
    }
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": url,
            "PREFECT_API_DATABASE_CONNECTION_URL": (
                f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}"
                if postgres
                else f"sqlite+aiosqlite:///{home / 'prefect.db'}"
            ),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
            "PREFECT_UI_ENABLED": "false",
            "COLUMNS": "250",  # no wrapped lines in the CLI's output
            # the schedule test: the scheduler looks every second (default 60 s), a run that finds the deployment's
            # concurrency slot taken tries again after 1 s (default 30 s), a worker polls every second (default 10 s)
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
            "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "3",  # not 100 runs ahead of a 5 s interval
            "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": "2",
            "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        }
    )
    log = (home / "server.log").open("w")
    process = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=home,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: killed whole at the end
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (home / "server.log").read_text()[-4000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prefect server did not answer /api/health in 90 s"
            time.sleep(0.3)
        srv = Server(url=url, env=env, home=home)
        srv.ok("work-pool", "create", "gpu", "--type", "process")
        srv.ok("concurrency-limit", "create", "gpu", "1")
        # every deployment of the file, as the README does it (needs fastapi<0.151: see pyproject.toml)
        deployed = srv.ok("deploy", "--prefect-file", str(PREFECT_FILE.relative_to(ROOT)), "--all")
        names = [d["name"] for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]]
        assert all(name in deployed for name in names), deployed[-4000:]
        yield srv
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        if postgres:
            _postgres(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


@pytest.fixture
def tiny(tmp_path: Path) -> dict[str, Any]:
    """Parameters of a tiny build run: 5 classes, a 13-caption corpus part, the run directory in tmp."""
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    write_corpus_part(tmp_path / "laion" / "part-00000.parquet", CAPTIONS, NSFW=pa.array(NSFW, pa.string()))
    return {
        "run_dir": str(tmp_path / "run"),
        "classes": str(classes),
        "corpus": str(tmp_path / "laion" / "*.parquet"),
        "threshold": THRESHOLD,
    }


def trigger(server: Server, parameters: dict[str, Any]) -> str:
    """``prefect deployment run build/build -p k=v ...``; returns the flow run id."""
    args = [arg for name, value in parameters.items() for arg in ("-p", f"{name}={value}")]
    out = server.ok("deployment", "run", "build/build", *args)
    found = re.search(r"UUID: ([0-9a-f-]{36})", out)
    assert found, out
    return found.group(1)


def work_once(server: Server, cwd: Path) -> str:
    """``LAIONET_HOME=<cwd>/home prefect worker start --pool gpu --run-once`` from ``cwd`` (a tmp directory, not the
    checkout), with no LAIONET_ROOT nor PYTHONPATH: the flows come from the installed package, the deployment's pull
    step takes the flow run to ``<cwd>/home``. Returns the worker's output."""
    return server.ok(
        "worker", "start", "--pool", "gpu", "--run-once", cwd=cwd, timeout=180, env={"LAIONET_HOME": str(cwd / "home")}
    )


def task_runs(server: Server, flow_run_id: str, attempt: int) -> dict[str, dict[str, Any]]:
    """The task runs of one attempt of a flow run (its ``run_count``), by task name, once all are final."""
    body = {
        "flow_runs": {"id": {"any_": [flow_run_id]}},
        "sort": "EXPECTED_START_TIME_ASC",
        "limit": 100,
        "offset": 0,
    }
    deadline = time.monotonic() + 20
    while True:  # task-run states reach the server as events: wait until each is recorded as final
        runs = [r for r in server.post("/task_runs/filter", body) if r["flow_run_run_count"] == attempt]
        final = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
        if (runs and all(r["state"] and r["state"]["type"] in final for r in runs)) or time.monotonic() > deadline:
            return {task_name(r["name"]): r for r in runs}
        time.sleep(0.3)


def logs_of(server: Server, task_run_id: str, want: str = "", timeout: float = 20) -> list[str]:
    """The log messages of a task run, once one contains ``want`` (logs reach the server in batches)."""
    body = {"logs": {"task_run_id": {"any_": [task_run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200, "offset": 0}
    deadline = time.monotonic() + timeout
    while True:
        messages = [log["message"] for log in server.post("/logs/filter", body)]
        if any(want in m for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(0.3)


def mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def index_of(run_dir: str) -> set[tuple[str, str]]:
    rows = pq.read_table(f"{run_dir}/selection/laionet.parquet", columns=["text", "wnid"]).to_pylist()
    return {(row["text"], row["wnid"]) for row in rows}


@pytest.mark.prefect
def test_build_deployment_end_to_end(server: Server, tiny: dict[str, Any], tmp_path: Path) -> None:
    deployment = server.get("/deployments/name/build/build")
    assert deployment["entrypoint"] == "flows.build.build" and deployment["work_pool_name"] == "gpu"
    # the pull step is stored as written; it reads LAIONET_HOME on the worker, at run time
    assert deployment["pull_steps"] == [{"tasks.deployment.deployment_home": {}}]
    declared = next(d for d in DEPLOYMENTS if d["name"] == "build").get("concurrency_limit")
    if declared:  # a deployment concurrency limit becomes a global limit on the server
        assert deployment["global_concurrency_limit"]["limit"] == declared

    # a relative run_dir: it lands in the worker's LAIONET_HOME (not in the worker's directory, nor in the checkout)
    tiny = {**tiny, "run_dir": "run"}
    flow_run_id = trigger(server, tiny)
    assert server.get(f"/flow_runs/{flow_run_id}")["state"]["type"] == "SCHEDULED"
    elsewhere = tmp_path / "worker"
    elsewhere.mkdir()
    log = work_once(server, cwd=elsewhere)

    flow_run = server.get(f"/flow_runs/{flow_run_id}")
    assert flow_run["state"]["type"] == "COMPLETED", log[-4000:]
    assert flow_run["parameters"]["run_dir"] == tiny["run_dir"] and flow_run["parameters"]["threshold"] == THRESHOLD
    assert flow_run["parameters"]["encoder"] == "minilm"  # the deployment's default where not overridden
    runs = task_runs(server, flow_run_id, attempt=1)
    assert {name: run["state"]["name"] for name, run in runs.items()} == dict.fromkeys(TASKS, "Completed")
    assert "Executing deployment step: deployment_home" in log
    assert sorted(p.name for p in elsewhere.iterdir()) == ["home"] and not (ROOT / "run").exists()

    # the UI's story: run names say what and where, every task run logs more than its final state, artifact keys
    # are distinct per run directory and stage
    run_dir_text = tiny["run_dir"]
    assert flow_run["name"] == f"build · {run_dir_text}"
    assert {name: run["name"] for name, run in runs.items()} == {
        "catalog": f"catalog {'/'.join(Path(tiny['classes']).parts[-3:])} · {run_dir_text}",
        "lemma-map": f"lemma-map default · {run_dir_text}",
        "match": f"match default · {run_dir_text}",
        "similarity": f"similarity minilm · {run_dir_text}",
        "select": f"select {THRESHOLD} · {run_dir_text}",
    }
    for name, run in runs.items():
        messages = logs_of(server, run["id"], want="config")
        assert [m for m in messages if not m.startswith("Finished in state")], (name, messages)
        assert any(m.startswith(f"{name.replace('lemma-map', 'lemmas')} → ") for m in messages), (name, messages)
    body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "KEY_ASC", "limit": 50, "offset": 0}
    keys = [a["key"] for a in server.post("/artifacts/filter", body) if a["key"]]
    assert sorted(keys) == ["run-catalog", "run-lemmas-lemma-map-default", "run-match-matches", "run-select-selection",
                            "run-similarity-st-all-minilm-l6-v2"], keys  # fmt: skip

    run_dir = elsewhere / "home" / tiny["run_dir"]
    match = json.loads((run_dir / "matches" / "_manifest.json").read_text())
    assert (match["rows_in"], match["rows_out"]) == (13, 9)
    select = json.loads((run_dir / "selection" / "_manifest.json").read_text())
    assert (select["rows_in"], select["rows_out"]) == (9, 6)
    assert (run_dir / SIM_DIR / "part-00000.parquet").is_file()
    assert index_of(str(run_dir)) == SELECTED
    # the similarity task (tag `gpu`) took and gave back the one slot of the `gpu` limit
    assert server.get("/concurrency_limits/tag/gpu")["active_slots"] == []


@pytest.mark.prefect
def test_failed_stage_is_retried_alone(server: Server, tiny: dict[str, Any], tmp_path: Path) -> None:
    # A file stands where the selection directory goes (a path in the way: a configuration error, not retried).
    run_dir = Path(tiny["run_dir"])
    foreign = run_dir / "selection"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("not a directory")
    elsewhere = tmp_path / "worker"
    elsewhere.mkdir()

    flow_run_id = trigger(server, tiny)
    log = work_once(server, cwd=elsewhere)
    flow_run = server.get(f"/flow_runs/{flow_run_id}")
    assert flow_run["state"]["type"] == "FAILED", log[-4000:]
    message = flow_run["state"]["message"]  # names the task run and the file at fault
    assert f"task run 'select {THRESHOLD} · {tiny['run_dir']}' failed: FileExistsError" in message, message
    assert str(foreign) in message, message
    first = task_runs(server, flow_run_id, attempt=1)
    assert {name: run["state"]["name"] for name, run in first.items()} == {
        **dict.fromkeys(TASKS, "Completed"),
        "select": "Failed",
    }
    assert re.search(r"Task run 'select [^']*' - Finished in state Failed", log)  # the worker's log names the stage
    upstream = {target: mtimes(run_dir / target) for target in ("matches", SIM_DIR)}
    assert all(upstream.values())

    foreign.unlink()  # the cause, fixed
    out = server.ok("flow-run", "retry", flow_run_id)
    assert "scheduled for retry" in out
    log = work_once(server, cwd=elsewhere)

    flow_run = server.get(f"/flow_runs/{flow_run_id}")
    assert flow_run["state"]["type"] == "COMPLETED", log[-4000:]
    assert flow_run["run_count"] == 2
    second = task_runs(server, flow_run_id, attempt=2)
    # every finished stage comes back from the cache; only the failed one runs
    assert {name: run["state"]["name"] for name, run in second.items()} == {
        **dict.fromkeys(TASKS, "Cached"),
        "select": "Completed",
    }
    assert {target: mtimes(run_dir / target) for target in upstream} == upstream  # nothing upstream rewritten
    select = json.loads((foreign / "_manifest.json").read_text())
    assert (select["stage"], select["rows_in"], select["rows_out"]) == ("select", 9, 6)
    assert index_of(tiny["run_dir"]) == SELECTED
    deployment = server.get("/deployments/name/build/build")
    assert deployment["global_concurrency_limit"]["active_slots"] == 0  # the failed run gave its slot back


@pytest.mark.prefect
def test_broken_stage_failure_names_file_and_task(server: Server, tiny: dict[str, Any], tmp_path: Path) -> None:
    # A corpus part truncated by a failed copy: the match stage fails (a data error: not retried), the stages after it
    # never run. The flow's failure names the task run and the file; the task run's log holds the traceback.
    broken = Path(tiny["corpus"]).parent / "part-00001.parquet"
    broken.write_bytes(b"PAR1 cut short by a failed copy")
    elsewhere = tmp_path / "worker"
    elsewhere.mkdir()
    flow_run_id = trigger(server, tiny)
    log = work_once(server, cwd=elsewhere)
    flow_run = server.get(f"/flow_runs/{flow_run_id}")
    assert flow_run["state"]["type"] == "FAILED", log[-4000:]
    message = flow_run["state"]["message"]
    assert f"task run 'match default · {tiny['run_dir']}' failed" in message, message
    assert str(broken) in message and "UnfinishedRun" not in message, message
    body = {"task_runs": {"name": {"like_": "match "}}, "flow_runs": {"id": {"any_": [flow_run_id]}},
            "sort": "EXPECTED_START_TIME_ASC", "limit": 10, "offset": 0}  # fmt: skip
    (match,) = server.post("/task_runs/filter", body)
    assert match["run_count"] == 1  # not retried: a data error
    messages = logs_of(server, match["id"], want="Traceback")
    rejected = [m for m in messages if "not retried" in m]
    assert rejected and "Traceback" in rejected[0] and str(broken) in rejected[0], messages


@pytest.mark.prefect
def test_worker_without_laionet_home_fails_the_run_naming_it(
    server: Server, tiny: dict[str, Any], tmp_path: Path
) -> None:
    # Prefect's own set_working_directory would run the flow in the worker's temporary directory, deleted afterwards
    # with a relative run_dir in it; the pull step stops the run instead, and says why in the flow run's logs.
    elsewhere = tmp_path / "worker"
    elsewhere.mkdir()
    flow_run_id = trigger(server, {**tiny, "run_dir": "run"})
    log = server.ok("worker", "start", "--pool", "gpu", "--run-once", cwd=elsewhere, timeout=180)  # no LAIONET_HOME
    flow_run = server.get(f"/flow_runs/{flow_run_id}")
    assert flow_run["state"]["type"] in {"CRASHED", "FAILED"}, log[-4000:]
    assert "LAIONET_HOME must be set" in log
    body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200, "offset": 0}
    deadline = time.monotonic() + 20
    while not any("LAIONET_HOME must be set" in m["message"] for m in server.post("/logs/filter", body)):
        assert time.monotonic() < deadline, [m["message"] for m in server.post("/logs/filter", body)]
        time.sleep(0.3)
    assert list(elsewhere.iterdir()) == [] and not (ROOT / "run").exists()  # nothing written anywhere


def is_due(run: dict[str, Any], at: datetime | None = None) -> bool:
    """Whether a flow run's scheduled start time has come (by ``at``, default now)."""
    return datetime.fromisoformat(run["expected_start_time"]) <= (at or datetime.now(UTC))


def deployment_runs(server: Server, deployment_id: str) -> list[dict[str, Any]]:
    body = {
        "deployments": {"id": {"any_": [deployment_id]}},
        "sort": "EXPECTED_START_TIME_ASC",
        "limit": 200,
        "offset": 0,
    }
    return list(server.post("/flow_runs/filter", body))


@pytest.mark.prefect
def test_schedule_creates_runs_a_worker_completes(server: Server, tiny: dict[str, Any], tmp_path: Path) -> None:
    # The build flow deployed with a 5-second interval schedule that starts inactive (a deployment of its own: the
    # `build` deployment's run_dir would write into the checkout, and a schedule's own parameters are not stored by
    # Prefect 3.8.8's create-schedule endpoint), resumed with the documented command. The server's scheduler must create
    # the runs (under SQLAlchemy 2.1 it failed every loop and created none) and a long-running worker must complete
    # them; pausing the schedule deletes the runs it created for later and keeps those already due.
    spec = yaml.safe_load(PREFECT_FILE.read_text())
    build = next(d for d in spec["deployments"] if d["name"] == "build")
    every = {**build, "name": "every-5s", "parameters": {**build["parameters"], **tiny}, "concurrency_limit": 1,
             "schedules": [{"interval": 5, "active": False}]}  # fmt: skip
    test_file = tmp_path / "prefect.yaml"
    test_file.write_text(yaml.safe_dump({**spec, "deployments": [every]}))
    assert "build/every-5s" in server.ok("deploy", "--prefect-file", str(test_file), "--all")
    deployment = server.get("/deployments/name/build/every-5s")
    (schedule,) = deployment["schedules"]
    elsewhere = tmp_path / "worker"
    elsewhere.mkdir()
    worker = None
    try:
        assert "Resumed schedule" in server.ok("deployment", "schedule", "resume", "build/every-5s", schedule["id"])
        started = time.monotonic()
        while len([r for r in deployment_runs(server, deployment["id"]) if is_due(r)]) < 2:
            log = (server.home / "server.log").read_text()
            assert "Can't evaluate bulk DML" not in log, log[-4000:]
            assert time.monotonic() - started < 40, "the scheduler created no 2 due runs in 40 s"
            time.sleep(0.5)
        # off again before the worker starts, so that it has exactly the runs already due (not one every 5 s)
        assert "Paused schedule" in server.ok("deployment", "schedule", "pause", "build/every-5s", schedule["id"])
        paused_at = datetime.now(UTC)
        runs = deployment_runs(server, deployment["id"])
        assert all(r["auto_scheduled"] and r["created_by"]["type"] == "SCHEDULE" for r in runs)
        assert all(r["parameters"]["run_dir"] == tiny["run_dir"] for r in runs)
        assert not [r for r in runs if not is_due(r, paused_at)], runs  # the runs it had created for later are gone
        assert len(runs) >= 2

        worker = subprocess.Popen(
            [PREFECT, "--no-prompt", "worker", "start", "--pool", "gpu"],
            cwd=elsewhere,
            env={**server.env, "LAIONET_HOME": str(elsewhere / "home")},  # no LAIONET_ROOT, no PYTHONPATH
            stdout=(tmp_path / "worker.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while True:
            runs = deployment_runs(server, deployment["id"])
            if all(r["state"]["type"] == "COMPLETED" for r in runs):
                break
            failed = [r for r in runs if r["state"]["type"] in {"FAILED", "CRASHED"}]
            assert not failed, (failed[0]["state"], (tmp_path / "worker.log").read_text()[-4000:])
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-4000:]
            time.sleep(1)
        assert index_of(tiny["run_dir"]) == SELECTED
        for run in runs:  # every stage of each scheduled run finished (computed, or found done: Cached)
            states = {name: r["state"]["type"] for name, r in task_runs(server, run["id"], attempt=1).items()}
            assert states == dict.fromkeys(TASKS, "COMPLETED"), states
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:  # still waiting for a flow run it started
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        server.cli("deployment", "delete", "build/every-5s")  # with its runs: nothing left for the next test
