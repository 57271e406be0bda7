"""Running the core's generator jobs in napari ``thread_worker``s, stardist-napari style.

The core's long jobs (``iter_predict``, ``iter_train``) are generators that yield
progress events and return a result. :func:`start_job` runs one in a background
thread, relays every event to the GUI thread, and turns *every* outcome into a
:class:`JobOutcome` handed to ``on_done`` on the GUI thread: a result, a
cancellation, or an error with a message a user can act on. Exceptions never
reach napari's error dialog and never crash the viewer.
"""
from __future__ import annotations

import logging
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Generator

from napari.qt.threading import thread_worker
from qtpy.QtCore import QObject, QThreadPool, Signal

from napari_segtool.kernel.errors import SegtoolError
from napari_segtool.kernel.events import CancelToken, Cancelled

log = logging.getLogger(__name__)


@dataclass
class JobOutcome:
    """How a background job ended."""

    status: str              # "ok", "cancelled" or "error"
    result: Any = None
    message: str = ""
    exception: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def describe_error(exc: BaseException) -> str:
    """One line for the user: what went wrong and, where known, what to do.

    The package's expected failures (:class:`~napari_segtool.kernel.errors.SegtoolError`:
    bad input, a model that cannot be read, a project folder that cannot be used...) say
    it themselves; anything else is a bug and keeps its type name.
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    torch = sys.modules.get("torch")  # a torch error means torch is imported: never import it here
    oom = isinstance(exc, getattr(torch, "OutOfMemoryError", ())) or "out of memory" in text.lower()
    if isinstance(exc, MemoryError) or oom:
        return "out of memory: choose a smaller tile size, a smaller scope (current slice), or close other programs"
    if isinstance(exc, SegtoolError):
        return text
    return f"{type(exc).__name__}: {text}"


class Throttle(QObject):
    """Coalesces frequent GUI updates: ``push(*args)`` calls ``apply(*latest args)`` at most every ``ms``.

    Under a software-rendered display every repaint of a widget costs the whole window a
    redraw (tens of ms); progress from a job can arrive hundreds of times a second.
    """

    def __init__(self, apply: Callable[..., None], ms: int = 250, parent: QObject | None = None):
        super().__init__(parent)
        from qtpy.QtCore import QTimer

        self._apply = apply
        self._args: tuple | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(ms)
        self._timer.timeout.connect(self.flush)

    def push(self, *args: Any) -> None:
        self._args = args
        if not self._timer.isActive():
            self.flush()
            self._timer.start()

    def flush(self) -> None:
        if self._args is not None:
            args, self._args = self._args, None
            self._apply(*args)

    def cancel(self) -> None:
        self._timer.stop()
        self._args = None


class _Relay(QObject):
    """Carries tile-level progress from a worker thread to the GUI thread (queued signal)."""

    tiles = Signal(int, int)


#: threads of Qt's global pool kept free while jobs run
SPARE_POOL_THREADS = 2


def keep_pool_threads_free(spare: int = SPARE_POOL_THREADS) -> int:
    """Grow Qt's global thread pool so ``spare`` threads stay free besides the running ones; returns its size.

    napari's ``thread_worker`` runs each job on ``QThreadPool.globalInstance()``, whose size is
    the number of cores. Qt runs short tasks of the GUI thread on the same pool and *waits* for
    them (e.g. the multi-threaded ``QImage`` conversion of a window repaint, ``composeAndFlush``):
    with Segment and Train running on a 2-core machine the pool was full and the window froze
    until the Segment job ended (measured 17-26 s), or deadlocked under PyQt5 (the GUI thread
    waits for the pool holding the GIL the jobs need; seen with gdb in ``QSemaphore::acquire``
    under ``QImage::convertTo``).
    """
    pool = QThreadPool.globalInstance()
    wanted = pool.activeThreadCount() + 1 + spare  # the job about to start, and the spare ones
    if pool.maxThreadCount() < wanted:
        pool.setMaxThreadCount(wanted)
    return pool.maxThreadCount()


def start_job(
    make_job: Callable[[CancelToken, Callable[[int, int], None]], Generator[Any, None, Any]],
    *,
    on_event: Callable[[Any], None] | None = None,
    on_tiles: Callable[[int, int], None] | None = None,
    on_done: Callable[[JobOutcome], None],
) -> tuple[Any, CancelToken]:
    """Start ``make_job(cancel, tile_callback)`` in a worker thread; returns ``(worker, cancel token)``.

    ``on_event`` receives every yielded event, ``on_tiles`` tile progress, and
    ``on_done`` exactly one :class:`JobOutcome` — all on the GUI thread.
    """
    cancel = CancelToken()
    relay = _Relay()
    if on_tiles is not None:
        relay.tiles.connect(on_tiles)

    def tile_callback(done: int, total: int) -> None:
        relay.tiles.emit(int(done), int(total))

    @thread_worker(ignore_errors=True)
    def run():
        try:
            result = yield from make_job(cancel, tile_callback)
        except Cancelled:
            return JobOutcome("cancelled", message="cancelled")
        except BaseException as exc:  # noqa: BLE001 - every error becomes a message
            if cancel.cancelled:
                return JobOutcome("cancelled", message="cancelled")
            log.debug("job failed:\n%s", traceback.format_exc())
            return JobOutcome("error", message=describe_error(exc), exception=exc)
        if cancel.cancelled and not getattr(result, "keep_when_cancelled", False):
            return JobOutcome("cancelled", result=result, message="cancelled")
        return JobOutcome("ok", result=result)

    worker = run()
    done = {"called": False}

    def finish(outcome: JobOutcome) -> None:
        if done["called"]:
            return
        done["called"] = True
        try:
            on_done(outcome)
        except RuntimeError as exc:  # the widget was closed (C++ object deleted) meanwhile
            if "deleted" not in str(exc):
                raise
            log.debug("job finished after its widget was closed: %s", exc)

    if on_event is not None:
        worker.yielded.connect(on_event)
    worker.returned.connect(lambda outcome: finish(outcome if isinstance(outcome, JobOutcome)
                                                   else JobOutcome("ok", result=outcome)))
    worker.errored.connect(lambda exc: finish(JobOutcome("error", message=describe_error(exc), exception=exc)))
    # a worker stopped with quit() emits neither returned nor errored
    worker.aborted.connect(lambda: finish(JobOutcome("cancelled", message="cancelled")))
    worker._segtool_relay = relay  # keep the relay alive as long as the worker
    keep_pool_threads_free()
    worker.start()
    return worker, cancel
