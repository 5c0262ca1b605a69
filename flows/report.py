"""The report flow: ``run_dir/report/index.html`` (+ PNG figures), every number read from the run's stage tables."""

from __future__ import annotations

from typing import Any

from prefect import flow

from laionet.core.config import Preset, load_preset
from laionet.core.layout import report_dir, stage_outputs
from tasks.report import report
from tasks.runners import task_runner


# the task runner: LAIONET_TASK_RUNNER = threads, processes, ray, ray:// (tasks/runners.py)
@flow(name="report", persist_result=True, flow_run_name="report · {run_dir}", task_runner=task_runner())
def report_flow(run_dir: str, preset: Preset | str = "demo") -> dict[str, Any]:
    """Render the report of a run directory (the preset gives its disclaimer); returns the report's manifest."""
    config = load_preset(preset)
    return report(run_dir, report_dir(run_dir), stage_outputs(run_dir), config.disclaimer)
