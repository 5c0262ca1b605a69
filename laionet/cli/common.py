"""Helpers shared by the command modules: one error line and exit code 2, the one-line manifest echo, the option
types and help texts every command spells the same way (one name per concept: ``--mode``, ``--out``, ``--workers``).

Imports nothing of ``laionet.cli``, so every command module can import it without a circle.
"""

from __future__ import annotations

from typing import Any, Literal, NoReturn

import typer

# options with a fixed set of values are typed with Literal: --help lists them, a typo fails in one line naming them
Precision = Literal["auto", "fp32", "fp16", "bf16"]
# the matching mode, which is also the lemma map's policy: one setting, one name (`--mode`) in every command
Mode = Literal["paper", "default"]
MODE_HELP = "paper (the reference's rule: case-sensitive, nested lemmas all match) or default (normalised)."
# `--workers` means the same in every command: how many worker processes do the command's parallel part beside this
# one; 0 runs everything in this process
WORKERS_HELP = "Worker processes beside this one (0: everything in this process)"


def deprecated(old: str, new: str) -> None:
    """Warn on stderr that option ``old`` is a deprecated alias of ``new``."""
    typer.secho(f"warning: {old} is deprecated; use {new}", fg=typer.colors.YELLOW, err=True)


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
