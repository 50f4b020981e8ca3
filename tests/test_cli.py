"""Smoke tests of the real `ecgssl` entry point on the bundled sample."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

ECGSSL = shutil.which("ecgssl") or f"{sys.executable} -m ecgssl.cli"


def cli(*args, check=True, cwd=None):
    cmd = ECGSSL.split() + [str(a) for a in args]
    env = {**os.environ, "COLUMNS": "200"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    if check and p.returncode != 0:
        pytest.fail(f"{cmd} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def test_ingest_smoke(tmp_path, sample):
    out = tmp_path / "mitdb"
    p = cli("ingest", "mitdb", "--input", sample / "mitdb", "--output", out, "--workers", "2",
            "--no-progress")
    assert "rows (windows)" in p.stderr and "900" in p.stderr
    m = json.loads((out / "_manifest.json").read_text())
    assert m["rows"] == 900 and m["source"] == "mitdb"
    again = cli("ingest", "mitdb", "--input", sample / "mitdb", "--output", out, "--no-progress")
    assert "up to date" in again.stderr


def test_help_explains_the_stage():
    p = cli("ingest", "--help")
    for word in ("ptbxl", "mitdb", "cinc2017", "cinc2020", "--fs", "--window-s", "--workers",
                 "quarantined"):
        assert word in p.stdout


def test_user_errors_are_one_clear_line(tmp_path):
    p = cli("ingest", "mitdb", "--input", tmp_path / "missing", "--output", tmp_path / "o",
            check=False)
    assert p.returncode == 2
    assert "input path does not exist" in p.stderr and "Traceback" not in p.stderr
    p = cli("ingest", "nosuch", "--input", tmp_path, "--output", tmp_path / "o", check=False)
    assert p.returncode == 2 and "nosuch" in p.stderr


def test_params_file_errors_name_the_key(tmp_path, sample):
    bad = tmp_path / "params.yaml"
    bad.write_text("ingest:\n  fss: 100\n")
    p = cli("ingest", "mitdb", "--input", sample / "mitdb", "--output", tmp_path / "o",
            "--params", bad, check=False)
    assert p.returncode == 2 and "unknown key 'ingest.fss'" in p.stderr


# --- a review of the front door (rev2-cli): what users get wrong must be a clear error ---

def test_an_output_folder_that_is_a_file_is_a_clear_error(tmp_path, sample):
    """`--output` naming an existing file (a typo, a stale download) was a FileExistsError
    traceback with exit status 1; it is one line naming the path, exit 2."""
    taken = tmp_path / "table"
    taken.write_text("not a folder\n")
    p = cli("ingest", "cinc2017", "--input", sample / "cinc2017", "--output", taken,
            "--workers", "1", "--no-progress", check=False)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and str(taken) in p.stderr
    assert "not a folder" in p.stderr
    p = cli("ingest", "cinc2017", "--input", sample / "cinc2017", "--output", taken / "sub",
            "--workers", "1", "--no-progress", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr and str(taken) in p.stderr


def test_an_output_file_that_is_a_folder_is_refused_before_any_work(tmp_path, tables):
    """embed-text's and predict's --output are files; a folder there was an IsADirectoryError
    traceback (naming a temp file), exit status 1, after all the embedding or scoring."""
    taken = tmp_path / "out.parquet"
    taken.mkdir()
    p = cli("embed-text", "--input", tables["mitdb"], "--output", taken, "--no-progress",
            "--cache", tmp_path / "cache.parquet", check=False)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and str(taken) in p.stderr and "is a folder" in p.stderr
    p = cli("predict", "--model", tmp_path, "--data", tables["mitdb"], "--output", taken,
            "--no-progress", check=False)
    assert p.returncode == 2 and str(taken) in p.stderr and "is a folder" in p.stderr


@pytest.mark.parametrize("fraction", ["0", "-5", "250"])
def test_a_label_fraction_outside_0_100_is_refused_naming_it(tmp_path, tables, fraction):
    """--label-fraction bypassed the typed config: 0 trained on one patient, 250 on all of
    them, both reported as f0/f250 with exit status 0."""
    p = cli("evaluate", "--encoder", tmp_path, "--data", tables["cinc2017"], "--task",
            "cinc2017-af", "--mode", "probe", "--label-fraction", fraction, "--output",
            tmp_path / "eval", "--no-mlflow", "--no-progress", check=False)
    assert p.returncode == 2, p.stderr
    assert "label_fractions" in p.stderr and "Traceback" not in p.stderr


def test_summary_of_a_folder_that_is_not_there_fails(tmp_path):
    """`ecgssl summary DIR` (and the DVC metrics stage, `summary DIR --write metrics`) on a
    mistyped folder printed an empty table, or wrote empty metrics, with exit status 0."""
    missing = tmp_path / "outptus"
    p = cli("summary", missing, check=False)
    assert p.returncode == 2 and str(missing) in p.stderr
    p = cli("summary", missing, "--write", tmp_path / "metrics", check=False)
    assert p.returncode == 2 and str(missing) in p.stderr
    assert not (tmp_path / "metrics").exists()


def test_pretrain_help_names_every_default_and_register_the_real_model_name():
    """--batch-size, --lr and --precision alone had no [default: ...] in `pretrain --help`;
    `register --help` named ecgssl-mets+st-encoder, while params.yaml registers
    ecgssl-mets-st-encoder."""
    import re
    text = re.sub(r"\s+", " ", cli("pretrain", "--help").stdout)
    for key in ("batch_size", "lr", "precision", "epochs", "max_steps", "seed"):
        assert f"[default: pretrain.{key}]" in text, key
    from ecgssl.config import PipelineConfig
    name = PipelineConfig().model_name
    assert name in cli("register", "--help").stdout


def test_summary_of_a_folder_without_metrics_fails(tmp_path):
    """`ecgssl summary` in a checkout whose outputs/ holds only a stage's cache (evaluate
    writes outputs/cache/ into the working directory) printed an empty table, exit 0."""
    (tmp_path / "outputs" / "cache").mkdir(parents=True)
    p = cli("summary", tmp_path / "outputs", check=False)
    assert p.returncode == 2 and "no metrics.json under" in p.stderr
    assert "Traceback" not in p.stderr


def test_python_dash_m_ecgssl_is_the_cli():
    """`python -m ecgssl --help` was "No module named ecgssl.__main__" (exit 1)."""
    p = subprocess.run([sys.executable, "-m", "ecgssl", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "Usage: ecgssl" in p.stdout and "ingest" in p.stdout


@pytest.mark.parametrize("command", [["run-local"], ["submit", "--host", "http://127.0.0.1:9"]])
def test_an_unknown_pipeline_argument_is_refused_naming_it(tmp_path, command):
    """`--arg sorces=[mitdb]` was a kfp TypeError traceback (exit 1) from run-local, and went
    to the server as is from submit/schedule."""
    # in tmp_path: were the argument let through, run-local would write outputs/kfp there
    p = cli("pipeline", *command, "--arg", "sorces=[mitdb]", check=False, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "sorces" in p.stderr and "sources" in p.stderr


def test_a_pipeline_argument_of_the_wrong_kind_is_refused_naming_it(tmp_path):
    """A source typo in --arg ran the pipeline until the ingest task failed."""
    p = cli("pipeline", "run-local", "--arg", "sources=[mitbd]", check=False, cwd=tmp_path)
    assert p.returncode == 2 and "mitbd" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("workers", [0, 2])
def test_ctrl_c_says_what_is_left_and_how_to_finish(tmp_path, corpus, workers):
    """Ctrl-C mid-run exited 130 with no line at all; it says the run was interrupted and how
    to go on, and a --resume continues from the checkpoint it left. A terminal's Ctrl-C
    signals the whole process group, loader workers included: they printed torch's and
    multiprocessing's resource_sharer tracebacks, and once the run did not exit. The workers
    ignore it now and the main process stops them: one line, exit 130, soon."""
    import signal
    import time
    params = tmp_path / "params.yaml"
    params.write_text("pretrain:\n  method: st\n  width: 16\n  batch_size: 16\n"
                      f"  checkpoint_every: 2\n  max_steps: 100000\n  loader_workers: {workers}\n")
    cmd = ECGSSL.split() + ["pretrain", "--data", str(corpus["table"]), "--output",
                            str(tmp_path / "run"), "--params", str(params), "--no-mlflow",
                            "--no-progress"]
    # Its own session, as a terminal's job: killpg reaches the workers as Ctrl-C does. Ctrl-C
    # handled by default, as in a terminal: under a non-interactive shell's `cmd &` (a CI
    # runner) SIGINT arrives ignored, and an ignored signal stays ignored across exec.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 240
        while not list((tmp_path / "run").glob("checkpoints/step-*/state.pt")) and \
                proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        t0 = time.time()
        _, err = proc.communicate(timeout=60)
        assert time.time() - t0 < 30, err          # workers join within 5 s each
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "pretrain interrupted" in err and "--resume" in err and "Traceback" not in err
    last = max(int(c.name[len("step-"):]) for c in (tmp_path / "run/checkpoints").glob("step-*"))
    p = cli("pretrain", "--data", corpus["table"], "--output", tmp_path / "run", "--params",
            params, "--max-steps", last + 2, "--resume", "--no-mlflow", "--no-progress")
    assert f"{last + 2} steps" in p.stderr
    assert json.loads((tmp_path / "run/metrics.json").read_text())["resumed_at"] == last
