"""The headline numbers of a pipeline run's output folder (what `ecgssl summary` prints)."""

from __future__ import annotations

import json
from pathlib import Path

from ecgssl.evaluate.stage import is_headline


def key_metrics(outputs: Path) -> list[tuple[str, str, float]]:
    """(metrics file relative to `outputs`, key, value) of pretraining losses and the headline
    evaluation metrics, in file order."""
    rows = []
    for f in sorted(Path(outputs).rglob("metrics.json")):
        for k, v in json.loads(f.read_text()).items():
            if (k.startswith("loss/") or is_headline(k)) and isinstance(v, float):
                rows.append((str(f.relative_to(outputs)), k, v))
    return rows
