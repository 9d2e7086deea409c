"""``napari-ois train --config CONFIG.yaml --out DIR [--resume]``."""

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
