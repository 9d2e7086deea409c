"""Named models, weight files and their loading.

A model is a JSON config (``OISConfig`` + metadata) and a safetensors state dict. Shipped
weights live in ``napari_ois/weights/``; external files are fetched with pooch against a
pinned sha256 into a cache directory (``NAPARI_OIS_CACHE`` overrides it); a local path is
always accepted.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional, Union

import torch

from . import _triton_guard  # noqa: F401 - before .model imports timm (see _triton_guard)
from .model import OISConfig, OISModel, get_config

WEIGHTS_DIR = Path(str(resources.files("napari_ois") / "weights"))


@dataclass(frozen=True)
class ModelEntry:
    """One named model of the registry."""

    name: str
    arch: str
    description: str
    #: file name inside ``napari_ois/weights`` (shipped) ...
    package_file: Optional[str] = None
    #: ... or a URL with its sha256 (fetched with pooch into the cache).
    url: Optional[str] = None
    sha256: Optional[str] = None
    #: config overrides on top of the named architecture when no file is used.
    overrides: dict = field(default_factory=dict)

    def location(self) -> str:
        if self.package_file:
            return str(WEIGHTS_DIR / self.package_file)
        if self.url:
            return f"{self.url} (sha256 {self.sha256}) -> {cache_dir()}"
        return "(no weights: randomly initialised, untrained)"

    def available(self) -> bool:
        """Whether ``build_model`` can build it without a download (an untrained
        architecture always can: its weights are random)."""
        if self.package_file:
            return (WEIGHTS_DIR / self.package_file).is_file()
        if self.url:
            return (cache_dir() / Path(self.url).name).is_file()
        return True

    @property
    def trained(self) -> bool:
        """Whether the entry has a weights file (shipped or downloadable)."""
        return bool(self.package_file or self.url)

    def status(self) -> str:
        """``yes`` (weights here), ``no`` (weights missing or not downloaded yet) or
        ``untrained`` (no weights file: random initialisation)."""
        if not self.trained:
            return "untrained"
        return "yes" if self.available() else "no"


#: the shipped default's weights (float16 safetensors) and its JSON config, in ``WEIGHTS_DIR``
DEFAULT_FILE = "default.safetensors"
#: the trained box-prompt model (``ois-tiny-cef``), shipped beside the default
BOXES_FILE = "boxes.safetensors"


def _shipped_default() -> ModelEntry:
    if (WEIGHTS_DIR / DEFAULT_FILE).is_file():
        cfg, meta = {}, {}
        cfg_file = (WEIGHTS_DIR / DEFAULT_FILE).with_suffix(".json")
        if cfg_file.is_file():
            cfg = json.loads(cfg_file.read_text())
            meta = cfg.get("notes", {})
        arch = str(cfg.get("name", "ois-tiny"))
        desc = f"{arch} trained by this project (shipped). " + str(meta.get("summary", ""))
        return ModelEntry("default", arch, desc.strip(), package_file=DEFAULT_FILE)
    return ModelEntry(
        "default", "ois-tiny",
        "UNTRAINED ois-tiny (random weights, seed 0): no trained weights are shipped yet.",
    )


def registry() -> dict[str, ModelEntry]:
    """All named models. ``default`` is the shipped CPU model."""
    entries = [
        _shipped_default(),
        ModelEntry("ois-tiny", "ois-tiny", "ois-tiny architecture, untrained (random weights, seed 0)."),
        ModelEntry("ois-tiny-cnn", "ois-tiny-cnn", "ois-tiny with a ResNet-18-D encoder, untrained."),
        ModelEntry("ois-tiny-ef", "ois-tiny-ef",
                   "ois-tiny with early fusion (clicks and previous mask enter the ViT), untrained."),
        ModelEntry("boxes", "ois-tiny-cef",
                   "ois-tiny-cef after its first 128 min (shipped): clicks and box prompts; "
                   "the default is the same network trained 1,472 min more (thirteen warm restarts, "
                   "fewer clicks on the dev sets); this one had the higher first-box IoU on some "
                   "sets than cef6 (docs/benchmarks.md).",
                   package_file=BOXES_FILE),
        ModelEntry("ois-tiny-cef", "ois-tiny-cef",
                   "convolutional early fusion (clicks and previous mask as input channels "
                   "of a ResNet-10-T), untrained."),
        ModelEntry("ois-tiny-cef-sp", "ois-tiny-cef-sp",
                   "ois-tiny-cef with sparse click-feature propagation over its stride-4 "
                   "features (CSFPN's idea, fusion design d), untrained; warm-starts from boxes."),
        ModelEntry("ois-small", "ois-small", "larger convolutional model for GPU users, untrained."),
        ModelEntry("ois-base", "ois-base", "the paper's layout (ViT-B/16 at 1024 px), untrained."),
    ]
    return {e.name: e for e in entries}


def cache_dir() -> Path:
    """Where downloaded weights go: ``$NAPARI_OIS_CACHE`` or the user's cache folder."""
    env = os.environ.get("NAPARI_OIS_CACHE")
    if env:
        return Path(env)
    import pooch

    return Path(pooch.os_cache("napari-ois"))


def fetch(url: str, sha256: Optional[str], fname: Optional[str] = None,
          path: Optional[Path] = None, timeout: float = 60.0, hint: str = "") -> Path:
    """Download ``url`` into the cache (or ``path``) with pooch, checking ``sha256``.

    A file already there with the right hash is used without network access. Raises
    ``RuntimeError`` with a clear message when there is no network or the hash does not
    match, telling the user to download the file by hand and pass its path (``hint`` can say
    more about how).
    """
    import pooch

    fname = fname or Path(url).name
    folder = Path(path) if path is not None else cache_dir()
    known = f"sha256:{sha256}" if sha256 else None
    manual = hint or (
        f"Without network access, download the file by hand and pass its local path "
        f"(or put it into {folder / fname})."
    )
    try:
        return Path(pooch.retrieve(
            url, known_hash=known, fname=fname, path=folder,
            downloader=pooch.HTTPDownloader(progressbar=False, timeout=timeout),
        ))
    except ValueError as exc:  # pooch raises ValueError on a hash mismatch
        raise RuntimeError(
            f"the file downloaded from {url} does not match its pinned sha256 ({sha256}): {exc}. "
            f"Delete it from the cache and try again. {manual}"
        ) from exc
    except Exception as exc:  # network errors come in many types (requests, urllib, OSError)
        raise RuntimeError(f"could not download {url} ({type(exc).__name__}: {exc}). {manual}") from exc


# --------------------------------------------------------------------------- files
def save_model(model: OISModel, path: Union[str, Path], notes: Optional[dict] = None,
               half: bool = False) -> Path:
    """Write ``path`` (.safetensors) and its JSON config next to it (``path`` with .json).

    ``half`` stores floating-point tensors as float16 (half the size; loading casts them
    back to the model's float32), which is how the shipped weights are stored.
    """
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg.to_dict()
    if notes:
        cfg["notes"] = {**cfg.get("notes", {}), **notes}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(path), metadata={"ois_config": json.dumps(cfg)})
    path.with_suffix(".json").write_text(json.dumps(cfg, indent=2) + "\n")
    return path


def config_from(data: Union[str, dict], where: str) -> OISConfig:
    """An ``OISConfig`` from JSON text or a mapping; a broken or mistyped config raises one
    ``ValueError`` that names ``where`` it came from and the problem."""
    try:
        return OISConfig.from_dict(json.loads(data) if isinstance(data, str) else data)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                         f"{exc.msg})") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def read_config(path: Union[str, Path]) -> OISConfig:
    """The config of a weights file: its JSON sidecar, else the safetensors metadata."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            text = sidecar.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"model config {sidecar} could not be read: {exc}") from None
        return config_from(text, f"model config {sidecar}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "ois_config" in meta:
            return config_from(meta["ois_config"], f"the 'ois_config' metadata of {path}")
    raise ValueError(
        f"{path}: no config found (expected {sidecar.name} next to it or an 'ois_config' "
        "entry in the safetensors metadata)"
    )


def _read_state(path: Path) -> tuple[dict, Optional[OISConfig]]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), None
        except Exception as exc:
            raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    if isinstance(ckpt, dict) and "model" in ckpt and isinstance(ckpt["model"], dict):
        cfg = config_from(ckpt["config"], f"the config in {path}") if "config" in ckpt else None
        return ckpt["model"], cfg
    if isinstance(ckpt, dict):
        return ckpt, None
    raise ValueError(f"{path} does not hold a state dict")


def load_model_file(path: Union[str, Path], config: Optional[OISConfig] = None) -> OISModel:
    """Build the model a weights file describes and load it, strictly.

    Accepts ``.safetensors`` (with a JSON sidecar or metadata) and training checkpoints
    (``.pt``: ``{"model": state_dict, "config": dict, ...}``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state, ckpt_cfg = _read_state(path)
    cfg = config or ckpt_cfg or read_config(path)
    model = OISModel(cfg)
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. {shapes[:3]})")
        raise ValueError(
            f"{path} does not fit the {cfg.name} config (backbone {cfg.backbone}): "
            + "; ".join(parts)
        )
    model.load_state_dict(state)
    return model


#: the weights file of a model folder (``--model DIR``; what ``napari-ois finetune`` writes)
MODEL_FOLDER_FILE = "model.safetensors"


def build_model(name_or_path: Union[str, Path] = "default") -> OISModel:
    """A model by registry name, weights path or model folder (holding ``model.safetensors``),
    in eval mode on the CPU."""
    entries = registry()
    key = str(name_or_path)
    if key in entries:
        entry = entries[key]
        if entry.package_file:
            model = load_model_file(WEIGHTS_DIR / entry.package_file)
        elif entry.url:
            model = load_model_file(fetch(entry.url, entry.sha256))
        else:
            torch.manual_seed(0)
            model = OISModel(get_config(entry.arch, **entry.overrides))
    elif Path(key).is_dir():  # a model folder, e.g. the --out of `napari-ois finetune`
        file = Path(key) / MODEL_FOLDER_FILE
        if not file.is_file():
            raise FileNotFoundError(f"model folder {key} has no {MODEL_FOLDER_FILE}")
        model = load_model_file(file)
    elif Path(key).suffix in (".safetensors", ".pt", ".pth", ".ckpt") or os.sep in key:
        model = load_model_file(key)
    else:
        raise KeyError(
            f"unknown model {key!r}: use one of {sorted(entries)}, a path to a .safetensors/.pt "
            "file or a model folder"
        )
    return model.eval()


def resolve_device(device: Optional[str] = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; asking for a missing one is an error."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, (str, type(None))):
        raise ValueError(f"device must be a string (auto, cpu, cuda, cuda:N or mps); got {device!r}")
    device = (device or "auto").strip().lower()
    if not re.match(r"^(auto|cpu|mps|cuda(:\d+)?)$", device):
        raise ValueError(f"device {device!r} is not known: use auto, cpu, cuda (or cuda:N) or mps")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA GPU is available; use 'cpu' or 'auto'")
    if device == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise RuntimeError("device 'mps' was asked for but Apple MPS is not available; use 'cpu' or 'auto'")
    return torch.device(device)
