"""Fanned-out ingestion through kfp.local: the pipeline's own fan-out block (ParallelFor over
`ingest --part K/N` slices, then the merge) gives the table a single ingest gives."""

import numpy as np
import pytest
from kfp import dsl, local

from ecgssl.data.table import read_manifest, read_table
from ecgssl.pipeline.build import PIPELINE_FILE, _load, components, pipeline_params, repo_root
from ecgssl.pipeline.build import settings as kfp_settings

pytestmark = pytest.mark.integration


def test_parallel_for_over_slices_then_merge_equals_one_ingest(tmp_path, tables, sample,
                                                              monkeypatch):
    monkeypatch.chdir(repo_root())
    pipe = _load(repo_root() / PIPELINE_FILE, "ecgssl_pipelines.ecgssl_pipeline")
    c = components(kfp_settings())
    # small shards, so that each of the 3 slices gets several parts; no MLflow
    params = pipeline_params(["ingest.shard_records=32", "ingest.workers=1",
                              "tracking.enabled=false"])

    @dsl.pipeline(name="ingest-fanout")
    def fanout(data_root: str, params: str):
        with dsl.ParallelFor(["cinc2017"]) as source:
            pipe.ingest_source(c, lambda t, **_: t.set_caching_options(False), 3, None,
                               source=source, data_root=data_root, params=params,
                               tracking_uri="")

    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    fanout(data_root=str(sample), params=params)

    merged = next((tmp_path / "root").rglob("ingest-merge/table/_manifest.json")).parent
    slices = [p for p in (tmp_path / "root").rglob("table") if p.parent.name.startswith(
        "ingest-part")]
    assert len(slices) == 3 and not any((s / "_manifest.json").exists() for s in slices)
    m, one = read_manifest(merged), read_manifest(tables["cinc2017"])
    assert m["rows"] == one["rows"] == 664 and m["records_ok"] == 210
    assert m["records_total"] == one["records_total"] and m["parts"] == [3]
    assert len(m["shards"]) == 7                    # ceil(210 / 32) parts, from 3 slices
    a, b = read_table(merged), read_table(tables["cinc2017"])
    assert a.meta.equals(b.meta)
    np.testing.assert_array_equal(a.signal, b.signal)
    np.testing.assert_array_equal(a.lead_mask, b.lead_mask)
