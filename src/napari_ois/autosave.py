"""Autosave of a labels array to a TIFF file: nothing committed is lost to a crash.

Qt-free; the dock's "autosave labels to" field (``napari_ois._panels.AutosavePanel``) calls
``save_labels`` after every commit and propagation into a labels layer, and ``load_labels``
when the user picks a file that exists (its labels come back into an empty or new layer).

``save_labels`` is atomic: the array goes to a temporary file in the same folder, which is
flushed to disk and then renamed over the target (``os.replace``), so the file on disk is
always either the previous save or the new one, never half of one, whenever the process dies.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

PathLike = Union[str, os.PathLike]


class AutosaveError(ValueError):
    """An autosave file that cannot be written, read or used; the message names the file."""


def save_labels(path: PathLike, labels: np.ndarray) -> Path:
    """Write ``labels`` (an integer array, 2D or a stack) to the TIFF ``path`` atomically.

    Raises ``AutosaveError`` (the old file, if any, is left as it was) when the array is not
    integer or the folder cannot be written."""
    path = Path(path)
    data = np.asarray(labels)
    if not (np.issubdtype(data.dtype, np.integer) or data.dtype == bool):
        raise AutosaveError(f"autosave {path}: labels must be whole numbers, not {data.dtype}")
    if data.dtype == bool:
        data = data.astype(np.uint8)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise AutosaveError(f"autosave {path}: the folder {folder} does not exist")
    tmp: Optional[str] = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        import tifffile

        tifffile.imwrite(tmp, np.ascontiguousarray(data), compression="zlib",
                         compressionargs={"level": 1}, metadata=_metadata(data.ndim))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # on disk before it replaces the old file
        finally:
            os.close(fd)
        os.chmod(tmp, _mode(path))
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise AutosaveError(f"autosave {path}: cannot write it ({exc.strerror or exc})") from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def load_labels(path: PathLike, shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """The labels array saved in ``path`` (by ``save_labels`` or any integer TIFF).

    ``shape``: the shape the labels must have (the image's spatial shape); a file of another
    shape, a file that is not a TIFF, or non-integer data raise ``AutosaveError`` with a
    message that names the file and says what to do."""
    path = Path(path)
    if not path.is_file():
        raise AutosaveError(f"autosave {path}: no such file")
    try:
        import tifffile

        data = np.asarray(tifffile.imread(str(path)))
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds for a bad file
        raise AutosaveError(f"autosave {path}: not a readable TIFF file ({exc})") from exc
    if not (np.issubdtype(data.dtype, np.integer) or data.dtype == bool):
        raise AutosaveError(f"autosave {path}: holds {data.dtype} values, not labels (whole numbers)")
    if shape is not None and tuple(data.shape) != tuple(int(s) for s in shape):
        raise AutosaveError(
            f"autosave {path}: holds labels of shape {tuple(data.shape)} but the image has "
            f"{tuple(int(s) for s in shape)}: it belongs to another image; choose another file")
    if data.dtype == bool:
        data = data.astype(np.uint8)
    return data


def _mode(path: Path) -> int:
    """The new file's permissions: the old file's, else what the umask allows (mkstemp's 0600
    is for the temporary file only)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _metadata(ndim: int) -> dict:
    axes = {2: "YX", 3: "ZYX", 4: "TZYX"}.get(ndim)
    return {"axes": axes} if axes else {}
