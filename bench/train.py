"""Training-step speed: ecgssl's loop vs a bare PyTorch loop on the same model and batch.

    python bench/train.py                      # resnet1d18, fs 100, batch 64, every method
    python bench/train.py --steps 20 --methods mets

The bare loop runs forward/backward/AdamW on one fixed, pre-built batch (inputs, masking and
lead shuffling drawn once); ecgssl's loop (`step_losses` as `ecgssl pretrain` runs it) gathers
each batch from the table arrays and draws its masking/shuffling every step. Goal: >= 0.95x.
Prints samples/s, the ratio and peak memory; with a GPU also the bf16 numbers.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from ecgssl.config import EmbedTextConfig, IngestConfig, PretrainConfig, ReportsConfig
from ecgssl.data.ingest import ingest
from ecgssl.reports.stage import run_reports
from ecgssl.text.stage import run_embed_text
from ecgssl.train.data import PretrainData
from ecgssl.train.loop import build, step_losses


def corpus(tmp: Path) -> tuple[Path, Path]:
    if Path("outputs/reports/_manifest.json").is_file() and Path("outputs/text_emb.parquet"
                                                                  ).is_file():
        return Path("outputs/reports"), Path("outputs/text_emb.parquet")
    for s in ("cinc2017", "cinc2020"):
        ingest(s, Path("data/sample") / s, tmp / s, IngestConfig(), progress=False)
    run_reports([tmp / "cinc2017", tmp / "cinc2020"], tmp / "reports",
                ReportsConfig(mode="generated"), progress=False)
    run_embed_text(tmp / "reports", tmp / "emb.parquet", EmbedTextConfig(cache=None),
                   progress=False)
    return tmp / "reports", tmp / "emb.parquet"


def timed_steps(fn, steps: int, device: torch.device) -> float:
    fn(0)                                     # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        fn(s)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(ds: PretrainData, method: str, steps: int, device: torch.device, bf16: bool):
    cfg = PretrainConfig(method=method, batch_size=64, split="train")
    model, opt = build(cfg, ds.signal.shape[-1], ds.text.shape[1], device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def update(losses):
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()

    def ecgssl_step(s):
        with autocast:
            losses = step_losses(model, model, ds, cfg, s, device)
        update(losses)

    fixed = {}

    def bare_step(s):
        if not fixed:  # one batch and one set of draws, built outside the timing
            from ecgssl.models.pretrain import st_inputs
            b = ds.batch(ds.batch_indices(0, 64, 0), device)
            g = torch.Generator().manual_seed(0)
            aug = st_inputs(b["x"].cpu(), b["mask"].cpu(), cfg.mask_ratio, 25, g) \
                if model.st is not None else {}
            fixed.update(batch=b, aug={k: v.to(device) for k, v in aug.items()})
        with autocast:
            losses = model(fixed["batch"], fixed["aug"], {"mets": 1.0, "st": 1.0, "lead": 1.0})
        update(losses)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # Alternate the two twice and keep each one's best, so neither gains from going second.
    t_bare = t_ours = float("inf")
    for _ in range(2):
        t_bare = min(t_bare, timed_steps(bare_step, steps, device))
        t_ours = min(t_ours, timed_steps(ecgssl_step, steps, device))
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return 64 * steps / t_bare, 64 * steps / t_ours, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--methods", nargs="+", default=["mets", "st", "mets+st"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table, emb = corpus(Path(tmp))
        ds = PretrainData.load(table, emb, need_text=True)
    runs = [(torch.device("cpu"), False)]
    if torch.cuda.is_available():
        runs = [(torch.device("cuda"), False), (torch.device("cuda"), True)]
    print(f"resnet1d18, fs {ds.fs} Hz, batch 64, {args.steps} timed steps; "
          f"{ds.signal.shape[0]} training rows")
    for device, bf16 in runs:
        where = f"{device.type}{' bf16' if bf16 else ' fp32'}"
        for method in args.methods:
            bare, ours, peak = measure(ds, method, args.steps, device, bf16)
            mem = "peak GPU memory" if device.type == "cuda" else "peak RSS"
            print(f"{where:<10}{method:<9} bare {bare:8.1f} samples/s   ecgssl {ours:8.1f} "
                  f"samples/s   {ours / bare:5.2f}x (goal >= 0.95x)   {mem} {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
