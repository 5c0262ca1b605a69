"""The command line reads well: every bracketed syntax in an option's help is shown, choices are listed and a typo
names them in one line, commands are grouped in pipeline order, ``--version`` answers."""

from __future__ import annotations

import enum
import re
import types
from typing import Literal, Union, get_args, get_origin

import pytest
import typer
import typer.core
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


def _choices(param: typer.core.click.Parameter) -> tuple[str, ...]:
    """The fixed values of an option (a Literal or an Enum, also in a list or with None), else ()."""
    annotation = param.type_descriptor.annotation  # type: ignore[attr-defined]
    if get_origin(annotation) is list:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is Literal:
        return tuple(get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return tuple(str(m.value) for m in annotation)
    return ()


def _choice_options() -> list[tuple[list[str], str]]:
    """(command argv, option name or argument name) of every parameter with a fixed set of values."""
    return [(argv, _name(param)) for argv, command in _commands() for param in command.params if _choices(param)]


def _name(param: typer.core.click.Parameter) -> str:
    return param.opts[0] if isinstance(param, typer.core.TyperOption) else str(param.name)


@pytest.mark.parametrize(("argv", "option"), _choice_options(), ids=lambda x: " ".join(x) if isinstance(x, list) else x)
def test_every_choice_typo_is_one_line_naming_the_choices(argv: list[str], option: str) -> None:
    command = dict((tuple(a), c) for a, c in _commands())[tuple(argv)]
    param = next(p for p in command.params if _name(p) == option)
    given: list[str] = []
    for other in command.params:  # every other required parameter gets a value of its type (never used: the typo
        if other is not param and not other.required:  # fails before the command runs)
            continue
        annotation = other.type_descriptor.annotation  # type: ignore[attr-defined]
        value = "zzz-typo" if other is param else "1" if annotation in (int, float) else "x"
        given += [other.opts[0], value] if isinstance(other, typer.core.TyperOption) else [value]
    result = runner.invoke(app, [*argv, *given], env={"COLUMNS": "240"})
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if "zzz-typo" in line]
    assert len(lines) == 1, result.output
    assert all(f"'{choice}'" in lines[0] for choice in _choices(param)), lines[0]


def test_choice_options_are_found() -> None:
    found = {(" ".join(argv), option) for argv, option in _choice_options()}
    assert {("select", "--multi-label"), ("lemmas", "--mode"), ("match", "--mode"), ("infer", "--precision"),
            ("variants", "--rule"), ("recall-difference", "--method"), ("run", "--stage"),
            ("ingest", "kind")} <= found  # fmt: skip


def test_commands_are_grouped_in_pipeline_order_and_version_answers() -> None:
    output = runner.invoke(app, ["--help"], env={"COLUMNS": "240"}).output
    positions = [output.index(panel) for panel in PANELS.values()]
    assert positions == sorted(positions)
    rows = [output.index(f"│ {name} ") for name in ("catalog", "select", "infer", "accuracy", "text-alone", "report")]
    assert rows == sorted(rows)
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and re.match(r"laionet \d+\.\d+\.\d+ \(code ", version.output)
