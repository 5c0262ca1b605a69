"""The command line reads well: every bracketed syntax in an option's help is shown, choices are listed and a typo
names them in one line, commands are grouped in pipeline order, ``--version`` answers."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from laionet.cli import PANELS, app

runner = CliRunner()


def _commands() -> list[tuple[list[str], typer.main.click.Command]]:
    group = typer.main.get_command(app)
    found = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        subs = getattr(command, "commands", None)
        if subs:
            found += [([name, sub], cmd) for sub, cmd in subs.items()]
        else:
            found.append(([name], command))
    return found


@pytest.mark.parametrize("argv", [argv for argv, _ in _commands()], ids=lambda a: " ".join(a))
def test_help_shows_every_bracketed_syntax(argv: list[str]) -> None:
    command = dict((tuple(a), c) for a, c in _commands())[tuple(argv)]
    result = runner.invoke(app, [*argv, "--help"], env={"COLUMNS": "240"})  # wide: Rich elides long words
    assert result.exit_code == 0, result.output
    shown = re.sub(r"[\s│╭╮╰╯─]+", "", result.output)
    for param in command.params:
        for segment in re.findall(r"\[[^\]]*\]", (getattr(param, "help", None) or "").replace("\\[", "[")):
            assert re.sub(r"\s+", "", segment) in shown, f"{' '.join(argv)} --help lost {segment!r}"


def test_a_typo_in_a_choice_names_the_choices_in_one_line() -> None:
    result = runner.invoke(app, ["select", "--matches", "m", "--similarity", "s", "--catalog", "c", "--out", "o",
                                 "--multi-label", "bets"], env={"COLUMNS": "240"})  # fmt: skip
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if "bets" in line]
    assert len(lines) == 1 and "'drop', 'best'" in lines[0]
    help_text = runner.invoke(app, ["infer", "--help"], env={"COLUMNS": "240"}).output
    assert "auto|fp32|fp16|bf16" in help_text


def test_commands_are_grouped_in_pipeline_order_and_version_answers() -> None:
    output = runner.invoke(app, ["--help"], env={"COLUMNS": "240"}).output
    positions = [output.index(panel) for panel in PANELS.values()]
    assert positions == sorted(positions)
    rows = [output.index(f"│ {name} ") for name in ("catalog", "select", "infer", "accuracy", "text-alone", "report")]
    assert rows == sorted(rows)
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and re.match(r"laionet \d+\.\d+\.\d+ \(code ", version.output)
