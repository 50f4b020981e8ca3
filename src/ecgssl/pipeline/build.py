"""Find, compile and run the Kubeflow pipeline (`pipelines/ecgssl_pipeline.py`).

    ecgssl pipeline compile                  # -> pipelines/compiled/ecgssl_pipeline.yaml
    ecgssl pipeline run-local                # the whole DAG with kfp.local, no cluster
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import yaml

from ecgssl.config import KfpConfig, load_params, params_from_dict
from ecgssl.errors import EcgsslError
from ecgssl.tracking import pipeline_env

PIPELINE_FILE = Path("pipelines") / "ecgssl_pipeline.py"
COMPILED = Path("pipelines") / "compiled" / "ecgssl_pipeline.yaml"


def repo_root() -> Path:
    """The checkout holding pipelines/ and components/: the working directory or a parent of
    it, else the one the package was installed from (editable install)."""
    here = Path.cwd().resolve()
    for d in (here, *here.parents, *Path(__file__).resolve().parents):
        if (d / PIPELINE_FILE).is_file() and (d / "components").is_dir():
            return d
    raise EcgsslError(f"cannot find {PIPELINE_FILE} and components/ in {here} or its parents; "
                      "run this from an ecgssl checkout")


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module          # kfp.local re-reads the component source through it
    spec.loader.exec_module(module)
    return module


def load_component(stage: str):
    """The module `components/<stage>/component.py`."""
    path = repo_root() / "components" / stage / "component.py"
    if not path.is_file():
        raise EcgsslError(f"component {stage!r} not found at {path}")
    return _load(path, f"ecgssl_components.{stage}")


def load_pipeline():
    return _load(repo_root() / PIPELINE_FILE, "ecgssl_pipelines.ecgssl_pipeline").ecgssl_pipeline


def settings() -> KfpConfig:
    """The `kfp` section of params.yaml, with the images overridable from the environment (so a
    CI system can point a build at the image it just pushed)."""
    k = load_params().kfp
    return k.model_copy(update={"image": os.environ.get("ECGSSL_IMAGE") or k.image,
                                "gpu_image": os.environ.get("ECGSSL_GPU_IMAGE") or k.gpu_image})


def pipeline_params(sets: list[str] = ()) -> str:
    """params.yaml (plus `section.key=value` overrides) as the pipeline's `params` argument:
    JSON text, because a KFP struct argument can hold no null (e.g. `embed_text.cache: null`)."""
    out = load_params().model_dump(mode="json")
    for item in sets:
        key, sep, value = item.partition("=")
        name, dot, field = key.strip().partition(".")
        if not sep or not dot or not field:
            raise EcgsslError(f"--set takes SECTION.KEY=VALUE, got {item!r}")
        out.setdefault(name, {})[field] = yaml.safe_load(value)
    params_from_dict(out, "--set")              # reject unknown keys and wrong types now
    return json.dumps(out, sort_keys=True)


def compile_pipeline(output: str | Path | None = None) -> Path:
    from kfp import compiler
    out = Path(output) if output else repo_root() / COMPILED
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(load_pipeline(), str(out))
    return out


def run_local(pipeline_root: str | Path, arguments: dict) -> dict:
    """Run the whole pipeline in this machine's Python with kfp.local (no Docker, no cluster).

    Tasks are subprocesses that inherit this environment, so $ECGSSL_PIPELINE_RUN names the
    run for MLflow as the pod label does on a cluster. Returns {"pipeline_run",
    "pipeline_root", "elapsed_s"}; a failing task raises an error naming it."""
    from kfp import local
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               raise_on_error=True)
    pipeline = load_pipeline()
    run = f"local-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    t0 = time.perf_counter()
    with pipeline_env(None, run):
        try:
            pipeline(**arguments)
        except RuntimeError as exc:
            raise EcgsslError(f"local pipeline run failed: {exc} (task logs above; outputs in "
                              f"{root})") from None
    return {"pipeline_run": run, "pipeline_root": str(root),
            "elapsed_s": round(time.perf_counter() - t0, 1)}
