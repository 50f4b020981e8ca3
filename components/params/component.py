"""KFP component: the params one pipeline step reads (see README.md)."""

IMAGE = "image"  # the KfpConfig field naming this component's base image


def step_params(params: str, step: str) -> str:
    """The sections of `params` (params.yaml as JSON) that `step` reads, plus `tracking`
    (steps.STEP_SECTIONS): a cached task's key then moves only with its own settings."""
    from ecgssl.pipeline import steps
    return steps.step_params(params, step)
