"""The ``laionet`` command line: one command per stage, each calling the same driver the Prefect tasks call.

Each module of this package defines its commands on its own ``typer.Typer()`` and imports only
``laionet.cli.common`` of the CLI; this module builds the root app from them, in pipeline order. Options are unpacked
into explicit keyword arguments: the library never sees a CLI type. Drivers are imported inside the commands, so
``laionet --help`` loads no model library.
"""

from __future__ import annotations

import typer

from laionet.cli import demo, diagnostics, evaluation, images, inference, report, selection, text

app = typer.Typer(
    help="LAIONet: recreate ImageNet from an image-text corpus by selecting on captions alone.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

for _group in (text, selection, images, inference, evaluation, diagnostics, report, demo):
    app.registered_commands.extend(_group.app.registered_commands)
    app.registered_groups.extend(_group.app.registered_groups)


def main() -> None:
    """Entry point of the ``laionet`` script and ``python -m laionet``."""
    app()


__all__ = ["app", "main"]
