"""The widget's "Fine-tune on my labels" action: a background job and its messages. No Qt.

``Finetune`` is a job of ``napari_ois.controller`` (``InteractionController.request_finetune``
makes it): its ``run()`` executes on a worker thread and fine-tunes the model in use on the
committed objects of one image with the engine of ``napari_ois.finetune``
(``finetuning.prepare_arrays`` + ``finetuning.run_finetune``), writing a new model folder
(``model.safetensors``, ``model.json``, ``finetune.json``). It builds its own copy of the
network and gets a copy of the labels, so it never touches the predictor in use nor the
committed labels: the view runs it in a worker of its own, beside the interactive jobs (the
user can go on clicking). ``stop`` (a ``threading.Event``) is the run's ``should_stop``: a
cancelled run writes nothing and adds no model. Guard rails (too few objects, empty labels,
a base model that cannot be fine-tuned) are ``finetuning.FinetuneError`` messages.

The module speaks to the controller only through values and the events of
``napari_ois.events``; it never imports the controller. ``plan_finetune`` turns the model in
use into a job (or a refusal) and its ``Status``; when a run ends, the controller passes its
result to ``Finetune.ended`` or its error to ``Finetune.failed`` and gets events back: a
``Status`` line and, for a written model, ``FinetuneDone`` (the controller adds the folder
to ``InteractionController.added_models``, the view to its model list).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .events import FinetuneDone, Job, Status

__all__ = ["Finetune", "FinetuneDone", "default_models_dir", "new_model_dir", "plan_finetune"]


def default_models_dir() -> Path:
    """Where the widget saves fine-tuned models by default: ``~/napari-ois-models``."""
    return Path.home() / "napari-ois-models"


def new_model_dir(parent: Any) -> Path:
    """A folder name not yet taken in ``parent``: ``finetuned-<YYYYmmdd-HHMMSS>`` (``-2``, ...
    added when it exists). Nothing is created (the run creates it when it writes a model)."""
    base = Path(str(parent or default_models_dir())).expanduser()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out, n = base / f"finetuned-{stamp}", 2
    while out.exists():
        out, n = base / f"finetuned-{stamp}-{n}", n + 1
    return out


def _clock(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s // 60}:{s % 60:02d}"


def summary_text(summary: dict) -> str:
    """One line of a run's summary (``finetune.json``)."""
    try:
        return (f"{summary['steps']} steps x {summary['batch_size']} in {summary['minutes_used']:.1f} min on "
                f"{summary['device']}, {summary['training_objects']} training + {summary['held_back_objects']} "
                f"held-back object(s); held-back IoU {summary['heldout_iou_base']:.3f} (base) -> "
                f"{summary['heldout_iou_best']:.3f}, kept {summary['kept']}")
    except (KeyError, TypeError, ValueError):
        return "done"


@dataclass(eq=False, kw_only=True)
class Finetune(Job):
    """Fine-tune ``base`` on one image and its labels for ``minutes`` into ``out``."""

    image: Any
    labels: np.ndarray  # a copy of the committed labels, same spatial shape as the image
    contrast_limits: Optional[tuple] = None
    base: Any  # a registry name or a weights path, or an OIS network (an injected predictor's)
    base_label: str
    out: Path
    minutes: float = 10.0
    device: str = "auto"
    options: dict = field(default_factory=dict)  # more keyword arguments of run_finetune
    stop: threading.Event = field(default_factory=threading.Event)
    #: ``(time.monotonic(), progress dict)`` of the latest report (set on the worker thread)
    latest: Optional[tuple] = None
    #: the line that closed the run (saved, cancelled, the error)
    outcome: str = ""

    def run(self) -> Any:
        """Fine-tune (worker thread); returns the ``finetuning.FinetuneResult``."""
        import tempfile

        from .finetuning import prepare_arrays, run_finetune

        image, labels = self.image, self.labels
        if labels.ndim > 3:  # (T, Z, H, W): every 2D slice is an image
            plane = labels.shape[-2:]
            lead = labels.ndim - 2
            image = np.asarray(image).reshape((-1,) + tuple(np.shape(image)[lead:]))
            labels = labels.reshape((-1,) + tuple(plane))
        items = prepare_arrays([image], [labels], self.contrast_limits)
        with tempfile.TemporaryDirectory(prefix="ois-finetune-") as tmp:
            base = self.base
            if not isinstance(base, (str, Path)):  # a network in memory: start from a copy of it
                from .registry import save_model

                base = save_model(base, Path(tmp) / "base.safetensors")
            return run_finetune(items, self.out, base, self.minutes, device=self.device,
                                should_stop=self.stop, progress=self._progress, **self.options)

    def _progress(self, p: dict) -> None:
        self.latest = (time.monotonic(), dict(p))

    def progress_line(self) -> str:
        """What the run is doing now, with the time left (for the view to show while it runs)."""
        from .finetuning import progress_text

        if self.stop.is_set():
            return "cancelling: the run stops after the current step (nothing is written)"
        if self.latest is None:
            return f"fine-tuning {self.base_label}: preparing the images and the model ({self.minutes:g} min)"
        t, p = self.latest
        left = max(0.0, p["left_s"] - (time.monotonic() - t))
        return f"fine-tuning {self.base_label}: {_clock(left)} left · {progress_text(p)}"

    def ended(self, result: Any, in_use: str) -> list:
        """The run returned ``result`` (a ``finetuning.FinetuneResult``); ``in_use`` names the
        model the view goes on with. Returns the events: ``FinetuneDone`` for a written model,
        then the ``Status`` line (also kept as ``outcome``)."""
        if result.cancelled or result.model_path is None:
            self.outcome = f"fine-tuning cancelled: no model was written; still using {in_use}"
            return [Status(self.outcome)]
        folder = str(Path(result.model_path).parent)
        label = Path(folder).name
        self.outcome = (f"fine-tuned model saved to {folder} ({summary_text(result.summary)}); "
                        f"choose {label!r} in the model field to use it")
        return [FinetuneDone(folder, label, dict(result.summary)), Status(self.outcome)]

    def failed(self, exc: BaseException) -> list:
        """The run raised: a guard rail (``FinetuneError``: too few objects, empty labels,
        ...) or another error. Returns the ``Status`` line (also kept as ``outcome``)."""
        from .finetuning import FinetuneError

        if isinstance(exc, FinetuneError):
            self.outcome = f"cannot fine-tune: {exc}"
        else:
            self.outcome = f"fine-tuning failed: {type(exc).__name__}: {exc} (no model was written)"
        return [Status(self.outcome, "error")]


def plan_finetune(predictor: Any, model_in_use: Any, model_label: str, generation: int, image: Any,
                  labels: Any, *, out: Any, minutes: float = 10.0, contrast_limits: Optional[tuple] = None,
                  options: Optional[dict] = None) -> tuple:
    """The ``Finetune`` job for the model in use, or why there is none: ``(job or None,
    Status)``. ``model_in_use`` is the ``ModelSpec`` of a model loaded by name or file (its
    file is read again: it is the base), None for an injected ``predictor``, whose network is
    copied; ``generation`` is the controller's."""
    if predictor is None:
        return None, Status("load a model first: fine-tuning starts from the model in use", "error")
    if model_in_use is not None:
        base, label = model_in_use.model, model_in_use.label
    else:
        base, label = getattr(predictor, "model", None), model_label
        if not hasattr(base, "cfg") or not hasattr(base, "state_dict"):
            return None, Status(f"cannot fine-tune: the model in use ({label}) is not an OIS network", "error")
    from ._triton_guard import avoid_triton_llvm_clash

    avoid_triton_llvm_clash()  # the worker imports the training code (timm): see the guard
    dev = getattr(predictor, "device", None)
    job = Finetune(generation=generation, image=image, labels=np.array(labels, copy=True),
                   contrast_limits=contrast_limits, base=base, base_label=label, out=Path(out),
                   minutes=float(minutes), device="auto" if dev is None else str(dev),
                   options=dict(options or {}))
    return job, Status(f"fine-tuning {label} on the committed objects for {minutes:g} min in the "
                       f"background (into {out}); you can go on segmenting", "busy")
