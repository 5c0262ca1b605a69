"""The report task: one self-contained HTML page with PNG figures from the stage tables of a run directory."""

from __future__ import annotations

from typing import Any

from prefect import task

from laionet.report.html import run_report
from tasks._common import publish, run_name, stage_cache


@task(
    name="report",
    task_run_name=run_name(),
    cache_policy=stage_cache("out_dir"),
    persist_result=True,
)
def report(run_dir: str, out_dir: str, stages: list[str], disclaimer: str | None = None) -> dict[str, Any]:
    """Render ``<out_dir>/index.html`` from ``run_dir``'s tables. ``stages`` are the output paths the report reads:
    their manifests are part of the cache key, so the report is rebuilt whenever one of them changes."""
    return publish(run_report(run_dir, out_dir, disclaimer=disclaimer), out_dir)
