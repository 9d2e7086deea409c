"""A folder of images to annotate, one labels file per image (Qt-free).

``AnnotationFolder(folder, out)`` lists the images of ``folder`` (PNG, JPEG, TIFF, BMP and
NumPy ``.npy``, not its subfolders, sorted by name) and keeps each image's labels in
``out/<stem>.tif`` (``napari_ois.autosave``: atomic writes, so a crash never leaves half a
file). It knows which image is open (``index``), goes to the next or previous one, loads an
image with its saved labels, saves labels, and counts the images that have a labels file
(``n_annotated``, ``progress()``). Reopening the folder resumes where the work stopped: the
image opened last (kept in ``out/.napari-ois-annotate.json``), else the first image without
a labels file. The widget's folder section (``napari_ois._panels.FolderPanel``) drives it.

The ``napari-ois annotate FOLDER --out LABELS_DIR`` command opens napari with the OIS dock on
the folder (``--list`` prints the progress instead; without a display it says so and exits).
Only that command imports napari, lazily.
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .autosave import AutosaveError, load_labels, save_labels
from .data.images import IMAGE_EXTENSIONS, read_image

PathLike = Union[str, os.PathLike]

#: the files ``AnnotationFolder`` lists as images
FOLDER_EXTENSIONS = tuple(IMAGE_EXTENSIONS) + (".npy",)
#: the file in the labels folder that remembers the image opened last
STATE_FILE = ".napari-ois-annotate.json"


class AnnotateError(ValueError):
    """A folder that cannot be annotated (no images, a labels folder that cannot be used)."""


def list_images(folder: PathLike) -> list:
    """The image files directly in ``folder`` (``FOLDER_EXTENSIONS``), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AnnotateError(f"{folder}: not a folder")
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in FOLDER_EXTENSIONS), key=lambda p: p.name)


def is_rgb(image: np.ndarray) -> bool:
    """Whether the last axis of ``image`` is colour (RGB or RGBA), as napari guesses it."""
    return image.ndim >= 3 and image.shape[-1] in (3, 4)


def spatial_shape(image: np.ndarray) -> tuple:
    """The shape of ``image`` without its colour axis: the shape its labels have."""
    return tuple(image.shape[:-1]) if is_rgb(image) else tuple(image.shape)


class AnnotationFolder:
    """The images of ``folder`` and their labels files in ``out`` (made if missing).

    Args:
        folder: the images (``list_images``).
        out: the labels folder (default ``folder/labels``); must not be ``folder`` itself.
        start: the image to open first (an index or a file name); default ``resume_index()``.
        create: make the labels folder now (False: only to look, e.g. ``--list``).
    """

    def __init__(self, folder: PathLike, out: Optional[PathLike] = None, start: Union[int, str, None] = None,
                 create: bool = True):
        self.folder = Path(folder)
        self.images = list_images(self.folder)
        if not self.images:
            raise AnnotateError(f"{self.folder}: no images ({', '.join(FOLDER_EXTENSIONS)})")
        self.out = Path(out) if out is not None and str(out).strip() else self.folder / "labels"
        if self.out.exists() and not self.out.is_dir():
            raise AnnotateError(f"labels folder {self.out}: is a file, not a folder")
        if self.out.resolve() == self.folder.resolve():
            raise AnnotateError(f"labels folder {self.out}: give another folder than the images' "
                                "(the labels files would be taken for images)")
        if create:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise AnnotateError(f"labels folder {self.out}: cannot create it ({exc.strerror or exc})") from exc
        stems = [p.stem for p in self.images]
        #: the labels file name of each image: ``<stem>.tif``; ``<name>.tif`` where two
        #: images share a stem (``a.png`` and ``a.tif``)
        self.label_names = [f"{p.stem if stems.count(p.stem) == 1 else p.name}.tif" for p in self.images]
        self.index = self._position(start) if start is not None else self.resume_index()

    def __len__(self) -> int:
        return len(self.images)

    # ----------------------------------------------------------------- where
    def _position(self, which: Union[int, str]) -> int:
        if isinstance(which, (int, np.integer)):
            return int(np.clip(int(which), 0, len(self) - 1))
        names = [p.name for p in self.images]
        if str(which) in names:
            return names.index(str(which))
        stems = [p.stem for p in self.images]
        if str(which) in stems:
            return stems.index(str(which))
        raise AnnotateError(f"{which!r} is not an image of {self.folder}")

    @property
    def current(self) -> Path:
        """The image file open now."""
        return self.images[self.index]

    @property
    def name(self) -> str:
        """The open image's name as the viewer shows it (its stem)."""
        return self.current.stem

    def labels_path(self, index: Optional[int] = None) -> Path:
        """The labels file of image ``index`` (default: the open one)."""
        return self.out / self.label_names[self.index if index is None else index]

    def is_annotated(self, index: Optional[int] = None) -> bool:
        """Whether image ``index`` has a labels file (something was committed on it)."""
        return self.labels_path(index).is_file()

    @property
    def n_annotated(self) -> int:
        return sum(self.is_annotated(i) for i in range(len(self)))

    def progress(self) -> str:
        """``"image 3 of 10 (cells.tif) · 2 of 10 annotated"``."""
        return (f"image {self.index + 1} of {len(self)} ({self.current.name}) · "
                f"{self.n_annotated} of {len(self)} annotated")

    def resume_index(self) -> int:
        """Where reopening starts: the image opened last (if it is still in the folder), else
        the first image without a labels file, else the first image."""
        last = self._state().get("last")
        names = [p.name for p in self.images]
        if last in names:
            return names.index(last)
        return next((i for i in range(len(self)) if not self.is_annotated(i)), 0)

    def go(self, index: int) -> int:
        """Open image ``index`` (clamped to the folder); it is remembered as the last one."""
        self.index = self._position(int(index))
        self._write_state({"last": self.current.name})
        return self.index

    def next(self) -> int:
        return self.go(self.index + 1)

    def previous(self) -> int:
        return self.go(self.index - 1)

    # ----------------------------------------------------------------- pixels
    def load(self, index: Optional[int] = None) -> tuple:
        """``(image, labels)`` of image ``index``: the pixels as stored (``read_image``) and
        its saved labels, or None when it has none. A labels file of another shape raises
        ``AnnotateError`` (it is left alone)."""
        i = self.index if index is None else index
        image = read_image(self.images[i])
        path = self.labels_path(i)
        if not path.is_file():
            return image, None
        try:
            return image, load_labels(path, shape=spatial_shape(image))
        except AutosaveError as exc:
            raise AnnotateError(str(exc)) from exc

    def save(self, labels: np.ndarray, index: Optional[int] = None) -> Path:
        """Write the labels of image ``index`` to its file (atomically)."""
        return save_labels(self.labels_path(index), labels)

    # ----------------------------------------------------------------- state
    def _state(self) -> dict:
        try:
            state = json.loads((self.out / STATE_FILE).read_text())
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write_state(self, state: dict) -> None:
        """Atomically, like the labels (a lost state only means another resume point)."""
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f"{STATE_FILE}.", suffix=".tmp", dir=self.out)
            with os.fdopen(fd, "w") as f:
                json.dump(state, f)
            os.replace(tmp, self.out / STATE_FILE)
            tmp = None
        except OSError:
            pass
        finally:
            if tmp is not None:
                with suppress(OSError):
                    os.unlink(tmp)


# --------------------------------------------------------------------------- command
def add_parsers(sub) -> None:
    p = sub.add_parser(
        "annotate",
        help="go through a folder of images in napari; every commit is saved to LABELS_DIR/<stem>.tif",
        description="Open napari with the OIS dock on the first image of FOLDER still to annotate "
                    "(or the one opened last): Next / Previous in the dock's folder section go "
                    "through the images, each commit is saved at once to LABELS_DIR/<stem>.tif, "
                    "and reopening the folder resumes there. --list prints the progress.",
    )
    p.add_argument("folder", help="the folder of images (PNG, JPEG, TIFF, BMP, .npy; not its subfolders)")
    p.add_argument("--out", default=None, help="the labels folder (default FOLDER/labels)")
    p.add_argument("--model", default="default", help="registry name or weights path (default: default)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--list", action="store_true",
                   help="print each image, whether it has labels, and the count (no viewer)")
    p.set_defaults(func=cmd_annotate)


def has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def cmd_annotate(args) -> int:
    folder = AnnotationFolder(args.folder, args.out, create=not args.list)
    if args.list:
        for i, path in enumerate(folder.images):
            mark = "labels" if folder.is_annotated(i) else "-"
            here = "  <- resumes here" if i == folder.index else ""
            print(f"{i + 1:>4}  {mark:<6}  {path.name}{here}")
        print(f"{folder.n_annotated} of {len(folder)} images annotated; labels in {folder.out}")
        return 0
    if not has_display():
        raise AnnotateError("no display (DISPLAY / WAYLAND_DISPLAY is not set): napari needs one; "
                            "run it on a desktop, over ssh -X, or under xvfb-run; "
                            "--list prints the progress without a viewer")
    open_in_napari(folder, model=args.model, device=args.device)
    return 0


def open_in_napari(folder: AnnotationFolder, model: str = "default", device: str = "auto", run: bool = True):
    """napari with the OIS dock on ``folder`` (its folder section opened); returns
    ``(viewer, widget)`` (``run``: napari's event loop until the window closes)."""
    import napari

    viewer = napari.Viewer(title=f"napari-ois annotate {folder.folder}")
    _, widget = viewer.window.add_plugin_dock_widget("napari-ois", "OIS segmentation")
    if model in widget.model_combo.choices:
        widget.model_combo.value = model
    else:  # a weights file: the checkpoint field (a missing file is a status message)
        widget.checkpoint.value = model
    widget.device_combo.value = device
    widget.folder_panel.open(folder)
    if run:
        napari.run()
    return viewer, widget

