"""How `ecgssl ... --help` names option values: plain metavars that read well at 80 columns.

Typer's own (`<str>`, `<list[float]>`, `<ptbxl|mitdb|...>` run together) are replaced by
PATH, TEXT, N, NUM or the choices in brackets; a menu too long for the option column is named
by the option (TASK) and its choices are listed at the end of the option's help instead. The
help itself is click's plain formatter (no rich panels, no markup that could eat `<mode>` or
`*.png`), which wraps at word boundaries. `install()` is called once by the CLI module.
"""

from __future__ import annotations

import re

PATHISH = {"input", "output", "data", "encoder", "classifier", "params", "record", "metrics",
           "text_emb", "cache", "package", "pipeline_root", "write", "outputs", "data_root",
           "test_data", "model", "metadata"}
MAX_CHOICES = 32     # longer menus go into the help text


def _choices(param) -> list[str] | None:
    desc = getattr(param, "type_descriptor", None)
    choices = desc.choices if desc is not None and desc.is_choice else None
    return [str(getattr(c, "value", c)) for c in choices] if choices else None


def _base(annotation):
    """The element type of `list[X]`, and X of `X | None`."""
    from typing import get_args, get_origin
    while get_origin(annotation) is not None and get_args(annotation):
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0]
    return annotation


def metavar(param) -> str:
    """The plain metavar of a typer parameter."""
    from pathlib import Path
    choices = _choices(param)
    name = (param.name or "value").rstrip("_")
    if choices:
        label = "|".join(choices)
        return f"[{label}]" if len(label) <= MAX_CHOICES else name.upper().replace("_", "-")
    base = _base(param.type_descriptor.annotation)
    if base is int:
        return "N"
    if base is float:
        return "NUM"
    if base is Path or name in PATHISH:
        return "PATH"
    return "TEXT"


def install() -> None:
    from typer import core

    def display_type(self, ctx) -> str:
        return self.metavar or metavar(self)

    def with_choices(original):
        def get_help_record(self, ctx):
            rv = original(self, ctx)
            choices = _choices(self)
            if rv is None or not choices or len("|".join(choices)) <= MAX_CHOICES:
                return rv
            names, text = rv
            listed = f"One of: {', '.join(choices)}."
            # before click's bracketed extras ([default: ...], [required]), which stay last
            m = re.search(r"\s+(\[[^\]]*\]\s*)+$", text)
            text = (text[:m.start()] + " " + listed + m.group(0)) if m else \
                f"{text} {listed}".strip()
            return names, text
        return get_help_record

    core._TyperParameter.display_type = display_type
    # Wrap at spaces only: "ptbxl-form" or "evaluate.label_fractions" never split mid-word.
    from typer._click import _textwrap
    if not getattr(_textwrap.TextWrapper, "_ecgssl", False):
        class WordWrapper(_textwrap.TextWrapper):
            _ecgssl = True

            def __init__(self, *args, **kwargs):
                kwargs.update(break_on_hyphens=False, break_long_words=False)
                super().__init__(*args, **kwargs)
        _textwrap.TextWrapper = WordWrapper
    for cls in (core.TyperOption, core.TyperArgument):
        if not getattr(cls.get_help_record, "_ecgssl", False):
            cls.get_help_record = with_choices(cls.get_help_record)
            cls.get_help_record._ecgssl = True
