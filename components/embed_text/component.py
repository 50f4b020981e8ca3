"""KFP component: embed every distinct report with the frozen language model (see README.md)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from ecgssl.pipeline.build import settings

IMAGE = settings().image


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def embed_text(table: Input[Dataset], params: str, tracking_uri: str,
               embeddings: Output[Dataset]) -> int:
    """Writes the embeddings Parquet file; returns the number of distinct reports."""
    from ecgssl.pipeline import steps
    s = steps.embed_text(table.path, embeddings.path, params, tracking_uri)
    embeddings.metadata.update({k: s[k] for k in ("texts", "rows", "model", "dim")})
    return s["texts"]
