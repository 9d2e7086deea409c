"""Depth providers: one interface for "no depth", a user-supplied map and Depth Anything V2.

A provider is a callable ``provider(rgb_unit) -> depth`` where ``rgb_unit`` is the image as
float32 ``(H, W, 3)`` in [0, 1] (see :func:`napari_ois.data.images.to_unit_rgb`) and ``depth`` is
float32 ``(H, W)`` normalised to [0, 1] per image, larger = nearer (like inverse depth), or
``None`` for the "no depth" mode. Every provider has a ``name``.

Use :func:`make_depth_provider` to turn a user setting (``None``, ``"none"``,
``"depth-anything-v2-small"``, a checkpoint path, an array) into a provider.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Protocol, Tuple, Union, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.images import normalize_depth
from .depth_anything import (
    PATCH_SIZE,
    DepthAnythingConfig,
    DepthAnythingV2,
    imagenet_normalize,
    load_depth_anything_checkpoint,
    resolve_depth_anything_config,
)

__all__ = [
    "DepthProvider",
    "NoDepth",
    "ArrayDepth",
    "DepthAnythingProvider",
    "DepthAnythingWeights",
    "DEPTH_ANYTHING_WEIGHTS",
    "depth_cache_dir",
    "fetch_depth_anything_weights",
    "make_depth_provider",
]


@runtime_checkable
class DepthProvider(Protocol):
    """``provider(rgb_unit (H, W, 3) float32 in [0, 1]) -> (H, W) float32 in [0, 1] or None``."""

    name: str

    def __call__(self, rgb_unit: np.ndarray) -> Optional[np.ndarray]: ...


def _image_hw(rgb_unit: np.ndarray) -> Tuple[int, int]:
    shape = np.shape(rgb_unit)
    if (len(shape) == 3 and shape[-1] == 3) or len(shape) == 2:
        return int(shape[0]), int(shape[1])
    raise ValueError(
        f"a depth provider expects an RGB image of shape (H, W, 3) (see "
        f"napari_ois.data.images.to_unit_rgb); got shape {tuple(shape)}"
    )


# --------------------------------------------------------------------------------------
# no depth / user array
# --------------------------------------------------------------------------------------


class NoDepth:
    """The "no depth" mode: always returns ``None``."""

    name = "none"

    def __call__(self, rgb_unit: np.ndarray) -> None:
        return None

    def __repr__(self) -> str:
        return "NoDepth()"


class ArrayDepth:
    """A depth map supplied by the user (e.g. another napari layer or a file).

    ``array`` is ``(H, W)`` (or ``(H, W, 1)``) of any real dtype. It is normalised to [0, 1]
    with :func:`napari_ois.data.images.normalize_depth` (min/max of the finite values); NaN and
    +-inf become 0 (= farthest). ``larger_is_nearer=False`` is for metric depth (distance),
    which is flipped so that the convention "larger = nearer" holds. The image passed at
    call time must have the same height and width.
    """

    name = "array"

    def __init__(self, array: Any, larger_is_nearer: bool = True) -> None:
        arr = np.asarray(array)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2:
            raise ValueError(
                f"a depth map must be a 2D array (H, W); got shape {arr.shape}. For a 3D "
                "stack pass the slice that matches the image."
            )
        if arr.size == 0:
            raise ValueError(f"the depth map is empty (shape {arr.shape})")
        if not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer)
                or np.issubdtype(arr.dtype, np.floating)):
            raise ValueError(f"a depth map must hold real numbers; got dtype {arr.dtype}")
        raw = arr.astype(np.float64)
        finite = np.isfinite(raw)
        depth = normalize_depth(raw)
        if not larger_is_nearer:
            depth[finite] = 1.0 - depth[finite]
        depth[~finite] = 0.0  # unknown (NaN, +-inf) = farthest, whatever the convention
        self.larger_is_nearer = bool(larger_is_nearer)
        self._depth = depth.astype(np.float32)

    @property
    def shape(self) -> Tuple[int, int]:
        return tuple(self._depth.shape)  # type: ignore[return-value]

    def __call__(self, rgb_unit: np.ndarray) -> np.ndarray:
        hw = _image_hw(rgb_unit)
        if hw != self.shape:
            raise ValueError(
                f"the depth map has shape {self.shape} but the image is {hw[0]} x {hw[1]} "
                "(rows x columns); they must match pixel for pixel."
            )
        return self._depth.copy()

    def __repr__(self) -> str:
        return f"ArrayDepth(shape={self.shape}, larger_is_nearer={self.larger_is_nearer})"


# --------------------------------------------------------------------------------------
# Depth Anything V2 weights
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DepthAnythingWeights:
    """A published Depth Anything V2 checkpoint on the Hugging Face hub."""

    encoder: str
    repo: str
    filename: str
    sha256: Optional[str]
    size_bytes: int
    license: str

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}/resolve/main/{self.filename}"

    @property
    def spec(self) -> str:
        """The name accepted by :func:`make_depth_provider`."""
        return "depth-anything-v2-" + self.repo.rsplit("-", 1)[-1].lower()


# The sha256 values are the Git LFS object ids of the files in the official repositories
# (the "SHA256" shown on each file's Hugging Face page / in the LFS pointer of the upload
# commits: Small 65ae6e3, Base f11825d; the Large id is the one published for
# depth_anything_v2_vitl.pth and pinned by several independent public projects). The sizes
# come from the same pointers. Small is Apache-2.0; Base and Large are CC-BY-NC-4.0
# (non-commercial use only).
DEPTH_ANYTHING_WEIGHTS: Dict[str, DepthAnythingWeights] = {
    "vits": DepthAnythingWeights(
        encoder="vits",
        repo="depth-anything/Depth-Anything-V2-Small",
        filename="depth_anything_v2_vits.pth",
        sha256="715fade13be8f229f8a70cc02066f656f2423a59effd0579197bbf57860e1378",
        size_bytes=99_218_434,
        license="Apache-2.0",
    ),
    "vitb": DepthAnythingWeights(
        encoder="vitb",
        repo="depth-anything/Depth-Anything-V2-Base",
        filename="depth_anything_v2_vitb.pth",
        sha256="0d2b7002e62d39d655571c371333340bd88f67ab95050c03591555aa05645328",
        size_bytes=389_961_218,
        license="CC-BY-NC-4.0",
    ),
    "vitl": DepthAnythingWeights(
        encoder="vitl",
        repo="depth-anything/Depth-Anything-V2-Large",
        filename="depth_anything_v2_vitl.pth",
        sha256="a7ea19fa0ed99244e67b624c72b8580b7e9553043245905be58796a608eb9345",
        size_bytes=1_341_395_338,
        license="CC-BY-NC-4.0",
    ),
}


def depth_cache_dir() -> Path:
    """Where downloaded depth weights go: the project's one cache (``registry.cache_dir``)."""
    from ..registry import cache_dir

    return cache_dir()


def fetch_depth_anything_weights(
    encoder: str = "vits",
    cache_dir: Union[str, Path, None] = None,
    timeout: float = 60.0,
) -> Path:
    """Path of the published checkpoint of ``encoder`` in the cache, downloading it if
    needed (pooch, sha256-checked, through ``registry.fetch``).

    A file already in the cache with the right hash is used without network access, so
    copying a manually downloaded file to ``<cache>/<filename>`` also works. Any failure
    (no network, HTTP error, hash mismatch) raises ``RuntimeError`` telling the user to
    download the file manually and pass its path.
    """
    from ..registry import fetch

    key = resolve_depth_anything_config(encoder).name
    if key not in DEPTH_ANYTHING_WEIGHTS:
        raise ValueError(f"no published weights for encoder {encoder!r}")
    info = DEPTH_ANYTHING_WEIGHTS[key]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else depth_cache_dir()
    manual = (
        f"Download {info.url} manually (about {info.size_bytes / 1e6:.0f} MB, license "
        f"{info.license}) and pass its path, e.g. make_depth_provider('/path/to/{info.filename}')"
        f" or DepthAnythingProvider(checkpoint='/path/to/{info.filename}'), or copy it to "
        f"{cache / info.filename}."
    )
    try:
        return fetch(info.url, info.sha256, info.filename, path=cache, timeout=timeout, hint=manual)
    except RuntimeError as exc:
        raise RuntimeError(f"Depth Anything V2 '{key}' weights: {exc}") from exc


# --------------------------------------------------------------------------------------
# Depth Anything V2 provider
# --------------------------------------------------------------------------------------


def _resolve_device(device: Union[str, torch.device]) -> torch.device:
    from ..registry import resolve_device

    return device if isinstance(device, torch.device) else resolve_device(str(device))


class DepthAnythingProvider:
    """Relative depth from Depth Anything V2.

    Parameters
    ----------
    encoder
        ``"vits"``, ``"vitb"``, ``"vitl"`` (aliases ``small``/``base``/``large`` and
        ``depth-anything-v2-*``), a :class:`DepthAnythingConfig`, or ``None``: ``vits`` when
        no checkpoint is given, otherwise inferred from the checkpoint's embedding width.
    checkpoint
        A local ``.pth`` / ``.safetensors`` file. Without it the published weights of the
        encoder are fetched with pooch (sha256-pinned) into :func:`depth_cache_dir`.
    device
        torch device (``"cpu"``, ``"cuda"``, ..., or ``"auto"``).
    input_size
        The shorter image side is resized to about this many pixels (a multiple of 14),
        keeping the aspect ratio, like the reference ``infer_image`` (518 by default).
    max_side
        Cap on the longer network side (default ``4 * input_size``) so that very elongated
        images do not blow up; the shorter side then shrinks below ``input_size``.

    The network is loaded lazily on the first call (or explicitly with :meth:`load`).
    """

    def __init__(
        self,
        encoder: Union[str, DepthAnythingConfig, None] = None,
        checkpoint: Union[str, Path, None] = None,
        device: Union[str, torch.device] = "cpu",
        input_size: int = 518,
        max_side: Optional[int] = None,
        cache_dir: Union[str, Path, None] = None,
    ) -> None:
        self.checkpoint = Path(checkpoint).expanduser() if checkpoint is not None else None
        if self.checkpoint is None:
            cfg = resolve_depth_anything_config(encoder)
            if cfg.name not in DEPTH_ANYTHING_WEIGHTS:
                raise ValueError(
                    f"encoder {cfg.name!r} has no published weights: pass checkpoint=<path>"
                )
            self._encoder: Union[str, DepthAnythingConfig, None] = cfg.name
        else:
            if encoder is not None:
                resolve_depth_anything_config(encoder)  # validate the name early
            self._encoder = encoder
        self.device = _resolve_device(device)
        self.input_size = int(input_size)
        if self.input_size < PATCH_SIZE:
            raise ValueError(f"input_size must be at least {PATCH_SIZE}; got {input_size}")
        self.max_side = int(max_side) if max_side is not None else 4 * self.input_size
        if self.max_side < self.input_size:
            raise ValueError("max_side must be at least input_size")
        self.cache_dir = cache_dir
        self._model: Optional[DepthAnythingV2] = None
        self._lock = threading.Lock()

    # -- identity ------------------------------------------------------------------

    @property
    def encoder(self) -> Optional[str]:
        """Encoder name (``None`` until a checkpoint whose encoder is inferred is loaded)."""
        if self._model is not None:
            return self._model.cfg.name
        if isinstance(self._encoder, DepthAnythingConfig):
            return self._encoder.name
        if self._encoder is None:
            return None
        return resolve_depth_anything_config(self._encoder).name

    @property
    def name(self) -> str:
        enc = self.encoder
        if self.checkpoint is not None:
            return f"depth-anything-v2:{self.checkpoint.name}"
        return DEPTH_ANYTHING_WEIGHTS[enc].spec if enc in DEPTH_ANYTHING_WEIGHTS else f"depth-anything-v2-{enc}"

    def __repr__(self) -> str:
        src = str(self.checkpoint) if self.checkpoint is not None else "published weights"
        return (
            f"DepthAnythingProvider(encoder={self.encoder!r}, checkpoint={src!r}, "
            f"device={str(self.device)!r}, input_size={self.input_size})"
        )

    # -- model ---------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> DepthAnythingV2:
        """Load (once, thread-safe) and return the network."""
        with self._lock:
            if self._model is None:
                if self.checkpoint is not None:
                    path = self.checkpoint
                    if not path.is_file():
                        raise FileNotFoundError(f"Depth Anything checkpoint not found: {path}")
                else:
                    path = fetch_depth_anything_weights(
                        str(self._encoder), cache_dir=self.cache_dir
                    )
                self._model = load_depth_anything_checkpoint(
                    path, encoder=self._encoder, device=self.device
                )
            return self._model

    def network_size(self, height: int, width: int) -> Tuple[int, int]:
        """Network input ``(h, w)``: multiples of 14, shorter side about ``input_size``,
        longer side at most about ``max_side``, aspect ratio kept."""
        h, w = float(height), float(width)
        scale = self.input_size / min(h, w)
        if max(h, w) * scale > self.max_side:
            scale = self.max_side / max(h, w)
        p = PATCH_SIZE
        return (
            max(p, int(round(h * scale / p)) * p),
            max(p, int(round(w * scale / p)) * p),
        )

    # -- inference -----------------------------------------------------------------

    def predict_raw(self, rgb_unit: np.ndarray) -> np.ndarray:
        """Un-normalised relative inverse depth at image resolution ``(H, W)`` float32."""
        height, width = _image_hw(rgb_unit)
        rgb = np.asarray(rgb_unit, dtype=np.float32)
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=-1)
        rgb = np.nan_to_num(rgb, nan=0.0, posinf=1.0, neginf=0.0)
        model = self.load()
        nh, nw = self.network_size(height, width)
        dtype = next(model.parameters()).dtype
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
            x = x.to(device=self.device, dtype=torch.float32)
            if (nh, nw) != (height, width):
                # bicubic like the reference (cv2.INTER_CUBIC); antialias when shrinking
                x = F.interpolate(
                    x, size=(nh, nw), mode="bicubic", align_corners=False,
                    antialias=nh < height or nw < width,
                )
            x = imagenet_normalize(x).to(dtype)
            depth = model(x)[:, None].float()
            depth = F.interpolate(depth, size=(height, width), mode="bilinear", align_corners=True)
            return depth[0, 0].cpu().numpy().astype(np.float32)

    def __call__(self, rgb_unit: np.ndarray) -> np.ndarray:
        return normalize_depth(self.predict_raw(rgb_unit))


# --------------------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------------------

_NONE_SPECS = {"", "none", "no", "off", "false", "0"}
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")
_ARRAY_SUFFIXES = (".npy", ".tif", ".tiff")


def _read_depth_file(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    import tifffile

    return tifffile.imread(path)


def make_depth_provider(
    spec: Any = None,
    device: Union[str, torch.device] = "cpu",
    **kwargs: Any,
):
    """Turn a user setting into a depth provider.

    - ``None``, ``"none"`` (or ``""``/``"off"``) -> :class:`NoDepth`
    - ``"depth-anything-v2-small"`` / ``"-base"`` / ``"-large"`` (also ``"vits"`` ...) ->
      :class:`DepthAnythingProvider` with the published weights
    - a path ending in ``.pth`` / ``.pt`` / ``.safetensors`` -> :class:`DepthAnythingProvider`
      with that checkpoint (encoder inferred from its embedding width)
    - a path ending in ``.npy`` / ``.tif`` / ``.tiff`` -> :class:`ArrayDepth` of that file
    - an array -> :class:`ArrayDepth`
    - an existing provider (any callable) -> returned unchanged

    ``kwargs`` go to :class:`DepthAnythingProvider` (``input_size``, ``cache_dir``, ...).
    """
    if spec is None:
        return NoDepth()
    if isinstance(spec, np.ndarray):
        return ArrayDepth(spec)
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec).strip()
        if text.lower() in _NONE_SPECS:
            return NoDepth()
        low = text.lower()
        if low.endswith(_CHECKPOINT_SUFFIXES):
            path = Path(text).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"Depth Anything checkpoint not found: {path}")
            return DepthAnythingProvider(checkpoint=path, device=device, **kwargs)
        if low.endswith(_ARRAY_SUFFIXES):
            path = Path(text).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"depth map file not found: {path}")
            return ArrayDepth(_read_depth_file(path))
        try:
            cfg = DepthAnythingConfig.preset(low)
        except ValueError:
            pass
        else:
            return DepthAnythingProvider(encoder=cfg.name, device=device, **kwargs)
        names = ", ".join(w.spec for w in DEPTH_ANYTHING_WEIGHTS.values())
        raise ValueError(
            f"unknown depth setting {text!r}: use 'none', one of {names}, a checkpoint path "
            "(.pth/.safetensors), a depth map file (.npy/.tif) or an array"
        )
    if isinstance(spec, (NoDepth, ArrayDepth, DepthAnythingProvider)) or callable(spec):
        return spec
    if hasattr(spec, "__array__") or isinstance(spec, (list, tuple)):
        return ArrayDepth(np.asarray(spec))
    raise TypeError(f"cannot make a depth provider from {type(spec).__name__}")
