"""Streaming pretraining data: row groups are read lazily (a DDP rank reads its share, a reader
holds at most its part of a shuffle window, whatever the table's size), and the batches of a
step are a function of (seed, step, table) only: resuming mid-run, changing the number of
loader workers or ranks, or reading the table into memory gives the same batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ecgssl.config import PretrainConfig
from ecgssl.data.table import read_manifest
from ecgssl.errors import EcgsslError
from ecgssl.train.data import Plan, PretrainData, RowReader, loader
from ecgssl.train.loop import pretrain


def regrouped(table: Path, out: Path, rows_per_group: int, copies: int = 1) -> Path:
    """A copy of `table` with small row groups, its shards repeated `copies` times."""
    out.mkdir(parents=True)
    m = read_manifest(table)
    shards = []
    for k in range(copies):
        for s in m["shards"]:
            name = f"{Path(s).stem}-{k}.parquet"
            pq.write_table(pq.read_table(table / s), out / name, row_group_size=rows_per_group)
            shards.append(name)
    (out / "_manifest.json").write_text(json.dumps({**m, "shards": shards,
                                                    "rows": m["rows"] * copies}))
    return out


@pytest.fixture(scope="module")
def small_groups(corpus, tmp_path_factory) -> dict[int, PretrainData]:
    """The corpus with 8-row groups, as is and replicated 4x."""
    root = tmp_path_factory.mktemp("regrouped")
    return {c: PretrainData.load(regrouped(corpus["table"], root / f"x{c}", 8, c),
                                 corpus["text_emb"], need_text=True) for c in (1, 4)}


def read_one_epoch(data: PretrainData, plan: Plan) -> RowReader:
    steps = range(data.steps_per_epoch(plan.batch_size))
    reader = RowReader(data)
    reader.plan(np.concatenate([data.local_rows(s, plan) for s in steps]))
    for s in steps:
        reader.fetch(data.local_rows(s, plan))
    return reader


def test_a_rank_reads_its_share_of_row_groups_and_holds_a_window_at_most(small_groups):
    window = 256
    for copies, data in small_groups.items():
        epoch = np.concatenate([data.global_rows(s, Plan(16, 0, window))
                                for s in range(data.steps_per_epoch(16))])
        used = len(np.unique(data.group[epoch]))   # (the epoch's tail rows wait for the next)
        alone = read_one_epoch(data, Plan(16, 0, window))
        assert alone.groups_read == used          # each row group read once per epoch
        for rank in (0, 1):
            r = read_one_epoch(data, Plan(16, 0, window, rank, 2))
            # its half of every window, plus the groups on window and rank boundaries
            assert r.groups_read < 0.6 * used, (copies, r.groups_read, used)
            assert r.rows_held_peak <= window // 2 + 16, r.rows_held_peak
            assert not r.cache                    # everything read was served and dropped
        assert alone.rows_held_peak <= window + 2 * 8 * 2, alone.rows_held_peak
    # memory does not grow with the table: the 4x table holds a window at most, as the 1x
    # table does (whose windows are smaller: an epoch is cut into windows of equal size)
    peaks = [read_one_epoch(d, Plan(16, 0, window)).rows_held_peak
             for d in small_groups.values()]
    assert peaks[0] <= peaks[1] <= window + 2 * 8 * 2, peaks


def test_no_batch_of_an_epoch_is_a_run_of_consecutive_rows(small_groups):
    """An epoch is cut into shuffle windows of equal size: with full windows and a remainder,
    a remainder of one step made its batch 16 consecutive rows of the read order."""
    data = small_groups[4]
    steps = data.steps_per_epoch(16)
    plan = Plan(16, 0, 16 * (steps - 1))      # a window of all steps but one: remainder 1
    for s in range(steps):               # 16 consecutive rows lie in 2-3 row groups of 8
        groups = np.unique(data.group[data.global_rows(s, plan)])
        assert len(groups) > 6, (s, groups)               # spread over its window


def test_global_batch_does_not_depend_on_world_size_and_uses_each_row_once(small_groups):
    data = small_groups[1]
    plan = Plan(16, 3, 64)
    steps = data.steps_per_epoch(16)
    seen = np.concatenate([data.global_rows(s, plan) for s in range(steps)])
    assert len(np.unique(seen)) == len(seen) == steps * 16
    for s in (0, 5, steps + 2):                   # also in the second epoch
        whole = data.batch(s, plan)
        parts = [data.batch(s, Plan(16, 3, 64, r, 4)) for r in range(4)]
        for k in whole:
            assert torch.equal(torch.cat([p[k] for p in parts]), whole[k]), k
    assert not np.array_equal(data.global_rows(steps, plan), data.global_rows(0, plan))


def test_resumed_loader_yields_exactly_the_batches_of_the_uninterrupted_one(small_groups):
    data = small_groups[1]
    plan = Plan(64, 0, 128)
    per = data.steps_per_epoch(64)
    stop = per + 3                                # across an epoch boundary
    full = list(loader(data, plan, 0, stop, workers=2))
    resumed = list(loader(data, plan, per - 2, stop, workers=2))
    inline_memory = list(loader(data, plan, per - 2, stop, workers=0, memory=True))
    assert [s for s, _ in full] == list(range(stop))
    for (s, a), (t, b), (u, c) in zip(full[per - 2:], resumed, inline_memory):
        assert s == t == u
        for k in a:
            assert torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]), (s, k)


def test_an_in_memory_reader_not_preloaded_keeps_each_group_it_reads(small_groups):
    # What a spawned loader worker (an s3:// table) holds with `loader: memory`: the row groups
    # of its own part of the steps, read once and kept over epochs; not the whole table.
    data = small_groups[1]
    plan = Plan(16, 0, 64)
    per = data.steps_per_epoch(16)
    lazy, eager = RowReader(data, memory=True, preload=False), RowReader(data, memory=True)
    assert lazy.groups_read == 0 and eager.groups_read == len(np.unique(data.group))
    part = np.arange(4)                      # one loader worker's share of each step
    for s in range(3):
        got, want = data.batch(s, plan, lazy, part), data.batch(s, plan, eager, part)
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert 0 < lazy.groups_read < eager.groups_read
    for s in range(per, per + 3):            # the next epoch: new groups read, none again
        data.batch(s, plan, lazy, part)
    assert lazy.groups_read == len(lazy.cache) < eager.groups_read   # each read once, kept


def test_resume_refuses_a_checkpoint_that_read_the_data_in_another_order(corpus, tmp_path):
    small = dict(width=16, batch_size=16, lr=3e-3, warmup_steps=2, checkpoint_every=2,
                 loader_workers=0, method="st")
    pretrain(corpus["table"], None, tmp_path, PretrainConfig(max_steps=2, **small),
             progress=False)
    state = torch.load(tmp_path / "checkpoints/step-0000002/state.pt", weights_only=True)
    assert state["data"]["seed"] == 0 and state["data"]["shuffle_rows"] == 16384
    with pytest.raises(EcgsslError, match="read the data as .* resume with the same"):
        pretrain(corpus["table"], None, tmp_path, PretrainConfig(
            max_steps=4, shuffle_rows=64, **small), resume=True, progress=False)
    # A checkpoint of an ecgssl that drew batches another way (an older batch plan) is
    # refused too, though every setting matches.
    assert state["data"]["plan"] == Plan.VERSION
    torch.save({**state, "data": {**state["data"], "plan": Plan.VERSION - 1}},
               tmp_path / "checkpoints/step-0000002/state.pt")
    with pytest.raises(EcgsslError, match="same batch plan"):
        pretrain(corpus["table"], None, tmp_path, PretrainConfig(max_steps=4, **small),
                 resume=True, progress=False)


def test_rows_with_device_text_are_compared_by_their_text_not_their_codes(tables, tmp_path,
                                                                         table_copy):
    """Rows of equal report_codes are never each other's negatives, but only where the codes
    are the whole report: in `both` mode two PTB-XL ECGs whose device reports differ (here
    the same signal, another real device report) say different things even where their
    generated statements (the codes) agree."""
    import pyarrow as pa

    from ecgssl.config import ReportsConfig
    from ecgssl.data.table import read_table
    from ecgssl.reports.stage import run_reports
    other = table_copy(tables["ptbxl"], "report_device", lambda t: pa.array(
        ["sinusrhythmus a-v block i linkstyp linksschenkelblock"] * t.num_rows,
        t.schema.field("report_device").type))
    run_reports([tables["ptbxl"], other, tables["cinc2020"]], tmp_path / "r",
                ReportsConfig(mode="both", workers=1), progress=False)
    t = read_table(tmp_path / "r", columns=["report", "report_codes", "split"])
    codes = [tuple(c) for c in t.column("report_codes")]
    assert codes[0] == codes[1] and t.column("report")[0] != t.column("report")[1]
    assert set(t.column("split")[:2]) == {"train"}
    data = PretrainData.load(tmp_path / "r", None, need_text=False)
    assert len(data) == list(t.column("split")).count("train")   # table order: PTB-XL first
    assert data.text_id[0] != data.text_id[1]
    # generated-only rows (Challenge 2020) of equal codes still count as the same report
    train = [c for c, s in zip(codes, t.column("split")) if s == "train"]
    twins = [(i, j) for i in range(2, len(train)) for j in range(i + 1, len(train))
             if train[i] == train[j]]
    assert twins and all(data.text_id[i] == data.text_id[j] for i, j in twins)


def test_reports_missing_from_the_embeddings_are_an_error_not_dropped_rows(corpus,
                                                                            table_copy):
    """Embeddings of another (older) reports table: a row whose report is not embedded must
    stop the run, naming the files, not silently leave the row out of pretraining."""
    import pyarrow as pa

    def reworded(t):
        reports = t.column("report").to_pylist()
        first = next(i for i, (r, s) in enumerate(zip(reports, t.column("split").to_pylist()))
                     if r and s == "train")
        reports[first] = reports[first] + " Reworded after embed-text ran."
        return pa.array(reports, t.schema.field("report").type)
    stale = table_copy(corpus["table"], "report", reworded)
    assert len(PretrainData.load(stale, None, need_text=False)) == \
        len(PretrainData.load(corpus["table"], None, need_text=False))
    with pytest.raises(EcgsslError, match=r"not in .*text_emb.*embed-text"):
        PretrainData.load(stale, corpus["text_emb"], need_text=True)


def test_rows_left_over_by_whole_batches_are_not_always_the_same(corpus, tmp_path):
    """An epoch leaves out the len % batch_size rows that make no whole batch. In a table of
    one row group (a small table) the read order is the same every epoch: left out at its end,
    the same rows would never be trained on, however many epochs."""
    import pyarrow as pa
    m = read_manifest(corpus["table"])
    one = tmp_path / "one-group"
    one.mkdir()
    pq.write_table(pa.concat_tables([pq.read_table(corpus["table"] / s) for s in m["shards"]]),
                   one / "all.parquet", row_group_size=1 << 20)
    (one / "_manifest.json").write_text(json.dumps({**m, "shards": ["all.parquet"]}))
    data = PretrainData.load(one, corpus["text_emb"], need_text=True)
    assert len(data.groups) == 1 and len(data) % 16
    per = data.steps_per_epoch(16)
    plan = Plan(16, 0, 64)
    for e in range(10):
        epoch = np.concatenate([data.global_rows(s, plan) for s in range(e * per, (e + 1) * per)])
        assert len(np.unique(epoch)) == len(epoch) == per * 16          # each row once at most
    seen = np.unique([data.global_rows(s, plan) for s in range(10 * per)])
    assert len(seen) == len(data), f"{len(data) - len(seen)} rows never trained on"
