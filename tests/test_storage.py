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


@pytest.mark.parametrize("text", ["", '{"rows": 12, "shar', "\xff\xfe garbage"])
def test_a_corrupt_json_file_is_a_one_line_error_naming_it(tmp_path, text):
    """A run record, manifest or metrics.json cut short (a full disk, a killed copy) was a
    bare JSONDecodeError traceback; it must be an EcgsslError that names the file and says
    what to do. It stays a ValueError too, for readers that treat a bad record as absent."""
    from ecgssl.storage import read_json
    f = tmp_path / "metrics.json"
    f.write_bytes(text.encode("latin-1"))
    with pytest.raises(EcgsslError, match=r"metrics\.json: not valid JSON \(truncated\?\)"
                                          r".*rerun the stage that wrote it") as err:
        read_json(f)
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)


def test_an_atomic_write_is_on_disk_before_the_rename(tmp_path, monkeypatch):
    """After a power loss, a file renamed into place before its data reached the disk can
    come back empty: the temp file must be fsynced before `os.replace` (and the folder after,
    so that the rename itself survives)."""
    import os

    from ecgssl.storage import write_json
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src)))
        return real_replace(src, dst)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_json(tmp_path / "_manifest.json", {"rows": 1})
    kinds = [e[0] for e in events]
    assert "replace" in kinds, events
    tmp = events[kinds.index("replace")][1]
    assert ("fsync", tmp) in events[:kinds.index("replace")], events
    assert ("fsync", str(tmp_path)) in events[kinds.index("replace"):], events
