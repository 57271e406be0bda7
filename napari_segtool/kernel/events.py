"""Progress events and cooperative cancellation shared by long-running core jobs.

Every job that takes time (prediction, training, batch runs) is a plain generator
that *yields* these small dataclasses and *returns* its result. The CLI drives the
generator with a progress bar, the napari plugin wraps it in a ``thread_worker``,
and tests simply exhaust it.
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Generator, TypeVar

T = TypeVar("T")


class Cancelled(Exception):
    """Raised inside a job when its :class:`CancelToken` was triggered."""


class CancelToken:
    """A thread-safe flag a GUI or signal handler sets to stop a job between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by user")


@dataclass
class Progress:
    """``done`` of ``total`` units of work of a named ``stage`` are finished."""

    stage: str
    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


@dataclass
class TrainStep:
    """One optimiser step finished."""

    step: int
    epoch: int
    loss: float
    elapsed: float
    total_steps: int | None = None


@dataclass
class TrainEpoch:
    """One epoch finished, with its validation score (higher is better)."""

    epoch: int
    train_loss: float
    val_metric: float
    metric_name: str
    elapsed: float
    is_best: bool
    total_epochs: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Event = Progress | TrainStep | TrainEpoch


def tap(job: Generator[Any, None, T], on_event: Callable[[Any], None]) -> Generator[Any, None, T]:
    """``job``'s events, each shown to ``on_event`` before it is passed on; returns ``job``'s result."""
    result = None

    def run() -> Generator[Any, None, None]:
        nonlocal result
        result = yield from job

    for event in run():
        on_event(event)
        yield event
    return result  # type: ignore[return-value]


def run_job(
    job: Generator[Any, None, T], callback: Callable[[Any], None] | None = None
) -> T:
    """Exhaust a job generator synchronously, passing each event to ``callback``; return its result."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)
