"""``laionet export hf``: a run's LAIONet as a folder that ``datasets.load_dataset`` and ``webdataset`` read as it is
(``laionet.export``).

The root app in ``laionet.cli`` registers this module's ``app``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from laionet.cli.common import fail

app = typer.Typer()
export_app = typer.Typer(help="Export a run's LAIONet for other tools.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("hf")
def export_hf_command(
    run_dir: Annotated[str, typer.Option("--run-dir", help="The run directory; its selection must be complete.")],
    out: Annotated[str, typer.Option(help="Output directory (written under a temporary name, then renamed).")],
    force: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False,
    shards: Annotated[bool, typer.Option(help="Include the downloaded WebDataset shards where the run has them.")] = (
        True
    ),
    rows_per_file: Annotated[int, typer.Option(help="Rows per parquet file.")] = 500_000,
) -> None:
    """A Hugging Face `datasets` folder: the LAIONet index (and its top-k and image-filtered variants, where present)
    as parquet configs, the image shards, and a dataset card (README.md) with features, class names, counts by class,
    the pipeline's settings and code version, the licence situation and the citation. Load it with
    `datasets.load_dataset(OUT)` or `webdataset.WebDataset(OUT/shards/...)`."""
    from laionet.export.data import ExportError
    from laionet.export.hf import export_hf

    try:
        manifest = export_hf(run_dir, out, force=force, shards=shards, rows_per_file=rows_per_file)
    except (ExportError, FileNotFoundError) as exc:
        fail(str(exc))
    configs = ", ".join(f"{name} ({n:,})" for name, n in manifest.extra["configs"].items())
    typer.echo(f"[{manifest.stage}] {out}: configs {configs}; {manifest.extra['classes']:,} classes; "
               f"{manifest.extra['shards']} shards ({manifest.wall_time_s:.1f} s)")  # fmt: skip
