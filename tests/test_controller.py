"""The Qt-free controller: which job runs next, and what its result (or error) changes.

No viewer and no threads: a test asks ``next_job``, runs the job (or makes up its result)
and feeds it back, in whatever order the scenario needs. ``FakePredictor`` (see
test_session.py) stands in for the network where the point is scheduling; the tiny real
network is used where the point is loading it.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from napari_ois.controller import (
    CommitNow,
    Embed,
    InteractionController,
    LoadedModel,
    LoadModel,
    ModelLoadFailed,
    ModelReady,
    ModelSpec,
    Predict,
    Propagate,
    Redraw,
    Status,
)

from test_session import FakePredictor, ball_stack, blob_image

_RUN = object()


def finish(c: InteractionController, job, result=_RUN, labels=None) -> list:
    """Run ``job`` here (or take ``result``), report it back; returns every event."""
    events = []
    try:
        if isinstance(job, Propagate):
            for step in job.run():  # what the widget does with every slice the worker yields
                stop = c.write_step(job, step, labels)
                if stop is not None:
                    events += stop
                    break
            result = None
        elif result is _RUN:
            result = job.run()
    except Exception as exc:  # noqa: BLE001 - what a worker reports as errored
        events += c.job_failed(job, exc)
    else:
        events += c.job_returned(job, result)
    return events + c.job_finished(job)


def drive(c: InteractionController, slice_shown: bool = True, limit: int = 50) -> tuple:
    """Run jobs until there is none left; returns (jobs, events)."""
    jobs, events = [], []
    for _ in range(limit):
        job = c.next_job(slice_shown)
        if job is None:
            return jobs, events
        jobs.append(job)
        events += finish(c, job)
    raise AssertionError("the controller keeps making jobs")


def texts(events) -> list:
    return [e.text for e in events if isinstance(e, Status)]


def ready(image=None, predictor=None) -> InteractionController:
    c = InteractionController(predictor or FakePredictor(), "fake")
    c.open_image(blob_image() if image is None else image)
    drive(c)  # the prefetch embedding
    return c


# --------------------------------------------------------------------------- layering
def test_the_controller_imports_no_gui_toolkit():
    code = ("import sys, napari_ois.controller, napari_ois.finetune_job; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'qtpy', 'napari', 'magicgui', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'vispy'}); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_finetune_job_does_not_import_the_controller():
    """The fine-tune job talks to the controller through the events it returns: importing it
    and planning, ending and failing a job leave the controller unimported."""
    code = ("import sys; from napari_ois.finetune_job import Finetune, plan_finetune; "
            "job, st = plan_finetune(None, None, '', 0, None, None, out='x'); "
            "assert job is None and st.kind == 'error'; "
            "assert 'napari_ois.controller' not in sys.modules, 'finetune_job imported the controller'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------- scheduling
def test_clicks_made_during_a_prediction_are_predicted_together():
    pred = FakePredictor()
    c = ready(predictor=pred)
    assert c.next_job() is None  # embedded, nothing clicked: nothing to do
    c.add_click((10, 10))
    first = c.next_job()
    assert isinstance(first, Predict) and first.request.multimask and len(first.request.clicks) == 1
    assert c.next_job() is None  # one job at a time
    for i in range(5):  # a burst while the first click is predicted
        c.add_click((12 + i, 12 + i), positive=i % 2 == 0)
    finish(c, first)
    assert c.session.state().n_applied == 1 and c.session.needs_prediction()
    second = c.next_job()
    assert isinstance(second, Predict) and len(second.request.clicks) == 6
    assert second.request.prev_mask is not None and not second.request.multimask
    finish(c, second)
    obj = c.session.state()
    assert obj.n_applied == 6 and not obj.pending
    assert c.next_job() is None and len(pred.calls) == 2  # 6 clicks, 2 predictions


def test_the_current_slice_is_predicted_before_other_slices():
    vol, _ = ball_stack()
    c = InteractionController(FakePredictor(), "fake")
    s = c.open_image(vol)
    c.add_click((3, 20, 20))
    c.add_click((10, 20, 20))  # the clicked slice becomes the current one
    assert s.current_key == (10,)
    jobs, _ = drive(c)
    assert [j.request.key for j in jobs if isinstance(j, Predict)] == [(10,), (3,)]


def test_prefetch_embeds_the_shown_slice_only():
    c = InteractionController(FakePredictor(), "fake")
    c.open_image(blob_image())
    assert c.next_job(slice_shown=False) is None  # the slice is not on screen
    c.prefetch = False
    assert c.next_job() is None
    c.prefetch = True
    job = c.next_job()
    assert isinstance(job, Embed) and job.status.kind == "busy" and job.progress.total == 1
    finish(c, job)
    assert c.session.is_embedded() and c.embed_seconds is not None
    assert c.next_job() is None


def test_a_background_embedding_does_not_hide_the_last_message():
    c = InteractionController(FakePredictor(), "fake")
    c.open_image(blob_image())
    c.report("committed object 3 (20 px)")
    job = c.next_job()
    assert c.status.startswith("embedding the image in the background")
    events = finish(c, job)
    assert Redraw(notice=True) in events and c.status == "committed object 3 (20 px)"
    # with only an earlier embedding message to go back to: say that it is ready
    c.session.clear_cache()
    c.report("embedding the image...", "busy")
    finish(c, c.next_job())
    assert c.status.startswith("ready: embedding took")
    # something said while it ran stays
    c.session.clear_cache()
    job = c.next_job()
    c.report("positive click 1 at (10, 10)")
    finish(c, job)
    assert c.status == "positive click 1 at (10, 10)"


# --------------------------------------------------------------------------- staleness
def test_an_empty_prediction_says_what_happened_and_what_to_do():
    c = ready()
    c.add_click((2, 2))  # background: the best proposal of the fake predictor is empty
    drive(c)
    kind, text = c.messages[-1]
    assert kind == "error" and text.startswith("the model predicted no object here"), text
    assert "empty" in text and "(1 click)" not in text and "1 click)" in text
    assert "try another proposal (K)" in text and "proposals is empty" not in text


@pytest.mark.parametrize("seconds, shown", [(None, None), (0.01, None), (0.04, None), (1.26, "about 1.3 s")])
def test_the_cpu_notice_gives_the_embedding_time_only_when_it_is_one(seconds, shown):
    pred = FakePredictor()
    pred.device = "cpu"
    c = InteractionController(pred, "fake")
    c.embed_seconds = seconds
    notice = c.notice()
    assert "Running on the CPU" in notice and "0.0 s" not in notice
    assert (shown in notice) if shown else "s here" not in notice


def test_a_result_for_cleared_objects_or_another_image_is_dropped():
    c = ready()
    c.add_click((10, 10))
    job = c.next_job()
    result = job.run()
    c.clear()
    assert c.job_returned(job, result) == []  # nothing to redraw, nothing said
    c.job_finished(job)
    assert c.session.mask() is None and c.running is None
    # another image while a prediction runs
    c.add_click((10, 10))
    job = c.next_job()
    result = job.run()
    old = c.session
    c.open_image(blob_image())
    assert c.job_returned(job, result) == [] and old.mask() is None


def test_switching_models_mid_prediction_predicts_again_with_the_new_one():
    c = ready()
    c.add_click((10, 10))
    job = c.next_job()
    result = job.run()
    new = FakePredictor()
    events = c.set_predictor(new, "new")
    assert ModelReady("new", 3, ()) in events and "model new ready" in c.status
    assert c.job_returned(job, result) == []
    c.job_finished(job)
    assert c.session.predictor is new and len(c.session.clicks()) == 1
    jobs, _ = drive(c)
    assert [type(j) for j in jobs] == [Predict] and c.session.mask() is not None and new.calls


def test_a_result_the_object_moved_past_is_refused():
    c = ready()
    c.add_click((10, 10))
    job = c.next_job()
    result = job.run()
    c.undo()  # same generation, but the object changed: the session refuses it
    events = c.job_returned(job, result)
    assert not any(isinstance(e, Redraw) and e.masks for e in events)
    assert c.session.mask() is None


def test_only_the_latest_model_request_is_installed():
    c = InteractionController()
    c.open_image(blob_image())
    assert c.wants_model  # an image, no model, prefetch on
    c.request_model(ModelSpec("a.safetensors", "cpu"))
    first = c.next_job()
    assert isinstance(first, LoadModel) and first.status.text == "loading model a.safetensors on cpu..."
    c.request_model(ModelSpec("b.safetensors", "cpu"))
    assert c.loading and not c.wants_model
    assert c.job_returned(first, LoadedModel(FakePredictor(), [], 0.1)) == []  # superseded
    c.job_finished(first)
    assert c.predictor is None
    second = c.next_job()
    assert isinstance(second, LoadModel) and second.spec.model == "b.safetensors"
    b = FakePredictor()
    events = c.job_returned(second, LoadedModel(b, [], 0.1))
    c.job_finished(second)
    assert c.predictor is b and c.session.predictor is b and c.model_label == "b.safetensors"
    assert c.model_in_use == ModelSpec("b.safetensors", "cpu")
    assert Redraw(everything=True, notice=True) in events


def test_a_failed_load_keeps_the_model_in_use_and_is_not_retried():
    c = InteractionController()
    c.open_image(blob_image())
    c.request_model(ModelSpec("broken.safetensors"))
    job = c.next_job()
    events = c.job_failed(job, ValueError("not a model"))
    c.job_finished(job)
    assert ModelLoadFailed(ModelSpec("broken.safetensors"), "ValueError: not a model", None) in events
    assert texts(events) == ["could not load model 'broken.safetensors': ValueError: not a model. "
                             "no model is loaded"]
    assert not c.wants_model and c.next_job() is None  # not retried by itself
    events = c.add_click((10, 10))
    assert "no model loaded (ValueError: not a model)" in texts(events)[0] and c.session.clicks() == ()
    # with a model in use, that one stays
    c.set_predictor(FakePredictor(), "fake")
    c.request_model(ModelSpec("broken.safetensors"))
    job = c.next_job()
    events = c.job_failed(job, ValueError("not a model"))
    assert c.model_label == "fake" and "still using fake" in c.status and c.messages[-1][0] == "error"


def test_a_failed_prediction_is_not_retried_until_undo_or_reset():
    class Flaky(FakePredictor):
        fail = True

        def predict(self, *a, **kw):
            if self.fail:
                raise RuntimeError("out of memory")
            return super().predict(*a, **kw)

    pred = Flaky()
    c = ready(predictor=pred)
    c.add_click((10, 10))
    c.defer_commit(c.session.current_key)
    _, events = drive(c)
    assert "prediction failed: RuntimeError: out of memory" in c.status and c.messages[-1][0] == "error"
    assert c.pending_commit is None and c.next_job() is None  # dropped, no loop
    pred.fail = False
    c.add_click((12, 12))  # the first click is still predicted alone first: still refused
    assert c.next_job() is None
    c.undo()  # what the message says: undo (or reset) changes the object's epoch
    drive(c)
    assert c.session.mask() is not None and not c.session.needs_prediction()


def test_a_failed_embedding_is_retried_only_after_a_change():
    class NoImage(FakePredictor):
        def set_image(self, *a, **kw):
            raise OSError("disk gone")

    c = InteractionController(NoImage(), "broken")
    c.open_image(blob_image())
    drive(c)
    assert c.status == "embedding failed: OSError: disk gone" and c.next_job() is None
    c.set_predictor(FakePredictor(), "fake")  # a new generation
    assert isinstance(c.next_job(), Embed)


# --------------------------------------------------------------------------- commits
def test_a_commit_made_during_a_prediction_waits_for_its_result():
    c = ready()
    c.add_click((10, 10))
    job = c.next_job()
    events = c.defer_commit(c.session.current_key)
    assert events == [Status("committing as soon as the last click is predicted...", "busy")]
    events = finish(c, job)
    assert events[-1] == CommitNow((), False)  # last: after the result is shown
    assert c.pending_commit is None


def test_a_deferred_commit_is_cancelled_when_the_slice_changed():
    vol, _ = ball_stack()
    c = InteractionController(FakePredictor(), "fake")
    s = c.open_image(vol)
    c.add_click((10, 20, 20))
    job = c.next_job()
    c.defer_commit((10,), propagate=True)
    s.set_slice(4)
    events = finish(c, job)
    assert not any(isinstance(e, CommitNow) for e in events)
    assert c.status == "the commit was cancelled: the slice changed" and c.messages[-1][0] == "error"


# --------------------------------------------------------------------------- propagation
def _ball_committed_on_slice_10(labels=True):
    """A controller on the ball stack whose object (one click on slice 10) is committed, into
    a new int32 labels array (returned) or, with ``labels=False``, the session's own."""
    vol, ball = ball_stack()
    c = InteractionController(FakePredictor(), "fake")
    s = c.open_image(vol)
    c.add_click((10, 20, 20))
    drive(c)
    out = np.zeros(s.spatial_shape, np.int32) if labels else None
    s.commit(out)
    return c, s, ball, out


def test_propagation_runs_as_a_job_and_reports_where_it_stopped():
    c, s, ball, labels = _ball_committed_on_slice_10()
    c.request_propagation({"min_score": 0.5})
    assert c.propagating and not c.propagation_running
    job = c.next_job()
    assert isinstance(job, Propagate) and c.propagation_running and job.record.label_id == 1
    assert job.progress.total == 20 and "propagating object 1" in job.status.text
    events = finish(c, job, labels=labels)
    assert not c.propagating
    assert texts(events)[0].startswith(f"propagated object 1 to {len(job.written)} more slice(s) (up: ")
    assert "vanished" in c.status
    for z in range(21):
        if ball[z].sum() >= 4:
            assert np.array_equal(labels[z] == 1, ball[z]), z


def test_a_propagation_stops_when_its_labels_are_gone_or_it_is_stale():
    c, s, _, labels = _ball_committed_on_slice_10()
    c.request_propagation({})
    job = c.next_job()
    steps = job.run()
    step = next(steps)
    assert c.write_step(job, step, labels) is None and job.written == [step.key]
    assert texts(c.write_step(job, next(steps), None)) == ["the labels layer is gone: propagation stopped"]
    floats = np.zeros(s.spatial_shape, np.float32)  # a labels array the session refuses
    assert "must be an integer type" in texts(c.write_step(job, next(steps), floats))[0]
    c.clear()
    assert c.write_step(job, next(steps), labels) == []  # stale: stop, nothing to say
    c.job_finished(job)
    assert len(job.written) == 1 and not c.propagating


def test_a_propagation_request_for_cleared_objects_is_dropped():
    c, s, _, _ = _ball_committed_on_slice_10(labels=False)
    c.request_propagation({})
    c.clear()
    assert not isinstance(c.next_job(), Propagate) and not c.propagating
    c.request_propagation({})
    c.cancel()
    assert not c.propagating


# --------------------------------------------------------------------------- edits and depth
def test_edits_say_what_to_redraw():
    c = ready()
    events = c.add_click((10, 10))
    assert texts(events) == ["positive click 1 at (10, 10)"]
    _, events = drive(c)
    assert Redraw(masks=((),), proposals=True) in events
    assert any(t.startswith("proposals ready (1 click(s), IoU 0.90") for t in texts(events))
    events = c.cycle_proposal(1, shown=2)
    assert events == [Redraw(masks=((),), points=True, proposals=True)] and c.session.state().selected == 1
    c.cycle_proposal(1, shown=2)
    assert c.session.state().selected == 0  # wraps at the proposals shown
    events = c.undo()  # the proposal choices, then the click
    assert events[0] == Redraw(masks=((),), points=True, proposals=True) and c.session.state().selected == 1
    assert texts(c.undo()) == ["undone: 1 click(s) left"]
    assert texts(c.undo()) == ["undone: 0 click(s) left"]
    assert texts(c.undo()) == ["nothing to undo on this slice"]
    assert texts(c.select_proposal(0)) == ["no proposals on image: click first"]
    assert c.add_click((500, 10))[0].kind == "error" and "outside the image" in c.status
    assert "must be positive" in texts(c.add_click((10, 10), positive=False))[0]


def test_a_depth_change_reloads_the_model_or_predicts_again():
    c = ready()
    c.add_click((10, 10))
    drive(c)
    generation = c.generation
    events = c.depth_changed(ModelSpec("default"))  # a depth map given to the session
    assert c.generation > generation and c.session.needs_prediction() and not c.loading
    assert events == [Redraw(masks=((),), points=True, proposals=True)]
    c.depth_changed(ModelSpec("default", depth="depth-anything-v2-small"))  # a depth model
    assert c.loading and isinstance(c.next_job(), LoadModel)


# --------------------------------------------------------------------------- real loading
@pytest.fixture
def checkpoint(tiny_model, tmp_path):
    from napari_ois.registry import save_model

    return str(save_model(tiny_model, tmp_path / "tiny.safetensors"))


def test_loading_falls_back_to_the_cpu_and_runs_without_a_broken_depth_model(checkpoint, monkeypatch):
    import torch

    import napari_ois.depth as depth

    def broken(spec, device="cpu", **kw):
        raise RuntimeError("no network")

    monkeypatch.setattr(depth, "make_depth_provider", broken)
    c = InteractionController()
    c.open_image(blob_image())
    device = "cpu" if torch.cuda.is_available() else "cuda"
    c.request_model(ModelSpec(checkpoint, device, "depth-anything-v2-small"))
    job = c.next_job()
    assert job.device.type == "cpu"
    if device == "cuda":
        assert "no CUDA GPU" in job.note and "Using the CPU instead" in job.status.text
    events = finish(c, job)
    ready_event = next(e for e in events if isinstance(e, ModelReady))
    assert ready_event.label == "tiny.safetensors" and ready_event.num_proposals == 3
    assert any("running without depth" in n for n in ready_event.notes)
    assert c.messages[-1][0] == "error" and "without depth" in c.notice()
    assert "Running on the CPU" in c.notice()
    assert c.predictor.depth_provider is None and c.session.predictor is c.predictor
    c.add_click((10, 10))
    drive(c)
    assert c.session.mask() is not None


# --------------------------------------------------------------------------- box prompts
def test_a_drawn_box_is_predicted_with_the_clicks_and_a_deleted_one_is_removed():
    from test_session import FakeBoxPredictor

    c = ready(predictor=FakeBoxPredictor())
    s = c.session
    corners = np.array([[4, 4], [4, 36], [20, 36], [20, 4]], float)  # a napari rectangle
    events = c.edit_boxes({(): corners})
    assert s.box().as_tuple() == (4.0, 4.0, 20.0, 36.0)
    assert texts(events) == ["box (4, 4)-(20, 36): predicting the object from the box..."]
    assert any(isinstance(e, Redraw) and e.points and e.masks == ((),) for e in events)
    job = c.next_job()
    assert isinstance(job, Predict) and job.request.box == s.box() and not job.request.multimask
    events = finish(c, job)
    assert texts(events)[-1].startswith("mask ready (box + 0 click(s)")
    assert s.mask()[10, 10] and not s.mask()[25, 10]
    assert texts(c.edit_boxes({(): corners})) == []  # the same box again: nothing changes
    assert c.next_job() is None
    c.add_click((33, 50))
    drive(c)
    assert s.mask()[33, 50] and s.mask()[10, 10]
    events = c.edit_boxes({})  # the rectangle was deleted
    assert s.box() is None and texts(events) == ["box removed: predicting the object from its 1 click(s)..."]
    drive(c)
    assert s.mask()[33, 50] and not s.mask()[10, 10]


def test_a_box_for_a_model_without_boxes_or_outside_the_image_is_refused():
    c = ready()  # FakePredictor: no box prompts
    c.add_click((10, 10))
    drive(c)
    s = c.session
    mask = s.mask().copy()
    events = c.edit_boxes({(): np.array([[4, 4], [20, 36]], float)})
    assert texts(events) == ["box not used: this model takes no box prompts: click on the object instead "
                             "(or choose a model built for boxes)"]
    assert c.messages[-1][0] == "error" and any(isinstance(e, Redraw) and e.points for e in events)
    assert s.box() is None and len(s.clicks()) == 1 and np.array_equal(s.mask(), mask)
    assert c.next_job() is None  # nothing to predict again
    from test_session import FakeBoxPredictor

    c = ready(predictor=FakeBoxPredictor())
    assert "outside the image" in texts(c.edit_boxes({(): np.array([[100, 100], [120, 130]], float)}))[0]
    assert "r1 > r0" in texts(c.edit_boxes({(): np.array([[5, 5], [5, 9]], float)}))[0]  # a click, no drag
    assert c.session.box() is None
    c.close_image()
    assert "choose an image layer first" in texts(c.edit_boxes({(): np.array([[4, 4], [20, 36]], float)}))[0]


def test_a_box_on_a_stack_goes_to_its_slice():
    from test_session import FakeBoxPredictor

    vol, ball = ball_stack()
    c = InteractionController(FakeBoxPredictor(), "fake")
    s = c.open_image(vol)
    c.edit_boxes({(10,): np.array([[8, 8], [32, 32]], float)})
    assert s.box(10) is not None and s.box(3) is None and s.current_key == (10,)
    drive(c)
    assert np.array_equal(s.mask(10), ball[10])
    assert "slice" in texts(c.edit_boxes({(10,): np.array([[8, 8], [32, 32]], float),
                                          (99,): np.array([[8, 8], [32, 32]], float)}))[0]


# --------------------------------------------------------------------------- fine-tuning
def _finetune_scene(n=4):
    from test_finetune import _scene

    return _scene(3, n=n)


def test_finetune_needs_an_ois_model():
    from napari_ois.finetune_job import new_model_dir

    image, labels = _finetune_scene()
    c = InteractionController()
    job, events = c.request_finetune(image, labels, out="x", minutes=0.05)
    assert job is None and "load a model first" in texts(events)[0]
    c = ready()
    job, events = c.request_finetune(image, labels, out="x", minutes=0.05)
    assert job is None and "is not an OIS network" in texts(events)[0] and not c.finetuning
    assert new_model_dir("/nonexistent/models").name.startswith("finetuned-")


def test_finetune_runs_beside_the_other_jobs_and_adds_its_model(tmp_path, tiny_model):
    from napari_ois import OISPredictor
    from napari_ois.finetune_job import Finetune, FinetuneDone

    image, labels = _finetune_scene()
    c = InteractionController(OISPredictor(tiny_model, device="cpu"), "tiny")
    c.open_image(image)
    committed = labels.copy()
    job, events = c.request_finetune(image, labels, out=tmp_path / "ft", minutes=0.05,
                                     options={"batch_size": 2})
    assert isinstance(job, Finetune) and c.finetuning and c.finetune_job is job
    assert texts(events)[0].startswith("fine-tuning tiny on the committed objects for 0.05 min")
    assert c.request_finetune(image, labels, out=tmp_path / "2")[0] is None  # one at a time
    assert isinstance(c.next_job(), Embed) and c.running is not job  # interactive jobs still run
    finish(c, c.running)
    assert job.progress_line().startswith("fine-tuning tiny: preparing")
    events = finish(c, job)
    assert not c.finetuning and np.array_equal(labels, committed)
    done = [e for e in events if isinstance(e, FinetuneDone)]
    assert len(done) == 1 and done[0].model == str(tmp_path / "ft") and done[0].label == "ft"
    assert c.added_models == [str(tmp_path / "ft")] and (tmp_path / "ft" / "model.safetensors").is_file()
    assert texts(events)[0].startswith(f"fine-tuned model saved to {tmp_path / 'ft'} (")
    assert "held-back IoU" in job.outcome and " left · step " in job.progress_line()
    assert ModelSpec(str(tmp_path / "ft")).label == "ft"


def test_a_cancelled_or_refused_finetune_adds_nothing(tmp_path, tiny_model):
    from napari_ois import OISPredictor

    image, labels = _finetune_scene()
    pred = OISPredictor(tiny_model, device="cpu")
    c = InteractionController(pred, "tiny")
    job, _ = c.request_finetune(image, labels, out=tmp_path / "ft", minutes=1.0)
    assert "cancelling" in texts(c.cancel_finetune())[0]
    events = finish(c, job)
    assert texts(events) == ["fine-tuning cancelled: no model was written; still using tiny"]
    assert c.added_models == [] and not (tmp_path / "ft").exists() and c.predictor is pred
    few = np.where(labels <= 2, labels, 0)
    job, _ = c.request_finetune(image, few, out=tmp_path / "ft", minutes=0.05)
    events = finish(c, job)
    assert texts(events)[0].startswith("cannot fine-tune: too few objects: 2 usable")
    assert c.messages[-1][0] == "error" and c.added_models == [] and not c.finetuning
    job, _ = c.request_finetune(image, np.zeros_like(labels), out=tmp_path / "ft", minutes=0.05)
    assert texts(finish(c, job))[0].startswith("cannot fine-tune: the labels are empty")
    job, _ = c.request_finetune(image, labels, out=tmp_path / "ft", minutes=1.0)
    c.close()  # closing the view stops a fine-tuning
    assert job.stop.is_set()
