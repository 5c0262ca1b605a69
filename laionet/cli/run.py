"""``laionet run``, ``laionet status`` and ``laionet doctor``: the Prefect pipeline from the command line, the state
of a run directory, and what this machine has for a run.

``run`` imports the flows (the ``flows`` and ``tasks`` packages, installed with ``laionet``) and Prefect inside the
command, so the library and ``laionet --help`` never load Prefect. The root app in ``laionet.cli`` registers this
module's ``app``.
"""

from __future__ import annotations

import contextlib
import enum
import json
from typing import Annotated, Any

import typer

from laionet.cli.common import fail
from laionet.core.runtime import apply_prefect_defaults

app = typer.Typer()

_MARKS = {"complete": "ok", "stale": "STALE", "incomplete": "INCOMPLETE", "running": "running", "missing": "-",
          "corrupt": "CORRUPT"}  # fmt: skip


# the stage flows in pipeline order; `reproduce` chains them all
STAGES = ("build", "acquire", "infer", "evaluate", "diagnose", "report")
# an Enum, not a Literal: Typer takes no list of Literal (`--stage` repeats)
Stage = enum.Enum("Stage", {name: name for name in STAGES}, type=str)  # type: ignore[misc]


def _import_flows() -> dict[str, Any]:
    """The stage flows and ``reproduce``, imported from the installed ``flows`` package; ``fail`` naming what to
    install when they (or what they import) cannot be found."""
    import importlib

    try:
        importlib.import_module("flows.reproduce")
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("flows", "tasks"):
            fail(
                "the Prefect flows (packages `flows` and `tasks`) are not installed: reinstall laionet, "
                "pip install '.[orchestration]' (or -e '.[dev]') from the repository"
            )
        fail(f"the Prefect flows need {exc.name!r}: install the orchestration extra (pip install '.[orchestration]')")
    # by name, not `from flows... import`: the library's type check stays out of the Prefect layer
    functions = {"infer": "infer_flow", "report": "report_flow"}  # flows/<stage>.py defines <stage> but for these
    return {
        stage: getattr(importlib.import_module(f"flows.{stage}"), functions.get(stage, stage))
        for stage in (*STAGES, "reproduce")
    }


def _find_stage(result: Any, stage: str) -> dict[str, Any] | None:
    """The first manifest of ``stage`` in a flow's (nested) result."""
    if isinstance(result, dict):
        if result.get("stage") == stage:
            return result
        for value in result.values():
            if (found := _find_stage(value, stage)) is not None:
                return found
    return None


def _echo_results(label: str, result: Any) -> None:
    """One line per stage manifest found in a flow's result (nested by flow and stage)."""
    if isinstance(result, dict) and {"stage", "rows_in", "rows_out"} <= set(result):
        dropped = ", ".join(f"{k}={v}" for k, v in (result.get("dropped") or {}).items() if v) or "none"
        typer.echo(f"  {label:<40} rows in={result['rows_in']} out={result['rows_out']} dropped: {dropped}")
    elif isinstance(result, dict):
        for key, value in result.items():
            _echo_results(f"{label}/{key}" if label else str(key), value)


@app.command()
def run(
    preset: Annotated[str, typer.Option(help="demo, laion400m, or a JSON/YAML preset file.")],
    run_dir: Annotated[str, typer.Option("--run-dir", help="Where every output goes (local path or fsspec URL).")],
    stage: Annotated[
        list[Stage] | None,
        typer.Option(
            help="Run only this stage's flow (repeatable; run in pipeline order). Default: the whole `reproduce` flow."
        ),
    ] = None,
    max_parts: Annotated[
        int | None, typer.Option(help="Only the first N corpus parts (the preset's max_parts; try one part first).")
    ] = None,
    image_limit: Annotated[int | None, typer.Option(help="Download only the first N selected samples.")] = None,
    rewrite_url: Annotated[
        list[str] | None,
        typer.Option(help="PREFIX=REPLACEMENT for the download's URLs (a local mirror); repeatable."),
    ] = None,
    serve: Annotated[
        bool,
        typer.Option(
            help="When the corpus is openclipart (the demo), serve its images over loopback HTTP for the download."
        ),
    ] = True,
) -> None:
    """Run the pipeline as Prefect flow runs: the `reproduce` flow (build → acquire → infer → evaluate → diagnose →
    report), or only the stages named with --stage. Tasks are cached across runs as in the flows: a second run with
    the same inputs, settings and code comes back Cached. Without PREFECT_API_URL Prefect starts an ephemeral local
    API; results and the cache live under PREFECT_HOME (default ~/.prefect). The flows are the installed `flows`
    package (the orchestration extra brings Prefect)."""
    from laionet.core.config import load_preset

    try:
        config = load_preset(preset, max_parts=max_parts)
    except ValueError as exc:
        fail(str(exc))
    rewrites: dict[str, str] = {}
    for item in rewrite_url or []:
        prefix, sep, replacement = item.partition("=")
        if not sep or not prefix:
            fail(f"--rewrite-url wants PREFIX=REPLACEMENT, got {item!r}")
        rewrites[prefix] = replacement
    named = {s.value for s in stage or []}
    chosen = [s for s in STAGES if s in named]
    if "diagnose" in chosen and config.diagnose is None:
        typer.echo(f"preset {config.name!r} has no diagnostics (diagnose: null): skipping the diagnose stage")
        chosen.remove("diagnose")
    apply_prefect_defaults()
    flows = _import_flows()

    with contextlib.ExitStack() as stack:
        if serve and config.corpus is None and (not stage or {"acquire", "diagnose"} & set(chosen)):
            from laionet.images.serve import ImageServer
            from laionet.text.openclipart import DEFAULT_BASE_URL, DEFAULT_ROOT

            if DEFAULT_BASE_URL not in rewrites:
                base = stack.enter_context(ImageServer(DEFAULT_ROOT))
                rewrites[DEFAULT_BASE_URL] = base
                typer.echo(f"serving {DEFAULT_ROOT} at {base} for the download")
        calls: list[tuple[str, Any, dict[str, Any]]]
        if not stage:
            arguments = {"preset": preset, "max_parts": max_parts, "image_limit": image_limit,
                         "rewrite_urls": rewrites or None}  # fmt: skip
            calls = [("reproduce", flows["reproduce"], arguments)]
        else:
            calls = [
                (name, flows[name], _stage_arguments(name, preset, config, image_limit, rewrites)) for name in chosen
            ]
        for name, flow, arguments in calls:
            typer.echo(f"[{name}] flow starting")
            state = flow(run_dir, **arguments, return_state=True)
            run_id = state.state_details.flow_run_id
            if not state.is_completed():
                try:
                    error = state.result(raise_on_failure=False)
                except Exception as exc:  # a crashed run may have no result to read
                    error = exc
                detail = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else state.message
                typer.echo(f"[{name}] flow run {run_id}: {state.name}")
                fail(f"the {name} flow failed: {detail}")
            typer.echo(f"[{name}] flow run {run_id}: {state.name}")
            try:  # the flows persist their results: a final state the API sent back (not this process's) still reads
                result = state.result()
            except Exception as exc:  # Prefect's MissingResult (by name: the library does not import Prefect)
                if type(exc).__name__ != "MissingResult":
                    raise
                typer.echo(f"[{name}] its result could not be read back ({exc}); `laionet status --run-dir {run_dir}`")
                continue
            _echo_results("", result)
            report = _find_stage(result, "report")
            if report and report.get("outputs"):
                typer.echo(f"report: {report['outputs'][0]}")


def _stage_arguments(
    name: str, preset: str, config: Any, image_limit: int | None, rewrites: dict[str, str]
) -> dict[str, Any]:
    """The keyword arguments of one stage flow, as ``reproduce`` passes them."""
    if name == "build":  # build takes the settings themselves (it is deployable without a preset)
        return {"classes": config.classes, "mode": config.mode, "corpus": config.corpus,
                "corpus_limit": config.corpus_limit, "encoder": config.encoder, "threshold": config.threshold,
                "top_k": config.top_k, "max_parts": config.max_parts}  # fmt: skip
    # the resolved preset (max_parts included), as reproduce passes it to its subflows
    if name == "acquire":
        return {"preset": config, "rewrite_urls": rewrites or None, "image_limit": image_limit}
    if name == "diagnose":  # its nearest-caption set and candidate band are downloaded too
        return {"preset": config, "rewrite_urls": rewrites or None}
    return {"preset": config}


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
