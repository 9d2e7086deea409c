"""``napari-ois train --config CONFIG.yaml --out DIR [--resume]``, ``napari-ois pack`` and
``napari-ois train-pack``."""

from __future__ import annotations


def cmd_train(args) -> int:
    from .loop import TrainConfig, train

    tc = TrainConfig.from_yaml(args.config)
    overrides = {k: v for k, v in (("steps", args.steps), ("device", args.device),
                                   ("init_from", args.init_from),
                                   ("time_limit_min", args.time_limit_min)) if v is not None}
    if args.images or args.masks:
        if not (args.images and args.masks):
            raise ValueError("fine-tuning on a folder needs both --images and --masks")
        overrides["folders"] = [{"images": args.images, "masks": args.masks}]
    for k, v in overrides.items():
        setattr(tc, k, v)
    result = train(tc, args.out, resume=args.resume, progress=not args.no_progress)
    print(f"done at step {result['step']}: {args.out}/model.safetensors (+ last.pt, history.json)")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune an OIS model")
    p.add_argument("--config", required=True, help="training config YAML (see configs/)")
    p.add_argument("--out", required=True, help="output folder (checkpoints, weights, history)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt exactly")
    p.add_argument("--steps", type=int, default=None, help="override the number of steps")
    p.add_argument("--device", default=None, help="override the device (auto, cpu, cuda)")
    p.add_argument("--init-from", default=None, help="fine-tune this model (registry name or path)")
    p.add_argument("--images", default=None, help="fine-tune on this image folder ...")
    p.add_argument("--masks", default=None, help="... with masks of the same stems")
    p.add_argument("--time-limit-min", type=float, default=None, help="stop after this many minutes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    q = sub.add_parser("pack", help="write a compact training pack (for GPU machines)",
                       description="All training images (never eval/) resized and JPEG-encoded, "
                       "their instance maps, and pre-built order-aware scenes, in one .npz.")
    q.add_argument("--out", required=True, help="the pack file (.npz)")
    q.add_argument("--side", type=int, default=224, help="longest side of the stored images")
    q.add_argument("--quality", type=int, default=85, help="JPEG quality")
    q.add_argument("--scenes", type=int, default=600, help="synthetic scenes with depth")
    q.add_argument("--max-per-set", type=int, default=None, help="at most N images per set")
    q.add_argument("--sets", nargs="*", default=None, help="training sets (default: all)")
    q.set_defaults(func=cmd_pack)

    from .pack import add_train_pack_arguments  # numpy only: the parser stays free of torch

    r = sub.add_parser("train-pack", help="train from a pack, everything on one device (GPU path)")
    add_train_pack_arguments(r)
    r.set_defaults(func=cmd_train_pack)


def cmd_pack(args) -> int:
    from .pack import build_pack

    meta = build_pack(args.out, sets=args.sets, side=args.side, quality=args.quality,
                      scenes=args.scenes, max_per_set=args.max_per_set)
    print(f"wrote {args.out}: {meta['images']} images, {meta['scenes']} scenes, "
          f"{meta['bytes'] / 2**20:.1f} MB")
    return 0


def cmd_train_pack(args) -> int:
    from .tensor_train import run

    return run(args)
