"""One-time warm-up of torch on the main thread, so background workers never freeze the GUI.

The first ``torch.optim.AdamW()`` / ``import torchvision`` imports ~900 modules
while holding the GIL (a 200-380 ms freeze of the viewer when it first happens
in a worker thread; see SETUP-NOTES). Doing it once here, when the first widget
is created, moves that cost to a moment where the user expects a short wait.
"""
from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)
_DONE = False
_SECONDS = 0.0


def use_napari_progress() -> bool:
    """Whether jobs report to napari's activity panel (``SEGTOOL_NAPARI_PROGRESS=0`` turns it off).

    The widgets always show their own progress bar; napari's activity panel adds an
    animated indicator whose repaints are costly on software-rendered displays.
    """
    return os.environ.get("SEGTOOL_NAPARI_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def ensure_warm() -> float:
    """Import torch/torchvision and the core, run a tiny forward/backward/AdamW step; once."""
    global _DONE, _SECONDS
    if _DONE:
        return 0.0
    _DONE = True
    t0 = time.perf_counter()
    try:
        import torch

        try:  # pulls in torch._dynamo & co. (Mask R-CNN models need it anyway)
            import torchvision  # noqa: F401
        except Exception as exc:  # pragma: no cover - optional at run time
            log.debug("torchvision not importable: %s", exc)
        import napari_segtool.core.checkpoint  # noqa: F401
        import napari_segtool.core.predict  # noqa: F401
        import napari_segtool.core.train  # noqa: F401
        from napari_segtool.models.registry import get_architecture

        get_architecture("unet")
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                  torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        x = torch.zeros(2, 1, 16, 16)
        loss = net(x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            net.eval()(x)
    except Exception as exc:  # never let the warm-up break the widget
        log.warning("napari-segtool warm-up failed: %s", exc)
    try:  # napari's own first-use costs of the layers we add later (pandas for label features...)
        import numpy as np
        from napari.layers import Image, Labels

        Labels(np.zeros((4, 4), np.int32))
        Image(np.zeros((4, 4), np.float32))
        import skimage.segmentation  # noqa: F401  (correction tools)

        if use_napari_progress():  # napari builds its activity widgets on the first progress bar
            from napari.utils import progress

            bar = progress(total=1, desc="napari-segtool ready")
            bar.update(1)
            bar.close()
    except Exception as exc:  # pragma: no cover
        log.debug("napari layer warm-up failed: %s", exc)
    _SECONDS = time.perf_counter() - t0
    return _SECONDS
