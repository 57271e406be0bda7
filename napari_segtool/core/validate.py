"""Checks run before any work starts: devices, training settings, label ids.

Each raises :class:`~napari_segtool.kernel.errors.ConfigError` (or
:class:`~napari_segtool.kernel.errors.InputError`) with one line naming the
setting, the value and what is allowed, so neither the command line nor the
Python API ever starts a job it cannot finish.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from napari_segtool.kernel.errors import ConfigError

__all__ = ["check_device", "check_number", "check_train_config", "MAX_LABEL_ID"]

#: Label ids are stored as int32 for training; larger ids would wrap around.
MAX_LABEL_ID = 2**31 - 1

_DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device(device: Any) -> torch.device:
    """The :class:`torch.device` for ``device`` if this machine has it, else :class:`ConfigError`."""
    if isinstance(device, torch.device):
        dev = device
    else:
        if not isinstance(device, str) or not device.strip():
            raise ConfigError(f"device must be one of {', '.join(_DEVICE_TYPES)} (e.g. 'cuda:0'), got {device!r}")
        try:
            dev = torch.device(device.strip())
        except (RuntimeError, ValueError, TypeError):
            raise ConfigError(f"unknown device '{device}' (use {', '.join(_DEVICE_TYPES)}, e.g. 'cuda:0')") from None
    if dev.type not in _DEVICE_TYPES:
        raise ConfigError(f"unsupported device '{dev}' (use {', '.join(_DEVICE_TYPES)})")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{dev}' is not available: this machine has no usable CUDA GPU (use cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{dev}' is not available: {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"device '{dev}' is not available on this machine (use cpu)")
    return dev


def check_number(name: str, value: Any, *, lo: float | None = None, hi: float | None = None,
                 integer: bool = False, lo_open: bool = False, allow_none: bool = False) -> Any:
    """``value`` if it is a finite number in range, else :class:`ConfigError` naming ``name``."""
    if value is None and allow_none:
        return value
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        try:  # numpy scalars
            import numpy as np

            if isinstance(value, np.generic) and (np.issubdtype(type(value), np.integer) or
                                                  (not integer and np.issubdtype(type(value), np.floating))):
                value = value.item()
                ok_type = True
        except ImportError:  # pragma: no cover
            pass
        if not ok_type or isinstance(value, bool):
            raise ConfigError(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    below = value <= lo if (lo is not None and lo_open) else (lo is not None and value < lo)
    if below or (hi is not None and value > hi):
        low = "" if lo is None else (f"> {lo:g}" if lo_open else f">= {lo:g}")
        high = "" if hi is None else f"<= {hi:g}"
        rng = " and ".join(x for x in (low, high) if x)
        raise ConfigError(f"{name} must be {rng}, got {value:g}")
    return value


def check_train_config(cfg: Any) -> None:
    """Range-check a :class:`~napari_segtool.core.train.TrainConfig` before training starts."""
    check_number("epochs", cfg.epochs, lo=1, hi=1_000_000, integer=True)
    check_number("steps_per_epoch", cfg.steps_per_epoch, lo=1, hi=1_000_000, integer=True)
    check_number("batch_size", cfg.batch_size, lo=1, hi=4096, integer=True)
    check_number("patch_size", cfg.patch_size, lo=16, hi=4096, integer=True)
    check_number("lr", cfg.lr, lo=0, hi=10, lo_open=True)
    check_number("weight_decay", cfg.weight_decay, lo=0, hi=10)
    check_number("time_budget", cfg.time_budget, lo=0, lo_open=True, allow_none=True)
    check_number("val_fraction", cfg.val_fraction, lo=0, hi=0.9)
    check_number("patience", cfg.patience, lo=1, integer=True)
    check_number("seed", cfg.seed, lo=0, hi=2**32 - 1, integer=True)
    check_number("num_threads", cfg.num_threads, lo=1, hi=4096, integer=True, allow_none=True)
    if cfg.device is not None:
        check_device(cfg.device)
