"""Submit the compiled pipeline to a Kubeflow Pipelines server, once or on a schedule.

    ecgssl pipeline submit --host https://kfp.example.org --experiment ecgssl
    ecgssl pipeline schedule --host https://kfp.example.org --cron "0 3 * * 1"

Requests go through the official `kfp.Client`; the bearer token (if the server needs one) comes
from an environment variable ($KFP_TOKEN by default), never from a file in git or a flag.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from ecgssl.errors import EcgsslError


def _client(host: str, token_env: str):
    token = os.environ.get(token_env) or None
    url = host.rstrip("/") + "/apis/v2beta1/healthz"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token
                                 else {})
    try:  # kfp.Client retries a dead host for ~25 s; say what is wrong at once instead
        urllib.request.urlopen(req, timeout=10)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise EcgsslError(f"Kubeflow Pipelines at {host} refused the credentials (HTTP "
                              f"{exc.code}); put a valid token in ${token_env}") from None
        raise EcgsslError(f"Kubeflow Pipelines at {host} answered {exc.code} on {url}; is this "
                          "the KFP API endpoint?") from None
    except (urllib.error.URLError, OSError) as exc:
        raise EcgsslError(f"Kubeflow Pipelines at {host} is not reachable ({exc})") from None
    import kfp
    return kfp.Client(host=host, existing_token=token)


def _package(package: str | Path) -> str:
    p = Path(package)
    if not p.is_file():
        raise EcgsslError(f"compiled pipeline not found: {p}; run `ecgssl pipeline compile`")
    return str(p)


# An image reference whose content cannot change: a digest, or docker/build.sh's
# <version>-<git sha>[-gpu] tag. build.sh pushes <version>[-gpu] again on every build.
IMMUTABLE_IMAGE = re.compile(r"@sha256:[0-9a-f]{64}$|:[^:/@]*-[0-9a-f]{12}(-gpu)?$")


def check_cache_keys(package: str | Path) -> None:
    """Refuse a package whose cached tasks run a mutable image tag. KFP's cache key holds the
    image reference, not its digest (kubeflow/pipelines#13862), and the components' logic is
    in the image (src/ecgssl), not in the YAML: after a fix is pushed under the same tag, a
    cached task would hand back the old code's result."""
    import yaml
    spec = next(yaml.safe_load_all(Path(package).read_text()))
    comps, execs = spec.get("components", {}), spec.get("deploymentSpec", {}).get("executors", {})
    stale = set()
    for dag in [spec["root"].get("dag", {}), *(c.get("dag", {}) for c in comps.values())]:
        for task in dag.get("tasks", {}).values():
            label = comps.get(task["componentRef"]["name"], {}).get("executorLabel")
            image = execs.get(label, {}).get("container", {}).get("image", "")
            if task.get("cachingOptions", {}).get("enableCache") and image and \
                    not IMMUTABLE_IMAGE.search(image):
                stale.add(image)
    if stale:
        raise EcgsslError(
            f"{package} caches task results but runs {', '.join(sorted(stale))}, a tag that "
            "docker/build.sh moves on every build: KFP would reuse results of older code. "
            "Compile with the immutable tags (`docker/build.sh --print-tags`): "
            "ECGSSL_IMAGE=...:<version>-<sha> ECGSSL_GPU_IMAGE=...:<version>-<sha>-gpu ecgssl "
            "pipeline compile -o FILE, then --package FILE; or compile with "
            "--set kfp.caching=false")


def cron6(expr: str) -> str:
    """KFP wants 6-field cron (seconds first); accept the usual 5-field form too."""
    fields = expr.split()
    if len(fields) == 5:
        return "0 " + " ".join(fields)
    if len(fields) == 6:
        return " ".join(fields)
    raise EcgsslError(f"--cron {expr!r}: expected 5 fields (min hour day month weekday) or 6 "
                      "(with seconds first)")


def submit(host: str, package: str | Path, experiment: str, run_name: str | None,
           arguments: dict, token_env: str = "KFP_TOKEN") -> dict:
    check_cache_keys(_package(package))
    client = _client(host, token_env)
    r = client.create_run_from_pipeline_package(
        _package(package), arguments=arguments, run_name=run_name, experiment_name=experiment)
    return {"run_id": r.run_id, "url": f"{host.rstrip('/')}/#/runs/details/{r.run_id}"}


def schedule(host: str, package: str | Path, cron: str, experiment: str, name: str,
             arguments: dict, token_env: str = "KFP_TOKEN") -> dict:
    cron = cron6(cron)
    check_cache_keys(_package(package))
    client = _client(host, token_env)
    exp = client.create_experiment(experiment)
    r = client.create_recurring_run(
        experiment_id=exp.experiment_id, job_name=name, cron_expression=cron,
        pipeline_package_path=_package(package), params=arguments, max_concurrency=1,
        no_catchup=True)
    return {"recurring_run_id": r.recurring_run_id, "cron": cron}
