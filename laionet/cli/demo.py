"""``laionet demo``: the demo's data stages without Prefect (``laionet.demo``).

The root app in ``laionet.cli`` registers this module's ``app``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from laionet.cli.common import MODE_HELP, Mode

app = typer.Typer()


@app.command()
def demo(
    run_dir: Annotated[str, typer.Option(help="Where the demo run writes everything.")] = "runs/demo",
    mode: Annotated[Mode, typer.Option(help=MODE_HELP)] = "default",
    images: Annotated[bool, typer.Option(help="Also download, verify and OCR the selected images.")] = True,
    image_limit: Annotated[int | None, typer.Option(help="Download only the first N selected samples.")] = None,
) -> None:
    """The demo's data stages without Prefect, on real offline data: catalog, lemma maps, openclipart corpus,
    matching, MiniLM text-to-synset similarity, selection (threshold sweep, calibrated threshold), and the selected
    images downloaded over a loopback HTTP server into verified shards with the OCR filter. The whole pipeline
    (inference, metrics, report) runs as the Prefect demo flow: `make demo` / `python -m flows demo`."""
    from laionet.demo import run_demo

    run_demo(run_dir, mode=mode, echo=typer.echo, images=images, image_limit=image_limit)
