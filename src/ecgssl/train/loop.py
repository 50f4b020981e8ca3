"""Pretraining: METS, ST or both on one encoder, on CPU, one GPU or many (torchrun).

    ecgssl pretrain --data outputs/reports --text-emb outputs/text_emb.parquet \\
        --method mets+st --output outputs/pretrain
    torchrun --nproc-per-node 4 -m ecgssl.cli pretrain ...      # DDP, global batch split

Every random draw of step s (batch order, masking, lead shuffling) is seeded by (seed, s) and
made for the global batch, so a resumed run and a DDP run reproduce the single-process run.
Batches stream from the table through loader worker processes (train/data.py); masking and
shuffling run on the device; losses stay on the device until every `log_every` steps (the
loop's only host syncs, where a non-finite loss is caught).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import closing, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel

from ecgssl.config import PretrainConfig
from ecgssl.data.preprocess import VERSION as PREPROCESS_VERSION
from ecgssl.data.table import read_manifest
from ecgssl.distributed import SINGLE, DistState, init_from_env, same_on_every_rank
from ecgssl.errors import EcgsslError
from ecgssl.models.pretrain import PretrainModel, random_lead_subsets, st_inputs
from ecgssl.progress import bar as progress_bar
from ecgssl.storage import RUN_FILE, encoder_hash, exclusive_beside, write_json
from ecgssl.tracking import ENCODER_TAG, OFF, RunContext, flatten, start_run
from ecgssl.train import checkpoint
from ecgssl.train.data import Plan, PretrainData, loader
from ecgssl.train.schedule import warmup_cosine


@dataclass(frozen=True)
class PretrainResult:
    loss_first: float         # mean loss of the first 10 steps (first half if under 20)
    loss_final: float         # ... of the last 10 (last half)
    samples_per_s: float | None   # None when a resume found nothing left to run
    steps: int
    resumed_at: int
    output: str

    def metrics(self) -> dict:
        """metrics.json's keys (what DVC and MLflow show)."""
        out = {"loss/first": self.loss_first, "loss/final": self.loss_final,
               "throughput/samples_per_s": self.samples_per_s, "steps": self.steps,
               "resumed_at": self.resumed_at}
        if self.samples_per_s is None:
            del out["throughput/samples_per_s"]
        return out


def pick_device() -> torch.device:
    import os
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))   # torchrun's, read once here
    return torch.device("cuda", local_rank % torch.cuda.device_count()) \
        if torch.cuda.is_available() else torch.device("cpu")


def build(cfg: PretrainConfig, n_samples: int, text_dim: int, device: torch.device):
    torch.manual_seed(cfg.seed)
    model = PretrainModel(cfg.method, cfg.encoder, n_samples, text_dim, cfg.proj_dim,
                          cfg.init_temperature, cfg.width).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]   # norms, biases, scale
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    return model, opt


def step_losses(net, model: PretrainModel, batch: dict, cfg: PretrainConfig, step: int,
                fs: int, dist: DistState = SINGLE, generator: torch.Generator | None = None
                ) -> dict[str, torch.Tensor]:
    """Losses of step `step` on this rank's slice `batch` of the global batch. The masking and
    shuffling draws are made for the global batch from (seed, step) on the batch's device, and
    each rank uses its rows: no host round trip, same draws in one process or many."""
    device = batch["x"].device
    gen = generator or torch.Generator(device)
    gen.manual_seed(cfg.seed * 1_000_003 + step)
    rows, total = Plan(cfg.batch_size, rank=dist.rank, world_size=dist.world_size).mine, \
        cfg.batch_size
    segment = max(1, round(cfg.mask_segment_s * fs))
    aug = st_inputs(batch["x"], batch["mask"], cfg.mask_ratio, segment, gen, rows, total) \
        if model.st is not None else {}
    if model.mets is not None and cfg.lead_subset_p > 0:
        batch = {**batch, "mets_mask": random_lead_subsets(batch["mask"], cfg.lead_subset_p,
                                                           gen, rows, total)}
    weights = {"mets": cfg.mets_weight, "st": cfg.st_weight, "lead": cfg.lead_weight}
    return net(batch, aug, weights, dist)


def _read_out(pending: list[torch.Tensor], names: list[str], first_step: int,
              dist: DistState, cfg: PretrainConfig) -> list[list[float]]:
    """The losses of the steps since the last read-out, averaged over ranks: one collective
    and one host sync for all of them; a non-finite loss stops the run, naming its step."""
    t = torch.stack(pending)
    if dist.active:
        torch.distributed.all_reduce(t)
        t /= dist.world_size
    rows = t.cpu().tolist()
    for i, r in enumerate(rows):
        loss = r[names.index("loss")]
        if not math.isfinite(loss):
            raise EcgsslError(f"non-finite loss ({loss}) at step {first_step + i}: lower "
                              f"pretrain.lr (now {cfg.lr}) or check the input table")
    return rows


def pretrain(data: str | Path, text_emb: str | Path | None, output: str | Path,
             cfg: PretrainConfig, resume: bool = False, progress: bool = True,
             ctx: RunContext = OFF, on_checkpoint: Callable[[], None] | None = None
             ) -> PretrainResult | None:
    """Pretrain; rank 0 returns the result (other ranks None). `on_checkpoint` runs on rank 0
    after each checkpoint is written (the CLI pushes an s3:// run with it)."""
    out = Path(output)
    device = pick_device()
    dist = init_from_env(device)
    # Rank 0 alone writes the folder; a second run into it (say `dvc repro` beside a manual
    # run) would interleave checkpoints with ours and prune them as "older": it refuses.
    try:
        with exclusive_beside(out, "pretrain") if dist.rank == 0 else nullcontext():
            return _pretrain(data, text_emb, out, cfg, resume, progress, ctx, on_checkpoint,
                             device, dist)
    finally:
        # A group left to interpreter shutdown can abort the process ("terminate called
        # without an active exception", exit -6) after a successful run: torchrun then
        # reports the node as failed.
        if dist.active:
            torch.distributed.destroy_process_group()


def _pretrain(data, text_emb, out: Path, cfg: PretrainConfig, resume: bool, progress: bool,
              ctx: RunContext, on_checkpoint, device, dist) -> PretrainResult | None:
    world, me = dist.world_size, dist.rank
    if cfg.batch_size % world:
        raise EcgsslError(f"batch_size {cfg.batch_size} does not split over {world} ranks")
    if cfg.num_workers:
        torch.set_num_threads(cfg.num_workers)
    ds = PretrainData.load(data, text_emb, need_text="mets" in cfg.method, split=cfg.split)
    text_dim = ds.text.shape[1] if ds.text is not None else 384
    model, opt = build(cfg, ds.n_samples, text_dim, device)
    total = cfg.max_steps or cfg.epochs * ds.steps_per_epoch(cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup_steps, total))
    plan = Plan(cfg.batch_size, cfg.seed, cfg.shuffle_rows, me, world)
    manifest = read_manifest(data)
    # The data position: with it, step s's batch is a function of the step alone.
    # "table": the options key of the table's manifest (its input and how it was made), so
    # that another table with as many rows (reports regenerated, an output prefix reused by a
    # later pipeline run) is not resumed into.
    position = {"seed": cfg.seed, "batch_size": cfg.batch_size,
                "shuffle_rows": cfg.shuffle_rows, "rows": len(ds), "split": cfg.split,
                "table": manifest.get("options_key"), "plan": Plan.VERSION}
    start, history = 0, []
    ckpt = checkpoint.latest(out) if resume else None
    if ckpt is not None:
        state = checkpoint.load(ckpt, model, opt, sched)
        start, history = state["step"], state["history"]
        saved = state.get("data", position)
        if saved != {k: position[k] for k in saved}:    # older checkpoints: the keys they have
            raise EcgsslError(f"{ckpt} read the data as {saved}, this run as {position}: "
                              "resume with the same table, seed, batch_size and shuffle_rows "
                              "(and an ecgssl of the same batch plan), or start afresh "
                              "without --resume")
    same_on_every_rank(start, "the step to resume from", dist, device)
    if start > total:      # else the later weights would be written as this shorter run's
        raise EcgsslError(f"{ckpt} is at step {start}, past this run's last step {total}: "
                          "raise pretrain.max_steps (or epochs), or start afresh without "
                          "--resume")
    net = DistributedDataParallel(model) if world > 1 else model
    forward = torch.compile(net) if cfg.compile else net
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if me == 0:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt is None:
            checkpoint.clear(out)
    config = {**cfg.model_dump(), "n_samples": ds.n_samples, "fs": ds.fs, "text_dim": text_dim,
              "text_model": ds.text_meta.get("model_identity"),
              "text_model_name": ds.text_meta.get("model"),
              "text_pooling": ds.text_meta.get("pooling"), "train_rows": len(ds),
              "world_size": world, "encoder_dim": model.encoder.dim,
              "preprocess": PREPROCESS_VERSION,
              "data_fingerprint": manifest.get("input_fingerprint")}
    tags = {"stage": "pretrain", "method": cfg.method, "data": str(data),
            # the tag evaluate and register set too: one search finds a table's every run
            "data.fingerprint": str(config["data_fingerprint"])}
    batches = loader(ds, plan, start, total, cfg.loader_workers, device,
                     memory=cfg.loader == "memory")
    gen = torch.Generator(device)
    # closing: on Ctrl-C or an error in a step the loader workers are stopped here, before
    # the exit (not by interpreter shutdown, mid-transfer)
    with start_run(ctx if me == 0 else OFF, f"pretrain-{cfg.method}", tags) as run, \
            closing(batches):
        run.log_params(flatten(config))
        run.log_dataset(data, "training", digest=config["data_fingerprint"])
        bar = progress_bar(initial=start, total=total, unit="step",
                           enabled=progress and me == 0, desc=f"pretrain {cfg.method}")
        pending, window, names = [], [], None      # losses on the device until read out
        t_last = t_start = time.perf_counter()
        for step, batch in batches:      # on the device already
            bar.update()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                losses = step_losses(forward, model, batch, cfg, step, ds.fs, dist, gen)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            names = names or list(losses)
            pending.append(torch.stack([v.detach().float() for v in losses.values()]))
            done = step + 1
            log = done % cfg.log_every == 0 or done == total
            save = done % cfg.checkpoint_every == 0 or done == total
            if not (log or save):
                continue
            rows = _read_out(pending, names, done - len(pending), dist, cfg)   # all ranks
            history += [r[names.index("loss")] for r in rows]
            window += rows
            pending = []
            if log:
                now = time.perf_counter()
                record = dict(zip(names, np.mean(window, axis=0).tolist()))
                record |= {"lr": sched.get_last_lr()[0],
                           "samples_per_s": len(window) * cfg.batch_size / (now - t_last)}
                if model.mets is not None:
                    record["temperature"] = model.mets.temperature
                t_last, window = now, []
                run.log_metrics(record, step=step)
                bar.set_postfix(loss=f"{record['loss']:.4f}",
                                sps=f"{record['samples_per_s']:.0f}")
            if save and me == 0:
                checkpoint.save(out, done, model, opt, sched,
                                {"history": history, "data": position})
                if on_checkpoint is not None:
                    on_checkpoint()
        bar.close()
        elapsed = time.perf_counter() - t_start
        if me == 0:
            sps = (total - start) * cfg.batch_size / elapsed if total > start else None
            result = _finish(out, model, config, history, total, start, sps)
            run.log_metrics({k.replace("/", "_"): v for k, v in result.metrics().items()})
            # evaluate and register find this run (their lineage) by the weights' hash
            run.set_tags({ENCODER_TAG: encoder_hash(out)})
            for name in ("encoder.safetensors", "heads.safetensors", "config.json",
                         "metrics.json"):
                if (out / name).is_file():
                    run.log_artifact(out / name, "pretrain")
            return result
    return None


def _finish(out: Path, model: PretrainModel, config: dict, history: list[float], total: int,
            start: int, samples_per_s: float | None) -> PretrainResult:
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file({k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")},
              out / "encoder.safetensors")
    heads = {k: v for k, v in sd.items() if not k.startswith("encoder.")}
    if heads:
        save_file(heads, out / "heads.safetensors")
    write_json(out / "config.json", config)
    # First and last 10 steps; a run under 20 steps splits in halves, so that the two do not
    # average the same steps (a 4-step run read "loss 2.36 -> 2.36", as if nothing learnt).
    n = max(1, min(10, len(history) // 2))
    result = PretrainResult(float(np.mean(history[:n])), float(np.mean(history[-n:])),
                            samples_per_s, total, start, str(out))
    # metrics.json is a DVC output: only what a rerun reproduces; the throughput goes to the
    # run file (.dvcignore'd) and MLflow. A resume with no step left measured none: the run
    # file keeps the throughput of the run that trained (NaN would also be invalid JSON).
    metrics = result.metrics()
    if samples_per_s is not None:
        write_json(out / RUN_FILE, {"throughput/samples_per_s": metrics.pop(
            "throughput/samples_per_s")})
    write_json(out / "metrics.json", metrics)
    return result
