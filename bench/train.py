"""Training-step speed: ecgssl's loop vs a bare PyTorch loop on the same model and batch.

    python bench/train.py                      # resnet1d18, fs 100, batch 64, every method
    python bench/train.py --steps 20 --methods mets
    python bench/train.py --encoders resnet1d18 vit1d --fs 100 500 --methods mets+st  # on a GPU

The bare loop runs forward/backward/AdamW on one fixed, pre-built batch already on the device
(inputs, masking and lead shuffling drawn once); ecgssl's loop (as `ecgssl pretrain` runs it)
takes each batch from the streaming loader (read and preprocessed by its worker processes),
moves it to the device and draws its masking/shuffling there every step. Goal: >= 0.95x.
Two ratios: the loop on batches the loader made beforehand, and the loop with the loader's
workers running beside it (on a CPU-only host they share the model's cores).
Prints samples/s, the ratios and peak memory; with a GPU also the bf16 numbers and the model
FLOP utilisation (FLOPs of one training step, counted by torch.utils.flop_counter, times steps/s,
over the GPU's dense bf16 peak: known for H100/H200/A100, else --peak-tflops).
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
from ecgssl.train.data import Plan, PretrainData, loader
from ecgssl.train.loop import build, step_losses


def corpus(tmp: Path, fs: int) -> tuple[Path, Path]:
    """The sample's Challenge 2017 + 2020 records at `fs` Hz with generated reports (the
    pipeline's own outputs/ when `make run` left them, at 100 Hz)."""
    if fs == 100 and Path("outputs/reports/_manifest.json").is_file() and \
            Path("outputs/text_emb.parquet").is_file():
        return Path("outputs/reports"), Path("outputs/text_emb.parquet")
    tmp = tmp / f"fs{fs}"
    for s in ("cinc2017", "cinc2020"):
        ingest(s, Path("data/sample") / s, tmp / s, IngestConfig(fs=fs), progress=False)
    run_reports([tmp / "cinc2017", tmp / "cinc2020"], tmp / "reports",
                ReportsConfig(mode="generated"), progress=False)
    run_embed_text(tmp / "reports", tmp / "emb.parquet", EmbedTextConfig(cache=None),
                   progress=False)
    return tmp / "reports", tmp / "emb.parquet"


# Dense bf16 peak of the GPUs we know (TFLOP/s, SXM parts), for the model FLOP utilisation.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override or device.type != "cuda":
        return override
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def step_flops(model, batch: dict, aug: dict) -> float:
    """FLOPs of one training step (forward and backward) on this batch."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        losses = model(batch, aug, {"mets": 1.0, "st": 1.0, "lead": 1.0})
        losses["loss"].backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def timed_steps(fn, steps: int, device: torch.device) -> float:
    """Seconds of fn(0..steps) (one call when steps = 0), device work included."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(steps + 1):
        fn(s)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(ds: PretrainData, method: str, steps: int, device: torch.device, bf16: bool,
            workers: int, encoder: str = "resnet1d18"):
    cfg = PretrainConfig(method=method, batch_size=64, split="train", loader_workers=workers,
                         encoder=encoder)
    model, opt = build(cfg, ds.n_samples, ds.text.shape[1], device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    plan = Plan(cfg.batch_size, cfg.seed, cfg.shuffle_rows)
    batches = loader(ds, plan, 0, steps + 1, workers, device)
    gen = torch.Generator(device)

    def update(losses):
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()

    def ecgssl_step(_, source=batches):
        step, batch = next(source)                      # on the device already
        with autocast:
            losses = step_losses(model, model, batch, cfg, step, ds.fs, generator=gen)
        update(losses)

    # The loop alone: batches the loader made before the timing (on CPU the loader's workers
    # otherwise share the cores the model runs on; on a GPU host they have their own).
    made = list(loader(ds, plan, 0, steps + 1, workers, device))

    def loop_step(s):
        ecgssl_step(s, iter(made[s:]))

    fixed = {}

    def bare_step(s):
        if not fixed:  # one batch and one set of draws, built outside the timing
            from ecgssl.models.pretrain import st_inputs
            b = {k: v.to(device) for k, v in ds.batch(0, plan).items()}
            g = torch.Generator(device).manual_seed(0)
            aug = st_inputs(b["x"], b["mask"], cfg.mask_ratio,
                            max(1, round(cfg.mask_segment_s * ds.fs)), g) \
                if model.st is not None else {}
            fixed.update(batch=b, aug=aug)
        with autocast:
            losses = model(fixed["batch"], fixed["aug"], {"mets": 1.0, "st": 1.0, "lead": 1.0})
        update(losses)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # Interleave the three step by step (after one warm-up step each), so that a busy machine
    # slows all of them alike and none gains from going first.
    fns = {"bare": bare_step, "loop": loop_step, "ours": ecgssl_step}
    took = dict.fromkeys(fns, 0.0)
    for fn in fns.values():
        fn(0)
    for s in range(1, steps + 1):
        for name, fn in fns.items():
            took[name] += timed_steps(lambda _, fn=fn, s=s: fn(s), 0, device)
    t_bare, t_loop, t_ours = took["bare"], took["loop"], took["ours"]
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    with autocast:
        flops = step_flops(model, fixed["batch"], fixed["aug"])
    return 64 * steps / t_bare, 64 * steps / t_loop, 64 * steps / t_ours, peak, flops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--methods", nargs="+", default=["mets", "st", "mets+st"])
    ap.add_argument("--workers", type=int, default=2, help="loader worker processes")
    ap.add_argument("--encoders", nargs="+", default=["resnet1d18"],
                    choices=["resnet1d18", "vit1d"])
    ap.add_argument("--fs", nargs="+", type=int, default=[100], help="sampling rates (Hz)")
    ap.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, for MFU "
                    "(known GPUs are looked up)")
    ap.add_argument("--table", type=Path, help="a reports table (instead of the sample)")
    ap.add_argument("--text-emb", type=Path)
    args = ap.parse_args()
    runs = [(torch.device("cpu"), False)]
    if torch.cuda.is_available():
        runs = [(torch.device("cuda"), False), (torch.device("cuda"), True)]
    else:
        print("no GPU here: CPU fp32 only (no bf16 rows, no MFU)")
    with tempfile.TemporaryDirectory() as tmp:
        for fs in args.fs:
            table, emb = (args.table, args.text_emb) if args.table else corpus(Path(tmp), fs)
            ds = PretrainData.load(table, emb, need_text=True)
            for encoder in args.encoders:
                print(f"\n{encoder}, fs {ds.fs} Hz, batch 64, {args.steps} timed steps; "
                      f"{len(ds)} training rows, {args.workers} loader workers")
                for device, bf16 in runs:
                    where = f"{device.type}{' bf16' if bf16 else ' fp32'}"
                    peak_t = peak_tflops(device, args.peak_tflops) if bf16 else None
                    for method in args.methods:
                        bare, loop, ours, peak, flops = measure(
                            ds, method, args.steps, device, bf16, args.workers, encoder)
                        mem = "peak GPU memory" if device.type == "cuda" else "peak RSS"
                        mfu = (f"   MFU {flops * ours / 64 / (peak_t * 1e12):5.1%}"
                               if peak_t else "")
                        print(f"{where:<10}{method:<9} bare {bare:7.1f} samples/s   ecgssl "
                              f"loop {loop:7.1f} ({loop / bare:4.2f}x, goal >= 0.95x)   loop + "
                              f"live loader {ours:7.1f} ({ours / bare:4.2f}x, goal >= 0.9x)   "
                              f"{flops / 64 / 1e9:6.2f} GFLOP/sample{mfu}   {mem} "
                              f"{peak:,.0f} MiB")


if __name__ == "__main__":
    main()
