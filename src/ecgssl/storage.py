"""Files ecgssl writes: atomic (temp file in the same folder, then rename) and fingerprinted."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ecgssl.errors import EcgsslError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path` in one rename, so
    readers see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def exclusive(folder: str | Path, command: str) -> Iterator[Path]:
    """Hold a lock on an output folder; a second writer refuses at once instead of mixing
    its files with ours."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / ".ecgssl.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise EcgsslError(f"another `ecgssl {command}` is writing to {folder}; refusing to "
                          "write at the same time") from None
    try:
        yield folder
    finally:
        lock.release()


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def tree_fingerprint(root: str | Path) -> str:
    """sha256 over (relative path, size, mtime) of every file below root.

    Stat-based so that fingerprinting costs no extra read of the data; content-addressed
    versioning of the raw data is DVC's job (`dvc add`).
    """
    root = Path(root)
    h = hashlib.sha256()
    entries = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            entries.append((os.path.relpath(p, root), st.st_size, st.st_mtime_ns))
    for e in sorted(entries):
        h.update(repr(e).encode())
    return "stat-sha256:" + h.hexdigest()


def stable_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
