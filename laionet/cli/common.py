"""Helpers shared by the command modules: one error line and exit code 2, the one-line manifest echo, the mode option.

Imports nothing of ``laionet.cli``, so every command module can import it without a circle.
"""

from __future__ import annotations

from typing import Any, Literal, NoReturn

import typer

from laionet.text.normalize import MODES

# options with a fixed set of values are typed with Literal: --help lists them, a typo fails in one line naming them
Precision = Literal["auto", "fp32", "fp16", "bf16"]


def mode(value: str) -> str:
    """Typer callback: the matching mode / lemma policy must be one of ``MODES``."""
    if value not in MODES:
        raise typer.BadParameter(f"expected one of {', '.join(MODES)}")
    return value


def fail(message: str) -> NoReturn:
    """Print ``error: <message>`` in red on stderr and exit with code 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def echo_manifest(manifest: Any) -> None:
    """One line: stage, rows in/out, non-zero drops by reason, wall time."""
    dropped = ", ".join(f"{k}={v}" for k, v in manifest.dropped.items() if v) or "none"
    typer.echo(
        f"[{manifest.stage}] rows in={manifest.rows_in} out={manifest.rows_out} dropped: {dropped} "
        f"({manifest.wall_time_s:.1f} s)"
    )
