"""Training samples/s of a *running* training while another session's command shares the CPU.

    python benchmarks/sharing.py runs/cef7 alone beside beside-nice19 autogroup-10 autogroup-5 \
        alone1 beside1 --json benchmarks/results/sharing.json

Unlike ``contention.py`` (whose competitor is its own child, in its scheduler autogroup), this
starts the competitor (``contention.COMPETITOR``, a one-thread convolution loop) in a new
session, as a command from another shell is, and reads the training's rate from
``RUN/history.json`` (checkpoint records, every ``ckpt_every`` steps) over each window.
Modes: ``alone`` (nothing beside it), ``beside`` (the competitor), ``beside-nice19`` (the
competitor under ``nice -n 19``), ``autogroup-N`` (the training's autogroup at nice N, the
competitor beside it), ``alone1`` / ``beside1`` (the training on one thread through
``RUN/threads``, alone / with the competitor). Run as root for ``autogroup-N``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from contention import COMPETITOR  # noqa: E402


def rate(history: Path, w0: float, w1: float, every: int) -> float | None:
    """Samples/s between the first and last checkpoint records written in [w0, w1] (wall)."""
    h = json.loads(history.read_text())
    start = os.path.getmtime(history) - h[-1]["seconds"]
    pts = [(start + r["seconds"], r["samples"]) for r in h if r["step"] % every == 0]
    pts = [p for p in pts if w0 <= p[0] <= w1]
    return round((pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0]), 2) if len(pts) > 1 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the training's --out folder")
    ap.add_argument("modes", nargs="+")
    ap.add_argument("--seconds", type=float, default=170)
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    pid = int((args.run.parent / f"{args.run.name}.pid").read_text()) if any(
        m.startswith("autogroup") for m in args.modes) else None
    threads = args.run / "threads"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rows = []
    for mode in args.modes:
        if mode.endswith("1"):
            threads.write_text("1")
        if mode.startswith("autogroup"):
            Path(f"/proc/{pid}/autogroup").write_text(mode.split("autogroup")[1])
        time.sleep(10)  # the run switches at its next log step
        w0, conv = time.time(), None
        if mode.startswith("alone"):
            time.sleep(args.seconds)
        else:
            cmd = (["nice", "-n", "19"] if mode == "beside-nice19" else []) + [
                sys.executable, "-c", COMPETITOR, str(args.seconds)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, start_new_session=True)
            conv = round(float(out.stdout.split()[-1]), 1)
        w1 = time.time()
        threads.unlink(missing_ok=True)
        if mode.startswith("autogroup"):
            Path(f"/proc/{pid}/autogroup").write_text("0")
        time.sleep(90)  # the window's last checkpoint record reaches history.json
        row = {"mode": mode, "train_samples_per_s": rate(args.run / "history.json", w0, w1,
                                                          args.ckpt_every),
               "competitor_convs_per_s": conv}
        print(row, flush=True)
        rows.append(row)
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "seconds": args.seconds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
