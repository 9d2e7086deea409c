"""A guard against a crash between triton and Mesa's libLLVM (no napari, no torch imports).

This is where napari and torch meet, so it lives with the application code, not with the
network: ``napari_ois.model`` imports timm and nothing of the package. Importing this
module applies the guard once (:func:`avoid_triton_llvm_clash`); the modules that load the
network for an application import it before they import ``napari_ois.model`` (the
predictor, the registry: ``napari_ois.load_predictor`` in napari's console goes through
both), and the napari widget calls the function again right before it builds a model
(OpenGL is surely up then).
"""

import os
import sys


def avoid_triton_llvm_clash() -> bool:
    """Block ``import triton`` when importing it now would crash the process.

    Loading the model imports timm -> torchvision -> torch._dynamo -> triton. Importing
    triton *after* Mesa's OpenGL driver has loaded its own libLLVM (llvmpipe / software
    rendering, Xvfb, AMD and Intel GPUs) segfaults (see pytorch/pytorch#129100), and inside
    napari OpenGL is always loaded before the model is built (widget or console). The
    plugin never compiles kernels, so when triton is not imported yet and a system libLLVM
    is mapped, torch is told that triton is absent. ``NAPARI_OIS_ALLOW_TRITON=1`` turns this
    off. Returns True if blocked.
    """
    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return False
    if os.environ.get("NAPARI_OIS_ALLOW_TRITON", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with open("/proc/self/maps") as fh:
            mapped = fh.read()
    except OSError:
        return False
    if "libLLVM" not in mapped:
        return False
    sys.modules["triton"] = None  # `import triton` now raises ImportError: torch runs without it
    return True


avoid_triton_llvm_clash()
