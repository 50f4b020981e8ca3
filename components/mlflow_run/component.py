"""KFP components that open and close the pipeline's MLflow parent run (see README.md)."""

from kfp import dsl

IMAGE = "image"  # the KfpConfig field naming this component's base image


def start_run(tracking_uri: str, pipeline_run: str, params: str, data_root: str,
              sources: list, tasks: list, eval_modes: list, run_finetune: bool,
              model_name: str) -> str:
    """Open the parent run of this pipeline run; returns its id ("" when tracking is off).
    The pipeline's run arguments are logged over params' `pipeline` section."""
    from ecgssl.pipeline import steps
    return steps.start(tracking_uri, pipeline_run, params, {
        "data_root": data_root, "sources": sources, "tasks": tasks, "eval_modes": eval_modes,
        "run_finetune": run_finetune, "model_name": model_name})


def finish_run(tracking_uri: str, pipeline_run: str, params: str,
               status: dsl.PipelineTaskFinalStatus) -> str:
    """Exit handler: close the parent run as FINISHED, FAILED or KILLED."""
    from ecgssl.pipeline import steps
    return steps.finish(tracking_uri, pipeline_run, status.state, params)
