"""What the controller and its jobs hand the view: events, the job base and the model spec.

``napari_ois.controller`` (the ``InteractionController``) and ``napari_ois.finetune_job``
(the fine-tuning it runs beside the interactive jobs) both speak in these types, so neither
needs the other's module: the controller imports the fine-tune job, the job imports only
this. No Qt, no torch.

Events say what the view should show: ``Status`` (a line of text), ``Redraw`` (which parts
changed), ``ModelReady`` / ``ModelLoadFailed`` (the model fields), ``CommitNow`` (a deferred
commit can run) and ``FinetuneDone`` (a fine-tuned model was written).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from .session import InteractionSession

__all__ = ["ModelSpec", "Status", "Redraw", "ModelReady", "ModelLoadFailed", "CommitNow", "FinetuneDone",
           "Event", "Progress", "Job"]


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load: a registry name or a weights path, a device, a depth model."""

    model: str
    device: str = "auto"
    depth: str = "none"  # "none" or a depth model name (napari_ois.depth.make_depth_provider)

    @property
    def label(self) -> str:
        """How the model is named in messages: a file's or folder's name, or the registry name."""
        p = Path(self.model)
        return p.name if p.suffix or len(p.parts) > 1 else self.model


# --------------------------------------------------------------------------- events
@dataclass(frozen=True)
class Status:
    """A status line: ``kind`` is "info", "busy" (work is running) or "error"."""

    text: str
    kind: str = "info"


@dataclass(frozen=True)
class Redraw:
    """Which parts of the view show state that changed."""

    masks: tuple = ()  # keys of the slices whose current-object mask changed
    points: bool = False  # the clicks
    proposals: bool = False  # the first-click proposals of the current slice
    everything: bool = False  # every mask, the clicks and the proposals
    notice: bool = False  # the device notice (model notes, CPU hint, embedding time)


@dataclass(frozen=True)
class ModelReady:
    """A predictor was installed (the session has it already)."""

    label: str
    num_proposals: int
    notes: tuple = ()


@dataclass(frozen=True)
class ModelLoadFailed:
    """A model could not be loaded; ``in_use`` is the spec of the model still in use (None
    for an injected predictor, or none at all): what the model fields should show again."""

    spec: ModelSpec
    error: str
    in_use: Optional[ModelSpec]


@dataclass(frozen=True)
class CommitNow:
    """A commit (or commit-and-propagate) deferred until the last click was predicted can
    run now: the view writes it (it owns the labels)."""

    key: tuple
    propagate: bool


@dataclass(frozen=True)
class FinetuneDone:
    """A fine-tuned model was written: ``model`` is its folder (a model the model field can
    name), ``label`` how it is listed, ``summary`` the run's ``finetune.json``."""

    model: str
    label: str
    summary: dict


Event = Union[Status, Redraw, ModelReady, ModelLoadFailed, CommitNow, FinetuneDone]


# --------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Progress:
    """A determinate progress indicator for a job: ``total`` steps, described by ``desc``."""

    total: int
    desc: str


@dataclass(eq=False, kw_only=True)
class Job:
    """One unit of background work. ``run()`` is what the worker thread executes (it touches
    only the predictor, through the session, or builds a new one); a job belongs to the
    controller's ``generation`` it was made in and to its ``session``."""

    generation: int
    session: Optional[InteractionSession] = None
    status: Optional[Status] = None  # the status line shown while it runs
    progress: Optional[Progress] = None

    def run(self) -> Any:  # pragma: no cover - every job type defines it
        raise NotImplementedError
