"""``napari-ois demo``: napari with the OIS widget on a sample image, or a scripted session.

With a display, ``napari-ois demo`` opens napari on a bundled sample with the dock widget
and the default model: click away. ``--headless`` (automatic when there is no display)
runs a scripted session instead and writes to ``--out``:

- ``screenshot.png``: the napari window (image, masks, clicks and the dock widget), taken
  with ``viewer.screenshot(canvas_only=False)``. Without a display the command re-runs
  itself under ``xvfb-run`` when that (and Xvfb) is installed; with neither, or when the
  viewer cannot start (no OpenGL), it runs the same clicks through the session API, writes
  ``overlay.png`` (image + masks + clicks) instead and prints one line saying why and what
  to install.
- ``mask.png``: the first committed object as a 0/255 PNG (for a stack: on the clicked
  slice; ``labels.tif`` holds the whole label volume).
- ``summary.json``, in both modes: ``mode`` ("viewer" or "session-only"), ``screenshot``
  (its file name, or null) and ``no_viewer`` (why there is none, or null), sample, model,
  device, per object its clicks (point, polarity, predicted IoU, mask pixels and the
  seconds until its mask was there) and ``timings`` in seconds: ``model_load_s``,
  ``embedding_s`` (the first image embedding), ``clicks_s`` (one per click, in order),
  ``propagation_s`` (null without a propagation) and ``total_s``.

``--measure-stall`` also measures how long the GUI thread stalls (longest gap of a QTimer
ticking every 5 ms) while a slice is embedded and during a burst of clicks, and writes
``stall.json`` (see docs/plugin.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

#: scripted objects per sample: clicks as (row, col[, slice]) in image pixels, positive or not
SCRIPTS = {
    "astronaut": [
        {"name": "helmet", "clicks": [((425, 390), True), ((470, 330), True)], "commit": True},
        {"name": "face", "clicks": [((125, 225), True), ((60, 225), False)], "commit": False},
    ],
    "coffee": [
        {"name": "cup", "clicks": [((150, 300), True), ((300, 300), True)], "commit": True},
        {"name": "spoon", "clicks": [((330, 120), True)], "commit": False},
    ],
    "ct_phantom": [
        {"name": "brain", "clicks": [((128, 128), True), ((128, 40), False)], "commit": True,
         "propagate": True},
    ],
}
SAMPLE_FUNCS = {"astronaut": "astronaut", "coffee": "coffee", "ct_phantom": "ct_phantom"}


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="open napari with the OIS widget on a sample image (headless: a scripted session "
             "that saves a screenshot and the mask)",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("--out", default="ois-demo", help="output folder for the headless run (default ois-demo)")
    p.add_argument("--headless", action="store_true", default=None,
                   help="run the scripted session and write files (automatic when there is no display)")
    p.add_argument("--model", default="default", help="registry name or weights path (default: default)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--sample", default="astronaut", choices=sorted(SCRIPTS),
                   help="which bundled sample to use (default astronaut)")
    p.add_argument("--measure-stall", action="store_true",
                   help="also measure the GUI thread's longest stall during embedding and a click burst")
    p.set_defaults(func=cmd_demo)


def has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class DemoModelError(ValueError):
    """The model could not be loaded (reported as an error, not as a missing viewer)."""


#: what to install for a viewer screenshot on a machine without a display
XVFB_HINT = ("install Xvfb (Debian/Ubuntu: sudo apt-get install xvfb xauth) or run it under "
             "xvfb-run (xvfb-run -a napari-ois demo ...)")
GL_HINT = ("install Mesa OpenGL (Debian/Ubuntu: sudo apt-get install libgl1 libegl1 libglx-mesa0 "
           "libgl1-mesa-dri) and the Qt xcb libraries (see .ci/run)")


def _check_demo_args(args) -> None:
    from .cli import DEVICE_PATTERN, UsageError, _check_model_arg

    if not DEVICE_PATTERN.match(str(args.device).lower()):
        raise UsageError(f"--device {args.device!r}: use auto, cpu, cuda (or cuda:N) or mps")
    _check_model_arg(args.model)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out}: is a file; give a folder")


def cmd_demo(args) -> int:
    _check_demo_args(args)
    headless = (not has_display()) if args.headless is None else bool(args.headless)
    if not headless:
        return run_interactive(args.model, args.device, args.sample)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not has_display():
        xvfb = shutil.which("xvfb-run")
        if xvfb and shutil.which("Xvfb") and not os.environ.get("NAPARI_OIS_DEMO_CHILD"):
            cmd = [xvfb, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, "-m", "napari_ois.cli", "demo",
                   "--headless", "--out", str(out), "--model", args.model, "--device", args.device,
                   "--sample", args.sample] + (["--measure-stall"] if args.measure_stall else [])
            print("no display: running the demo under xvfb-run")
            env = {**os.environ, "NAPARI_OIS_DEMO_CHILD": "1", QUIET_NOTIFICATIONS[0]: QUIET_NOTIFICATIONS[1]}
            return subprocess.call(cmd, env=env)
        why = ("no display and no xvfb-run" if not xvfb else "no display, and xvfb-run is there but not Xvfb")
        return run_session_only(out, args.model, args.device, args.sample, no_viewer=(why, XVFB_HINT))
    try:
        return run_viewer_script(out, args.model, args.device, args.sample, args.measure_stall)
    except DemoModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. no OpenGL: fall back to the plain session
        why = f"the napari viewer could not start ({type(exc).__name__}: {' '.join(str(exc).split())})"
        return run_session_only(out, args.model, args.device, args.sample, no_viewer=(why, GL_HINT))


# --------------------------------------------------------------------------- helpers
def wait_until(cond: Callable[[], bool], timeout: float = 120.0, poll_ms: int = 10) -> None:
    """Run the Qt event loop until ``cond()`` is true (or raise TimeoutError)."""
    from qtpy.QtCore import QEventLoop, QTimer

    if cond():
        return
    loop = QEventLoop()
    deadline = time.perf_counter() + timeout
    timer = QTimer()
    timer.setInterval(poll_ms)

    def check():
        if cond() or time.perf_counter() > deadline:
            loop.quit()

    timer.timeout.connect(check)
    timer.start()
    loop.exec_()
    timer.stop()
    if not cond():
        raise TimeoutError(f"condition not met within {timeout:.0f} s")


class StallMeter:
    """Longest gap between ticks of a QTimer firing every ``interval_ms`` on the GUI thread.

    A gap much longer than the interval means the GUI thread was busy (blocked) that long.
    """

    def __init__(self, interval_ms: int = 5):
        from qtpy.QtCore import Qt, QTimer

        self.interval_ms = interval_ms
        self.timer = QTimer()
        self.timer.setTimerType(Qt.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.gaps: list = []
        self._last = 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def start(self) -> "StallMeter":
        self.gaps = []
        self._last = time.perf_counter()
        self.timer.start()
        return self

    def stop(self) -> dict:
        self.timer.stop()
        self._tick()  # a stall that lasts until the end counts too
        return self.summary()

    def summary(self) -> dict:
        g = np.asarray(self.gaps) * 1000.0
        if g.size == 0:
            return {"ticks": 0, "max_ms": 0.0, "p99_ms": 0.0, "median_ms": 0.0}
        return {"ticks": int(g.size), "max_ms": round(float(g.max()), 1),
                "p99_ms": round(float(np.percentile(g, 99)), 1),
                "median_ms": round(float(np.median(g)), 1)}


def _sample(name: str):
    from . import _sample_data

    return getattr(_sample_data, SAMPLE_FUNCS[name])()[0]


def _set_model(widget, model: str, device: str) -> None:
    """Choose the model in the widget's fields, as a user would, and load it."""
    widget.device_combo.value = device
    if model in widget.model_combo.choices:
        widget.model_combo.value = model
        widget.load_model()  # also when the field already showed it
    else:
        widget.checkpoint.value = model  # a weights path: selects "checkpoint file" and loads


def _click(widget, point, positive: bool) -> None:
    widget.negative_box.value = not positive
    widget.points_layer.add(np.asarray(point, dtype=float))


def result_lines(messages, n: int = 8) -> list:
    """The last ``n`` status texts that report results: the click-mode switches the script
    made ("next clicks are negative ...") would read as orders without the dock on screen."""
    return [t for _, t in messages if not t.startswith("next clicks are")][-n:]


def _settled(widget) -> Callable[[], bool]:
    def ok():
        s = widget.session
        return widget.is_idle and s is not None and not any(s.needs_prediction(k) for k in s.active_keys())

    return ok


def run_interactive(model: str, device: str, sample: str) -> int:
    import napari

    viewer = napari.Viewer(title="napari-ois demo")
    viewer.open_sample("napari-ois", sample)
    _, widget = viewer.window.add_plugin_dock_widget("napari-ois", "OIS segmentation")
    _set_model(widget, model, device)
    print("napari-ois demo: click on an object (Shift+click: negative), K: next proposal, "
          "Shift+Enter: commit. See docs/plugin.md.")
    napari.run()
    return 0


# --------------------------------------------------------------------------- scripted viewer
def run_viewer_script(out: Path, model: str, device: str, sample: str, measure_stall: bool = False) -> int:
    import warnings

    import imageio.v3 as iio

    os.environ.setdefault(*QUIET_NOTIFICATIONS)  # before napari loads its settings
    import napari

    warnings.filterwarnings("ignore", message=".*PyQt5 backend is deprecated.*")
    t_start = time.perf_counter()
    viewer = napari.Viewer(title="napari-ois demo", show=True)
    try:
        viewer.window.resize(1500, 900)
        viewer.open_sample("napari-ois", sample)
        _, widget = viewer.window.add_plugin_dock_widget("napari-ois", "OIS segmentation")
        t0 = time.perf_counter()
        _set_model(widget, model, device)
        controller = widget.controller
        wait_until(lambda: widget.predictor is not None or controller.load_failure is not None, timeout=600)
        if widget.predictor is None:
            raise DemoModelError(f"--model {model}: {controller.load_failure.error}")
        timings = {"model_load_s": round(time.perf_counter() - t0, 3), "embedding_s": None, "clicks_s": [],
                   "propagation_s": None, "total_s": None}
        wait_until(lambda: widget.is_idle, timeout=600)
        s = widget.session
        if s.is_stack:  # show the middle slice
            mid = s.leading_shape[-1] // 2
            step = list(viewer.dims.current_step)
            step[-3] = mid
            viewer.dims.current_step = tuple(step)
            wait_until(lambda: widget.session.current_key == (mid,) and widget.is_idle, timeout=600)
        t0 = time.perf_counter()
        if not s.is_embedded():  # the widget embeds the shown slice in the background
            widget.schedule_work()
            wait_until(lambda: widget.is_idle and s.is_embedded(), timeout=600)
        timings["embedding_s"] = round(float(controller.embed_seconds or (time.perf_counter() - t0)), 3)
        summary = {"mode": "viewer", "screenshot": "screenshot.png", "no_viewer": None, "sample": sample,
                   "model": widget.model_label, "device": str(widget.predictor.device),
                   "objects": [], "status": [], "timings": timings}
        first_label = None
        for obj in SCRIPTS[sample]:
            rec = {"name": obj["name"], "clicks": []}
            for point, positive in obj["clicks"]:
                coord = (*s.current_key, *point)
                t0 = time.perf_counter()
                _click(widget, coord, positive)
                wait_until(_settled(widget), timeout=600)
                dt = round(time.perf_counter() - t0, 3)
                timings["clicks_s"].append(dt)
                st = widget.session.state()
                rec["clicks"].append({"point": list(map(float, coord)), "positive": positive,
                                      "iou": None if st.score is None else round(float(st.score), 4),
                                      "mask_px": int(0 if st.mask is None else st.mask.sum()), "seconds": dt})
            if st.proposals is not None:
                rec["proposal_scores"] = [round(float(v), 4) for v in st.proposals.scores]
            if obj.get("commit"):
                rec["label_id"] = widget.commit()
                if first_label is None:
                    first_label = (rec["label_id"], s.current_key)
            if obj.get("propagate"):
                widget.min_quality.value = -1.0  # untrained weights have arbitrary IoU scores
                t0 = time.perf_counter()
                widget.propagate()
                wait_until(lambda: widget.is_idle, timeout=600)
                timings["propagation_s"] = round(time.perf_counter() - t0, 3)
                rec["propagation"] = next((t for _, t in reversed(widget.messages) if t.startswith("propagated")),
                                          widget.status)
            summary["objects"].append(rec)
        summary["status"] = result_lines(widget.messages)
        labels = widget.labels_layer.data if widget.labels_layer is not None else None
        if labels is not None and first_label is not None:
            lid, key = first_label
            plane = labels[key] if key else labels
            iio.imwrite(out / "mask.png", ((plane == lid).astype(np.uint8) * 255))
            if s.is_stack:
                import tifffile

                tifffile.imwrite(out / "labels.tif", np.asarray(labels))
        if measure_stall:
            summary["stall"] = measure_gui_stall(viewer, widget)
            (out / "stall.json").write_text(json.dumps(summary["stall"], indent=2) + "\n")
        viewer.layers.selection.active = widget.points_layer
        wait_until(lambda: widget.is_idle, timeout=60)
        _close_toasts()
        _spin(0.5)  # let the canvas draw
        shot = viewer.screenshot(canvas_only=False, flash=False)
        iio.imwrite(out / "screenshot.png", np.asarray(shot)[..., :3])
        timings["total_s"] = round(time.perf_counter() - t_start, 3)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {out / 'screenshot.png'}, {out / 'mask.png'} and {out / 'summary.json'}")
        for line in summary["status"][-3:]:
            print("  " + line)
        if measure_stall:
            _print_stall(summary["stall"])
    finally:
        viewer.close()
    return 0


#: napari's ``application.gui_notification_level`` setting, from the environment (read when
#: napari loads its settings, never saved): no notification pop-up covers the screenshot
QUIET_NOTIFICATIONS = ("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "none")


def _close_toasts() -> None:
    """Close notification pop-ups (shown when napari's settings were loaded before the demo
    could turn them off) so that they do not cover the canvas in the screenshot."""
    from qtpy.QtWidgets import QApplication

    for w in QApplication.allWidgets():
        if type(w).__name__ == "NapariQtNotification" and w.isVisible():
            w.close()


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    try:
        wait_until(lambda: time.perf_counter() >= end, timeout=seconds + 1, poll_ms=10)
    except TimeoutError:
        pass


def measure_gui_stall(viewer, widget, repeats: int = 3, clicks: int = 20, click_interval_ms: int = 15) -> dict:
    """Longest GUI-thread stall (ms) during embeddings and during bursts of clicks."""
    s = widget.session
    meter = StallMeter(5)
    # idle baseline
    meter.start()
    _spin(1.0)
    idle = meter.stop()
    # embedding: drop the cache and let the widget re-embed the current slice in the background
    embed = []
    for _ in range(repeats):
        s.clear_cache()
        meter.start()
        t0 = time.perf_counter()
        widget.schedule_work()
        wait_until(lambda: widget.is_idle and s.is_embedded(), timeout=600)
        seconds = time.perf_counter() - t0
        embed.append({**meter.stop(), "embed_s": round(seconds, 3),
                      "worker_embed_s": round(float(widget.controller.embed_seconds or 0.0), 3)})
    # click bursts on a fresh object: a stress burst and a fast human's pace
    bursts = {}
    for name, n, interval in (("stress", clicks, click_interval_ms), ("human", 10, 150)):
        bursts[name] = _burst(widget, n, interval, meter)
    # one canvas repaint (what every visible change costs the GUI thread)
    from qtpy.QtWidgets import QApplication

    from vispy.gloo.context import get_current_canvas

    refresh, frames = [], []
    canvas = get_current_canvas()
    for _ in range(5):
        t0 = time.perf_counter()
        widget.preview_layer.refresh()  # napari's own CPU work for a mask update
        refresh.append(time.perf_counter() - t0)
        QApplication.processEvents()
        canvas.update()
        t0 = time.perf_counter()
        QApplication.processEvents()  # a bare repaint of the canvas (OpenGL)
        frames.append(time.perf_counter() - t0)
    # what a synchronous (GUI-thread) embedding would block for
    t0 = time.perf_counter()
    s.clear_cache()
    s.ensure_embedding()
    sync = time.perf_counter() - t0
    import torch

    renderer = "unknown"
    try:
        from vispy.gloo import gl

        canvas.set_current()
        renderer = str(gl.glGetParameter(gl.GL_RENDERER))
    except Exception:  # noqa: BLE001 - informative only
        pass
    return {
        "gl_renderer": renderer, "progress_bars": bool(widget.shows_progress_bars()),
        "model": widget.model_label, "device": str(widget.predictor.device),
        "image": list(map(int, s.plane_shape)), "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "idle": idle, "embedding": embed,
        "embedding_max_ms": max(e["max_ms"] for e in embed), "click_burst": bursts["stress"],
        "click_burst_human": bursts["human"], "repaint_ms": round(float(np.median(frames)) * 1000, 1),
        "mask_refresh_ms": round(float(np.median(refresh)) * 1000, 1),
        "sync_embedding_ms": round(sync * 1000, 1),
    }


def _burst(widget, clicks: int, interval_ms: int, meter: "StallMeter") -> dict:
    """``clicks`` clicks, one every ``interval_ms``, on a fresh object; GUI gaps meanwhile."""
    from qtpy.QtCore import QTimer

    s = widget.session
    widget.reset_object()
    wait_until(lambda: widget.is_idle, timeout=60)
    h, w = s.plane_shape
    rng = np.random.default_rng(0)
    pts = [(*s.current_key, float(rng.uniform(0.3, 0.7) * (h - 1)), float(rng.uniform(0.3, 0.7) * (w - 1)))
           for _ in range(clicks)]
    done = []

    def add(i):
        _click(widget, pts[i], positive=(i % 3 != 2))
        done.append(i)

    n_before = len(widget.messages)
    meter.start()
    t0 = time.perf_counter()
    for i in range(clicks):
        QTimer.singleShot(i * interval_ms, lambda i=i: add(i))
    wait_until(lambda: len(done) == clicks and _settled(widget)(), timeout=600)
    out = meter.stop()
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["clicks"] = clicks
    out["interval_ms"] = interval_ms
    out["predictions_run"] = sum(
        1 for _, t in widget.messages[n_before:] if t.startswith(("mask ready", "proposals ready")))
    widget.reset_object()
    widget.negative_box.value = False
    wait_until(lambda: widget.is_idle, timeout=60)
    return out


def _print_stall(st: dict) -> None:
    print(f"GUI stall ({st['model']} on {st['device']}, image {st['image']}, {st['cpu_count']} CPU cores, "
          f"OpenGL: {st['gl_renderer']}, napari progress bars {'on' if st['progress_bars'] else 'off'}):")
    print(f"  idle:              max gap {st['idle']['max_ms']} ms (timer every 5 ms)")
    for e in st["embedding"]:
        print(f"  embedding {e['embed_s']:.2f} s: max gap {e['max_ms']} ms, p99 {e['p99_ms']} ms")
    for b in (st["click_burst"], st["click_burst_human"]):
        print(f"  {b['clicks']} clicks every {b['interval_ms']} ms ({b['predictions_run']} predictions run, "
              f"{b['seconds']:.2f} s): max gap {b['max_ms']} ms, p99 {b['p99_ms']} ms")
    print(f"  one canvas repaint (OpenGL): {st['repaint_ms']} ms; napari's refresh of the mask layer: "
          f"{st['mask_refresh_ms']} ms")
    print(f"  the same embedding on the GUI thread would block it for {st['sync_embedding_ms']} ms")


# --------------------------------------------------------------------------- no viewer
def run_session_only(out: Path, model: str, device: str, sample: str,
                     no_viewer: "tuple[str, str] | None" = None) -> int:
    """The same scripted clicks through ``InteractionSession`` (no napari, no Qt).

    ``no_viewer`` = (why there is no viewer, what to install): the one line printed (on
    stderr) instead of the usual "wrote ..." line, and ``summary.json``'s ``no_viewer``."""
    import imageio.v3 as iio

    from .data.images import to_unit_rgb
    from .predictor import load_predictor
    from .session import InteractionSession

    t_start = time.perf_counter()
    data, meta, _ = _sample(sample)
    t0 = time.perf_counter()
    pred = load_predictor(model, device=device)
    timings = {"model_load_s": round(time.perf_counter() - t0, 3), "embedding_s": None, "clicks_s": [],
               "propagation_s": None, "total_s": None}
    s = InteractionSession(pred, data, contrast_limits=meta.get("contrast_limits"))
    if s.is_stack:
        s.set_slice(s.leading_shape[-1] // 2)
    t0 = time.perf_counter()
    s.ensure_embedding()
    timings["embedding_s"] = round(time.perf_counter() - t0, 3)
    why = None if no_viewer is None else no_viewer[0]
    summary = {"mode": "session-only", "screenshot": None, "no_viewer": why, "sample": sample, "model": model,
               "device": str(pred.device), "objects": [], "timings": timings}
    first = None
    for obj in SCRIPTS[sample]:
        rec = {"name": obj["name"], "clicks": []}
        for point, positive in obj["clicks"]:
            t0 = time.perf_counter()
            s.add_click(point, positive)
            dt = round(time.perf_counter() - t0, 3)
            timings["clicks_s"].append(dt)
            st = s.state()
            rec["clicks"].append({"point": list(map(float, (*s.current_key, *point))), "positive": positive,
                                  "iou": None if st.score is None else round(float(st.score), 4),
                                  "mask_px": int(0 if st.mask is None else st.mask.sum()), "seconds": dt})
        if st.proposals is not None:
            rec["proposal_scores"] = [round(float(v), 4) for v in st.proposals.scores]
        if obj.get("commit"):
            s.commit()
            rec["label_id"] = s.last_commit.label_id
            first = first or s.last_commit
        if obj.get("propagate"):
            t0 = time.perf_counter()
            rec["propagated_slices"] = len(s.propagate(min_score=-np.inf))
            timings["propagation_s"] = round(time.perf_counter() - t0, 3)
            rec["propagation"] = "; ".join(f"{'up' if d > 0 else 'down'}: {w}"
                                           for d, w in sorted(s.propagation_stops.items(), reverse=True))
        summary["objects"].append(rec)
    key = first.key
    plane = s.labels[key] if key else s.labels
    iio.imwrite(out / "mask.png", ((plane == first.label_id).astype(np.uint8) * 255))
    written = [out / "mask.png"]
    if s.is_stack:
        import tifffile

        tifffile.imwrite(out / "labels.tif", np.asarray(s.labels))
        written.append(out / "labels.tif")
    rgb = to_unit_rgb(s.image_slice(key), s.contrast_limits)
    over = rgb.copy()
    over[plane > 0] = 0.5 * over[plane > 0] + 0.5 * np.array([0.2, 0.6, 1.0])
    cur = s.mask(key)
    if cur is not None:
        over[cur] = 0.45 * over[cur] + 0.55 * np.array([1.0, 0.8, 0.0])
    for c in s.clicks(key):
        r, cc = int(round(c.row)), int(round(c.col))
        over[max(0, r - 3):r + 4, max(0, cc - 3):cc + 4] = (0.15, 0.95, 0.25) if c.positive else (1.0, 0.15, 0.55)
    iio.imwrite(out / "overlay.png", (over * 255).astype(np.uint8))
    written += [out / "overlay.png", out / "summary.json"]
    timings["total_s"] = round(time.perf_counter() - t_start, 3)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    files = ", ".join(str(p) for p in written)
    if no_viewer is not None:
        print(f"napari-ois demo: no napari screenshot: {no_viewer[0]}; for one, {no_viewer[1]}. "
              f"Wrote instead, without a viewer: {files}", file=sys.stderr)
    else:
        print(f"wrote {files} (no viewer screenshot)")
    return 0
