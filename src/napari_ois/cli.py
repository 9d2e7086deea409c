"""The ``napari-ois`` command: segment, models, eval, plot, train, bench, demo."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Optional, Sequence

#: sub-command modules that register themselves with ``add_parsers(subparsers)``
SUBCOMMAND_MODULES = (
    "napari_ois.evaluation.cli",
    "napari_ois.training.cli",
    "napari_ois.benchmark",
    "napari_ois._demo",
)


def _point(text: str) -> tuple[float, float]:
    try:
        r, c = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROW,COL (e.g. 120,245), got {text!r}")
    return r, c


def cmd_segment(args) -> int:
    import imageio.v3 as iio
    import numpy as np

    from .evaluation.datasets import read_image
    from .predictor import load_predictor

    if not Path(args.image).is_file():
        raise FileNotFoundError(f"image not found: {args.image}")
    image = read_image(args.image)
    if image.ndim == 3 and image.shape[-1] > 16:
        z = image.shape[0] // 2
        image = image[z]
        print(f"3D stack: segmenting the middle slice z={z}")
    pred = load_predictor(args.model, device=args.device, depth=args.depth)
    pred.set_image(image)
    points = [*args.point, *args.negative]
    labels = [1] * len(args.point) + [0] * len(args.negative)
    out = pred.predict(points[:1], labels[:1], multimask=True)
    choice = min(args.proposal, len(out.masks) - 1)
    if len(points) > 1:
        out = pred.predict(points, labels, prev_mask=out.logits[choice], multimask=False)
        choice = 0
    mask = out.masks[choice]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(args.out, (mask.astype(np.uint8) * 255))
    print(
        f"wrote {args.out}: {int(mask.sum())} foreground pixels of {mask.size}, "
        f"predicted IoU {float(out.scores[choice]):.3f}"
    )
    return 0


def cmd_models(args) -> int:
    from .registry import cache_dir, registry

    print(f"{'name':<14} {'arch':<14} {'available':<10} location / description")
    for e in registry().values():
        print(f"{e.name:<14} {e.arch:<14} {'yes' if e.available() else 'no':<10} {e.location()}")
        print(f"{'':<40}{e.description}")
    print(f"download cache: {cache_dir()} (set NAPARI_OIS_CACHE to change it)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-ois", description="Order-aware interactive segmentation (OIS) for napari."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment one object of an image from clicks")
    p.add_argument("image", help="image file (PNG, JPEG, TIFF)")
    p.add_argument("--point", type=_point, action="append", required=True,
                   metavar="ROW,COL", help="positive click (repeatable; the first one starts)")
    p.add_argument("--negative", type=_point, action="append", default=[],
                   metavar="ROW,COL", help="negative click (repeatable)")
    p.add_argument("--out", required=True, help="output mask PNG (0/255)")
    p.add_argument("--model", default="default", help="registry name or weights path")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--depth", default=None,
                   help="depth provider: none (default), depth-anything-v2-small|base|large, or a checkpoint path")
    p.add_argument("--proposal", type=int, default=0, help="which first-click proposal to keep (0 = best)")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("models", help="list the named models and where their files are")
    p.set_defaults(func=cmd_models)

    for mod in SUBCOMMAND_MODULES:
        importlib.import_module(mod).add_parsers(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as exc:
        print(f"napari-ois {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
