"""How a dense network is run for prediction: the reference path and the fast CPU paths.

The reference is the network as trained, in eager torch. On the CPU two faster paths
give the same outputs (to float rounding; ``tests/models/test_runtime.py``):

* ``"fused"``: torch with every BatchNorm folded into the convolution before it
  (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and channels-last memory, which is
  oneDNN's fast layout on x86;
* ``"onnxruntime"``: the network exported to ONNX and run by ONNX Runtime (optional
  dependency, the ``export`` extra), which fuses convolution, normalisation and ReLU.

``auto`` picks ONNX Runtime on the CPU when it is installed, else ``fused``, and the
reference on GPU/MPS; ``SEGTOOL_BACKEND`` (:func:`napari_segtool.kernel.device.inference_backend`)
forces one. The measured speeds are in ``docs/benchmarks.md`` (speed section).

A prepared forward is cached per network object and weights version (torch bumps a
tensor's ``_version`` on every in-place update, so fine-tuning or ``load_state_dict``
invalidates it), so an exported ONNX graph is never run with stale weights.
"""
from __future__ import annotations

import copy
import io
import threading
import warnings
import weakref
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from napari_segtool.kernel.device import inference_backend
from napari_segtool.kernel.memory import release_freed_memory

Forward = Callable[[torch.Tensor], torch.Tensor]
BACKENDS = ("torch", "fused", "onnxruntime")

_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, object]]" = weakref.WeakKeyDictionary()
_LOCK = threading.RLock()


def weights_version(net: nn.Module) -> tuple[int, ...]:
    """Changes whenever a parameter or buffer of ``net`` is replaced or updated in place."""
    return tuple((id(t), t._version) for t in net.state_dict(keep_vars=True).values())


def cached(net: nn.Module, key: tuple, make: Callable[[], object], *, build: bool = True) -> object:
    """``make()`` computed once per ``net``, weights version and ``key``; ``None`` when it is not computed
    yet and ``build`` is false."""
    with _LOCK:  # dask threads share the model: torch.onnx.export is not thread-safe, nor is this dict
        slot = _CACHE.setdefault(net, {})
        full = (key, weights_version(net))
        if full not in slot:
            if not build:
                return None
            for old in [k for k in slot if k[0] == key]:  # weights changed: drop the stale entry
                del slot[old]
            slot[full] = make()
        return slot[full]


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(device: torch.device | str, backend: str | None = None) -> str:
    """The backend to run on ``device``: ``backend`` or ``SEGTOOL_BACKEND`` if given, else the fastest there."""
    backend = backend or inference_backend()
    if backend not in BACKENDS + ("auto",):
        raise ValueError(f"unknown inference backend '{backend}' (choose auto, {', '.join(BACKENDS)})")
    if torch.device(device).type != "cpu":
        return "torch"
    if backend == "auto":
        return "onnxruntime" if onnxruntime_available() else "fused"
    return backend


def fuse_batchnorm(net: nn.Module) -> nn.Module:
    """An eval-mode copy of ``net`` with each ``Conv2d`` directly followed by a ``BatchNorm2d`` (in an
    ``nn.Sequential``) folded into one convolution."""
    net = copy.deepcopy(net).eval()
    for module in net.modules():
        if not isinstance(module, nn.Sequential):
            continue
        items = list(module._modules.items())
        for (name_a, a), (name_b, b) in zip(items, items[1:]):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                module._modules[name_a] = fuse_conv_bn_eval(a, b)
                module._modules[name_b] = nn.Identity()
    return net


def _fused_forward(net: nn.Module) -> Forward:
    fused = fuse_batchnorm(net).to(memory_format=torch.channels_last)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return fused(x.contiguous(memory_format=torch.channels_last)).contiguous()

    return forward


class _OnnxForward:
    """``net`` exported to ONNX and run by an ONNX Runtime session that keeps its buffers between runs.

    The session's arena keeps the activation buffers of one run for the next: freshly mapped pages
    cost the kernel a fault and a zeroing each, and without the arena every tile's activations were
    new pages (a 1152² ``nuclei`` tile on 2 cores: 1.78 Mpx/s without, 2.18 with). The memory plan
    (``enable_mem_pattern``) is off because it takes one block per input shape in the arena, which then
    holds each shape's block (884 MB over the model for that tile, 686 MB without the plan).
    :meth:`release` hands the arena back to the OS; the tiled prediction calls it once per plane
    (:func:`release_buffers`), so an idle viewer does not hold a tile's worth of buffers.
    """

    def __init__(self, net: nn.Module, in_channels: int):
        import onnxruntime as ort

        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated, still the one without extra deps
            torch.onnx.export(copy.deepcopy(net).eval().cpu(), torch.zeros(1, in_channels, 64, 64), buffer,
                              input_names=["input"], output_names=["maps"], dynamo=False,
                              dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"},
                                            "maps": {0: "batch", 2: "height", 3: "width"}})
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = True
        options.enable_mem_pattern = False
        self._session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._tiny = np.zeros((1, in_channels, 16, 16), np.float32)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        maps = self._session.run(None, {"input": np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(maps)

    def release(self) -> None:
        """Free the arena's buffers that no run is using (ONNX Runtime shrinks the arena after a run
        given that option; a 16² run costs well under a millisecond)."""
        self._session.run(None, {"input": self._tiny}, self._shrink)


def release_buffers(net: nn.Module) -> None:
    """Hand back the memory the fast paths prepared for ``net`` keep between runs (call when a plane is done)."""
    with _LOCK:
        prepared = list(_CACHE.get(net, {}).values())
    for forward in prepared:
        if isinstance(forward, _OnnxForward):
            forward.release()
    release_freed_memory()  # the arena's chunks that glibc kept in its heap


#: a fast path is prepared (export, BatchNorm folding: about as costly as running a 512² tile) once the
#: weights have run on this many tile pixels, so that it pays for itself; until then the reference runs
#: (single small planes, validation while training, where the weights change between calls)
PREPARE_AFTER_PIXELS = 2 * 1024 * 1024


def inference_forward(net: nn.Module, in_channels: int, device: torch.device | str,
                      backend: str | None = None, *, work: int = PREPARE_AFTER_PIXELS) -> Forward:
    """``net``'s forward for prediction on ``device`` (``B,C,H,W`` -> raw outputs), by the chosen backend.

    ``work`` is the number of tile pixels the caller is about to run; it is added to what these
    weights have run so far, and the fast path is prepared when the sum reaches
    :data:`PREPARE_AFTER_PIXELS` (the outputs are the same either way, to float rounding).
    """
    name = resolve_backend(device, backend)
    net.eval()
    if name == "torch":
        return net
    tally: list[int] = cached(net, ("work",), lambda: [0])  # type: ignore[assignment]
    tally[0] += int(work)
    build = tally[0] >= PREPARE_AFTER_PIXELS
    if name == "fused":
        fast = cached(net, ("fused",), lambda: _fused_forward(net), build=build)
    else:
        fast = cached(net, ("onnxruntime", in_channels, torch.get_num_threads()),
                      lambda: _OnnxForward(net, in_channels), build=build)
    return fast or net  # type: ignore[return-value]
