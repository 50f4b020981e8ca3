"""bench/measure.py on the bundled sample: the validation table, each MIT-BIH record's QRS,
and the review plot of the median beats with their QRS bounds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_measure_bench_prints_qrs_by_record_and_plots_the_bounds(tmp_path, sample):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run([sys.executable, "bench/measure.py", "--data", str(sample), "--no-text",
                        "--plots", str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert re.search(r"mitdb normal conduction: QRS 60-110 ms +0\.9\d\d +>= 0\.90 +PASS", p.stdout)
    rows = dict(re.findall(r"^(1\d\d) +normal +180 +\d+ +(\d+) ", p.stdout, re.M))
    assert set(rows) == {"100", "101", "105", "106", "119"}, p.stdout
    assert all(60 <= int(v) <= 110 for v in rows.values()), rows
    png = tmp_path / "qrs_bounds_mitdb.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_window_conduction_reads_each_window_from_its_own_beats(tmp_path):
    """A record switching conduction (as 212 does): each 10 s window is placed by its own
    .atr beats; mixed, paced and near-empty windows are in neither QRS row."""
    import importlib.util

    import numpy as np
    import wfdb
    spec = importlib.util.spec_from_file_location("bench_measure", ROOT / "bench/measure.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    windows = [list("NNNNNNNNVN"), list("RRRRRRRRRN"), list("NNNNNRRRRR"), list("////f/NN//"),
               list("NN"), list("LLLLLLLLLL")]
    sample, symbol = [], []
    for w, beats in enumerate(windows):
        sample += [w * 3600 + 300 * (k + 1) for k in range(len(beats))]
        symbol += beats
    wfdb.wrann("rec", "atr", np.array(sample), symbol=symbol, fs=360, write_dir=str(tmp_path))
    got = bench._window_conduction(tmp_path / "rec", np.arange(len(windows) + 1))
    assert got.tolist() == ["normal", "bbb", "", "", "", "bbb", ""]
