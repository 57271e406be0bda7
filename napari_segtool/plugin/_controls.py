"""The Run / Cancel / progress / status block every job widget ends with, and how a job ends."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

log = logging.getLogger(__name__)


@dataclass
class JobControls:
    """The widgets of one job's controls (the owner keeps references to drive them)."""

    run_button: QPushButton
    cancel_button: QPushButton
    progress_bar: QProgressBar
    status_label: QLabel


def add_job_controls(layout: QVBoxLayout, run_text: str, on_run: Callable[[], object],
                     on_cancel: Callable[[], object], *, cancel_tip: str = "", progress_range: int = 1,
                     between: QWidget | None = None) -> JobControls:
    """Append a Run + Cancel row, a progress bar, ``between`` (e.g. a plot) and a status line to ``layout``.

    Cancel starts disabled; the progress bar runs from 0 to ``progress_range``.
    """
    buttons = QHBoxLayout()
    run_button = QPushButton(run_text)
    run_button.clicked.connect(lambda: on_run())
    cancel_button = QPushButton("Cancel")
    cancel_button.setEnabled(False)
    if cancel_tip:
        cancel_button.setToolTip(cancel_tip)
    cancel_button.clicked.connect(lambda: on_cancel())
    buttons.addWidget(run_button)
    buttons.addWidget(cancel_button)
    layout.addLayout(buttons)
    progress_bar = QProgressBar()
    progress_bar.setRange(0, progress_range)
    progress_bar.setValue(0)
    layout.addWidget(progress_bar)
    if between is not None:
        layout.addWidget(between, 1)
    status_label = QLabel("")
    status_label.setWordWrap(True)
    layout.addWidget(status_label)
    return JobControls(run_button, cancel_button, progress_bar, status_label)


def reset_controls(widget: Any, outcome: Any, throttle: Any, run_button: QPushButton) -> None:
    """A job ended: stop its throttled UI updates, forget its worker, re-arm Run, close napari's progress."""
    throttle.cancel()
    widget.worker = None
    widget.cancel_token = None
    run_button.setEnabled(True)
    widget.cancel_button.setEnabled(False)
    if widget._pbar is not None:
        widget._pbar.close()
        widget._pbar = None
    widget.last_outcome = outcome


def finish_job(widget: Any, outcome: Any, *, what: str, nothing_done: str, result_name: str,
               apply: Callable[[Any], None], info: Callable[[str], Any], error: Callable[[str], Any]) -> None:
    """The common end of a Segment/Batch job, on the GUI thread: reset the controls, then report.

    ``widget`` has the :class:`JobControls` attributes plus ``worker``, ``cancel_token``,
    ``_progress`` (a :class:`~napari_segtool.plugin.workers.Throttle`), ``_pbar`` (napari's
    progress, or ``None``) and ``last_outcome``. A cancelled or failed job only sets the status
    line and notifies (``info``/``error``: the widget module's napari notification functions); a
    finished one is shown by ``apply``, whose errors (a layer deleted meanwhile...) are reported
    the same way instead of reaching napari's error dialog.
    """
    reset_controls(widget, outcome, widget._progress, widget.run_button)
    if outcome.status == "cancelled":
        widget.status_label.setText(f"cancelled — {nothing_done}")
        info(f"{what} cancelled")
        return
    if outcome.status == "error":
        widget.status_label.setText(f"failed: {outcome.message}")
        error(f"{what} failed: {outcome.message}")
        return
    try:
        apply(outcome.result)
    except Exception as exc:  # noqa: BLE001 - the viewer may have changed meanwhile
        log.exception("cannot show the %s", result_name)
        message = " ".join(str(exc).split())
        widget.status_label.setText(f"failed: {message}")
        error(f"cannot show the {result_name}: {message}")
