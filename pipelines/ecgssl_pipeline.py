"""The ecgssl Kubeflow pipeline (KFP v2): ingest (per source, in parallel) -> reports ->
embed-text -> pretrain (GPU) -> evaluate (per task) [+ fine-tune, GPU] -> register -> promote
(only when the gate passes). One MLflow parent run per pipeline run holds a child run per stage.

    ecgssl pipeline compile     # -> pipelines/compiled/ecgssl_pipeline.yaml (checked in)
    ecgssl pipeline run-local   # the same DAG with kfp.local on the bundled sample
    ecgssl pipeline submit --host https://kfp.example.org

Pipeline parameters default from params.yaml (the `kfp` section and every stage's section, in
`params`); resources, images, caching and retries are compile-time settings from its `kfp`
section.
"""

from kfp import dsl, kubernetes

from ecgssl.pipeline.build import load_component, pipeline_params, settings
from ecgssl.tracking import PIPELINE_RUN_ENV

K = settings()
PARAMS = pipeline_params()

mlflow_run = load_component("mlflow_run")
ingest = load_component("ingest").ingest
reports = load_component("reports").reports
embed_text = load_component("embed_text").embed_text
pretrain = load_component("pretrain").pretrain
evaluate = load_component("evaluate").evaluate
finetune = load_component("finetune").finetune
register = load_component("register").register
promote = load_component("promote")


def _task(task, cache: bool = True, gpu: bool = False):
    """Resources, caching, retries and the run-id label as env (so stage runs find the MLflow
    parent run without a per-run input that would defeat the cache) for every task."""
    task.set_caching_options(cache and K.caching)
    task.set_retry(K.retries, backoff_duration="30s", backoff_factor=2.0,
                   backoff_max_duration="600s")
    kubernetes.use_field_path_as_env(task, PIPELINE_RUN_ENV,
                                     "metadata.labels['pipeline/runid']")
    if gpu:
        task.set_cpu_request(K.gpu_cpu).set_memory_limit(K.gpu_memory)
        if K.gpu_limit:
            task.set_accelerator_type(K.accelerator).set_accelerator_limit(K.gpu_limit)
        for key, value in K.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for t in K.tolerations:
            kubernetes.add_toleration(task, **t)
    else:
        task.set_cpu_request(K.cpu).set_memory_limit(K.memory)
    return task


@dsl.pipeline(name="ecgssl", description="Self-supervised ECG pretraining (METS + ST), "
              "evaluation against a random twin, and registration with a promotion gate.")
def ecgssl_pipeline(data_root: str = K.data_root, sources: list = K.sources,
                    tasks: list = K.tasks, eval_modes: list = K.eval_modes,
                    run_finetune: bool = K.finetune, model_name: str = K.model_name,
                    tracking_uri: str = "", params: str = PARAMS):
    done = _task(mlflow_run.finish_run(tracking_uri=tracking_uri,
                                       pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                       params=params), cache=False)
    with dsl.ExitHandler(done, name="ecgssl-run"):
        start = _task(mlflow_run.start_run(tracking_uri=tracking_uri,
                                           pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                           params=params), cache=False)
        with dsl.ParallelFor(sources) as source:
            tables = _task(ingest(source=source, data_root=data_root, params=params,
                                  tracking_uri=tracking_uri).after(start))
        rep = _task(reports(tables=dsl.Collected(tables.outputs["table"]), params=params,
                            tracking_uri=tracking_uri))
        emb = _task(embed_text(table=rep.outputs["table"], params=params,
                               tracking_uri=tracking_uri))
        pre = _task(pretrain(table=rep.outputs["table"], embeddings=emb.outputs["embeddings"],
                             params=params, tracking_uri=tracking_uri), gpu=True)
        with dsl.ParallelFor(tasks) as task:
            ev = _task(evaluate(encoder=pre.outputs["model"], table=rep.outputs["table"],
                                task=task, modes=eval_modes, params=params,
                                tracking_uri=tracking_uri))
            with dsl.If(run_finetune == True):  # noqa: E712 (a KFP condition, not Python)
                _task(finetune(encoder=pre.outputs["model"], table=rep.outputs["table"],
                               task=task, params=params, tracking_uri=tracking_uri), gpu=True)
        reg = _task(register(encoder=pre.outputs["model"],
                             evaluations=dsl.Collected(ev.outputs["evaluation"]),
                             model_name=model_name, tracking_uri=tracking_uri,
                             parent_run_id=start.output), cache=False)
        gate = _task(promote.gate(model_name=model_name, params=params,
                                  tracking_uri=tracking_uri).after(reg), cache=False)
        with dsl.If(gate.output == True, name="gate-passed"):  # noqa: E712
            _task(promote.promote(model_name=model_name, params=params,
                                  tracking_uri=tracking_uri), cache=False)
