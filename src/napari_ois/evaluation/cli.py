"""``eval``, ``eval3d`` and ``plot`` subcommands.

``napari_ois.cli`` calls :func:`add_parsers` on its subparsers object; each subcommand sets
``func`` to a function that takes the parsed arguments and returns an exit code::

    napari-ois eval --dataset GrabCut --model random-walker --json gc.json --plot gc.png
    napari-ois eval --images imgs/ --masks masks/ --model default --limit 10
    napari-ois eval3d --images vols/ --labels labels/ --model default --json out.json
    napari-ois plot a.json b.json --out curves.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

TABLE_COLUMNS = (
    ("model", "model", "{}"),
    ("dataset", "dataset", "{}"),
    ("n", "n", "{}"),
    ("NoC85", "NoC@85", "{:.2f}"),
    ("NoC90", "NoC@90", "{:.2f}"),
    ("NoC95", "NoC@95", "{:.2f}"),
    ("NoF90", "NoF@90", "{}"),
    ("NoF95", "NoF@95", "{}"),
    ("1-mIoU%", "1-mIoU", "{:.2f}"),
    ("5-mIoU%", "5-mIoU", "{:.2f}"),
    ("SPC s", "spc_mean", "{:.4f}"),
    ("embed s", "embed_mean_s", "{:.3f}"),
)


def _row(result: Dict) -> List[str]:
    s = result.get("summary", {})
    t = result.get("timing", {})
    vals = {"model": result.get("model"), "dataset": result.get("dataset"),
            "n": s.get("num_objects")}
    out = []
    for _, key, fmt in TABLE_COLUMNS:
        v = vals[key] if key in vals else s.get(key, t.get(key))
        if v is None or (isinstance(v, float) and v != v):  # missing or NaN
            out.append("-")
            continue
        if key in ("1-mIoU", "5-mIoU"):
            v = 100.0 * v
        try:
            out.append(fmt.format(v))
        except (ValueError, TypeError):
            out.append(str(v))
    return out


def format_table(results: Sequence[Dict]) -> str:
    """Plain-text table: NoC85/90/95, NoF90/95, 1-/5-mIoU (%), SPC, embedding seconds."""
    header = [c[0] for c in TABLE_COLUMNS]
    rows = [_row(r) for r in results]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) if i > 1 else h.ljust(w)
                       for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(v.rjust(w) if i > 1 else v.ljust(w)
                               for i, (v, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def add_parsers(subparsers) -> None:
    """Register ``eval``, ``eval3d`` and ``plot`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model with the standard click protocol (NoC, NoF, k-mIoU, SPC)",
        description=(
            "Simulated-click evaluation (the protocol of RITM/SimpleClick/OIS): first click "
            "at the object's farthest interior point, each next click at the centre of the "
            "largest error region, up to --max-clicks. Prints NoC@85/90/95, NoF@90/95, "
            "1-/5-mIoU, seconds per click and embedding time."),
    )
    src = p.add_argument_group("data (either --dataset or --images and --masks)")
    src.add_argument("--dataset", help="a set name under $NAPARI_OIS_DATA or ../shared/data "
                     "(e.g. GrabCut, Kvasir_dev) or a folder with images/ and masks/")
    src.add_argument("--images", help="folder of images")
    src.add_argument("--masks", help="folder of masks (<stem>.png or <stem>/<k>.png; "
                     "8-bit, >128 object, 128 ignore)")
    p.add_argument("--model", action="append", default=None,
                   help="model: a baseline (random-walker, geodesic), a registry name "
                   "(default) or a checkpoint path; repeat to compare (default: default)")
    p.add_argument("--json", help="write the results here (one model: a dict; several: "
                   "a list)")
    p.add_argument("--plot", help="write the mIoU-vs-clicks curve(s) here (PNG/PDF/SVG)")
    p.add_argument("--max-clicks", type=_positive_int, default=20)
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="evaluate at most N objects")
    p.add_argument("--stop-iou", type=float, default=None,
                   help="stop an object once its IoU reaches this (faster; k-mIoU then "
                   "carries the last IoU); default: always run --max-clicks clicks")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="device for network models (baselines run on the CPU)")
    p.add_argument("--sat", action="store_true",
                   help="also measure SAT latency (16x16 grid of single clicks on the first "
                   "image)")
    p.add_argument("--zoom-in", choices=("on", "off"), default="on",
                   help="network models: predict refinements on a crop around the object "
                   "(RITM's zoom-in; see napari_ois.predictor.ZoomIn); default on")
    p.add_argument("--flip-tta", action="store_true",
                   help="network models: also predict on the mirrored image and average the two "
                   "(test-time augmentation, twice the time per click; off by default)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="network models: float32 (default) or bfloat16 autocast (CPUs with bf16 "
                   "units; docs/benchmarks.md 'bf16 inference')")
    p.add_argument("--first-prompt", choices=("click", "box"), default="click",
                   help="an object's first prompt: the protocol's first click (K proposals, "
                   "default) or its tight ground-truth box (models with box prompts); the "
                   "box counts as the first interaction, the protocol's clicks follow")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_eval)

    add_eval3d_parser(subparsers)

    q = subparsers.add_parser("plot", help="plot mIoU-vs-clicks curves of eval JSON files",
                              description="Plot the mIoU-vs-clicks curves of one or more "
                              "`napari-ois eval --json` results in one figure.")
    q.add_argument("results", nargs="+", help="JSON files written by `eval --json`")
    q.add_argument("--out", "-o", default="miou_curves.png", help="output image")
    q.add_argument("--title", default=None)
    q.set_defaults(func=run_plot)


def add_eval3d_parser(subparsers) -> None:
    """Register ``eval3d`` (the volumetric protocol, ``evaluation.volume``)."""
    from ..propagation import STOP_RULES

    p = subparsers.add_parser(
        "eval3d",
        help="evaluate a model on volumes: one structure in 3D in a few interactions (Dice, NoI)",
        description=(
            "The volumetric protocol (napari_ois.evaluation.volume): every label id with at "
            "least --min-voxels voxels is one structure. Interaction 1: a positive click at the "
            "interior point of its largest Z slice (or that slice's box), then the plugin's "
            "propagation through Z both ways. Each next interaction: a click on the largest 3D "
            "error region, on its largest slice; that slice is predicted again and propagation "
            "restarts from it up to the slices with clicks of their own. Prints the mean 3D "
            "Dice per interaction and NoI@80/85/90."),
    )
    p.add_argument("--images", required=True, help="folder of volumes <case>.tif (or .nii.gz with "
                   "nibabel), axes (Z, Y, X)")
    p.add_argument("--labels", required=True, help="folder of label volumes of the same names "
                   "(0 background, k = structure k)")
    p.add_argument("--model", default="default",
                   help="a registry name (default) or a checkpoint path")
    p.add_argument("--interactions", type=_positive_int, default=6,
                   help="interactions per structure (default 6)")
    p.add_argument("--first-prompt", choices=("click", "box"), default="click",
                   help="interaction 1: a click (default) or the box of the largest slice "
                   "(models with box prompts)")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="evaluate at most N structures (cases in name order, ids in order)")
    p.add_argument("--min-voxels", type=_positive_int, default=500,
                   help="ids with fewer voxels are skipped (default 500)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (or cuda:N) or mps")
    p.add_argument("--json", required=True, help="write the results here")
    p.add_argument("--save-masks", default=None, metavar="DIR",
                   help="write DIR/<case>.tif: every structure's final prediction under its id")
    p.add_argument("--zoom-in", choices=("on", "off"), default="on",
                   help="predict refinements on a crop around the object (default on)")
    rules = p.add_argument_group(
        "propagation's stop rules", "as the dock's (defaults: the session's, propagation.STOP_RULES)")
    rules.add_argument("--stop-below-iou", type=float, default=STOP_RULES["min_score"], metavar="F",
                       help="stop on a slice whose predicted IoU is lower (default %(default)s; "
                       "-1: never)")
    rules.add_argument("--stop-area-change", type=_area_change, default=STOP_RULES["area_ratio"][1],
                       metavar="X", help="stop where the area changes by more than X times from one "
                       "slice to the next (default %(default)s; 0: no area rule)")
    rules.add_argument("--stop-below-overlap", type=float, default=STOP_RULES["min_overlap"],
                       metavar="F", help="stop where the IoU with the previous slice's mask is lower "
                       "(default %(default)s; 0: only where they do not overlap at all)")
    rules.add_argument("--max-slices", type=_positive_int, default=STOP_RULES["max_slices"],
                       metavar="N", help="propagate at most N slices each way (default: no limit)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_eval3d)


def _area_change(text: str) -> float:
    v = float(text)
    if not (v == 0 or v >= 1):
        raise argparse.ArgumentTypeError(f"must be 0 (no area rule) or at least 1, got {v:g}")
    return v


def propagation_options(args) -> Dict:
    """``eval3d``'s stop-rule flags as ``propagate_slices`` keywords."""
    change = args.stop_area_change
    return {"min_score": args.stop_below_iou, "min_overlap": args.stop_below_overlap,
            "area_ratio": None if change == 0 else (1.0 / change, change),
            "max_slices": args.max_slices}


def format_volume_summary(result: Dict) -> str:
    """Mean 3D Dice per interaction and NoI of an ``eval3d`` result, as text."""
    s = result["summary"]
    dpi = s.get("dice_per_interaction", [])
    lines = [f"{result.get('model')} on {result.get('dataset')}: {s.get('num_objects')} structure(s) "
             f"in {s.get('num_cases')} volume(s)",
             "mean Dice per interaction: " + " ".join(f"{v:.3f}" for v in dpi)
             + (f" (the first clicked slice alone, 2D: {s['first_slice_dice_mean']:.3f})"
                if "first_slice_dice_mean" in s else ""),
             f"NoI@80 {s.get('noi80', float('nan')):.2f}  NoI@85 {s.get('noi85', float('nan')):.2f}  "
             f"NoI@90 {s.get('noi90', float('nan')):.2f}  (NoF@90 {s.get('nof90')}); "
             f"{s.get('seconds_per_interaction_median', float('nan')):.2f} s per interaction (median)"]
    for lid, v in result.get("per_label", {}).items():
        d = v.get("dice_per_interaction", [])
        if d:
            lines.append(f"  {lid:>3} {str(v.get('name') or ''):<24} n={v['num_objects']:<3} "
                         f"Dice@1 {d[0]:.3f}  Dice@{len(d)} {d[-1]:.3f}")
    return "\n".join(lines)


def run_eval3d(args) -> int:
    from ..cli import DEVICE_PATTERN, UsageError, _check_model_arg, _check_out_path, exception_text

    try:  # every argument and file is checked before the model loads
        _check_out_path(args.json, "--json", (".json",))
        if args.save_masks is not None and Path(args.save_masks).is_file():
            raise UsageError(f"--save-masks {args.save_masks}: is a file; give a folder")
        if not DEVICE_PATTERN.match(str(args.device).lower()):
            raise UsageError(f"--device {args.device!r}: use auto, cpu, cuda (or cuda:N) or mps")
        from .volume import find_cases

        cases = find_cases(args.images, args.labels)
        _check_model_arg(args.model)
    except (UsageError, FileNotFoundError, ValueError) as e:
        print(f"napari-ois eval3d: error: {exception_text(e)}", file=sys.stderr)
        return 2
    from ..predictor import load_predictor
    from .runner import save_json
    from .volume import evaluate_volumes

    try:
        predictor = load_predictor(args.model, device=args.device, zoom_in=args.zoom_in == "on")
    except Exception as e:  # noqa: BLE001 - unknown name, missing weights, ...
        print(f"napari-ois eval3d: error: cannot load model {args.model!r}: {exception_text(e)}",
              file=sys.stderr)
        return 2
    if args.first_prompt == "box" and not predictor.accepts_boxes:
        print(f"napari-ois eval3d: error: --first-prompt box: the model {args.model!r} takes no "
              "box prompts", file=sys.stderr)
        return 2
    print(f"eval3d: {len(cases)} volume(s) in {args.images}; {args.interactions} interaction(s) per "
          f"structure; device {predictor.device}", file=sys.stderr)
    try:
        result = evaluate_volumes(
            predictor, args.images, args.labels, interactions=args.interactions,
            first_prompt=args.first_prompt, limit=args.limit, min_voxels=args.min_voxels,
            save_masks=args.save_masks, propagation=propagation_options(args),
            progress=not args.quiet, model_name=args.model,
            log=lambda line: print(f"napari-ois eval3d: {line}", file=sys.stderr))
    except (FileNotFoundError, ValueError) as e:
        print(f"napari-ois eval3d: error: {exception_text(e)}", file=sys.stderr)
        return 2
    print(format_volume_summary(result))
    path = save_json(result, args.json)
    print(f"wrote {path}" + (f" and masks in {args.save_masks}" if args.save_masks else ""),
          file=sys.stderr)
    return 0


def _open_dataset(args):
    from ..data.datasets import FolderDataset, load_dataset

    if args.images or args.masks:
        if not (args.images and args.masks):
            raise FileNotFoundError("--images and --masks go together")
        if args.dataset:
            raise FileNotFoundError("give either --dataset or --images/--masks, not both")
        return FolderDataset(args.images, args.masks)
    if not args.dataset:
        raise FileNotFoundError("no data: give --dataset NAME or --images DIR --masks DIR")
    return load_dataset(args.dataset)


def run_eval(args) -> int:
    from ..registry import resolve_device
    from .baselines import get_model
    from .runner import evaluate, sat_latency, save_json

    from ..cli import UsageError, _check_out_path

    try:  # output files are checked before anything runs
        if args.json:
            _check_out_path(args.json, "--json", (".json",))
        if args.plot:
            _check_out_path(args.plot, "--plot", (".png", ".pdf", ".svg"))
    except UsageError as e:
        print(f"napari-ois eval: error: {e}", file=sys.stderr)
        return 2
    try:
        dataset = _open_dataset(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"napari-ois eval: error: {e}", file=sys.stderr)
        return 2
    if len(dataset) == 0:
        print(f"napari-ois eval: error: no objects found in {dataset}", file=sys.stderr)
        return 2
    models = args.model or ["default"]
    device = str(resolve_device(args.device))
    n = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    print(f"dataset {dataset.name}: {n} object(s) of {len(dataset)}; "
          f"max clicks {args.max_clicks}; device {device}", file=sys.stderr)
    results = []
    for name in models:
        try:
            model = get_model(name, device=device, zoom_in=args.zoom_in == "on",
                              flip_tta=args.flip_tta, precision=args.precision)
        except Exception as e:  # unknown name, missing weights, ...
            from ..cli import exception_text

            print(f"napari-ois eval: error: cannot load model {name!r}: {exception_text(e)}",
                  file=sys.stderr)
            return 2
        if args.first_prompt == "box" and not getattr(model, "accepts_boxes", False):
            print(f"napari-ois eval: error: --first-prompt box: the model {name!r} takes no "
                  "box prompts", file=sys.stderr)
            return 2
        res = evaluate(model, dataset, max_clicks=args.max_clicks, limit=args.limit,
                       progress=not args.quiet, model_name=name, dataset_name=dataset.name,
                       stop_iou=args.stop_iou, first_prompt=args.first_prompt)
        if args.sat:
            first = next(iter(dataset))
            res["sat_latency"] = sat_latency(model, first.image)
        results.append(res)
    print(format_table(results))
    for r in results:
        t = r["timing"]
        if "first_box_mIoU" in r["summary"]:
            print(f"{r['model']}: box-first: mIoU after the box "
                  f"{100 * r['summary']['first_box_mIoU']:.2f}%; {t['object_mean_s']:.2f} s "
                  f"per object, wall {t['wall_s']:.1f} s")
            continue
        extra = (f"{r['model']}: first-click proposals: top-scored mIoU "
                 f"{100 * r['summary'].get('first_click_top_mIoU', float('nan')):.2f}%, "
                 f"best-of-{r['summary'].get('first_click_num_proposals', 1)} "
                 f"{100 * r['summary'].get('first_click_best_of_k_mIoU', float('nan')):.2f}%; "
                 f"{t['object_mean_s']:.2f} s per object, wall {t['wall_s']:.1f} s")
        if "sat_latency" in r:
            extra += f"; SAT latency {r['sat_latency']['total_s']:.2f} s"
        print(extra)
    if args.json:
        path = save_json(results[0] if len(results) == 1 else results, args.json)
        print(f"wrote {path}", file=sys.stderr)
    if args.plot:
        from .plot import plot_curves

        path = plot_curves(results, args.plot)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def run_plot(args) -> int:
    from .plot import plot_curves

    missing = [p for p in args.results if not Path(p).is_file()]
    if missing:
        print(f"napari-ois plot: error: not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        path = plot_curves(args.results, args.out, title=args.title)
    except (ValueError, KeyError) as e:
        from ..cli import exception_text

        print(f"napari-ois plot: error: {exception_text(e)}", file=sys.stderr)
        return 2
    print(f"wrote {path}", file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Stand-alone entry (``python -m napari_ois.evaluation.cli eval ...``)."""
    parser = argparse.ArgumentParser(prog="napari-ois")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
