"""Run a job generator in a child process and drive it like a local one (:func:`iter_in_process`).

A job that keeps the CPU busy in Python and torch for minutes (training) starves the
napari GUI thread of the GIL when it runs in a thread next to another busy thread: the
window froze for seconds while Segment and Train ran together. In a child process it
has its own interpreter and GIL. :func:`iter_in_process` starts ``target(*args,
cancel=token)`` -- a generator function of the core, importable by name -- in a
*spawned* process (a fresh interpreter: no Qt, no OpenGL context, so torch's own
imports there cannot clash with the viewer's Mesa; it never inherits the GUI's
threads), and is itself a generator: it yields the child's events as they arrive and
returns the child's result, so callers (a napari ``thread_worker``, the CLI,
``kernel.events.run_job``) treat it exactly as the job itself.

* Cancel: setting the caller's :class:`~napari_segtool.kernel.events.CancelToken` sets
  the child's token (between steps the job stops and returns what it has); a child that
  does not end ``stop_grace`` seconds later is terminated and :class:`Cancelled` raised.
* Errors: an exception of the job is raised again in the caller with its own type
  (``SegtoolError`` subclasses stay user errors); one that cannot be pickled becomes a
  :class:`ChildJobError` with its type and message; a child that dies without a word
  (killed, out of memory, a crash in native code) raises :class:`ChildJobError` with its
  exit code.
* Events and the result travel pickled through a pipe: keep them small (dataclasses,
  paths, figures); large data (weights) goes through files.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import threading
import time
import traceback
from multiprocessing.connection import wait
from typing import Any, Callable, Generator

from napari_segtool.kernel.events import CancelToken, Cancelled

log = logging.getLogger(__name__)

_EVENT, _RESULT, _ERROR = "event", "result", "error"


class ChildJobError(RuntimeError):
    """The child process failed in a way that has no exception of its own to raise here."""


def _portable_error(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a :class:`ChildJobError` saying what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any exception type can refuse pickling
        text = " ".join(str(exc).split()) or type(exc).__name__
        return ChildJobError(f"{type(exc).__name__}: {text}")


def _watch(stop: Any, token: CancelToken, poll: float = 0.05) -> None:
    """In the child: cancel ``token`` once the parent sets the shared ``stop`` flag.

    A polled flag, not a ``multiprocessing.Event``: ``Event.set`` waits for every process
    blocked in ``wait()`` to wake up, and hangs for ever if one of them has died.
    """
    while not stop.value:
        time.sleep(poll)
    token.cancel()


def _child_main(channel: Any, stop: Any, target: Callable[..., Generator[Any, None, Any]],
                args: tuple, kwargs: dict[str, Any], nice: int = 0) -> None:
    """Body of the child process: run the job, send every event, then its result or its error."""
    if nice and hasattr(os, "nice"):
        os.nice(nice)
    token = CancelToken()
    threading.Thread(target=_watch, args=(stop, token), name="segtool-cancel", daemon=True).start()
    try:
        job = target(*args, cancel=token, **kwargs)
        while True:
            try:
                event = next(job)
            except StopIteration as done:
                channel.send((_RESULT, done.value, ""))
                return
            channel.send((_EVENT, event, ""))
    except BaseException as exc:  # noqa: BLE001 - every outcome goes back to the parent
        channel.send((_ERROR, _portable_error(exc), traceback.format_exc()))


def iter_in_process(target: Callable[..., Generator[Any, None, Any]], *args: Any,
                    cancel: CancelToken | None = None, name: str = "job", stop_grace: float = 30.0,
                    poll: float = 0.25, nice: int = 0, **kwargs: Any) -> Generator[Any, None, Any]:
    """Run ``target(*args, cancel=<token>, **kwargs)`` in a spawned process; yield its events, return its result.

    ``target`` must be a module-level generator function (the child imports it by name) and
    its arguments, events and result picklable. ``name`` appears in error messages ("the
    training process ended unexpectedly"). ``nice`` lowers the child's CPU priority (Unix):
    a background job then leaves the cores to the viewer first. Closing this generator early
    stops the child.
    """
    ctx = multiprocessing.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    stop = ctx.RawValue("b", 0)  # set to 1: please stop
    process = ctx.Process(target=_child_main, args=(writer, stop, target, args, kwargs, nice),
                          name=f"segtool-{name}", daemon=True)
    process.start()
    writer.close()  # the child holds the only writing end: end of file once it is gone
    deadline: float | None = None
    ended = False  # the child sent its result or error: it is exiting on its own
    try:
        while True:
            if cancel is not None and cancel.cancelled and deadline is None:
                stop.value = 1
                deadline = time.monotonic() + stop_grace
            # sleep until a message, the child's end or the poll time: no busy polling that would
            # take the GIL from the viewer's thread every few milliseconds
            if not wait([reader, process.sentinel], timeout=poll):
                if deadline is not None and time.monotonic() > deadline:
                    raise Cancelled(f"the {name} process did not stop within {stop_grace:.0f} s; terminated")
                continue
            try:
                kind, payload, trace = reader.recv()
            except EOFError:  # the child ended without a result or an error
                process.join(5.0)
                raise ChildJobError(f"the {name} process ended unexpectedly (exit code {process.exitcode})") from None
            if kind == _EVENT:
                yield payload
                continue
            ended = True
            if kind == _RESULT:
                return payload
            log.debug("%s process failed:\n%s", name, trace)
            raise payload
    finally:
        _stop(process, stop, ended)
        reader.close()


def _called(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any],
            cancel: CancelToken | None = None) -> Generator[Any, None, Any]:
    """A job of one plain call (no events): ``fn(*args, **kwargs)``."""
    return fn(*args, **kwargs)
    yield  # pragma: no cover - makes this a generator


def call_in_process(fn: Callable[..., Any], *args: Any, cancel: CancelToken | None = None, name: str = "job",
                    **kwargs: Any) -> Generator[Any, None, Any]:
    """:func:`iter_in_process` for a plain module-level function: a job with no events that returns its value.

    For work that would hold the GIL (or import heavy libraries) for long in the GUI's process,
    e.g. exporting a model.
    """
    return (yield from iter_in_process(_called, fn, args, kwargs, cancel=cancel, name=name))


def _stop(process: Any, stop: Any, ended: bool, grace: float = 10.0) -> None:
    """Let a child that has ``ended`` exit on its own; ask any other to stop, then terminate it."""
    if ended:
        process.join(grace)
    if process.is_alive():
        stop.value = 1
        process.join(0.5)
    if process.is_alive():
        process.terminate()
        process.join(grace)
    if process.is_alive():  # pragma: no cover - SIGTERM ignored
        process.kill()
        process.join()
