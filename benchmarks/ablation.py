"""Order-aware ablation on held-out synthetic scenes (with depth), for docs/benchmarks.md.

    python benchmarks/ablation.py [--model default] [--n 50] [--out benchmarks/results]

Evaluates the same weights three ways on ``synthetic-scenes:N`` (scenes composited from the
training images with seeds training never draws; each carries its depth map):
``order-aware`` (as trained), ``no-order-bias`` (``use_order_aware=False`` at inference: the
order-aware block becomes plain cross-attention) and ``no-depth`` (depth withheld).
This is an inference-time ablation of one trained model, not two separately trained models.
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from napari_ois.cli import main
from napari_ois.registry import WEIGHTS_DIR, registry


def weights_path(name: str) -> Path:
    entry = registry().get(name)
    if entry is not None and entry.package_file:
        return WEIGHTS_DIR / entry.package_file
    return Path(name)


def variant(src: Path, tmp: Path, tag: str, **changes) -> Path:
    dst = tmp / f"{tag}.safetensors"
    shutil.copy(src, dst)
    cfg = json.loads(src.with_suffix(".json").read_text())
    cfg.update(changes)
    dst.with_suffix(".json").write_text(json.dumps(cfg))
    return dst


def run(args) -> None:
    src = weights_path(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        runs = {
            "order-aware": (variant(src, tmp, "order-aware"), f"synthetic-scenes:{args.n}"),
            "no-order-bias": (variant(src, tmp, "no-order-bias", use_order_aware=False),
                              f"synthetic-scenes:{args.n}"),
        }
        for tag, (weights, dataset) in runs.items():
            main(["eval", "--dataset", dataset, "--model", str(weights), "--device", "cpu",
                  "--json", str(out / f"ablation_{tag}.json"), "--quiet"])
        # depth withheld: the same scenes without their depth maps
        from napari_ois.data.datasets import SyntheticSceneDataset
        from napari_ois.evaluation.runner import evaluate, save_json
        from napari_ois.predictor import load_predictor

        samples = [s for s in SyntheticSceneDataset(args.n)]
        for s in samples:
            s.meta = {}
        res = evaluate(load_predictor(str(runs["order-aware"][0]), device="cpu"), samples,
                       model_name="no-depth", dataset_name=f"synthetic-scenes:{args.n}", progress=False)
        save_json(res, out / "ablation_no-depth.json")
        print("no-depth:", {k: res["summary"][k] for k in ("NoC@85", "NoC@90", "1-mIoU", "5-mIoU") if k in res["summary"]})


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--out", default="benchmarks/results")
    run(p.parse_args())
