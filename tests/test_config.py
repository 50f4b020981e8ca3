import pytest

from ecgssl.config import IngestConfig, load_params, section
from ecgssl.errors import ConfigError


def test_defaults_without_a_params_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ECGSSL_PARAMS", raising=False)
    cfg = section("ingest")
    assert isinstance(cfg, IngestConfig) and (cfg.fs, cfg.window_s, cfg.workers) == (100, 10, None)


def test_repo_params_yaml_is_valid():
    from pathlib import Path
    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    assert p.ingest.fs == 100 and p.ingest.window_s == 10


def test_overrides_apply_and_are_validated(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("ingest:\n  fs: 250\n")
    assert section("ingest", {"fs": None, "window_s": 5}, f).model_dump()["fs"] == 250
    assert section("ingest", {"window_s": 5}, f).window_s == 5
    with pytest.raises(ConfigError, match="'fs'"):
        section("ingest", {"fs": -1}, f)


@pytest.mark.parametrize("text,message", [
    ("ingest:\n  fss: 100\n", "unknown key 'ingest.fss'"),
    ("ingest:\n  fs: fast\n", "'ingest.fs'"),
    ("nosuchstage: {}\n", "unknown key 'nosuchstage'"),
    ("- a list\n", "expected a mapping"),
    ("ingest: [unclosed\n", "not valid YAML"),
])
def test_bad_params_are_rejected_with_the_key_named(tmp_path, text, message):
    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_params(f)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
