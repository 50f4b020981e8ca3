"""A task's signal, read from its table's row groups when asked for (evaluation's streaming).

`RowStore` is what `TaskData.x` holds: numpy-like (`len`, `shape`, `store[slice or index
array]` -> float32 [k, 12, T]) but backed by the table, as pretraining's reader is. A read
groups the requested rows by row group, decodes each group's rows of the task once, applies the
model's preprocessing (`with_transform`) to them and keeps them in a bounded LRU of row groups,
so a sorted slice reads each group once and a pass over the rows in order holds at most
`cache_bytes` of them. A small table is served by the same path: everything fits in the cache
and is decoded once. Only the metadata (labels, splits, ids, lead masks) lives in memory.

    x = RowStore(tables, groups, group, offset, n_samples, fs).with_transform(preprocess)
    x[0:256]            # the first batch, preprocessed
    x.view(test)[0:256]  # lazy rows: what a frozen pass over the test split iterates
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecgssl.data.signal import N_LEADS
from ecgssl.data.table import RowGroup, read_row_group

# Default bound of the decoded (preprocessed) rows a store keeps: ~22k rows at 100 Hz x 10 s,
# far below the 38 GB of a MIMIC-IV-ECG test table, all of a sample or PTB-XL-sized table.
CACHE_BYTES = 1 << 30

Transform = Callable[[np.ndarray, np.ndarray, int], np.ndarray]   # (signal, mask, fs) -> x


@dataclass
class StoreStats:
    """What the store did: row groups decoded and rows held (shared by views and transforms
    of one store, so a test or a log can tell a stream from a whole-table read)."""
    groups_read: int = 0
    rows_read: int = 0
    rows_held: int = 0
    rows_held_peak: int = 0


@dataclass
class RowStore:
    """The rows of a task, in task order: row i is row `offset[i]` of row group
    `groups[group[i]]` of table `tables[source[group[i]]]`."""
    tables: list[Path | str]          # folders or s3:// prefixes
    groups: list[tuple[int, RowGroup]]  # (index into tables, row group) of each group used
    group: np.ndarray                 # int32 [N]: index into `groups`
    offset: np.ndarray                # int32 [N]: row within that row group
    n_samples: int
    fs: int
    transform: Transform | None = None
    cache_bytes: int = CACHE_BYTES
    stats: StoreStats = field(default_factory=StoreStats)

    def __post_init__(self):
        self.group = np.asarray(self.group, dtype=np.int32)
        self.offset = np.asarray(self.offset, dtype=np.int32)
        # per group, the task's rows in it (sorted offsets), and each row's place among them:
        # a group is decoded for all of its task rows at once, then served from the cache
        order = np.lexsort((self.offset, self.group))
        g_sorted = self.group[order]
        starts = np.searchsorted(g_sorted, np.arange(len(self.groups) + 1))
        self._offsets = [self.offset[order[starts[g]:starts[g + 1]]]
                         for g in range(len(self.groups))]
        self._pos = np.empty(len(self.group), dtype=np.int64)
        self._pos[order] = np.arange(len(order)) - starts[g_sorted]
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()   # LRU: group -> x [k,12,T]
        row_bytes = N_LEADS * self.n_samples * 4
        self.cache_rows = max(1, self.cache_bytes // row_bytes)

    def with_transform(self, transform: Transform) -> RowStore:
        """The same rows through `transform` (the model's preprocessing), applied per decoded
        row group; a fresh cache, the same stats."""
        return RowStore(self.tables, self.groups, self.group, self.offset, self.n_samples,
                        self.fs, transform, self.cache_bytes, self.stats)

    def __len__(self) -> int:
        return len(self.group)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), N_LEADS, self.n_samples)

    dtype = np.dtype(np.float32)
    ndim = 3

    def view(self, idx: np.ndarray) -> RowView:
        """Rows `idx`, lazily: slicing the view reads only the slice."""
        return RowView(self, np.asarray(idx, dtype=np.int64))

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        idx = np.arange(len(self))[key] if isinstance(key, slice) else \
            np.asarray(key, dtype=np.int64).reshape(-1)
        return self.take(idx)

    def take(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), N_LEADS, self.n_samples), dtype=np.float32)
        if not len(idx):
            return out
        g = self.group[idx]
        # one read per row group of the request, in group order (table order for a sorted
        # slice); a group stays cached until it is the least recently used over the bound.
        # The request sorted by group once: a mask per group would cost groups x rows.
        order = np.argsort(g, kind="stable")
        gids, starts = np.unique(g[order], return_index=True)
        for gid, sel in zip(gids, np.split(order, starts[1:])):
            out[sel] = self._group(int(gid))[self._pos[idx[sel]]]
        return out

    def _group(self, gid: int) -> np.ndarray:
        x = self._cache.get(gid)
        if x is not None:
            self._cache.move_to_end(gid)
            return x
        src, rg = self.groups[gid]
        a = read_row_group(self.tables[src], rg, ["signal", "lead_mask"], rows=self._offsets[gid],
                           n_samples=self.n_samples)
        x = np.asarray(a.signal, dtype=np.float32) if self.transform is None else \
            self.transform(a.signal, a.lead_mask, self.fs)
        s = self.stats
        s.groups_read += 1
        s.rows_read += len(x)
        # evict before adding: the bound holds but for one group larger than it alone
        while self._cache and s.rows_held + len(x) > self.cache_rows:
            s.rows_held -= len(self._cache.popitem(last=False)[1])
        self._cache[gid] = x
        s.rows_held += len(x)
        s.rows_held_peak = max(s.rows_held_peak, s.rows_held)
        return x


@dataclass
class RowView:
    """Rows `idx` of a store, read when sliced (numpy-like, as the store)."""
    store: RowStore
    idx: np.ndarray

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), N_LEADS, self.store.n_samples)

    def __getitem__(self, key) -> np.ndarray:
        return self.store[self.idx[key]]
