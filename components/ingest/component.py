"""KFP component: one source's WFDB records -> an ECG table (see README.md)."""

from kfp.dsl import Dataset, Output

IMAGE = "image"  # the KfpConfig field naming this component's base image


def ingest(source: str, data_root: str, params: str, tracking_uri: str,
           table: Output[Dataset]) -> int:
    """Ingest `<data_root>/<source>` (a folder or s3:// prefix); returns the row count."""
    from ecgssl.pipeline import steps
    m = steps.ingest(source, data_root, table.path, params, tracking_uri)
    table.metadata.update(steps.table_metadata(m))
    return m.rows
