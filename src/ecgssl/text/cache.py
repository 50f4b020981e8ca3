"""The embedding cache: one Parquet file of (model identity, text hash) -> vector.

Every text is embedded once per model; `embed` returns cached vectors and computes only the
texts it has not seen with this exact model. Used for reports and zero-shot prompts alike.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ecgssl.storage import atomic_path

SCHEMA = pa.schema([("model", pa.string()), ("text_hash", pa.string()),
                    ("embedding", pa.list_(pa.float32()))])


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.hits = self.misses = 0

    def _load(self, model: str) -> dict[str, np.ndarray]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            t = pq.read_table(self.path, filters=pc.field("model") == model)
        except (pa.ArrowException, OSError) as exc:
            # A cache is only a shortcut: a damaged one is set aside and rebuilt, never fatal.
            bad = self.path.with_name(self.path.name + ".corrupt")
            os.replace(self.path, bad)
            warnings.warn(f"embedding cache {self.path} was unreadable ({exc}); moved to {bad} "
                          "and starting a new one", stacklevel=2)
            return {}
        if not t.num_rows:
            return {}
        vecs = np.stack(t.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
        return dict(zip(t.column("text_hash").to_pylist(), vecs))

    def _append(self, model: str, hashes: list[str], vecs: np.ndarray) -> None:
        if self.path is None or not hashes:
            return
        new = pa.table({"model": [model] * len(hashes), "text_hash": hashes,
                        "embedding": pa.array(list(vecs), pa.list_(pa.float32()))}, schema=SCHEMA)
        old = [pq.read_table(self.path)] if self.path.is_file() else []
        with atomic_path(self.path) as tmp:
            pq.write_table(pa.concat_tables([*old, new]), tmp, compression="zstd")

    def embed(self, texts: list[str], encoder, progress: bool = False) -> np.ndarray:
        """Vectors [N, D] for texts, computing only what this model has not embedded yet."""
        hashes = [text_hash(t) for t in texts]
        known = self._load(encoder.identity)
        todo = {h: t for h, t in zip(hashes, texts) if h not in known}
        self.hits += len(set(hashes)) - len(todo)
        self.misses += len(todo)
        if todo:
            vecs = encoder.encode(list(todo.values()), progress=progress)
            known.update(zip(todo, vecs))
            self._append(encoder.identity, list(todo), vecs)
        if not texts:
            return np.zeros((0, encoder.dim), dtype=np.float32)
        return np.stack([known[h] for h in hashes])
