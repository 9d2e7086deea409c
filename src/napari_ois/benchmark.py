"""Latency and memory benchmark of the named architectures (``napari-ois bench``).

For each model: time of ``set_image`` on a 1024 x 1024 RGB image (median of a few runs after
a warm-up), time per click with the embedding cached (median over many clicks, the click
count growing as in a real session), and peak memory (RSS growth on CPU, allocator peak on
CUDA). Prints a table; writes JSON only where ``--json`` says (the committed
``benchmarks/latency.json`` is never overwritten by a plain ``napari-ois bench``).
``benchmarks/latency.py`` calls this. torch is imported inside the functions, so that
building the command line's parser stays fast.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_model(name: str, device: str = "cpu", image_size: int = 1024, clicks: int = 40,
                embed_runs: int = 3, seed: int = 0, precision: str = "fp32") -> dict:
    import torch

    from .predictor import OISPredictor
    from .registry import build_model, resolve_device

    dev = resolve_device(device)
    rng = np.random.default_rng(seed)
    image = (rng.random((image_size, image_size, 3)) * 255).astype(np.uint8)
    model = build_model(name)
    pred = OISPredictor(model, device=dev, precision=precision)
    n_params = sum(p.numel() for p in model.parameters())
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mb()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    pred.set_image(image)  # warm-up
    sync()
    embed = []
    for _ in range(embed_runs):
        t0 = time.perf_counter()
        pred.set_image(image)
        sync()
        embed.append(time.perf_counter() - t0)

    per_click = []
    points, labels, prev = [], [], None
    for i in range(clicks + 2):
        if i % 10 == 0:  # a new object every 10 clicks
            points, labels, prev = [], [], None
        points.append([rng.uniform(0, image_size - 1), rng.uniform(0, image_size - 1)])
        labels.append(1 if len(points) == 1 else int(rng.integers(0, 2)))
        t0 = time.perf_counter()
        out = pred.predict(points, labels, prev_mask=prev, multimask=len(points) == 1)
        sync()
        dt = time.perf_counter() - t0
        prev = out.logits[0]
        if i >= 2:  # the first two are warm-up
            per_click.append(dt)
    result = {
        "model": name,
        "arch": model.cfg.name,
        "backbone": model.cfg.backbone,
        "img_size": model.cfg.img_size,
        "params_M": round(n_params / 1e6, 3),
        "device": str(dev),
        "precision": precision,
        "image": f"{image_size}x{image_size} RGB uint8",
        "embed_s_median": statistics.median(embed),
        "click_s_median": statistics.median(per_click),
        "click_s_p90": float(np.percentile(per_click, 90)),
        "clicks_timed": len(per_click),
        "peak_rss_MB": round(_rss_mb(), 1),
        "rss_growth_MB": round(_rss_mb() - rss0, 1),
    }
    if dev.type == "cuda":
        result["cuda_peak_MB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def run(models, device="cpu", out=None, image_size=1024, clicks=40, threads=None,
        precision="fp32") -> list[dict]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    rows = []
    devices = ["cpu", "cuda"] if device == "all" and torch.cuda.is_available() else (
        ["cpu"] if device == "all" else [device])
    for dev in devices:
        for name in models:
            rows.append(bench_model(name, dev, image_size=image_size, clicks=clicks, precision=precision))
            r = rows[-1]
            print(f"{r['model']:<14} {r['device']:<6} {r['backbone']:<22} {r['img_size']:>5} "
                  f"{r['params_M']:>8.2f} {r['embed_s_median'] * 1e3:>10.1f} "
                  f"{r['click_s_median'] * 1e3:>9.1f} {r['click_s_p90'] * 1e3:>8.1f} "
                  f"{r['peak_rss_MB']:>9.0f}", flush=True)
    meta = {
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
    }
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
        print(f"wrote {out}")
    return rows


HEADER = (f"{'model':<14} {'device':<6} {'backbone':<22} {'size':>5} {'params M':>8} "
          f"{'embed ms':>10} {'click ms':>9} {'p90 ms':>8} {'peak RSS':>9}")


def cmd_bench(args) -> int:
    print(HEADER)
    run(args.models, device=args.device, out=args.json, image_size=args.image_size,
        clicks=args.clicks, threads=args.threads, precision=args.precision)
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("bench", help="latency and memory of the named models")
    p.add_argument("--models", nargs="+", default=["default"], help="registry names")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto, or all (CPU and, if present, CUDA)")
    p.add_argument("--json", default=None,
                   help="also write the results as JSON to this file (default: print only)")
    p.add_argument("--image-size", type=int, default=1024)
    p.add_argument("--clicks", type=int, default=40)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="float32 (default) or bfloat16 autocast (OISPredictor's precision)")
    p.set_defaults(func=cmd_bench)
