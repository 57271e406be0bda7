"""One-time warm-up of torch and the core, in a background thread, so the GUI never waits for it.

``import torch`` + torchvision + the core take 3-6 s and the first
``torch.optim.AdamW()`` imports ~900 more modules (SETUP-NOTES). Done on the GUI
thread when the first widget opened, that froze the window for seconds; done
lazily inside the first job, it froze it for 200-380 ms mid-run. Here it runs
once in a daemon thread that the first widget starts once it is docked (:func:`schedule_warm`):

* the model lists (which need ``core.checkpoint``, hence torch) fill in when it
  is ready (:func:`when_models_ready`; the combo boxes say "loading models…"),
* the nuclei sample is simulated and cached meanwhile (``samples.prepare_cache``),
* napari's layer types get their first-use imports (pandas for label features), and dask its
  schedulers' (napari computes a lazy layer's slices on the GUI thread).

Nothing here creates Qt widgets off the GUI thread: the thread only imports and
computes; :class:`_Notifier`'s queued signals call back on the GUI thread.

The cyclic garbage collector is off while the thread imports, and what it imported is then frozen
(:func:`gc.freeze`): the imports create millions of long-lived objects, so the collector's full passes
(each one C call holding the GIL) came every 1-3 s and grew to 120-360 ms of frozen window, collecting
next to nothing (docs/benchmarks/gui_stall.txt, run 6). Frozen objects are never scanned again, so
later full passes (during a job, on the GUI thread) stay short too.
"""
from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from typing import Callable

from qtpy.QtCore import QObject, Signal

log = logging.getLogger(__name__)

_lock = threading.Lock()
_thread: threading.Thread | None = None
_models_ready = threading.Event()   # core.checkpoint (and torch) imported: model lists can be read
_done = threading.Event()           # the whole warm-up finished
_SECONDS = 0.0
_CORE = "napari_segtool.core.checkpoint"


class _Notifier(QObject):
    """Created on the GUI thread; its signals, emitted by the warm-up thread, are delivered there."""

    models_ready = Signal()
    done = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.done.connect(self.warm_napari_progress)

    def warm_napari_progress(self) -> None:
        """napari builds its activity widgets on the first progress bar: once, on the GUI thread, now
        rather than at the first Segment click."""
        if not use_napari_progress():
            return
        try:
            from napari.utils import progress

            bar = progress(total=1, desc="napari-segtool ready")
            bar.update(1)
            bar.close()
        except Exception as exc:  # pragma: no cover
            log.debug("napari progress warm-up failed: %s", exc)


_notifier: _Notifier | None = None


def use_napari_progress() -> bool:
    """Whether jobs report to napari's activity panel (``SEGTOOL_NAPARI_PROGRESS=0`` turns it off).

    The widgets always show their own progress bar; napari's activity panel adds an
    animated indicator whose repaints are costly on software-rendered displays.
    """
    return os.environ.get("SEGTOOL_NAPARI_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def models_ready() -> bool:
    """True once the model lists can be read without importing torch on the caller's thread."""
    return _models_ready.is_set()


def is_warm() -> bool:
    return _done.is_set()


#: the warm-up starts this long after the first widget is built: docking and first painting a
#: widget run hundreds of Python callbacks on the GUI thread, each of which would wait for the
#: GIL behind the importing thread (a convoy: seconds of frozen window)
WARM_DELAY_MS = 400
#: the interpreter's thread switch interval while the warm-up imports: the GUI thread waits at
#: most this long for the GIL at each of its Python calls (the default is 5 ms)
WARM_SWITCH_INTERVAL = 0.001


def _prepare() -> None:
    """Create the notifier on the GUI thread; note a core that a script or test imported already."""
    global _notifier
    with _lock:
        if _notifier is None:
            _notifier = _Notifier()
        if _CORE in sys.modules and not getattr(sys.modules[_CORE].__spec__, "_initializing", False):
            _models_ready.set()


def start_warm() -> None:
    """Start the warm-up thread now (once per process); call on the GUI thread. Returns at once."""
    global _thread
    _prepare()
    with _lock:
        if _thread is not None:
            return
        _thread = threading.Thread(target=_run, name="segtool-warmup", daemon=True)
        _thread.start()


def schedule_warm(delay_ms: int = WARM_DELAY_MS) -> None:
    """Start the warm-up ``delay_ms`` after the GUI thread is free again (what widgets call when built)."""
    _prepare()
    if _thread is None:
        from qtpy.QtCore import QTimer

        QTimer.singleShot(delay_ms, start_warm)


def when_models_ready(callback: Callable[[], object]) -> None:
    """Call ``callback`` on the GUI thread once the model lists can be read (now, if they can).

    ``callback`` should be a bound method of a QObject living on the GUI thread (so the
    queued signal reaches it there); it may run twice around the moment of readiness.
    """
    schedule_warm()
    if _models_ready.is_set():
        callback()
        return
    assert _notifier is not None
    _notifier.models_ready.connect(callback)
    if _models_ready.is_set():  # became ready while connecting
        callback()


def wait_warm(timeout: float | None = None) -> bool:
    """Block until the warm-up is done (scripts, benchmarks); True if it is."""
    start_warm()
    return _done.wait(timeout)


def _run() -> None:
    global _SECONDS
    t0 = time.perf_counter()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, WARM_SWITCH_INTERVAL))
    collecting = gc.isenabled()
    gc.disable()  # full passes over the growing heap of imported modules: 0.1-0.4 s each, holding the GIL
    try:
        _warm_all()
    finally:
        gc.freeze()  # what was imported is never scanned again (no gc.collect() first: one more long pass)
        if collecting:
            gc.enable()
        sys.setswitchinterval(interval)
    _SECONDS = time.perf_counter() - t0
    _done.set()
    _emit("done")


def _warm_all() -> None:
    """Torch and the core (then the model lists are ready), the sample cache, napari's and dask's first uses."""
    try:
        _warm_torch()
    finally:
        _models_ready.set()
        _emit("models_ready")
    try:
        from napari_segtool.plugin.samples import prepare_cache

        prepare_cache()
    except Exception as exc:  # pragma: no cover - a cache is only a speed-up
        log.debug("sample cache not prepared: %s", exc)
    try:  # napari's own first-use costs of the layers we add later (pandas for label features...)
        import numpy as np
        import skimage.segmentation  # noqa: F401  (correction tools)
        from napari.layers import Image, Labels

        Labels(np.zeros((4, 4), np.int32))
        Image(np.zeros((4, 4), np.float32))
        _warm_dask()
    except Exception as exc:  # pragma: no cover
        log.debug("napari layer warm-up failed: %s", exc)


def _warm_dask() -> None:
    """Run one tiny dask computation: the first in a process imports dask's schedulers (and ``distributed``
    when it is installed, to look for a default client): 0.5 s measured. napari computes a lazy layer's
    slice on the GUI thread (a zarr opened with File > Open, the Batch result), so it is paid here."""
    import dask.array as da

    da.zeros((2, 2), chunks=1).sum().compute()


def _emit(name: str) -> None:
    try:
        if _notifier is not None:
            getattr(_notifier, name).emit()
    except RuntimeError:  # the application is gone
        pass


def _preload_native_libraries() -> None:
    """Load torch's shared libraries with the GIL released (Linux).

    ``import torch`` dlopens ``torch._C`` (libtorch_cpu, CUDA libraries of the wheel: hundreds
    of MB) while holding the GIL: the GUI thread could not run a line of Python for 0.3-3 s
    (measured on a loaded 2-core machine). A call through ctypes to libc's ``dlopen`` releases
    the GIL for its duration; once loaded, the imports below find the libraries in memory.
    The flags are those torch and Python use (``RTLD_GLOBAL`` for ``libtorch_global_deps``,
    ``RTLD_NOW`` for extension modules), so nothing loads differently.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import importlib.util
    from pathlib import Path

    try:
        dlopen = ctypes.CDLL(None).dlopen
        dlopen.restype, dlopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
        spec = importlib.util.find_spec("torch")
        if spec is None or not spec.submodule_search_locations:
            return
        root = Path(list(spec.submodule_search_locations)[0])
        libraries = [(root / "lib" / "libtorch_global_deps.so", os.RTLD_GLOBAL | os.RTLD_NOW)]
        libraries += [(path, os.RTLD_NOW) for path in sorted(root.glob("_C*.so"))]
        for path, flags in libraries:
            if path.is_file():
                dlopen(str(path).encode(), flags)  # a foreign call: ctypes releases the GIL
    except (OSError, AttributeError) as exc:  # only a speed-up
        log.debug("native libraries not preloaded: %s", exc)


def _warm_torch() -> None:
    """Import torch/torchvision and the core, run a tiny forward/backward/AdamW step."""
    try:
        _preload_native_libraries()
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
