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

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import fsspec
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import TASK_SOURCE, CachePolicy, Inputs
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff
from prefect.utilities.hashing import hash_objects

from laionet.core.manifest import Manifest, code_version, read_manifest


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
    current = read_manifest(output)
    if current is not None and current.model_dump(mode="json") == cached:
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
    key = "".join(c if c.isalnum() else "-" for c in f"laionet-{manifest.stage}".lower())
    create_markdown_artifact(markdown="\n".join(lines), key=key, description=f"{manifest.stage} manifest summary")
    return manifest.model_dump(mode="json")


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: retry I/O and network errors, not configuration errors or missing files."""
    try:
        state.result()
    except (FileNotFoundError, PermissionError):
        return False
    except (OSError, TimeoutError):
        return True
    except Exception:
        return False
    return False


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
    safe = "".join(c if c.isalnum() else "-" for c in key.lower()).strip("-")
    create_table_artifact(table=rows, key=safe[:100], description=description)
