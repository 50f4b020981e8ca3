"""Multi-node pretraining on Kubeflow: a Kubeflow Trainer v2 `TrainJob` launched from the
pipeline (`pipeline.pretrain_nodes > 1`).

The pipeline's launcher task (components/pretrain_trainjob) builds the manifest here, creates
it with the Kubernetes API, waits for it, and hands the run folder on as its Model artifact.
Every node runs the project's GPU image and the same CLI as everywhere else:

    torchrun -m ecgssl.cli pretrain --data s3://… --text-emb s3://… --output s3://… --resume

torchrun takes the job's shape from the PET_* variables the `torch-distributed` runtime sets
(PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR/PORT). Why TrainJob and not the
Training Operator's PyTorchJob (kubeflow.org/v1): Trainer v2 replaced the Training Operator,
whose v1 CRDs are in maintenance only; Kubeflow 1.10+ platforms ship Trainer v2 (JobSet
underneath, Kueue-aware), and a TrainJob names a runtime the platform team maintains instead of
carrying a full pod template.

Shared storage: every rank streams its row groups of the table (byte ranges, no local copy of
it), every node pulls the embeddings, and global rank 0 writes the run, so all three live on
S3-compatible storage (s3://, or KFP's minio://). A pipeline root on
a node-local path cannot work and is refused with a clear error.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ecgssl.config import S3_ENV
from ecgssl.errors import EcgsslError
from ecgssl.storage import redact, stable_hash

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
PARAMS_ENV = "ECGSSL_PARAMS_JSON"
# Non-secret S3 and retry settings the launcher passes on to the nodes as they are. Credentials
# never go into the TrainJob object (anyone who can read it would see them): they come from
# `kfp.s3_secret` (secretKeyRef) or from the runtime's service account.
PASS_ENV = S3_ENV
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# The pipeline's params arrive as JSON text (a pipeline argument); each node writes them to a
# file for `--params` (JSON is YAML), then torchrun starts one `ecgssl pretrain` per GPU.
ENTRY = ('f="${TMPDIR:-/tmp}/ecgssl-params.json" && printf "%s" "$' + PARAMS_ENV + '" > "$f" '
         '&& exec torchrun -m ecgssl.cli pretrain --params "$f" "$@"')


@dataclass(frozen=True)
class NodeSpec:
    """The compile-time shape of the job (from params.yaml's `pipeline` and `kfp` sections)."""
    image: str
    num_nodes: int
    gpus_per_node: int
    accelerator: str = "nvidia.com/gpu"
    cpu: str = "8"
    memory: str = "32G"
    runtime: str = "torch-distributed"
    s3_secret: str = ""

    @classmethod
    def from_settings(cls, k, nodes: int) -> NodeSpec:
        """From a KfpConfig (images already resolved by build.settings) and the node count."""
        return cls(k.gpu_image, nodes, k.gpu_limit, k.accelerator, k.gpu_cpu, k.gpu_memory,
                   k.trainer_runtime, k.s3_secret)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NodeSpec:
        return cls(**json.loads(text))


def shared_uri(uri: str, what: str) -> str:
    """An artifact's URI as every node can read it: s3:// as is; KFP's default MinIO store
    (minio://bucket/key) as s3:// (the nodes reach MinIO through AWS_ENDPOINT_URL)."""
    uri = str(uri)
    if uri.startswith("s3://"):
        return uri
    if uri.startswith("minio://"):
        return "s3://" + uri[len("minio://"):]
    raise EcgsslError(
        f"multi-node pretraining (pipeline.pretrain_nodes > 1) needs the {what} on shared "
        f"S3-compatible storage, but its URI is {redact(uri)!r}: every node reads the table "
        "and embeddings, and rank 0 writes the model. Run the pipeline with an s3:// (or "
        "KFP's minio://) pipeline root, or set pipeline.pretrain_nodes: 1")


def job_name(output: str) -> str:
    """A TrainJob name fixed by the output URI: a retried launcher finds its own job (and
    resumes it) instead of starting a second one. RFC 1035, at most 63 characters."""
    return "ecgssl-pretrain-" + stable_hash(output)[:12]


def trainjob_manifest(spec: NodeSpec, name: str, namespace: str, table: str, embeddings: str,
                      output: str, params_json: str, env: dict[str, str] | None = None
                      ) -> dict:
    """The TrainJob (trainer.kubeflow.org/v1alpha1) running `ecgssl pretrain` under torchrun on
    `spec.num_nodes` nodes of `spec.gpus_per_node` GPUs each. Pure: no cluster needed."""
    if spec.num_nodes < 1:
        raise EcgsslError(f"pipeline.pretrain_nodes must be >= 1, got {spec.num_nodes}")
    for uri, what in ((table, "table"), (embeddings, "embeddings"), (output, "output")):
        if not str(uri).startswith("s3://"):
            shared_uri(uri, what)                          # raises the explanation
    limits = {"memory": spec.memory}
    if spec.gpus_per_node:
        limits[spec.accelerator] = str(spec.gpus_per_node)
    env_list = [{"name": PARAMS_ENV, "value": params_json}]
    env_list += [{"name": k, "value": v} for k, v in sorted((env or {}).items())]
    if spec.s3_secret:
        env_list += [{"name": k, "valueFrom": {"secretKeyRef": {"name": spec.s3_secret,
                                                                "key": k}}}
                     for k in SECRET_KEYS]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/name": "ecgssl",
                                "app.kubernetes.io/component": "pretrain"}},
        "spec": {
            "runtimeRef": {"name": spec.runtime, "apiGroup": GROUP,
                           "kind": "ClusterTrainingRuntime"},
            "trainer": {
                "image": spec.image,
                "command": ["sh", "-c", ENTRY, "ecgssl-pretrain"],
                # --resume: a job recreated after a failure goes on from its last checkpoint
                # in `output` (and starts fresh when there is none).
                "args": ["--data", table, "--text-emb", embeddings, "--output", output,
                         "--resume", "--no-progress"],
                "env": env_list,
                "numNodes": spec.num_nodes,
                "numProcPerNode": max(1, spec.gpus_per_node),
                "resourcesPerNode": {"requests": {"cpu": spec.cpu}, "limits": limits},
            },
        },
    }


def trainjob_state(obj: dict) -> tuple[str, str]:
    """("Complete" | "Failed" | "Suspended" | "Running", reason and message) from a TrainJob's
    status conditions."""
    conds = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []
             if str(c.get("status")) == "True"}
    for state in ("Failed", "Complete", "Suspended"):
        if state in conds:
            c = conds[state]
            return state, f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ")
    return "Running", ""


def current_namespace() -> str:
    """The namespace of the pod this runs in (KFP runs a user's pipeline in their profile
    namespace, where the TrainJob belongs); outside a cluster, the kubeconfig's context."""
    sa = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    if sa.is_file():
        return sa.read_text().strip()
    from kubernetes import config
    try:
        _, active = config.list_kube_config_contexts()
    except Exception as exc:     # no kubeconfig at all: say what is missing
        raise EcgsslError(f"cannot tell the Kubernetes namespace: not in a pod and no "
                          f"kubeconfig ({exc})") from None
    return active.get("context", {}).get("namespace", "default")


def _api():
    from kubernetes import client, config
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def _explain(exc, name: str, namespace: str) -> EcgsslError:
    where = f"TrainJob {namespace}/{name}"
    if exc.status == 404:
        return EcgsslError(f"{where}: the cluster has no {PLURAL}.{GROUP}/{VERSION}: install "
                           "Kubeflow Trainer v2 (or set pipeline.pretrain_nodes: 1)")
    if exc.status == 403:
        return EcgsslError(f"{where}: the pipeline's service account may not manage "
                           f"{PLURAL}.{GROUP}: grant it create/get/delete on them in "
                           f"{namespace}")
    return EcgsslError(f"{where}: the API server refused it ({exc.status} {exc.reason}): "
                       f"{exc.body}")


def run_trainjob(manifest: dict, poll_s: float = 30.0, api=None, log=print) -> dict:
    """Create the TrainJob (or attach to the one a previous attempt created), wait until it
    completes and return it; a failed job raises an EcgsslError with its reason and where to
    find the logs. A failed job left by an earlier attempt is deleted and created again,
    which resumes from its checkpoints."""
    from kubernetes.client.exceptions import ApiException
    api = api or _api()
    name, ns = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    ref = (GROUP, VERSION, ns, PLURAL)
    try:
        api.create_namespaced_custom_object(*ref, manifest)
        log(f"created TrainJob {ns}/{name} ({manifest['spec']['trainer']['numNodes']} nodes)")
    except ApiException as exc:
        if exc.status != 409:
            raise _explain(exc, name, ns) from None
        state, why = trainjob_state(api.get_namespaced_custom_object(*ref, name))
        log(f"TrainJob {ns}/{name} exists ({state}): attaching")
        if state == "Failed":
            log(f"deleting the failed TrainJob ({why}) and resuming it from its checkpoints")
            api.delete_namespaced_custom_object(*ref, name)
            _wait_gone(api, ref, name, poll_s)
            api.create_namespaced_custom_object(*ref, manifest)
    previous = _delete_when_terminated(api, ref, name, log)
    try:
        last = None
        while True:
            try:
                obj = api.get_namespaced_custom_object(*ref, name)
            except ApiException as exc:
                raise _explain(exc, name, ns) from None
            state, why = trainjob_state(obj)
            if state != last:
                log(f"TrainJob {ns}/{name}: {state}{f' ({why})' if why else ''}")
                last = state
            if state == "Complete":
                return obj
            if state == "Failed":
                raise EcgsslError(
                    f"TrainJob {ns}/{name} failed: {why or 'no reason given'}; node logs: "
                    f"kubectl logs -n {ns} -l jobset.sigs.k8s.io/jobset-name={name} --prefix")
            time.sleep(poll_s)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _delete_when_terminated(api, ref: tuple, name: str, log):
    """On SIGTERM (KFP terminates a cancelled run's pods so) delete the TrainJob, whose GPU
    nodes would otherwise train on for nobody. A launcher evicted from a draining node is
    terminated the same way and cannot tell: its retry creates the job again, which resumes
    from the last checkpoint pushed to S3. Returns the handler it replaced (None: not the
    main thread, where no handler can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_term(signum, _frame):
        log(f"terminated: deleting TrainJob {ref[2]}/{name}")
        try:
            api.delete_namespaced_custom_object(*ref, name)
        except Exception as exc:   # best effort: say so, and still stop
            log(f"could not delete TrainJob {ref[2]}/{name}: {exc}")
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, on_term)


def _wait_gone(api, ref: tuple, name: str, poll_s: float, timeout_s: float = 600) -> None:
    from kubernetes.client.exceptions import ApiException
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            api.get_namespaced_custom_object(*ref, name)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(min(poll_s, 5))
    raise EcgsslError(f"TrainJob {ref[2]}/{name} was not deleted within {timeout_s:.0f} s")


def passed_env() -> dict[str, str]:
    """The launcher's non-secret S3 settings, for the nodes."""
    return {k: os.environ[k] for k in PASS_ENV if os.environ.get(k)}
