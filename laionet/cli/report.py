"""``laionet report``: render a run directory's report (``<run>/report/index.html`` + PNG figures).

The root app in ``laionet.cli`` registers this module's ``app``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from laionet.cli.common import echo_manifest, fail

app = typer.Typer()


@app.command()
def report(
    run_dir: Annotated[
        str | None,
        typer.Option("--run-dir", help="Run directory (local path or fsspec URL) whose tables are reported."),
    ] = None,
    out: Annotated[str | None, typer.Option(help="Output directory (default: <run-dir>/report).")] = None,
    title: Annotated[str, typer.Option(help="Page title.")] = "LAIONet report",
    disclaimer: Annotated[
        str | None, typer.Option(help="A plain statement shown under the title (default: the preset's, if any).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Take the disclaimer from this preset (e.g. demo) unless --disclaimer is given.")
    ] = None,
    grid_classes: Annotated[int, typer.Option(help="Classes shown with sample images (most frequent first).")] = 12,
    grid_per_class: Annotated[int, typer.Option(help="Thumbnails per class and variant.")] = 8,
    run_dir_arg: Annotated[str | None, typer.Argument(hidden=True, metavar="RUN_DIR")] = None,
) -> None:
    """One self-contained HTML page with PNG figures, every number read from the run's stage tables; sections whose
    tables are missing are listed as not computed."""
    from laionet.report.html import run_report

    run_dir = run_dir or run_dir_arg  # the run directory as a positional argument: the old spelling, still accepted
    if run_dir is None:
        fail("missing option --run-dir (the run directory to report)")
    if disclaimer is None and preset is not None:
        from laionet.core.config import load_preset

        try:
            disclaimer = load_preset(preset).disclaimer
        except ValueError as exc:
            fail(str(exc))
    try:
        manifest = run_report(run_dir, out, title=title, disclaimer=disclaimer, grid_classes=grid_classes,
                              grid_per_class=grid_per_class)  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
        return
    echo_manifest(manifest)
    extra = manifest.extra
    typer.echo(f"  {manifest.outputs[0]}")
    typer.echo(f"  sections: {', '.join(extra['sections']) or 'none'}; figures: {extra['figures']}")
    if extra["not_computed"]:
        typer.echo(f"  not computed: {', '.join(extra['not_computed'])}")
    for section, error in extra["failed"].items():
        typer.echo(f"  failed: {section}: {error}")
