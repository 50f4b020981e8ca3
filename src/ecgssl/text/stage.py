"""The `embed-text` stage: every distinct report of a table, embedded once by the frozen LM.

    ecgssl embed-text --input outputs/reports --output outputs/text_emb.parquet

The output is a Parquet file (text_hash, text, embedding) whose schema metadata names the
model identity, pooling and dimension; pretraining joins it to the table by text hash.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ecgssl.config import EmbedTextConfig
from ecgssl.data.table import read_meta
from ecgssl.errors import EcgsslError
from ecgssl.storage import atomic_path
from ecgssl.text.cache import EmbeddingCache, text_hash
from ecgssl.text.encoder import TextEncoder
from ecgssl.tracking import OFF, RunContext, log_stage


@dataclass(frozen=True)
class EmbedTextResult:
    texts: int            # distinct reports embedded
    rows: int             # table rows
    model: str            # model identity (name + weights hash + pooling)
    dim: int
    computed: int         # vectors computed now
    cached: int           # vectors taken from the cache
    forward_calls: int
    elapsed_s: float


def encoder_from(cfg: EmbedTextConfig) -> TextEncoder:
    return TextEncoder(cfg.model, pooling=cfg.pooling, batch_size=cfg.batch_size)


def run_embed_text(input_table: str | Path, output: str | Path, cfg: EmbedTextConfig,
                   progress: bool = True, encoder: TextEncoder | None = None,
                   ctx: RunContext = OFF) -> EmbedTextResult:
    t0 = time.perf_counter()
    reports = read_meta(input_table, ["report"]).column("report").to_pylist()
    texts = sorted({r for r in reports if isinstance(r, str) and r.strip()})
    if not texts:
        raise EcgsslError(f"{input_table}: no rows have a report; run `ecgssl reports` first")
    encoder = encoder or encoder_from(cfg)
    cache = EmbeddingCache(cfg.cache)
    vecs = cache.embed(texts, encoder, progress=progress)
    write_embeddings(output, texts, vecs, encoder)
    result = EmbedTextResult(len(texts), len(reports), encoder.identity, encoder.dim,
                             cache.misses, cache.hits, encoder.forward_calls,
                             round(time.perf_counter() - t0, 2))
    log_stage(ctx, "embed-text", cfg.model_dump(), asdict(result))
    return result


def write_embeddings(path: str | Path, texts: list[str], vecs: np.ndarray, encoder) -> None:
    meta = {"model": encoder.name, "model_identity": encoder.identity,
            "pooling": encoder.pooling, "dim": str(encoder.dim)}
    table = pa.table({
        "text_hash": [text_hash(t) for t in texts], "text": texts,
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(vecs, dtype=np.float32).reshape(-1)), encoder.dim),
    }).replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_embeddings(path: str | Path) -> tuple[dict[str, int], np.ndarray, dict]:
    """({text_hash: row}, vectors [N, D] float32, metadata) of an embeddings file."""
    p = Path(path)
    if not p.is_file():
        raise EcgsslError(f"embeddings file not found: {p} (run `ecgssl embed-text`)")
    try:
        t = pq.read_table(p)
        meta = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()}
        dim = int(meta["dim"])
    except (pa.ArrowException, OSError, KeyError, ValueError) as exc:
        raise EcgsslError(f"{p} is not an embeddings file of `ecgssl embed-text` ({exc!r}); "
                          "rerun embed-text") from None
    vecs = t.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, dim)
    index = {h: i for i, h in enumerate(t.column("text_hash").to_pylist())}
    return index, vecs, meta
