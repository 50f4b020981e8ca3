"""Register, gate and serve models against a real MLflow server (SQLite store, loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import mlflow
import numpy as np
import pytest
from servers import BIN, free_port, stop, wait_http

from ecgssl.config import EvaluateConfig, PretrainConfig
from ecgssl.data.table import read_manifest
from ecgssl.errors import EcgsslError
from ecgssl.evaluate.stage import run_evaluate
from ecgssl.registry.pyfunc import ECGModel
from ecgssl.registry.register import promote, register
from ecgssl.tracking import RunContext
from ecgssl.train.loop import pretrain

pytestmark = pytest.mark.integration
GATE = "zeroshot/cinc2017-af/macro_auroc"


@pytest.fixture(scope="module")
def evaluated(corpus, tables, tmp_path_factory):
    root = tmp_path_factory.mktemp("reg")
    pretrain(corpus["table"], corpus["text_emb"], root / "enc", PretrainConfig(
        method="mets+st", width=16, batch_size=16, max_steps=4, warmup_steps=1),
        progress=False)
    run_evaluate(root / "enc", tables["cinc2017"], "cinc2017-af", ["zeroshot", "probe"],
                 root / "eval", EvaluateConfig(probe_c=[0.1], bootstrap=20,
                                               cache=None),
                 fractions=[100], progress=False)
    return root


def cli(*args, env):
    return subprocess.run([str(BIN / "ecgssl"), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


def test_register_gate_load_and_serve(evaluated, corpus, mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server,
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}   # serve execs uvicorn from PATH
    name = "ecgssl-test-encoder"
    ctx = RunContext(enabled=True, tracking_uri=mlflow_server)
    metrics = evaluated / "eval" / "metrics.json"
    v1 = register(evaluated / "enc", name, ctx, metrics_files=[metrics])
    p = cli("promote", "--name", name, "--metric", GATE, env=env)
    assert p.returncode == 0 and "no champion yet" in p.stderr, p.stderr

    # Same numbers again: not a win, the champion stays (exit 3).
    v2 = register(evaluated / "enc", name, ctx, metrics_files=[metrics])
    p = cli("promote", "--name", name, "--metric", GATE, env=env)
    assert p.returncode == 3 and "does not win" in p.stderr, p.stderr
    client = mlflow.MlflowClient(mlflow_server)
    assert client.get_model_version_by_alias(name, "champion").version == v1.version
    assert client.get_model_version_by_alias(name, "challenger").version == v2.version

    # A challenger measured better on the same test data wins.
    better = tmp_path / "eval"
    better.mkdir()
    m = json.loads(metrics.read_text())
    m[GATE] += 0.05
    (better / "metrics.json").write_text(json.dumps(m))
    (better / "test_data.json").write_text((evaluated / "eval/test_data.json").read_text())
    v3 = register(evaluated / "enc", name, ctx, metrics_files=[better / "metrics.json"])
    d = promote(name, GATE, ctx, min_delta=0.01)
    assert d.promoted and d.challenger_value == pytest.approx(d.champion_value + 0.05)
    champ = client.get_model_version_by_alias(name, "champion")
    assert champ.version == v3.version
    assert champ.tags["promotion.decision"] == "promoted"
    assert champ.tags["git.commit"] and champ.tags["params.hash"]
    assert champ.tags["data.fingerprint"] == read_manifest(corpus["table"])["input_fingerprint"]
    old = client.get_model_version(name, v1.version)
    assert old.tags["promotion.role"] == "champion" and "promotion.champion_value" in old.tags

    # Other test data: not comparable, refused.
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text(json.dumps({**m, GATE: 0.99}))
    (other / "test_data.json").write_text(json.dumps({"cinc2017-af": "0000"}))
    register(evaluated / "enc", name, ctx, metrics_files=[other / "metrics.json"])
    d = promote(name, GATE, ctx)
    assert not d.promoted and "different cinc2017-af test data" in d.reason

    # Load the champion in a fresh process and predict.
    code = (f"import mlflow, numpy as np; m = mlflow.pyfunc.load_model('models:/{name}@champion'); "
            "x = np.zeros((3, 12, 1000), np.float32); x[:, 1] = np.sin(np.arange(1000) / 9); "
            "print(m.predict(x).shape, m.predict(x, params={'labels': ['atrial fibrillation', "
            "'sinus rhythm']}).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300, check=True).stdout
    assert "(3, 128) (3, 2)" in out, out          # width-16 resnet1d18: 128-d embeddings

    # Serve it over HTTP (no conda: the local environment).
    port = free_port()
    proc = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m",
                             f"models:/{name}@champion", "--env-manager", "local", "-h",
                             "127.0.0.1", "-p", str(port)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, timeout=180)
        body = json.dumps({"inputs": np.zeros((2, 12, 1000)).tolist(),
                           "params": {"labels": ["normal ecg", "atrial fibrillation",
                                                 "left bundle branch block"]}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                     {"Content-Type": "application/json"})
        preds = np.array(json.loads(urllib.request.urlopen(req, timeout=120).read())
                         ["predictions"])
        assert preds.shape == (2, 3)
        np.testing.assert_allclose(preds.sum(1), 1.0, atol=1e-4)
    finally:
        stop(proc)


def test_classifier_model_and_input_validation(evaluated, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    r = register(evaluated / "enc", "ecgssl-cinc2017-af-classifier",
                 RunContext(enabled=True, tracking_uri=mlflow_server),
                 classifier=evaluated / "eval/classifier-probe",
                 metrics_files=[evaluated / "eval/metrics.json"])
    model = mlflow.pyfunc.load_model(r.model_uri)
    x = np.zeros((4, 12, 1000), np.float32)
    x[:, 0] = np.sin(np.arange(1000) / 9)
    probs = model.predict(x)
    assert probs.shape == (4, 4)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    raw = ECGModel()
    raw._load(evaluated / "enc")
    for bad, msg in [(np.zeros((2, 8, 1000), np.float32), "has 8 leads"),
                     (np.zeros((2, 12, 500), np.float32), "500 samples per lead"),
                     (np.zeros((12,), np.float32), r"must be \[N, 12, 1000\]"),
                     (np.full((1, 12, 1000), np.nan, np.float32), "NaN/inf"),
                     (np.array([["a"] * 1000] * 12), "numeric")]:
        with pytest.raises(EcgsslError, match=msg):
            raw.predict(None, bad)
