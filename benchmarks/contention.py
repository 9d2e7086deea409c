"""Training throughput when another process shares the CPU, by OpenMP wait policy.

    NAPARI_OIS_DATA=../shared/data python benchmarks/contention.py \
        --config configs/ois-tiny-cef-cpu-r6.yaml --seconds 40 --json benchmarks/results/contention.json

Run on an otherwise idle machine. A training run uses 2 torch threads on this 2-core machine;
a one-thread evaluation or test beside it takes one core. torch's OpenMP threads spin at
every barrier by default (``OMP_WAIT_POLICY`` unset, i.e. active for a while): when one of
them is descheduled the other burns its core waiting. For each policy (unset, ``PASSIVE``)
this measures training samples/s for ``--seconds``, alone and beside a one-thread
competitor (a torch convolution loop, its own throughput reported too), each in a fresh
process because the policy is read when OpenMP starts. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TRAIN = r"""
import json, sys, time
import numpy as np, torch
from throughput import training_setup
from napari_ois.training.loop import train_step
cfg, seconds, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
tc, model, ds, opt = training_setup(cfg)
cpu = torch.device("cpu")
def step(i):
    batch = torch.utils.data.default_collate([ds[i * tc.batch_size + j] for j in range(tc.batch_size)])
    res = train_step(model, batch, tc, np.random.default_rng([tc.seed, 1, i]), cpu)
    opt.zero_grad(set_to_none=True); res["loss"].backward(); opt.step()
for i in range(3):
    step(i)
print("READY", flush=True)
sys.stdin.readline()
t0, n = time.perf_counter(), 0
while time.perf_counter() - t0 < seconds:
    step(3 + n); n += 1
print(json.dumps({"steps": n, "seconds": time.perf_counter() - t0, "batch_size": tc.batch_size}), flush=True)
"""

COMPETITOR = r"""
import sys, time, torch
torch.set_num_threads(1)
conv = torch.nn.Conv2d(32, 32, 3, padding=1); x = torch.randn(4, 32, 96, 96)
t0, n = time.perf_counter(), 0
with torch.no_grad():
    while time.perf_counter() - t0 < float(sys.argv[1]):
        conv(x); n += 1
print(n / (time.perf_counter() - t0), flush=True)
"""


def measure(config: str, seconds: float, threads: int, policy: str | None, competitor: bool) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent), env.get("PYTHONPATH", "")])
    train = subprocess.Popen([sys.executable, "-c", TRAIN, config, str(seconds), str(threads)],
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert train.stdout.readline().strip() == "READY"
    comp = None
    if competitor:
        cenv = dict(os.environ, OMP_NUM_THREADS="1")
        cenv.pop("OMP_WAIT_POLICY", None)
        comp = subprocess.Popen([sys.executable, "-c", COMPETITOR, str(seconds + 5)],
                                env=cenv, stdout=subprocess.PIPE, text=True)
        time.sleep(3)  # the competitor's import and first convolutions
    train.stdin.write("go\n")
    train.stdin.flush()
    res = json.loads(train.stdout.readline())
    train.wait()
    row = {"policy": policy or "unset", "competitor": competitor,
           "train_samples_per_s": round(res["steps"] * res["batch_size"] / res["seconds"], 2)}
    if comp is not None:
        row["competitor_convs_per_s"] = round(float(comp.stdout.readline()), 2)
        comp.wait()
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    cenv = dict(os.environ, OMP_NUM_THREADS="1")
    alone = float(subprocess.run([sys.executable, "-c", COMPETITOR, str(args.seconds / 2)], env=cenv,
                                 capture_output=True, text=True, check=True).stdout)
    print(f"competitor alone: {alone:.1f} convs/s")
    rows = [measure(args.config, args.seconds, args.threads, policy, competitor)
            for policy in (None, "PASSIVE") for competitor in (False, True)]
    for r in rows:
        print(f"OMP_WAIT_POLICY={r['policy']:8s} competitor={'yes' if r['competitor'] else 'no ':3s} "
              f"training {r['train_samples_per_s']:6.2f} samples/s"
              + (f", competitor {r['competitor_convs_per_s']:.1f} convs/s" if r["competitor"] else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "threads": args.threads, "seconds": args.seconds,
                       "competitor_alone_convs_per_s": round(alone, 2), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
