"""The interactive controller: background jobs, their results and the model's lifecycle. No Qt.

``InteractionController`` sits between a view (the napari widget, or a test) and an
``napari_ois.session.InteractionSession``. It owns the predictor (loading a named model or a
checkpoint, the device and the optional depth model) and the session of the bound image, and
it turns their state into typed jobs:

- ``LoadModel``: build a predictor for a ``ModelSpec``;
- ``Embed``: embed the shown slice ahead of the first click (prefetch);
- ``Predict``: predict one slice's object for its clicks so far;
- ``Propagate``: extend the last committed object through a stack, slice by slice;
- ``Finetune`` (``napari_ois.finetune_job``): fine-tune the model in use on the committed
  objects of an image. It touches neither the predictor nor the labels, so it runs beside
  the others (``request_finetune`` returns it; ``finetune_job`` holds its rules).

A job's ``run()`` is what a worker thread executes; everything else runs on the caller's
(GUI) thread. The view runs one job at a time (the predictor is not thread-safe)::

    job = controller.next_job(slice_shown=True)      # chosen from the *current* state
    result = job.run()                               # on a worker thread
    events = controller.job_returned(job, result)    # or job_failed(job, exc)
    events += controller.job_finished(job)           # then ask for the next job

Results are applied only while they still match: a job started for another image, model or
set of objects (its ``generation``) is dropped when it comes back, a prediction the object
has moved past is refused by ``InteractionSession.apply``, and only the latest model request
is installed. Clicks made while a prediction runs are predicted together by the next job.

Methods return *events* (``Status``, ``Redraw``, ``ModelReady``, ``ModelLoadFailed``,
``CommitNow``, ``FinetuneDone``; defined in ``napari_ois.events`` with ``Job`` and
``ModelSpec``, and importable from here) that say what the view should show; the controller
never calls back into it. Every status line is also kept in ``messages``. Writing masks into a labels array (a
commit, the slices of a propagation) stays with the view, which owns that array.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from .events import (
    CommitNow,
    Event,
    FinetuneDone,
    Job,
    ModelLoadFailed,
    ModelReady,
    ModelSpec,
    Progress,
    Redraw,
    Status,
)
from .corrections import VolumeObjects
from .session import InteractionSession
from .session_records import CommitRecord, PredictionRequest, PredictionResult, PropagationStep

__all__ = [
    "ModelSpec",
    "LoadFailure",
    "LoadedModel",
    "Progress",
    "Job",
    "LoadModel",
    "Embed",
    "Predict",
    "Propagate",
    "PendingCommit",
    "Status",
    "Redraw",
    "ModelReady",
    "ModelLoadFailed",
    "CommitNow",
    "FinetuneDone",
    "Event",
    "InteractionController",
    "build_predictor",
    "device_type",
]


# --------------------------------------------------------------------------- model
@dataclass(frozen=True)
class LoadFailure:
    spec: ModelSpec
    error: str


@dataclass
class LoadedModel:
    """What ``LoadModel.run`` returns."""

    predictor: Any
    notes: list  # problems that did not stop the load (e.g. the depth model is unavailable)
    seconds: float


def build_predictor(spec: ModelSpec, device: Any) -> LoadedModel:
    """Build the network of ``spec`` and its predictor on ``device`` (a worker thread).

    A depth model that cannot be loaded is not an error: the predictor runs without depth
    and ``notes`` says why."""
    from .predictor import OISPredictor
    from .registry import build_model

    t0 = time.perf_counter()
    net = build_model(spec.model)
    notes = []
    provider = None
    if spec.depth and spec.depth != "none":
        try:
            from .depth import make_depth_provider

            provider = make_depth_provider(spec.depth, device=str(device))
            if hasattr(provider, "load"):
                provider.load()  # surface download / checkpoint problems now
        except Exception as exc:  # noqa: BLE001 - any failure becomes a message
            notes.append(
                f"depth model {spec.depth!r} is unavailable ({type(exc).__name__}: {exc}); "
                "running without depth"
            )
            provider = None
    predictor = OISPredictor(net, device=device, depth_provider=provider)
    return LoadedModel(predictor, notes, time.perf_counter() - t0)


def device_type(predictor: Any) -> str:
    """``"cpu"``, ``"cuda"``, ... of a predictor (``str`` of its device when it has no type)."""
    dev = getattr(predictor, "device", None)
    return getattr(dev, "type", str(dev))


def _ordinal(key) -> str:
    return "the image" if not key else f"slice {key}"


# --------------------------------------------------------------------------- jobs
@dataclass(eq=False, kw_only=True)
class LoadModel(Job):
    spec: ModelSpec
    device: Any  # the torch.device resolved from spec.device
    model_generation: int
    note: str = ""  # e.g. "no CUDA GPU ... Using the CPU instead."

    def run(self) -> LoadedModel:
        return build_predictor(self.spec, self.device)


@dataclass(eq=False, kw_only=True)
class Embed(Job):
    key: tuple
    previous: Optional[tuple] = None  # the (kind, text) status line before this job's own

    def run(self) -> float:
        """Embed the slice; returns the seconds it took."""
        t0 = time.perf_counter()
        self.session.ensure_embedding(self.key)
        return time.perf_counter() - t0


@dataclass(eq=False, kw_only=True)
class Predict(Job):
    request: PredictionRequest

    def run(self) -> PredictionResult:
        return self.session.compute(self.request)


@dataclass(eq=False, kw_only=True)
class Propagate(Job):
    record: CommitRecord  # the committed object it starts from
    options: dict  # keyword arguments of InteractionSession.iter_propagate
    written: list = field(default_factory=list)  # slice keys the view wrote
    failed: bool = False  # it ended with an error (the error's message is the last word)
    #: set (``InteractionController.stop_propagation``): the walk ends after the current slice
    stop: threading.Event = field(default_factory=threading.Event)

    def reached(self) -> tuple:
        """``(first, last, latest)``: the lowest and highest slice reached so far along the
        walked axis (the start slice and every slice written) and the latest one written (the
        start slice if none)."""
        ax = self.options.get("axis", -1)
        zs = [int(self.record.key[ax])] + [int(k[ax]) for k in self.written]
        return min(zs), max(zs), zs[-1]

    def run(self) -> Iterator[PropagationStep]:
        """Yields one ``PropagationStep`` per slice reached (a generator worker).

        A ``RuntimeError`` (what torch raises for most failures) leaves as a
        ``PropagationFailed``: a generator worker (superqt) takes a RuntimeError for its own
        deletion and ends silently, without ``errored`` or ``finished``, which would leave
        the job running for ever."""
        try:
            yield from self.session.iter_propagate_commit(self.record, **{"should_stop": self.stop.is_set,
                                                                          **self.options})
        except RuntimeError as exc:
            raise PropagationFailed(exc) from exc


class PropagationFailed(Exception):
    """A propagation's ``RuntimeError``, carried out of the generator worker; ``cause`` is
    the original exception (the one messages name)."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


@dataclass(frozen=True)
class PendingCommit:
    key: tuple
    propagate: bool


@dataclass(frozen=True)
class _PropagationRequest:
    record: CommitRecord
    options: dict
    generation: int


def _signature(request: PredictionRequest) -> tuple:
    return (request.key, request.epoch, len(request.clicks), request.multimask)


# --------------------------------------------------------------------------- controller
class InteractionController:
    """Schedules the background work of one interactive view and applies its results.

    Args:
        predictor: an optional ready predictor (``set_predictor``); without one, the view
            asks for a model with ``request_model`` when ``wants_model`` says so.
        prefetch: embed the shown slice before the first click.
    """

    def __init__(self, predictor: Any = None, name: str = "injected predictor", prefetch: bool = True):
        self.session: Optional[InteractionSession] = None
        self.predictor: Any = None
        self.model_label = ""
        #: the spec of the model loaded by this controller; None for an injected predictor
        self.model_in_use: Optional[ModelSpec] = None
        #: the last model request that failed, while no other one was made
        self.load_failure: Optional[LoadFailure] = None
        self.prefetch = bool(prefetch)
        #: every status line, ``(kind, text)``, newest last (the last 200)
        self.messages: list = []
        #: seconds of the last embedding (shown in the CPU notice)
        self.embed_seconds: Optional[float] = None
        #: notes of the installed model (e.g. the GPU or depth fallback), one line
        self.notes = ""
        #: the job the view runs now (None when none)
        self.running: Optional[Job] = None
        #: a commit waiting for the last click's prediction
        self.pending_commit: Optional[PendingCommit] = None
        self.closed = False
        self.generation = 0  # image / model / objects: jobs of older generations are dropped
        self._model_generation = 0  # model requests: only the latest load is installed
        self._model_request: Optional[ModelSpec] = None
        self._propagation_request: Optional[_PropagationRequest] = None
        self.zoom_in = True  # zoom-in refinement (set_zoom_in); applied to every model loaded
        self._blocked_request: Optional[tuple] = None  # a prediction that failed: not retried
        self._blocked_embed: Optional[tuple] = None  # (key, generation) of a failed embedding
        #: the fine-tuning that runs beside the other jobs (``finetune_job.Finetune``), or None
        self.finetune_job: Optional[Job] = None
        #: models made in this session (fine-tuned folders): the view lists them as models
        self.added_models: list = []
        #: the anchors and corrections of the propagated objects of the image (``corrections``)
        self.volume = VolumeObjects()
        if predictor is not None:
            self.set_predictor(predictor, name)

    # ----------------------------------------------------------------- status
    def report(self, text: str, kind: str = "info") -> Status:
        """Keep a status line in ``messages`` and return it as an event."""
        self.messages.append((kind, text))
        del self.messages[:-200]
        return Status(text, kind)

    @property
    def status(self) -> str:
        """The text of the latest status line."""
        return self.messages[-1][1] if self.messages else ""

    def notice(self, extra: str = "") -> str:
        """The persistent notice: the model's notes, ``extra``, and a hint on the CPU."""
        text = " ".join(t for t in (self.notes, extra) if t)
        text = text + " " if text else ""
        if self.predictor is not None and device_type(self.predictor) == "cpu":
            # a figure under 0.05 s would read "about 0.0 s": the embedding is then no wait at all
            t = f" (about {self.embed_seconds:.1f} s here)" if (self.embed_seconds or 0) >= 0.05 else ""
            text += ("Running on the CPU: each new image or slice is embedded first" + t
                     + ", then clicks are fast. A GPU is much faster.")
        return text.strip()

    # ----------------------------------------------------------------- model lifecycle
    def set_predictor(self, predictor: Any, name: str = "injected predictor") -> list:
        """Use a ready predictor. Pending or running loads are discarded; every object keeps
        its clicks and is predicted again."""
        self._model_generation += 1
        self._model_request = None
        self.load_failure = None
        self.model_in_use = None
        return self._install(predictor, name)

    def request_model(self, spec: ModelSpec) -> list:
        """Ask for ``spec`` to be loaded (the latest request wins); the results of the old
        model that come back meanwhile are dropped."""
        if self.closed:
            return []
        if not spec.model:
            return [self.report("choose a checkpoint file first", "error")]
        self._model_generation += 1
        self.generation += 1
        self._model_request = spec
        self.load_failure = None
        return []

    @property
    def loading(self) -> bool:
        """Whether a model is being loaded or about to be."""
        return self._model_request is not None or isinstance(self.running, LoadModel)

    @property
    def wants_model(self) -> bool:
        """True when the view should ``request_model`` the model it shows: there is an image,
        no model and none coming, no failed load, and clicks to predict (or a slice to
        prefetch)."""
        s = self.session
        return (not self.closed and self.running is None and self.predictor is None
                and self._model_request is None and self.load_failure is None and s is not None
                and (bool(s.active_keys()) or self.prefetch))

    def model_unavailable(self) -> Optional[str]:
        """Why a click cannot be predicted (no model, the load failed, none coming), or None."""
        if self.predictor is None and self.running is None and self._model_request is None \
                and self.load_failure is not None:
            return f"no model loaded ({self.load_failure.error}): choose another model"
        return None

    def depth_changed(self, spec: ModelSpec) -> list:
        """The depth source changed (``spec`` names the wanted depth model). A depth model to
        add or drop means another model load; otherwise (a depth map given to the session)
        every object is predicted again."""
        s = self.session
        current = getattr(self.predictor, "depth_provider", None)
        if self.predictor is not None and (spec.depth != "none" or current is not None):
            return self.request_model(spec)
        if s is None:
            return []
        s.set_predictor(s.predictor)  # drops the embeddings; objects are predicted again
        self.generation += 1
        return [self._edited()]

    def set_zoom_in(self, on: bool) -> list:
        """Zoom-in refinement on or off for this and every later model (the next click uses it)."""
        self.zoom_in = bool(on)
        self._apply_zoom_in()
        return [self.report("zoom-in on: refinements are predicted on a crop around the object"
                            if self.zoom_in else "zoom-in off: every click is predicted on the whole image")]

    def _apply_zoom_in(self) -> None:
        p = self.predictor
        if p is None or not hasattr(p, "zoom_in"):  # e.g. a classical baseline
            return
        if not self.zoom_in:
            p.zoom_in = None
        elif p.zoom_in is None:
            from .predictor import ZoomIn

            p.zoom_in = ZoomIn()

    def _install(self, predictor: Any, name: str, notes: Sequence[str] = ()) -> list:
        self.predictor = predictor
        self._apply_zoom_in()
        self.model_label = name
        self.generation += 1
        self._blocked_request = self._blocked_embed = None
        k = max(1, int(getattr(predictor, "num_proposals", 1) or 1))
        if self.session is not None:
            self.session.set_predictor(predictor)
        self.notes = " ".join(n.strip() for n in notes)
        msg = f"model {name} ready on {device_type(predictor)} ({k} proposals)"
        if notes:
            msg += ". " + " ".join(notes)
        return [ModelReady(name, k, tuple(notes)), self.report(msg, "error" if notes else "info"),
                Redraw(everything=True, notice=True)]

    # ----------------------------------------------------------------- image
    def open_image(self, image: Any, **session_options: Any) -> InteractionSession:
        """Make a session for ``image`` with the current predictor and bind it (the options
        go to ``InteractionSession``; ``ValueError`` for an unusable image)."""
        session = InteractionSession(self.predictor, image, **session_options)
        self.close_image()
        self.session, self.volume = session, VolumeObjects()
        self.generation += 1
        return session

    def close_image(self) -> None:
        """Unbind the session: its pending work is dropped, running work becomes stale."""
        self.generation += 1
        self.cancel()
        self.session = None

    # ----------------------------------------------------------------- editing
    def _edited(self) -> Redraw:
        return Redraw(masks=(self.session.current_key,), points=True, proposals=True)

    def add_click(self, point: Sequence[float], positive: bool = True, shown_key: Any = None) -> list:
        """Record a click (``(*slice index, row, col)``) for the next prediction. The slice
        shown (``shown_key``) stays the current one."""
        s = self.session
        if s is None:
            return [self.report("choose an image layer first: the click was ignored", "error")]
        problem = self.model_unavailable()
        if problem:
            return [self.report(problem, "error")]
        try:
            key, click = s.push_click(point, positive)
        except ValueError as exc:
            return [self.report(f"{exc}: ignored", "error")]
        if shown_key is not None and shown_key != s.current_key:
            s.set_slice(shown_key)
        if self.volume.correcting(s, key) is not None:  # a correction: commit and re-propagate after it
            self.pending_commit = PendingCommit(tuple(key), True)
        n = len(s.clicks(key))
        return [self.report(f"{'positive' if positive else 'negative'} click {n} at "
                            f"({click.row:.0f}, {click.col:.0f}){'' if not key else f' on slice {key}'}")]

    def select_proposal(self, index: int) -> list:
        s = self.session
        if s is None:
            return []
        try:
            s.select_proposal(index)
        except ValueError as exc:
            return [self.report(str(exc), "error")]
        return [self._edited()]

    def cycle_proposal(self, step: int, shown: int) -> list:
        """Select the next (``step`` 1) or previous (-1) of the ``shown`` first proposals."""
        s = self.session
        if s is None or s.proposals() is None:
            return [self.report("no proposals yet: click on an object first")]
        n = max(1, min(len(s.proposals().masks), int(shown)))
        return self.select_proposal((s.state().selected + step) % n)

    def undo(self) -> list:
        s = self.session
        if s is None:
            return [self.report("nothing to undo: no image is selected", "error")]
        if not s.undo():
            return [self.report("nothing to undo on this slice")]
        return [self._edited(), self.report(f"undone: {len(s.clicks())} click(s) left")]

    def reset_object(self) -> list:
        s = self.session
        if s is None:
            return []
        s.reset_object()
        return [self._edited(), self.report("object reset (U brings it back)")]

    def clear(self) -> list:
        """Drop every uncommitted object; what runs for them now is dropped when it returns."""
        s = self.session
        if s is None:
            return []
        s.clear()
        self.pending_commit = None
        self.generation += 1
        return [Redraw(everything=True),
                self.report("cleared all uncommitted clicks (committed labels are kept)")]

    def replace_clicks(self, clicks_by_slice: dict) -> list:
        """The clicks were edited by hand (moved, deleted): ``{slice key: [Click, ...]}`` are
        every slice's clicks now; those slices are predicted again."""
        s = self.session
        if s is None:
            return []
        refused, keys = None, set(clicks_by_slice) | set(s.active_keys())
        for k in keys:
            try:
                s.replace_clicks(clicks_by_slice.get(k, []), key=k)
            except ValueError as exc:  # e.g. a negative click would become the first one
                refused = exc
        events: list = [Redraw(masks=tuple(keys), points=True, proposals=True)]
        if refused is not None:
            events.append(self.report(f"{refused}: the edit was undone", "error"))
        return events

    def edit_boxes(self, drawn: dict) -> list:
        """The box layer was edited: ``drawn`` maps slice keys to the (row, col) vertices of the
        rectangle on that slice (the last one drawn there). A new or moved rectangle becomes
        that slice's box (the object is predicted again from the box and its clicks), a deleted
        one removes it. A refused box (a model without box prompts, outside the image) is a
        message; the view then draws the boxes of the session again (``Redraw.points``)."""
        s = self.session
        if s is None:
            return [Redraw(points=True), self.report("choose an image layer first: the box was ignored", "error")]
        events, changed = [], []
        for key in sorted(set(drawn) | {k for k in s.active_keys() if s.box(k) is not None}):
            corners = drawn.get(key)
            try:
                if corners is not None and self.predictor is None:
                    raise ValueError("no model is loaded yet: draw the box again when it is")
                k = s.check_key(key)
                before = s.box(k)
                s.set_box(corners, key=k)
            except ValueError as exc:
                what = "box not used" if corners is not None else "the box stays"
                events.append(self.report(f"{what}: {exc}", "error"))
                continue
            box, n = s.box(k), len(s.clicks(k))
            if box == before:
                continue
            changed.append(k)
            where = "" if not k else f" on slice {k}"
            if box is not None:
                text = (f"box ({box.r0:.0f}, {box.c0:.0f})-({box.r1:.0f}, {box.c1:.0f}){where}: predicting "
                        f"the object from the box{f' and {n} click(s)' if n else ''}...")
            else:
                text = f"box removed{where}: " + (f"predicting the object from its {n} click(s)..." if n
                                                  else "no prompt left (click or draw a box)")
            events.append(self.report(text))
        return [Redraw(masks=tuple(changed), points=True, proposals=True), *events]

    # ----------------------------------------------------------------- commit and propagation
    def prepare_commit(self) -> Optional[list]:
        """None when the current object can be committed now; else the events saying why not
        (no image) or that it is deferred until its last click is predicted."""
        s = self.session
        if s is None:
            return [self.report("nothing to commit: choose an image layer and click on an object", "error")]
        if s.needs_prediction() and self.pending_commit is None:
            return self.defer_commit(s.current_key)
        return None

    def commit(self, labels: Any, *, name: str = "the labels", overwrite: bool = False,
               writer: Any = None) -> tuple:
        """Commit the current object into ``labels`` (called ``name`` in messages): returns
        ``(label id or None, events)``; a refused commit keeps the object and says why."""
        s = self.session
        key = s.current_key
        try:
            s.commit(labels, key=key, overwrite=overwrite, writer=self.volume.recorder(labels, writer))
        except ValueError as exc:
            return None, [self.report(str(exc), "error")]
        lid = s.last_commit.label_id
        written = int(np.count_nonzero(np.asarray(labels[key] if key else labels) == lid))
        where = "" if not key else f" on slice {key}"
        return lid, [Redraw(masks=(key,), points=True, proposals=True),
                     self.report(f"committed object {lid} ({written} px){where} to {name!r}")]

    def edit_label(self, label_id: Any, labels: Any, *, key: Any = None, name: str = "the labels") -> list:
        """Take label ``label_id`` of ``labels`` (called ``name``) on slice ``key`` (default
        current) as the current object (``InteractionSession.edit_label``): clicks refine it,
        a commit writes it back under its id."""
        s = self.session
        if s is None:
            return [self.report("choose an image layer first", "error")]
        try:
            mask = s.edit_label(label_id, labels, key=key)
        except ValueError as exc:
            return [self.report(f"cannot edit: {exc}", "error")]
        self.pending_commit = None
        k, lid = s.current_key, s.state().edit.label_id
        where = "" if not k else f" on slice {k}"
        return [Redraw(masks=(k,), points=True, proposals=True),
                self.report(f"editing object {lid} of {name!r} ({int(mask.sum())} px{where}): click to correct "
                            f"it (negative clicks remove), then commit: it keeps id {lid}")]

    def prepare_propagation(self) -> Optional[list]:
        """None when a propagation can start (after committing the current object, if any);
        else the events saying why not, or that it is deferred until the last click is
        predicted."""
        s = self.session
        if s is None:
            return [self.report("propagation needs an image: choose one", "error")]
        if not s.is_stack:
            return [self.report("propagation needs a 3D (or 4D) stack; this image is 2D", "error")]
        if self.propagation_running:
            return [self.report("a propagation is already running")]
        if s.needs_prediction():
            return self.defer_commit(s.current_key, propagate=True)
        mask = s.mask()
        if (mask is None or not mask.any()) and s.last_commit is None:
            return [self.report("nothing to propagate: segment and commit an object first", "error")]
        return None

    def defer_commit(self, key: tuple, propagate: bool = False) -> list:
        """Commit (or commit and propagate) slice ``key``'s object once its last click is
        predicted: a later ``job_returned`` gives ``CommitNow``."""
        self.pending_commit = PendingCommit(tuple(key), bool(propagate))
        what = "propagating" if propagate else "committing"
        return [self.report(f"{what} as soon as the last click is predicted...", "busy")]

    def request_propagation(self, options: dict) -> None:
        """Propagate the session's last commit through the stack (``options`` go to
        ``InteractionSession.iter_propagate``); it starts as the next job."""
        record = self.session.last_commit  # its slice becomes an anchor: corrections stop there
        self._propagation_request = _PropagationRequest(record, {**self.volume.plan(record), **options},
                                                        self.generation)

    def write_step(self, job: Propagate, step: PropagationStep, labels: Any, *, overwrite: bool = False,
                   writer: Any = None) -> Optional[list]:
        """Write one slice a propagation reached into ``labels`` (None: the labels are gone).
        Returns None to go on, or the events of stopping the propagation (empty: stale)."""
        if not self.is_current(job):
            return []
        if labels is None:
            return [self.report("the labels layer is gone: propagation stopped", "error")]
        try:
            self.session.write_mask(labels, step.key, step.mask, label_id=job.record.label_id, overwrite=overwrite,
                                    writer=self.volume.recorder(labels, writer), replace=job.record.replace)
        except ValueError as exc:
            return [self.report(f"propagation stopped: {exc}", "error")]
        job.written.append(step.key)
        return None

    def propagation_progress(self, job: Propagate) -> Status:
        """The status line of a running propagation: the slices it has reached so far (it
        takes the place of the job's previous progress line in ``messages``)."""
        lo, hi, _ = job.reached()
        head = f"propagating object {job.record.label_id}: slices "
        if self.messages and self.messages[-1][1].startswith(head):
            self.messages.pop()
        return self.report(f"{head}{lo}-{hi} reached (Stop ends it; what is written is kept)", "busy")

    def stop_propagation(self) -> list:
        """Stop the propagation after the slice it predicts now (the slices written so far are
        kept; ``job_finished`` says where it stopped), or drop one not started yet."""
        job = self.running
        if isinstance(job, Propagate):
            job.stop.set()
            return [self.report("stopping the propagation after the current slice...", "busy")]
        if self._propagation_request is not None:
            self._propagation_request = None
            return [self.report("propagation stopped before it started (the commit is kept)")]
        return [self.report("no propagation is running")]

    @property
    def propagation_running(self) -> bool:
        return isinstance(self.running, Propagate)

    @property
    def propagating(self) -> bool:
        """Whether a propagation runs or is about to start."""
        return self._propagation_request is not None or self.propagation_running

    def cancel(self) -> None:
        """Drop a deferred commit and a propagation not yet started. (A running propagation
        is stopped by the view, which owns its worker; it ends as stale when the image is
        gone.)"""
        self.pending_commit = None
        self._propagation_request = None

    def close(self) -> None:
        self.cancel()
        self.cancel_finetune()
        self.closed = True

    # ----------------------------------------------------------------- fine-tuning
    def request_finetune(self, image: Any, labels: Any, **options: Any) -> tuple:
        """Fine-tune the model in use on ``labels`` (the committed objects of ``image``):
        returns ``(Finetune job or None, events)``. The view runs the job in a worker of its
        own, beside the interactive jobs; see ``napari_ois.finetune_job.plan_finetune``."""
        if self.closed:
            return None, []
        if self.finetune_job is not None:
            return None, [self.report("a fine-tuning is already running: cancel it first", "error")]
        from .finetune_job import plan_finetune

        job, status = plan_finetune(self.predictor, self.model_in_use, self.model_label, self.generation,
                                    image, labels, **options)
        self.finetune_job = job
        return job, self._finetune_events([status])

    def _finetune_events(self, events: list) -> list:
        """The fine-tune job's events as the controller's: its status lines are reported, a
        written model joins ``added_models``."""
        out = []
        for ev in events:
            if isinstance(ev, FinetuneDone) and ev.model not in self.added_models:
                self.added_models.append(ev.model)
            out.append(self.report(ev.text, ev.kind) if isinstance(ev, Status) else ev)
        return out

    @property
    def finetuning(self) -> bool:
        """Whether a fine-tuning runs."""
        return self.finetune_job is not None

    def cancel_finetune(self) -> list:
        """Stop a running fine-tuning: nothing is written, the model in use stays."""
        job = self.finetune_job
        if job is None:
            return []
        job.stop.set()
        return [self.report("cancelling the fine-tuning (it stops after the current step)...", "busy")]

    def _settle_pending_commit(self) -> list:
        pc, s = self.pending_commit, self.session
        if pc is None or s is None:
            self.pending_commit = None
            return []
        if s.needs_prediction(pc.key):
            return []
        self.pending_commit = None
        if s.current_key != pc.key:
            return [self.report("the commit was cancelled: the slice changed", "error")]
        return [CommitNow(pc.key, pc.propagate)]

    # ----------------------------------------------------------------- scheduling
    def next_job(self, slice_shown: bool = True) -> Optional[Job]:
        """The next job to run, chosen from the current state, or None; it becomes
        ``running`` (the view reports back with ``job_returned``/``job_failed`` and
        ``job_finished``). Order: a model request, a propagation, the predictions of the
        current slice then of the other slices with clicks, and (``prefetch``, when the
        current slice is on screen: ``slice_shown``) the current slice's embedding."""
        if self.closed or self.running is not None:
            return None
        job = self._choose(slice_shown)
        self.running = job
        return job

    def _choose(self, slice_shown: bool) -> Optional[Job]:
        if self._model_request is not None:
            spec, self._model_request = self._model_request, None
            return self._load_job(spec)
        s = self.session
        if s is None or self.predictor is None:
            return None
        req = self._propagation_request
        if req is not None:
            self._propagation_request = None
            if req.generation == self.generation:
                total = int(s.leading_shape[-1]) - 1
                return Propagate(
                    generation=self.generation, session=s, record=req.record, options=req.options,
                    status=self.report(f"propagating object {req.record.label_id} through the stack...",
                                       "busy"),
                    progress=Progress(max(1, total), "OIS: propagating"))
        keys = [s.current_key] + [k for k in sorted(s.active_keys()) if k != s.current_key]
        for k in keys:
            r = s.request(k)
            if r is None or _signature(r) == self._blocked_request:
                continue
            embedding = not s.is_embedded(r.key)
            return Predict(
                generation=self.generation, session=s, request=r,
                status=self.report(f"embedding {_ordinal(r.key)}...", "busy") if embedding else None,
                progress=Progress(1, "OIS: embedding") if embedding else None)
        key = s.current_key
        if self.prefetch and slice_shown and not s.is_embedded(key) \
                and self._blocked_embed != (key, self.generation):
            previous = self.messages[-1] if self.messages else None
            return Embed(
                generation=self.generation, session=s, key=key, previous=previous,
                status=self.report(f"embedding {_ordinal(key)} in the background...", "busy"),
                progress=Progress(1, "OIS: embedding"))
        return None

    def _load_job(self, spec: ModelSpec) -> LoadModel:
        from ._triton_guard import avoid_triton_llvm_clash
        from .registry import resolve_device

        avoid_triton_llvm_clash()  # OpenGL may be up by now: see the function's docstring
        note = ""
        try:
            device = resolve_device(spec.device)
        except RuntimeError as exc:
            device = resolve_device("cpu")
            note = f"{exc}. Using the CPU instead. "
        return LoadModel(
            generation=self.generation, spec=spec, device=device, note=note,
            model_generation=self._model_generation,
            status=self.report(f"{note}loading model {spec.label} on {device.type}...", "busy"),
            progress=Progress(1, f"OIS: loading {Path(spec.model).name}"))

    def is_current(self, job: Job) -> bool:
        """Whether ``job``'s result still concerns what is bound (same image, model and set of
        objects)."""
        return not self.closed and job.generation == self.generation and job.session is self.session

    def job_returned(self, job: Job, result: Any) -> list:
        """Apply a finished job's result (dropped when stale). Returns the events."""
        if job is self.finetune_job:
            return self._finetune_events(job.ended(result, self.model_label or "the model in use"))
        if isinstance(job, LoadModel):
            if job.model_generation != self._model_generation or self.closed:
                return []  # another model was asked for meanwhile
            self.model_in_use = job.spec
            return self._install(result.predictor, job.spec.label,
                                 notes=[*([job.note] if job.note else []), *result.notes])
        if not self.is_current(job):
            return []  # image, model or objects changed meanwhile: drop it
        if isinstance(job, Predict):
            return self._apply_prediction(result)
        if isinstance(job, Embed):
            return self._embedded(job, float(result))
        return []

    def _apply_prediction(self, result: PredictionResult) -> list:
        s = self.session
        events: list = []
        if result.embedded:
            self.embed_seconds = result.seconds
            events.append(Redraw(notice=True))
        if not s.apply(result):
            return events
        req = result.request
        events.append(Redraw(masks=(req.key,), proposals=req.key == s.current_key))
        obj = s.state(req.key)
        what = "proposals" if req.multimask else "mask"
        if obj.mask is not None and not obj.mask.any():
            n = len(obj.clicks)
            clicks = f"{n} click{'s' if n != 1 else ''}"
            if req.multimask:
                text = (f"the model predicted no object here (the chosen proposal's mask is empty, "
                        f"{clicks}): try another proposal (K) or click elsewhere")
            else:
                text = (f"the model predicted no object here (an empty mask after {clicks}): "
                        "undo (U) or add a positive click")
            events.append(self.report(text, "error"))
        else:
            box = "box + " if obj.box is not None else ""
            events.append(self.report(
                f"{what} ready ({box}{len(obj.clicks)} click(s), IoU {obj.score:.2f}, "
                f"{result.seconds * 1000:.0f} ms){' — more pending' if obj.pending else ''}"))
        return events + self._settle_pending_commit()

    def _embedded(self, job: Embed, seconds: float) -> list:
        self.embed_seconds = seconds
        events: list = [Redraw(notice=True)]
        if job.status is None or self.status != job.status.text:
            return events  # something else was said meanwhile: keep it
        prev = job.previous
        if prev is not None and not prev[1].startswith(("embedding", "ready: embedding")):
            events.append(self.report(prev[1], prev[0]))  # a background embedding hides no result
        else:
            events.append(self.report(f"ready: embedding took {seconds:.2f} s; click on an object"))
        return events

    def job_failed(self, job: Job, exc: BaseException) -> list:
        """A job raised ``exc``: a message, and the failed work is not retried as it is."""
        if isinstance(exc, PropagationFailed):
            exc = exc.cause
        text = f"{type(exc).__name__}: {exc}"
        if job is self.finetune_job:
            return self._finetune_events(job.failed(exc))
        if isinstance(job, LoadModel):
            if job.model_generation != self._model_generation:
                return []
            self.load_failure = LoadFailure(job.spec, text)
            self.pending_commit = None
            keep = f"still using {self.model_label}" if self.predictor is not None else "no model is loaded"
            return [ModelLoadFailed(job.spec, text, self.model_in_use),
                    self.report(f"could not load model {job.spec.model!r}: {text}. {keep}", "error")]
        if not self.is_current(job):
            return []
        if isinstance(job, Predict):
            self._blocked_request = _signature(job.request)
            self.pending_commit = None
            return [self.report(f"prediction failed: {text} (the clicks are kept; undo or reset the object)",
                                "error")]
        if isinstance(job, Embed):
            self._blocked_embed = (job.key, self.generation)
            return [self.report(f"embedding failed: {text}", "error")]
        if isinstance(job, Propagate):
            job.failed = True
            return [self.report(f"propagation stopped by an error: {text} (object {job.record.label_id}: the "
                                f"{len(job.written)} slice(s) written so far are kept)", "error")]
        return []

    def job_finished(self, job: Job) -> list:
        """The job's worker ended (after its result or error): the next job can start."""
        if self.running is job:
            self.running = None
        if job is self.finetune_job:
            self.finetune_job = None
        if isinstance(job, Propagate) and self.is_current(job) and not job.failed and job.stop.is_set():
            lo, hi, last = job.reached()
            return [self.report(f"propagation stopped at slice {last}: object {job.record.label_id} on slices "
                                f"{lo}-{hi} ({len(job.written)} slice(s) written, kept)")]
        if isinstance(job, Propagate) and self.is_current(job) and not job.failed:
            stops = self.session.propagation_stops
            why = "; ".join(f"{'up' if d > 0 else 'down'}: {w}" for d, w in sorted(stops.items(), reverse=True))
            return [self.report(f"propagated object {job.record.label_id} to {len(job.written)} more slice(s)"
                                + (f" ({why})" if why else ""))]
        return []
