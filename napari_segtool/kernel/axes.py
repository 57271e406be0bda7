"""Axis bookkeeping: naming, guessing and reordering the dimensions of an image.

Images arrive with their dimensions in many orders (ImageJ writes ``TZCYX``,
RGB files are ``YXC``, OME-Zarr is usually ``TCZYX`` ...).  The segmentation
core works on one *canonical* order so that it never has to care:

* stack axes first, ``T`` before ``Z`` (only the ones the image has),
* then ``Y``, ``X``,
* then ``C`` (channels) always last, added with size 1 when missing.

So a canonical axes string is one of ``YXC``, ``ZYXC``, ``TYXC``, ``TZYXC``.

Axis letters: ``T`` time, ``Z`` depth / spectral plane, ``Y`` and ``X`` the
image plane, ``C`` channel.  ``S`` (tifffile's "RGB samples") is accepted
everywhere and treated as ``C``.

Everything here works on NumPy and Dask arrays alike and only uses
``transpose`` / indexing, so Dask data is never loaded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from napari_segtool.kernel.errors import InputError

__all__ = [
    "AxesError",
    "AXIS_LETTERS",
    "guess_axes",
    "normalize_axes",
    "canonical_axes",
    "to_canonical",
    "from_canonical",
    "iter_planes",
    "n_planes",
    "spatial_axes",
    "spatial_shape",
    "stack_axes",
]

#: Letters allowed in an axes string given by a user or a file.
AXIS_LETTERS = "TZYXCS"
#: The canonical order of all axes that can occur after normalisation.
CANONICAL_ORDER = "TZYXC"
#: Channel-like axis sizes that make a trailing dimension look like RGB(A).
_RGB_SIZES = (3, 4)


class AxesError(InputError):
    """An axes string does not fit an array, or axes cannot be guessed.

    An :class:`~napari_segtool.kernel.errors.InputError` (so a ``ValueError`` too): front ends
    report it as one line, the CLI with exit code 2."""


def normalize_axes(axes: str) -> str:
    """Upper-case ``axes`` and map ``S`` (RGB samples) to ``C``; no validation."""
    return str(axes).strip().upper().replace("S", "C")


def _validate(axes: str, ndim: int) -> str:
    """Check a user/file axes string against ``ndim`` and return it normalised."""
    raw = str(axes).strip().upper()
    bad = sorted(set(raw) - set(AXIS_LETTERS))
    if bad:
        raise AxesError(
            f"axes {axes!r}: unknown letter(s) {''.join(bad)!r}; use letters from {AXIS_LETTERS}"
        )
    norm = raw.replace("S", "C")
    if len(norm) != ndim:
        raise AxesError(f"axes {axes!r} has {len(norm)} letters but the data has {ndim} dimensions")
    repeated = sorted({a for a in norm if norm.count(a) > 1})
    if repeated:
        raise AxesError(f"axes {axes!r}: repeated axis {''.join(repeated)!r} (S counts as C)")
    if "Y" not in norm or "X" not in norm:
        raise AxesError(f"axes {axes!r} must contain both Y and X")
    return norm


def guess_axes(shape: Sequence[int], axes: str | None = None) -> str:
    """Validate ``axes`` for an array of ``shape``, or guess them when ``None``.

    A given axes string must have one letter per dimension, use letters from
    ``TZYXCS`` without repeats (``S`` counts as ``C``) and contain ``Y`` and
    ``X``; it is returned upper-cased with ``S`` replaced by ``C``.

    Guessing rules (``shape`` in NumPy order):

    ====  ==========================================================  =========
    ndim  condition                                                   axes
    ====  ==========================================================  =========
    2     always                                                      ``YX``
    3     last dim is 3 or 4 (RGB / RGBA)                             ``YXC``
    3     otherwise (a stack of planes, e.g. a FITS cube)             ``ZYX``
    4     last dim is 3 or 4                                          ``ZYXC``
    4     otherwise                                                   ``TZYX``
    5     last dim > 4, dim 2 <= 4 and dims 3, 4 > 4 (ImageJ order)   ``TZCYX``
    5     otherwise                                                   ``TZYXC``
    ====  ==========================================================  =========

    Anything else raises :class:`AxesError`; pass ``axes`` explicitly then.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if axes is not None:
        return _validate(axes, ndim)
    if ndim == 2:
        return "YX"
    if ndim == 3:
        return "YXC" if shape[-1] in _RGB_SIZES else "ZYX"
    if ndim == 4:
        return "ZYXC" if shape[-1] in _RGB_SIZES else "TZYX"
    if ndim == 5:
        if shape[-1] > 4 and shape[2] <= 4 and shape[3] > 4:
            return "TZCYX"
        return "TZYXC"
    raise AxesError(
        f"cannot guess axes for a {ndim}-D array of shape {shape}; "
        "give them explicitly (letters TZYXC, e.g. 'TZCYX')"
    )


def canonical_axes(axes: str) -> str:
    """The canonical axes string for (normalised) ``axes``: stack axes, ``YX``, ``C``.

    ``C`` is always present in the result, whether or not ``axes`` has it.
    """
    norm = normalize_axes(axes)
    return "".join(a for a in "TZ" if a in norm) + "YXC"


def spatial_axes(axes: str) -> str:
    """``axes`` without the channel axis (``C``/``S``), order kept."""
    return normalize_axes(axes).replace("C", "")


def stack_axes(axes: str) -> str:
    """The stack axes (``T``/``Z``) of ``axes``, order kept."""
    return "".join(a for a in normalize_axes(axes) if a in "TZ")


def spatial_shape(shape: Sequence[int], axes: str) -> tuple[int, ...]:
    """``shape`` without the channel axis; this is the shape of a label image."""
    norm = normalize_axes(axes)
    if len(norm) != len(shape):
        raise AxesError(f"axes {axes!r} has {len(norm)} letters but shape {tuple(shape)} has {len(shape)}")
    return tuple(int(s) for s, a in zip(shape, norm) if a != "C")


def to_canonical(data: Any, axes: str) -> tuple[Any, str]:
    """Reorder ``data`` (NumPy or Dask) to the canonical order; return ``(array, axes)``.

    The result has its stack axes first (``T`` then ``Z``), then ``Y``, ``X``
    and finally ``C``; a missing ``C`` is added with size 1.  Only
    ``transpose`` and ``[..., None]`` are used, so NumPy results are views and
    Dask arrays stay lazy.

    >>> import numpy as np
    >>> a, ax = to_canonical(np.zeros((2, 3, 5, 7)), "CZYX")
    >>> a.shape, ax
    ((3, 5, 7, 2), 'ZYXC')
    """
    norm = guess_axes(data.shape, axes)
    target = canonical_axes(norm)
    present = [a for a in target if a in norm]
    perm = tuple(norm.index(a) for a in present)
    out = data.transpose(perm) if perm != tuple(range(len(perm))) else data
    if "C" not in norm:
        out = out[..., None]
    return out, target


def from_canonical(labels: Any, canonical: str, original_axes: str) -> Any:
    """Map a label array in canonical order back to the original axes order, minus ``C``.

    ``labels`` has the canonical spatial axes (``canonical`` without ``C``,
    e.g. ``ZYX`` for ``ZYXC``); a trailing ``C`` of size 1 is also accepted and
    dropped.  The result has the axes of ``original_axes`` without ``C`` in
    their original order, i.e. the input image's shape minus its channel axis.
    """
    canon = normalize_axes(canonical)
    spatial = canon.replace("C", "")
    if labels.ndim == len(canon) and "C" in canon:
        c_size = labels.shape[canon.index("C")]
        if c_size != 1:
            raise AxesError(f"labels have a channel axis of size {c_size}; expected none or size 1")
        labels = labels[(slice(None),) * canon.index("C") + (0,)]
    if labels.ndim != len(spatial):
        raise AxesError(
            f"labels of shape {tuple(labels.shape)} do not match canonical spatial axes {spatial!r}"
        )
    target = spatial_axes(original_axes)
    if sorted(target) != sorted(spatial):
        raise AxesError(f"axes {original_axes!r} do not match canonical axes {canonical!r}")
    perm = tuple(spatial.index(a) for a in target)
    return labels.transpose(perm) if perm != tuple(range(len(perm))) else labels


def _n_stack(axes: str) -> int:
    """Number of leading stack axes in a canonical axes string."""
    norm = normalize_axes(axes)
    if not norm.endswith("YXC") or any(a not in "TZ" for a in norm[:-3]):
        raise AxesError(f"axes {axes!r} are not canonical (expected e.g. 'YXC', 'ZYXC', 'TZYXC')")
    return len(norm) - 3


def n_planes(shape: Sequence[int] | Any, axes: str) -> int:
    """Number of ``YXC`` planes in a canonical array (or its shape): product of stack sizes."""
    shape = tuple(getattr(shape, "shape", shape))
    return math.prod(shape[: _n_stack(axes)])


def iter_planes(data: Any, axes: str) -> Iterator[tuple[tuple[int, ...], Any]]:
    """Yield ``(index, plane)`` for every ``YXC`` plane of a canonical array.

    ``index`` is the tuple of stack indices (``()`` for a single ``YXC``
    image), so ``data[index]`` is ``plane``.  Planes of Dask arrays stay lazy.
    """
    n = _n_stack(axes)
    if data.ndim != len(normalize_axes(axes)):
        raise AxesError(f"array of {data.ndim} dimensions does not match axes {axes!r}")
    for index in _ndindex(tuple(data.shape[:n])):
        yield index, data[index]


def _ndindex(shape: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """Like :func:`numpy.ndindex` (C order), yielding ``()`` once for an empty shape."""
    import numpy as np

    yield from (tuple(int(i) for i in idx) for idx in np.ndindex(*shape))
