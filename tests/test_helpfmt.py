"""Every `ecgssl ... --help` reads well in an 80-column terminal."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys

import click
import pytest
import typer
from typer.testing import CliRunner

from ecgssl.cli import app

TYPER_METAVARS = ("<bool>", "<str>", "<int>", "<float>", "<path>", "list[", "<text>")


def commands(group: click.Command, path=()):
    """(argv path, click command) of every command and group under the app."""
    yield path, group
    for name, sub in getattr(group, "commands", {}).items():
        yield from commands(sub, (*path, name))


ALL = list(commands(typer.main.get_command(app)))


def help_text(path, columns: int) -> str:
    r = CliRunner(env={"COLUMNS": str(columns)}).invoke(app, [*path, "--help"])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.parametrize("path,cmd", ALL, ids=[" ".join(p) or "ecgssl" for p, _ in ALL])
def test_help_at_80_columns(path, cmd):
    text = help_text(path, 80)
    for line in text.splitlines():
        assert len(line) <= 80, f"{line!r} is {len(line)} columns"
    for bad in TYPER_METAVARS:
        assert bad not in text, f"{bad} in:\n{text}"
    for p in cmd.params:
        if p.param_type_name == "option" and p.name != "help":
            assert (p.help or "").strip(), f"{' '.join(path)} {p.opts[0]} has no help"
    if getattr(cmd, "commands", None):
        return           # a group lists its commands' one-line summaries, shortened to fit
    # No word is split across lines (at 80 columns the same words as with room to spare),
    # and no text is eaten: every word of the command's docstring is printed.
    wide = help_text(path, 250)
    assert sorted(text.split()) == sorted(wide.split()), text
    doc = inspect.getdoc(cmd.callback) or ""
    missing = [w for w in doc.split() if w not in text.split()]
    assert not missing, f"{missing} of the docstring are not in:\n{text}"


def test_the_installed_command_prints_plain_help():
    exe = shutil.which("ecgssl") or f"{sys.executable} -m ecgssl.cli"
    p = subprocess.run([*exe.split(), "evaluate", "--help"], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "80"}, timeout=120, check=True)
    assert "--task TASK" in p.stdout and "ptbxl-rhythm" in p.stdout
    assert "<mode>/<task>/..." in p.stdout           # not eaten as markup
    assert "╭" not in p.stdout and max(map(len, p.stdout.splitlines())) <= 80


def test_a_group_with_its_own_options_shows_its_docstring():
    """`ecgssl reports` is a command (with --input/--output) and a group (translate): its help
    said only "see `ecgssl reports --help`", from inside that very help, and left out what the
    stage does."""
    cmd = typer.main.get_command(app).commands["reports"]
    text = help_text(["reports"], 250)
    doc = inspect.getdoc(cmd.callback) or ""
    assert doc and not [w for w in doc.split() if w not in text.split()], text
    assert "see `ecgssl reports --help`" not in text
