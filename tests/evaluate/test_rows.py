"""A task's signal is read lazily from its table's row groups: the same values as reading the
whole table, and a frozen pass over it holds a bounded number of rows."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ecgssl.data.preprocess import preprocess
from ecgssl.data.table import read_manifest, read_table, row_groups
from ecgssl.evaluate.supervised import features_of
from ecgssl.evaluate.tasks import load_task
from ecgssl.models.encoders import ResNet1d

ROW_BYTES = 12 * 1000 * 4            # one 10 s, 100 Hz, 12-lead row as float32


@pytest.fixture(scope="module")
def small_groups(tables, tmp_path_factory):
    """The MIT-BIH table rewritten with 50-row row groups (many groups from a small table)."""
    out = tmp_path_factory.mktemp("small-groups") / "mitdb"
    shutil.copytree(tables["mitdb"], out)
    for shard in read_manifest(out)["shards"]:
        pq.write_table(pq.read_table(out / shard), out / shard, compression="lz4",
                       row_group_size=50, write_page_checksum=True)
    return out


def test_store_serves_the_tables_rows_preprocessed(tables):
    task = load_task("mitdb-aami", tables["mitdb"])
    whole = read_table(tables["mitdb"], dataset="mitdb")
    at = {e: i for i, e in enumerate(whole.column("ecg_id"))}
    rows = np.array([at[e] for e in task.ids])
    want = preprocess(whole.signal[rows], whole.lead_mask[rows], task.fs)
    np.testing.assert_array_equal(task.mask, whole.lead_mask[rows])
    x = task.x.with_transform(preprocess)
    assert x.shape == want.shape and len(x) == len(task.y)
    np.testing.assert_array_equal(x[:], want)                    # bit for bit, per row group
    perm = np.random.default_rng(0).permutation(len(x))[:300]
    np.testing.assert_array_equal(x[perm], want[perm])           # any order, any rows
    np.testing.assert_array_equal(x[5], want[5])
    test = task.part("test")
    np.testing.assert_array_equal(x.view(test)[10:20], want[test[10:20]])
    assert x.stats.groups_read == len(row_groups(tables["mitdb"]))   # all cached: read once


def test_feature_extraction_streams_with_bounded_rows(small_groups):
    cache_rows = 100
    task = load_task("mitdb-aami", small_groups, cache_bytes=cache_rows * ROW_BYTES)
    x = task.x = task.x.with_transform(preprocess)
    n_groups = len(x.groups)
    assert x.cache_rows == cache_rows and len(x) >= 8 * cache_rows and n_groups >= 16
    torch.manual_seed(0)
    models = [SimpleNamespace(encoder=ResNet1d(width=8)) for _ in range(2)]
    feats = features_of(models, task, batch=64)
    # in order: each row group decoded once for both models, never more than the bound held
    assert x.stats.groups_read == n_groups
    assert x.stats.rows_read == len(x)
    assert x.stats.rows_held_peak <= cache_rows
    # the same features as with every row in memory (the small-table case: one code path)
    everything = load_task("mitdb-aami", small_groups)
    everything.x = everything.x.with_transform(preprocess)
    ref = features_of(models, everything, batch=64)
    assert everything.x.stats.rows_held_peak == len(x)
    for a, b in zip(feats, ref):
        assert torch.equal(a, b)
    # a shuffled index array still reads each group at most once per call
    before = x.stats.groups_read
    x[np.random.default_rng(1).permutation(len(x))]
    assert x.stats.groups_read - before <= n_groups
