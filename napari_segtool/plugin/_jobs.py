"""``JobWidget``: what every widget that runs a background job shares (Segment, Train, Batch).

A job widget has a session and the real viewer, Run / Cancel / progress / status
controls, at most one worker with its cancel token, napari's activity progress,
and the outcome of its last job. Subclasses collect a typed job on the GUI thread
(raising :class:`UserError` for what the user can fix), :meth:`launch` a core
generator in a worker, and end in :meth:`end_job` / :meth:`finish_job` on the
GUI thread.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Generator, TypeVar

from napari.layers import Image
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_segtool.plugin import _layers as L
from napari_segtool.plugin._controls import JobControls, add_job_controls
from napari_segtool.plugin._docking import DocksAsTabs
from napari_segtool.plugin._warmup import schedule_warm, use_napari_progress
from napari_segtool.plugin.state import get_session
from napari_segtool.plugin.workers import JobOutcome, Throttle, keep_pool_threads_free, start_job

log = logging.getLogger(__name__)
Job = TypeVar("Job")


class UserError(Exception):
    """A problem the user can fix; shown as a notification and in the status line, never a traceback."""


class JobWidget(DocksAsTabs, QWidget):
    """Base of the dock widgets that run one background job at a time."""

    #: said when Run is pressed while a job runs
    busy_message = "a job is already running; cancel it first"
    #: status line after Cancel
    cancel_message = "cancelling…"
    #: whether closing the widget cancels its job (training keeps going when its dock closes)
    cancel_on_close = True

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        schedule_warm()  # torch and the core are imported in a thread, never on the GUI thread
        self.session = get_session(napari_viewer)
        self.viewer = self.session.viewer  # the real viewer, not napari's per-widget proxy
        self.session.closing.connect(self.cancel)
        self.worker: Any = None
        self.cancel_token: Any = None
        self.last_outcome: JobOutcome | None = None
        self.napari_progress: Any = None      # napari's activity progress of the running job
        self.throttle: Throttle | None = None  # the subclass's coalesced UI updates, stopped when a job ends

    # ------------------------------------------------------------ controls
    def add_job_controls(self, layout: QVBoxLayout, run_text: str, on_run: Callable[[], object],
                         **kwargs: Any) -> JobControls:
        """Run / Cancel, progress bar (``between``, e.g. a plot) and status line at the end of ``layout``."""
        controls = add_job_controls(layout, run_text, on_run, self.cancel, **kwargs)
        self.run_button, self.cancel_button = controls.run_button, controls.cancel_button
        self.progress_bar, self.status_label = controls.progress_bar, controls.status_label
        return controls

    @property
    def running(self) -> bool:
        return self.worker is not None

    # ----------------------------------------------------------------- run
    def begin(self, prepare: Callable[[], Job]) -> Job | None:
        """The job ``prepare()`` collects, or ``None`` after telling the user why there is none."""
        if self.running:
            show_warning(self.busy_message)
            return None
        try:
            return prepare()
        except UserError as exc:
            show_error(str(exc))
            self.status_label.setText(str(exc))
            return None

    def launch(self, make_job: Callable[..., Generator[Any, None, Any]], *, status: str, progress_total: int,
               progress_desc: str, on_event: Callable[[Any], None],
               on_tiles: Callable[[int, int], None] | None = None) -> Any:
        """Start ``make_job(cancel, tile_callback)`` in a worker; returns the worker."""
        keep_pool_threads_free()  # before napari's progress bar, whose animation needs a thread of that pool
        self.napari_progress = napari_progress(total=progress_total, desc=progress_desc) \
            if use_napari_progress() else None
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status_label.setText(status)
        self.worker, self.cancel_token = start_job(make_job, on_event=on_event, on_tiles=on_tiles,
                                                   on_done=self.on_job_done)
        return self.worker

    def cancel(self) -> None:
        if self.cancel_token is not None:
            self.cancel_token.cancel()
            self.status_label.setText(self.cancel_message)

    def on_job_done(self, outcome: JobOutcome) -> None:  # pragma: no cover - every subclass has one
        self.end_job(outcome)

    # ----------------------------------------------------------------- end
    def end_job(self, outcome: JobOutcome) -> None:
        """A job ended: stop its throttled UI updates, forget its worker, re-arm Run, close napari's progress."""
        if self.throttle is not None:
            self.throttle.cancel()
        self.worker = None
        self.cancel_token = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.napari_progress is not None:
            self.napari_progress.close()
            self.napari_progress = None
        self.last_outcome = outcome

    def finish_job(self, outcome: JobOutcome, *, what: str, nothing_done: str, result_name: str,
                   apply: Callable[[Any], None]) -> None:
        """The common end of a job whose result is shown in the viewer: :meth:`end_job`, then report.

        A cancelled or failed job only sets the status line and notifies; a finished one is
        shown by ``apply``, whose errors (a layer deleted meanwhile...) are reported the same
        way instead of reaching napari's error dialog.
        """
        self.end_job(outcome)
        if outcome.status == "cancelled":
            self.status_label.setText(f"cancelled — {nothing_done}")
            show_info(f"{what} cancelled")
            return
        if outcome.status == "error":
            self.status_label.setText(f"failed: {outcome.message}")
            show_error(f"{what} failed: {outcome.message}")
            return
        try:
            apply(outcome.result)
        except Exception as exc:  # noqa: BLE001 - the viewer may have changed meanwhile
            log.exception("cannot show the %s", result_name)
            message = " ".join(str(exc).split())
            self.status_label.setText(f"failed: {message}")
            show_error(f"cannot show the {result_name}: {message}")

    def closeEvent(self, event: Any) -> None:  # pragma: no cover - GUI teardown
        if self.cancel_on_close:
            self.cancel()
        super().closeEvent(event)

    # ------------------------------------------------------------- inputs
    def input_image(self, image_layer: Any, chosen: Any) -> tuple[Image, str]:
        """The image to run on (``image_layer``, else the combo's ``chosen`` layer) and its axes letters.

        Raises :class:`UserError` when there is none, it is not an image, or its axes are not
        the stack axes followed by Y and X.
        """
        if image_layer is None:
            image_layer = chosen
            if image_layer is None:
                raise UserError("choose an image layer to segment (open an image or File > Open Sample)")
        if not isinstance(image_layer, Image):
            raise UserError(f"layer '{image_layer.name}' is not an image layer")
        try:
            axes = L.image_axes(image_layer)
        except ValueError as exc:
            raise UserError(f"cannot tell the axes of '{image_layer.name}': {exc}") from exc
        if not L.labels_from_image_order(axes):
            raise UserError(f"image axes {axes} are not supported here (Y and X must be the last spatial axes)")
        return image_layer, axes
