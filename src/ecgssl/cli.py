"""The `ecgssl` command line: one subcommand per pipeline stage, nothing else.

    ecgssl --help
    ecgssl ingest cinc2017 --input data/sample/cinc2017 --output outputs/tables/cinc2017
"""

from __future__ import annotations

import enum
import functools
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ecgssl import __version__
from ecgssl.errors import EcgsslError

app = typer.Typer(help="Self-supervised ECG foundation models: from WFDB records to a model "
                  "registry. Each subcommand is one pipeline stage; defaults come from the "
                  "stage's section of params.yaml.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode="markdown")
console = Console(stderr=True)

ParamsOpt = Annotated[Optional[Path], typer.Option(
    "--params", help="params.yaml to read defaults from [default: $ECGSSL_PARAMS or "
    "./params.yaml]")]


def user_errors(fn):
    """Print our own errors as one clear message and exit 2, instead of a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EcgsslError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None
    return wrapper


class SourceName(enum.StrEnum):
    ptbxl = "ptbxl"
    mitdb = "mitdb"
    cinc2017 = "cinc2017"
    cinc2020 = "cinc2020"


@app.callback(invoke_without_command=True)
def main(version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False):
    if version:
        print(__version__)
        raise typer.Exit()


@app.command()
@user_errors
def ingest(
    source: Annotated[SourceName, typer.Argument(help="Which dataset layout the input has.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="Root folder of the source "
                                        "(as downloaded from PhysioNet).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the ECG table "
                                         "(Parquet shards + _manifest.json).")],
    fs: Annotated[Optional[int], typer.Option(help="Target sampling rate in Hz "
                                              "[default: ingest.fs]")] = None,
    window_s: Annotated[Optional[float], typer.Option(help="Window length in seconds "
                                                      "[default: ingest.window_s]")] = None,
    workers: Annotated[Optional[int], typer.Option(
        help="Worker processes [default: ingest.workers or CPU count]")] = None,
    params: ParamsOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
):
    """Convert WFDB records into the ECG table: fixed windows, 12 canonical leads, mV.

    Unusable records are quarantined with a reason in _manifest.json; the exit status is
    non-zero only when the input is missing or nothing could be read. Rerunning with the same
    input and options does nothing; rerunning after a crash finishes the job.
    """
    from ecgssl.config import section
    from ecgssl.data.ingest import ingest as run_ingest

    cfg = section("ingest", {"fs": fs, "window_s": window_s, "workers": workers}, params)
    manifest = run_ingest(source.value, input, output, cfg, progress=progress)
    print_ingest_summary(manifest, output)


def print_ingest_summary(m: dict, output: Path) -> None:
    if m.get("up_to_date"):
        console.print(f"[green]up to date:[/] {output} ({m['rows']} rows from "
                      f"{m['records_ok']} records; same input and options)")
        return
    t = Table(title=f"ingest {m['source']} -> {output}", show_header=False)
    t.add_row("rows (windows)", str(m["rows"]))
    t.add_row("records ok", f"{m['records_ok']} / {m['records_total']}")
    kinds = ", ".join(f"{k} {v}" for k, v in m["quarantined_by_kind"].items())
    t.add_row("quarantined", f"{len(m['records_quarantined'])}" + (f" ({kinds})" if kinds else ""))
    t.add_row("excluded by rule", str(len(m["records_excluded"])))
    t.add_row("rows per split", ", ".join(f"{k} {v}" for k, v in m["rows_per_split"].items()))
    t.add_row("fs / window", f"{m['fs']} Hz / {m['window_s']:g} s")
    rate = m["records_total"] / m["elapsed_s"] if m["elapsed_s"] else float("nan")
    t.add_row("time", f"{m['elapsed_s']:.1f} s ({rate:.0f} records/s)")
    console.print(t)
    for q in m["records_quarantined"][:3]:
        console.print(f"  [yellow]quarantined[/] {q['reason']}", highlight=False, soft_wrap=True)
    if len(m["records_quarantined"]) > 3:
        console.print(f"  ... all {len(m['records_quarantined'])} reasons are in "
                      f"{output / '_manifest.json'}", soft_wrap=True)


if __name__ == "__main__":
    app()
