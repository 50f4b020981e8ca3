"""Progress bars, the one place the project makes them (every stage calls `bar`).

On a terminal: a tqdm bar. Elsewhere (CI, `dvc repro` piped to a file, Kubeflow pod logs) a `\\r`
bar turns into one unreadable line, so there it prints one plain line every N steps instead:
N is about a tenth of the total (ECGSSL_PROGRESS_EVERY overrides it), plus the last step.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

EVERY_ENV = "ECGSSL_PROGRESS_EVERY"


class _Sink:
    """Where the line-mode bar lets tqdm write: nowhere (it prints its own lines)."""
    def write(self, s): ...
    def flush(self): ...


class LineBar(tqdm):
    """tqdm that prints `desc: n/total [elapsed<remaining, rate]` lines, every `every` steps."""

    def __init__(self, *args, every: int | None = None, **kwargs):
        self._every, self._shown = every, None
        kwargs.update(file=_Sink(), mininterval=0, miniters=1, dynamic_ncols=False, ncols=None,
                      bar_format="{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, "
                      "{rate_fmt}{postfix}]")
        super().__init__(*args, **kwargs)
        if self._every is None:
            self._every = max(1, (self.total or 1000) // 10)

    def display(self, msg=None, pos=None):
        due = self._shown is None or self.n - self._shown >= self._every or (
            self.total is not None and self.n >= self.total and self._shown != self.n)
        if due and not self.disable:
            print(self.format_meter(**self.format_dict).replace("\r", ""), file=sys.stderr,
                  flush=True)
            self._shown = self.n
        return True


def bar(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    """A progress bar over `iterable` (or updated by hand): tqdm's arguments (desc, total,
    unit, initial, ...); `enabled=False` shows nothing (the stages' --no-progress)."""
    if not enabled:
        return tqdm(iterable, disable=True, **kwargs)
    if sys.stderr.isatty():
        return tqdm(iterable, **kwargs)
    every = os.environ.get(EVERY_ENV)
    return LineBar(iterable, every=int(every) if every else None, **kwargs)
