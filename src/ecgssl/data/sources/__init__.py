"""The input sources `ecgssl ingest` knows: one registry, one uniform constructor.

Adding a source is one module with a `Source` subclass plus one entry in `SOURCES`; the CLI
choices, params validation (`pipeline.sources`), `dvc.yaml` and the Kubeflow pipeline read it.
"""

from __future__ import annotations

from ecgssl.data.sources.base import Recording, Source, Task
from ecgssl.data.sources.cinc2017 import Cinc2017Source
from ecgssl.data.sources.cinc2020 import Cinc2020Source
from ecgssl.data.sources.mitdb import MitdbSource
from ecgssl.data.sources.ptbxl import PtbxlSource

SOURCES: dict[str, type[Source]] = {
    "ptbxl": PtbxlSource,
    "mitdb": MitdbSource,
    "cinc2017": Cinc2017Source,
    "cinc2020": Cinc2020Source,
}


def get_source(name: str, fs: float) -> Source:
    """The source `name`, set up to produce a table at `fs` Hz."""
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; choose one of {', '.join(SOURCES)}")
    return SOURCES[name](fs)


__all__ = ["SOURCES", "Recording", "Source", "Task", "get_source"]
