"""The ecgssl Kubeflow pipeline (KFP v2): ingest (per source, in parallel) -> reports ->
embed-text -> pretrain (GPU) -> evaluate (per task) [+ fine-tune, GPU] -> register -> promote
(only when the gate passes). One MLflow parent run per pipeline run holds a child run per stage.

    ecgssl pipeline compile     # -> pipelines/compiled/ecgssl_pipeline.yaml (checked in)
    ecgssl pipeline run-local   # the same DAG with kfp.local on the bundled sample
    ecgssl pipeline submit --host https://kfp.example.org

`build_pipeline` is given the compile's params: the parameters' defaults come from the
`pipeline` section (and every stage's section, in `params`); images, resources, caching and
retries from the `kfp` section. Nothing is read at import time.
"""

from kfp import dsl, kubernetes

from ecgssl.config import KfpConfig, PipelineConfig
from ecgssl.pipeline.build import components
from ecgssl.pipeline.trainjob import SECRET_KEYS, NodeSpec
from ecgssl.tracking import PIPELINE_RUN_ENV


def ingest_source(c, task, parts: int, after, **inputs):
    """One source's table: one `ingest` task, or with `parts` > 1 a ParallelFor of
    `ingest --part K/N` tasks (one folder each) and a merge into one table. Returns the task
    whose `table` output is the source's table."""
    def _after(t):
        return t.after(after) if after is not None else t
    # KFP's cache key holds the task's inputs, and data_root is the same string however its
    # content changed (new records under an s3:// prefix): a listing task, never cached, gives
    # ingest the source's content fingerprint as an input.
    version = task(_after(c.source_version(source=inputs["source"],
                                           data_root=inputs["data_root"],
                                           params=inputs["params"])), cache=False, s3=True)
    inputs = {**inputs, "source_version": version.output}
    if parts <= 1:
        return task(_after(c.ingest(**inputs)), s3=True)
    with dsl.ParallelFor([f"{i}/{parts}" for i in range(parts)]) as part:
        sl = task(_after(c.ingest_part(part=part, **inputs)), s3=True)
    return task(c.ingest_merge(slices=dsl.Collected(sl.outputs["table"]),
                               **{k: v for k, v in inputs.items()
                                  if k in ("params", "tracking_uri")}))


def build_pipeline(k: KfpConfig, defaults: PipelineConfig, params_json: str):
    c = components(k)

    def _task(task, cache: bool = True, gpu: bool = False, s3: bool = False):
        """Resources, caching, retries and the run-id label as env (so stage runs find the
        MLflow parent run without a per-run input that would defeat the cache); `s3`: the
        task reads data_root or shared storage itself, so it gets kfp.s3_secret and
        kfp.s3_env (the launcher of a TrainJob passes s3_env on to its nodes; one-node
        pretraining copies its checkpoints beside its artifact, steps.checkpoints_uri)."""
        task.set_caching_options(cache and k.caching)
        task.set_retry(k.retries, backoff_duration="30s", backoff_factor=2.0,
                       backoff_max_duration="600s")
        kubernetes.use_field_path_as_env(task, PIPELINE_RUN_ENV,
                                         "metadata.labels['pipeline/runid']")
        if gpu:
            task.set_cpu_request(k.gpu_cpu).set_memory_limit(k.gpu_memory)
            if k.gpu_limit:
                task.set_accelerator_type(k.accelerator).set_accelerator_limit(k.gpu_limit)
            for key, value in k.node_selector.items():
                kubernetes.add_node_selector(task, label_key=key, label_value=value)
            for t in k.tolerations:
                kubernetes.add_toleration(task, **t)
        else:
            task.set_cpu_request(k.cpu).set_memory_limit(k.memory)
        if s3 and k.s3_secret:
            kubernetes.use_secret_as_env(task, k.s3_secret, {key: key for key in SECRET_KEYS})
        for name, value in (k.s3_env.items() if s3 else ()):   # e.g. a MinIO endpoint
            task.set_env_variable(name, value)
        return task

    def cut(params, step: str) -> str:
        """The params `step` reads (steps.STEP_SECTIONS): KFP's cache key is a task's inputs,
        so with the whole params a new evaluation setting would rerun pretraining. Inside a
        ParallelFor, call it in the loop: kfp.local hands a loop the item in place of a task
        output passed in from outside."""
        return _task(c.step_params(params=params, step=step)).set_display_name(
            f"params: {step}").output

    @dsl.pipeline(name="ecgssl", description="Self-supervised ECG pretraining (METS + ST), "
                  "evaluation against a random twin, and registration with a promotion gate.")
    def ecgssl_pipeline(data_root: str = defaults.data_root, sources: list = defaults.sources,
                        tasks: list = defaults.tasks, eval_modes: list = defaults.eval_modes,
                        run_finetune: bool = defaults.finetune,
                        model_name: str = defaults.model_name, tracking_uri: str = "",
                        params: str = params_json):
        done = _task(c.finish_run(tracking_uri=tracking_uri,
                                  pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                  params=params), cache=False)
        with dsl.ExitHandler(done, name="ecgssl-run"):
            start = _task(c.start_run(tracking_uri=tracking_uri,
                                      pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                      params=params, data_root=data_root, sources=sources,
                                      tasks=tasks, eval_modes=eval_modes,
                                      run_finetune=run_finetune, model_name=model_name),
                          cache=False)
            with dsl.ParallelFor(sources) as source:
                tables = ingest_source(c, _task, defaults.ingest_parts, start, source=source,
                                       data_root=data_root, params=cut(params, "ingest"),
                                       tracking_uri=tracking_uri)
            rep = _task(c.reports(tables=dsl.Collected(tables.outputs["table"]),
                                  params=cut(params, "reports"), tracking_uri=tracking_uri))
            emb = _task(c.embed_text(table=rep.outputs["table"],
                                     params=cut(params, "embed_text"),
                                     tracking_uri=tracking_uri))
            pretrain_params = cut(params, "pretrain")
            if defaults.pretrain_nodes > 1:
                # Many nodes: a light task launches a Kubeflow Trainer TrainJob and waits for
                # it. Decided when compiling (not dsl.If), so the YAML holds one pretrain task.
                job = NodeSpec.from_settings(k, defaults.pretrain_nodes).to_json()
                pre = _task(c.pretrain_trainjob(table=rep.outputs["table"],
                                                embeddings=emb.outputs["embeddings"],
                                                params=pretrain_params,
                                                tracking_uri=tracking_uri, job=job), s3=True)
            else:
                pre = _task(c.pretrain(table=rep.outputs["table"],
                                       embeddings=emb.outputs["embeddings"],
                                       params=pretrain_params, tracking_uri=tracking_uri),
                            gpu=True, s3=True)
            with dsl.ParallelFor(tasks) as task:
                eval_params = cut(params, "evaluate")
                ev = _task(c.evaluate(encoder=pre.outputs["model"], table=rep.outputs["table"],
                                      task=task, modes=eval_modes, params=eval_params,
                                      tracking_uri=tracking_uri))
                with dsl.If(run_finetune == True):  # noqa: E712 (a KFP condition)
                    _task(c.finetune(encoder=pre.outputs["model"], table=rep.outputs["table"],
                                     task=task, params=eval_params,
                                     tracking_uri=tracking_uri),
                          gpu=True)
            reg = _task(c.register(encoder=pre.outputs["model"],
                                   evaluations=dsl.Collected(ev.outputs["evaluation"]),
                                   model_name=model_name, params=cut(params, "register"),
                                   tracking_uri=tracking_uri, parent_run_id=start.output),
                        cache=False)
            # The gate and promote judge the version this run registered (reg.output), not
            # whatever @challenger is by then: another run may have registered since.
            promote_params = cut(params, "promote")
            gate = _task(c.gate(model_name=model_name, model_uri=reg.output,
                                params=promote_params, tracking_uri=tracking_uri),
                         cache=False)
            with dsl.If(gate.output == True, name="gate-passed"):  # noqa: E712
                _task(c.promote(model_name=model_name, model_uri=reg.output,
                                params=promote_params, tracking_uri=tracking_uri),
                      cache=False)

    return ecgssl_pipeline
