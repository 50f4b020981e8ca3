"""KFP component: one source's WFDB records -> an ECG table (see README.md)."""

from kfp.dsl import Dataset, Input, Output

IMAGE = "image"  # the KfpConfig field naming this component's base image


def source_version(source: str, data_root: str, params: str) -> str:
    """The content fingerprint of `<data_root>/<source>` and its metadata CSV (never cached):
    ingest's cache key."""
    from ecgssl.pipeline import steps
    return steps.data_version(source, data_root, params)


def ingest(source: str, data_root: str, params: str, tracking_uri: str, source_version: str,
           table: Output[Dataset]) -> int:
    """Ingest `<data_root>/<source>` (a folder or s3:// prefix); returns the row count.
    `source_version` is only read by KFP's cache: new content under the same data_root."""
    from ecgssl.pipeline import steps
    m = steps.ingest(source, data_root, table.path, params, tracking_uri)
    table.metadata.update(steps.table_metadata(m))
    return m.rows


def ingest_part(source: str, part: str, data_root: str, params: str, tracking_uri: str,
                source_version: str, table: Output[Dataset]) -> int:
    """Slice `part` ("K/N") of `<data_root>/<source>`: its shards, no manifest yet (a
    ParallelFor task when `pipeline.ingest_parts` > 1); returns the slice's row count."""
    from ecgssl.pipeline import steps
    return steps.ingest_part(source, data_root, part, table.path, params, tracking_uri).rows


def ingest_merge(slices: Input[list[Dataset]], params: str, tracking_uri: str,
                 table: Output[Dataset]) -> int:
    """The slices of one source as its ECG table (manifest written once all are in)."""
    from ecgssl.pipeline import steps
    m = steps.ingest_merge([s.path for s in slices], table.path, params, tracking_uri)
    table.metadata.update(steps.table_metadata(m))
    return m.rows
