"""Smoke tests of the real `ecgssl` entry point on the bundled sample."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

ECGSSL = shutil.which("ecgssl") or f"{sys.executable} -m ecgssl.cli"


def cli(*args, check=True):
    cmd = ECGSSL.split() + [str(a) for a in args]
    env = {**os.environ, "COLUMNS": "200"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if check and p.returncode != 0:
        pytest.fail(f"{cmd} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def test_ingest_smoke(tmp_path, sample):
    out = tmp_path / "mitdb"
    p = cli("ingest", "mitdb", "--input", sample / "mitdb", "--output", out, "--workers", "2",
            "--no-progress")
    assert "rows (windows)" in p.stderr and "900" in p.stderr
    m = json.loads((out / "_manifest.json").read_text())
    assert m["rows"] == 900 and m["source"] == "mitdb"
    again = cli("ingest", "mitdb", "--input", sample / "mitdb", "--output", out, "--no-progress")
    assert "up to date" in again.stderr


def test_help_explains_the_stage():
    p = cli("ingest", "--help")
    for word in ("ptbxl", "mitdb", "cinc2017", "cinc2020", "--fs", "--window-s", "--workers",
                 "quarantined"):
        assert word in p.stdout


def test_user_errors_are_one_clear_line(tmp_path):
    p = cli("ingest", "mitdb", "--input", tmp_path / "missing", "--output", tmp_path / "o",
            check=False)
    assert p.returncode == 2
    assert "input path does not exist" in p.stderr and "Traceback" not in p.stderr
    p = cli("ingest", "nosuch", "--input", tmp_path, "--output", tmp_path / "o", check=False)
    assert p.returncode == 2 and "nosuch" in p.stderr


def test_params_file_errors_name_the_key(tmp_path, sample):
    bad = tmp_path / "params.yaml"
    bad.write_text("ingest:\n  fss: 100\n")
    p = cli("ingest", "mitdb", "--input", sample / "mitdb", "--output", tmp_path / "o",
            "--params", bad, check=False)
    assert p.returncode == 2 and "unknown key 'ingest.fss'" in p.stderr
