"""``segtool``: train, predict, evaluate and list models from the command line.

A thin layer over the core: it parses arguments, reads files with
:mod:`napari_segtool.io`, drives the core's generators with a progress bar, and
turns every expected failure (unreadable file, shape mismatch, empty labels,
unknown model, out-of-range argument, an output that would overwrite an input or
a file it did not create) into one clear line on stderr and exit code 2, before
any work starts and with nothing touched. Anything else is a bug: one line on
stderr with the path of a log file holding the traceback, exit code 1.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from napari_segtool.kernel.errors import SegtoolError
from napari_segtool.kernel.events import run_job

EXIT_BAD_INPUT = 2
DEFAULT_ARCH = "unet"
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
IMAGE_SUFFIXES = (".tif", ".tiff", ".fits", ".fit", ".fts", ".fits.gz", ".npy", ".zarr")


class CliError(SegtoolError):
    """An expected, user-facing failure: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage block) through :class:`CliError`."""

    def error(self, message: str):  # type: ignore[override]
        raise CliError(f"{message} (see {self.prog} --help)")


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _size(kinds: tuple[str, ...], example: str) -> Callable[[str], Any]:
    """An argparse type for a size: pixels (``24``, ``24px``, ``24 pix``) -> float, or a quantity of one of the
    astropy physical types ``kinds`` (``7.5um``, ``1.2 arcsec``) -> a Quantity, converted per image."""
    what = " or ".join(f"a positive {kind}" for kind in kinds)

    def parse(text: str) -> Any:
        number = text.strip().removesuffix("px").strip()
        try:
            return _number(float, 0, 100000, lo_open=True)(number)
        except argparse.ArgumentTypeError as exc:
            if not any(c.isalpha() or c in "µ\"'" for c in number):
                raise exc
        import astropy.units as u

        try:
            quantity = u.Quantity(text)
        except (ValueError, TypeError):
            raise argparse.ArgumentTypeError(f"expected pixels or {what} such as {example}, got {text!r}") from None
        ok = math.isfinite(quantity.value) and quantity.value > 0
        if ok and quantity.unit == u.pix:
            return float(quantity.value)
        if quantity.unit.physical_type not in kinds or not ok:
            raise argparse.ArgumentTypeError(f"expected pixels or {what} such as {example}, got {text!r}")
        return quantity

    parse.__name__ = "size"  # argparse names the type in its messages
    return parse


def _length_px(option: str, value: Any, img: Any, path: Path) -> float | None:
    """A size option in the pixels of ``img``: pixels as given, a length divided by the file's X pixel size."""
    if value is None or isinstance(value, float):
        return value
    size = img.pixel_size_in(value.unit)
    if size is None:
        raise CliError(f"{option} {value}: {path} gives no pixel size in a length unit; give pixels instead")
    return float(value.value) / size


def _psf_fwhm(value: Any, img: Any, path: Path) -> Any:
    """The PSF FWHM a bulge/disk model gets for ``img`` (``core.decompose.PsfFwhm``): ``--psf-fwhm`` (pixels, a
    length over the file's pixel size, an angle over its WCS pixel scale), else the FITS header's keyword, else
    ``None`` (measured on the image)."""
    from napari_segtool.core.decompose import PsfFwhm, header_psf_fwhm, psf_fwhm_pixels

    if value is None:
        return header_psf_fwhm(img.metadata)
    if isinstance(value, float) or value.unit.physical_type == "length":
        given = _fmt(value) if isinstance(value, float) else value
        return PsfFwhm(_length_px("--psf-fwhm", value, img, path), f"--psf-fwhm {given}")
    pixels = psf_fwhm_pixels(value, img.metadata)
    if pixels is None:
        raise CliError(f"--psf-fwhm {value}: {path} has no celestial WCS to give its pixel scale; give pixels instead")
    return PsfFwhm(pixels, f"--psf-fwhm {value}")


def _check_tile_size(tile_size: int | None, meta: Any) -> None:
    """``--tile-size`` must exceed the model's receptive field, on every path."""
    if tile_size is not None and tile_size <= meta.receptive_field:
        raise CliError(f"--tile-size {tile_size} is too small for model '{meta.name}' "
                       f"(receptive field {meta.receptive_field} px): use more than {meta.receptive_field}")


#: why a way ``segtool predict`` runs does not use an option: given, it is refused before any work (one line,
#: exit 2) instead of being silently ignored. Ways: :func:`_predict_way`.
_CHUNKS = "it sets the chunks of chunked runs (--out x.zarr, --workers, --scheduler)"
_IN_MEMORY = "a bulge/disk model writes FITS images made in memory: give a folder as --out"
_ONE_HDU = "chunked runs read the first image HDU; --hdu works with a folder or .ome.zarr --out"
UNUSED_OPTIONS: dict[str, dict[str, str]] = {
    "in memory": {"chunk_size": _CHUNKS},
    "OME-Zarr": {"chunk_size": _CHUNKS,
                 "workers": "OME-Zarr labels are made in memory; --workers/--scheduler write a plain .zarr",
                 "scheduler": "OME-Zarr labels are made in memory; --workers/--scheduler write a plain .zarr"},
    "chunked": {"hdu": _ONE_HDU},  # --out x.zarr, or a folder with --scheduler threads/synchronous
    "dask cluster": {"hdu": _ONE_HDU,
                     "device": "the dask workers load the model on their own best device (leave it out, or run "
                               "without --workers/--scheduler)"},
    "bulge/disk": {"diameter": "it runs on the field's own pixels, never rescaled to an object size (its other "
                               "input is the PSF size: --psf-fwhm)",
                   "z_scale": "it decomposes one 2D plane", "chunk_size": _IN_MEMORY, "workers": _IN_MEMORY,
                   "scheduler": _IN_MEMORY},
}
#: --scheduler values that run dask in this process (``core.batch``), not on a cluster
LOCAL_SCHEDULERS = ("threads", "threading", "synchronous", "sync")
WAY_NAMES = {"in memory": "a prediction in memory (--out FOLDER)",
             "OME-Zarr": "an OME-Zarr prediction (--out x.ome.zarr)",
             "chunked": "a chunked prediction in this process (--out x.zarr)",
             "dask cluster": "a prediction on a dask cluster (--workers, --scheduler)"}


def _predict_way(meta: Any, out: Path, args: argparse.Namespace) -> str:
    """How ``segtool predict`` runs: a key of :data:`UNUSED_OPTIONS`."""
    if meta.task == "regression":
        return "bulge/disk"
    if out.name.lower().endswith(".ome.zarr"):
        return "OME-Zarr"
    if args.workers or (args.scheduler and args.scheduler not in LOCAL_SCHEDULERS):
        return "dask cluster"
    return "chunked" if out.suffix == ".zarr" or args.scheduler else "in memory"


def _refuse_unused(args: argparse.Namespace, meta: Any, way: str) -> None:
    """Refuse every option given that ``way`` does not use (:data:`UNUSED_OPTIONS`), and ``--psf-fwhm`` for a
    model without the PSF input channel."""
    from napari_segtool.core.decompose import has_psf_channel

    described = f"{meta.name} (a bulge/disk model)" if way == "bulge/disk" else WAY_NAMES[way]
    for dest, why in UNUSED_OPTIONS[way].items():
        if getattr(args, dest) is not None:
            raise CliError(f"--{dest.replace('_', '-')} is not used by {described}: {why}")
    if args.psf_fwhm is not None and not has_psf_channel(meta):
        raise CliError(f"--psf-fwhm is not used by model '{meta.name}': only a bulge/disk model with a PSF input "
                       f"channel takes it")


def _refuse_z_scale_on_planes(z_scale: float | None, images: Sequence[Any], inputs: Sequence[Path]) -> None:
    """``--z-scale`` is the Z step of stacks: refused when no input has a Z axis."""
    if z_scale is not None and not any("Z" in img.axes for img in images):
        which = "none of the inputs has" if len(inputs) > 1 else f"{inputs[0]} (axes {images[0].axes}) has no"
        raise CliError(f"--z-scale is the Z step of stacks, and {which} Z axis (give --axes if the file says wrong)")


def _number(kind: Callable[[str], Any], lo: float | None = None, hi: float | None = None,
            lo_open: bool = False) -> Callable[[str], Any]:
    """An argparse type: ``kind`` (int or float), finite, within ``[lo, hi]`` (``(lo, hi]`` if ``lo_open``)."""
    name = "an integer" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        low_bad = lo is not None and (value <= lo if lo_open else value < lo)
        if low_bad or (hi is not None and value > hi):
            low = "" if lo is None else (f"> {_fmt(lo)}" if lo_open else f">= {_fmt(lo)}")
            high = "" if hi is None else f"<= {_fmt(hi)}"
            raise argparse.ArgumentTypeError(f"must be {' and '.join(x for x in (low, high) if x)}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


# ----------------------------------------------------------------------------- helpers
def _progress_bar(total: int | None, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr, dynamic_ncols=True)


def _expand_inputs(paths: Sequence[str]) -> list[Path]:
    """Files as given; folders become the image files they contain (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and p.suffix != ".zarr":
            found = sorted(f for f in p.iterdir() if f.name.lower().endswith(IMAGE_SUFFIXES))
            if not found:
                raise CliError(f"{p}: folder contains no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        else:
            out.append(p)
    return out


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".fits.gz", *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _planes_of(image: np.ndarray, axes: str) -> list[np.ndarray]:
    """2D ``YXC`` planes of an image in canonical order."""
    from napari_segtool.kernel.axes import to_canonical

    data, canon = to_canonical(np.asarray(image), axes)
    stack = data.shape[: len(canon) - 3]
    return [data[i] for i in np.ndindex(*stack)] if stack else [data]


def _label_planes(labels: np.ndarray, image_axes: str, spatial: tuple[int, ...], what: str) -> list[np.ndarray]:
    from napari_segtool.kernel.axes import to_canonical

    if labels.shape != spatial:
        raise CliError(f"{what} has shape {labels.shape} but the image's spatial shape is {spatial}")
    axes = "".join(a for a in image_axes.replace("S", "C") if a != "C")
    data, canon = to_canonical(labels, axes)
    data = data[..., 0]
    stack = data.shape[:-2]
    return [data[i] for i in np.ndindex(*stack)] if stack else [data]


# ------------------------------------------------------------------------------ train
def cmd_train(args: argparse.Namespace) -> int:
    from napari_segtool.core.checkpoint import load_model, save_model
    from napari_segtool.core.data import DataError, make_example
    from napari_segtool.kernel.events import TrainEpoch, TrainStep
    from napari_segtool.core.train import TrainConfig, iter_train
    from napari_segtool.io.images import read_image, read_labels

    from napari_segtool.core.validate import check_device
    from napari_segtool.io.outputs import check_model_output

    pairs = args.pairs
    if len(pairs) % 2:
        raise CliError("train needs IMAGE LABELS pairs (an even number of paths)")
    images, labels = pairs[0::2], pairs[1::2]
    masks = args.mask or []
    if masks and len(masks) != len(images):
        raise CliError(f"got {len(masks)} --mask for {len(images)} images (give one per image or none)")
    if args.device is not None:
        check_device(args.device)
    for path in [*pairs, *masks]:
        if not Path(path).expanduser().exists():
            raise CliError(f"cannot read {path}: no such file or folder")
    check_model_output(args.out, [*pairs, *masks], overwrite=args.overwrite)
    init = load_model(args.init) if args.init else None
    for option, given, kind in (("--model", args.model, "arch"), ("--task", args.task, "task")):
        if init is not None and given not in (None, getattr(init.meta, kind)):  # refused before reading any data
            raise CliError(f"{option} {given}: fine-tuning keeps the {'architecture' if kind == 'arch' else kind} "
                           f"of --init {args.init} ({getattr(init.meta, kind)}); leave {option} out")
    arch = init.meta.arch if init is not None else args.model or DEFAULT_ARCH
    task = init.meta.task if init is not None else args.task or "instance"
    normalization = init.meta.normalization if init is not None else None
    examples = []
    for k, (img_path, lab_path) in enumerate(zip(images, labels)):
        img = read_image(img_path, axes=args.axes)
        spatial = tuple(s for s, a in zip(img.data.shape, img.axes) if a not in "CS")
        lab = read_labels(lab_path)
        lab_planes = _label_planes(lab, img.axes, spatial, f"labels {lab_path}")
        mask_planes = (_label_planes(read_labels(masks[k]) > 0, img.axes, spatial, f"mask {masks[k]}")
                       if masks else [None] * len(lab_planes))
        for i, (plane, lp, mp) in enumerate(zip(_planes_of(img.data, img.axes), lab_planes, mask_planes)):
            if mp is not None and not mp.any():
                continue
            if mp is None and task == "instance" and not lp.any() and len(lab_planes) > 1:
                continue  # unlabelled plane of a stack
            try:
                examples.append(make_example(plane, lp, mp, task=task, name=f"{Path(img_path).name}[{i}]",
                                             normalization=normalization))
            except DataError as exc:
                raise CliError(str(exc)) from exc
    if not examples:
        raise CliError("no annotated data: the labels (and masks) are empty")
    config = TrainConfig(epochs=args.epochs, time_budget=args.time_budget, seed=args.seed, device=args.device)
    for name in ("batch_size", "patch_size", "lr", "steps_per_epoch"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    job = iter_train(examples, arch=arch, task=task, init=init, config=config)
    bar = _progress_bar(None, "training", not args.quiet)

    def show(event: Any) -> None:
        if isinstance(event, TrainStep):
            bar.update(1)
            bar.set_postfix(loss=f"{event.loss:.3f}", epoch=event.epoch)
        elif isinstance(event, TrainEpoch) and not args.quiet:
            bar.write(f"epoch {event.epoch:3d}  loss {event.train_loss:.4f}  "
                      f"{event.metric_name} {event.val_metric:.3f}{'  *' if event.is_best else ''}")

    try:
        result = run_job(job, show)
    finally:
        bar.close()
    if result.steps == 0:
        raise CliError(f"training stopped before its first step ({result.stop_reason}); nothing saved to {args.out}"
                       + (" (raise --time-budget)" if result.stop_reason == "time budget" else ""))
    model = result.model
    model.meta.name = Path(args.out).name.removesuffix(".safetensors")
    path = save_model(model, args.out)
    print(f"trained {model.meta.arch} ({model.meta.task}) for {result.seconds:.0f} s, {result.steps} steps "
          f"({result.stop_reason}); saved to {path}")
    return 0


# ---------------------------------------------------------------------------- predict
def _write_table(path: Path, rows: dict[tuple, list[dict[str, Any]]]) -> None:
    from napari_segtool.io.atomic import atomic_write_text
    import io

    flat = [{"plane": ",".join(map(str, k)), **r} for k, table in rows.items() for r in table]
    if not flat:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(flat[0]))
    writer.writeheader()
    writer.writerows(flat)
    atomic_write_text(path, buffer.getvalue())


def cmd_predict(args: argparse.Namespace) -> int:
    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.io.images import read_image

    from napari_segtool.core.validate import check_device
    from napari_segtool.io.outputs import made_dirs, remove_empty_dirs

    from napari_segtool.core.checkpoint import read_meta, resolve_model_path

    if args.device is not None:
        check_device(args.device)
    model_path = resolve_model_path(args.model)  # an unknown model is refused first
    meta = read_meta(model_path)
    out = Path(args.out).expanduser()
    way = _predict_way(meta, out, args)
    _refuse_unused(args, meta, way)  # every option is used by this way, or refused here
    _check_tile_size(args.tile_size, meta)
    inputs = _expand_inputs(args.images)
    for path in inputs:
        if not path.expanduser().exists():
            raise CliError(f"cannot read {path}: no such file or folder")
    if way == "bulge/disk":
        return _decompose_files(args, inputs, out)
    if way == "OME-Zarr":
        return _predict_ome_zarr(args, inputs, out)
    if way != "in memory":
        return _predict_batch(args, inputs, out)
    plans = _plan_outputs(inputs, out, args.overwrite)
    # every input readable (lazy: headers only; not kept open), its diameter known, before any work
    images = [read_image(path, axes=args.axes, lazy=True, hdu=args.hdu) for path in inputs]
    _refuse_z_scale_on_planes(args.z_scale, images, inputs)
    diameters = [_length_px("--diameter", args.diameter, img, path) for img, path in zip(images, inputs)]
    del images
    model = load_model(args.model, device=args.device)
    gc.freeze()  # torch & co. are imported: their objects stay out of the collector's full passes
    created = made_dirs(out)
    try:
        _predict_files(args, model, inputs, plans, diameters)
    except BaseException:
        remove_empty_dirs(created)
        raise
    return 0


#: What a folder --out receives per input: labels + object table, or for FITS the FITS products.
LABEL_PRODUCTS = ("_labels.tif", "_objects.csv")
#: chunk edge of chunked runs when --chunk-size is not given (pixels)
DEFAULT_CHUNK_SIZE = 1024
FITS_PRODUCTS = ("_segm.fits", "_cat.ecsv", "_cat.fits")


def _is_fits(path: Path) -> bool:
    from napari_segtool.io.images import FITS_SUFFIXES

    return path.name.lower().endswith(FITS_SUFFIXES)


def _plan_outputs(inputs: list[Path], out: Path, overwrite: bool) -> list[list[Path]]:
    """Per input, its output paths in ``out`` (:data:`FITS_PRODUCTS` for FITS, else :data:`LABEL_PRODUCTS`)."""
    from napari_segtool.io.outputs import plan_label_outputs

    plans: list[list[Path]] = [[] for _ in inputs]
    for fits_group, products in ((False, LABEL_PRODUCTS), (True, FITS_PRODUCTS)):
        group = [i for i, p in enumerate(inputs) if _is_fits(p) == fits_group]
        if group:
            found = plan_label_outputs(inputs, out, [_stem(inputs[i]) for i in group], products, overwrite=overwrite)
            for i, paths in zip(group, found):
                plans[i] = paths
    return plans


def _write_fits_products(paths: list[Path], img: Any, pred: Any, model: Any) -> str:
    """``<stem>_segm.fits`` (the input HDU's header and WCS) and, for 2D instance labels, the source
    catalogue as ECSV and FITS table (``core.catalog``); returns what was written, for the summary."""
    from napari_segtool.core.catalog import measure_sources, publishable_labels
    from napari_segtool.io.fits import celestial_wcs, fits_header, write_segmentation, write_table

    segm, ecsv, table = paths
    cards: dict[str, Any] = {"SEGMODEL": (model.meta.name, "napari-segtool model that made this map"),
                             "SEGSRC": (Path(img.path).name, "image segmented"),
                             "SEGHDU": (int(img.metadata.get("fits_hdu", 0)), "its HDU")}
    labels = np.asarray(pred.labels)
    if model.meta.task != "instance" or pred.axes != "YX" or img.axes != "YX":
        image = np.asarray(img.data)
        if image.shape == labels.shape:  # NaN pixels unlabelled here too; ids (or classes) kept
            labels, _ = publishable_labels(labels, image, relabel=False)
        write_segmentation(segm, labels, img.metadata, cards)
        return f"{segm} (no catalogue: it needs 2D instance labels)"
    header = fits_header(img.metadata)
    gain = header.get("GAIN") if header is not None else None
    measured = measure_sources(np.asarray(img.data), labels, wcs=celestial_wcs(img.metadata),
                               gain=float(gain) if isinstance(gain, (int, float)) else None,
                               unit=header.get("BUNIT") if header is not None else None,
                               source_rows=pred.tables.get((), []),
                               meta={"IMAGE": Path(img.path).name, "HDU": int(img.metadata.get("fits_hdu", 0)),
                                     "MODEL": model.meta.name})
    cards["SEGNSRC"] = (len(measured.table), "sources: ids 1..SEGNSRC, 0 = sky or unlabelled")
    write_segmentation(segm, measured.labels, img.metadata, cards)
    write_table(measured.table, ecsv)
    write_table(measured.table, table)
    return f"{segm}, {ecsv.name}, {table.name}"


def _predict_files(args: argparse.Namespace, model: Any, inputs: list[Path], plans: list[list[Path]],
                   diameters: list[float | None]) -> None:
    from napari_segtool.core.predict import iter_predict
    from napari_segtool.io.images import read_image, write_labels

    for path, paths, diameter in zip(inputs, plans, diameters):
        img = read_image(path, axes=args.axes, lazy=True, hdu=args.hdu)
        bar = _progress_bar(None, path.name, not args.quiet)

        def tiles(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        z_scale = args.z_scale or img.z_anisotropy()
        job = iter_predict(model, img.data, axes=img.axes, tile_size=args.tile_size, tile_callback=tiles,
                           z_scale=z_scale, diameter=diameter)
        try:
            pred = run_job(job)
        finally:
            bar.close()
        for note in pred.notes:
            print(f"note: {note}", file=sys.stderr)
        if _is_fits(path):
            written = _write_fits_products(paths, img, pred, model)
        else:
            written = str(write_labels(paths[0], pred.labels, axes=pred.axes))
            if pred.tables:
                _write_table(paths[1], pred.tables)
        n = len(np.unique(pred.labels)) - 1 if model.meta.task == "instance" else int(pred.labels.max())
        kind = "objects" if model.meta.task == "instance" else "max class id"
        print(f"{path.name}: {n} {kind} -> {written}")


#: What a folder --out receives per input from a bulge/disk (regression) model: its component images as FITS.
DECOMPOSITION_PRODUCTS = ("_bulge.fits", "_disk.fits")


def _decompose_files(args: argparse.Namespace, inputs: list[Path], out: Path) -> int:
    """``<stem>_bulge.fits`` and ``<stem>_disk.fits`` per input (``core.decompose``), under the input HDU's header
    and WCS (``io.fits.write_image``); flux in the input's units, sky subtracted."""
    from astropy.stats import gaussian_sigma_to_fwhm

    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.decompose import decompose, has_psf_channel
    from napari_segtool.io.fits import write_image
    from napari_segtool.io.images import read_image
    from napari_segtool.io.outputs import made_dirs, plan_label_outputs, remove_empty_dirs
    from napari_segtool.kernel.axes import to_canonical

    if out.suffix == ".zarr":
        raise CliError(f"--out {out.name}: {_IN_MEMORY}")
    plans = plan_label_outputs(inputs, out, [_stem(p) for p in inputs], DECOMPOSITION_PRODUCTS, overwrite=args.overwrite)
    images = [read_image(path, axes=args.axes, lazy=True, hdu=args.hdu) for path in inputs]  # all readable first
    model = load_model(args.model, device=args.device)
    psfs = [_psf_fwhm(args.psf_fwhm, img, path) if has_psf_channel(model.meta) else None
            for img, path in zip(images, inputs)]  # known for every input before any work
    created = made_dirs(out)
    try:
        for path, img, paths, psf in zip(inputs, images, plans, psfs):
            plane = to_canonical(img.data, img.axes)[0]  # YXC whatever the file's (or --axes') order
            result = decompose(model, plane, tile_size=args.tile_size, psf_size=psf)
            cards = {"SEGMODEL": (model.meta.name, "napari-segtool model that made this image"),
                     "SEGSRC": (Path(img.path).name, "image decomposed"),
                     "SEGSKY": (result.sky, "sky level subtracted (input units)")}
            if result.psf_size is not None:
                cards["SEGPSF"] = (result.psf_size * gaussian_sigma_to_fwhm, "PSF FWHM (pixels) given to the model")
                print(f"note: {path.name}: {result.psf_note()}", file=sys.stderr)
            for (name, flux), target in zip(result.layers().items(), paths):
                write_image(target, flux, img.metadata, {**cards, "SEGCOMP": (name, "component in this image")})
            print(f"{path.name}: bulge {np.nansum(result.bulge):.4g}, disk {np.nansum(result.disk):.4g} "
                  f"-> {', '.join(str(p) for p in paths)}")
    except BaseException:
        remove_empty_dirs(created)
        raise
    return 0


def _predict_ome_zarr(args: argparse.Namespace, inputs: list[Path], out: Path) -> int:
    """One image -> NGFF label image ``out`` (``io/ome_zarr.py``), with the input's pixel sizes and units."""
    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.predict import iter_predict
    from napari_segtool.io.images import read_image
    from napari_segtool.io.ome_zarr import write_ome_zarr_labels
    from napari_segtool.io.outputs import check_output_path, made_dirs, remove_empty_dirs

    if len(inputs) != 1:
        raise CliError(f"--out {out.name} (OME-Zarr) holds one image's labels, got {len(inputs)} images; "
                       f"give a folder for several")
    check_output_path(out, inputs, overwrite=args.overwrite)
    table = out.with_name(out.name[: -len(".ome.zarr")] + "_objects.csv")
    check_output_path(table, inputs, overwrite=args.overwrite)
    img = read_image(inputs[0], axes=args.axes, lazy=True, hdu=args.hdu)
    _refuse_z_scale_on_planes(args.z_scale, [img], inputs)
    diameter = _length_px("--diameter", args.diameter, img, inputs[0])
    model = load_model(args.model, device=args.device)
    created = made_dirs(out.parent)
    try:
        bar = _progress_bar(None, inputs[0].name, not args.quiet)

        def tiles(done: int, total: int) -> None:
            bar.total, bar.n = total, done
            bar.refresh()

        job = iter_predict(model, img.data, axes=img.axes, tile_size=args.tile_size, tile_callback=tiles,
                           z_scale=args.z_scale or img.z_anisotropy(), diameter=diameter)
        try:
            pred = run_job(job)
        finally:
            bar.close()
    except BaseException:
        remove_empty_dirs(created)
        raise
    for note in pred.notes:
        print(f"note: {note}", file=sys.stderr)
    write_ome_zarr_labels(out, pred.labels, pred.axes, scale=img.metadata.get("scale"),
                          units=img.metadata.get("units"),
                          attrs={"model": model.meta.name, "task": model.meta.task, "source": str(inputs[0])})
    if pred.tables:
        _write_table(table, pred.tables)
    n = len(np.unique(pred.labels)) - 1 if model.meta.task == "instance" else int(pred.labels.max())
    print(f"{inputs[0].name}: {n} {'objects' if model.meta.task == 'instance' else 'max class id'} -> {out}")
    return 0


def _predict_batch(args: argparse.Namespace, inputs: list[Path], out: Path) -> int:
    from napari_segtool.core.checkpoint import resolve_model_path
    from napari_segtool.io.outputs import check_output_path, made_dirs, remove_empty_dirs

    from napari_segtool.io.images import read_image

    resolve_model_path(args.model)  # an unknown model is refused before any folder is made
    images = [read_image(p, axes=args.axes, lazy=True) for p in inputs]  # headers only
    _refuse_z_scale_on_planes(args.z_scale, images, inputs)
    diameter = args.diameter
    if diameter is not None and not isinstance(diameter, float):  # a length: one size in pixels for all
        found = {_length_px("--diameter", diameter, img, p) for img, p in zip(images, inputs)}
        if len(found) > 1:
            raise CliError(f"--diameter {diameter}: these inputs have different pixel sizes; "
                           f"run them separately or give pixels")
        diameter = found.pop()
    del images
    if out.suffix == ".zarr" and len(inputs) == 1:
        check_output_path(out, inputs, overwrite=args.overwrite)
        created = made_dirs(out.parent)
    else:
        from napari_segtool.core.batch import labels_name

        names = [labels_name(p) for p in inputs]
        seen: dict[str, Path] = {}
        for path, name in zip(inputs, names):
            if name in seen:
                raise CliError(f"{seen[name]} and {path} would both write {out / name}; "
                               f"rename one or run them separately")
            seen[name] = path
        if out.exists() and not out.is_dir():
            raise CliError(f"--out {out} is a file; give a folder for the results")
        for name in names:
            check_output_path(out / name, inputs, overwrite=args.overwrite)
        created = made_dirs(out)
    try:
        return _run_batch(args, inputs, out, diameter)
    except BaseException:
        remove_empty_dirs(created)
        raise


def _run_batch(args: argparse.Namespace, inputs: list[Path], out: Path, diameter: float | None) -> int:
    """``diameter``: ``--diameter`` in pixels (a length converted with the inputs' pixel size)."""
    from napari_segtool.core.batch import predict_folder, predict_to_zarr
    from napari_segtool.core.checkpoint import load_model

    kwargs = dict(axes=args.axes, workers=args.workers, scheduler=args.scheduler,
                  chunk_size=args.chunk_size or DEFAULT_CHUNK_SIZE, diameter=diameter, tile_size=args.tile_size,
                  z_scale=args.z_scale, overwrite=args.overwrite)
    # threads of this process run the model as loaded here, on --device (a cluster's workers: refused before)
    model = load_model(args.model, device=args.device) if args.device is not None else args.model
    bar = _progress_bar(None, "chunks", not args.quiet)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        if out.suffix == ".zarr" and len(inputs) == 1:
            reports = [predict_to_zarr(model, inputs[0], out, progress=progress, **kwargs)]
        else:
            reports = predict_folder(model, inputs, out, progress=progress, **kwargs)
    finally:
        bar.close()
    for r in reports:
        print(f"{r.out_path}: {r.n_objects} objects, {r.n_chunks} chunks, {r.mpx_per_s:.2f} Mpx/s")
    return 0


# --------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_segtool.ops.metrics import format_scores, instance_scores, semantic_scores
    from napari_segtool.io.images import read_labels

    pred, gt = read_labels(args.pred), read_labels(args.gt)
    if pred.shape != gt.shape:
        raise CliError(f"prediction has shape {pred.shape} but ground truth has shape {gt.shape}")
    for what, path, labels in (("prediction", args.pred, pred), ("ground truth", args.gt, gt)):
        if labels.dtype.kind == "i" and labels.size and int(labels.min()) < 0:
            raise CliError(f"{what} {path} has negative label ids (min {int(labels.min())}); ids must be >= 0")
        if labels.size and int(labels.max()) > 2**32 - 1:
            raise CliError(f"{what} {path} has label id {int(labels.max())}, above 2**32 - 1")
    scores = semantic_scores(pred, gt) if args.semantic else instance_scores(pred, gt)
    print(format_scores(scores))
    return 0


# ----------------------------------------------------------------------------- models
def cmd_models(args: argparse.Namespace) -> int:
    from napari_segtool.core.checkpoint import list_models, user_models_dir

    infos = list_models()
    if not infos:
        print(f"no models found (shipped models missing; user models go to {user_models_dir()})")
    for info in infos:
        print(info.one_line())
        if args.verbose and info.meta is not None and info.meta.card:
            print("    " + info.meta.card.strip().replace("\n", "\n    "))
    return 0


# ----------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    from napari_segtool.core.checkpoint import load_model, resolve_model_path
    from napari_segtool.core.export import export_model
    from napari_segtool.io.outputs import check_output_path, made_dirs, remove_empty_dirs

    source = resolve_model_path(args.model)  # an unknown model is refused first
    out = Path(args.out).expanduser()
    if args.format == "bioimageio" and out.suffix.lower() != ".zip":
        raise CliError(f"--out {out} must end in .zip for a bioimage.io package")
    inputs = [source, *([args.sample] if args.sample else [])]
    check_output_path(out, inputs, overwrite=args.overwrite)
    if out.is_dir():
        raise CliError(f"--out {out} is a folder; give a file name")
    if args.format != "bioimageio":
        for given, option in ((args.sample, "--sample"), (args.author, "--author")):
            if given:
                raise CliError(f"{option} is used by bioimage.io packages only (--format bioimageio), "
                               f"not by --format {args.format}")
    if args.axes and not args.sample:
        raise CliError("--axes gives the axes of --sample; without --sample there is no image to read")
    sample = None
    if args.sample:
        from napari_segtool.io.images import read_image

        img = read_image(args.sample, axes=args.axes, lazy=True)
        plane = _planes_of(img.data, img.axes)[0]
        sample = np.asarray(plane[:512, :512])  # a test tensor, not the whole image
    model = load_model(source)
    created = made_dirs(out.parent)
    try:
        path = export_model(model, args.format, out, **({"sample": sample, "authors": args.author}
                                                         if args.format == "bioimageio" else {}))
    except BaseException:
        remove_empty_dirs(created)
        raise
    print(f"exported {model.meta.name} ({model.meta.arch}, {model.meta.task}) as {args.format} -> {path}")
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="segtool", description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train or fine-tune a model from IMAGE LABELS pairs")
    t.add_argument("pairs", nargs="+", metavar="IMAGE LABELS", help="image and label files, alternating")
    from napari_segtool.models.registry import available_architectures  # names only: no torch

    t.add_argument("--model", choices=available_architectures(),
                   help=f"architecture of a new model (default {DEFAULT_ARCH}; with --init, the start's own)")
    t.add_argument("--task", choices=["instance", "semantic"],
                   help="instance (default) or semantic; with --init, the start's own")
    t.add_argument("--mask", nargs="+", help="annotated-pixel mask per image (0 = not annotated)")
    t.add_argument("--init", help="fine-tune from this model (name or path)")
    t.add_argument("--epochs", type=_number(int, 1, 1_000_000), default=100)
    t.add_argument("--time-budget", type=_number(float, 0, None, lo_open=True), help="stop after this many seconds")
    t.add_argument("--axes", help="axes of the images, e.g. ZYX, YXC (default: from metadata or guessed)")
    t.add_argument("--batch-size", type=_number(int, 1, 4096))
    t.add_argument("--patch-size", type=_number(int, 16, 4096))
    t.add_argument("--steps-per-epoch", type=_number(int, 1, 1_000_000))
    t.add_argument("--lr", type=_number(float, 0, 10, lo_open=True))
    t.add_argument("--seed", type=_number(int, 0, 2**32 - 1), default=0)
    t.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    t.add_argument("--out", required=True, help="model folder (or .safetensors file) to write; "
                   "an existing model there is replaced")
    t.add_argument("--overwrite", action="store_true",
                   help="allow --out to replace an existing file or folder that is not a model")
    t.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="segment images (files or folders) with a model")
    p.add_argument("model", help="shipped model name or path")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", required=True, help="output folder, or a .zarr for chunked/distributed runs; "
                   "per image <stem>_labels.tif + _objects.csv, for FITS <stem>_segm.fits + _cat.ecsv + _cat.fits; "
                   "a bulge/disk model (astro-bulge-disk) writes <stem>_bulge.fits + _disk.fits")
    p.add_argument("--axes")
    p.add_argument("--tile-size", type=_number(int, 32, 16384))
    p.add_argument("--z-scale", type=_number(float, 0, 1000, lo_open=True),
                   help="Z voxel size / XY pixel size of stacks (default: from the file's metadata, else the model's)")
    p.add_argument("--diameter", type=_size(("length",), "7.5um"),
                   help="typical object diameter in pixels (24), or as a length (7.5um) converted with each file's "
                        "pixel size (default: estimated per image with the model); the image is run at the "
                        "model's object size and the labels mapped back")
    p.add_argument("--device")
    p.add_argument("--workers", type=_number(int, 1, 1024), help="run chunked on a local dask cluster with N workers")
    p.add_argument("--scheduler", help="address of an existing dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--chunk-size", type=_number(int, 64, 65536),
                   help=f"chunk edge for chunked runs (pixels; default {DEFAULT_CHUNK_SIZE})")
    p.add_argument("--psf-fwhm", type=_size(("angle", "length"), "1.2arcsec"),
                   help="bulge/disk models with a PSF input: the field's PSF FWHM in pixels (3.5), or as an angle "
                        "(1.2arcsec) converted with the FITS WCS pixel scale (default: the header's PSF_FWHM, FWHM "
                        "or SEEING keyword, else measured on the image's compact sources); other models refuse it")
    p.add_argument("--hdu", metavar="N|NAME", help="FITS inputs: the HDU to segment, by index or EXTNAME "
                   "(default: the first image HDU)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input)")
    p.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="score predicted labels against ground truth")
    e.add_argument("pred")
    e.add_argument("gt")
    e.add_argument("--semantic", action="store_true", help="class maps (IoU/Dice) instead of instances")
    e.set_defaults(func=cmd_evaluate)

    m = sub.add_parser("models", help="list shipped and user models")
    m.add_argument("-v", "--verbose", action="store_true", help="also print model cards")
    m.set_defaults(func=cmd_models)

    x = sub.add_parser("export", help="export a model as a bioimage.io package, ONNX or TorchScript")
    x.add_argument("model", help="shipped model name or path")
    x.add_argument("--format", required=True, choices=["bioimageio", "onnx", "torchscript"])
    x.add_argument("--out", required=True, help="file to write (.zip for bioimageio, e.g. .onnx, .pt)")
    x.add_argument("--sample", help="image whose first plane becomes the bioimage.io test input "
                   "(default: a simulated nuclei image)")
    x.add_argument("--axes", help="axes of --sample, e.g. YXC")
    x.add_argument("--author", action="append", help="author name for the bioimage.io package (repeatable)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    x.set_defaults(func=cmd_export)
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    from napari_segtool.kernel.axes import AxesError

    found: list[type[BaseException]] = [SegtoolError, AxesError, OSError, MemoryError]
    try:  # until core.predict takes InputError from kernel.errors
        from napari_segtool.core.predict import InputError

        found.append(InputError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(found)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "not enough memory (try a smaller --tile-size, or chunked prediction with a .zarr --out)"
    if isinstance(exc, OSError) and not isinstance(exc, SegtoolError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}" + (f" -> {exc.filename2}" if exc.filename2 else "")
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def log_dir() -> Path:
    """Where tracebacks of internal errors go: ``$SEGTOOL_LOG_DIR``, else ``~/.cache/napari-segtool/logs``."""
    env = os.environ.get("SEGTOOL_LOG_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "napari-segtool" / "logs"


def _log_internal_error(argv: Sequence[str] | None) -> str:
    """Write the current exception's traceback to a log file; return its path (or why not)."""
    import tempfile
    import traceback

    args = list(argv) if argv is not None else sys.argv[1:]
    text = (f"segtool {' '.join(map(str, args))}\ntime: {time.strftime('%Y-%m-%dT%H:%M:%S')}\n\n"
            f"{traceback.format_exc()}")
    for folder in (log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"segtool-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            path.write_text(text, encoding="utf-8")
            return str(path)
        except OSError:
            continue
    return "(could not write a log file)"


class _Held(logging.Handler):
    """Keeps library log records (tifffile, astropy...) until the command's outcome is known."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(f"{record.name}: {' '.join(record.getMessage().split())}")
        except Exception:  # a broken record must not break the command
            pass


@contextlib.contextmanager
def _held_messages():
    """Hold library warnings and log records: printed as ``segtool: warning:`` lines only on success.

    A failing command then prints exactly one line; a library's complaint about a
    corrupt file is already in that line.
    """
    held = _Held()
    root = logging.getLogger()
    root.addHandler(held)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            yield held
        finally:
            root.removeHandler(held)
            held.lines += [f"{w.category.__name__}: {' '.join(str(w.message).split())}" for w in caught
                           if not issubclass(w.category, DeprecationWarning)]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``segtool``; returns the exit code (0 ok, 1 internal error, 2 bad input, 130 interrupted)."""
    from napari_segtool.kernel.memory import share_one_heap

    share_one_heap()  # before any worker thread: chunked jobs' memory stays flat (issue 18)
    held = None
    try:
        with _held_messages() as held:
            args = build_parser().parse_args(argv)
            code = args.func(args)
        for line in dict.fromkeys(held.lines):  # de-duplicated, in order
            print(f"segtool: warning: {line[:300]}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("segtool: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit:  # --help, --version
        raise
    except _expected_errors() as exc:
        print(f"segtool: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:
        log = _log_internal_error(argv)
        print(f"segtool: internal error: {type(exc).__name__}: {_one_line(exc)[:300]} "
              f"(please report it; traceback in {log})", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
