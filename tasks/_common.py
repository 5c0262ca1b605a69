"""Shared pieces of the task layer: the stage cache policy, the manifest artifact, the retry condition.

Cache policy (``stage_cache(output=...)``)
------------------------------------------
A stage task's result (its manifest as a plain dict) is persisted, and its cache key is the hash of

* the task's inputs (Prefect ``INPUTS``: paths, mode, plain-dict settings) and its own source (``TASK_SOURCE``);
* the laionet code version: ``laionet.__version__`` plus a digest of every file of the installed package, so a
  library edit without a version bump still invalidates;
* a fingerprint of every input that is a path: the manifest of an upstream stage output (its config hash and
  creation time) or, for a plain file, fsspec's ``checksum`` (size + mtime). So rebuilding the catalog changes
  the lemma task's key even though the catalog's path did not change. Globs are fingerprinted by their text only.

Nothing else goes in: in particular not the flow-run id (Prefect's default), so the key is stable across runs.

The key deliberately does **not** depend on the stage's own output (that would differ before and after the run, and
the second run would always miss). Instead the output is *validated* while the key is computed: if a result is
cached under the key but the output's manifest is missing, or is not the manifest the cached result holds (the
output was deleted, or rebuilt by the CLI or by a run with other settings into the same place), the cached
record is expired (overwritten in the task's result store with an expiration in the past). Prefect then treats
the key as a miss, runs the driver, and stores the fresh manifest under the same key, so the run after that is
``Cached`` again. Validation reads one small JSON manifest and one small result record per task run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import fsspec
from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import TASK_SOURCE, CachePolicy, Inputs
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.futures import PrefectFuture, wait
from prefect.tasks import exponential_backoff
from prefect.utilities.hashing import hash_objects

from laionet.core.config import preset_label
from laionet.core.manifest import Manifest, code_version, read_manifest
from laionet.core.stage import outputs_exist
from laionet.images.child import is_transient as transient_error

K = TypeVar("K")


def fingerprint(value: Any) -> Any:
    """What identifies the content behind a path-valued input, or each path of a list of them (None for anything
    else)."""
    if isinstance(value, list | tuple):
        return [fingerprint(v) for v in value]
    if not isinstance(value, str) or not value or any(c in value for c in "*?["):
        return None
    try:
        manifest = read_manifest(value)
        if manifest is not None:
            return ["manifest", manifest.config_hash, manifest.created_at]
        fs, path = fsspec.core.url_to_fs(value)
        return ["file", fs.checksum(path)] if fs.isfile(path) else None
    except Exception:  # not a path at all (e.g. "imagenet1k"), or unreadable: the input's text still counts
        return None


def _expire_if_stale(ctx: TaskRunContext, key: str, output: str) -> None:
    """Expire the record cached under ``key`` unless ``output``'s manifest is the one that record holds."""
    store = ctx.result_store
    if not store.exists(key):
        return
    try:
        cached = store.read(key).result
    except Exception:  # unreadable record (e.g. written by another Prefect version): treat as stale
        cached = None
    try:
        current = read_manifest(output)
    except ValueError:  # a corrupt manifest: the driver rebuilds the output
        current = None
    # the stage contract's own test of completeness (laionet.core.stage): the manifest exists, its outputs too
    if current is not None and outputs_exist(current) and current.model_dump(mode="json") == cached:
        return
    store.write(obj=None, key=key, expiration=datetime.now(UTC) - timedelta(days=1))


@dataclass
class StageCache(CachePolicy):
    """INPUTS + TASK_SOURCE + code version + input fingerprints; validated against the stage output."""

    output: str = "out_path"
    exclude: list[str] = field(default_factory=list)

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        base = (Inputs(exclude=self.exclude) + TASK_SOURCE).compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        skip = {self.output, *self.exclude}
        upstream = {name: fingerprint(value) for name, value in sorted(inputs.items()) if name not in skip}
        key = hash_objects(base, code_version(), upstream, raise_on_failure=True)
        if task_ctx is not None and key is not None:
            _expire_if_stale(task_ctx, key, inputs[self.output])
        return key


def stage_cache(output: str, exclude: tuple[str, ...] = ()) -> StageCache:
    """The cache policy of a stage task whose output path is the parameter named ``output``; inputs named in
    ``exclude`` (e.g. a worker count) do not change what the stage produces and are left out of the key."""
    return StageCache(output=output, exclude=list(exclude))


def publish(manifest: Manifest, target: str) -> dict[str, Any]:
    """Create the Markdown artifact summarising ``manifest``; return the manifest as a plain dict."""
    lines = [
        f"### {manifest.stage}: `{target}`",
        "",
        "| rows in | rows out | dropped | wall time (s) |",
        "|---:|---:|---:|---:|",
        f"| {manifest.rows_in:,} | {manifest.rows_out:,} | {sum(manifest.dropped.values()):,} | "
        f"{manifest.wall_time_s:.2f} |",
    ]
    if manifest.dropped:
        lines += ["", "| dropped by reason | rows |", "|---|---:|"]
        lines += [f"| {reason} | {n:,} |" for reason, n in sorted(manifest.dropped.items())]
    first = f", first `{manifest.outputs[0]}`" if manifest.outputs else ""
    lines += [
        "",
        f"config hash `{manifest.config_hash}`, code version `{manifest.code_version}`, "
        f"{len(manifest.outputs)} output(s){first}",
    ]
    key = artifact_key(manifest.stage, target)
    create_markdown_artifact(markdown="\n".join(lines), key=key, description=f"{manifest.stage} manifest summary")
    logging.getLogger(f"laionet.{manifest.stage}").info(
        "%s → %s: %d rows in, %d out, %d dropped %s, %.2f s, config %s",
        manifest.stage, target, manifest.rows_in, manifest.rows_out, sum(manifest.dropped.values()),
        dict(sorted(manifest.dropped.items())), manifest.wall_time_s, manifest.config_hash,
    )  # fmt: skip
    return manifest.model_dump(mode="json")


def _slug(text: str) -> str:
    return "-".join(filter(None, "".join(c if c.isalnum() else "-" for c in text.lower()).split("-")))


def run_dir() -> str | None:
    """The ``run_dir`` parameter of the flow run this code runs in (None outside one, or without that parameter)."""
    context = FlowRunContext.get()
    value = (context.parameters or {}).get("run_dir") if context is not None else None
    return str(value).rstrip("/") if value else None


_EXTENSIONS = (".parquet", ".json", ".tar", ".html", ".txt")


def _relative(path: str) -> list[str]:
    """The components of ``path`` below the flow run's run directory (the last three outside one)."""
    root = run_dir()
    path = str(path).rstrip("/")
    below = path[len(root) + 1 :] if root and path.startswith(root + "/") else "/".join(path.split("/")[-3:])
    return [part for part in below.split("/") if part]


def artifact_key(stage: str, target: str) -> str:
    """A key distinct per run directory, stage and output (so per variant and model):
    ``<run dir name>-<stage>-<output path below the run dir>``, e.g. ``demo-accuracy-evaluate-laionet-image-clip``."""
    root = run_dir()
    below = [next((p.removesuffix(e) for e in _EXTENSIONS if p.endswith(e)), p) for p in _relative(target)]
    parts = [root.rsplit("/", 1)[-1] if root else "laionet", stage, *below]
    return _slug("-".join(dict.fromkeys(_slug(p) for p in parts)))[:200]


def run_name(*detail: str | Callable[[dict[str, Any]], str]) -> Callable[[], str]:
    """A ``task_run_name``: ``<task> <detail> · <run dir>``. Each item of ``detail`` is a parameter name (its value
    as text, a path by its components below the run dir) or a function of the parameters; e.g. ``accuracy
    laionet-image/efficientnet-lite0 · runs/demo``, ``infer-shards laionet 00000-00003 (4 shards) · runs/demo``."""

    def name() -> str:
        context = TaskRunContext.get()
        if context is None:
            return "task"
        params = context.parameters or {}
        root = run_dir()
        words = [context.task.name]
        for item in detail:
            value = item(params) if callable(item) else params.get(item)
            if value is None or value == "":
                continue
            text = str(value)
            words.append(
                "/".join(_relative(text)) if text.startswith("/") or (root and text.startswith(root)) else text
            )
        return " ".join(words + ([f"· {root}"] if root else []))

    return name


def flow_name(flow: str) -> Callable[[], str]:
    """A ``flow_run_name``: ``<flow> <preset> · <run dir>``; the preset by its name also when the run was given a
    whole ``Preset`` (the Prefect UI's form), which the ``{preset}`` template would print field by field."""

    def name() -> str:
        from prefect.runtime import flow_run

        params = flow_run.parameters or {}
        preset = params.get("preset")
        if isinstance(preset, dict):  # a Preset as the API stores it
            preset = str(preset.get("name", "preset"))
        words = [flow, preset_label(preset) if preset is not None else None, f"· {params.get('run_dir', '')}"]
        return " ".join(w for w in words if w)

    return name


def below(parameter: str, parts: int) -> Callable[[dict[str, Any]], str]:
    """The last ``parts`` components of a path parameter (``below("out_dir", 2)`` → ``laionet-image/clip``)."""
    return lambda params: "/".join(str(params.get(parameter) or "").rstrip("/").split("/")[-parts:])


class StageFailedError(RuntimeError):
    """A task run of a flow failed; the message names it (its run name: stage, variant, model, shard group, run
    directory) and repeats its error."""


def resolve(futures: Mapping[K, PrefectFuture[Any]]) -> dict[K, Any]:
    """Wait for every future a flow started; their results by key. If any failed, raise ``StageFailedError`` naming the
    first failed task run in submission order (the cause; tasks downstream of it never ran), so that the flow's
    failure says what failed instead of ``UnfinishedRun`` from a task that was never ready."""
    wait(list(futures.values()))
    for future in futures.values():
        state = future.state
        if state.is_failed() or state.is_crashed() or state.is_cancelled():
            try:
                future.result()
                error: BaseException | None = None
            except BaseException as exc:  # re-raised below with the task run name
                error = exc
            name = _task_run_name(future)
            detail = f"{type(error).__name__}: {error}" if error is not None else state.message
            raise StageFailedError(f"task run '{name}' failed: {detail}") from error
    return {key: future.result() for key, future in futures.items()}


def _task_run_name(future: PrefectFuture[Any], wait_s: float = 10.0) -> str:
    """The task run's name as the API has it. The server records a task run from the client's events, in batches
    (``PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_*``: every 2 s in ``laionet run``), first under Prefect's default name
    (``<task>-<3 hex>``) and renamed from its ``task_run_name`` by a later event: so the run is read again, for at most
    ``wait_s``, until it exists and has one of our names (``… · <run dir>``); the id if it never does."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    name = str(future.task_run_id)
    try:
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + wait_s
            while True:
                with contextlib.suppress(ObjectNotFound):  # not recorded yet
                    name = str(client.read_task_run(future.task_run_id).name)
                if " · " in name or time.monotonic() >= deadline:
                    return name
                time.sleep(0.25)
    except Exception:  # the API is unreachable: the id (or the name read so far) still identifies it
        return name


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: retry network and I/O errors, timeouts and a killed child process; never configuration or
    data errors, missing files, a full disk or a permission error (``laionet.images.child.is_transient``). A failure
    that is not retried is logged with its traceback (Prefect itself logs it only once retries are exhausted)."""
    try:
        state.result()
    except Exception as exc:
        if transient_error(exc):
            return True
        child = getattr(exc, "child_traceback", "")
        _run_logger().error(
            "%s failed with %s, which is not retried (configuration, data, missing file, disk full or permission)%s",
            task.name, type(exc).__name__, f"; the child process's traceback:\n{child}" if child else "",
            exc_info=exc,
        )  # fmt: skip
        return False
    return False


def _run_logger() -> Any:
    try:
        return get_run_logger()
    except MissingContextError:  # called outside a task run (a test, a custom engine)
        return logging.getLogger("laionet.tasks")


class _InRun(logging.Filter):
    """Only records logged inside a flow or task run go to the API (a driver called outside one, e.g. by a test in
    a process that imported the task layer, would make Prefect warn that there is no flow run id)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def forward_library_logs() -> None:
    """Send the ``laionet.*`` loggers' INFO records to Prefect (the run's log pane in the UI), as
    ``PREFECT_LOGGING_EXTRA_LOGGERS=laionet`` does when it is set before Prefect is imported (its API handler is
    replaced by one that sends only records logged inside a run); also set that variable for child processes (process
    and Ray task runners). Idempotent."""
    from prefect.logging.handlers import APILogHandler

    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "laionet")
    logger = logging.getLogger("laionet")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    ours = [h for h in logger.handlers if any(isinstance(f, _InRun) for f in h.filters)]
    for handler in [h for h in logger.handlers if isinstance(h, APILogHandler) and h not in ours]:
        logger.removeHandler(handler)  # Prefect's shared one (PREFECT_LOGGING_EXTRA_LOGGERS set before its import)
    if not ours:
        handler = APILogHandler()
        handler.addFilter(_InRun())
        logger.addHandler(handler)


forward_library_logs()


# Retries of stages that read or write files that may live on object storage: I/O errors only, with backoff.
IO_RETRIES: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=10),
    "retry_condition_fn": is_transient,
}


def progress_artifact(description: str) -> Callable[[int, int], None]:
    """A Prefect progress artifact for a long stage, and the ``progress(done, total)`` callback that updates it
    (what the drivers accept); updates at most every 2 % to spare the API."""
    artifact_id = create_progress_artifact(progress=0.0, description=description)
    last = [-1.0]

    def update(done: int, total: int) -> None:
        value = 100.0 * done / max(total, 1)
        if value - last[0] >= 2.0 or done >= total:
            update_progress_artifact(artifact_id=artifact_id, progress=value)
            last[0] = value

    return update


def publish_table(rows: list[dict[str, Any]], key: str, description: str) -> None:
    """A Prefect table artifact (e.g. a stage's summary table)."""
    root = run_dir()
    safe = _slug(f"{root.rsplit('/', 1)[-1] if root else 'laionet'}-{key}")
    create_table_artifact(table=rows, key=safe[:200], description=description)
