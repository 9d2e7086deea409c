"""Uniform average of the weights of checkpoints of one architecture (a "model soup").

    python benchmarks/average_weights.py OUT.safetensors A.safetensors B.safetensors [...]

Floating-point tensors are averaged in float32; integer buffers (BatchNorm's batch counters)
are taken from the first file. The result is stored as float16 like the shipped weights.
docs/benchmarks.md has the soups measured: cef9 + cef10 and cef10 + cef11 in "An eleventh
warm restart", cef11 + cef12 in "A twelfth warm restart".
"""
from __future__ import annotations

import argparse
import sys

import torch

from napari_ois.registry import build_model, save_model


def average_state(states: list[dict]) -> dict:
    """The element-wise mean of state dicts with the same keys and shapes."""
    keys = set(states[0])
    for i, s in enumerate(states[1:], 1):
        if set(s) != keys:
            raise ValueError(f"checkpoint {i + 1} has other tensors than the first: not the same architecture")
    out = {}
    for k, v in states[0].items():
        if any(s[k].shape != v.shape for s in states):
            raise ValueError(f"tensor {k} differs in shape between the checkpoints")
        out[k] = sum(s[k].float() for s in states) / len(states) if v.is_floating_point() else v.clone()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("models", nargs="+", help="two or more weights files (or registry names)")
    a = ap.parse_args(argv)
    if len(a.models) < 2:
        ap.error("give at least two checkpoints to average")
    models = [build_model(m) for m in a.models]
    if len({m.cfg.name for m in models}) != 1:
        print("average_weights: the checkpoints are of different architectures", file=sys.stderr)
        return 2
    try:
        avg = average_state([m.state_dict() for m in models])
    except ValueError as exc:
        print(f"average_weights: {exc}", file=sys.stderr)
        return 2
    models[0].load_state_dict(avg)
    save_model(models[0], a.out, notes={"summary": "uniform weight average of " + ", ".join(a.models)}, half=True)
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
