"""The ``napari-ois`` command: segment, models, eval, eval3d, plot, train, bench, demo."""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

#: sub-command modules that register themselves with ``add_parsers(subparsers)``
SUBCOMMAND_MODULES = (
    "napari_ois.evaluation.cli",
    "napari_ois.training.cli",
    "napari_ois.finetuning",
    "napari_ois.benchmark",
    "napari_ois._demo",
    "napari_ois.annotate",
    "napari_ois.segment_all_cli",
)


def _point(text: str) -> tuple[float, float]:
    try:
        r, c = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROW,COL (e.g. 120,245), got {text!r}")
    if not (math.isfinite(r) and math.isfinite(c)):
        raise argparse.ArgumentTypeError(f"ROW,COL must be finite numbers, got {text!r}")
    return r, c


def _box(text: str):
    from .data.prompts import Box  # numpy only: --help stays fast

    try:
        return Box.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 = the best proposal), got {v}")
    return v


#: mask formats ``segment --out`` can write losslessly (imageio picks the writer by suffix)
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class UsageError(ValueError):
    """A bad command-line argument or input file (reported without a traceback)."""


def _check_out_path(out: str, flag: str = "--out", suffixes: Sequence[str] = MASK_SUFFIXES) -> Path:
    """Check up front that ``out`` can be written as a file (before any model runs)."""
    path = Path(out)
    if not str(out).strip():
        raise UsageError(f"{flag} is empty: give an output file name")
    if path.is_dir():
        raise UsageError(f"{flag} {out}: is a folder; give a file name (e.g. {path / 'mask.png'})")
    if suffixes and path.suffix.lower() not in suffixes:
        raise UsageError(
            f"{flag} {out}: unsupported file type {path.suffix or '(none)'!r}; use one of "
            + ", ".join(suffixes)
        )
    parent = path.parent
    for anc in (parent, *parent.parents):  # the first existing ancestor must be a writable folder
        if anc.exists():
            if not anc.is_dir():
                raise UsageError(f"{flag} {out}: {anc} is a file, not a folder")
            if not os.access(anc, os.W_OK | os.X_OK):
                raise UsageError(f"{flag} {out}: folder {anc} is not writable")
            break
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {out}: the file exists and is not writable")
    return path


def _read_input_image(path_text: str):
    import numpy as np

    from .data.images import check_image_dtype, read_image

    path = Path(path_text)
    if not path.exists():
        raise UsageError(f"image not found: {path_text}")
    if not path.is_file():
        raise UsageError(f"image {path_text} is not a file")
    if path.stat().st_size == 0:
        raise UsageError(f"image {path_text} is empty (0 bytes)")
    try:
        image = read_image(path)
    except Exception as exc:  # noqa: BLE001 - readers raise many types for a non-image
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"image {path_text} could not be read as an image ({reason})") from None
    image = np.asarray(image)
    try:
        check_image_dtype(image)  # before the model loads (a TIFF or .npy may hold anything)
    except ValueError as exc:
        raise UsageError(f"image {path_text}: {exc}") from None
    if image.ndim < 2 or min(image.shape[:2]) < 1:
        raise UsageError(f"image {path_text} has shape {image.shape}: not a 2D image")
    if image.ndim > 3:
        raise UsageError(f"image {path_text} has shape {image.shape}: only 2D images, RGB(A) "
                         "images and 3D stacks (the middle slice is used) are supported")
    return image


def _check_model_arg(model: str) -> None:
    from .registry import registry

    if model in registry():
        return
    path = Path(model)
    if path.is_dir():  # a model folder (``napari-ois finetune --out DIR``)
        if not (path / "model.safetensors").is_file():
            raise UsageError(f"--model {model}: the folder has no model.safetensors")
        return
    if path.suffix in (".safetensors", ".pt", ".pth", ".ckpt") or os.sep in model:
        if not path.exists():
            raise UsageError(f"--model {model}: weights file not found")
        if not path.is_file():
            raise UsageError(f"--model {model}: is not a file")
        return
    raise UsageError(f"--model {model!r}: unknown model; use one of {sorted(registry())} "
                     "or a path to a .safetensors/.pt file")


def _check_depth_arg(depth: Optional[str]) -> None:
    if depth is None:
        return
    low = depth.strip().lower()
    if low in ("", "none", "no", "off", "false", "0"):
        return
    if low.endswith((".pth", ".pt", ".safetensors", ".npy", ".tif", ".tiff")):
        if not Path(depth).expanduser().is_file():
            raise UsageError(f"--depth {depth}: file not found")
        return
    names = ("depth-anything-v2-small", "depth-anything-v2-base", "depth-anything-v2-large",
             "vits", "vitb", "vitl", "small", "base", "large")
    if low not in names:
        raise UsageError(f"--depth {depth!r}: unknown depth setting; use none, "
                         "depth-anything-v2-small|base|large or a checkpoint path")


def cmd_segment(args) -> int:
    import numpy as np

    # ---- every argument and file is checked before the model is loaded
    # (cheap checks first; the model check needs the registry, which imports torch)
    out_path = _check_out_path(args.out)
    if not DEVICE_PATTERN.match(str(args.device).lower()):
        raise UsageError(f"--device {args.device!r}: use auto, cpu, cuda (or cuda:N) or mps")
    _check_depth_arg(args.depth)
    if args.proposal < 0:
        raise UsageError(f"--proposal {args.proposal}: must be >= 0 (0 = the best proposal)")
    image = _read_input_image(args.image)
    if image.ndim == 3 and image.shape[-1] > 16:
        z = image.shape[0] // 2
        image = image[z]
        print(f"3D stack: segmenting the middle slice z={z}")
    h, w = image.shape[:2]
    if not args.point and args.box is None:
        raise UsageError("give a first prompt: --point ROW,COL (a positive click) or --box R0,C0,R1,C1")
    box = None
    if args.box is not None:
        try:
            box = args.box.clipped((h, w))
        except ValueError as exc:
            raise UsageError(f"--box: {exc}") from None
    for flag, pts in (("--point", args.point), ("--negative", args.negative)):
        for r, c in pts:
            if not (0 <= r <= h - 1 and 0 <= c <= w - 1):
                raise UsageError(f"{flag} {r:g},{c:g} lies outside the image of {h} x {w} pixels "
                                 f"(rows 0..{h - 1}, cols 0..{w - 1})")
    _check_model_arg(args.model)

    from .predictor import load_predictor

    pred = load_predictor(args.model, device=args.device, depth=args.depth)
    if box is not None and not pred.accepts_boxes:
        raise UsageError(f"--box: the model {args.model!r} takes no box prompts; give --point "
                         "clicks, or a model built for boxes")
    k = int(pred.num_proposals)
    if args.proposal >= k:
        raise UsageError(f"--proposal {args.proposal}: the model has {k} proposals (0..{k - 1})")
    pred.set_image(image)
    points = [*args.point, *args.negative]
    labels = [1] * len(args.point) + [0] * len(args.negative)
    if box is not None:  # a box (with any clicks): the refined mask in one prediction
        out = pred.predict(points, labels, box=box)
        choice = 0
    else:  # the protocol: the first click's proposals, then all clicks refine the chosen one
        out = pred.predict(points[:1], labels[:1])
        choice = min(args.proposal, len(out.masks) - 1)
        if len(points) > 1:
            out = pred.predict(points, labels, prev_mask=out.logits[choice])
            choice = 0
    mask = out.full_mask(choice)  # the whole image (window mode returns crops)
    import imageio.v3 as iio

    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(out_path, (mask.astype(np.uint8) * 255))
    except OSError as exc:
        raise UsageError(f"--out {args.out}: could not write it ({exc.strerror or exc})") from None
    print(
        f"wrote {args.out}: {int(mask.sum())} foreground pixels of {mask.size}, "
        f"predicted IoU {float(out.scores[choice]):.3f}"
    )
    return 0


def cmd_models(args) -> int:
    from .registry import cache_dir, registry

    print(f"{'name':<14} {'arch':<14} {'available':<10} location / description")
    for e in registry().values():
        print(f"{e.name:<14} {e.arch:<14} {e.status():<10} {e.location()}")
        print(f"{'':<40}{e.description}")
    print(f"download cache: {cache_dir()} (set NAPARI_OIS_CACHE to change it)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-ois", description="Order-aware interactive segmentation (OIS) for napari."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment one object of an image from clicks or a box")
    p.add_argument("image", help="image file (PNG, JPEG, TIFF, or a NumPy .npy array)")
    p.add_argument("--point", type=_point, action="append", default=[],
                   metavar="ROW,COL", help="positive click (repeatable; the first one starts)")
    p.add_argument("--box", type=_box, default=None, metavar="R0,C0,R1,C1",
                   help="a box around the object (top-left and bottom-right row,col; models "
                   "with box prompts), alone or with clicks")
    p.add_argument("--negative", type=_point, action="append", default=[],
                   metavar="ROW,COL", help="negative click (repeatable)")
    p.add_argument("--out", required=True, help="output mask PNG (0/255)")
    p.add_argument("--model", default="default", help="registry name or weights path")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--depth", default=None,
                   help="depth provider: none (default), depth-anything-v2-small|base|large, or a checkpoint path")
    p.add_argument("--proposal", type=_non_negative_int, default=0, help="which first-click proposal to keep (0 = best)")
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
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        return _report(args, exc)
    except Exception as exc:  # only a YAML syntax error or a torch/torchvision mismatch becomes a message here
        if _is_yaml_error(exc) or _is_torchvision_mismatch(exc):
            return _report(args, exc)
        raise


def _is_yaml_error(exc: BaseException) -> bool:
    yaml = sys.modules.get("yaml")  # loaded by whoever parsed the file
    return yaml is not None and isinstance(exc, yaml.YAMLError)


#: the operator error torchvision raises at import when its build does not match torch's
TORCHVISION_MISMATCH = re.compile(r"operator (torchvision::\w+) does not exist")


def _is_torchvision_mismatch(exc: BaseException) -> bool:
    return TORCHVISION_MISMATCH.search(str(exc)) is not None


def torchvision_mismatch_text(exc: BaseException) -> str:
    """What to do when torch and torchvision come from different builds (docs/install.md)."""
    op = TORCHVISION_MISMATCH.search(str(exc))
    return (f"torch and torchvision come from different builds (operator "
            f"{op.group(1) if op else 'torchvision::nms'} does not exist): reinstall torchvision "
            "from the same index as torch, e.g. `pip install --force-reinstall torch torchvision "
            "--index-url https://download.pytorch.org/whl/cpu` (docs/install.md, "
            "'torch, torchvision and timm')")


def exception_text(exc: BaseException) -> str:
    """An exception's message (a KeyError's without the quotes its str() adds)."""
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def _error_text(args, exc: BaseException) -> str:
    if _is_yaml_error(exc):
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        name = getattr(args, "config", None) or "a YAML file"
        return f"{name} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"
    if _is_torchvision_mismatch(exc):
        return torchvision_mismatch_text(exc)
    text = exception_text(exc)
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.filename:
        text = f"{exc.filename}: {exc.strerror or exc}"
    return str(text)


def _report(args, exc: BaseException) -> int:
    text = " ".join(_error_text(args, exc).split())  # one line
    print(f"napari-ois {args.command}: error: {text}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
