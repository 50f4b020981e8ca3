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
from ecgssl.data.sources.wfdb import WfdbSource

SOURCES: dict[str, type[Source]] = {
    "ptbxl": PtbxlSource,
    "mitdb": MitdbSource,
    "cinc2017": Cinc2017Source,
    "cinc2020": Cinc2020Source,
    "wfdb": WfdbSource,          # any folder of WFDB records (+ a labels CSV): not a default
}


def get_source(name: str, fs: float, options: dict | None = None) -> Source:
    """The source `name`, set up to produce a table at `fs` Hz (with the source's own
    `options`, e.g. the wfdb source's metadata CSV; only non-None ones are passed)."""
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; choose one of {', '.join(SOURCES)}")
    given = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = sorted(set(given) - set(SOURCES[name].option_names))
    if unknown:
        from ecgssl.errors import EcgsslError
        takes = {n: c.option_names for n, c in SOURCES.items() if c.option_names}
        raise EcgsslError(f"source {name} takes no option(s) {', '.join(unknown)}; options "
                          "(flags or ingest.source_options) are " + "; ".join(
                              f"{n}: {', '.join(o)}" for n, o in takes.items()))
    return SOURCES[name](fs, **given)


__all__ = ["SOURCES", "Recording", "Source", "Task", "get_source"]
