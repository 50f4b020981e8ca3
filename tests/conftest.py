"""Shared fixtures: the bundled real sample and tables ingested from it once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ecgssl.config import IngestConfig
from ecgssl.data.ingest import ingest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
SOURCES = ("ptbxl", "mitdb", "cinc2017", "cinc2020")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="session")
def sample() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def tables(tmp_path_factory) -> dict[str, Path]:
    """Every sample source ingested at the default 100 Hz / 10 s with 2 workers."""
    out = tmp_path_factory.mktemp("tables")
    cfg = IngestConfig(workers=2)
    for s in SOURCES:
        ingest(s, SAMPLE / s, out / s, cfg, progress=False)
    return {s: out / s for s in SOURCES}


@pytest.fixture(scope="session")
def corpus(tables, tmp_path_factory) -> dict[str, Path]:
    """A pretraining corpus from the sample: generated reports of three tables, embedded."""
    from ecgssl.config import EmbedTextConfig, ReportsConfig
    from ecgssl.reports.stage import run_reports
    from ecgssl.text.stage import run_embed_text

    out = tmp_path_factory.mktemp("corpus")
    run_reports([tables["ptbxl"], tables["cinc2020"], tables["cinc2017"]], out / "reports",
                ReportsConfig(mode="both", workers=2), progress=False)
    run_embed_text(out / "reports", out / "text_emb.parquet",
                   EmbedTextConfig(cache=str(out / "cache.parquet")), progress=False)
    return {"table": out / "reports", "text_emb": out / "text_emb.parquet"}


@pytest.fixture
def table_copy(tmp_path):
    """copy(table, column, fn): a copy of a table with one column replaced by fn(arrow_table),
    for tests that need a subtly different table (relabelled, corrupted)."""
    import shutil

    import pyarrow.parquet as pq

    from ecgssl.data.table import read_manifest

    def copy(table: Path, column: str, fn) -> Path:
        out = tmp_path / f"{Path(table).name}-{column}"
        shutil.copytree(table, out)
        for shard in read_manifest(out)["shards"]:
            t = pq.read_table(out / shard)
            i = t.schema.get_field_index(column)
            pq.write_table(t.set_column(i, column, fn(t)), out / shard)
        return out
    return copy
