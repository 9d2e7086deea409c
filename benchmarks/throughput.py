"""Training throughput: peak fp32 FLOP/s of torch on this machine, and what training reaches.

    NAPARI_OIS_DATA=../shared/data python benchmarks/throughput.py --config configs/study-ef-warm.yaml \
        --threads 2 --steps 12 --json benchmarks/results/throughput_ef.json

Run on an otherwise idle machine. Prints and writes:

- ``peak``: fp32 GFLOP/s of a 1024^3 matmul (sgemm) and of a 3x3 convolution (64 -> 64 channels,
  8 x 96 x 96), each the best of several runs, with ``--threads`` torch threads;
- ``step``: per training step (batch of ``batch_size``): seconds for the data (sample
  building, collation), for the forward pass with the click simulation, and for backward +
  optimiser, each the median over ``--steps`` steps after two warm-up steps;
- the model FLOPs of one step counted by ``torch.utils.flop_counter`` (matmuls and
  convolutions: forward of every simulated click, forward and backward of the trained one),
  and the achieved FLOP/s of the compute part and of the whole step as a fraction of the
  sgemm peak.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch


def peak_gflops(threads: int) -> dict:
    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = 0.0
    for _ in range(12):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * 1024**3 / (time.perf_counter() - t) / 1e9)
    x = torch.randn(8, 64, 96, 96)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    flops = 2 * 8 * 64 * 64 * 9 * 96 * 96
    best_conv = 0.0
    with torch.no_grad():
        for _ in range(6):
            t = time.perf_counter()
            conv(x)
            best_conv = max(best_conv, flops / (time.perf_counter() - t) / 1e9)
    return {"sgemm_1024_gflops": round(best, 1), "conv3x3_gflops": round(best_conv, 1)}


def training_setup(config: str):
    """The training config, model, sample source and optimiser of a timing run (random weights:
    the timing does not depend on them)."""
    from napari_ois.training.loop import (StepSamples, TrainConfig, build_model_for_training,
                                          make_builder)

    tc = TrainConfig.from_yaml(config)
    tc.warm_start = None
    torch.manual_seed(0)
    model = build_model_for_training(tc).train()
    s = model.cfg.img_size
    ds = StepSamples(make_builder(tc, s, model.cfg.num_proposals), s, tc.seed, 0, 10**6)
    return tc, model, ds, torch.optim.AdamW(model.parameters(), lr=1e-5)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from torch.utils.flop_counter import FlopCounterMode

    from napari_ois.training.loop import train_step

    peak = peak_gflops(args.threads)
    tc, model, ds, opt = training_setup(args.config)
    s = model.cfg.img_size
    cpu = torch.device("cpu")
    rows, flops = [], []
    for step in range(args.steps + 2):
        t0 = time.perf_counter()
        batch = torch.utils.data.default_collate(
            [ds[step * tc.batch_size + i] for i in range(tc.batch_size)])
        t1 = time.perf_counter()
        counter = FlopCounterMode(display=False)
        with counter:
            res = train_step(model, batch, tc, np.random.default_rng([tc.seed, 1, step]), cpu)
            t2 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            res["loss"].backward()
        opt.step()
        t3 = time.perf_counter()
        if step >= 2:
            rows.append((t1 - t0, t2 - t1, t3 - t2))
            flops.append(counter.get_total_flops())
    data, fwd, bwd = (statistics.median(r[i] for r in rows) for i in range(3))
    # FlopCounterMode's own overhead inflates the timed parts a little: time without it too
    plain = []
    for step in range(args.steps):
        batch = torch.utils.data.default_collate(
            [ds[(100 + step) * tc.batch_size + i] for i in range(tc.batch_size)])
        t = time.perf_counter()
        res = train_step(model, batch, tc, np.random.default_rng([tc.seed, 1, 100 + step]), cpu)
        opt.zero_grad(set_to_none=True)
        res["loss"].backward()
        opt.step()
        plain.append(time.perf_counter() - t)
    compute = statistics.median(plain)
    step_flops = float(np.mean(flops))
    out = {
        "config": args.config, "arch": tc.arch, "img_size": s, "batch_size": tc.batch_size,
        "threads": args.threads, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "peak": peak,
        "step_seconds": {"data": round(data, 3), "forward_and_click_simulation": round(fwd, 3),
                         "backward_and_optimizer": round(bwd, 3), "compute_without_counter": round(compute, 3)},
        "gflop_per_step": round(step_flops / 1e9, 2),
        "samples_per_s_compute": round(tc.batch_size / compute, 2),
        "samples_per_s_with_data": round(tc.batch_size / (compute + data), 2),
        "achieved_gflops_compute": round(step_flops / compute / 1e9, 1),
        "fraction_of_sgemm_peak_compute": round(step_flops / compute / 1e9 / peak["sgemm_1024_gflops"], 3),
        "fraction_of_sgemm_peak_with_data": round(
            step_flops / (compute + data) / 1e9 / peak["sgemm_1024_gflops"], 3),
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
