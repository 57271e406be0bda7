"""Simulated astronomical exposures (galaxies + stars) with GalSim and exact ground truth.

Each call draws its own observing conditions from the seed (PSF FWHM and profile,
noise level, source densities, flux-count slope) so that many calls form a diverse
training/benchmark set resembling ground-based survey images (HSC/DES/LSST-like).

Model
-----
* **PSF**: Moffat (beta 2.2-4.5, 60 %) or Kolmogorov (40 %), FWHM 0.5-1.2" by default,
  with a small random ellipticity (|g| ~ 0.03).
* **Galaxies**: de Vaucouleurs bulge (Sersic n=4) + exponential disk (Sersic n=1),
  optionally with star-forming knots (``galsim.RandomKnots``, part of the disk flux),
  sharing one orientation; the bulge is smaller and rounder than the disk.  Fluxes
  follow a truncated power law N(>F) ~ F^-alpha (alpha 0.6-0.9, like faint galaxy
  counts) starting *below* the detection limit, so a realistic population of
  undetected faint galaxies sits in the background and is absent from the labels.
  Half-light radius grows with flux (hlr ~ F^0.3, log-normal scatter).  Galaxies with
  S/N < 5 are pure disks and only S/N > 20 ones get knots (invisible otherwise; cheaper).
* **Large galaxies**: with ``n_large`` (or, per field in ``simulate_astro_dataset``, at
  random) one or more bright, nearby galaxies with half-light radii of 2-20 arcsec
  (tens to hundreds of pixels), often with star-forming knots, so that a field holds
  sources from PSF-like to hundreds of pixels across.
* **Stars**: the PSF itself, with a flatter power law over ~4.5 decades (some very
  bright).  With ``saturation`` (noise sigmas above the sky) the exposure saturates:
  pixels are clipped at the full well and the excess charge bleeds along the
  column, as in a CCD; the labels are unchanged (they come from the noiseless
  sources).
* **Blends**: a ``blend_fraction`` of sources is placed 0.5-2.5 combined sizes from an
  already placed, detectable source.
* **Noise**: image = sky + Poisson(source electrons) + Gaussian noise with std
  ``noise_sigma`` (``galsim.GaussianNoise``), sky variance dominating as in a real
  exposure.  ``correlated_noise=True`` (or ``"smooth"``) replaces the Gaussian part by
  ``galsim.UncorrelatedNoise(...).convolvedWith(galsim.Gaussian(sigma=0.4-0.9 px))
  .withVariance(noise_sigma**2)``, i.e. white noise smoothed by a kernel (like
  resampled/coadded images); ``"cosmos"`` uses GalSim's HST COSMOS noise correlation
  (``galsim.getCOSMOSNoise``, its correlation function laid on this image's pixels).
  Both keep the per-pixel variance.  A sky gradient of up to ``sky_gradient`` sigma
  across the field (linear, plus a quadratic term) is added to ``sky_level``.
* **Ground truth (the documented isophote)**: every source is drawn alone (noiseless,
  PSF-convolved).  A source is *detectable* when its isophotal signal-to-noise ratio,
  the noiseless flux inside its own ``k_sigma * noise_sigma`` isophote over
  ``noise_sigma * sqrt(isophotal area)``, reaches ``snr_min`` (default 5, the usual
  detection limit); fainter sources stay in the image (and in ``noiseless``) as part
  of the sky, but are in neither labels nor catalogue.  A pixel belongs to the
  *detectable* source contributing the most flux there, provided that flux exceeds the
  isophote ``k_sigma * noise_sigma`` (default 1.5 sigma, SExtractor's default
  detection threshold).  Each source keeps only its largest 8-connected piece (other
  pieces become background), sources with empty footprints are removed from labels
  *and* catalogue, and labels are renumbered 1..N in catalogue order.  ``blended``
  marks sources whose footprint touches (8-connectivity) another one.  The benchmark
  and the training of ``astro-sources`` use this same rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

__all__ = ["AstroField", "simulate_astro_field", "simulate_astro_dataset", "draw_source"]

_GSPARAMS = None


def _galsim():
    """Import GalSim lazily so that the nuclei simulator works without it."""
    try:
        import galsim
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("The astronomy simulator needs GalSim: pip install galsim") from e
    return galsim


def _gsparams():
    """Shared GSParams: small minimum FFT size keeps many small stamps fast."""
    global _GSPARAMS
    if _GSPARAMS is None:
        _GSPARAMS = _galsim().GSParams(minimum_fft_size=32, maximum_fft_size=8192)
    return _GSPARAMS


@dataclass
class AstroField:
    """A simulated exposure with its segmentation ground truth.

    image: float32 (Y,X), sky level + sources + noise, like a real exposure.
    labels: int32 segmentation map (0 = background), ids = catalogue ids.
    classes: label id -> "star" | "galaxy".
    noise_sigma: per-pixel background noise std; sky_level: mean sky per pixel.
    catalog: per source: id, class, x, y (pixel, x = column), flux, npix, blended,
        and for galaxies the bulge/disk parameters (see ``draw_source``).
    bulge, disk: noiseless PSF-convolved component images if requested, else None.
    noiseless: noiseless total of all sources (also undetected ones), without sky.
    meta: PSF and drawing parameters needed to redraw sources (``draw_source``).
    """

    image: np.ndarray
    labels: np.ndarray
    classes: dict
    noise_sigma: float
    sky_level: float
    catalog: list
    bulge: np.ndarray | None
    disk: np.ndarray | None
    noiseless: np.ndarray
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- conditions


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Draw from a log-uniform distribution."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _power_law(rng: np.random.Generator, n: int, fmin: float, fmax: float, alpha: float) -> np.ndarray:
    """Fluxes with N(>F) ~ F^-alpha truncated to [fmin, fmax] (inverse CDF sampling)."""
    u = rng.random(n)
    a, b = fmin ** -alpha, fmax ** -alpha
    return (a - u * (a - b)) ** (-1.0 / alpha)


NOISE_KINDS = ("white", "smooth", "cosmos")


def _noise_kind(correlated_noise: bool | str) -> str:
    """``False`` -> "white", ``True`` -> "smooth", or one of :data:`NOISE_KINDS` by name."""
    if isinstance(correlated_noise, str):
        if correlated_noise not in NOISE_KINDS:
            raise ValueError(f"unknown noise '{correlated_noise}' (choose {', '.join(NOISE_KINDS)})")
        return correlated_noise
    return "smooth" if correlated_noise else "white"


def _draw_conditions(rng, pixel_scale, psf_fwhm, sky_sigma, noise_kind, sky_gradient, density_scale) -> dict:
    """Observing conditions of one exposure (PSF, noise, sky, population slopes)."""
    moffat = rng.random() < 0.6
    g = rng.normal(0, 0.03, size=2)
    noise_sigma = float(sky_sigma) if sky_sigma is not None else _loguniform(rng, 3.0, 30.0)
    fwhm = float(psf_fwhm) if psf_fwhm is not None else rng.uniform(0.5, 1.2)
    sigma_px = fwhm / 2.355 / pixel_scale
    return dict(
        pixel_scale=float(pixel_scale),
        psf_type="moffat" if moffat else "kolmogorov",
        psf_fwhm=float(fwhm),
        psf_beta=float(rng.uniform(2.2, 4.5)),
        psf_g1=float(g[0]), psf_g2=float(g[1]),
        noise_sigma=noise_sigma,
        sky_level=noise_sigma ** 2 * rng.uniform(0.6, 1.0),
        sky_gradient=rng.uniform(0.0, 0.5 if sky_gradient is None else float(sky_gradient)) * noise_sigma,
        sky_curvature=rng.uniform(-0.5, 0.5),      # quadratic share of the gradient
        # flux of a point source with S/N = 1 (optimal, Gaussian-PSF approximation)
        flux_unit=noise_sigma * np.sqrt(4 * np.pi) * sigma_px,
        gal_alpha=rng.uniform(0.6, 0.9),
        star_alpha=rng.uniform(0.3, 0.6),
        gal_density=rng.uniform(80.0, 250.0) * density_scale,     # drawn galaxies / arcmin^2 (S/N > 1)
        star_density=_loguniform(rng, 3.0, 60.0) * density_scale,  # stars / arcmin^2
        hlr_typ=rng.uniform(0.3, 0.8),             # arcsec at S/N 100
        corr_sigma_px=rng.uniform(0.4, 0.9) if noise_kind == "smooth" else 0.0,
    )


def _make_psf(meta: dict):
    """GalSim PSF object from the condition dict (also used by ``draw_source``)."""
    galsim = _galsim()
    if meta["psf_type"] == "moffat":
        psf = galsim.Moffat(beta=meta["psf_beta"], fwhm=meta["psf_fwhm"], gsparams=_gsparams())
    else:
        psf = galsim.Kolmogorov(fwhm=meta["psf_fwhm"], gsparams=_gsparams())
    return psf.shear(g1=meta["psf_g1"], g2=meta["psf_g2"])


# --------------------------------------------------------------------------- sources


def _galaxy_params(rng, flux: float, cond: dict, hlr: float | None = None) -> dict:
    """Bulge+disk parameters of one galaxy (angles in radians, sizes in arcsec; ``hlr`` given for large ones)."""
    snr = flux / cond["flux_unit"]
    if hlr is None:
        hlr = cond["hlr_typ"] * (snr / 100.0) ** 0.3 * np.exp(rng.normal(0, 0.35))
        hlr = float(np.clip(hlr, 0.08, 4.0))
    bulge_frac = float(np.clip(rng.beta(0.8, 2.0) if rng.random() < 0.8 else rng.uniform(0.6, 1.0), 0, 1))
    e = float(min(abs(rng.normal(0, 0.3)), 0.8))
    beta = float(rng.uniform(0, np.pi))
    knot_frac = float(rng.uniform(0.05, 0.35)) if rng.random() < 0.35 else 0.0
    # Sources near/below the noise are pure disks (morphology is invisible there, and
    # single profiles are much cheaper to draw); knots only where they can be seen.
    if snr < 5:
        bulge_frac = 0.0
    if snr < 20:
        knot_frac = 0.0
    return dict(
        hlr=hlr,                                           # disk half-light radius
        bulge_frac=bulge_frac,
        bulge_hlr=float(hlr * rng.uniform(0.2, 0.6)),
        e1=float(e * np.cos(2 * beta)), e2=float(e * np.sin(2 * beta)),  # disk distortion
        bulge_e1=float(0.5 * e * np.cos(2 * beta)), bulge_e2=float(0.5 * e * np.sin(2 * beta)),
        knot_frac=knot_frac,
        n_knots=int(rng.integers(10, 40)),
        knot_seed=int(rng.integers(1, 2**30)),
    )


def _components(entry: dict):
    """(bulge, disk) GalSim profiles of a galaxy catalogue entry (no PSF)."""
    galsim = _galsim()
    gsp = _gsparams()
    f, bf = entry["flux"], entry["bulge_frac"]
    bulge = galsim.DeVaucouleurs(half_light_radius=entry["bulge_hlr"], flux=f * bf, gsparams=gsp)
    bulge = bulge.shear(e1=entry["bulge_e1"], e2=entry["bulge_e2"])
    if bf >= 1.0:
        return bulge, galsim.Exponential(half_light_radius=entry["hlr"], flux=0.0, gsparams=gsp)
    fd = f * (1 - bf)
    disk = galsim.Exponential(half_light_radius=entry["hlr"], flux=fd * (1 - entry["knot_frac"]), gsparams=gsp)
    if entry["knot_frac"] > 0 and fd > 0:
        knots = galsim.RandomKnots(entry["n_knots"], half_light_radius=entry["hlr"],
                                   flux=fd * entry["knot_frac"],
                                   rng=galsim.BaseDeviate(entry["knot_seed"]), gsparams=gsp)
        disk = galsim.Add([disk, knots])
    disk = disk.shear(e1=entry["e1"], e2=entry["e2"])
    return bulge, disk


def _convolved(entry: dict, psf, split: bool):
    """List of PSF-convolved profiles: [total] or [bulge, disk] for galaxies."""
    galsim = _galsim()
    if entry["class"] == "star":
        return [psf.withFlux(entry["flux"])]
    bulge, disk = _components(entry)
    if split:
        return [galsim.Convolve(bulge, psf), galsim.Convolve(disk, psf)]
    if entry["bulge_frac"] <= 0.0:
        return [galsim.Convolve(disk, psf)]
    return [galsim.Convolve(galsim.Add([bulge, disk]), psf)]


def _draw_stamp(profiles, x: float, y: float, size: int, scale: float):
    """Draw profiles on an odd-size stamp centred on pixel (round(x), round(y))."""
    ix, iy = int(np.round(x)), int(np.round(y))
    arrays = [p.drawImage(nx=size, ny=size, scale=scale, offset=(x - ix, y - iy),
                          method="auto").array for p in profiles]
    return arrays, ix, iy


def _adaptive_stamp(profiles, entry, scale, thr, max_size):
    """Grow the stamp until its border is well below the footprint threshold.

    Bright sources have footprints far larger than their profile's nominal size;
    a truncated stamp would cut their footprint (and the image) with a square edge.
    """
    size_px = np.sqrt(entry.get("hlr", 0.0) ** 2 + entry["psf_hlr"] ** 2) / scale
    size = int(max(15, 6 * size_px)) | 1
    while True:
        arrays, ix, iy = _draw_stamp(profiles, entry["x"], entry["y"], size, scale)
        tot = arrays[0] if len(arrays) == 1 else arrays[0] + arrays[1]
        border = max(tot[0].max(), tot[-1].max(), tot[:, 0].max(), tot[:, -1].max())
        if border < 0.1 * thr or size >= max_size:
            return arrays, tot, ix, iy
        size = min(2 * size + 1, max_size)


def _paste(dst: np.ndarray, stamp: np.ndarray, ix: int, iy: int):
    """Overlapping (dst slices, stamp slices) for a stamp centred at (iy, ix), or None."""
    h = stamp.shape[0] // 2
    y0, x0 = iy - h, ix - h
    ya, yb = max(y0, 0), min(y0 + stamp.shape[0], dst.shape[0])
    xa, xb = max(x0, 0), min(x0 + stamp.shape[1], dst.shape[1])
    if ya >= yb or xa >= xb:
        return None
    return (slice(ya, yb), slice(xa, xb)), (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))


# --------------------------------------------------------------------------- catalogue


def _source_positions(rng, n, shape, sizes_px, anchors_ok, blend_fraction):
    """Positions (x, y); a ``blend_fraction`` of sources next to an earlier detectable one."""
    pos = np.zeros((n, 2))
    blended_with = np.full(n, -1)
    for i in range(n):
        cand = np.flatnonzero(anchors_ok[:i])
        if cand.size and rng.random() < blend_fraction:
            j = int(rng.choice(cand))
            d = rng.uniform(0.5, 2.5) * (sizes_px[i] + sizes_px[j])
            t = rng.uniform(0, 2 * np.pi)
            pos[i] = pos[j] + d * np.array([np.cos(t), np.sin(t)])
            blended_with[i] = j
        else:
            pos[i] = rng.uniform(-0.5, np.array(shape[::-1]) - 0.5)
    return pos, blended_with


def _large_galaxies(rng, n: int, shape, cond) -> list[dict]:
    """``n`` bright nearby galaxies: half-light radius 2-20 arcsec (at most a sixth of the field), central
    surface brightness 5-100 noise sigma per pixel, so their footprints span tens to hundreds of pixels."""
    out = []
    for _ in range(int(n)):
        hlr = min(_loguniform(rng, 2.0, 20.0), min(shape) * cond["pixel_scale"] / 6.0)
        r_d = hlr / 1.678 / cond["pixel_scale"]                      # exponential scale length, pixels
        flux = _loguniform(rng, 5.0, 100.0) * cond["noise_sigma"] * 2 * np.pi * r_d ** 2
        params = _galaxy_params(rng, flux, cond, hlr=float(hlr))
        params["knot_frac"] = float(rng.uniform(0.05, 0.3)) if rng.random() < 0.6 else 0.0
        out.append(dict(cls="galaxy", flux=float(flux), large=True, **params))
    return out


def _make_catalog(rng, shape, cond, n_galaxies, n_stars, blend_fraction, n_large=0) -> list[dict]:
    """All drawn sources (detectable or not) in random order with positions; large galaxies first, so that
    blended neighbours (satellites) can be placed beside them."""
    area = shape[0] * shape[1] * (cond["pixel_scale"] / 60.0) ** 2
    ng = int(rng.poisson(cond["gal_density"] * area)) if n_galaxies is None else int(n_galaxies)
    ns = int(rng.poisson(cond["star_density"] * area)) if n_stars is None else int(n_stars)
    fu = cond["flux_unit"]
    gal_flux = _power_law(rng, ng, fu, 1e4 * fu, cond["gal_alpha"])
    star_flux = _power_law(rng, ns, 2 * fu, 5e4 * fu, cond["star_alpha"])
    psf_hlr = cond["psf_fwhm"] / 2
    entries = [dict(cls="galaxy", flux=float(f), **_galaxy_params(rng, f, cond)) for f in gal_flux]
    entries += [dict(cls="star", flux=float(f)) for f in star_flux]
    entries = _large_galaxies(rng, n_large, shape, cond) + [entries[i] for i in rng.permutation(len(entries))]
    sizes = np.array([np.hypot(e.get("hlr", 0.0), psf_hlr) / cond["pixel_scale"] for e in entries])
    detectable = np.array([e["flux"] > 10 * fu for e in entries])
    pos, _ = _source_positions(rng, len(entries), shape, sizes, detectable, blend_fraction)
    for e, (x, y) in zip(entries, pos):
        e["class"] = e.pop("cls")
        e.update(x=float(x), y=float(y), psf_hlr=psf_hlr)
    return entries


# --------------------------------------------------------------------------- rendering


def _isophotal_snr(stamp: np.ndarray, thr: float, sigma: float) -> float:
    """Noiseless flux inside the ``thr`` isophote over ``sigma * sqrt(isophotal area)`` (0 if empty)."""
    inside = stamp > thr
    n = int(inside.sum())
    return float(stamp[inside].sum() / (sigma * np.sqrt(n))) if n else 0.0


def _render(entries, shape, cond, thr, with_components, snr_min=0.0):
    """Draw all sources; track the per-pixel dominant *detectable* source and its flux.

    Each entry gets ``snr`` (isophotal, on the part inside the field); sources under ``snr_min``
    are drawn but own no pixels (they are part of the sky)."""
    psf = _make_psf(cond)
    noiseless = np.zeros(shape, np.float32)
    best = np.zeros(shape, np.float32)
    owner = np.zeros(shape, np.int32)               # index + 1 into entries
    bulge = np.zeros(shape, np.float32) if with_components else None
    disk = np.zeros(shape, np.float32) if with_components else None
    max_size = 2 * max(shape) + 1
    for k, e in enumerate(entries, start=1):
        split = with_components and e["class"] == "galaxy"
        arrays, tot, ix, iy = _adaptive_stamp(_convolved(e, psf, split), e, cond["pixel_scale"], thr, max_size)
        win = _paste(noiseless, tot, ix, iy)
        if win is None:
            e["snr"] = 0.0
            continue
        d, s = win
        if split:
            bulge[d] += arrays[0][s]
            disk[d] += arrays[1][s]
        t = tot[s]
        noiseless[d] += t
        e["snr"] = _isophotal_snr(t, thr, cond["noise_sigma"])
        if e["snr"] < snr_min:
            continue
        better = t > best[d]
        best[d][better] = t[better]
        owner[d][better] = k
    return noiseless, best, owner, bulge, disk


def _footprints(best, owner, thr):
    """Segmentation map from the max-flux rule, one 8-connected piece per source."""
    labels = np.where(best > thr, owner, 0).astype(np.int32)
    struct = np.ones((3, 3), bool)
    for lab, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        sub = labels[sl]
        cc, n = ndi.label(sub == lab, structure=struct)
        if n > 1:
            sizes = np.bincount(cc.ravel())[1:]
            sub[(cc > 0) & (cc != np.argmax(sizes) + 1)] = 0
    return labels


def _touching_pairs(labels: np.ndarray) -> set:
    """Label ids whose footprint touches another footprint (8-connectivity)."""
    touched = set()
    a = labels
    for sa, sb in [((slice(None), slice(0, -1)), (slice(None), slice(1, None))),
                   ((slice(0, -1), slice(None)), (slice(1, None), slice(None))),
                   ((slice(0, -1), slice(0, -1)), (slice(1, None), slice(1, None))),
                   ((slice(0, -1), slice(1, None)), (slice(1, None), slice(0, -1)))]:
        p, q = a[sa], a[sb]
        m = (p != q) & (p > 0) & (q > 0)
        touched.update(p[m].tolist())
        touched.update(q[m].tolist())
    return touched


def _sky(rng, shape, cond) -> np.ndarray:
    """Sky level plus a gradient of ``sky_gradient`` across the field in a random direction, bent by a
    quadratic term (scattered light, a bright neighbour outside the field)."""
    ny, nx = shape
    t = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    u = (xx / nx - 0.5) * np.cos(t) + (yy / ny - 0.5) * np.sin(t)
    return cond["sky_level"] + cond["sky_gradient"] * (u + cond.get("sky_curvature", 0.0) * (4 * u * u - 1 / 3))


def _saturate(image: np.ndarray, level: float) -> np.ndarray:
    """Clip at the full well ``level``; each column's excess charge bleeds up and down from its saturated
    pixels, filling neighbours to the level (a CCD's bleed trail), until it is spent or leaves the chip."""
    out = image.copy()
    for x in np.flatnonzero((image > level).any(axis=0)):
        col = out[:, x]
        excess = float(np.clip(col - level, 0, None).sum())
        sat = np.flatnonzero(col >= level)
        col[sat] = level
        lo, hi = int(sat.min()), int(sat.max())
        while excess > 1e-6 * level and (lo > 0 or hi < col.size - 1):
            sides = ((lo - 1,) if lo > 0 else ()) + ((hi + 1,) if hi < col.size - 1 else ())
            share = excess / len(sides)  # the charge flows up and down alike
            for k in sides:
                take = min(max(level - float(col[k]), 0.0), share)
                col[k] += take
                excess -= take
            lo, hi = max(lo - 1, 0), min(hi + 1, col.size - 1)
    return out


def _add_noise(rng, noiseless, cond, noise_kind) -> np.ndarray:
    """Sky + Poisson(sources) + Gaussian (white, smoothed or COSMOS-correlated) noise via GalSim."""
    galsim = _galsim()
    dev = galsim.BaseDeviate(int(rng.integers(1, 2**31)))
    src = galsim.ImageF(np.clip(noiseless, 0, None).astype(np.float32), scale=cond["pixel_scale"])
    src.addNoise(galsim.PoissonNoise(dev, sky_level=0.0))
    var = cond["noise_sigma"] ** 2
    if noise_kind == "smooth":
        noise = galsim.UncorrelatedNoise(var, rng=dev, scale=cond["pixel_scale"])
        kernel = galsim.Gaussian(sigma=cond["corr_sigma_px"] * cond["pixel_scale"])
        noise = noise.convolvedWith(kernel).withVariance(var)
    elif noise_kind == "cosmos":  # HST COSMOS correlations, laid on this image's pixels
        noise = galsim.getCOSMOSNoise(rng=dev, cosmos_scale=cond["pixel_scale"], variance=var)
    else:
        noise = galsim.GaussianNoise(dev, sigma=cond["noise_sigma"])
    src.addNoise(noise)
    image = (src.array + _sky(rng, noiseless.shape, cond)).astype(np.float32)
    if cond.get("saturation"):
        image = _saturate(image, cond["sky_level"] + cond["saturation"])
    return image


# --------------------------------------------------------------------------- public API


def simulate_astro_field(
    shape: tuple[int, int] = (256, 256),
    *,
    n_galaxies: int | None = None,
    n_stars: int | None = None,
    pixel_scale: float = 0.2,
    psf_fwhm: float | None = None,
    sky_sigma: float | None = None,
    correlated_noise: bool | str = False,
    k_sigma: float = 1.5,
    blend_fraction: float = 0.3,
    with_components: bool = False,
    seed: int = 0,
    snr_min: float = 5.0,
    n_large: int = 0,
    saturation: float | None = None,
    sky_gradient: float | None = None,
    density_scale: float = 1.0,
) -> AstroField:
    """Simulate one exposure of galaxies and stars with a segmentation ground truth.

    Parameters
    ----------
    shape: (Y, X) in pixels.
    n_galaxies, n_stars: numbers of sources *drawn* (including undetectably faint
        ones, which end up in ``noiseless`` but not in labels/catalogue); random from
        the field area when None.
    pixel_scale: arcsec / pixel.  psf_fwhm: arcsec (random 0.5-1.2 when None).
    sky_sigma: per-pixel background noise std (random 3-30 when None).
    correlated_noise: False/"white", True/"smooth" (white noise smoothed by a small kernel) or
        "cosmos" (HST COSMOS correlations); see the module doc.
    k_sigma: the truth isophote, in units of ``noise_sigma`` (footprints are the pixels above it).
    blend_fraction: fraction of sources placed next to another source.
    with_components: also return noiseless bulge and disk images.
    seed: makes the result deterministic.
    snr_min: isophotal S/N a source needs to be labelled (detectable); fainter ones are sky.
    n_large: bright extended galaxies (2-20 arcsec half-light radius) added to the field.
    saturation: full well in noise sigmas above the sky: brighter pixels clip and bleed along columns.
    sky_gradient: largest sky gradient across the field, in noise sigmas (random up to it; 0.5 if None).
    density_scale: multiplies the galaxy and star densities (crowded fields).
    """
    rng = np.random.default_rng(seed)
    shape = (int(shape[0]), int(shape[1]))
    noise_kind = _noise_kind(correlated_noise)
    cond = _draw_conditions(rng, pixel_scale, psf_fwhm, sky_sigma, noise_kind, sky_gradient, float(density_scale))
    cond["saturation"] = float(saturation) * cond["noise_sigma"] if saturation else 0.0  # electrons
    entries = _make_catalog(rng, shape, cond, n_galaxies, n_stars, blend_fraction, n_large)
    thr = float(k_sigma) * cond["noise_sigma"]
    noiseless, best, owner, bulge, disk = _render(entries, shape, cond, thr, with_components, float(snr_min))
    labels = _footprints(best, owner, thr)
    image = _add_noise(rng, noiseless, cond, noise_kind)
    labels, catalog = _finalise_catalog(labels, entries)
    meta = dict(cond, seed=seed, shape=shape, k_sigma=float(k_sigma), threshold=thr, snr_min=float(snr_min),
                correlated_noise=noise_kind != "white", noise_kind=noise_kind, blend_fraction=float(blend_fraction),
                n_large=int(n_large), density_scale=float(density_scale),
                n_drawn=len(entries), n_detected=len(catalog))
    return AstroField(
        image=image, labels=labels, classes={e["id"]: e["class"] for e in catalog},
        noise_sigma=float(cond["noise_sigma"]), sky_level=float(cond["sky_level"]),
        catalog=catalog, bulge=bulge, disk=disk, noiseless=noiseless, meta=meta,
    )


def _finalise_catalog(labels: np.ndarray, entries: list[dict]):
    """Drop sources without footprint, renumber labels 1..N, flag blends."""
    present = np.unique(labels)
    present = present[present > 0]
    lut = np.zeros(len(entries) + 1, np.int32)
    lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
    labels = lut[labels]
    npix = np.bincount(labels.ravel(), minlength=present.size + 1)
    touched = _touching_pairs(labels)
    catalog = []
    for new_id, old in enumerate(present.tolist(), start=1):
        e = dict(entries[old - 1])
        e.pop("psf_hlr", None)
        e.setdefault("large", False)
        e.update(id=new_id, npix=int(npix[new_id]), blended=new_id in touched)
        catalog.append(e)
    return labels, catalog


def draw_source(entry: dict, meta: dict, shape: tuple[int, int] | None = None,
                component: str = "total") -> np.ndarray:
    """Redraw one catalogue source alone, noiseless and PSF-convolved, on a full image.

    ``meta`` is ``AstroField.meta``; ``component`` is "total", "bulge" or "disk".
    Useful to check the ground-truth rule or to evaluate deblenders.
    """
    shape = tuple(meta["shape"]) if shape is None else tuple(shape)
    psf = _make_psf(meta)
    if component == "total":
        prof = _convolved(entry, psf, split=False)[0]
    else:
        prof = _convolved(entry, psf, split=True)[0 if component == "bulge" else 1]
    galsim = _galsim()
    img = galsim.ImageF(shape[1], shape[0], scale=meta["pixel_scale"], xmin=0, ymin=0)
    prof.drawImage(image=img, center=galsim.PositionD(entry["x"], entry["y"]), method="auto")
    return img.array.astype(np.float32)


#: what :func:`simulate_astro_dataset` varies per field (ranges; "standard" / "crowded")
DATASET_RANGES = {
    "pixel_scale": (0.1, 0.4),      # arcsec / pixel, log-uniform
    "psf_fwhm": (0.5, 1.6),         # arcsec: PSF FWHM from ~1.5 to ~14 pixels
    "noise": {"white": 0.5, "smooth": 0.25, "cosmos": 0.25},
    "p_large": 0.35,                # chance of one or two large galaxies in a field
    "saturation": (300.0, 5000.0),  # full well, noise sigmas above the sky (log-uniform)
    "sky_gradient": (0.0, 3.0),     # noise sigmas across the field
    "standard": {"blend_fraction": (0.1, 0.5), "density_scale": (0.7, 1.3)},
    "crowded": {"blend_fraction": (0.4, 0.7), "density_scale": (2.0, 3.0)},
}


def simulate_astro_dataset(n: int, shape: tuple[int, int] = (256, 256), seed: int = 0,
                           crowding: str = "standard") -> list[AstroField]:
    """``n`` fields as varied as real skies (:data:`DATASET_RANGES`): pixel scale, seeing and PSF, noise
    correlations (white, smoothed, COSMOS), saturation level and bleed trails, sky gradients, source
    densities and blends, and in about a third of the fields large galaxies; ``crowding="crowded"``
    raises the densities 2-3x and the blend fraction to 40-70 %.  The truth is the module's isophote rule."""
    if crowding not in ("standard", "crowded"):
        raise ValueError(f"crowding must be 'standard' or 'crowded', got '{crowding}'")
    r = DATASET_RANGES
    rng = np.random.default_rng(seed)
    kinds = list(r["noise"])
    out = []
    for _ in range(int(n)):
        out.append(simulate_astro_field(
            shape,
            blend_fraction=float(rng.uniform(*r[crowding]["blend_fraction"])),
            density_scale=float(rng.uniform(*r[crowding]["density_scale"])),
            correlated_noise=str(rng.choice(kinds, p=list(r["noise"].values()))),
            pixel_scale=_loguniform(rng, *r["pixel_scale"]),
            psf_fwhm=float(rng.uniform(*r["psf_fwhm"])),
            n_large=int(rng.integers(1, 3)) if rng.random() < r["p_large"] else 0,
            saturation=_loguniform(rng, *r["saturation"]),
            sky_gradient=float(rng.uniform(*r["sky_gradient"])),
            seed=int(rng.integers(2**31)),
        ))
    return out
