import pytest

from ecgssl.config import IngestConfig, Params, load_params, section
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


@pytest.mark.parametrize("name", ["af+flutter", "af(paroxysmal)", "mimic~af", "a//b"])
def test_a_user_task_name_mlflow_would_reject_is_refused_naming_it(tmp_path, name):
    """A task's name becomes MLflow param keys (evaluate.tasks.<name>.*) and metric keys
    (<mode>/<name>/...): one MLflow rejects would fail every tracked evaluate, and the
    `ecgssl pipeline repro` parent run, long after the params were loaded."""
    f = tmp_path / "params.yaml"
    f.write_text(f"evaluate:\n  tasks:\n    '{name}': {{dataset: cinc2017}}\n")
    with pytest.raises(ConfigError, match="task name"):
        load_params(f)


def test_user_task_names_that_pass_are_valid_mlflow_keys(tmp_path):
    from mlflow.utils.validation import _validate_metric_name, _validate_param_name
    name = "mimic-af_v2.1"
    f = tmp_path / "params.yaml"
    f.write_text(f"evaluate:\n  tasks:\n    {name}: {{dataset: cinc2017}}\n")
    assert name in load_params(f).evaluate.tasks
    _validate_param_name(f"evaluate.tasks.{name}.dataset")
    _validate_metric_name(f"zeroshot/{name}/macro_auroc")


@pytest.mark.parametrize("fractions", ["[0, 10]", "[10, 150]", "[-1]", "[]"])
def test_label_fractions_are_percentages(tmp_path, fractions):
    """evaluate.label_fractions took any number: 0 trained on one patient and 150 on all of
    them, each reported under its own key (f0, f150) as if it were that fraction."""
    f = tmp_path / "params.yaml"
    f.write_text(f"evaluate:\n  label_fractions: {fractions}\n")
    with pytest.raises(ConfigError, match="evaluate.label_fractions"):
        load_params(f)
    with pytest.raises(ConfigError, match="label_fractions"):
        section("evaluate", {"label_fractions": [0.0]}, params=Params())


# Sized for the 210-record bundled sample in params.yaml (its comments say so); the code's
# defaults are for real data.
SAMPLE_SIZED = {("pretrain", k) for k in ("max_steps", "batch_size", "warmup_steps",
                                          "checkpoint_every")}


def test_params_yaml_and_the_code_defaults_agree():
    """A params file with only some keys (README, "a first hour", step 4: `--params
    outputs/my.yaml` holding one task) takes every other key from the code's defaults, so they
    must be params.yaml's: evaluate.finetune_epochs was 5 there and 3 in params.yaml."""
    from pathlib import Path
    code = Params().model_dump()
    repo = load_params(Path(__file__).resolve().parents[1] / "params.yaml").model_dump()
    differ = [(s, k, code[s][k], repo[s][k]) for s in code for k in code[s]
              if code[s][k] != repo[s][k] and (s, k) not in SAMPLE_SIZED]
    assert not differ, differ
