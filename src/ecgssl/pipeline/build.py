"""Find, compile and run the Kubeflow pipeline (`pipelines/ecgssl_pipeline.py`).

    ecgssl pipeline compile                  # -> pipelines/compiled/ecgssl_pipeline.yaml
    ecgssl pipeline run-local                # the whole DAG with kfp.local, no cluster
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import yaml

from ecgssl.config import KfpConfig, Params, load_params, params_from_dict
from ecgssl.errors import EcgsslError
from ecgssl.tracking import PIPELINE_RUN_ENV

PIPELINE_FILE = Path("pipelines") / "ecgssl_pipeline.py"
COMPILED = Path("pipelines") / "compiled" / "ecgssl_pipeline.yaml"
# The same pipeline compiled for 2-node pretraining (a Kubeflow Trainer TrainJob), checked in:
#   ecgssl pipeline compile --set pipeline.pretrain_nodes=2 -o <this>
COMPILED_2NODES = Path("pipelines") / "compiled" / "ecgssl_pipeline_2nodes.yaml"
STAGES = ("mlflow_run", "params", "ingest", "reports", "embed_text", "pretrain",
          "pretrain_trainjob", "evaluate", "finetune", "register", "promote")


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


def components(k: KfpConfig) -> SimpleNamespace:
    """Every component function of components/*/component.py as a KFP component whose base
    image is the one these compile-time settings name (the module's IMAGE says which field)."""
    from kfp import dsl
    out = {}
    for stage in STAGES:
        module = load_component(stage)
        image = getattr(k, getattr(module, "IMAGE", "image"))
        for name, fn in vars(module).items():
            if inspect.isfunction(fn) and fn.__module__ == module.__name__ \
                    and not name.startswith("_"):
                out[name] = dsl.component(base_image=image, install_kfp_package=False)(fn)
    return SimpleNamespace(**out)


def load_pipeline(p: Params | None = None):
    """The pipeline function, built for these params (params.yaml by default)."""
    p = p or load_params()
    module = _load(repo_root() / PIPELINE_FILE, "ecgssl_pipelines.ecgssl_pipeline")
    return module.build_pipeline(settings(p), p.pipeline, pipeline_params(p=p))


def settings(p: Params | None = None) -> KfpConfig:
    """The `kfp` section, with the images overridable from the environment when compiling (so
    a CI system can point a build at the image it just pushed)."""
    k = (p or load_params()).kfp
    return k.model_copy(update={"image": os.environ.get("ECGSSL_IMAGE") or k.image,
                                "gpu_image": os.environ.get("ECGSSL_GPU_IMAGE") or k.gpu_image})


def pipeline_params(sets: list[str] = (), p: Params | None = None) -> str:
    """params.yaml (plus `section.key=value` overrides) as the pipeline's `params` argument:
    JSON text, because a KFP struct argument can hold no null (e.g. `embed_text.cache: null`)."""
    out = (p or load_params()).model_dump(mode="json")
    for item in sets:
        key, sep, value = item.partition("=")
        name, dot, field = key.strip().partition(".")
        if not sep or not dot or not field:
            raise EcgsslError(f"--set takes SECTION.KEY=VALUE, got {item!r}")
        out.setdefault(name, {})[field] = yaml.safe_load(value)
    params_from_dict(out, "--set")              # reject unknown keys and wrong types now
    return json.dumps(out, sort_keys=True)


def params_with(sets: list[str] = ()) -> Params:
    """params.yaml with `section.key=value` overrides, validated (for a compile variant)."""
    return params_from_dict(json.loads(pipeline_params(sets)), "--set")


# The pipeline's arguments (pipelines/ecgssl_pipeline.py) and the `pipeline` key each one
# defaults from (None: no such key), so that `--arg` is checked before anything runs.
PIPELINE_ARGS = {"data_root": "data_root", "sources": "sources", "tasks": "tasks",
                 "eval_modes": "eval_modes", "run_finetune": "finetune",
                 "model_name": "model_name", "tracking_uri": None, "params": None}


def pipeline_arguments(args: list[str] | None, sets: list[str] | None,
                       params_file: str | Path | None = None) -> dict:
    """`--arg NAME=VALUE`, `--set SECTION.KEY=VALUE` and `--params FILE` of the pipeline
    commands as the pipeline's arguments (values are YAML). A name the pipeline does not take,
    or a value its `pipeline` key would refuse (a source or task typo), is an error here, not
    a kfp traceback or a failed task later."""
    out = {}
    for a in args or []:
        k, sep, v = a.partition("=")
        if not sep:
            raise EcgsslError(f"--arg takes NAME=VALUE, got {a!r}")
        if k.strip() not in PIPELINE_ARGS:
            raise EcgsslError(f"--arg {k.strip()!r}: the pipeline takes no such argument; "
                              f"choose one of {', '.join(PIPELINE_ARGS)}")
        out[k.strip()] = yaml.safe_load(v)
    if sets or params_file is not None:
        out["params"] = pipeline_params(sets or [], load_params(params_file))
    given = {PIPELINE_ARGS[k]: v for k, v in out.items() if PIPELINE_ARGS[k]}
    if given:
        raw = json.loads(out["params"]) if "params" in out else \
            load_params(params_file).model_dump(mode="json")
        raw["pipeline"] = {**raw.get("pipeline", {}), **given}
        params_from_dict(raw, "--arg")
    return out


def compile_pipeline(output: str | Path | None = None, p: Params | None = None) -> Path:
    from kfp import compiler
    out = Path(output) if output else repo_root() / COMPILED
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(load_pipeline(p), str(out))
    return out


def is_up_to_date(target: Path, p: Params | None = None) -> bool:
    """Does the compiled file equal what compiling the code now gives?"""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        fresh = compile_pipeline(Path(tmp) / "p.yaml", p).read_text()
    return target.is_file() and target.read_text() == fresh


class _CacheHits(logging.Handler):
    """The tasks kfp.local served from its cache (it logs "Task NAME cache hit ...")."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.tasks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = re.match(r"Task (\S+) cache hit", record.getMessage())
        if m:
            self.tasks.append(m.group(1))


def run_local(pipeline_root: str | Path, arguments: dict, p: Params | None = None,
              cache: bool = False) -> dict:
    """Run the whole pipeline in this machine's Python with kfp.local (no Docker, no cluster).

    Tasks are subprocesses that inherit this environment, so $ECGSSL_PIPELINE_RUN names the
    run for MLflow as the pod label does on a cluster. With `cache`, a task whose inputs equal
    an earlier run's under the same pipeline root (its `.kfp_cache`) is not run again, as on a
    cluster (only the tasks the pipeline caches; `kfp.caching`). Returns {"pipeline_run",
    "pipeline_root", "elapsed_s", "cached"}; a failing task raises an error naming it."""
    from kfp import local
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               raise_on_error=True, enable_caching=cache)
    pipeline = load_pipeline(p)
    run = f"local-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    t0 = time.perf_counter()
    # The tasks are subprocesses: they receive the run's name as a pod does, in the environment.
    old = os.environ.get(PIPELINE_RUN_ENV)
    os.environ[PIPELINE_RUN_ENV] = run
    hits, root_log = _CacheHits(), logging.getLogger()
    level = root_log.level
    root_log.addHandler(hits)                # kfp.local says "cache hit" on the root logger,
    root_log.setLevel(min(level, logging.INFO))   # at INFO; only this handler listens there
    try:
        pipeline(**arguments)
    except RuntimeError as exc:
        raise EcgsslError(f"local pipeline run failed: {exc} (task logs above; outputs in "
                          f"{root})") from None
    finally:
        root_log.removeHandler(hits)
        root_log.setLevel(level)
        if old is None:
            os.environ.pop(PIPELINE_RUN_ENV, None)
        else:
            os.environ[PIPELINE_RUN_ENV] = old
    return {"pipeline_run": run, "pipeline_root": str(root),
            "elapsed_s": round(time.perf_counter() - t0, 1), "cached": hits.tasks}
