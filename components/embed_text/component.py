"""KFP component: embed every distinct report with the frozen language model (see README.md)."""

from kfp.dsl import Dataset, Input, Output

IMAGE = "image"  # the KfpConfig field naming this component's base image


def embed_text(table: Input[Dataset], params: str, tracking_uri: str,
               embeddings: Output[Dataset]) -> int:
    """Writes the embeddings Parquet file; returns the number of distinct reports."""
    from ecgssl.pipeline import steps
    s = steps.embed_text(table.path, embeddings.path, params, tracking_uri)
    embeddings.metadata.update({"texts": s.texts, "rows": s.rows, "model": s.model,
                                "dim": s.dim})
    return s.texts
