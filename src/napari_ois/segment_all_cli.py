"""``napari-ois segment-all``: every object of an image, or of a folder of images, as TIFF
instance label images (0 background, 1..N objects), with ``segment_all``.

    napari-ois segment-all cells.tif --out cells_labels.tif
    napari-ois segment-all images/ --out labels/                      # a LocalCluster
    napari-ois segment-all images/ --out labels/ --scheduler tcp://host:8786

One image: a tqdm bar over the prompts. A folder (its image files, not recursive): the images
run in parallel on Dask (``dask.distributed``): by default a ``LocalCluster`` sized to the
machine (one single-threaded worker process per core, or ``--workers N``), with
``--scheduler ADDRESS`` a cluster the user already runs (its workers must see the input and
output folders: they read and write the files themselves). A tqdm bar counts the images.

Resuming: each label image is written as its image finishes, to a temporary name first and
then renamed, so a file under its final name is always complete. A stopped run started again
skips the images whose output exists (``--overwrite`` redoes them). An unreadable image is
reported and skipped; the others are still written; the exit status is 1 when any failed.

Zarr: a ``.zarr`` store (a folder named ``*.zarr``, or one holding zarr metadata) is one
image, read lazily (``read_zarr``: an array, or a group's OME-Zarr ``multiscales`` pyramid,
largest level segmented), so ``segment_all`` reads it tile by tile, never whole; in a folder,
its ``*.zarr`` stores are images too. Needs ``zarr`` (``pip install zarr``).

Output names: ``OUT/<stem>.tif`` for each ``<stem>.<ext>`` in the folder; for one image,
``--out`` is the file (``.tif`` / ``.tiff``) or a folder that receives ``<stem>.tif``.
Labels are uint16 (uint32 above 65,535 objects), zlib-compressed.

Imports here stay light (argparse, pathlib): ``napari-ois --help`` builds every parser.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

LABEL_SUFFIXES = (".tif", ".tiff")
#: the options of ``segment_all`` the command line sets (name -> value); see ``_options``
_SEGMENTERS: Dict[tuple, object] = {}


# --------------------------------------------------------------------------- files
def list_images(folder: Path) -> List[Path]:
    """The image files directly in ``folder`` (by extension, sorted by name; hidden files and
    sub-folders are left out) and its ``*.zarr`` stores."""
    from .data.images import IMAGE_EXTENSIONS

    exts = tuple(IMAGE_EXTENSIONS) + (".npy",)
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and (
        (p.is_file() and p.suffix.lower() in exts) or (p.is_dir() and p.suffix.lower() == ".zarr")))


def output_path(image: Path, out_dir: Path) -> Path:
    return out_dir / f"{image.stem}.tif"


def plan_folder(folder: Path, out_dir: Path, overwrite: bool = False) -> Tuple[List[Tuple[Path, Path]], List[Path]]:
    """``(todo, done)``: the ``(image, output)`` pairs to run, and the images skipped because
    their output already exists (all of them run with ``overwrite``)."""
    from .cli import UsageError

    images = list_images(folder)
    if not images:
        raise UsageError(f"{folder}: no image files ({', '.join(_image_exts())}) in this folder")
    stems: Dict[str, Path] = {}
    for p in images:
        if p.stem in stems:
            raise UsageError(f"{folder}: {stems[p.stem].name} and {p.name} would both be written to "
                             f"{p.stem}.tif; rename one of them")
        stems[p.stem] = p
    todo, done = [], []
    for p in images:
        out = output_path(p, out_dir)
        if out.exists() and not overwrite:
            done.append(p)
        else:
            todo.append((p, out))
    return todo, done


def _image_exts() -> Sequence[str]:
    from .data.images import IMAGE_EXTENSIONS

    return tuple(IMAGE_EXTENSIONS) + (".npy", ".zarr")


def write_labels(labels, out_path: Path) -> None:
    """Write ``labels`` as a TIFF: first under a temporary name, then renamed, so that a file
    under ``out_path`` is always complete (a stopped run leaves no partial output there)."""
    import numpy as np
    import tifffile

    labels = np.asarray(labels)
    dtype = np.uint16 if labels.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.partial.tif")
    try:
        tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib")
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()


def is_zarr(path: Path) -> bool:
    """Whether ``path`` is a zarr store: a folder named ``*.zarr`` or holding zarr metadata."""
    path = Path(path)
    return path.is_dir() and (path.suffix.lower() == ".zarr" or any(
        (path / name).is_file() for name in (".zarray", ".zgroup", "zarr.json")))


def _zarr_plane(array):
    """A zarr array's 2D image, lazily: leading axes of length 1 dropped, a 3D stack's middle
    slice (as ``_read``); ``(H, W)`` and ``(H, W, C <= 16)`` arrays as they are."""
    from .cli import UsageError

    def is_plane(shape):
        return len(shape) == 2 or (len(shape) == 3 and shape[-1] <= 16)

    if is_plane(array.shape):
        return array
    import dask.array as da

    lazy = da.from_zarr(array)
    while lazy.ndim > 2 and lazy.shape[0] == 1 and not is_plane(lazy.shape):
        lazy = lazy[0]
    if lazy.ndim == 3 and not is_plane(lazy.shape):
        lazy = lazy[lazy.shape[0] // 2]
    if not is_plane(lazy.shape):
        raise UsageError(f"zarr array of shape {tuple(array.shape)}: only 2D images, RGB(A) images and "
                         "3D stacks (the middle slice is used) are supported")
    return lazy


def read_zarr(path: Path):
    """The image of a zarr store, never read whole: its array, or a group's multiscale pyramid
    (the OME-Zarr ``multiscales`` datasets, largest first) or its only array; each as
    ``_zarr_plane``."""
    from .cli import UsageError
    from .data.images import check_dtype

    try:
        import zarr
    except ImportError:
        raise UsageError(f"{path}: reading a .zarr image needs zarr (pip install zarr)") from None
    try:
        node = zarr.open(str(path), mode="r")
        if isinstance(node, zarr.Array):
            levels = [node]
        elif node.attrs.get("multiscales"):
            levels = [node[d["path"]] for d in node.attrs["multiscales"][0]["datasets"]]
        else:
            keys = sorted(node.array_keys())
            if len(keys) != 1:
                raise UsageError(f"{path}: a zarr group with {len(keys)} arrays and no multiscales; "
                                 "give the path of one array")
            levels = [node[keys[0]]]
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - zarr raises many types for a bad store
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path} could not be read as zarr ({reason})") from None
    try:
        check_dtype(levels[0].dtype)
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}") from None
    planes = [_zarr_plane(level) for level in levels]
    return planes[0] if len(planes) == 1 else planes


def _read(path: Path):
    """The image as the ``segment`` command reads it (a 3D stack: its middle slice); a zarr
    store lazily (``read_zarr``)."""
    from .cli import _read_input_image

    if is_zarr(Path(path)):
        return read_zarr(Path(path))
    image = _read_input_image(str(path))
    if image.ndim == 3 and image.shape[-1] > 16:
        image = image[image.shape[0] // 2]
    return image


# --------------------------------------------------------------------------- one image
def _segmenter(model: str, device: str, options: Optional[dict] = None):
    """An ``AutoSegmenter`` per (model, device, options), cached in this process (a Dask
    worker loads its model once)."""
    from .segment_all import AutoSegmenter

    options = dict(options or {})
    key = (model, device, tuple(sorted(options.items())))
    seg = _SEGMENTERS.get(key)
    if seg is None:
        seg = _SEGMENTERS[key] = AutoSegmenter(model=model, device=device, **options)
    return seg


def segment_file(image_path, out_path, model: str = "default", device: str = "cpu",
                 options: Optional[dict] = None, threads: Optional[int] = None) -> dict:
    """Segment one image file and write its labels (the folder runner's task; it runs on a
    Dask worker). Never raises for a bad image: returns ``{"status": "error", "message"}``.

    Returns ``image``, ``out``, ``status`` ("written" or "error"), and for a written image
    ``objects``, ``seconds``, ``object_size`` and ``prompts``.
    """
    image_path, out_path = Path(image_path), Path(out_path)
    result = {"image": str(image_path), "out": str(out_path)}
    t0 = time.perf_counter()
    try:
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        image = _read(image_path)
        labels, info = _segmenter(model, device, options)(image, return_info=True)
        write_labels(labels, out_path)
    except (ValueError, OSError, RuntimeError) as exc:
        from .cli import exception_text

        text = " ".join(exception_text(exc).split()) or type(exc).__name__
        return {**result, "status": "error", "message": text}
    return {**result, "status": "written", "objects": int(labels.max(initial=0)),
            "seconds": round(time.perf_counter() - t0, 3), "object_size": round(info.object_size, 2),
            "prompts": info.prompts}


# --------------------------------------------------------------------------- folders
def local_cluster_size(workers: Optional[int] = None) -> int:
    """Workers of the default ``LocalCluster``: one single-threaded process per core."""
    if workers is not None:
        return max(1, int(workers))
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        n = os.cpu_count() or 1
    return max(1, n)


def run_folder(folder, out_dir, model: str = "default", device: str = "cpu",
               options: Optional[dict] = None, scheduler: Optional[str] = None,
               workers: Optional[int] = None, client=None, overwrite: bool = False,
               progress: bool = True, on_result=None) -> dict:
    """Segment every image of ``folder`` into ``out_dir`` on Dask, skipping the images whose
    output exists (a stopped run resumes).

    The cluster: ``client`` (a ``distributed.Client``) when given, else ``scheduler`` (an
    address such as ``tcp://host:8786``), else a new ``LocalCluster`` of
    ``local_cluster_size(workers)`` single-threaded worker processes, closed at the end.
    ``on_result(result)`` is called on this side as each image finishes. Returns a summary:
    ``written``, ``skipped``, ``failed`` (lists of paths / results) and ``seconds``.
    """
    folder, out_dir = Path(folder), Path(out_dir)
    todo, done = plan_folder(folder, out_dir, overwrite)
    t0 = time.perf_counter()
    summary = {"images": len(todo) + len(done), "skipped": [str(p) for p in done], "written": [],
               "failed": [], "seconds": 0.0}
    if not todo:
        return summary
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        from .cli import UsageError

        raise UsageError("folder mode runs on Dask: install it with `pip install distributed` "
                         "(the dask.distributed scheduler)") from None
    own_cluster = own_client = None
    threads = None
    if client is None:
        if scheduler:
            client = own_client = Client(scheduler)
        else:
            n = min(local_cluster_size(workers), len(todo))
            own_cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
            client = own_client = Client(own_cluster)
            threads = 1
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="image", desc="segment-all", file=sys.stderr)
    import uuid

    run_id = uuid.uuid4().hex[:8]
    for _, dst in todo:  # what a killed run left under temporary names
        for stale in dst.parent.glob(f".{dst.name}.*.partial.tif"):
            stale.unlink(missing_ok=True)
    futures = []
    try:
        futures = [client.submit(segment_file, str(src), str(dst), model, device, options, threads,
                                 key=f"segment-all-{run_id}-{i}", pure=False)
                   for i, (src, dst) in enumerate(todo)]
        for fut in as_completed(futures):
            res = fut.result()
            (summary["written"] if res["status"] == "written" else summary["failed"]).append(res)
            if on_result is not None:
                on_result(res)
            if bar is not None:
                bar.update(1)
                if res["status"] != "written":
                    bar.write(f"skipped {res['image']}: {res['message']}")
    except BaseException:  # Ctrl-C, a failed task: the images not started yet are not started
        client.cancel([f for f in futures if not f.done()])
        raise
    finally:
        if bar is not None:
            bar.close()
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


# --------------------------------------------------------------------------- command
def _options(args) -> dict:
    opts = {}
    if args.object_size is not None:
        opts["object_size"] = args.object_size
    if args.polarity != "auto":
        opts["polarity"] = args.polarity
    return opts


def _positive_float(text: str) -> float:
    import argparse
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels, got {text!r}")
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of pixels, got {text!r}")
    return v


def _positive_int(text: str) -> int:
    import argparse

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def cmd_segment_all(args) -> int:
    from .cli import DEVICE_PATTERN, UsageError, _check_model_arg, _check_out_path

    src = Path(args.input)
    if not src.exists():
        raise UsageError(f"{args.input}: no such image or folder")
    if not DEVICE_PATTERN.match(str(args.device).lower()):
        raise UsageError(f"--device {args.device!r}: use auto, cpu, cuda (or cuda:N) or mps")
    out = Path(args.out)
    if src.is_dir() and not is_zarr(src):
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {args.out}: is a file; a folder input needs an output folder")
        if out.resolve() == src.resolve():
            raise UsageError(f"--out {args.out}: is the input folder; give another folder")
        todo, done = plan_folder(src, out, args.overwrite)  # input problems before any model
        if todo:
            _check_model_arg(args.model)
        if done:
            print(f"{len(done)} of {len(todo) + len(done)} images already have labels in {out}: "
                  "skipped (--overwrite redoes them)")
        if not todo:
            print("nothing to do")
            return 0
        where = args.scheduler or f"a local Dask cluster of {min(local_cluster_size(args.workers), len(todo))} workers"
        print(f"segmenting {len(todo)} images on {where}")
        summary = run_folder(src, out, args.model, args.device, _options(args), args.scheduler,
                             args.workers, overwrite=args.overwrite)
        n_ok, n_bad = len(summary["written"]), len(summary["failed"])
        objects = sum(r["objects"] for r in summary["written"])
        print(f"wrote {n_ok} label images to {out} ({objects} objects) in {summary['seconds']:.1f} s"
              + (f"; {n_bad} images could not be segmented:" if n_bad else ""))
        for r in summary["failed"]:
            print(f"  {r['image']}: {r['message']}", file=sys.stderr)
        return 1 if n_bad else 0

    # one image
    if out.suffix.lower() in LABEL_SUFFIXES and not out.is_dir():
        out_path = _check_out_path(args.out, suffixes=LABEL_SUFFIXES)
    elif out.suffix and not out.is_dir():
        raise UsageError(f"--out {args.out}: label images are TIFF; use a .tif/.tiff name or a folder")
    else:
        out_path = _check_out_path(str(output_path(src, out)), suffixes=LABEL_SUFFIXES)
    if out_path.resolve() == src.resolve():
        raise UsageError(f"--out {args.out}: is the input image; give another name")
    if args.scheduler or args.workers:
        print("one image runs here: --scheduler and --workers are for folders")
    image = _read(src)
    _check_model_arg(args.model)
    from tqdm import tqdm

    seg = _segmenter(args.model, args.device, _options(args))
    bar = tqdm(total=0, unit="prompt", desc="segment-all", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        labels, info = seg(image, progress=progress, return_info=True)
    finally:
        bar.close()
    try:
        write_labels(labels, out_path)
    except OSError as exc:
        raise UsageError(f"--out {args.out}: could not write it ({exc.strerror or exc})") from None
    print(f"wrote {out_path}: {int(labels.max(initial=0))} objects (object size {info.object_size:.1f} px, "
          f"{info.polarity} objects, {info.prompts} prompts, {info.seconds:.1f} s)")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "segment-all", help="segment every object of an image or a folder of images (instance labels)",
        description="Every object of an image as a TIFF instance label image (0 background, 1..N), "
        "from prompts the model places itself (napari_ois.segment_all). A folder runs its images in "
        "parallel on Dask (a LocalCluster by default, or --scheduler); images whose labels exist "
        "are skipped, so a stopped run resumes.")
    p.add_argument("input", metavar="IMAGE_OR_FOLDER", help="an image file, or a folder of images")
    p.add_argument("--out", required=True, metavar="PATH_OR_DIR",
                   help="output .tif for one image, or a folder (OUT/<stem>.tif per image)")
    p.add_argument("--model", default="default", help="registry name, weights path or model folder")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or mps")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="a running Dask scheduler (e.g. tcp://host:8786) instead of a local cluster")
    p.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help="workers of the local cluster (default: one per CPU core)")
    p.add_argument("--object-size", type=_positive_float, default=None, metavar="PX",
                   help="typical object diameter in pixels (default: estimated per image)")
    p.add_argument("--polarity", choices=("auto", "bright", "dark", "both"), default="auto",
                   help="bright objects (fluorescence), dark ones (H&E nuclei), both, or auto (default)")
    p.add_argument("--overwrite", action="store_true", help="redo images whose labels already exist")
    p.set_defaults(func=cmd_segment_all)
