"""Pretraining data, streamed: row groups are read lazily by DataLoader workers and preprocessed
per batch; only a small index of the training rows (and the report embeddings, joined by text
hash) lives in memory, so memory does not grow with the table.

Which rows form the global batch of step s is a function of (seed, s, table) only:
- epoch e = s // steps_per_epoch visits the row groups in an order drawn from (seed, e) and
  shuffles rows within consecutive windows of ~`shuffle_rows` rows (a shuffle buffer: a reader
  never holds more than its part of a window), each batch drawing one row from each of
  `batch_size` consecutive strata of its window;
- a batch's rows are thus sorted by read position and DDP rank r takes the r-th slice, i.e. the
  r-th contiguous part of every window: ranks read disjoint row groups (but the boundary ones)
  while the global batch does not depend on the world size.
Resuming at step s (the step is the data position, saved in the checkpoint) is therefore exact,
and a DDP run sees the batches one process sees.

    data = PretrainData.load(table, text_emb, need_text=True)
    for step, batch in loader(data, Plan(256, seed=0), start, stop, workers=4, device=cuda):
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ecgssl.data.preprocess import preprocess
from ecgssl.data.signal import N_LEADS
from ecgssl.data.table import (
    RowGroup,
    read_manifest,
    read_row_group,
    read_row_groups,
    row_groups,
)
from ecgssl.errors import EcgsslError
from ecgssl.storage import is_s3
from ecgssl.text.cache import text_hash
from ecgssl.text.stage import read_embeddings


@dataclass(frozen=True)
class Plan:
    """How batches are drawn: the global batch's size and seed, the shuffle window, and which
    slice of it this rank takes."""
    # Bumped whenever the rows of a step's batch change for the same settings (2: equal-size
    # shuffle windows), so a checkpoint is never resumed into another order.
    VERSION: ClassVar[int] = 2
    batch_size: int
    seed: int = 0
    shuffle_rows: int = 16384
    rank: int = 0
    world_size: int = 1

    @property
    def mine(self) -> slice:
        local = self.batch_size // self.world_size
        return slice(self.rank * local, (self.rank + 1) * local)


@dataclass
class PretrainData:
    """The training rows of a table as an index (row group and row of each), with their report
    embeddings; the signal stays in the table until a batch needs it."""
    table: Path | str            # a folder, or an s3:// prefix read by byte ranges
    groups: list[RowGroup]
    group: np.ndarray            # int32 [N]: row group of each training row
    offset: np.ndarray           # int32 [N]: its row within the group
    text_id: np.ndarray          # int64 [N]: equal for reports that say the same
    text_row: np.ndarray | None  # int64 [N]: its report's row of `text`
    text: np.ndarray | None      # float32 [M, D]: the distinct report embeddings
    fs: int
    n_samples: int
    text_meta: dict

    @classmethod
    def load(cls, table: str | Path, text_emb: str | Path | None, need_text: bool,
             split: str = "train") -> PretrainData:
        table = str(table) if is_s3(table) else Path(table)
        manifest = read_manifest(table)
        n_samples = int(manifest["n_samples"])
        groups = row_groups(table)
        index, vecs, meta = None, None, {}
        if need_text:
            if text_emb is None:
                raise EcgsslError("METS needs --text-emb (the output of `ecgssl embed-text`)")
            index, vecs, meta = read_embeddings(text_emb)
        group, offset, hashes, same = [], [], [], []
        unembedded = []        # reports embed-text would have embedded, but text_emb lacks
        # metadata columns only: no signal is decoded (from s3://, nor fetched)
        for g, t in enumerate(read_row_groups(
                table, groups, ["split", "report", "report_codes", "report_device"], n_samples)):
            keep = np.flatnonzero(t.column("split") == split)
            reports, codes = t.column("report"), t.column("report_codes")
            device = t.column("report_device")
            for i in keep:
                r = reports[i]
                h = text_hash(r) if isinstance(r, str) and r else None
                if need_text and (h is None or h not in index):
                    if h is not None and r.strip():   # embed-text embeds every non-blank one
                        unembedded.append(r)
                    continue
                group.append(g)
                offset.append(i)
                hashes.append(h)
                # Which reports count as saying the same thing (never each other's
                # negatives): equal statement codes where they are the whole report, else
                # equal text. A report with device text (`both` mode: PTB-XL, MIMIC) says
                # more than its generated codes: two of them with the codes ['SR'] and
                # different device reports are each other's negatives.
                c = codes[i]
                generated_only = not (isinstance(device[i], str) and device[i].strip())
                same.append(text_hash(" ".join(sorted(c)))
                            if generated_only and c is not None and len(c) else h)
        if unembedded and group:
            raise EcgsslError(
                f"{len(unembedded)} {split} rows of {table} have reports not in {text_emb} "
                f"(e.g. {unembedded[0][:80]!r}): the embeddings are of another version of the "
                "table; rerun `ecgssl embed-text` on this table")
        if not group:
            if need_text and any(np.sum(read_row_group(table, rg, ["split"], n_samples=n_samples
                                                       ).column("split") == split)
                                 for rg in groups):
                raise EcgsslError(f"no row of {table} has a report embedded in {text_emb}; "
                                  "run `ecgssl embed-text` on this table")
            raise EcgsslError(f"{table}: no rows in split {split!r}")
        text, text_row = None, None
        if need_text:
            rows = np.array([index[h] for h in hashes], dtype=np.int64)
            used, text_row = np.unique(rows, return_inverse=True)   # only what is referenced
            text = np.ascontiguousarray(vecs[used], dtype=np.float32)
        ids = np.array([int(h[:15], 16) if h else -1 - i for i, h in enumerate(same)],
                       dtype=np.int64)
        return cls(table, groups, np.array(group, np.int32), np.array(offset, np.int32), ids,
                   text_row, text, int(manifest["fs"]), n_samples, meta)

    def __len__(self) -> int:
        return len(self.group)

    def steps_per_epoch(self, batch_size: int) -> int:
        n = len(self) // batch_size
        if n == 0:
            raise EcgsslError(f"batch size {batch_size} is larger than the {len(self)} "
                              "training rows; lower pretrain.batch_size")
        return n

    def _batches(self, epoch: int, plan: Plan) -> np.ndarray:
        """Epoch `epoch` as a [steps, batch_size] array of training-row numbers.

        The rows in read order (row groups in an order drawn from (seed, epoch)) are cut into
        windows of ~`shuffle_rows` rows (whole batches), each window into `batch_size`
        consecutive strata; each stratum is shuffled and batch k of the window takes the k-th
        row of every stratum. A batch is thus spread over its whole window and sorted by read
        position, so the slice of DDP rank r is the r-th contiguous part of the window: ranks
        read disjoint row groups (but the boundary ones), whatever the world size."""
        key = (epoch, plan.seed, plan.shuffle_rows, plan.batch_size)
        if getattr(self, "_cached", (None,))[0] != key:
            b = plan.batch_size
            steps = self.steps_per_epoch(b)
            rng = np.random.default_rng([plan.seed, epoch])
            rank = np.empty(len(self.groups), np.int64)
            rank[rng.permutation(len(self.groups))] = np.arange(len(self.groups))
            order = np.lexsort((self.offset, rank[self.group]))
            # The r = len % b rows that make no whole batch are left out of this epoch: the run
            # of r rows that ends r * epoch rows before the end of the read order (wrapping
            # round), not always its end, which in a table of one row group (a small table) is
            # the same rows every epoch, never trained on. Epoch 0 leaves out the end.
            n, r = len(order), len(order) - steps * b
            keep = np.ones(n, bool)
            keep[(n - r * (epoch + 1) + np.arange(r)) % n] = False
            read = order[keep]
            per_window = max(1, plan.shuffle_rows // b)                      # steps
            # Windows of equal size (at most per_window steps), not full ones and a remainder:
            # a last window of a step or two has strata of a row or two, hardly shuffled, and
            # its batches would be runs of consecutive rows (windows of a few records:
            # near-duplicate reports as each other's contrastive negatives).
            bounds = np.linspace(0, steps, -(-steps // per_window) + 1).round().astype(int)
            out = np.empty((steps, b), np.int64)
            for w0, w1 in zip(bounds, bounds[1:]):
                m = w1 - w0
                strata = read[w0 * b:(w0 + m) * b].reshape(b, m)
                shuffled = np.take_along_axis(strata, rng.random((b, m)).argsort(1), 1)
                out[w0:w0 + m] = shuffled.T
            self._cached = (key, out)
        return self._cached[1]

    def global_rows(self, step: int, plan: Plan) -> np.ndarray:
        """The global batch of `step`: training-row numbers sorted by read position."""
        epoch, i = divmod(step, self.steps_per_epoch(plan.batch_size))
        return self._batches(epoch, plan)[i]

    def local_rows(self, step: int, plan: Plan) -> np.ndarray:
        return self.global_rows(step, plan)[plan.mine]

    def batch(self, step: int, plan: Plan, reader: RowReader | None = None,
              part: np.ndarray | slice = slice(None)) -> dict:
        """This rank's batch of `step` (or `part` of it) as CPU tensors, preprocessed: what a
        loader worker yields."""
        rows = self.local_rows(step, plan)[part]
        signal, mask = (reader or RowReader(self)).fetch(rows)
        b = {"x": torch.from_numpy(preprocess(signal, mask, self.fs)),
             "mask": torch.from_numpy(mask), "text_id": torch.from_numpy(self.text_id[rows])}
        if self.text is not None:
            b["text"] = torch.from_numpy(self.text[self.text_row[rows]])
        return b


class RowReader:
    """Raw rows by training-row number. A row group is read when a row of it is first asked
    for; the reader keeps only the rows of it that are still to come (`plan`), and drops the
    group once they have been served. `memory=True` keeps every row group it reads (small
    tables: the same path, no reads after the first epoch), all of them read up front unless
    `preload=False`: then each is read when first asked for."""

    def __init__(self, data: PretrainData, memory: bool = False, preload: bool = True):
        self.data, self.memory = data, memory
        self.cache: dict[int, list] = {}       # group -> [offsets, signal, mask, rows left]
        self.need: dict[int, np.ndarray] = {}
        self.groups_read = 0
        self.rows_held_peak = 0
        if memory and preload:
            for g in np.unique(data.group):
                self._load(int(g), np.sort(data.offset[data.group == g]), left=-1)

    def plan(self, rows: np.ndarray) -> None:
        """The rows this reader will be asked for next (each once), so it keeps no others."""
        if self.memory:
            return
        g = self.data.group[rows]
        order = np.argsort(g, kind="stable")
        groups, starts = np.unique(g[order], return_index=True)
        for gid, part in zip(groups, np.split(self.data.offset[rows][order], starts[1:])):
            self.need[int(gid)] = np.unique(part)

    def _load(self, g: int, offsets: np.ndarray, left: int) -> None:
        d = self.data
        a = read_row_group(d.table, d.groups[g], ["signal", "lead_mask"], rows=offsets,
                           n_samples=d.n_samples)
        self.cache[g] = [offsets, a.signal, a.lead_mask, left]
        self.groups_read += 1
        self.rows_held_peak = max(self.rows_held_peak, sum(len(c[0]) for c in self.cache.values()))

    def fetch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = self.data
        signal = np.empty((len(rows), N_LEADS, d.n_samples), np.float32)
        mask = np.empty((len(rows), N_LEADS), bool)
        g, off = d.group[rows], d.offset[rows]
        for gid in np.unique(g):
            gid = int(gid)
            sel = np.flatnonzero(g == gid)
            if gid not in self.cache:
                need = self.need.pop(gid, None)
                if need is None:           # unplanned: keep the group's training rows
                    need, left = np.sort(d.offset[d.group == gid]), -1
                else:
                    left = len(need)
                self._load(gid, need, left)
            entry = self.cache[gid]
            j = np.searchsorted(entry[0], off[sel])
            signal[sel], mask[sel] = entry[1][j], entry[2][j]
            if entry[3] > 0:
                entry[3] -= len(sel)
                if entry[3] <= 0:
                    del self.cache[gid]
        return signal, mask


class StepBatches(IterableDataset):
    """This rank's batches of steps start..stop-1 in `parts` parts, as (step, part): loader
    worker w of n makes part w of every step (its contiguous share of the rank's rows, so of
    the row groups), and the DataLoader hands items out round robin: part 0..n-1 of each step,
    in step order."""

    def __init__(self, data: PretrainData, plan: Plan, start: int, stop: int, parts: int = 1,
                 memory: bool = False, spawned: bool = False):
        self.data, self.plan, self.start, self.stop, self.parts = data, plan, start, stop, parts
        self.memory = memory
        # An in-memory reader is filled here, once, and shared with forked workers. Spawned
        # workers would each get a pickled copy of all of it: each fills its own instead,
        # with only the row groups its part of the steps reads.
        self.shared = RowReader(data, memory=True) if memory and not spawned else None

    def __iter__(self):
        info = get_worker_info()
        w = info.id if info is not None else 0
        per = self.data.steps_per_epoch(self.plan.batch_size)
        reader = self.shared or RowReader(self.data, memory=self.memory, preload=False)
        epoch = None
        part = np.array_split(np.arange(self.plan.batch_size // self.plan.world_size),
                              self.parts)[w]

        for step in range(self.start, self.stop):
            if step // per != epoch:           # plan this worker's reads of the new epoch
                epoch = step // per
                mine = range(step, min(self.stop, (epoch + 1) * per))
                reader.plan(np.concatenate([self.data.local_rows(s, self.plan)[part]
                                            for s in mine]))
            yield step, self.data.batch(step, self.plan, reader, part)


def _ignore_ctrl_c(worker_id: int) -> None:
    """worker_init_fn: a terminal's Ctrl-C signals the whole process group, loader workers
    included. A worker that dies of it mid-transfer leaves the main process fetching a batch
    from a dead process (tracebacks from torch's workers and multiprocessing's
    resource_sharer, or a hang); the main process alone handles it and shuts them down.
    The main one, interrupted while receiving a batch's shared memory, hangs up on the
    worker's resource_sharer thread, which prints that as a traceback: harmless, dropped."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    hook = sys.excepthook

    def quiet_hangup(kind, value, tb):
        if not issubclass(kind, (EOFError, ConnectionError)):
            hook(kind, value, tb)
    sys.excepthook = quiet_hangup      # the worker's own errors go to the main one, not here


@contextmanager
def _workers_born_deaf():
    """Ctrl-C ignored while the workers start, so that they are born ignoring it: a forked
    worker inherits the disposition, and so does a spawned one (exec keeps an ignored signal
    ignored; Python leaves it so), which would otherwise take it during its seconds of imports,
    before `_ignore_ctrl_c` runs. A Ctrl-C in this short window is lost (press it again).
    signal.signal works in the main thread only: elsewhere `_ignore_ctrl_c` alone serves."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _shut_down(items) -> None:
    """Stop the loader workers now. torch has no public close for a loader iterator, and left
    to the garbage collector it is not shut down after an exception (Ctrl-C): the traceback
    holds it until interpreter exit, where torch skips its shutdown and the workers are killed
    with their queues mid-use (teardown tracebacks, and once a hang). `_shutdown_workers`
    (torch 1.x-2.x) joins each worker with a 5 s timeout, then terminates it: bounded."""
    shutdown = getattr(items, "_shutdown_workers", None)   # workers=0: nothing to stop
    if shutdown is not None:
        shutdown()


def loader(data: PretrainData, plan: Plan, start: int, stop: int, workers: int = 0,
           device: torch.device = torch.device("cpu"), memory: bool = False
           ) -> Iterator[tuple[int, dict]]:
    """(step, batch on `device`) for this rank's steps start..stop-1, each batch read and
    preprocessed in `workers` parts by as many worker processes (0: in this process), pinned
    and moved to the device part by part (non-blocking), joined there. Close the generator
    (contextlib.closing) so that the workers stop when the caller stops early."""
    n = max(1, workers)
    # Workers of an s3:// table start fresh (spawn), not forked from a process whose S3 client
    # (made reading the index) the AWS SDK does not support in a child; each opens its own.
    context = "spawn" if workers and is_s3(data.table) else None
    with _workers_born_deaf():
        items = iter(DataLoader(StepBatches(data, plan, start, stop, n, memory, bool(context)),
                                batch_size=None,
                                num_workers=workers, pin_memory=device.type == "cuda",
                                prefetch_factor=4 if workers else None,
                                worker_init_fn=_ignore_ctrl_c if workers else None,
                                multiprocessing_context=context))
    try:
        for step in range(start, stop):
            parts = [next(items) for _ in range(n)]
            if any(s != step for s, _ in parts):   # never train on another step's rows
                raise RuntimeError(f"loader yielded steps {[s for s, _ in parts]} for step "
                                   f"{step}")
            yield step, {k: torch.cat([p[k].to(device, non_blocking=True) for _, p in parts])
                         for k in parts[0][1]}
    finally:      # done, Ctrl-C, an error here or in the caller (which closes us)
        _shut_down(items)
