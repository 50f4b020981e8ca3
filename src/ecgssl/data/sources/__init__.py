"""The input sources `ecgssl ingest` knows."""

from __future__ import annotations

from ecgssl.data.sources.base import Recording, Source, Task
from ecgssl.data.sources.cinc2017 import Cinc2017Source
from ecgssl.data.sources.cinc2020 import Cinc2020Source
from ecgssl.data.sources.mitdb import MitdbSource
from ecgssl.data.sources.ptbxl import PtbxlSource

SOURCES = ("ptbxl", "mitdb", "cinc2017", "cinc2020")


def get_source(name: str, fs: float) -> Source:
    if name == "ptbxl":
        return PtbxlSource(fs)
    classes = {"mitdb": MitdbSource, "cinc2017": Cinc2017Source, "cinc2020": Cinc2020Source}
    if name not in classes:
        raise ValueError(f"unknown source {name!r}; choose one of {', '.join(SOURCES)}")
    return classes[name]()


__all__ = ["SOURCES", "Recording", "Source", "Task", "get_source"]
