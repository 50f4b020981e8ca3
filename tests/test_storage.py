"""Local writes of ecgssl.storage: one writer per output folder."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ecgssl.errors import EcgsslError
from ecgssl.storage import staged_folder

OWNED, LAST = ("metrics-*.json", "classifier-*"), ("metrics-zeroshot.json",)


def test_a_second_evaluate_into_the_same_folder_refuses_instead_of_dropping_results(tmp_path):
    """Two evaluate runs of one encoder into one folder (say `--mode zeroshot` and `--mode
    probe`, started side by side): each carries the old results over into its staging folder
    and swaps it in at the end, so the later swap silently drops the earlier run's results.
    A second writer must refuse at once, as a second `ingest` into one table does."""
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics-old.json").write_text("{}")
    first = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from ecgssl.storage import staged_folder
        with staged_folder({str(out)!r}, {OWNED!r}, {LAST!r}, keep=lambda old: True) as s:
            (Path(s) / "metrics-zeroshot.json").write_text("{{}}")
            print("ready", flush=True)
            sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "ready\n"
        with pytest.raises(EcgsslError, match="another `ecgssl evaluate` is writing to"):
            with staged_folder(out, OWNED, LAST, keep=lambda old: True) as s:
                (Path(s) / "metrics-probe.json").write_text("{}")
    finally:
        first.communicate("\n", timeout=60)
    assert first.returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics-old.json", "metrics-zeroshot.json"]
    # once the first is done, the next run goes ahead and keeps what the first wrote
    with staged_folder(out, OWNED, LAST, keep=lambda old: True) as s:
        (Path(s) / "metrics-probe.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics-old.json", "metrics-probe.json", "metrics-zeroshot.json"]
