"""The ``laionet`` command line: one command per stage, each calling the same driver the Prefect tasks call.

Each module of this package defines its commands on its own ``typer.Typer()`` and imports only
``laionet.cli.common`` of the CLI; this module builds the root app from them, in pipeline order. Options are unpacked
into explicit keyword arguments: the library never sees a CLI type. Drivers are imported inside the commands, so
``laionet --help`` loads no model library.
"""

from __future__ import annotations

from typing import Annotated

import typer

from laionet.cli import (
    demo,
    diagnostics,
    evaluation,
    export,
    images,
    inference,
    report,
    retrieval,
    run,
    selection,
    text,
)

app = typer.Typer(
    help="LAIONet: recreate ImageNet from an image-text corpus by selecting on captions alone.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# the command groups in pipeline order, each under its own heading of `laionet --help`
PANELS = {
    text: "1 · Text: WordNet catalog, lemma maps, matching",
    selection: "2 · Selection: text-to-synset similarity, the LAIONet index",
    images: "3 · Images: download, ingest, verify, OCR",
    inference: "4 · Inference",
    evaluation: "5 · Evaluation: label sets, accuracy, intra-class similarity, appendix analyses",
    diagnostics: "6 · Diagnostics (paper Section 4)",
    retrieval: "6 · Diagnostics: nearest captions (Section 4.3)",
    report: "7 · Report",
    demo: "Demo",
    run: "Runs: the pipeline as Prefect flow runs, status of a run directory, checks of this machine",
    export: "Export: a Hugging Face datasets folder with a dataset card",  # a command group: listed after commands
}
for _group, _panel in PANELS.items():
    for _command in _group.app.registered_commands:
        _command.rich_help_panel = _panel
    for _sub in _group.app.registered_groups:
        _sub.rich_help_panel = _panel
    app.registered_commands.extend(_group.app.registered_commands)
    app.registered_groups.extend(_group.app.registered_groups)


def _version(value: bool) -> None:
    if value:
        from laionet import __version__
        from laionet.core.manifest import code_version

        typer.echo(f"laionet {__version__} (code {code_version()})")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """LAIONet: recreate ImageNet from an image-text corpus by selecting on captions alone."""


def main() -> None:
    """Entry point of the ``laionet`` script and ``python -m laionet``."""
    app()


__all__ = ["app", "main"]
