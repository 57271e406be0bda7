"""Export models to ONNX, TorchScript and bioimage.io packages; load our bioimage.io packages back.

Formats
-------
``onnx`` / ``torchscript``
    The network alone, as other tools run it. A U-Net exports as :class:`UNetMaps`: the
    network followed by the activations :meth:`UNetArchitecture.predict_plane` applies
    (semantic: per-class softmax; instance: softmax over background/interior/boundary and a
    sigmoid distance map), input ``(B, C, H, W)`` float32 *normalised* image with ``H`` and
    ``W`` multiples of ``2**depth``, output ``(B, K, H, W)`` maps. A Mask R-CNN exports as
    torchvision's detector in eval mode (input: one ``(C, H, W)`` normalised image; outputs
    ``boxes`` xyxy, ``labels``, ``scores``, ``masks`` ``(N, 1, H, W)`` probabilities), with the
    model's anchors, detection limit and score/NMS thresholds baked in for ``tile_size`` tiles.
    Turning maps into objects (seeded watershed, tile merging) stays in napari-segtool.
``bioimageio``
    A bioimage.io model package (format 0.5, a ``.zip``) of a U-Net: typed axes, percentile
    normalisation as ``scale_range`` preprocessing, test input/output tensors computed by the
    model, weights as a PyTorch state dict (``torch.save`` of a plain tensor dict) with the
    architecture's source, TorchScript and ONNX (when the exporter works), the model card as
    documentation, licence and citations. The package also carries the model in our own
    format (``model.safetensors`` with its JSON metadata, ``model.json``): that is what
    :func:`load_bioimageio` reads back, so importing never unpickles anything.

Mask R-CNN has no bioimage.io export: its outputs are lists of detections whose number
depends on the image, which the spec's tensor descriptions (and its consumers) do not cover.
"""
from __future__ import annotations

import copy
import functools
import inspect
import json
import math
import os
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_segtool.core.checkpoint import (  # noqa: F401  (load_bioimageio, read_bioimageio_meta: re-exported)
    PACKAGE_META, PACKAGE_WEIGHTS, load_bioimageio, read_bioimageio_meta)
from napari_segtool.core.model import SegModel
from napari_segtool.kernel.errors import ModelError

FORMATS = ("bioimageio", "onnx", "torchscript")
SUFFIXES = {"bioimageio": ".zip", "onnx": ".onnx", "torchscript": ".pt"}
ONNX_OPSET = 17
#: Names of our own model inside a bioimage.io package (see :func:`load_bioimageio`).
LICENSE = "BSD-3-Clause"

CITATIONS = {
    "unet": [{"text": "Ronneberger, Fischer and Brox. U-Net: Convolutional Networks for Biomedical Image "
                      "Segmentation. MICCAI 2015.", "doi": "10.1007/978-3-319-24574-4_28"}],
    "maskrcnn": [{"text": "He, Gkioxari, Dollar and Girshick. Mask R-CNN. ICCV 2017.",
                  "doi": "10.1109/ICCV.2017.322"}],
}
#: The seeded watershed that turns the U-Net's maps into objects.
WATERSHED_CITATION = {"text": "Beucher and Meyer. The morphological approach to segmentation: the watershed "
                              "transformation. Mathematical Morphology in Image Processing, 1993.",
                      "doi": "10.1201/9781482277234-12"}


class ExportError(ModelError):
    """A model cannot be exported in the requested format (one line)."""


# ----------------------------------------------------------------------------- networks to export
class UNetMaps(nn.Module):
    """A U-Net followed by the activations prediction applies: the maps the core post-processes."""

    def __init__(self, unet: nn.Module, semantic: bool, n_classes: int = 3):
        super().__init__()
        self.unet = unet
        self.semantic = semantic
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.unet(x)
        if self.semantic:
            return torch.softmax(y, dim=1)
        return torch.cat([torch.softmax(y[:, :self.n_classes], 1), torch.sigmoid(y[:, self.n_classes:])], 1)


def _as_model(model: SegModel | str | os.PathLike) -> SegModel:
    if isinstance(model, SegModel):
        return model
    from napari_segtool.core.checkpoint import load_model

    return load_model(model)


def _cpu_copy(model: SegModel) -> nn.Module:
    net = copy.deepcopy(model.net).cpu().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def export_network(model: SegModel) -> nn.Module:
    """The module ONNX/TorchScript export: :class:`UNetMaps` or a configured Mask R-CNN (CPU, eval)."""
    meta = model.meta
    net = _cpu_copy(model)
    if meta.arch == "unet":
        from napari_segtool.models.unet import INSTANCE_CLASSES

        return UNetMaps(net, semantic=meta.task == "semantic", n_classes=INSTANCE_CLASSES).eval()
    if meta.arch == "maskrcnn":
        return _maskrcnn_for_export(net, model)
    raise ExportError(f"no export for architecture '{meta.arch}' (known: unet, maskrcnn)")


def _maskrcnn_for_export(net: nn.Module, model: SegModel) -> nn.Module:
    """Mask R-CNN with the model's runtime settings written in, and a TorchScript-able transform."""
    from napari_segtool.models.maskrcnn import ALIGN, _apply_runtime, effective_tile_size

    meta = model.meta
    params = meta.postprocess
    size = effective_tile_size(meta.tile_size, int(params.get("tile_margin", 64)))
    _apply_runtime(net, meta, size * size, training=False)
    net.roi_heads.score_thresh = float(params.get("score_threshold", 0.5))
    net.roi_heads.nms_thresh = float(params.get("nms_iou", 0.5))
    predictor = net.roi_heads.mask_predictor
    if type(predictor).__name__ == "MaskPredictor":  # models.maskrcnn's: F.interpolate(scale_factor=2) won't script
        net.roi_heads.mask_predictor = _UpsampledMaskLogits(predictor.mask_fcn_logits)
    old = net.transform
    net.transform = _no_resize_transform()(old.min_size, old.max_size, old.image_mean, old.image_std,
                                           size_divisible=ALIGN)
    return net.eval()


class _UpsampledMaskLogits(nn.Module):
    """``models.maskrcnn.MaskPredictor`` (same weights) in a form TorchScript accepts."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.mask_fcn_logits = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.mask_fcn_logits(x), scale_factor=2.0, mode="bilinear", align_corners=False)


@functools.lru_cache(maxsize=1)
def _no_resize_transform() -> type:
    """``models.maskrcnn.NativeTransform`` with the type annotations TorchScript needs (made on first use)."""
    from typing import Dict, Optional, Tuple

    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    class NoResizeTransform(GeneralizedRCNNTransform):
        def resize(self, image: torch.Tensor, target: Optional[Dict[str, torch.Tensor]] = None
                   ) -> Tuple[torch.Tensor, Optional[Dict[str, torch.Tensor]]]:
            return image, target

    return NoResizeTransform


def example_input(model: SegModel, size: int | None = None) -> torch.Tensor:
    """A normalised random input the exported network accepts (``(1, C, S, S)``; Mask R-CNN ``(C, S, S)``)."""
    meta = model.meta
    gen = torch.Generator().manual_seed(0)
    if meta.arch == "maskrcnn":
        s = size or 256
        return torch.rand((meta.in_channels, s, s), generator=gen)
    align = 2 ** int(meta.arch_kwargs.get("depth", 3))
    s = size or max(64, align * 2)
    return torch.rand((1, meta.in_channels, s, s), generator=gen)


def run_network(net: nn.Module, model: SegModel, x: torch.Tensor) -> list[np.ndarray]:
    """Outputs of an export network as NumPy arrays (Mask R-CNN: boxes, labels, scores, masks)."""
    with torch.no_grad():
        if model.meta.arch == "maskrcnn":
            out = net([x])
            det = out[1][0] if isinstance(out, tuple) else out[0]
            return [det[k].numpy() for k in ("boxes", "labels", "scores", "masks")]
        return [net(x).numpy()]


# ----------------------------------------------------------------------------- writers
def _atomic_file(out: Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``out``, then rename it over ``out``."""
    from napari_segtool.io.atomic import temp_prefix

    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=temp_prefix(out.name), suffix=".tmp" + out.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _torchscript(net: nn.Module, model: SegModel) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, still works
        if model.meta.arch == "maskrcnn":
            return torch.jit.script(net)  # data-dependent control flow: scripted, not traced
        return torch.jit.trace(net, example_input(model), check_trace=False)


def export_torchscript(model: SegModel | str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the network as a TorchScript archive (load with ``torch.jit.load``)."""
    model = _as_model(model)
    net = export_network(model)
    try:
        scripted = _torchscript(net, model)
    except Exception as exc:
        raise ExportError(f"TorchScript export of '{model.meta.arch}' failed: {' '.join(str(exc).split())[:300]}") \
            from exc
    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.save is deprecated, still supported
            torch.jit.save(scripted, str(tmp))

    return _atomic_file(Path(out), write)


def _onnx_export(net: nn.Module, model: SegModel, path: Path) -> None:
    x = example_input(model)
    if model.meta.arch == "maskrcnn":
        args: tuple = ([x],)
        names_in, names_out = ["image"], ["boxes", "labels", "scores", "masks"]
        dynamic = {"image": {1: "height", 2: "width"}, "boxes": {0: "n"}, "labels": {0: "n"}, "scores": {0: "n"},
                   "masks": {0: "n", 2: "height", 3: "width"}}
    else:
        args = (x,)
        names_in, names_out = ["input"], ["maps"]
        dynamic = {"input": {0: "batch", 2: "height", 3: "width"}, "maps": {0: "batch", 2: "height", 3: "width"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated, still the one without extra deps
        try:
            torch.onnx.export(net, args, str(path), dynamo=False, opset_version=ONNX_OPSET, input_names=names_in,
                              output_names=names_out, dynamic_axes=dynamic)
        except TypeError:  # a torch whose exporter no longer takes dynamo=False
            torch.onnx.export(net, args, str(path), opset_version=ONNX_OPSET, input_names=names_in,
                              output_names=names_out, dynamic_axes=dynamic)


def export_onnx(model: SegModel | str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the network as an ONNX model (opset :data:`ONNX_OPSET`, dynamic height/width)."""
    model = _as_model(model)
    net = export_network(model)

    def write(tmp: Path) -> None:
        try:
            _onnx_export(net, model, tmp)
        except Exception as exc:
            raise ExportError(f"ONNX export of '{model.meta.arch}' failed: {' '.join(str(exc).split())[:300]}") \
                from exc

    return _atomic_file(Path(out), write)


def export_model(model: SegModel | str | os.PathLike, fmt: str, out: str | os.PathLike, **kwargs: Any) -> Path:
    """Export ``model`` (a :class:`SegModel`, or a name/path for :func:`load_model`) as ``fmt`` to ``out``.

    ``out`` is replaced if it exists (check it first: :func:`napari_segtool.io.outputs.check_output_path`).
    """
    if fmt == "onnx":
        return export_onnx(model, out)
    if fmt == "torchscript":
        return export_torchscript(model, out)
    if fmt == "bioimageio":
        return export_bioimageio(model, out, **kwargs)
    raise ExportError(f"unknown export format '{fmt}' (known: {', '.join(FORMATS)})")


# ----------------------------------------------------------------------------- bioimage.io
def architecture_source() -> str:
    """Standalone Python source of the U-Net (copied from ``models/unet.py``) plus :class:`UNetMaps`.

    The bioimage.io ``pytorch_state_dict`` entry needs a file defining the network that
    imports nothing but torch; its callable is ``SegtoolUNet``.
    """
    from napari_segtool.models import unet

    parts = [
        '"""U-Net of napari-segtool (models/unet.py), with the activations its prediction applies."""',
        "from __future__ import annotations\n",
        "import torch",
        "import torch.nn.functional as F",
        "from torch import nn\n\n",
        inspect.getsource(unet._norm), "\n",
        inspect.getsource(unet.ConvBlock), "\n",
        inspect.getsource(unet.UNet), "\n",
        '''class SegtoolUNet(UNet):
    """``UNet`` whose output is the maps napari-segtool post-processes (see its ``core/export.py``)."""

    def __init__(self, semantic: bool = False, n_classes: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.semantic = semantic
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.semantic:
            return torch.softmax(y, dim=1)
        return torch.cat([torch.softmax(y[:, :self.n_classes], 1), torch.sigmoid(y[:, self.n_classes:])], 1)
''',
    ]
    return "\n".join(parts)


def _identifier(text: str, fallback: str) -> str:
    ident = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")
    if not ident or not ident[0].isalpha():
        ident = f"{fallback}_{ident}" if ident else fallback
    return ident[:32]


def output_channel_names(model: SegModel) -> list[str]:
    """Names of the exported maps: ``p_background, p_interior, p_boundary, distance`` or one per class."""
    meta = model.meta
    if meta.task == "instance":
        return ["p_background", "p_interior", "p_boundary", "distance"]
    names, seen = [], set()
    for k, name in enumerate(meta.classes[1:], start=1):
        ident = _identifier(f"p_{name}", f"p_class{k}")
        if ident in seen:
            ident = f"{ident}_{k}"
        seen.add(ident)
        names.append(ident)
    return names


def _sample_image(model: SegModel, size: int) -> np.ndarray:
    """A ``YXC`` float32 test image: a simulated nuclei image, channels repeated."""
    from napari_segtool.sim.nuclei import simulate_nuclei

    image = np.asarray(simulate_nuclei((size, size), seed=0, snr=20.0).image, np.float32)
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image[..., :1], model.meta.in_channels, axis=-1)


def _valid_size(n: int, min_size: int, step: int) -> int:
    return max(min_size, min_size + int(math.ceil(max(0, n - min_size) / step)) * step)


def _prepare_sample(model: SegModel, sample: np.ndarray | None, min_size: int, step: int) -> np.ndarray:
    """The test input: ``sample`` (``YX``/``YXC``) padded by reflection to a size the package accepts."""
    if sample is None:
        sample = _sample_image(model, max(min_size, 128))
    sample = np.asarray(sample, np.float32)
    if sample.ndim == 2:
        sample = sample[..., None]
    if sample.ndim != 3 or sample.shape[-1] != model.meta.in_channels:
        raise ExportError(f"the sample must be YX or YXC with {model.meta.in_channels} channel(s), "
                          f"got shape {sample.shape}")
    h, w = sample.shape[:2]
    th, tw = _valid_size(h, min_size, step), _valid_size(w, min_size, step)
    if (th, tw) != (h, w):
        sample = np.pad(sample, ((0, th - h), (0, tw - w), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
    return sample


def scale_range(image: np.ndarray, low: float, high: float, eps: float = 1e-6) -> np.ndarray:
    """bioimage.io's ``scale_range`` on a ``YXC`` image: per channel, linear percentiles over all pixels.

    napari-segtool's own percentile normaliser (:mod:`napari_segtool.ops.normalize`) differs only in
    which pixels it samples (it skips flat padding and samples huge images sparsely).
    """
    lo, hi = np.percentile(image, [low, high], axis=(0, 1))
    return ((image - lo) / (hi - lo + eps)).astype(np.float32)


def _normalised(model: SegModel, image: np.ndarray) -> np.ndarray:
    from napari_segtool.ops.normalize import fit_normalizer

    return fit_normalizer(image, **model.meta.normalization)(image)


def _documentation(model: SegModel, channels: list[str]) -> str:
    meta = model.meta
    card = meta.card.strip() or f"# {meta.name or 'napari-segtool model'}\n\n{meta.description}"
    if meta.task == "instance":
        what = ("four maps: softmax probabilities of background, object interior and object boundary, and a "
                "sigmoid distance to the object border (0 at the border, 1 at the object's centre). "
                "napari-segtool turns them into objects with a seeded watershed (seeds from confident "
                "interiors or from the object's shape, see its `ops/postprocess.py`); other tools can "
                "threshold `p_interior + p_boundary` for the foreground and use `p_interior` or `distance` "
                "as seeds.")
    else:
        what = f"per-class softmax probabilities ({', '.join(channels)}); the label is the argmax + 1."
    norm = meta.normalization
    if norm.get("method") == "percentile":
        pre = (f"The input is normalised per image and channel: percentiles {norm.get('low', 1.0)} and "
               f"{norm.get('high', 99.8)} map to 0 and 1 (`scale_range` preprocessing).")
    else:
        pre = (f"The input must already be normalised as napari-segtool does ('{norm.get('method')}' "
               "normalisation, e.g. an asinh stretch above the sigma-clipped sky); bioimage.io has no such "
               "preprocessing step, so the package declares none.")
    return (f"{card}\n\n## bioimage.io package\n\nExported by napari-segtool "
            f"(`segtool export {meta.name or 'MODEL'} --format bioimageio`). {pre} The network outputs {what}\n\n"
            f"Loading back into napari-segtool (`segtool predict model.zip IMAGE`, or `load_model('model.zip')`) "
            f"reads the attached `{PACKAGE_WEIGHTS}` (safetensors + JSON), never the pickled `.pt` file.\n")


def _spec_format_version() -> str:
    """The newest model format version the installed bioimageio.spec implements (e.g. ``0.5.12``)."""
    from bioimageio.spec.model.v0_5 import ModelDescr

    return str(ModelDescr.implemented_format_version)


def _write_cover(path: Path, image: np.ndarray, maps: np.ndarray, task: str) -> None:
    """A 2:1 PNG: the normalised input beside the foreground (or first class) probability."""
    from skimage.io import imsave

    left = np.clip(image[..., 0], 0, 1)
    right = maps[1] + maps[2] if task == "instance" else maps[0]
    both = np.concatenate([left, np.clip(right, 0, 1)], axis=1)
    imsave(str(path), (both * 255).astype(np.uint8), check_contrast=False)


def write_bioimageio_folder(model: SegModel, folder: Path, *, sample: np.ndarray | None = None,
                            authors: list[str] | None = None, onnx: bool = True,
                            torchscript: bool = True) -> tuple[dict[str, Any], list[str]]:
    """Write the files of a bioimage.io package (format 0.5) and its ``rdf.yaml`` into ``folder``.

    Returns the ``rdf.yaml`` content and notes on weight formats that could not be written.
    The description is written as plain YAML (not through ``bioimageio.spec``'s serialiser, which in
    bioimageio.spec 0.5.12 breaks with pydantic >= 2.12); :func:`export_bioimageio` validates it.
    """
    import yaml

    from napari_segtool.core.checkpoint import save_model
    from napari_segtool.ops.tiling import halo_for

    meta = model.meta
    if meta.arch != "unet":
        raise ExportError(f"bioimage.io export supports U-Net models; '{meta.arch}' models give a variable number "
                          "of detections, which bioimage.io tensors do not describe (export it as onnx or "
                          "torchscript)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = export_network(model)
    step = 2 ** int(meta.arch_kwargs.get("depth", 3))
    halo = halo_for(meta.receptive_field or net.unet.receptive_field(), step)
    min_size = step * int(math.ceil((2 * halo + step) / step))

    raw = _prepare_sample(model, sample, min_size, step)
    percentile = meta.normalization.get("method") == "percentile"
    if percentile:  # exactly what bioimage.io's scale_range computes, so consumers reproduce the test output
        normed = scale_range(raw, float(meta.normalization.get("low", 1.0)), float(meta.normalization.get("high", 99.8)))
    else:
        normed = _normalised(model, raw)
    x = torch.from_numpy(np.ascontiguousarray(normed.transpose(2, 0, 1)[None]))
    with torch.no_grad():
        y = net(x).numpy().astype(np.float32)
    test_in = np.ascontiguousarray((raw if percentile else normed).transpose(2, 0, 1)[None], np.float32)
    np.save(folder / "test_input.npy", test_in)
    np.save(folder / "test_output.npy", y)
    _write_cover(folder / "cover.png", normed, y[0], meta.task)

    # weights: our own format (what import reads), plain state dict + architecture source, TorchScript, ONNX
    save_model(model, folder / PACKAGE_WEIGHTS)
    (folder / PACKAGE_META).write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=True), encoding="utf-8")
    state = {k: v.detach().cpu().contiguous().clone() for k, v in net.unet.state_dict().items()}
    torch.save(state, folder / "weights.pt")
    (folder / "segtool_unet.py").write_text(architecture_source(), encoding="utf-8")
    torch_version = torch.__version__.split("+")[0]
    arch_kwargs = {"in_channels": int(meta.in_channels), "semantic": meta.task == "semantic", **meta.arch_kwargs}
    weights: dict[str, Any] = {"pytorch_state_dict": {
        "source": "weights.pt", "pytorch_version": torch_version,
        "architecture": {"source": "segtool_unet.py", "callable": "SegtoolUNet", "kwargs": arch_kwargs}}}
    notes: list[str] = []
    if torchscript:
        try:
            export_torchscript(model, folder / "weights_torchscript.pt")
            weights["torchscript"] = {"source": "weights_torchscript.pt", "pytorch_version": torch_version,
                                      "parent": "pytorch_state_dict"}
        except ExportError as exc:
            notes.append(str(exc))
    if onnx:
        try:
            export_onnx(model, folder / "weights.onnx")
            weights["onnx"] = {"source": "weights.onnx", "opset_version": ONNX_OPSET, "parent": "pytorch_state_dict"}
        except ExportError as exc:
            notes.append(str(exc))

    in_id = "raw" if percentile else "normalised"
    space_in = [{"type": "space", "id": a, "size": {"min": min_size, "step": step}} for a in ("y", "x")]
    space_out = [{"type": "space", "id": a, "size": {"tensor_id": in_id, "axis_id": a}, "halo": halo}
                 for a in ("y", "x")]
    inputs: dict[str, Any] = {
        "id": in_id,
        "description": "image, " + ("raw intensities" if percentile else f"{meta.normalization.get('method')}-normalised"),
        "axes": [{"type": "batch"}, {"type": "channel", "channel_names": [f"channel{c}" for c in range(meta.in_channels)]},
                 *space_in],
        "test_tensor": {"source": "test_input.npy"},
        "data": {"type": "float32"},
    }
    if percentile:
        inputs["preprocessing"] = [{"id": "scale_range", "kwargs": {
            "axes": ["y", "x"], "min_percentile": float(meta.normalization.get("low", 1.0)),
            "max_percentile": float(meta.normalization.get("high", 99.8))}}]
    channels_out = output_channel_names(model)
    outputs = {
        "id": "maps",
        "description": "probability maps" + (" and distance to the border" if meta.task == "instance" else ""),
        "axes": [{"type": "batch"}, {"type": "channel", "channel_names": channels_out}, *space_out],
        "test_tensor": {"source": "test_output.npy"},
        "data": {"type": "float32", "range": [0.0, 1.0]},
    }
    (folder / "README.md").write_text(_documentation(model, channels_out), encoding="utf-8")
    cite = list(CITATIONS["unet"]) + ([WATERSHED_CITATION] if meta.task == "instance" else [])
    rdf: dict[str, Any] = {
        "type": "model",
        "format_version": _spec_format_version(),
        "name": _package_name(meta.name or "napari-segtool model"),
        "description": (meta.description or f"{meta.arch} {meta.task} segmentation model").splitlines()[0][:1000],
        "authors": [{"name": a} for a in (authors or ["napari-segtool"])],
        "cite": cite,
        "license": LICENSE,
        "documentation": {"source": "README.md"},
        "covers": [{"source": "cover.png"}],
        "tags": ["napari-segtool", "unet", "segmentation", meta.task, "2d"],
        "version": "0.1.0",
        "inputs": [inputs],
        "outputs": [outputs],
        "weights": weights,
        "attachments": [{"source": PACKAGE_WEIGHTS}, {"source": PACKAGE_META}],
        "config": {"napari-segtool": {"arch": meta.arch, "task": meta.task, "version": meta.version,
                                      "postprocess": meta.postprocess, "normalization": meta.normalization}},
    }
    (folder / "rdf.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(rdf)), sort_keys=False), encoding="utf-8")
    return rdf, notes


def _package_name(name: str) -> str:
    """A bioimage.io name: letters, digits, ``_+- ()``, 5..128 characters."""
    clean = re.sub(r"[^A-Za-z0-9_+\- ()]+", "-", name).strip(" -")
    if len(clean) < 5:
        clean = f"napari-segtool {clean}".strip()
    return clean[:128]


def validate_bioimageio(path: str | os.PathLike) -> None:
    """Validate a package with ``bioimageio.spec`` (format and files); raise :class:`ExportError` if invalid."""
    try:
        from bioimageio.spec import InvalidDescr, load_description
    except ImportError as exc:
        raise ExportError(f"bioimage.io export needs bioimageio.spec (pip install bioimageio.core): {exc}") from None
    import gc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # bioimageio.spec leaves the zip open until collected
        descr = load_description(str(path), perform_io_checks=True)
        errors = []
        if isinstance(descr, InvalidDescr):
            errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in descr.validation_summary.details
                      for e in d.errors] or ["see `bioimageio validate`"]
        del descr
        gc.collect()
    if errors:
        raise ExportError(f"bioimage.io description is invalid: {'; '.join(errors)[:500]}")


def export_bioimageio(model: SegModel | str | os.PathLike, out: str | os.PathLike, *,
                      sample: np.ndarray | None = None, authors: list[str] | None = None,
                      onnx: bool = True, torchscript: bool = True) -> Path:
    """Write a bioimage.io model package (format 0.5, ``.zip``) of a U-Net model to ``out``.

    ``sample`` (``YX`` or ``YXC``, raw intensities) becomes the test input (reflect-padded to a
    valid size); by default a simulated nuclei image. The test output is the model's own output
    on it. The package is validated with ``bioimageio.spec`` before it replaces ``out``. Raises
    :class:`ExportError` for Mask R-CNN models, an invalid description, or when bioimageio.spec
    is missing.
    """
    model = _as_model(model)
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"bioimage.io export needs bioimageio.spec (pip install bioimageio.core): {exc}") from None
    with tempfile.TemporaryDirectory(prefix="segtool-bioimageio-") as tmp:
        folder = Path(tmp) / "package"
        write_bioimageio_folder(model, folder, sample=sample, authors=authors, onnx=onnx, torchscript=torchscript)

        def write(path: Path) -> None:
            with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.write(folder / "rdf.yaml", "rdf.yaml")
                for item in sorted(folder.iterdir()):
                    if item.name != "rdf.yaml":
                        zf.write(item, item.name)
            validate_bioimageio(path)

        return _atomic_file(Path(out), write)



# ----------------------------------------------------------------------------- import
def is_bioimageio_package(path: str | os.PathLike) -> bool:
    """A ``.zip`` with an ``rdf.yaml``/``bioimageio.yaml``, or a folder/yaml file of an unpacked package."""
    path = Path(path)
    try:
        if path.is_file() and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return any(n in ("rdf.yaml", "bioimageio.yaml") or n.endswith(".bioimageio.yaml")
                           for n in zf.namelist())
        if path.is_file() and path.name.endswith(("rdf.yaml", "bioimageio.yaml")):
            return True
        if path.is_dir():
            return (path / "rdf.yaml").is_file() or (path / "bioimageio.yaml").is_file()
    except (OSError, zipfile.BadZipFile):
        return False
    return False
