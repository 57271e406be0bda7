"""Typed settings: what an architecture (and the core) lets users set, and how its outputs are laid out.

A :class:`Param` declares one setting once: its type, default, range or choices, the tasks it
acts on and a help text. The same declaration checks ``model.json`` values
(:func:`check_settings`), builds the plugin's controls (spin boxes with the range, combo
boxes for choices, the help as tooltip) and documents the setting. Architectures declare
``postprocess_params`` (per plane) and ``arch_params`` (network shape);
:data:`napari_segtool.ops.postprocess.CORE_PARAMS` are the settings the core applies to the
assembled result.

:class:`ProbabilityLayout` says what the probability maps an architecture returns mean, so
no caller indexes ``probs[1] + probs[2]``.

Plain data, no torch: every layer can use it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce
from typing import Any, Iterable, Mapping, Sequence

TASKS = ("instance", "semantic")

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               dict: "an object", list: "a list"}


@dataclass(frozen=True)
class Param:
    """One setting: name, type (``bool``, ``int``, ``float``, ``str``, ``dict`` or ``list``), default,
    inclusive range ``low``..``high`` (numbers), ``choices`` (any type), help text, and the tasks
    it acts on. ``advanced`` settings are kept out of the widgets (API, CLI and ``model.json`` only).
    ``None`` is accepted only for a setting whose default is ``None``."""

    name: str
    type: type
    default: Any = None
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    help: str = ""
    applies_to: tuple[str, ...] = TASKS
    label: str = ""          # the widget's label; the name in words when empty
    advanced: bool = False
    step: float | None = None  # the widget's step (floats: 0.05 when not given)

    @property
    def text(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()

    def applies(self, task: str) -> bool:
        return task in self.applies_to

    def check(self, value: Any, where: str = "") -> None:
        """Raise :class:`ValueError` (one line) unless ``value`` is valid for this setting."""
        what = f"'{where}{self.name}'"
        if value is None:
            if self.default is None:
                return
            raise ValueError(f"{what} must be {self._expected()}, got null")
        kind = self.type
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok:
            raise ValueError(f"{what} must be {self._expected()}, got {_show(value)}")
        if self.choices and value not in self.choices:
            raise ValueError(f"{what} must be one of {', '.join(map(str, self.choices))}, got {_show(value)}")
        if kind in (int, float):
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                raise ValueError(f"{what} must be {self._range()}, got {value}")

    def _expected(self) -> str:
        return _TYPE_NAMES.get(self.type, self.type.__name__) + (f" {self._range()}" if self.type in (int, float)
                                                                  and (self.low is not None or self.high is not None)
                                                                  else "")

    def _range(self) -> str:
        lo = "" if self.low is None else f"{self.low:g}"
        hi = "" if self.high is None else f"{self.high:g}"
        return f"{lo}..{hi}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def by_name(params: Iterable[Param]) -> dict[str, Param]:
    """``{name: param}``; the first declaration of a name wins."""
    out: dict[str, Param] = {}
    for p in params:
        out.setdefault(p.name, p)
    return out


def check_settings(values: Any, params: Sequence[Param], where: str = "") -> None:
    """Raise :class:`ValueError` unless ``values`` is a mapping of known settings with valid values.

    ``where`` prefixes the setting's name in the message (e.g. ``"postprocess."``).
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"'{where.rstrip('.') or 'settings'}' must be an object, got {_show(values)}")
    known = by_name(params)
    for key, value in values.items():
        param = known.get(key)
        if param is None:
            raise ValueError(f"unknown setting '{where}{str(key)[:40]}' (known: {', '.join(sorted(known))})")
        param.check(value, where)


@dataclass(frozen=True)
class ProbabilityLayout:
    """What the ``(K, Y, X)`` maps of ``PlaneResult.probabilities`` are.

    ``channels`` names the K maps; the object (foreground) probability is the sum of
    ``foreground_channels`` (empty: the maps are per-class probabilities, e.g. a semantic
    model's); ``interior_channel`` and ``distance_channel`` point at an object-interior
    probability and a normalised distance-to-border map, when the architecture predicts them.
    """

    channels: tuple[str, ...]
    foreground_channels: tuple[int, ...] = ()
    interior_channel: int | None = None
    distance_channel: int | None = None

    @property
    def has_foreground(self) -> bool:
        return bool(self.foreground_channels)

    def foreground(self, probabilities: Any) -> Any:
        """The object probability (``Y, X``): the sum of the foreground channels."""
        if not self.foreground_channels:
            raise ValueError(f"these maps ({', '.join(self.channels)}) have no object probability")
        return reduce(lambda a, b: a + b, (probabilities[c] for c in self.foreground_channels))

    def distance(self, probabilities: Any) -> Any | None:
        return None if self.distance_channel is None else probabilities[self.distance_channel]
