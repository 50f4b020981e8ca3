"""KFP component: join the ingested tables and fill the English report column (see README.md)."""

from kfp.dsl import Dataset, Input, Markdown, Output

IMAGE = "image"  # the KfpConfig field naming this component's base image


def reports(tables: Input[list[Dataset]], params: str, tracking_uri: str,
            table: Output[Dataset], summary: Output[Markdown]) -> int:
    """Device reports translated and/or generated from the signal; returns the row count."""
    from ecgssl.pipeline import steps
    m = steps.reports([t.path for t in tables], table.path, params, tracking_uri)
    table.metadata.update(steps.table_metadata(m))
    with open(summary.path, "w") as fh:
        fh.write(steps.reports_markdown(m))
    return m.rows
