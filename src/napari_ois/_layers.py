"""The napari side of the OIS widget: its layers, the displayed slice and what they show.

``Overlays`` keeps the helper layers of the bound image in step with its
``InteractionSession``: a Points layer holding the clicks (green discs, magenta crosses),
whose edits come back as clicks, a Shapes layer holding the box prompts (one rectangle per
slice's object; a rectangle drawn there comes back as that slice's box), and a Labels layer
previewing every slice's current object.
``LabelTargets`` remembers which Labels layer each image commits into; ``UndoGroup`` makes a
propagation one undo step of it. ``ProposalList`` draws the first-click proposals. The
functions read the viewer: its layers, the displayed slice, the OpenGL renderer. Nothing
here decides what to compute: that is ``napari_ois.controller``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Optional

import numpy as np
from qtpy.QtCore import QSize, QTimer
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import QListWidget, QListWidgetItem

from .data.clicks import Click

POSITIVE_COLOR = np.array([0.15, 0.95, 0.25, 1.0], np.float32)  # green disc
NEGATIVE_COLOR = np.array([1.0, 0.15, 0.55, 1.0], np.float32)  # magenta cross
PREVIEW_COLOR = (1.0, 0.8, 0.0, 1.0)
CLICKS_LAYER = "OIS clicks"
PREVIEW_LAYER = "OIS current object"
BOX_LAYER = "OIS box"
BOX_COLOR = np.array([0.2, 0.85, 1.0, 1.0], np.float32)  # cyan outline
#: the click markers' size on screen, in canvas pixels (napari's ``canvas_size_limits``): their
#: size in image pixels (about 1.8 % of the image side, a good size when the whole image is in
#: view) is clamped to this when zoomed in or out, so they never hide the mask of a big image
CLICK_CANVAS_PX = (8.0, 16.0)
NEW_LABELS = "(new labels layer)"
DEPTH_LAYER_PREFIX = "layer: "


def spatial_shape(layer) -> tuple:
    """The shape of an image layer without its colour axis."""
    shape = tuple(int(s) for s in layer.data.shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def layers_of(viewer, kind: str) -> list:
    """The viewer's image (``kind`` "image") or labels ("labels") layers."""
    from napari.layers import Image, Labels

    cls = {"image": Image, "labels": Labels}[kind]
    try:
        return [ly for ly in viewer.layers if isinstance(ly, cls)]
    except RuntimeError:  # Qt objects already deleted while the viewer closes
        return []


def disconnect(pairs) -> None:
    """Disconnect ``(emitter, callback)`` pairs (ones already gone are skipped)."""
    for emitter, callback in pairs:
        try:
            emitter.disconnect(callback)
        except Exception:  # noqa: BLE001 - the layer or viewer may be half gone
            pass


def default_image(viewer, current):
    """``current`` if it is still in the viewer, else the selected image layer, else the
    top one (None without images)."""
    if current is not None and current in viewer.layers:
        return current
    images = layers_of(viewer, "image")
    active = viewer.layers.selection.active
    return active if active in images else (images[-1] if images else None)


def depth_layer_choices(viewer, image) -> list:
    """``"layer: <name>"`` for every plain image layer that can be ``image``'s depth map."""
    out = []
    for ly in layers_of(viewer, "image"):
        if ly is image or getattr(ly, "rgb", False) or getattr(ly, "multiscale", False):
            continue
        if image is not None and tuple(ly.data.shape) != spatial_shape(image):
            continue
        out.append(DEPTH_LAYER_PREFIX + ly.name)
    return out


def depth_map(viewer, choice: str) -> tuple:
    """The depth map the depth field names: ``(array or None, why it is missing or None)``."""
    if not choice.startswith(DEPTH_LAYER_PREFIX):
        return None, None
    name = choice[len(DEPTH_LAYER_PREFIX):]
    layer = next((ly for ly in layers_of(viewer, "image") if ly.name == name), None)
    return (None, f"depth layer {name!r} is gone") if layer is None else (np.asarray(layer.data), None)


def image_problem(layer) -> Optional[str]:
    """Why an image layer cannot be segmented (a pyramid, fewer than 2 axes), or None."""
    if getattr(layer, "multiscale", False):
        return (f"{layer.name!r} is a multiscale (pyramid) image: add its full-resolution level "
                "as a plain layer to segment it")
    if layer.ndim < 2:
        return f"{layer.name!r} has fewer than 2 dimensions"
    return None


def layer_contrast_limits(layer) -> Optional[tuple]:
    cl = getattr(layer, "contrast_limits", None)
    if cl is None:
        return None
    lo, hi = float(cl[0]), float(cl[1])
    return (lo, hi) if hi > lo else None


def displayed_key(viewer, layer, session) -> Optional[tuple]:
    """The data index of ``layer``'s slice the viewer displays, or None if none is shown."""
    if session is None or layer is None:
        return None
    if not session.is_stack:
        return ()
    world = np.asarray(viewer.dims.point, dtype=float)[-layer.ndim:]
    data = np.asarray(layer.world_to_data(world), dtype=float)
    key = []
    for v, size in zip(data[:len(session.leading_shape)], session.leading_shape):
        i = int(round(float(v)))
        if not 0 <= i < size:
            return None
        key.append(i)
    return tuple(key)


def view_problem(viewer, session) -> Optional[str]:
    """Why clicks cannot be taken in the current view (3D display, rolled axes), or None."""
    d = viewer.dims
    if d.ndisplay != 2:
        return "switch the viewer to 2D display to click (OIS segments 2D slices)"
    if session is not None and session.is_stack and tuple(d.displayed) != (d.ndim - 2, d.ndim - 1):
        return "show the image's last two axes (rows, columns) to click; roll the axes back"
    return None


def progress_bars_default(renderer: Callable[[], str]) -> tuple:
    """Whether to show napari progress bars, and a note for the user: yes, except under
    software OpenGL (Mesa llvmpipe, ...; ``renderer()`` names it), where napari's animated
    activity indicator makes Qt recompose the OpenGL window all the time and slowed a CPU
    embedding about 5x in our measurements. ``NAPARI_OIS_PROGRESS=1`` or ``0`` decides."""
    env = os.environ.get("NAPARI_OIS_PROGRESS", "").strip().lower()
    if env in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        return env in ("1", "true", "yes", "on"), ""
    if any(w in renderer().lower() for w in ("llvmpipe", "softpipe", "swrast", "software")):
        return False, ("Software OpenGL: progress bars are off (their animation slows the model "
                       "down); the status line shows what runs.")
    return True, ""


def gl_renderer() -> str:
    """The OpenGL renderer of napari's canvas ("" when unknown, e.g. before it has drawn)."""
    try:
        from vispy.gloo import gl
        from vispy.gloo.context import get_current_canvas

        canvas = get_current_canvas()
        if canvas is not None:
            canvas.set_current()
            return str(gl.glGetParameter(gl.GL_RENDERER) or "")
    except Exception:  # noqa: BLE001 - unknown renderer: assume hardware
        pass
    return ""


class ProposalList(QListWidget):
    """The first-click proposals of the current slice: thumbnails (the proposal tinted
    yellow over the slice) with their predicted IoU, the selected one current."""

    def __init__(self):
        super().__init__()
        self.setIconSize(QSize(56, 56))
        self.setViewMode(QListWidget.IconMode)
        self.setFlow(QListWidget.LeftToRight)
        self.setWrapping(False)
        self.setMovement(QListWidget.Static)
        self.setResizeMode(QListWidget.Adjust)
        self.setFixedHeight(100)
        self.setToolTip("first-click proposals with their predicted IoU; K / Shift+K cycle")
        #: slice key -> its thumbnail-sized RGB image (clear it when the image or contrast changes)
        self.thumbnails: dict = {}

    def show_session(self, session, shown: int) -> None:
        """List the first ``shown`` proposals of ``session``'s current slice (none: empty)."""
        self.blockSignals(True)  # not a user choice
        try:
            self.clear()
            prop = None if session is None else session.proposals()
            if prop is None:
                return
            n = min(len(prop.masks), int(shown))
            window = getattr(prop, "window", None)
            if window is None:
                step = max(1, int(np.ceil(max(session.plane_shape) / 64)))
                base = self._base(session, step)
            else:  # a big image: the proposals' window only, never the whole plane
                step = max(1, int(np.ceil(max(window[1] - window[0], window[3] - window[2]) / 64)))
                base = self._window_base(session, window, step)
            for i in range(n):
                item = QListWidgetItem(f"{i + 1}: IoU {float(prop.scores[i]):.2f}")
                if base is not None:
                    m = np.asarray(prop.masks[i])[::step, ::step]
                    rgb = base.copy()
                    rgb[m] = (0.45 * rgb[m] + 0.55 * np.array([255, 204, 0])).astype(np.uint8)
                    rgb = np.ascontiguousarray(rgb)
                    qimg = QImage(rgb.data, rgb.shape[1], rgb.shape[0], 3 * rgb.shape[1],
                                  QImage.Format_RGB888).copy()
                    item.setIcon(QIcon(QPixmap.fromImage(qimg)))
                item.setToolTip(f"proposal {i + 1}: predicted IoU {float(prop.scores[i]):.3f}")
                self.addItem(item)
            if session.state().selected < n:
                self.setCurrentRow(session.state().selected)
        finally:
            self.blockSignals(False)

    def _window_base(self, session, window, step: int):
        """The thumbnail of ``window = (r0, r1, c0, c1)`` of the current slice, read by window
        (``data.windows.WindowReader``: a lazy or multiscale image is not read whole)."""
        key = ("reader", session.current_key)
        try:
            from .data.windows import WindowReader

            if key not in self.thumbnails:
                self.thumbnails[key] = WindowReader(session.plane_to_read(session.current_key),
                                                    contrast_limits=session.contrast_limits)
            r0, r1, c0, c1 = (int(v) for v in window)
            img = self.thumbnails[key].read(r0, r1, c0, c1, out_side=64)
            rows = np.linspace(0, img.shape[0] - 1, len(range(r0, r1, step))).round().astype(int)
            cols = np.linspace(0, img.shape[1] - 1, len(range(c0, c1, step))).round().astype(int)
            return (img[rows][:, cols] * 255).astype(np.uint8)
        except Exception:  # noqa: BLE001 - thumbnails are optional
            return None

    def _base(self, session, step: int):
        key = session.current_key
        if key not in self.thumbnails:
            try:
                from .data.images import to_unit_rgb

                img = session.image_slice(key)[::step, ::step]
                self.thumbnails[key] = (to_unit_rgb(img, session.contrast_limits) * 255).astype(np.uint8)
            except Exception:  # noqa: BLE001 - thumbnails are optional
                return None
        return self.thumbnails[key]


def labels_writer(layer) -> Callable:
    """A ``writer`` for ``InteractionSession.commit``: writes through the layer's undo history."""

    def write(indices, label_id):
        layer.data_setitem(indices, label_id)

    return write


class UndoGroup:
    """Makes the writes of one propagation one undo step of a napari Labels layer.

    A propagation writes one slice per worker result, over many turns of the event loop, so
    a ``with layer.block_history():`` block cannot hold it. The context manager is entered
    when the propagation starts and left when it ends: napari stages every ``data_setitem``
    in between and records them as one history item (one Ctrl+Z takes the whole
    propagation back, with the commit it started from). Anything else written to that
    layer meanwhile (a commit on another slice) joins the same step."""

    def __init__(self, layer):
        self.layer = layer
        self._cm = None
        block = getattr(layer, "block_history", None)
        if callable(block):
            try:
                cm = block()
                cm.__enter__()
                self._cm = cm
            except Exception:  # noqa: BLE001 - without it every slice is its own undo step
                self._cm = None

    def close(self) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            try:
                cm.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - the layer may be gone
                pass


class Overlays:
    """The clicks (Points), box (Shapes) and current-object (Labels) layers of the bound image.

    Args:
        viewer: the napari viewer.
        on_clicks: called with ``[(coordinate, positive), ...]`` for points the user added.
        on_edit: called (at the next turn of the event loop) after the user moved or deleted
            points; ``clicks_by_slice`` then reads them back.
        on_boxes: called (at the next turn of the event loop) with ``boxes_by_slice()`` after
            the user drew, changed or deleted a rectangle in the box layer.
    """

    def __init__(self, viewer, on_clicks: Callable, on_edit: Callable, on_boxes: Optional[Callable] = None):
        self.viewer = viewer
        self._on_clicks = on_clicks
        self._on_edit = on_edit
        self._on_boxes = on_boxes
        self.points = None
        self.preview = None
        self.boxes = None
        #: slice key -> the part ``(r0, r1, c0, c1)`` of the preview plane painted last (a
        #: big image's object covers a window: only that part is painted and cleared)
        self.painted: dict = {}
        #: the polarity of the next clicks (the style of the point napari adds next)
        self.negative = False
        #: > 0 while the widget itself changes a layer (its events are not user edits)
        self.syncing = 0
        #: how many points of the clicks layer the session already knows
        self.n_rendered = 0
        self._negative_once = False  # Shift+click or right click: this click only
        #: called with the (data) coordinate of an Alt+click instead of taking it as a click
        #: (the dock's "edit a label" row picks the label there); None: Alt+click is a click
        self.on_pick: Optional[Callable] = None
        self._pick_once = False
        self.closed = False  # the widget is closed: user edits are no longer taken

    # ----------------------------------------------------------------- user edits
    def _on_points_press(self, layer, event) -> None:
        mods = getattr(event, "modifiers", ()) or ()
        self._pick_once = "Alt" in mods and self.on_pick is not None
        self._negative_once = once = ("Shift" in mods) or getattr(event, "button", 1) == 2
        if once and not self.negative:
            self.style_next_click(True)  # the point napari adds on release looks negative

    def _on_points_data(self, event) -> None:
        if self.syncing or self.closed:
            return
        action = str(getattr(event, "action", ""))
        if action == "added" and self._pick_once:  # Alt+click: pick a label, not a click
            self._pick_once = False
            coord = np.asarray(self.points.data)[-1]
            with self.sync():
                self.points.data = np.asarray(self.points.data)[:self.n_rendered]
            if self._negative_once and not self.negative:
                self.style_next_click(False)
            self._negative_once = False
            self.on_pick(coord)
        elif action == "added":
            new = np.asarray(self.points.data)[self.n_rendered:]
            negative = self.negative or self._negative_once
            if self._negative_once and not self.negative:
                self.style_next_click(False)  # back to positive (nothing is selected yet)
            self._negative_once = False
            self.n_rendered = len(self.points.data)
            self._on_clicks([(coord, not negative) for coord in new])
        elif action in ("removed", "changed"):
            QTimer.singleShot(0, self._on_edit)

    def _on_box_data(self, event) -> None:
        if self.syncing or self.closed or self._on_boxes is None:
            return
        action = str(getattr(event, "action", ""))
        if action in ("added", "changed", "removed"):  # a drawing ends with "added"
            QTimer.singleShot(0, lambda: self._boxes_edited(action == "added"))

    def _boxes_edited(self, drawn: bool) -> None:
        if self.closed or not self.shown(self.boxes):
            return
        if drawn and self.shown(self.points):  # back to clicking: a click now refines the boxed object
            self.viewer.layers.selection.active = self.points
            self.points.mode = "add"
        self._on_boxes(self.boxes_by_slice())

    def boxes_by_slice(self) -> dict:
        """The rectangles of the box layer, ``{slice key: (N, 2) (row, col) vertices}``: the
        last one of each slice (a shape's leading coordinates, rounded, are its slice)."""
        out: dict = {}
        for verts in self.boxes.data:
            v = np.asarray(verts, dtype=float)
            out[tuple(int(round(x)) for x in v[0, :-2])] = v[:, -2:]
        return out

    def start_box(self) -> None:
        """Select the box layer in rectangle mode (the Box button)."""
        if self.shown(self.boxes):
            self.viewer.layers.selection.active = self.boxes
            self.boxes.mode = "add_rectangle"

    def clicks_by_slice(self, session) -> dict:
        """The clicks the points layer holds now, ``{slice key: [Click, ...]}`` (points
        outside the image are left out)."""
        data = np.asarray(self.points.data)
        feats = self.points.features
        pos = np.asarray(feats["positive"], bool) if "positive" in feats and len(feats) == len(data) \
            else np.ones(len(data), bool)
        out: dict = {}
        for coord, p in zip(data, pos):
            try:
                k, r, c = session.split_point(coord)
            except ValueError:
                continue
            out.setdefault(k, []).append(Click(r, c, bool(p)))
        return out

    @contextmanager
    def sync(self):
        self.syncing += 1
        try:
            yield
        finally:
            self.syncing -= 1

    def shown(self, layer) -> bool:
        try:
            return layer is not None and layer in self.viewer.layers
        except RuntimeError:  # Qt objects already deleted while the viewer closes
            return False

    def forget(self, layer) -> None:
        """``layer`` was removed from the viewer."""
        if layer is self.points:
            self.points = None
        if layer is self.preview:
            self.preview = None
        if layer is self.boxes:
            self.boxes = None

    def on_inserted(self, event=None) -> None:
        """A layer was added to the viewer: if it is not one of ours, put ours back on top at
        the next turn of the event loop (napari's own views take the insertion first)."""
        if not self.closed and getattr(event, "value", None) not in (self.preview, self.boxes, self.points):
            QTimer.singleShot(0, self.raise_to_top)

    def raise_to_top(self) -> None:
        """Move the current-object, box and clicks layers (in that order) above every other
        layer, so that a new image does not hide the prompts."""
        try:
            ours = [layer for layer in (self.preview, self.boxes, self.points) if self.shown(layer)]
            layers = self.viewer.layers
            n = len(layers)
            if self.closed or not ours or [layers.index(x) for x in ours] == list(range(n - len(ours), n)):
                return
            layers.move_multiple([layers.index(x) for x in ours], n)
        except RuntimeError:  # Qt objects already deleted while the viewer closes
            pass

    # ----------------------------------------------------------------- creation
    def ensure(self, image, session) -> None:
        """The three layers with the image's geometry (made again when the dimensions
        changed), on top, the clicks layer selected in add mode (the box layer waits in
        rectangle mode)."""
        ndim = len(session.spatial_shape)
        scale, translate = np.asarray(image.scale), np.asarray(image.translate)
        size = max(4.0, 0.018 * max(session.plane_shape) * float(np.min(scale[-2:])))
        layers = self.viewer.layers
        pts = self.points
        if pts is not None and (pts not in layers or pts.ndim != ndim):
            if pts in layers:
                layers.remove(pts)
            pts = None
        if pts is None:
            from napari.layers import Points

            pts = Points(
                np.empty((0, ndim)), ndim=ndim, name=CLICKS_LAYER, size=size, canvas_size_limits=CLICK_CANVAS_PX,
                face_color=POSITIVE_COLOR, border_color="white", border_width=0.12,
                features={"positive": np.zeros(0, bool)}, scale=scale, translate=translate,
            )
            pts.feature_defaults["positive"] = True
            pts.events.data.connect(self._on_points_data)
            pts.mouse_drag_callbacks.insert(0, self._on_points_press)
            self.points = pts
        else:
            pts.scale, pts.translate = scale, translate
            pts.size, pts.canvas_size_limits = size, CLICK_CANVAS_PX
        prev = self.preview
        if prev is not None and (prev not in layers or tuple(prev.data.shape) != tuple(session.spatial_shape)):
            if prev in layers:
                layers.remove(prev)
            prev = None
        if prev is None:
            from napari.layers import Labels

            prev = Labels(
                np.zeros(session.spatial_shape, np.uint8), name=PREVIEW_LAYER, opacity=0.55,
                scale=scale, translate=translate,
                colormap={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: PREVIEW_COLOR},
            )
            self.preview = prev
        else:
            prev.scale, prev.translate = scale, translate
            prev.data[...] = 0
            prev.refresh()
        self.painted = {}
        bx = self._ensure_boxes(ndim, scale, translate, 0.004 * max(session.plane_shape))
        for layer in (prev, bx, pts):
            if layer not in layers:
                layers.append(layer)
        pts.mode = "add"
        layers.selection.active = pts
        self.render_points(session)
        self.style_next_click(self.negative)

    def _ensure_boxes(self, ndim: int, scale, translate, width: float):
        bx = self.boxes
        if bx is not None and (bx not in self.viewer.layers or bx.ndim != ndim):
            if bx in self.viewer.layers:
                self.viewer.layers.remove(bx)
            bx = None
        if bx is None:
            from napari.layers import Shapes

            bx = Shapes(ndim=ndim, name=BOX_LAYER, scale=scale, translate=translate)
            bx.events.data.connect(self._on_box_data)
            self.boxes = bx
        else:
            bx.scale, bx.translate = scale, translate
        with self.sync():
            bx.current_edge_color, bx.current_face_color = BOX_COLOR, (0.0, 0.0, 0.0, 0.0)
            bx.current_edge_width = max(1.0, width)
            bx.mode = "add_rectangle"  # selecting the layer is enough to draw a box
        return bx

    def clear(self) -> None:
        """Empty the layers (no image is bound)."""
        try:
            if self.shown(self.preview):
                self.preview.data[...] = 0
                self.preview.refresh()
            self.painted = {}
            if self.shown(self.points):
                with self.sync():
                    self.points.data = np.empty((0, self.points.ndim))
                self.n_rendered = 0
            self.render_boxes(None)
        except RuntimeError:  # Qt objects already deleted while the viewer closes
            pass

    # ----------------------------------------------------------------- drawing
    def render_preview(self, session, key, refresh: bool = True) -> None:
        """Show slice ``key``'s current object (nothing when it has no mask). Only the part of
        the plane the object covers is written (its window on a big image), and only the part
        painted before is cleared: the cost follows the object, not the image."""
        layer = self.preview
        if session is None or not self.shown(layer):
            return
        crop, window = session.mask_window(key)
        plane = layer.data[key] if key else layer.data
        old = self.painted.pop(key, None)
        if old is not None:
            r0, r1, c0, c1 = old
            plane[r0:r1, c0:c1] = 0
        if crop is not None:
            r0, r1, c0, c1 = window if window is not None else (0, plane.shape[0], 0, plane.shape[1])
            plane[r0:r1, c0:c1] = crop
            self.painted[key] = (r0, r1, c0, c1)
        if refresh:
            layer.refresh()

    def render_previews(self, session) -> None:
        """Every slice's current object, in one refresh."""
        if session is None or not self.shown(self.preview):
            return
        self.preview.data[...] = 0
        self.painted = {}
        for k in session.active_keys():
            self.render_preview(session, k, refresh=False)
        self.preview.refresh()

    def render_boxes(self, session) -> None:
        """Show every slice's box (skipped when the layer already shows them)."""
        layer = self.boxes
        if not self.shown(layer):
            return
        boxes = [] if session is None else [(k, session.box(k)) for k in sorted(session.active_keys())]
        want = [np.array([(*k, r, c) for r, c in ((b.r0, b.c0), (b.r0, b.c1), (b.r1, b.c1), (b.r1, b.c0))],
                         dtype=float) for k, b in boxes if b is not None]
        have = [np.asarray(d, dtype=float) for d in layer.data]
        if len(have) == len(want) and all(t == "rectangle" for t in layer.shape_type) and all(
                np.allclose(h.min(0), w.min(0)) and np.allclose(h.max(0), w.max(0)) for h, w in zip(have, want)):
            return
        with self.sync():
            layer.selected_data = set()
            layer.data = []
            if want:
                layer.add(want, shape_type="rectangle", edge_color=BOX_COLOR, face_color=(0.0, 0.0, 0.0, 0.0),
                          edge_width=layer.current_edge_width)

    def render_points(self, session, force: bool = False) -> None:
        """Show the session's clicks and boxes (skipped when the layers already do: every
        change repaints the canvas, which is the GUI thread's main cost per click)."""
        self.render_boxes(session)
        layer = self.points
        if not self.shown(layer):
            return
        clicks = [] if session is None else session.all_clicks()
        nd = layer.ndim
        coords = np.array([(*k, c.row, c.col) for k, c in clicks], float).reshape(-1, nd)
        pos = np.array([c.positive for _, c in clicks], bool)
        colors = np.where(pos[:, None], POSITIVE_COLOR, NEGATIVE_COLOR)
        if not force and self._points_match(layer, coords, pos, colors):
            self.n_rendered = len(coords)
            return
        with self.sync():
            layer.selected_data = set()
            layer.data = coords
            layer.features = {"positive": pos}
            if len(coords):
                layer.face_color = colors
                layer.symbol = ["disc" if p else "cross" for p in pos]
        self.style_next_click(self.negative)
        self.n_rendered = len(coords)

    @staticmethod
    def _points_match(layer, coords, pos, colors) -> bool:
        try:
            data = np.asarray(layer.data)
            if data.shape != coords.shape or not np.allclose(data, coords):
                return False
            if len(coords) == 0:
                return True
            feats = np.asarray(layer.features["positive"], bool)
            symbols = [getattr(v, "value", str(v)) for v in layer.symbol]
            return (np.array_equal(feats, pos) and np.allclose(layer.face_color, colors)
                    and symbols == ["disc" if p else "cross" for p in pos])
        except Exception:  # noqa: BLE001 - anything odd: render again
            return False

    def style_next_click(self, negative: bool) -> None:
        """Colour, symbol and feature of the next point napari adds (nothing stays selected,
        so no existing point is restyled)."""
        layer = self.points
        if layer is None:
            return
        try:
            with self.sync():
                if layer.selected_data:
                    layer.selected_data = set()
                layer.current_face_color = NEGATIVE_COLOR if negative else POSITIVE_COLOR
                layer.current_symbol = "cross" if negative else "disc"
                layer.feature_defaults["positive"] = not negative
        except Exception:  # noqa: BLE001 - cosmetic only
            pass


class LabelTargets:
    """Which Labels layer each image commits into: every image keeps its own."""

    def __init__(self, viewer):
        self.viewer = viewer
        self._targets: dict = {}  # id(image layer) -> (image layer, its Labels layer)

    def remember(self, image, labels) -> None:
        if image is None:
            return
        if labels is None:
            self._targets.pop(id(image), None)
        else:
            self._targets[id(image)] = (image, labels)

    def forget(self, layer) -> None:
        """``layer`` (an image or a labels layer) was removed from the viewer."""
        self._targets = {k: (img, lab) for k, (img, lab) in self._targets.items()
                         if img is not layer and lab is not layer}

    def remembered(self, image, shape: tuple, candidates: list):
        """The Labels layer ``image`` committed to before, else one of ``candidates`` named
        ``<image> objects`` with the image's spatial ``shape``, else None (a new layer at the
        first commit)."""
        shape = tuple(shape)
        entry = self._targets.get(id(image))
        if entry is not None and entry[0] is image:
            lab = entry[1]
            if lab in candidates and tuple(lab.data.shape) == shape:
                return lab
            self._targets.pop(id(image), None)
        for lab in candidates:
            if lab.name == f"{image.name} objects" and tuple(lab.data.shape) == shape:
                self._targets[id(image)] = (image, lab)
                return lab
        return None

    def create(self, image, shape: tuple, below: Any = None):
        """A new ``<image> objects`` Labels layer with the image's geometry, placed under
        ``below`` (the preview layer), remembered as the image's target."""
        layer = self.viewer.add_labels(
            np.zeros(shape, np.int32), name=f"{image.name} objects",
            scale=np.asarray(image.scale), translate=np.asarray(image.translate),
        )
        layers = self.viewer.layers
        if below is not None and below in layers:
            layers.move(layers.index(layer), layers.index(below))
        self.remember(image, layer)
        return layer

    def resolve(self, chosen, image, shape: tuple, create: bool, below: Any = None) -> tuple:
        """The layer a commit of ``image`` goes to: ``chosen`` (the field's layer, None for a
        new one) if it is usable, else a new layer when ``create``. Returns ``(layer or None,
        whether it was created, why ``chosen`` is unusable or None)``."""
        if chosen is not None and chosen not in self.viewer.layers:
            chosen = None
        if chosen is None:
            return (self.create(image, shape, below), True, None) if create else (None, False, None)
        problem = self.problem(chosen, shape)
        if problem:
            return None, False, problem
        self.remember(image, chosen)
        return chosen, False, None

    @staticmethod
    def describe(image, labels) -> str:
        """The widget's target line: where commits of ``image`` go."""
        if image is None:
            return ""
        if labels is None:
            return f"commits go to: a new labels layer {image.name + ' objects'!r} (created at the first commit)"
        return f"commits go to: {labels.name!r}"

    @staticmethod
    def problem(layer, shape: tuple) -> Optional[str]:
        """Why ``layer`` cannot take commits for an image of spatial ``shape``, or None."""
        if tuple(layer.data.shape) != tuple(shape):
            return (f"labels layer {layer.name!r} has shape {tuple(layer.data.shape)} but the image "
                    f"has {tuple(shape)}: choose another layer or '{NEW_LABELS}'")
        if not isinstance(layer.data, np.ndarray):
            return f"labels layer {layer.name!r} is not an in-memory numpy array: choose '{NEW_LABELS}'"
        return None
