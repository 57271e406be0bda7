"""A light live plot of training loss and validation score (QPainter; no matplotlib, no pyqtgraph).

Repainting takes well under a millisecond, so updating it after every training
step never makes the viewer stutter.
"""
from __future__ import annotations

import math
from typing import Any

from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR = QColor(90, 160, 255)
METRIC_COLOR = QColor(250, 170, 60)


class LossPlot(QWidget):
    """Training loss per step (left axis, log scale) and validation score per epoch (right axis)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.steps: list[tuple[int, float]] = []
        self.epochs: list[tuple[int, float]] = []  # (step at epoch end, score)
        self.metric_name = "validation"
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)

    def sizeHint(self) -> QSize:
        return QSize(300, 170)

    def clear(self) -> None:
        self.steps.clear()
        self.epochs.clear()
        self.update()

    def add_step(self, step: int, loss: float, redraw: bool = True) -> None:
        if math.isfinite(loss):
            self.steps.append((step, loss))
            if redraw:
                self.update()

    def add_epoch(self, step: int, score: float, name: str = "", redraw: bool = True) -> None:
        if name:
            self.metric_name = name
        if math.isfinite(score):
            self.epochs.append((step, score))
            if redraw:
                self.update()

    def paintEvent(self, event: Any) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        rect = QRectF(self.rect()).adjusted(34, 8, -34, -18)
        p.fillRect(self.rect(), QColor(38, 41, 48))
        p.setPen(QPen(QColor(110, 110, 110), 1))
        p.drawRect(rect)
        font = QFont(p.font())
        font.setPointSizeF(max(6.0, font.pointSizeF() * 0.8))
        p.setFont(font)
        if not self.steps:
            p.setPen(QColor(170, 170, 170))
            p.drawText(rect, Qt.AlignCenter, "loss and validation score appear here while training")
            p.end()
            return
        max_step = max(self.steps[-1][0], 1)
        losses = [max(v, 1e-6) for _, v in self.steps]
        lo, hi = math.log10(min(losses)), math.log10(max(losses))
        if hi - lo < 1e-3:
            lo, hi = lo - 0.5, hi + 0.5

        def xy(step: float, value: float, vlo: float, vhi: float) -> QPointF:
            x = rect.left() + rect.width() * step / max_step
            y = rect.bottom() - rect.height() * (value - vlo) / (vhi - vlo)
            return QPointF(x, y)

        path = QPainterPath()
        for i, (s, v) in enumerate(self.steps):
            pt = xy(s, math.log10(max(v, 1e-6)), lo, hi)
            path.moveTo(pt) if i == 0 else path.lineTo(pt)
        p.setPen(QPen(LOSS_COLOR, 1.5))
        p.drawPath(path)
        p.drawText(QRectF(0, rect.top() - 4, 32, 14), Qt.AlignRight, f"{10 ** hi:.2g}")
        p.drawText(QRectF(0, rect.bottom() - 10, 32, 14), Qt.AlignRight, f"{10 ** lo:.2g}")
        p.drawText(QRectF(rect.left() + 4, rect.top() + 2, 120, 14), Qt.AlignLeft, "loss (log)")
        if self.epochs:
            values = [v for _, v in self.epochs]
            mlo, mhi = min(values), max(values)
            if mhi - mlo < 1e-6:
                mlo, mhi = mlo - 0.05, mhi + 0.05
            p.setPen(QPen(METRIC_COLOR, 1.5))
            pts = [xy(s, v, mlo, mhi) for s, v in self.epochs]
            for a, b in zip(pts[:-1], pts[1:]):
                p.drawLine(a, b)
            for pt in pts:
                p.drawEllipse(pt, 2.5, 2.5)
            p.drawText(QRectF(rect.right() + 2, rect.top() - 4, 32, 14), Qt.AlignLeft, f"{mhi:.2f}")
            p.drawText(QRectF(rect.right() + 2, rect.bottom() - 10, 32, 14), Qt.AlignLeft, f"{mlo:.2f}")
            p.drawText(QRectF(rect.right() - 160, rect.top() + 2, 156, 14), Qt.AlignRight,
                       f"{self.metric_name} (per epoch)")
        p.setPen(QColor(170, 170, 170))
        p.drawText(QRectF(rect.left(), rect.bottom() + 2, rect.width(), 14), Qt.AlignCenter,
                   f"step {self.steps[-1][0]}")
        p.end()
