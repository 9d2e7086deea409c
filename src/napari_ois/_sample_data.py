"""Sample data for the plugin, all available offline.

The photos come from scikit-image's *bundled* files (``astronaut.png``, ``coffee.png``,
``retina.jpg`` live inside ``skimage/data``; nothing is downloaded). The CT-like volume is
built here from ``skimage.data.shepp_logan_phantom`` (also bundled): a 16-bit stack of
head-like slices in Hounsfield units + 1024, like a CT series stored as uint16.
"""

from __future__ import annotations

import numpy as np


def _photo(name: str, title: str):
    import skimage.data

    data = getattr(skimage.data, name)()
    return [(data, {"name": title, "metadata": {"source": f"skimage.data.{name} (bundled)"}}, "image")]


def astronaut():
    """Astronaut Eileen Collins (512 x 512 RGB photo, bundled with scikit-image)."""
    return _photo("astronaut", "astronaut")


def coffee():
    """A cup of coffee (400 x 600 RGB photo, bundled with scikit-image)."""
    return _photo("coffee", "coffee")


def retina():
    """A human retina fundus photograph (1411 x 1411 RGB, bundled with scikit-image)."""
    return _photo("retina", "retina (fundus)")


def ct_phantom_volume(n_slices: int = 48, size: int = 256, seed: int = 0) -> np.ndarray:
    """A CT-like 16-bit head volume ``(n_slices, size, size)`` from the Shepp-Logan phantom.

    Each slice is the phantom scaled in-plane like the cross-section of an ellipsoid (the
    head narrows towards the top and bottom). Intensities are Hounsfield-like units stored
    as ``HU + 1024`` in uint16: air -1000, brain about +40, skull about +440, with a little
    noise. A brain window (level 40, width 400) is ``(864, 1264)`` in stored units.
    """
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    base = resize(shepp_logan_phantom(), (size, size), order=1, anti_aliasing=True, preserve_range=True)
    rng = np.random.default_rng(seed)
    vol = np.full((n_slices, size, size), -1000.0, np.float32)
    centre = (n_slices - 1) / 2.0
    for z in range(n_slices):
        t = (z - centre) / (n_slices / 2.0)
        f = float(np.sqrt(max(0.0, 1.0 - t * t)))
        side = int(round(size * f))
        if side < 8:
            continue
        sl = resize(base, (side, side), order=1, anti_aliasing=True, preserve_range=True)
        o = (size - side) // 2
        inside = sl > 0.02
        hu = np.where(inside, 40.0 + (sl - 0.2) * 500.0, -1000.0)
        vol[z, o:o + side, o:o + side] = hu
    vol += rng.normal(0.0, 6.0, vol.shape).astype(np.float32)
    return np.clip(vol + 1024.0, 0, 65535).astype(np.uint16)


def ct_phantom():
    """napari sample: the CT-like 16-bit phantom volume with a brain window and 2.5 mm slices."""
    vol = ct_phantom_volume()
    meta = {
        "name": "CT phantom (16-bit)",
        "contrast_limits": (864, 1264),
        "colormap": "gray",
        "scale": (2.5, 1.0, 1.0),
        "metadata": {"source": "skimage.data.shepp_logan_phantom (bundled), extruded to 3D",
                     "units": "HU + 1024", "spacing_mm": (2.5, 1.0, 1.0)},
    }
    return [(vol, meta, "image")]
