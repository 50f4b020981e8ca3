"""Text-embedding speed on the bundled sample: cold (model runs) vs a full cache hit.

    python bench/text.py                       # reports of the sample tables (built in a temp dir)

Prints reports/s for embedding every distinct report with an empty cache, and for the same
reports again from the cache (no model load, no forward pass), with the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ecgssl.config import EmbedTextConfig, IngestConfig, ReportsConfig
from ecgssl.data.ingest import ingest
from ecgssl.reports.stage import run_reports
from ecgssl.text.stage import run_embed_text


def main() -> None:
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tables = []
        for s in ("ptbxl", "cinc2020", "cinc2017"):
            ingest(s, Path("data/sample") / s, tmp / s, IngestConfig(), progress=False)
            tables.append(tmp / s)
        t0 = time.perf_counter()
        m = run_reports(tables, tmp / "reports", ReportsConfig(mode="both"), progress=False)
        t_reports = time.perf_counter() - t0
        cfg = EmbedTextConfig(cache=str(tmp / "cache.parquet"))
        cold = run_embed_text(tmp / "reports", tmp / "emb.parquet", cfg, progress=False)
        t0 = time.perf_counter()
        hot = run_embed_text(tmp / "reports", tmp / "emb2.parquet", cfg, progress=False)
        t_hot = time.perf_counter() - t0
    n = cold.texts
    print(f"reports (both): {m.rows} rows in {t_reports:.1f} s "
          f"({m.rows / t_reports:.0f} rows/s)")
    print(f"embed-text cold:      {n} distinct reports, {n / cold.elapsed_s:8.1f} reports/s "
          f"(model {cold.model})")
    print(f"embed-text cache hit: {hot.computed} computed, {n / t_hot:8.1f} reports/s   "
          f"{cold.elapsed_s / t_hot:.1f}x cold")


if __name__ == "__main__":
    main()
