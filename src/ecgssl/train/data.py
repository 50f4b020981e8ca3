"""Pretraining data in memory: the table read once, report embeddings joined by text hash.

Batches are a pure function of (seed, step): the order of epoch e is a permutation seeded by
(seed, e), so a resumed run sees exactly the batches the uninterrupted run saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ecgssl.data.preprocess import preprocess
from ecgssl.data.table import read_manifest, read_table
from ecgssl.errors import EcgsslError
from ecgssl.text.cache import text_hash
from ecgssl.text.stage import read_embeddings


@dataclass
class PretrainData:
    signal: np.ndarray          # float32 [N, 12, T]
    mask: np.ndarray            # bool [N, 12]
    text: np.ndarray | None     # float32 [N, D] report embedding of each row
    text_id: np.ndarray         # int64 [N]: equal for reports that say the same
    fs: int
    text_meta: dict

    @classmethod
    def load(cls, table: str | Path, text_emb: str | Path | None, need_text: bool,
             split: str = "train") -> PretrainData:
        manifest = read_manifest(table)
        t = read_table(table, split=split, columns=["report", "report_codes"])
        if len(t) == 0:
            raise EcgsslError(f"{table}: no rows in split {split!r}")
        reports = t.column("report")
        hashes = [text_hash(r) if isinstance(r, str) and r else None for r in reports]
        # Which reports count as saying the same thing (never each other's negatives): equal
        # statement codes where the report has them, else equal text.
        same = [text_hash(" ".join(sorted(c))) if c is not None and len(c) else h
                for c, h in zip(t.column("report_codes"), hashes)]
        text, meta = None, {}
        if need_text:
            if text_emb is None:
                raise EcgsslError("METS needs --text-emb (the output of `ecgssl embed-text`)")
            index, vecs, meta = read_embeddings(text_emb)
            rows = np.array([h is not None and h in index for h in hashes])
            if not rows.any():
                raise EcgsslError(f"no row of {table} has a report embedded in {text_emb}; "
                                  "run `ecgssl embed-text` on this table")
            keep = np.flatnonzero(rows)
            text = vecs[[index[hashes[i]] for i in keep]]
            t.signal, t.lead_mask = t.signal[keep], t.lead_mask[keep]
            same = [same[i] for i in keep]
        ids = np.array([int(h[:15], 16) if h else -1 - i for i, h in enumerate(same)],
                       dtype=np.int64)
        signal = preprocess(t.signal, t.lead_mask, manifest["fs"])   # once, at load
        return cls(signal, t.lead_mask, text, ids, int(manifest["fs"]), meta)

    def __len__(self) -> int:
        return len(self.signal)

    def steps_per_epoch(self, batch_size: int) -> int:
        n = len(self) // batch_size
        if n == 0:
            raise EcgsslError(f"batch size {batch_size} is larger than the {len(self)} "
                              "training rows; lower pretrain.batch_size")
        return n

    def batch_indices(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        per_epoch = self.steps_per_epoch(batch_size)
        epoch, pos = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(self))
        return np.sort(order[pos * batch_size:(pos + 1) * batch_size])

    def batch(self, idx: np.ndarray, device: torch.device) -> dict:
        b = {"x": torch.from_numpy(self.signal[idx]).to(device, non_blocking=True),
             "mask": torch.from_numpy(self.mask[idx]).to(device),
             "text_id": torch.from_numpy(self.text_id[idx]).to(device)}
        if self.text is not None:
            b["text"] = torch.from_numpy(self.text[idx]).to(device)
        return b
