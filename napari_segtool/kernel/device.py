"""Choice of compute device and CPU thread count."""
from __future__ import annotations

import os

import torch


def pick_device(preferred: str | None = None) -> torch.device:
    """Return ``preferred`` if given, else CUDA, else Apple MPS, else the CPU."""
    if preferred:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def configure_threads(num_threads: int | None = None) -> int:
    """Use all available cores for intra-op parallelism unless told otherwise.

    ``SEGTOOL_NUM_THREADS`` overrides the default, which is the number of cores this
    process may run on (``os.sched_getaffinity``), the right figure inside containers
    and dask workers.
    """
    if num_threads is None:
        env = os.environ.get("SEGTOOL_NUM_THREADS")
        if env:
            num_threads = int(env)
        else:
            try:
                num_threads = len(os.sched_getaffinity(0))
            except AttributeError:  # macOS / Windows
                num_threads = os.cpu_count() or 1
    num_threads = max(1, int(num_threads))
    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    return num_threads


def inference_backend() -> str:
    """How dense networks run for prediction: ``SEGTOOL_BACKEND`` (``auto``, ``torch``, ``fused``,
    ``onnxruntime``; see :mod:`napari_segtool.models.runtime`), ``auto`` by default."""
    return os.environ.get("SEGTOOL_BACKEND", "auto").strip().lower() or "auto"
