"""Run the pipeline's components inside the image with kfp.local.DockerRunner:
source-version and ingest (per source) -> reports -> embed-text -> pretrain, the first half of
the pipeline's DAG, each task a container of the image, as a Kubeflow cluster would run them.

    python docker/components_in_image.py --image ghcr.io/ecgssl/ecgssl:0.1.0 \
        --pipeline-root /tmp/kfp-in-image [--source mitdb --source cinc2017] [--set K=V ...]

Needs a Docker API: a Docker daemon, or podman's (`podman system service --time=0
unix:///tmp/podman.sock &` and DOCKER_HOST=unix:///tmp/podman.sock). The image must exist
locally (DockerRunner pulls otherwise). The sample (data/sample) is bind-mounted read-only at
/data; the pipeline root is bind-mounted at its own path (DockerRunner does that) and handed to
the image's user (uid 10001). Pretrain runs the CPU image here (no GPU), so it stands in for the
GPU image. Prints one JSON line: the tasks' outputs and the seconds taken.
"""

# (no `from __future__ import annotations`: KFP reads the pipeline's annotations as types)

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UID = 10001


def run(image: str, pipeline_root: Path, sources: list[str], sets: list[str],
        sample: Path = ROOT / "data" / "sample") -> dict:
    from kfp import dsl, local

    import docker
    from ecgssl.pipeline import build
    # Components bound to their base image when compiling, from the kfp settings.
    k = build.settings().model_copy(update={"image": image, "gpu_image": image})
    c = build.components(k)
    ingest, reports, embed_text, pretrain = c.ingest, c.reports, c.embed_text, c.pretrain
    source_version = c.source_version
    no_tracking = ["tracking.enabled=false"]
    for c in (source_version, ingest, reports, embed_text, pretrain):
        assert c.component_spec.implementation.container.image == image, c.name

    params = build.pipeline_params([*no_tracking, "pretrain.max_steps=2",
                                    "pretrain.batch_size=8", "ingest.workers=2",
                                    "reports.workers=2", *sets])

    @dsl.pipeline(name="ecgssl-in-image")
    def in_image(data_root: str, sources: list, params: str, tracking_uri: str = ""):
        with dsl.ParallelFor(sources) as source:
            version = source_version(source=source, data_root=data_root, params=params)
            tables = ingest(source=source, data_root=data_root, params=params,
                            tracking_uri=tracking_uri, source_version=version.output)
        rep = reports(tables=dsl.Collected(tables.outputs["table"]), params=params,
                      tracking_uri=tracking_uri)
        emb = embed_text(table=rep.outputs["table"], params=params, tracking_uri=tracking_uri)
        pretrain(table=rep.outputs["table"], embeddings=emb.outputs["embeddings"],
                 params=params, tracking_uri=tracking_uri)

    root = pipeline_root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(root, UID, UID)          # the image's user writes the task outputs
    else:
        root.chmod(0o777)
    limits = [docker.types.Ulimit(name="nofile", soft=20000, hard=20000),
              docker.types.Ulimit(name="nproc", soft=4096, hard=4096)]
    data = docker.types.Mount(target="/data", source=str(sample.resolve()), type="bind",
                              read_only=True)
    # DockerRunner passes KFP's command as the container's CMD, so the image's ENTRYPOINT
    # (ecgssl) would stay in front of it: on Kubernetes the pod's `command` replaces it.
    runner = local.DockerRunner(entrypoint=["/usr/bin/env"], ulimits=limits, mounts=[data],
                                network_mode="none")
    local.init(runner=runner, pipeline_root=str(root), raise_on_error=True)
    t0 = time.perf_counter()
    in_image(data_root="/data", sources=sources, params=params)
    elapsed = time.perf_counter() - t0

    run_dir = max(root.glob("ecgssl-in-image-*"), key=lambda p: p.stat().st_mtime)
    out = {"image": image, "pipeline_run": str(run_dir), "elapsed_s": round(elapsed, 1),
           "tables": sorted(str(p.parent) for p in
                            run_dir.glob("for-loop-*/ingest/table/_manifest.json")),
           "reports": str(run_dir / "reports" / "table"),
           "embeddings": str(run_dir / "embed-text" / "embeddings"),
           "encoder": str(run_dir / "pretrain" / "model" / "encoder.safetensors")}
    missing = [k for k in ("reports", "embeddings", "encoder") if not Path(out[k]).exists()]
    if len(out["tables"]) != len(sources) or missing:
        raise RuntimeError(f"outputs missing after a successful run: {missing} {out}")
    # The task outputs are written by the image's user; only kfp.local's own bookkeeping
    # (this process, which may run as root) may be owned by someone else.
    out["not_uid_10001"] = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                                  if p.lstat().st_uid != UID)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default=None, help="default: params.yaml kfp.image")
    ap.add_argument("--pipeline-root", required=True, type=Path)
    ap.add_argument("--source", action="append", dest="sources")
    ap.add_argument("--set", action="append", dest="sets", default=[])
    a = ap.parse_args(argv)
    if a.image is None:
        from ecgssl.config import load_params
        a.image = load_params(ROOT / "params.yaml").kfp.image
    os.chdir(ROOT)                       # params.yaml, components/ and pipelines/ of this tree
    print(json.dumps(run(a.image, a.pipeline_root, a.sources or ["mitdb", "cinc2017"],
                         a.sets)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
