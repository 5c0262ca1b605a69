"""``laionet status`` and ``laionet doctor``: the state of a run directory, and what this machine has for a run.

The root app in ``laionet.cli`` registers this module's ``app``.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from laionet.cli.common import fail

app = typer.Typer()

_MARKS = {"complete": "ok", "stale": "STALE", "incomplete": "INCOMPLETE", "running": "running", "missing": "-",
          "corrupt": "CORRUPT"}  # fmt: skip


@app.command()
def status(
    run_dir: Annotated[str, typer.Option("--run-dir", help="The run directory (local path or fsspec URL).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the states as JSON.")] = False,
) -> None:
    """Each stage of a run directory: complete, stale against an input rebuilt after it, incomplete (interrupted or
    failed: re-run it), running, or missing; rows in/out and wall time from its manifest."""
    from laionet.core.status import run_status, status_rows

    try:
        states = run_status(run_dir)
    except FileNotFoundError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(status_rows(run_dir), indent=2))
        return
    width = max((len(s.path) for s in states), default=10)
    for s in states:
        rows = f"{s.rows_in:>10,} → {s.rows_out:<10,}" if s.rows_in is not None and s.rows_out is not None else " " * 24
        took = f"{s.wall_time_s:8.1f} s" if s.wall_time_s is not None else " " * 10
        typer.echo(f"{_MARKS.get(s.state, s.state):<10} {s.path:<{width}}  {rows} {took}  {s.detail}".rstrip())
    if any(s.state in ("stale", "incomplete", "corrupt") for s in states):
        typer.echo("re-run the stages marked STALE or INCOMPLETE (the same command, or retry the flow run)")


@app.command()
def doctor(
    run_dir: Annotated[str, typer.Option("--run-dir", help="Where runs are written (disk space is checked there).")] = (
        "runs"
    ),
    pool: Annotated[str, typer.Option(help="The work pool deployments run on.")] = "gpu",
    need_gb: Annotated[float, typer.Option(help="Disk space a run needs, in GiB.")] = 2.0,
) -> None:
    """What this machine has for a run: WordNet, torch and CUDA devices, the Prefect API with its work pool and the
    `gpu` concurrency limit, disk space, and the optional engines — each with a one-line fix when missing. Exits 1 if
    a required check fails."""
    from laionet.core.doctor import run_checks

    checks = run_checks(run_dir, pool=pool, need_gb=need_gb)
    for check in checks:
        mark = {True: "ok", False: "FAIL", None: "--"}[check.ok]
        typer.echo(f"{mark:<5} {check.name}: {check.found}")
        if check.ok is not True and check.fix:
            typer.echo(f"      fix: {check.fix}")
    if any(check.ok is False for check in checks):
        raise typer.Exit(code=1)
