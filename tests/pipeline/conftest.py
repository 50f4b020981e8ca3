"""Fixtures of the pipeline tests."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def repo_params(monkeypatch):
    """Compile from the repository's own params.yaml, with no image override from the
    environment (the checked-in YAMLs are compiled that way)."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("ECGSSL_PARAMS", str(ROOT / "params.yaml"))
    monkeypatch.delenv("ECGSSL_IMAGE", raising=False)
    monkeypatch.delenv("ECGSSL_GPU_IMAGE", raising=False)
