"""Synthetic fluorescence images of cell nuclei with exact instance labels.

The simulator is used by tests, napari sample data, benchmarks and to train the
shipped default models, which are then applied to *real* images.  Realism and
diversity therefore matter more than prettiness: every call draws its own
"acquisition style" (nucleus size, shape irregularity, texture, PSF, background,
camera noise, SNR) from the seed, so a set of calls looks like a mix of
DSB2018 / BBBC fluorescence images and 3-D nuclei stacks.

Image formation, in order:

1. Nuclei are star-shaped ellipses (2-D) or ellipsoids (3-D) with a smooth random
   radial perturbation, random size, elongation and orientation.  Shapes are built in
   physical units; in 3-D the Z voxel is ``anisotropy`` times larger than the XY one.
2. Placement: free nuclei are put at random positions without overlap; a ``touching``
   fraction are put against an already placed neighbour (centre distance 0.8-1.0x the
   sum of their radii along that direction), so they touch or overlap slightly.
   Overlapping pixels go to the nucleus "on top" (random), every nucleus is then
   reduced to one 4/6-connected component (fragments go to the neighbour they touch),
   so labels are exact and each labelled pixel belongs to exactly one nucleus.
3. Intensity: per-nucleus brightness (log-normal, smaller nuclei slightly brighter as
   DNA is more condensed, a few small very bright "mitotic" nuclei), soft sigmoid edge
   (the label boundary sits near half maximum), optional bright rim (lamina-like),
   internal brightness gradient, darker nucleoli, multiplicative chromatin texture
   (smoothed noise + small bright foci).  In 2-D, overlapping nuclei add up.
4. Optics: Gaussian PSF (Z sigma 2-3.5x the XY one in physical units), a broad haze of
   out-of-focus light, and in 2-D occasional out-of-focus nuclei: dim, heavily blurred
   blobs that are **not labelled** (they belong to another focal plane; annotators of
   DSB/BBBC-like data mostly skip them).  In 3-D, optional intensity decay with depth.
5. Camera: smooth background (offset, gradient, vignetting, low-frequency pattern),
   Poisson photon noise, Gaussian read noise, gain and baseline offset.  The output is
   float32 in (roughly) photon counts, not normalised.

SNR is defined as median nucleus signal (photons above background) divided by the
background noise std; when ``snr`` is None it is drawn log-uniformly in [3, 80].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import block_reduce

__all__ = ["SimulatedImage", "simulate_nuclei", "simulate_nuclei_dataset"]


@dataclass
class SimulatedImage:
    """A simulated image with exact instance labels.

    image: float32 (Y,X) or (Z,Y,X), roughly photon counts (not normalised).
    labels: int32 instance labels, 0 = background, same shape as ``image``.
    meta: parameters actually used (seed, number of nuclei, SNR, PSF, ...).
    """

    image: np.ndarray
    labels: np.ndarray
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- style


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Draw from a log-uniform distribution (scale parameters span decades)."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


#: How each style key of an image is drawn, in this order (the order fixes what a seed produces),
#: grouped by what it shapes: ``(name, "uniform", lo, hi)``, ``(name, "log", lo, hi)`` (log-uniform:
#: scale parameters span decades) or ``(name, "maybe", lo, hi, p_zero)`` (0 with probability
#: ``p_zero``, one half when ``None``, else uniform). Radii in px, noise in electrons, gain in ADU/e.
_STYLE: tuple[tuple, ...] = (
    # nucleus shape: size spread (log-normal), elongation (aspect ratio), radial perturbation
    ("radius_spread", "uniform", 0.08, 0.25), ("elong_sigma", "uniform", 0.08, 0.4),
    ("irregularity", "uniform", 0.0, 0.12),
    # brightness and cell state
    ("brightness_cv", "uniform", 0.1, 0.8), ("size_brightness_exp", "uniform", 0.0, 1.0),
    ("mitotic_frac", "maybe", 0.0, 0.06, None),
    # the edge (sigmoid width), a bright rim, a gradient inside, nucleoli
    ("edge_width", "uniform", 0.25, 0.7), ("rim_amp", "maybe", 0.2, 0.7, 0.8), ("rim_width", "uniform", 0.8, 2.0),
    ("inner_gradient", "uniform", 0.0, 0.25), ("nucleoli_prob", "uniform", 0.0, 0.7),
    ("nucleoli_depth", "uniform", 0.15, 0.6),
    # chromatin texture and foci
    ("texture_amp", "uniform", 0.03, 0.35), ("texture_sigma", "uniform", 0.6, 2.5),
    ("foci_density", "uniform", 0.0, 0.03), ("foci_amp", "uniform", 0.0, 0.8), ("foci_sigma", "uniform", 0.6, 1.4),
    # optics: PSF and haze
    ("psf_sigma", "uniform", 0.6, 1.8), ("psf_axial_ratio", "uniform", 2.0, 3.5),
    ("haze_frac", "uniform", 0.0, 0.15), ("haze_sigma", "uniform", 6.0, 20.0),
    # background (relative to the nucleus signal) and camera
    ("bg_frac", "log", 0.01, 0.4), ("bg_gradient", "uniform", 0.0, 0.6), ("bg_vignetting", "uniform", 0.0, 0.4),
    ("bg_pattern", "uniform", 0.0, 0.2), ("read_noise", "log", 0.5, 8.0), ("gain", "log", 0.5, 3.0),
    ("offset", "maybe", 10.0, 120.0, None),
    # out-of-focus nuclei (2-D) and intensity decay with depth (3-D, 1/stack depth)
    ("out_of_focus_frac", "maybe", 0.03, 0.2, 0.6), ("depth_decay", "maybe", 0.2, 1.0, None),
)


def _draw(rng: np.random.Generator, kind: str, lo: float, hi: float, p_zero: float | None = None) -> Any:
    """One value of a :data:`_STYLE` distribution."""
    if kind == "uniform":
        return rng.uniform(lo, hi)
    if kind == "log":
        return _loguniform(rng, lo, hi)
    return rng.choice([0.0, rng.uniform(lo, hi)], p=None if p_zero is None else [p_zero, 1.0 - p_zero])


def _draw_style(rng: np.random.Generator, radius_range, snr) -> dict:
    """Per-image acquisition/biology style so that many calls form a diverse set."""
    st = {"radius_typ": rng.uniform(float(radius_range[0]), float(radius_range[1]))}  # typical radius here
    st.update((name, _draw(rng, *spec)) for name, *spec in _STYLE)
    st["offset"] = float(st["offset"])
    st["snr"] = float(snr) if snr is not None else _loguniform(rng, 3.0, 80.0)
    return st


# --------------------------------------------------------------------------- shapes


def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """Uniform random rotation matrix (columns = body axes in image coordinates)."""
    if ndim == 2:
        t = rng.uniform(0, np.pi)
        return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@dataclass
class _Nucleus:
    """Geometry and appearance of one nucleus (physical units, XY pixel = 1)."""

    semi_axes: np.ndarray      # body-frame semi-axes, one per dim
    rot: np.ndarray            # body -> image rotation
    pert_k: np.ndarray         # perturbation wave vectors (3-D) or harmonics (2-D)
    pert_a: np.ndarray         # amplitudes
    pert_p: np.ndarray         # phases
    brightness: float
    texture_gain: float
    nucleoli: list             # [(centre in body frame, sigma, depth)]
    grad_dir: np.ndarray       # body-frame direction of the internal brightness gradient

    @property
    def radius(self) -> float:
        return float(np.exp(np.mean(np.log(self.semi_axes))))

    @property
    def rmax(self) -> float:
        return float(self.semi_axes.max() * (1.0 + np.abs(self.pert_a).sum()))


def _draw_nucleus(rng: np.random.Generator, ndim: int, st: dict, radius_range) -> _Nucleus:
    """Draw size, shape and appearance of one nucleus from the image style."""
    r0, r1 = radius_range
    r = st["radius_typ"] * np.exp(rng.normal(0, st["radius_spread"]))
    r = float(np.clip(r, r0, r1))
    brightness = np.exp(rng.normal(0, st["brightness_cv"]))
    brightness *= (st["radius_typ"] / r) ** st["size_brightness_exp"]
    texture_gain = 1.0
    if rng.random() < st["mitotic_frac"]:           # condensed, small, bright
        r = max(0.6 * r, 2.0)
        brightness *= rng.uniform(1.8, 3.0)
        texture_gain = 2.0
    elong = 1.0 + min(abs(rng.normal(0, st["elong_sigma"])), 1.2)
    if ndim == 2:
        semi = np.array([r * np.sqrt(elong), r / np.sqrt(elong)])
        k = np.arange(2, 7, dtype=float)
        amps = st["irregularity"] * rng.normal(size=k.size) / (k - 1)
    else:
        flat = rng.uniform(0.65, 1.0)
        semi = np.array([r * np.sqrt(elong), r / np.sqrt(elong), r * flat])
        semi *= r / np.exp(np.mean(np.log(semi)))
        k = rng.normal(size=(4, 3))
        k *= (rng.uniform(1.5, 4.0, size=4) / np.linalg.norm(k, axis=1))[:, None]
        amps = st["irregularity"] * rng.normal(size=4) / 2
    scale = min(1.0, 0.35 / max(np.abs(amps).sum(), 1e-9))
    nucleoli = []
    if rng.random() < st["nucleoli_prob"]:
        for _ in range(rng.integers(1, 4)):
            c = semi * rng.uniform(-0.45, 0.45, size=ndim)
            nucleoli.append((c, r * rng.uniform(0.1, 0.22), st["nucleoli_depth"] * rng.uniform(0.6, 1.2)))
    grad = rng.normal(size=ndim)
    return _Nucleus(semi, _random_rotation(rng, ndim), k, amps * scale,
                    rng.uniform(0, 2 * np.pi, size=amps.size), float(brightness), texture_gain,
                    nucleoli, grad / np.linalg.norm(grad))


def _dir_radius(nuc: _Nucleus, unit_body: np.ndarray) -> np.ndarray:
    """Ellipse/ellipsoid radius along body-frame unit vectors (ndim, N)."""
    inv = (1.0 / nuc.semi_axes[:, None]).astype(unit_body.dtype)
    return 1.0 / np.sqrt(np.sum((unit_body * inv) ** 2, axis=0))


def _perturbation(nuc: _Nucleus, unit_body: np.ndarray) -> np.ndarray:
    """Smooth multiplicative radial perturbation along body-frame unit vectors."""
    dt = unit_body.dtype
    if unit_body.shape[0] == 2:
        theta = np.arctan2(unit_body[1], unit_body[0])
        arg = nuc.pert_k[:, None].astype(dt) * theta[None] + nuc.pert_p[:, None].astype(dt)
    else:
        arg = nuc.pert_k.astype(dt) @ unit_body + nuc.pert_p[:, None].astype(dt)
    return nuc.pert_a.astype(dt) @ np.cos(arg)


def _rasterize(nuc: _Nucleus, frac: np.ndarray, spacing: np.ndarray):
    """Local grid of one nucleus: returns (mask, depth, body coords, half-size).

    ``frac`` is the sub-pixel part of the centre (index units), ``spacing`` the
    voxel size.  ``depth`` is the distance (physical px) from the boundary along
    the ray from the centre: >0 inside; it drives the soft edge and the rim.
    """
    half = np.ceil(nuc.rmax / spacing).astype(int) + 1
    grids = np.meshgrid(*[np.arange(-h, h + 1, dtype=np.float32) for h in half], indexing="ij")
    pts = np.stack([(g.ravel() - np.float32(f)) * np.float32(s) for g, f, s in zip(grids, frac, spacing)])
    body = nuc.rot.T.astype(np.float32) @ pts
    r = np.sqrt(np.einsum("ij,ij->j", body, body))
    unit = body / np.maximum(r, np.float32(1e-6))
    unit[0, r < 1e-6] = 1.0
    boundary = _dir_radius(nuc, unit) * (1.0 + _perturbation(nuc, unit))
    depth = (boundary - r).reshape(grids[0].shape)
    return depth > 0, depth, body, half


# --------------------------------------------------------------------------- placement


def _window(center: np.ndarray, half: np.ndarray, shape: tuple):
    """Image slices and local slices of a local box centred at an integer position."""
    img_sl, loc_sl = [], []
    for c, h, n in zip(center, half, shape):
        lo, hi = c - h, c + h + 1
        a, b = max(lo, 0), min(hi, n)
        if a >= b:
            return None
        img_sl.append(slice(a, b))
        loc_sl.append(slice(a - lo, b - lo))
    return tuple(img_sl), tuple(loc_sl)


def _try_position(occupied, mask, area, half, center, max_overlap):
    """Return windows if the nucleus at ``center`` overlaps <= max_overlap of its area."""
    win = _window(center, half, occupied.shape)
    if win is None:
        return None
    img_sl, loc_sl = win
    m = mask[loc_sl]
    inside = np.count_nonzero(m)
    if inside < 0.3 * area:                  # mostly outside the image
        return None
    overlap = np.count_nonzero(np.logical_and(occupied[img_sl], m))
    if overlap > max_overlap * inside:
        return None
    return win


def _touching_center(rng, nuc: _Nucleus, placed: list, clump: bool = False) -> np.ndarray:
    """Centre (physical) that puts ``nuc`` against an already-placed neighbour.

    Touching: a random neighbour, centre distance 0.8-1.0x the sum of the radii.  Clump: the
    neighbour is one of the last three placed (so clumps of 2-4 grow) and the nuclei are
    pressed together (0.75-0.92x), as in dense real clumps.
    """
    other, oc = placed[-int(rng.integers(1, min(3, len(placed)) + 1)) if clump else rng.integers(len(placed))]
    d = rng.normal(size=oc.size)
    d /= np.linalg.norm(d)
    r_other = _dir_radius(other, (other.rot.T @ d)[:, None])[0]
    r_self = _dir_radius(nuc, (nuc.rot.T @ -d)[:, None])[0]
    return oc + d * (r_other + r_self) * (rng.uniform(0.75, 0.92) if clump else rng.uniform(0.8, 1.0))


def _place_all(rng, nuclei, shape, spacing, touching, clump=0.0):
    """Place nuclei one by one (rejection sampling on an occupancy map).

    Each nucleus is rasterised once (random sub-pixel centre) and then shifted by
    whole pixels; free nuclei may not overlap anything, touching ones may overlap
    up to 20 % of their area, clumped ones (a ``clump`` fraction, tried first; no
    random draw at all when 0, so default output is unchanged) up to 30 %.
    Returns (nucleus, centre, mask, depth, body, windows).
    """
    placed, out = [], []
    extent = np.array(shape) * spacing
    occupancy = np.zeros(shape, bool)
    failures = 0
    for nuc in nuclei:
        if failures >= 25:                  # the field is full: stop trying
            break
        frac = rng.random(len(shape))
        mask, depth, body, half = _rasterize(nuc, frac, spacing)
        area = np.count_nonzero(mask)
        want_clump = clump > 0 and bool(placed) and rng.random() < clump
        want_touch = bool(placed) and rng.random() < touching
        failures += 1
        for attempt in range(30):
            touch = (want_touch or want_clump) and attempt < 12
            cphys = _touching_center(rng, nuc, placed, want_clump) if touch else rng.uniform(0, extent)
            cint = np.round(cphys / spacing - frac).astype(int)
            win = _try_position(occupancy, mask, area, half, cint, (0.3 if want_clump else 0.2) if touch else 0.0)
            if win is not None:
                occupancy[win[0]] |= mask[win[1]]
                centre = (cint + frac) * spacing
                placed.append((nuc, centre))
                out.append((nuc, centre, mask, depth, body, win))
                failures = 0
                break
    return out


# --------------------------------------------------------------------------- painting


def _local_intensity(nuc: _Nucleus, depth, body, st) -> np.ndarray:
    """Appearance of one nucleus on its local grid (before texture and optics)."""
    f32 = np.float32
    z = np.clip(depth * f32(1.0 / st["edge_width"]), -30, 30)
    val = f32(1.0) / (f32(1.0) + np.exp(-z))
    if st["rim_amp"] > 0:
        val += f32(st["rim_amp"]) * np.exp(-np.maximum(depth, 0) * f32(1.0 / st["rim_width"]))
    b = body.reshape((-1,) + depth.shape)
    grad = (nuc.grad_dir * (st["inner_gradient"] / nuc.radius)).astype(f32)
    val *= f32(1.0) + np.tensordot(grad, b, 1)
    for c, s, dep in nuc.nucleoli:
        d2 = np.sum((b - c.astype(f32).reshape((-1,) + (1,) * depth.ndim)) ** 2, axis=0)
        val *= f32(1.0) - f32(min(dep, 0.9)) * np.exp(d2 * f32(-1.0 / (2 * s * s)))
    return f32(nuc.brightness) * np.clip(val, 0, None)


def _paint(rng, placements, shape, st, pressed=False):
    """Paint labels and noiseless nucleus intensity from the placements.

    ``pressed`` (2-D): overlapping nuclei are pressed against each other rather than stacked,
    so their intensity does not add up (no bright seam betraying the contact).
    """
    labels = np.zeros(shape, np.int32)
    inten = np.zeros(shape, np.float32)
    tex_gain = np.ones(len(placements) + 1, np.float32)
    additive = len(shape) == 2 and not pressed   # 2-D: overlapping nuclei add up (projection)
    for lab, (nuc, _, mask, depth, body, (img_sl, loc_sl)) in enumerate(placements, start=1):
        tex_gain[lab] = nuc.texture_gain
        m = mask[loc_sl]
        val = _local_intensity(nuc, depth, body, st)[loc_sl]
        lab_sl, int_sl = labels[img_sl], inten[img_sl]
        on_top = rng.random() < 0.5
        write = m if on_top else m & (lab_sl == 0)
        lab_sl[write] = lab
        if additive:
            int_sl[m] += val[m]
        else:
            int_sl[write] = val[write]
    return labels, inten, tex_gain


def _single_components(labels: np.ndarray, inten: np.ndarray, min_size: int) -> np.ndarray:
    """Keep one connected component per label; fragments go to the touching neighbour.

    Fragments with no labelled neighbour (or tiny objects) are unlabelled and their
    intensity removed so that labels stay exact.
    """
    ndim = labels.ndim
    for lab, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        sub = labels[sl]
        cc, n = ndi.label(sub == lab)
        if n <= 1 and (n == 0 or np.count_nonzero(cc) >= min_size):
            continue
        sizes = np.bincount(cc.ravel())[1:]
        keep = int(np.argmax(sizes)) + 1
        for k in range(1, n + 1):
            if k == keep and sizes[k - 1] >= min_size:
                continue
            frag = cc == k
            ring = ndi.binary_dilation(frag, ndi.generate_binary_structure(ndim, 1)) & ~frag
            neigh = sub[ring]
            neigh = neigh[(neigh != 0) & (neigh != lab)]
            if neigh.size and k != keep:
                sub[frag] = np.bincount(neigh).argmax()
            else:
                sub[frag] = 0
                inten[sl][frag] = 0
    return labels


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive labels 1..N in order of first appearance of each id."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lut[labels]


# --------------------------------------------------------------------------- optics / camera


def _smooth_noise(rng, shape, sigma) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-smoothed white noise."""
    f = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, truncate=3.0)
    return f / max(float(f.std()), 1e-6)


def _interp_matrix(n_small: int, n: int) -> np.ndarray:
    """(n, n_small) linear-interpolation matrix mapping cell centres of a coarse axis."""
    x = (np.arange(n) + 0.5) * n_small / n - 0.5
    x = np.clip(x, 0, n_small - 1)
    i0 = np.minimum(np.floor(x).astype(int), max(n_small - 2, 0))
    w = x - i0
    m = np.zeros((n, n_small), np.float32)
    m[np.arange(n), i0] = 1 - w
    if n_small > 1:
        m[np.arange(n), i0 + 1] += w
    return m


def _upsample(small: np.ndarray, shape: tuple) -> np.ndarray:
    """Separable linear upsampling via small matrix products (fast, smooth input)."""
    out = small.astype(np.float32)
    for ax, n in enumerate(shape):
        out = np.moveaxis(np.tensordot(_interp_matrix(out.shape[ax], n), out, axes=(1, ax)), 0, ax)
    return np.ascontiguousarray(out)


def _smooth_large(img: np.ndarray, sigma: float) -> np.ndarray:
    """Cheap wide Gaussian blur: block-average, blur, linear upsample."""
    f = max(1, int(sigma // 3))
    small = block_reduce(img, (f,) * img.ndim, np.mean, cval=float(img.mean())) if f > 1 else img
    small = ndi.gaussian_filter(small, sigma / f, mode="reflect", truncate=3.0)
    return _upsample(small, img.shape)


def _texture(rng, inten, labels, tex_gain, st) -> np.ndarray:
    """Multiplicative chromatin texture: smoothed noise plus small bright foci."""
    shape = inten.shape
    gain = tex_gain[labels]
    tex = 1.0 + st["texture_amp"] * gain * _smooth_noise(rng, shape, st["texture_sigma"])
    if st["foci_density"] > 0 and st["foci_amp"] > 0:
        pts = (rng.random(shape, dtype=np.float32) < st["foci_density"]).astype(np.float32)
        s = st["foci_sigma"]
        foci = ndi.gaussian_filter(pts, s, truncate=3.0) * (2 * np.pi * s * s) ** (len(shape) / 2)
        tex += st["foci_amp"] * gain * foci
    return inten * np.clip(tex, 0.05, None)


def _out_of_focus(rng, shape, st, radius_range) -> tuple[np.ndarray, int]:
    """2-D only: dim, strongly blurred, unlabelled nuclei from other focal planes."""
    n_area = np.prod(shape) / (np.pi * st["radius_typ"] ** 2)
    n = int(rng.poisson(st["out_of_focus_frac"] * n_area * 0.5))
    img = np.zeros(shape, np.float32)
    spacing = np.ones(2)
    for _ in range(n):
        nuc = _draw_nucleus(rng, 2, st, radius_range)
        c = rng.uniform(0, shape)
        ci = np.floor(c).astype(int)
        mask, depth, body, half = _rasterize(nuc, c - ci, spacing)
        win = _window(ci, half, shape)
        if win is not None:
            img[win[0]] += (mask * rng.uniform(0.1, 0.35))[win[1]]
    if n:
        img = ndi.gaussian_filter(img, rng.uniform(2.5, 6.0), truncate=3.0)
    return img, n


def _background(rng, shape, st) -> np.ndarray:
    """Smooth relative background: 1 + linear gradient + vignetting + soft pattern."""
    coords = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape],
                         indexing="ij", sparse=True)
    d = rng.normal(size=len(shape))
    d /= np.linalg.norm(d)
    bg = 1.0 + st["bg_gradient"] * 0.5 * sum(di * c for di, c in zip(d, coords))
    bg = bg - st["bg_vignetting"] * 0.5 * sum(c ** 2 for c in coords[-2:])
    if st["bg_pattern"] > 0:
        small = tuple(max(2, n // 16) for n in shape)
        pat = _smooth_noise(rng, small, 1.5)
        bg = bg + st["bg_pattern"] * _upsample(pat, shape)
    return np.clip(bg, 0.2, None).astype(np.float32)


def _signal_scale(snr: float, bg_frac: float, read: float) -> float:
    """Photons S of a median nucleus giving ``snr`` = S / sqrt(bg_frac*S + read^2)."""
    a = snr * snr * bg_frac
    return float((a + np.sqrt(a * a + 4 * snr * snr * read * read)) / 2)


def _psf_blur(img, st, anisotropy):
    """Gaussian PSF; in 3-D the axial sigma (voxels) accounts for the anisotropy."""
    s = st["psf_sigma"]
    sig = (s,) * 2 if img.ndim == 2 else (s * st["psf_axial_ratio"] / anisotropy, s, s)
    return ndi.gaussian_filter(img, sig, truncate=3.0)


# --------------------------------------------------------------------------- public API


def simulate_nuclei(
    shape: tuple[int, ...] = (256, 256),
    *,
    n_nuclei: int | None = None,
    radius_range: tuple[float, float] = (5.0, 12.0),
    density: float = 0.5,
    touching: float = 0.3,
    anisotropy: float = 1.0,
    snr: float | None = None,
    seed: int = 0,
    clump: float = 0.0,
) -> SimulatedImage:
    """Simulate a fluorescence image (2-D) or stack (3-D, Z,Y,X) of nuclei.

    Parameters
    ----------
    shape: (Y,X) or (Z,Y,X) size in pixels/voxels.
    n_nuclei: number of nuclei to place; if None, as many as needed to cover about
        ``density`` of the area (volume).  Fewer may fit when the field is crowded.
    radius_range: min/max nucleus radius in XY pixels; each image picks a typical radius
        in this range and nuclei vary around it.
    density: target covered fraction when ``n_nuclei`` is None.
    touching: fraction of nuclei placed against an existing neighbour.
    clump: fraction of nuclei pressed into small clumps (against one of the last placed,
        overlapping up to 30 %; in 2-D their overlaps then do not add up in intensity).
        For training detectors that see too few touching pairs; 0 (default) leaves the
        output exactly as without this option.
    anisotropy: Z voxel size / XY voxel size (3-D only), e.g. 2 = Z is squashed 2x.
    snr: median nucleus signal / background noise std; random in [3, 80] when None.
    seed: makes the result deterministic.

    Returns
    -------
    SimulatedImage with float32 image, int32 labels (every label one face-connected
    component) and ``meta``.  Out-of-focus nuclei (2-D) are in the image but unlabelled.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be 2-D or 3-D, got {shape}")
    ndim = len(shape)
    rng = np.random.default_rng(seed)
    radius_range = (float(min(radius_range)), float(max(radius_range)))
    st = _draw_style(rng, radius_range, snr)
    spacing = np.array([float(anisotropy), 1.0, 1.0][-ndim:])

    nuclei = _draw_population(rng, ndim, st, radius_range, shape, spacing, n_nuclei, density)
    placements = _place_all(rng, nuclei, shape, spacing, touching, clump)
    labels, inten, tex_gain = _paint(rng, placements, shape, st, pressed=clump > 0)
    labels = _single_components(labels, inten, min_size=6 if ndim == 2 else 12)
    inten = _texture(rng, inten, labels, tex_gain, st)

    n_oof = 0
    if ndim == 2 and st["out_of_focus_frac"] > 0:
        oof, n_oof = _out_of_focus(rng, shape, st, radius_range)
        inten = inten + oof
    if ndim == 3 and st["depth_decay"] > 0:
        z = np.arange(shape[0], dtype=np.float32) / max(shape[0] - 1, 1)
        inten = inten * np.exp(-st["depth_decay"] * z)[:, None, None]

    obj = _psf_blur(inten, st, anisotropy)
    if st["haze_frac"] > 0:
        obj = obj + st["haze_frac"] * _smooth_large(obj, st["haze_sigma"])
    image = _camera(rng, obj, labels, st)
    labels = _relabel(labels)
    meta = dict(seed=seed, shape=shape, ndim=ndim, n_nuclei=int(labels.max()),
                n_requested=len(nuclei), n_out_of_focus=n_oof,
                coverage=float(np.count_nonzero(labels)) / labels.size,
                anisotropy=float(anisotropy), touching=float(touching),
                radius_range=radius_range, density=float(density),
                out_of_focus_labelled=False, **{k: _py(v) for k, v in st.items()})
    if clump > 0:
        meta["clump"] = float(clump)
    return SimulatedImage(image=image, labels=labels.astype(np.int32), meta=meta)


def _py(v):
    """numpy scalar -> python scalar for a clean, serialisable meta dict."""
    return v.item() if isinstance(v, np.generic) else v


def _draw_population(rng, ndim, st, radius_range, shape, spacing, n_nuclei, density):
    """Draw nuclei until ``n_nuclei`` or until their volume reaches ``density``."""
    total = float(np.prod(np.array(shape) * spacing))
    unit = np.pi if ndim == 2 else 4.0 / 3.0 * np.pi
    nuclei, covered = [], 0.0
    limit = n_nuclei if n_nuclei is not None else 100000
    while len(nuclei) < limit:
        if n_nuclei is None and covered >= density * total:
            break
        nuc = _draw_nucleus(rng, ndim, st, radius_range)
        nuclei.append(nuc)
        covered += unit * float(np.prod(nuc.semi_axes))
    return nuclei


def _camera(rng, obj, labels, st) -> np.ndarray:
    """Scale to photons for the target SNR, add background, shot and read noise."""
    inside = obj[labels > 0]
    med = float(np.median(inside)) if inside.size else float(obj.max() or 1.0)
    S = _signal_scale(st["snr"], st["bg_frac"], st["read_noise"])
    st["signal_photons"] = S
    expected = obj * (S / max(med, 1e-6))
    expected += (st["bg_frac"] * S) * _background(rng, obj.shape, st)
    photons = rng.poisson(np.clip(expected, 0, None)).astype(np.float32)
    electrons = photons + np.float32(st["read_noise"]) * rng.standard_normal(obj.shape, dtype=np.float32)
    return (st["offset"] + st["gain"] * electrons).astype(np.float32)


def simulate_nuclei_dataset(n: int, shape: tuple[int, ...] = (256, 256), seed: int = 0,
                            clump: float = 0.0) -> list[SimulatedImage]:
    """``n`` diverse images: density, touching, size scale and anisotropy vary per image.

    ``clump`` is passed to every :func:`simulate_nuclei` call (0: the images are exactly those without it).
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(int(n)):
        zoom = _loguniform(rng, 0.6, 1.8)
        kw = dict(
            density=float(rng.uniform(0.15, 0.6)),
            touching=float(rng.uniform(0.0, 0.6)),
            radius_range=(4.0 * zoom, 12.0 * zoom),
            seed=int(rng.integers(2**31)),
        )
        if len(shape) == 3:
            kw["anisotropy"] = float(rng.choice([1.0, rng.uniform(1.0, 4.0)]))
        out.append(simulate_nuclei(shape, clump=clump, **kw))
    return out
