"""Choice of compute device and CPU thread count."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pick_device(preferred: str | None = None) -> torch.device:
    """Return ``preferred`` if given, else CUDA, else Apple MPS, else the CPU."""
    import torch

    if preferred:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def thread_count() -> int:
    """The threads a job of this process should use: ``SEGTOOL_NUM_THREADS`` if set, else the number of cores
    this process may run on (``os.sched_getaffinity``, the right figure inside containers and dask
    workers). Needs no torch: the numpy post-processing (``ops.parallel``) sizes its pool with it too."""
    env = os.environ.get("SEGTOOL_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS / Windows
        return max(1, os.cpu_count() or 1)


def configure_threads(num_threads: int | None = None) -> int:
    """Use all available cores for intra-op parallelism unless told otherwise (:func:`thread_count`)."""
    import torch

    num_threads = max(1, int(num_threads)) if num_threads is not None else thread_count()
    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    return num_threads


def inference_backend() -> str:
    """How dense networks run for prediction: ``SEGTOOL_BACKEND`` (``auto``, ``torch``, ``fused``,
    ``onnxruntime``; see :mod:`napari_segtool.models.runtime`), ``auto`` by default."""
    return os.environ.get("SEGTOOL_BACKEND", "auto").strip().lower() or "auto"
