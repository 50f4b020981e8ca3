"""KFP components: the promotion gate and the promotion it guards (see README.md)."""


IMAGE = "image"  # the KfpConfig field naming this component's base image


def gate(model_name: str, params: str, tracking_uri: str) -> bool:
    """True when @challenger beats @champion on the gate metric (same test data)."""
    from ecgssl.pipeline import steps
    return steps.gate(model_name, params, tracking_uri)


def promote(model_name: str, params: str, tracking_uri: str) -> str:
    """Move @champion to @challenger; returns the decision's reason."""
    from ecgssl.pipeline import steps
    return steps.promote(model_name, params, tracking_uri).reason
