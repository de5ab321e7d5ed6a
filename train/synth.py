"""SDSS-like sky cutouts simulated with GalSim, written as a labelled dataset folder.

Each object is drawn in the g, r and i bands separately, in nanomaggies, on a 0.4"/px grid
(SkyServer's ``scale=0.4`` cutouts), convolved with a Kolmogorov PSF plus a faint halo whose
FWHM varies per image around 1.2" (the real dev cutouts' stars are sharper than the survey's
1.4" median; see docs/realism.md). Sky noise per band follows the survey's 5-sigma point
source limits (g 23.3, r 23.1, i 22.3) at the nominal 1.4" seeing. The three bands are combined exactly as SkyServer
does it, a Lupton et al. (2004) asinh stretch of (i, r, g) -> (R, G, B), and encoded as a
JPEG at the quality of the real cutouts (Pillow quality 75, 4:2:0; the real files carry
exactly that quantisation table).

Centres: stars on the stellar locus, blue quasars (some with a faint host) and bulge + disc
galaxies from a red and a blue population, many of them small and faint. The field around
them has neighbours, occasional bright stars with diffraction spikes, satellite trails and
cutout edges, so a classifier cannot separate the classes from the background alone.

Every object's randomness comes from ``numpy.random.SeedSequence((seed, index))``, so the
output is byte-identical for a seed whatever the number of worker processes.
"""
from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import galsim
import numpy as np
from PIL import Image

from device.atomic import write_bytes, write_text
from device.dataset import LABELS, TEST_FRACTION, VAL_FRACTION, Record, stratified_split, write_manifest
from train.sky_objects import STUDY_MIX, class_counts

PIXEL_SCALE = 0.4  # arcsec per pixel of SkyServer's scale=0.4 cutouts (native CCD: 0.396)
BANDS = ("g", "r", "i")
LIMITING_MAG = {"g": 23.3, "r": 23.1, "i": 22.3}  # 5-sigma point sources, median seeing
MEDIAN_FWHM = 1.2  # arcsec, r band: the real dev cutouts' stars are sharper than the survey's 1.4"
NOMINAL_FWHM = 1.4  # arcsec: the seeing at which the limiting magnitudes hold
SEEING_SIGMA = 0.145  # log-normal width
# Lupton stretch constants, tuned against the real dev cutouts (docs/realism.md): per-band
# multipliers applied before the stretch (g brightened, i dimmed, as SkyServer's sky is
# neutral black), the softening Q and the linear stretch in nanomaggies.
RGB_SCALES = {"i": 1.0, "r": 1.15, "g": 1.55}
LUPTON_Q = 8.0
LUPTON_STRETCH = 0.8
JPEG_QUALITY = 75
JPEG_SUBSAMPLING = 2  # 4:2:0, as in the real cutouts
POINT_STAMP = 64  # pixels (25.6"): side of the cached PSF stamp for point sources
_GSPARAMS = galsim.GSParams(folding_threshold=1e-2, maxk_threshold=2e-3, maximum_fft_size=4096)


@dataclass(frozen=True)
class SynthSummary:
    """What ``synthesize`` wrote.

    Attributes:
        out: the dataset folder.
        counts: images per class, in ``LABELS`` order.
        seconds: wall time of the whole run.
        manifest: path of ``manifest.csv``.
    """

    out: str
    counts: dict
    seconds: float
    manifest: str


def _flux(mag: float) -> float:
    """Flux in nanomaggies of an AB magnitude."""
    return 10.0 ** (-0.4 * (mag - 22.5))


def _stellar_ri(gr: np.ndarray | float, rng: np.random.Generator) -> float:
    """r-i on the stellar locus for a g-r colour (Covey et al. 2007 shape).

    The locus is nearly linear for FGK stars and turns up steeply for M dwarfs, whose g-r
    saturates near 1.4-1.6 while r-i keeps growing.
    """
    gr = float(gr)
    if gr < 1.3:
        ri = 0.37 * gr - 0.1
    else:
        ri = 0.44 + (gr - 1.3) * rng.uniform(2.0, 5.0)
    return float(np.clip(ri + rng.normal(0.0, 0.05), -0.3, 2.2))


def _star_params(rng: np.random.Generator) -> dict:
    """Magnitude and colours of a spectroscopic target star."""
    r = float(np.clip(rng.normal(17.6, 2.0), 13.5, 21.0))
    # F/G turn-off stars dominate SEGUE/BOSS targets; a tail of blue and of M dwarfs.
    pick = rng.uniform()
    if pick < 0.12:
        gr = rng.uniform(-0.3, 0.2)
    elif pick < 0.62:
        gr = rng.normal(0.45, 0.15)
    elif pick < 0.78:
        gr = rng.uniform(0.7, 1.3)
    else:
        gr = rng.uniform(1.3, 1.6)
    gr = float(np.clip(gr, -0.3, 1.6))
    return {"r": r, "g_r": gr, "r_i": _stellar_ri(gr, rng)}


def _qso_params(rng: np.random.Generator) -> dict:
    """Magnitude, colours and optional host of a spectroscopic quasar."""
    r = float(np.clip(rng.normal(19.8, 1.1), 16.5, 22.0))
    if rng.uniform() < 0.15:
        # z > 2.5 quasars (Lyman-alpha forest in g) and dust-reddened ones: red in g-r.
        gr = float(rng.uniform(0.3, 1.3))
        ri = float(np.clip(rng.normal(0.2, 0.2), -0.3, 1.0))
    else:
        gr = float(np.clip(rng.normal(0.05, 0.2), -0.3, 1.2))
        ri = float(np.clip(rng.normal(0.08, 0.2), -0.3, 1.0))
    params = {"r": r, "g_r": gr, "r_i": ri, "host": False}
    if rng.uniform() < 0.22:
        # Low-redshift AGN classed QSO by their spectra: the host can outshine the nucleus
        # in the JPEG, and it has a galaxy's colours.
        params.update(host=True, host_dmag=float(rng.uniform(-0.7, 2.0)),
                      host_hlr=float(rng.uniform(1.0, 4.0)), host_q=float(rng.uniform(0.4, 1.0)),
                      host_pa=float(rng.uniform(0, 180)), host_g_r=float(rng.uniform(0.5, 1.2)))
    return params


def _galaxy_params(rng: np.random.Generator, faint: bool = False) -> dict:
    """Bulge + disc parameters of a galaxy.

    Args:
        rng: the object's generator.
        faint: a field neighbour (fainter, smaller) instead of a spectroscopic target.
    """
    red = rng.uniform() < (0.5 if faint else 0.8)
    if faint:
        r = float(rng.uniform(19.0, 23.0))
    else:
        # Main sample (r < 17.77) plus fainter LRG/BOSS targets, which look nearly point-like.
        r = float(rng.normal(17.0, 1.0)) if rng.uniform() < 0.45 else float(rng.uniform(17.8, 20.6))
        r = float(np.clip(r, 14.0, 20.3))
    # Size shrinks with magnitude: brighter galaxies are nearer and bigger on the sky.
    hlr = float(np.exp(rng.normal(math.log(4.0) - 0.3 * (r - 17.0), 0.35)))
    hlr = float(np.clip(hlr, 0.25, 12.0))
    if red:
        bulge_frac = float(rng.uniform(0.5, 1.0))
        # Fainter red galaxies are further away: redshifted 4000 A break, redder g-r and r-i.
        gr = float(np.clip(rng.normal(1.0 + 0.4 * max(r - 16.5, 0.0), 0.25), 0.6, 2.3))
        ri = float(np.clip(rng.normal(0.42 + 0.2 * max(r - 16.5, 0.0), 0.12), 0.25, 1.2))
    else:
        bulge_frac = float(rng.uniform(0.0, 0.35))
        gr = float(rng.normal(0.5, 0.18))
        ri = float(rng.normal(0.3, 0.1))
    return {
        "r": r, "g_r": gr, "r_i": ri, "red": bool(red), "hlr": hlr, "bulge_frac": bulge_frac,
        # Bulges are redder than their discs.
        "bulge_dgr": float(rng.uniform(0.1, 0.3)) if not red else 0.05,
        "disc_q": float(rng.uniform(0.15, 1.0)), "bulge_q": float(rng.uniform(0.6, 1.0)),
        "pa": float(rng.uniform(0.0, 180.0)),
        "bulge_hlr_ratio": float(rng.uniform(0.25, 0.6)),
    }


def _band_fluxes(r: float, g_r: float, r_i: float) -> np.ndarray:
    """(g, r, i) fluxes in nanomaggies from an r magnitude and two colours."""
    return np.array([_flux(r + g_r), _flux(r), _flux(r - r_i)])


def _galaxy_components(p: dict, gsp: galsim.GSParams) -> list[tuple[galsim.GSObject, np.ndarray]]:
    """Unit-flux profiles of a galaxy's bulge and disc with their (g, r, i) fluxes."""
    total = _band_fluxes(p["r"], p["g_r"], p["r_i"])
    parts = []
    disc_frac = 1.0 - p["bulge_frac"]
    if disc_frac > 0.02:
        disc = galsim.Exponential(half_light_radius=p["hlr"], gsparams=gsp)
        disc = disc.shear(q=p["disc_q"], beta=p["pa"] * galsim.degrees)
        colour = np.array([10 ** (0.4 * p["bulge_dgr"] * p["bulge_frac"]), 1.0, 1.0])
        parts.append((disc, total * disc_frac * colour))
    if p["bulge_frac"] > 0.02:
        bulge = galsim.DeVaucouleurs(half_light_radius=max(p["hlr"] * p["bulge_hlr_ratio"], 0.15),
                                     gsparams=gsp, trunc=0.0)
        bulge = bulge.shear(q=p["bulge_q"], beta=p["pa"] * galsim.degrees)
        colour = np.array([10 ** (-0.4 * p["bulge_dgr"] * disc_frac), 1.0, 1.0])
        parts.append((bulge, total * p["bulge_frac"] * colour))
    return parts


class _Canvas:
    """Three band images in nanomaggies sharing one PSF and pixel grid."""

    def __init__(self, size: int, psf: galsim.GSObject, fwhm: float, gsp: galsim.GSParams):
        self.size = size
        self.psf = psf
        self.fwhm = fwhm
        self.gsp = gsp
        self.bands = np.zeros((3, size, size), dtype=np.float64)
        self._scratch = galsim.ImageD(size, size, scale=PIXEL_SCALE)
        self._psf_fft: np.ndarray | None = None

    def add_point(self, fluxes: np.ndarray, dx: float, dy: float) -> None:
        """Add a point source: the PSF drawn once per cutout, shifted in Fourier space.

        One GalSim FFT draw costs a few milliseconds; a 64-pixel numpy shift a few tens of
        microseconds, and most objects in a field are point sources.

        Args:
            fluxes: (g, r, i) fluxes in nanomaggies.
            dx, dy: offset from the cutout centre in pixels.
        """
        side = POINT_STAMP
        if self._psf_fft is None:
            stamp = galsim.ImageD(side, side, scale=PIXEL_SCALE)
            # Half-pixel offset puts the PSF's centre on array index (side/2, side/2).
            self.psf.drawImage(image=stamp, offset=(0.5, 0.5), method="auto")
            self._psf_fft = np.fft.rfft2(stamp.array)
        xa = self.size / 2.0 - 0.5 + dx  # 0-based array coordinates of the source
        ya = self.size / 2.0 - 0.5 + dy
        ix, iy = int(math.floor(xa)), int(math.floor(ya))
        fx, fy = xa - ix, ya - iy
        u = np.fft.rfftfreq(side)
        v = np.fft.fftfreq(side)
        phase = np.exp(-2j * np.pi * v * fy)[:, None] * np.exp(-2j * np.pi * u * fx)[None, :]
        drawn = np.fft.irfft2(self._psf_fft * phase, s=(side, side))
        x0, y0 = ix - side // 2, iy - side // 2
        xs0, ys0 = max(x0, 0), max(y0, 0)
        xs1, ys1 = min(x0 + side, self.size), min(y0 + side, self.size)
        if xs1 <= xs0 or ys1 <= ys0:
            return
        part = drawn[ys0 - y0:ys1 - y0, xs0 - x0:xs1 - x0]
        for b in range(3):
            self.bands[b, ys0:ys1, xs0:xs1] += fluxes[b] * part

    def add(self, profile: galsim.GSObject | None, fluxes: np.ndarray, dx: float, dy: float,
            stamp: int | None = None) -> None:
        """Draw a unit-flux profile (PSF-convolved) once and add it to each band scaled.

        Args:
            profile: intrinsic profile, or None for a point source (drawn as the PSF, which
                avoids an FFT).
            fluxes: (g, r, i) fluxes in nanomaggies.
            dx, dy: offset from the cutout centre in pixels.
            stamp: side of the drawing stamp in pixels; None draws on the whole cutout.
        """
        obj = self.psf if profile is None else galsim.Convolve(profile, self.psf, gsparams=self.gsp)
        centre = self.size / 2.0 + 0.5  # GalSim's 1-based true centre of the cutout
        x, y = centre + dx, centre + dy
        if stamp is None or stamp >= self.size:
            self._scratch.setZero()
            obj.drawImage(image=self._scratch, offset=(dx, dy), method="auto")
            drawn = self._scratch.array
            for b in range(3):
                self.bands[b] += fluxes[b] * drawn
            return
        ix, iy = int(math.floor(x)), int(math.floor(y))
        half = stamp // 2
        bounds = galsim.BoundsI(ix - half, ix - half + stamp - 1, iy - half, iy - half + stamp - 1)
        overlap = bounds & galsim.BoundsI(1, self.size, 1, self.size)
        if not overlap.isDefined():
            return
        sub = galsim.ImageD(bounds, scale=PIXEL_SCALE)
        obj.drawImage(image=sub, center=galsim.PositionD(x, y), method="auto")
        drawn = sub[overlap].array
        ys = slice(overlap.ymin - 1, overlap.ymax)
        xs = slice(overlap.xmin - 1, overlap.xmax)
        for b in range(3):
            self.bands[b, ys, xs] += fluxes[b] * drawn


def _add_centre(canvas: _Canvas, label: str, rng: np.random.Generator, truth: dict) -> None:
    """Draw the labelled object near the centre (SkyServer centres on the catalogue position)."""
    # Measured on the real STAR cutouts: light centroids sit at array (63.6, 64.3) of 128,
    # i.e. SkyServer puts the catalogue position 0.1 px right of and 0.8 px below GalSim's
    # true centre (the corner of the four middle pixels).
    dx = float(rng.normal(0.1, 0.2)) * canvas.size / 128.0
    dy = float(rng.normal(0.8, 0.2)) * canvas.size / 128.0
    if label == "STAR":
        p = _star_params(rng)
        canvas.add_point(_band_fluxes(p["r"], p["g_r"], p["r_i"]), dx, dy)
    elif label == "QSO":
        p = _qso_params(rng)
        nucleus = _band_fluxes(p["r"], p["g_r"], p["r_i"])
        canvas.add_point(nucleus, dx, dy)
        if p["host"]:
            host = galsim.Exponential(half_light_radius=p["host_hlr"], gsparams=canvas.gsp)
            host = host.shear(q=p["host_q"], beta=p["host_pa"] * galsim.degrees)
            colours = _band_fluxes(p["r"] + p["host_dmag"], p["host_g_r"], 0.3 + 0.2 * p["host_g_r"])
            canvas.add(host, colours, dx, dy)
    else:
        p = _galaxy_params(rng)
        for profile, fluxes in _galaxy_components(p, canvas.gsp):
            canvas.add(profile, fluxes, dx, dy)
    truth.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in p.items()})


def _add_field(canvas: _Canvas, rng: np.random.Generator, density: float) -> int:
    """Add neighbouring stars and galaxies at random offsets; return how many."""
    size = canvas.size
    area_arcmin2 = (size * PIXEL_SCALE / 60.0) ** 2
    count = int(rng.poisson(density * area_arcmin2))
    for _ in range(count):
        dx, dy = rng.uniform(-size / 2, size / 2, size=2)
        if math.hypot(dx, dy) < 3.0 / PIXEL_SCALE:
            continue  # deblended: a neighbour on top of the target would be a different object
        if rng.uniform() < 0.45:
            # Number counts of stars rise slowly with magnitude towards r ~ 22.
            r = 23.0 - 7.0 * rng.uniform() ** 1.6
            gr = float(np.clip(rng.normal(0.9, 0.45), -0.3, 1.6))
            canvas.add_point(_band_fluxes(r, gr, _stellar_ri(gr, rng)), dx, dy)
        else:
            p = _galaxy_params(rng, faint=True)
            stamp = int(min(64, max(24, 2 * round(4 * p["hlr"] / PIXEL_SCALE) + 16)))
            # Faint neighbours' colour gradients are invisible: one draw of bulge + disc
            # (weighted by r flux) with the galaxy's total colours halves the FFTs.
            parts = _galaxy_components(p, canvas.gsp)
            totals = sum(fluxes for _, fluxes in parts)
            profile = galsim.Add([prof * (fluxes[1] / totals[1]) for prof, fluxes in parts], gsparams=canvas.gsp)
            canvas.add(profile, totals, dx, dy, stamp=stamp)
    return count


def _add_bright_star(canvas: _Canvas, rng: np.random.Generator) -> None:
    """A bright star off-centre with wide wings and diffraction spikes along the CCD axes."""
    size = canvas.size
    dx, dy = rng.uniform(-0.7 * size, 0.7 * size, size=2)
    if math.hypot(dx, dy) < 12.0:
        dx += 16.0 * math.copysign(1.0, dx)
    r = float(rng.uniform(10.5, 14.0))
    gr = float(rng.uniform(0.2, 1.2))
    fluxes = _band_fluxes(r, gr, _stellar_ri(gr, rng))
    wings = galsim.Moffat(beta=2.0, fwhm=canvas.fwhm * 1.2, gsparams=canvas.gsp)
    core_frac = 0.85
    canvas.add(None, fluxes * core_frac, dx, dy, stamp=2 * size)
    canvas._scratch.setZero()
    wings.drawImage(image=canvas._scratch, offset=(dx, dy), method="no_pixel")
    y, x = np.mgrid[0:size, 0:size] - (size - 1) / 2.0
    x = x - dx
    y = y - dy
    length = float(rng.uniform(8.0, 25.0)) * (14.5 - r)
    width = 0.6
    spikes = (np.exp(-0.5 * (x / width) ** 2) * np.exp(-np.abs(y) / length)
              + np.exp(-0.5 * (y / width) ** 2) * np.exp(-np.abs(x) / length))
    spikes *= 2e-3 / (width * length)
    for b in range(3):
        canvas.bands[b] += fluxes[b] * ((1 - core_frac) * canvas._scratch.array + spikes)


def _add_trail(bands: np.ndarray, rng: np.random.Generator) -> None:
    """A satellite trail in one band only: SDSS exposed g, r and i minutes apart."""
    size = bands.shape[1]
    angle = rng.uniform(0, math.pi)
    offset = rng.uniform(-size / 2, size / 2)
    y, x = np.mgrid[0:size, 0:size] - (size - 1) / 2.0
    dist = x * math.sin(angle) - y * math.cos(angle) - offset
    band = int(rng.integers(0, 3))
    bands[band] += rng.uniform(0.1, 1.0) * np.exp(-0.5 * (dist / 0.8) ** 2)


def lupton_rgb(i_band: np.ndarray, r_band: np.ndarray, g_band: np.ndarray,
               q: float = LUPTON_Q, stretch: float = LUPTON_STRETCH) -> np.ndarray:
    """Lupton et al. (2004) asinh composite of (i, r, g) -> (R, G, B), as SkyServer makes it.

    The same formula as ``astropy.visualization.make_lupton_rgb`` with ``minimum=0``: the
    mean intensity is stretched by asinh and every channel multiplied by the same factor,
    so colours survive saturation; a pixel whose brightest channel exceeds 255 is scaled
    down as a whole.

    Args:
        i_band, r_band, g_band: images in nanomaggies (already multiplied by the per-band
            scales).
        q: asinh softening.
        stretch: linear stretch in the images' units.

    Returns:
        (H, W, 3) uint8 array.
    """
    rgb = np.stack([i_band, r_band, g_band], axis=-1)
    intensity = rgb.mean(axis=-1, keepdims=True)
    slope = 0.1 * 255.0 / np.arcsinh(0.1 * q)
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(intensity <= 0, 0.0, np.arcsinh(intensity * q / stretch) * slope / intensity)
    rgb = np.maximum(rgb * factor, 0.0)
    peak = rgb.max(axis=-1, keepdims=True)
    rgb = np.where(peak >= 255.0, rgb * 255.0 / np.maximum(peak, 1e-12), rgb)
    return np.minimum(rgb, 255.0).astype(np.uint8)


def render(label: str, size: int, seed: int, index: int) -> tuple[bytes, dict]:
    """Simulate one cutout.

    Args:
        label: GALAXY, QSO or STAR.
        size: side in pixels.
        seed: the run's seed.
        index: the object's index in the run (with ``seed``, fixes all its randomness).

    Returns:
        ``(jpeg_bytes, truth)`` where ``truth`` holds the drawn parameters.
    """
    rng = np.random.default_rng(np.random.SeedSequence((seed, index)))
    fwhm = float(MEDIAN_FWHM * math.exp(rng.normal(0.0, SEEING_SIGMA)))
    gsp = _GSPARAMS
    # Kolmogorov rather than Moffat: its Fourier transform is analytic and cheap, which keeps
    # a thousand cutouts within a minute. A wide Gaussian adds the scattered-light halo that
    # makes real SDSS stars' wings broader than pure seeing.
    halo = float(rng.uniform(0.05, 0.15))
    psf = galsim.Sum(galsim.Kolmogorov(fwhm=fwhm, flux=1.0 - halo, gsparams=gsp),
                     galsim.Gaussian(fwhm=3.0 * fwhm, flux=halo, gsparams=gsp), gsparams=gsp)
    psf = psf.shear(g=float(rng.uniform(0.0, 0.05)), beta=float(rng.uniform(0, 180)) * galsim.degrees)
    canvas = _Canvas(size, psf, fwhm, gsp)
    truth: dict = {"label": label, "fwhm": round(fwhm, 3)}
    _add_centre(canvas, label, rng, truth)
    truth["neighbours"] = _add_field(canvas, rng, density=float(rng.uniform(3.0, 10.0)))
    if rng.uniform() < 0.05:
        _add_bright_star(canvas, rng)
        truth["bright_star"] = True
    # Noise: sky-limited, so a point source at the limiting magnitude has S/N 5 through an
    # aperture of the PSF's effective area at the seeing the limits are quoted for; the sky
    # level varies from night to night.
    sigma_psf = NOMINAL_FWHM / 2.3548 / PIXEL_SCALE
    n_eff = 4.0 * math.pi * sigma_psf ** 2
    sky_factor = float(math.exp(rng.normal(0.0, 0.15)))
    for b, band in enumerate(BANDS):
        sigma = _flux(LIMITING_MAG[band]) / 5.0 / math.sqrt(n_eff) * sky_factor
        canvas.bands[b] += rng.normal(0.0, sigma, size=(size, size))
        # Imperfect sky subtraction leaves a small per-band offset.
        canvas.bands[b] += rng.normal(0.0, 0.15 * sigma)
    if rng.uniform() < 0.03:
        _add_trail(canvas.bands, rng)
        truth["trail"] = True
    g, r, i = (canvas.bands[k] * RGB_SCALES[band] for k, band in enumerate(BANDS))
    rgb = lupton_rgb(i, r, g)
    if rng.uniform() < 0.03:
        # The cutout runs off the edge of the imaging stripe: SkyServer fills it with black.
        cut = int(rng.integers(size // 16, size // 3))
        side = int(rng.integers(0, 4))
        if side == 0:
            rgb[:cut] = 0
        elif side == 1:
            rgb[-cut:] = 0
        elif side == 2:
            rgb[:, :cut] = 0
        else:
            rgb[:, -cut:] = 0
        truth["edge"] = True
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=JPEG_QUALITY,
                                     subsampling=JPEG_SUBSAMPLING, optimize=False)
    return buf.getvalue(), truth


def _object_name(index: int) -> str:
    return f"synth-{index:06d}"


def _render_chunk(out: str, jobs: list[tuple[int, str]], size: int, seed: int) -> list[tuple[int, dict]]:
    """Render and write a chunk of objects; runs in a worker process."""
    done = []
    for index, label in jobs:
        data, truth = render(label, size, seed, index)
        write_bytes(Path(out) / label / f"{_object_name(index)}.jpg", data)
        done.append((index, truth))
    return done


def _validate(out: str | Path, n: int, size: int, seed: int, mix, workers, val: float,
              test: float) -> tuple[Path, tuple[float, float, float]]:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 32 <= size <= 2048:
        raise ValueError(f"size must be an integer from 32 to 2048 pixels, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        values = tuple(float(m) for m in mix)
    except (TypeError, ValueError):
        raise ValueError(f"mix must be three non-negative numbers (GALAXY, QSO, STAR) summing to 1, got {mix!r}") from None
    if len(values) != 3 or any(not math.isfinite(v) or v < 0 for v in values) or abs(sum(values) - 1.0) > 0.01:
        raise ValueError(f"mix must be three non-negative numbers (GALAXY, QSO, STAR) summing to 1, got {mix!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    if not (0.0 <= val < 1.0 and 0.0 <= test < 1.0 and val + test < 1.0):
        raise ValueError(f"val and test must be fractions with val + test < 1, got val={val!r} test={test!r}")
    root = Path(out)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".synth-probe-"):
            pass
    except OSError as exc:
        raise ValueError(f"output folder {root} is not writable: {exc.strerror or exc}") from None
    return root, values


def synthesize(out: str | Path, n: int, size: int = 128, seed: int = 0,
               mix: tuple[float, float, float] = STUDY_MIX,
               workers: int | None = None, val: float = VAL_FRACTION, test: float = TEST_FRACTION,
               progress: Callable[[int, int], None] | None = None) -> SynthSummary:
    """Simulate ``n`` SDSS-like cutouts and write them as a dataset folder.

    Writes ``out/<LABEL>/synth-NNNNNN.jpg``, ``out/manifest.csv`` (stratified split, source
    ``synth``) and ``out/synth.json`` (parameters, versions and each object's drawn truth).
    The files are byte-identical for the same arguments whatever ``workers`` is.

    Args:
        out: dataset folder (created if missing).
        n: number of images.
        size: side in pixels at 0.4"/px (32 to 2048).
        seed: fixes every random draw.
        mix: fractions of GALAXY, QSO, STAR; counts are rounded by largest remainder.
        workers: processes to use (None: all cores; 1: in this process).
        val: fraction of each class in the ``val`` split.
        test: fraction of each class in the ``test`` split.
        progress: called as ``progress(done, n)`` whenever a chunk of objects is written.

    Returns:
        A ``SynthSummary``.

    Raises:
        ValueError: an argument out of range or an output folder that cannot be written;
            the message names the argument.
    """
    start = time.perf_counter()
    root, mix = _validate(out, n, size, seed, mix, workers, val, test)
    counts = class_counts(int(n), mix)
    labels = np.array([label for label in LABELS for _ in range(counts[label])])
    labels = labels[np.random.default_rng(np.random.SeedSequence((seed, 2**31))).permutation(int(n))]
    for label in LABELS:
        (root / label).mkdir(exist_ok=True)
    jobs = [(i, str(label)) for i, label in enumerate(labels)]
    workers = workers or os.cpu_count() or 1
    # Small chunks keep both cores busy to the end and the progress bar moving.
    chunk = max(1, min(32, len(jobs) // (workers * 8) or 1))
    chunks = [jobs[k:k + chunk] for k in range(0, len(jobs), chunk)]
    truth: dict[int, dict] = {}
    if workers == 1:
        for part in chunks:
            truth.update(_render_chunk(str(root), part, int(size), int(seed)))
            if progress is not None:
                progress(len(truth), int(n))
    else:
        # Spawned, not forked: a caller that has already started TensorFlow's or BLAS's
        # threads can deadlock a forked child.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=context) as pool:
            futures = [pool.submit(_render_chunk, str(root), part, int(size), int(seed)) for part in chunks]
            for future in as_completed(futures):
                truth.update(future.result())
                if progress is not None:
                    progress(len(truth), int(n))
    records = [Record(path=f"{label}/{_object_name(i)}.jpg", label=label, objid=_object_name(i), source="synth")
               for i, label in jobs]
    manifest = write_manifest(root, stratified_split(records, seed=int(seed), val=val, test=test))
    meta = {
        "generator": "train.synth",
        "n": int(n), "size": int(size), "seed": int(seed), "mix": list(mix), "val": val, "test": test,
        "counts": counts,
        "pixel_scale_arcsec": PIXEL_SCALE, "bands": list(BANDS), "limiting_mag": LIMITING_MAG,
        "median_fwhm_arcsec": MEDIAN_FWHM, "rgb_scales": RGB_SCALES, "lupton_q": LUPTON_Q,
        "lupton_stretch": LUPTON_STRETCH, "jpeg_quality": JPEG_QUALITY,
        "galsim_version": galsim.__version__, "numpy_version": np.__version__,
        "objects": {_object_name(i): truth[i] for i in sorted(truth)},
    }
    write_text(root / "synth.json", json.dumps(meta, indent=1, sort_keys=False) + "\n")
    return SynthSummary(out=str(root), counts=counts, seconds=round(time.perf_counter() - start, 3),
                        manifest=str(manifest))


__all__ = ["SynthSummary", "synthesize", "render", "class_counts", "lupton_rgb"]
