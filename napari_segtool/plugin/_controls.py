"""The Run / Cancel / progress / status block every job widget ends with (see ``_jobs.JobWidget``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget


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
