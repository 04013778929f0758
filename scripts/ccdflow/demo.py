"""Synthetic "demo night" with known truth: raw CCD frames plus everything that made them.

``make_night(outdir)`` writes ``outdir/raw/*.fits`` (bias, darks, twilight flats and dithered
light frames with MaxIm-DL-like headers, or another camera style, see below) and
``outdir/truth/`` (what the pipeline should recover). Same seed and spec give byte-identical raw
files: one ``numpy.random.Generator`` is drawn in a fixed order (bias pattern, dark rate, flats,
stars, night plan, then each frame in file order: cosmic rays, Poisson, read noise), and DATE-OBS
comes from ``NightSpec.start``, not the clock. Everything a camera style adds (the "pro" bias
drift and overscan noise) comes from a second generator, seeded by
``SeedSequence(seed).spawn(1)[0]``, so every style sees the same sky, stars, dithers and noise in
its image area as the default style with the same seed and night plan.

Geometry
--------
The reference sky frame has pixel coordinates (x, y), 0-based, pixel centres at integers, x
along a row (FITS NAXIS1). A light frame with dither (dx, dy, rot_deg) sees a star at reference
position p at ``p' = R(rot) @ (p - c) + c + (dx, dy)``, ``c = ((nx - 1) / 2, (ny - 1) / 2)``,
``R = [[cos, -sin], [sin, cos]]`` acting on (x, y) (counter-clockwise for rot_deg > 0).

Image model (electrons per pixel, exposure t in s)
--------------------------------------------------
light ``S = flat * (sky * t + stars * t) + dark_rate * t``; flat ``S = flat * level_e +
dark_rate * t``; dark ``S = dark_rate * t``; bias ``S = 0``. Then ``raw = clip(rint((Poisson(S) +
cosmics + N(0, read_noise)) / gain + bias), 0, saturation)`` as uint16 (BITPIX 16, BZERO 32768),
with ``bias = bias_level + pattern`` in ADU. Cosmic rays hit lights and darks only. Stars are
pixel-integrated Gaussians (erf), so star fluxes are in e-/s *before* the flat (what a
flat-fielded frame measures). Closed-shutter frames carry ``FILTER = closed_filter``.

Camera styles (``NightSpec.camera``)
------------------------------------
Types are bias, dark, flat, light; the card holding them and its values depend on the style.
``OBJECT`` (= ``NightSpec.object``) is on light frames only, in every style. Closed-shutter frames
carry the filter ``closed_filter`` in whatever filter card the style has.

``"maxim"`` (default, MaxIm DL): ``IMAGETYP`` = 'Bias Frame', 'Dark Frame', 'Flat Field', 'Light
Frame'; EXPTIME and EXPOSURE, FILTER, OBJECT, DATE-OBS, GAIN (e-/ADU), RDNOISE (e-), XBINNING,
YBINNING, CCD-TEMP, INSTRUME, TELESCOP. Files ``bias_001.fits``, ``dark_300s_001.fits``,
``flat_V_001.fits``, ``light_<object>_V_060s_001.fits``.

``"pro"`` (observatory CCD, NOAO/IRAF-like): no IMAGETYP; ``OBSTYPE`` = 'zero', 'dark', 'flat',
'object'; EXPTIME (no EXPOSURE), FILTER, OBJECT, DATE-OBS, GAIN, RDNOISE, CCDSUM = '1 1' (no
XBINNING/YBINNING), CCDTEMP, BIASSEC = ``[nx+3:nx+oc,1:ny]``, TRIMSEC = DATASEC =
``[1:nx,1:ny]``, INSTRUME, TELESCOP (oc = ``overscan_cols``; the two overscan columns next to
the image are left out of BIASSEC, as usual, though here they hold the same as the others).
Each raw frame is (ny, nx + oc): the image area, then ``oc`` serial-overscan columns on the
right. The bias of frame f has a row level ``L_f(y) = bias_level + bias_offset_f + bias_ramp_f *
(y / (ny - 1) - 0.5)`` (ADU, y = 0-based row, so ``bias_ramp_f`` = last row minus first row);
``bias_offset_f = bias_drift * sin(2 pi tau / 2 h + phi) + N(0, bias_drift / 5)`` (tau: hours
since ``start``, phi random per night) and ``bias_ramp_f ~ U(-bias_ramp, bias_ramp)``. Image
area: the model above with ``bias + L_f(y) - bias_level`` instead of ``bias``. Overscan:
``clip(rint(N(0, read_noise) / gain + L_f(y)), 0, saturation)``, nothing else (no light, dark
current or cosmic rays: overscan pixels are read-outs of an empty register). After subtracting
``L_f`` row by row, every frame's bias is ``bias - bias_level``. File names as "maxim".

``"amateur"`` (N.I.N.A.-like CMOS/CCD): ``IMAGETYP`` = 'Bias Frame', 'Dark Frame', 'Flat Frame',
'Light Frame'; EXPOSURE only (no EXPTIME), ``FILTNAME`` (no FILTER), OBJECT, DATE-OBS, XBINNING,
YBINNING, ``EGAIN`` (e-/ADU), ``GAIN`` = 100 and ``OFFSET`` = 50 (the camera's gain and offset
*settings*, not e-/ADU), no RDNOISE, CCD-TEMP, SET-TEMP, INSTRUME, TELESCOP. File names and
data as "maxim".

``"nameonly"``: the "maxim" header without IMAGETYP (no type card at all); the type is only in
the file name: ``bias_001.fits``, ``dark_300s_001.fits``, ``flat_V_001.fits`` and lights
``<object>_<filter>_<exp>_<nnn>.fits`` (e.g. ``M13demo_V_060s_001.fits``, no ``light_`` prefix).
Names use only [A-Za-z0-9.+-] within a field and ``_`` between fields.

Nights (``NightSpec.n_nights``, any style): calibrations (bias, darks, flats) are all taken on
night 1; the lights of each (exposure, filter) are split in consecutive blocks of their number
over the nights (``i``-th of n_lights on night ``(i - 1) * n_nights // n_lights + 1``, numbering
continuous across nights). Night k's lights start at the clock time of night 1's, k - 1 days
later (DATE-OBS is UTC). Truth names a frame's night by ``night`` = the date of the evening it
began, ``date(start) + (k - 1) days`` (the site is taken to keep UTC, so "local" = UTC date of
``start``), and ``night_index`` = k.

Bad lights (``NightSpec.bad_lights``)
------------------------------------
Each ``(kind, value)`` entry adds one light frame to the first group (``light_exptimes[0]``,
``filters[0]``), numbered after its ``n_lights`` good ones and taken after the last light of
the night, or with ``bad_lights_first`` just before the first light of the night (so the
earliest frame of its group is bad, and must not become the alignment reference):
``("cloudy", t)`` multiplies the star fluxes by
the transparency ``t`` (the sky stays); ``("seeing", k)`` has a FWHM of ``k * fwhm``;
``("trailed", L)`` smears every star along a line of ``L`` px (direction uniform in angle,
the star's flux spread evenly over ``ceil(L) + 1`` Gaussians from ``-L/2`` to ``+L/2``).
Their dither, noise and cosmic rays come from a third generator,
``SeedSequence(seed).spawn(2)[1]``, so every other raw file is byte-identical to the same
night without bad lights: delete the bad files and you have that night. Truth: ``defect``
(the kind) and ``transparency``, ``fwhm`` or ``trail_px`` and ``trail_deg``.

Dome flats (``NightSpec.n_dome_flats``)
---------------------------------------
With ``n_dome_flats`` > 0 each filter also gets that many dome (lamp) flats,
``domeflat_<filter>_nnn.fits``, taken after the last frame, and the twilight flats become
sky flats: type card 'Sky Flat' / 'Dome Flat' ("maxim", "amateur") or 'skyflat' /
'domeflat' ("pro"; "nameonly" has no card for them). The lamp lights the detector as the
sky does times `dome_illumination` (``1 + a u + b v + c u v``, ``(a, b, c) =
dome_illumination``, u, v = x, y scaled to [-1, 1]): a dome flat is ``S = flat *
dome_illumination * level_e + dark_rate * t``. Their levels and noise come from a fourth
generator, ``SeedSequence(seed).spawn(3)[2]``, so the other frames' pixels are those of the
same night without them (only the sky flats' type card differs). Truth: ``flat_kind``
('sky' or 'dome') of every flat.

Dead pixels and bad columns (``NightSpec.dead_pixel_fraction``, ``bad_columns``)
--------------------------------------------------------------------------------
A response map multiplies every filter's flat (so flats, sky and stars alike): a fraction
``dead_pixel_fraction`` of the pixels get a response U(``dead_response``), and each
``(x, response)`` of ``bad_columns`` multiplies the whole column x (0-based) by
``response``. Drawn from a fifth generator, ``SeedSequence(seed).spawn(4)[3]``, and only
when asked for, so a night without them is byte-identical to before. Truth:
``bad_pixels.fits`` (uint8 bits: 1 hot pixel, i.e. dark rate above ``dark_current``; 2
dead pixel; 4 bad column), always written.

Truth (``outdir/truth/``)
-------------------------
``truth.json`` (seed, version, spec, file names, one entry per raw frame), ``bias.fits`` (ADU),
``dark_rate.fits`` (e-/s), ``flat_<filter>.fits`` (median of the central half in each axis = 1),
``stars.ecsv`` (id = row, x, y, flux_<filter> in e-/s) and ``cosmics/<stem>.fits`` (uint8, 1 where
a cosmic ray deposited charge). Lights also list ``saturated_star_ids``: stars whose nearest pixel
reaches ``saturation`` in the noiseless frame. All images refer to the image area (for "pro",
``bias.fits`` is ``bias_level + pattern`` without any frame's offset or ramp). ``truth.json``
``camera`` names the style and its cards (``type_keyword``, ``exptime_keyword``,
``filter_keyword``, ``gain_keyword``, ``raw_shape`` and, for "pro", ``biassec``, ``trimsec``,
``datasec``). Each frame has ``type``, ``imagetyp`` (the value of the type card, null for
"nameonly"), ``night``, ``night_index``; for "pro" also ``bias_offset`` and ``bias_ramp`` (ADU)
and ``overscan`` = ``overscan/<stem>.fits``: ``L_f(y)`` as a float64 array of ny values (ADU, the
expectation of the overscan pixels of each row; `frame_bias` gives the 2-D bias of the area).
"""

__all__ = [
    "BAD_LIGHTS",
    "CAMERAS",
    "PRESETS",
    "TRUTH_COLUMN",
    "TRUTH_DEAD",
    "TRUTH_HOT",
    "NightSpec",
    "dome_illumination",
    "expected_electrons",
    "frame_bias",
    "load_truth",
    "main",
    "make_night",
    "render_stars",
    "transform_positions",
]

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from scipy.special import erf

from ccdflow import __version__

_IMAGETYP = dict(bias="Bias Frame", dark="Dark Frame", flat="Flat Field", light="Light Frame")
#: Camera styles (see the module docstring): the card holding the frame type and its values.
CAMERAS = {
    "maxim": dict(type_keyword="IMAGETYP", types=_IMAGETYP),
    "pro": dict(
        type_keyword="OBSTYPE", types=dict(bias="zero", dark="dark", flat="flat", light="object")
    ),
    "amateur": dict(
        type_keyword="IMAGETYP",
        types=dict(bias="Bias Frame", dark="Dark Frame", flat="Flat Frame", light="Light Frame"),
    ),
    "nameonly": dict(type_keyword=None, types=dict.fromkeys(_IMAGETYP)),
}
#: Type-card values of sky (twilight) and dome flats, per camera style, when a night has
#: dome flats (`NightSpec.n_dome_flats`).
_FLAT_KIND_TYPES = {
    "maxim": ("Sky Flat", "Dome Flat"),
    "pro": ("skyflat", "domeflat"),
    "amateur": ("Sky Flat", "Dome Flat"),
}
_OVERSCAN_SKIP = 2  # overscan columns next to the image left out of BIASSEC
_DRIFT_PERIOD_H = 2.0  # period of the "pro" bias drift (hours)
_READOUT_S = 10.0  # s between the end of one exposure and the start of the next
_STAMP_FWHM = 4.0  # star stamps extend this many FWHM either side of the centre
#: Kinds of `NightSpec.bad_lights` and what their value is.
BAD_LIGHTS = {
    "cloudy": "transparency: star flux factor, in (0, 1]",
    "seeing": "FWHM factor, > 0",
    "trailed": "trail length (px), >= 0",
}


@dataclasses.dataclass(frozen=True)
class NightSpec:
    """Parameters of a synthetic night (defaults: the "demo" preset).

    Units: ADU for ``bias_*``, ``flat_level`` and ``saturation``; electrons (e-) for
    ``read_noise`` and ``cosmic_charge`` (per pixel); e-/s/px for ``dark_current``,
    ``hot_pixel_rate`` and ``sky``; e-/s total for ``star_flux``; seconds for exposure times;
    pixels for ``shape`` (ny, nx, the image area), ``fwhm``, ``max_shift`` and
    ``overscan_cols``; cosmic-ray events / s / 1e4 px. ``camera`` is a key of `CAMERAS`;
    ``bias_drift`` and ``bias_ramp`` (ADU) and ``overscan_cols`` only act for "pro".
    ``sky`` and ``colour`` map filter -> value (pairs). Star fluxes follow dN/dF ~
    F**-star_flux_index (index != 1) in ``filters[0]``; other filters get ``colour`` times a
    per-star factor U(1 - colour_spread, 1 + colour_spread). Ranges are (low, high), inclusive.
    Non-hot pixels have exactly ``dark_current``; hot ones are log-uniform in ``hot_pixel_rate``.
    """

    shape: tuple[int, int] = (512, 512)
    gain: float = 1.5
    read_noise: float = 6.0
    bias_level: float = 1000.0
    bias_pattern_amp: float = 8.0
    dark_current: float = 0.05
    hot_pixel_fraction: float = 0.002
    hot_pixel_rate: tuple[float, float] = (2.0, 40.0)
    saturation: int = 65535
    ccd_temp: float = -20.0
    n_bias: int = 7
    n_darks: int = 5
    dark_exptimes: tuple[float, ...] = (300.0,)
    filters: tuple[str, ...] = ("V", "R")
    closed_filter: str = "V"
    n_flats: int = 5
    flat_exptime: float = 2.0
    flat_level: float = 20000.0
    flat_level_spread: float = 0.2
    vignetting: tuple[float, float] = (0.10, 0.15)
    n_dust: tuple[int, int] = (2, 4)
    dust_depth: tuple[float, float] = (0.05, 0.15)
    prnu: float = 0.01
    light_exptimes: tuple[float, ...] = (60.0, 120.0)
    n_lights: int = 3
    object: str = "M13demo"
    sky: tuple[tuple[str, float], ...] = (("V", 2.0), ("R", 3.5))
    colour: tuple[tuple[str, float], ...] = (("V", 1.0), ("R", 1.2))
    colour_spread: float = 0.15
    n_stars: int = 300
    fwhm: float = 3.0
    star_flux: tuple[float, float] = (50.0, 2.0e5)
    star_flux_index: float = 1.7
    max_shift: float = 8.0
    max_rot_deg: float = 0.3
    cosmic_rate: float = 0.03
    cosmic_length: tuple[int, int] = (1, 6)
    cosmic_charge: tuple[float, float] = (300.0, 5000.0)
    start: str = "2024-03-15T17:30:00.000"
    camera: str = "maxim"
    n_nights: int = 1
    overscan_cols: int = 32
    bias_drift: float = 10.0
    bias_ramp: float = 4.0
    bad_lights: tuple[tuple[str, float], ...] = ()
    n_dome_flats: int = 0
    dome_illumination: tuple[float, float, float] = (0.12, -0.08, 0.0)
    bad_lights_first: bool = False
    dead_pixel_fraction: float = 0.0
    dead_response: tuple[float, float] = (0.2, 0.5)
    bad_columns: tuple[tuple[int, float], ...] = ()

    def __post_init__(self):
        # Accept lists (JSON, CLI) wherever a tuple is expected, so specs round-trip.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list | tuple):
                value = tuple(tuple(v) if isinstance(v, list | tuple) else v for v in value)
                object.__setattr__(self, f.name, value)
        for name in ("sky", "colour"):
            missing = set(self.filters) - dict(getattr(self, name)).keys()
            if missing:
                raise ValueError(f"NightSpec.{name} has no value for filter(s) {sorted(missing)}")
        if self.camera not in CAMERAS:
            raise ValueError(f"NightSpec.camera {self.camera!r} is not one of {list(CAMERAS)}")
        if not 1 <= self.n_nights <= max(self.n_lights, 1):
            msg = f"NightSpec.n_nights = {self.n_nights} must be in 1..n_lights ({self.n_lights})"
            raise ValueError(msg)
        if self.overscan_cols <= _OVERSCAN_SKIP:
            raise ValueError(f"NightSpec.overscan_cols must be > {_OVERSCAN_SKIP}")
        if self.n_dome_flats and self.camera not in _FLAT_KIND_TYPES:
            msg = f"NightSpec.n_dome_flats: camera {self.camera!r} has no type card for them"
            raise ValueError(msg)
        for kind, value in self.bad_lights:
            ok = {"cloudy": 0 < value <= 1, "seeing": value > 0, "trailed": value >= 0}
            if not ok.get(kind, False):
                what = BAD_LIGHTS.get(kind, f"one of {list(BAD_LIGHTS)}")
                raise ValueError(f"NightSpec.bad_lights ({kind!r}, {value!r}): {what}")
        for x, response in self.bad_columns:
            if not (0 <= x < self.shape[1] and response >= 0):
                msg = f"NightSpec.bad_columns ({x!r}, {response!r}): x in 0..{self.shape[1] - 1}"
                raise ValueError(msg + ", response >= 0")


#: Named starting points for `make_night`; "demo" is the `NightSpec` defaults.
PRESETS = {
    "test": NightSpec(shape=(96, 128), n_bias=5, n_lights=2, n_stars=60, hot_pixel_fraction=1e-3),
    "demo": NightSpec(),
    "benchmark": NightSpec(
        shape=(2048, 2048),
        n_bias=10,
        n_darks=10,
        dark_exptimes=(60.0,),
        n_flats=10,
        light_exptimes=(60.0,),
        n_lights=8,
        n_stars=600,
    ),
}


def transform_positions(x, y, *, dx, dy, rot_deg, shape):
    """Map reference-frame positions into a dithered frame (see the module docstring).

    Parameters
    ----------
    x, y : array_like
        Positions in the reference sky frame (px, 0-based).
    dx, dy : float
        Shift of the frame (px).
    rot_deg : float
        Counter-clockwise rotation about the chip centre (degrees).
    shape : tuple of int
        (ny, nx) of the chip.

    Returns
    -------
    xp, yp : ndarray
        Positions in the frame (px).
    """
    cx, cy = (shape[1] - 1) / 2, (shape[0] - 1) / 2
    a = math.radians(rot_deg)
    u, v = np.asarray(x, float) - cx, np.asarray(y, float) - cy
    return math.cos(a) * u - math.sin(a) * v + cx + dx, math.sin(a) * u + math.cos(a) * v + cy + dy


def render_stars(shape, x, y, flux, fwhm):
    """Noiseless image of Gaussian stars, integrated over each pixel (exact, via erf).

    Parameters
    ----------
    shape : tuple of int
        (ny, nx) of the image.
    x, y : array_like
        Star centres (px, 0-based, pixel centres at integers).
    flux : array_like
        Total flux of each star (any unit, e.g. e-/s); the image sums to it within 1e-6
        for stars at least ``4 * fwhm`` from the edges.
    fwhm : float
        Full width at half maximum of the PSF (px).

    Returns
    -------
    ndarray
        float64 image in the unit of ``flux`` per pixel.
    """
    ny, nx = shape
    x, y, flux = (np.atleast_1d(np.asarray(a, float)) for a in (x, y, flux))
    h = math.ceil(_STAMP_FWHM * fwhm)
    scale = fwhm / math.sqrt(4 * math.log(2))  # sqrt(2) * sigma
    offsets = np.arange(-h, h + 1)
    edges = np.arange(-h - 0.5, h + 1.0)

    def profile(centre):
        # Pixel indices of each stamp and the fraction of the flux falling in each.
        near = np.rint(centre)[:, None]
        frac = 0.5 * np.diff(erf((near + edges - centre[:, None]) / scale), axis=1)
        return (near + offsets).astype(np.int64), frac

    ix, px = profile(x)
    iy, py = profile(y)
    weight = flux[:, None, None] * py[:, :, None] * px[:, None, :]
    inside = ((iy >= 0) & (iy < ny))[:, :, None] & ((ix >= 0) & (ix < nx))[:, None, :]
    index = iy[:, :, None] * nx + ix[:, None, :]
    return np.bincount(index[inside], weight[inside], minlength=ny * nx).reshape(ny, nx)


def expected_electrons(truth, frame):
    """Noiseless electrons per pixel ``S`` of one frame (no cosmic rays, no bias).

    Parameters
    ----------
    truth : dict
        As returned by `make_night` or `load_truth`.
    frame : dict or str
        An entry of ``truth["frames"]`` or its ``file`` name.

    Returns
    -------
    ndarray
        float64 image (e-).
    """
    if isinstance(frame, str):
        frame = next(f for f in truth["frames"] if f["file"] == frame)
    spec, t = truth["spec"], frame["exptime"]
    dark = truth["dark_rate"].astype(np.float64) * t
    if frame["type"] == "bias":
        return np.zeros_like(dark)
    if frame["type"] == "dark":
        return dark
    flat = truth["flat"][frame["filter"]].astype(np.float64)
    if frame["type"] == "flat":
        if frame.get("flat_kind") == "dome":
            flat = flat * dome_illumination(spec)
        return flat * frame["level_e"] + dark
    shape, stars = tuple(spec["shape"]), truth["stars"]
    x, y = _frame_xy(stars, frame, shape)
    flux = np.asarray(stars[f"flux_{frame['filter']}"], float) * frame.get("transparency", 1.0)
    fwhm = frame.get("fwhm", spec["fwhm"])
    length = frame.get("trail_px", 0.0)
    if length:
        n = math.ceil(length) + 1
        a = math.radians(frame["trail_deg"])
        img = sum(
            render_stars(shape, x + u * math.cos(a), y + u * math.sin(a), flux / n, fwhm)
            for u in np.linspace(-length / 2, length / 2, n)
        )
    else:
        img = render_stars(shape, x, y, flux, fwhm)
    return flat * (frame["sky_e_per_s"] + img) * t + dark


def dome_illumination(spec):
    """The dome lamp's illumination relative to the sky's: ``1 + a u + b v + c u v``,
    ``(a, b, c) = spec["dome_illumination"]``, with u, v = pixel x, y scaled to [-1, 1]
    (as `ccdflow.illumination` scales them). float64 image of the frame shape."""
    ny, nx = spec["shape"]
    a, b, c = spec["dome_illumination"]
    u = (np.arange(nx) - (nx - 1) / 2) / ((nx - 1) / 2)
    v = (np.arange(ny) - (ny - 1) / 2) / ((ny - 1) / 2)
    return 1 + a * u[None, :] + b * v[:, None] + c * u[None, :] * v[:, None]


def _dome_flats(spec, frames, rng):
    """`NightSpec.n_dome_flats` per filter, after the last frame (module docstring); the
    twilight flats become sky flats."""
    sky_type, dome_type = _FLAT_KIND_TYPES[spec.camera]
    for f in frames:
        if f["type"] == "flat":
            f |= {"imagetyp": sky_type, "flat_kind": "sky"}
    last = frames[-1]
    clock = _dt.datetime.fromisoformat(last["date_obs"])
    clock += _dt.timedelta(seconds=last["exptime"] + _READOUT_S)
    out = []
    for filt in spec.filters:
        for i in range(1, spec.n_dome_flats + 1):
            spread = rng.uniform(-spec.flat_level_spread, spec.flat_level_spread)
            level = spec.flat_level * spec.gain * (1 + spread)
            entry = dict(file=f"domeflat_{_safe(filt)}_{i:03d}.fits", type="flat")
            entry |= dict(imagetyp=dome_type, filter=filt, exptime=float(spec.flat_exptime))
            entry |= {"date_obs": clock.isoformat(timespec="milliseconds")}
            entry |= {"night": last["night"], "night_index": last["night_index"]}
            out.append(entry | {"level_e": level, "flat_kind": "dome"})
            clock += _dt.timedelta(seconds=spec.flat_exptime + _READOUT_S)
    return out


def frame_bias(truth, frame):
    """Bias of the image area of one frame (ADU): ``bias``, plus ``L_f(y) - bias_level`` for "pro".

    Parameters
    ----------
    truth : dict
        As returned by `make_night` or `load_truth`.
    frame : dict or str
        An entry of ``truth["frames"]`` or its ``file`` name.

    Returns
    -------
    ndarray
        float64 image (ADU), the expectation of a raw frame with no signal.
    """
    if isinstance(frame, str):
        frame = next(f for f in truth["frames"] if f["file"] == frame)
    bias = truth["bias"].astype(np.float64)
    if "overscan" not in frame:
        return bias
    level = _row_levels(truth["spec"], frame["bias_offset"], frame["bias_ramp"])
    return bias + (level - truth["spec"]["bias_level"])[:, None]


def _row_levels(spec, offset, ramp):
    """``L_f(y)`` of the "pro" style (ADU per row)."""
    spec = spec if isinstance(spec, dict) else dataclasses.asdict(spec)
    return spec["bias_level"] + offset + ramp * np.linspace(-0.5, 0.5, spec["shape"][0])


def _frame_xy(stars, frame, shape):
    dither = {k: frame[k] for k in ("dx", "dy", "rot_deg")}
    return transform_positions(stars["x"], stars["y"], shape=shape, **dither)


def _safe(name):
    return re.sub(r"[^A-Za-z0-9.+-]", "-", str(name))


def _exp_label(t):
    return f"{int(t):03d}s" if float(t).is_integer() else f"{t:07.3f}".rstrip("0") + "s"


def _detector(spec, rng):
    """Bias (ADU, level + column offsets + gradient) and dark rate (e-/s, with hot pixels)."""
    ny, nx = spec.shape
    cols = 0.5 * rng.standard_normal(nx)
    gx, gy = rng.uniform(-0.5, 0.5, 2)
    ramp_x, ramp_y = np.linspace(-1, 1, nx)[None, :], np.linspace(-1, 1, ny)[:, None]
    pattern = spec.bias_pattern_amp * (cols[None, :] + gx * ramp_x + gy * ramp_y)
    bias = (spec.bias_level + pattern).astype(np.float32)
    dark = np.full(ny * nx, spec.dark_current)
    hot = rng.choice(ny * nx, round(spec.hot_pixel_fraction * ny * nx), replace=False)
    dark[hot] = np.exp(rng.uniform(*np.log(spec.hot_pixel_rate), hot.size))
    return bias, dark.reshape(ny, nx).astype(np.float32)


def _flats(spec, rng):
    """Per-filter flats: vignetting x dust donuts x shared PRNU, central median = 1."""
    ny, nx = spec.shape
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    prnu = 1 + spec.prnu * rng.standard_normal((ny, nx))
    out = {}
    for name in spec.filters:
        cx = (nx - 1) / 2 + rng.uniform(-0.05, 0.05) * nx  # optical axis near the centre
        cy = (ny - 1) / 2 + rng.uniform(-0.05, 0.05) * ny
        r2 = ((x - cx) ** 2 + (y - cy) ** 2) / ((nx / 2) ** 2 + (ny / 2) ** 2)
        flat = (1 - rng.uniform(*spec.vignetting) * r2) * prnu
        for _ in range(rng.integers(spec.n_dust[0], spec.n_dust[1] + 1)):
            dx, dy = rng.uniform(0, nx), rng.uniform(0, ny)
            radius = rng.uniform(0.03, 0.08) * min(ny, nx)
            width, depth = max(0.25 * radius, 1.0), rng.uniform(*spec.dust_depth)
            r = np.hypot(x - dx, y - dy)
            flat *= 1 - depth * np.exp(-0.5 * ((r - radius) / width) ** 2)
        centre = flat[ny // 4 : 3 * ny // 4, nx // 4 : 3 * nx // 4]
        out[name] = (flat / np.median(centre)).astype(np.float32)
    return out


#: Bits of the truth's ``bad_pixels.fits``.
TRUTH_HOT, TRUTH_DEAD, TRUTH_COLUMN = 1, 2, 4


def _dead_pixels(spec, flats, seed):
    """Multiply every flat (in place) by the response of the dead pixels and bad columns;
    return the truth bits (uint8) of those pixels."""
    ny, nx = spec.shape
    out = np.zeros((ny, nx), np.uint8)
    if not spec.dead_pixel_fraction and not spec.bad_columns:
        return out
    rng = np.random.default_rng(seed)
    response = np.ones(ny * nx, np.float32)
    dead = rng.choice(ny * nx, round(spec.dead_pixel_fraction * ny * nx), replace=False)
    response[dead] = rng.uniform(*spec.dead_response, dead.size)
    response = response.reshape(ny, nx)
    out.reshape(-1)[dead] |= TRUTH_DEAD
    for x, factor in spec.bad_columns:
        response[:, int(x)] *= np.float32(factor)
        out[:, int(x)] |= TRUTH_COLUMN
    for name in flats:
        flats[name] = (flats[name] * response).astype(np.float32)
    return out


def _stars(spec, rng):
    """Star table in the reference frame, with a margin so dithered stars stay on chip."""
    ny, nx = spec.shape
    margin = spec.max_shift + math.radians(spec.max_rot_deg) * math.hypot(nx, ny) / 2
    margin = min(margin + 2 * spec.fwhm, min(ny, nx) / 4)
    x = rng.uniform(margin, nx - 1 - margin, spec.n_stars)
    y = rng.uniform(margin, ny - 1 - margin, spec.n_stars)
    p = 1 - spec.star_flux_index
    lo, hi = np.asarray(spec.star_flux, float) ** p
    base = (lo + rng.uniform(0, 1, spec.n_stars) * (hi - lo)) ** (1 / p)
    table = Table({"id": np.arange(spec.n_stars), "x": x, "y": y})
    table["x"].unit = table["y"].unit = "pix"
    colour = dict(spec.colour)
    for i, name in enumerate(spec.filters):
        s = spec.colour_spread
        factor = 1.0 if i == 0 else rng.uniform(1 - s, 1 + s, spec.n_stars)
        table[f"flux_{name}"] = base * colour[name] * factor
        table[f"flux_{name}"].unit = "electron / s"
    return table


def _plan(spec, rng):
    """The frames in acquisition order (bias, darks, flats, lights by night) with their truth."""
    start = _dt.datetime.fromisoformat(spec.start)
    clock, types = start, CAMERAS[spec.camera]["types"]
    frames, sky = [], dict(spec.sky)

    def add(kind, file, filt, t, night=1, **extra):
        nonlocal clock
        entry = dict(file=file, type=kind, imagetyp=types[kind], filter=filt, exptime=float(t))
        entry |= {"date_obs": clock.isoformat(timespec="milliseconds")}
        day = (start + _dt.timedelta(days=night - 1)).date().isoformat()
        frames.append(entry | {"night": day, "night_index": night} | extra)
        clock += _dt.timedelta(seconds=t + _READOUT_S)

    for i in range(1, spec.n_bias + 1):
        add("bias", f"bias_{i:03d}.fits", spec.closed_filter, 0.0)
    for t in spec.dark_exptimes:
        for i in range(1, spec.n_darks + 1):
            add("dark", f"dark_{_exp_label(t)}_{i:03d}.fits", spec.closed_filter, t)
    for f in spec.filters:
        for i in range(1, spec.n_flats + 1):
            spread = rng.uniform(-spec.flat_level_spread, spec.flat_level_spread)
            level = spec.flat_level * spec.gain * (1 + spread)
            add("flat", f"flat_{_safe(f)}_{i:03d}.fits", f, spec.flat_exptime, level_e=level)
    dusk = clock + _dt.timedelta(minutes=20)  # end of twilight
    prefix = "" if spec.camera == "nameonly" else "light_"
    lights = []
    for t in spec.light_exptimes:
        for f in spec.filters:
            for i in range(1, spec.n_lights + 1):
                dx, dy = rng.uniform(-spec.max_shift, spec.max_shift, 2)
                rot = rng.uniform(-spec.max_rot_deg, spec.max_rot_deg)
                name = f"{prefix}{_safe(spec.object)}_{_safe(f)}_{_exp_label(t)}_{i:03d}.fits"
                night = (i - 1) * spec.n_nights // spec.n_lights + 1
                extra = dict(dx=dx, dy=dy, rot_deg=rot, sky_e_per_s=sky[f])
                lights.append((night, ("light", name, f, t, night), extra))
    for night in range(1, spec.n_nights + 1):
        clock = dusk + _dt.timedelta(days=night - 1)
        for args, extra in (light[1:] for light in lights if light[0] == night):
            add(*args, **extra)
    return frames


def _bad_lights(spec, frames, rng):
    """The `NightSpec.bad_lights` frames, after the last light or before the first
    (module docstring)."""
    t, f = spec.light_exptimes[0], spec.filters[0]
    last = frames[-1]
    clock = _dt.datetime.fromisoformat(last["date_obs"])
    clock += _dt.timedelta(seconds=last["exptime"] + _READOUT_S)
    if spec.bad_lights_first:
        last = next(fr for fr in frames if fr["type"] == "light")
        clock = _dt.datetime.fromisoformat(last["date_obs"])
        clock -= _dt.timedelta(seconds=len(spec.bad_lights) * (t + _READOUT_S))
    types = CAMERAS[spec.camera]["types"]
    prefix = "" if spec.camera == "nameonly" else "light_"
    out = []
    for i, (kind, value) in enumerate(spec.bad_lights, start=spec.n_lights + 1):
        dx, dy = rng.uniform(-spec.max_shift, spec.max_shift, 2)
        rot = rng.uniform(-spec.max_rot_deg, spec.max_rot_deg)
        name = f"{prefix}{_safe(spec.object)}_{_safe(f)}_{_exp_label(t)}_{i:03d}.fits"
        entry = dict(file=name, type="light", imagetyp=types["light"], filter=f, exptime=float(t))
        entry |= {"date_obs": clock.isoformat(timespec="milliseconds")}
        entry |= {"night": last["night"], "night_index": last["night_index"]}
        entry |= dict(dx=dx, dy=dy, rot_deg=rot, sky_e_per_s=dict(spec.sky)[f], defect=kind)
        if kind == "cloudy":
            entry["transparency"] = float(value)
        elif kind == "seeing":
            entry["fwhm"] = float(value) * spec.fwhm
        else:
            entry |= {"trail_px": float(value), "trail_deg": float(rng.uniform(0, 180))}
        out.append(entry)
        clock += _dt.timedelta(seconds=t + _READOUT_S)
    return out


def _bias_drift(spec, frames, rng):
    """(bias_offset, bias_ramp) of each frame of the "pro" style, ADU (module docstring)."""
    start = _dt.datetime.fromisoformat(spec.start)
    seconds = [(_dt.datetime.fromisoformat(f["date_obs"]) - start).total_seconds() for f in frames]
    hours = np.array(seconds) / 3600.0
    phase = rng.uniform(0, 2 * np.pi)
    offset = spec.bias_drift * np.sin(2 * np.pi * hours / _DRIFT_PERIOD_H + phase)
    offset += rng.normal(0.0, spec.bias_drift / 5, len(frames))
    ramp = rng.uniform(-spec.bias_ramp, spec.bias_ramp, len(frames))
    return [(float(o), float(r)) for o, r in zip(offset, ramp, strict=True)]


def _cosmics(spec, t, rng):
    """Cosmic-ray electrons (e-): short 8-connected tracks, uniform charge per pixel."""
    ny, nx = spec.shape
    n = rng.poisson(spec.cosmic_rate * t * ny * nx / 1e4)
    lo, hi = spec.cosmic_length
    length = rng.integers(lo, hi + 1, n)
    angle = rng.uniform(0, 2 * np.pi, n)
    x0, y0 = rng.integers(0, nx, n), rng.integers(0, ny, n)
    charge = rng.uniform(*spec.cosmic_charge, (n, hi))
    # Unit steps along the major axis, so each track is connected with no repeated pixel.
    c, s = np.cos(angle), np.sin(angle)
    step = np.maximum(np.abs(c), np.abs(s))
    k = np.arange(hi)
    xs = x0[:, None] + np.rint(k * (c / step)[:, None]).astype(np.int64)
    ys = y0[:, None] + np.rint(k * (s / step)[:, None]).astype(np.int64)
    ok = (k < length[:, None]) & (xs >= 0) & (xs < nx) & (ys >= 0) & (ys < ny)
    return np.bincount(ys[ok] * nx + xs[ok], charge[ok], minlength=ny * nx).reshape(ny, nx)


def _header(spec, frame):
    """Header of a raw frame in the style ``spec.camera``."""
    if spec.camera == "pro":
        return _header_pro(spec, frame)
    if spec.camera == "amateur":
        return _header_amateur(spec, frame)
    header = _header_maxim(spec, frame)
    if spec.camera == "nameonly":
        del header["IMAGETYP"]
    return header


def _filter_comment(frame):
    closed = frame["type"] in ("bias", "dark")
    return "filter in the beam" + (" (shutter closed)" if closed else "")


def _lights_only(cards, frame):
    return fits.Header([c for c in cards if c[0] != "OBJECT" or frame["type"] == "light"])


def _header_pro(spec, frame):
    """NOAO/IRAF-like header with OBSTYPE and the sections of the overscan strip."""
    ny, nx = spec.shape
    trim = f"[1:{nx},1:{ny}]"
    cards = [
        ("OBSTYPE", frame["imagetyp"], "type of observation"),
        ("EXPTIME", frame["exptime"], "[s] exposure time"),
        ("FILTER", frame["filter"], _filter_comment(frame)),
        ("OBJECT", spec.object, "target name"),
        ("DATE-OBS", frame["date_obs"], "[UTC] start of exposure"),
        ("GAIN", spec.gain, "[e-/ADU] detector gain"),
        ("RDNOISE", spec.read_noise, "[e-] read noise"),
        ("CCDSUM", "1 1", "on-chip binning (x y)"),
        ("CCDTEMP", spec.ccd_temp, "[C] CCD temperature"),
        ("BIASSEC", _biassec(spec), "serial overscan used for the bias level"),
        ("TRIMSEC", trim, "section of useful data"),
        ("DATASEC", trim, "image area of the detector"),
        ("INSTRUME", "ccdflow demo CCD", "camera"),
        ("TELESCOP", "ccdflow demo", "telescope"),
    ]
    return _lights_only(cards, frame)


def _biassec(spec):
    ny, nx = spec.shape
    return f"[{nx + _OVERSCAN_SKIP + 1}:{nx + spec.overscan_cols},1:{ny}]"


def _header_amateur(spec, frame):
    """N.I.N.A.-like header: EXPOSURE, FILTNAME, EGAIN (GAIN is the camera's gain setting)."""
    cards = [
        ("IMAGETYP", frame["imagetyp"], "type of image"),
        ("EXPOSURE", frame["exptime"], "[s] exposure time"),
        ("FILTNAME", frame["filter"], _filter_comment(frame)),
        ("OBJECT", spec.object, "target name"),
        ("DATE-OBS", frame["date_obs"], "[UTC] start of exposure"),
        ("XBINNING", 1, "binning factor in x"),
        ("YBINNING", 1, "binning factor in y"),
        ("GAIN", 100, "camera gain setting (not e-/ADU)"),
        ("OFFSET", 50, "camera offset setting"),
        ("EGAIN", spec.gain, "[e-/ADU] electrons per ADU"),
        ("CCD-TEMP", spec.ccd_temp, "[C] sensor temperature"),
        ("SET-TEMP", spec.ccd_temp, "[C] sensor temperature set point"),
        ("INSTRUME", "ccdflow demo CMOS", "camera"),
        ("TELESCOP", "ccdflow demo", "telescope"),
    ]
    return _lights_only(cards, frame)


def _header_maxim(spec, frame):
    """MaxIm-DL-like header of a raw frame."""
    t, closed = frame["exptime"], frame["type"] in ("bias", "dark")
    cards = [
        ("IMAGETYP", frame["imagetyp"], "type of image"),
        ("EXPTIME", t, "[s] exposure time"),
        ("EXPOSURE", t, "[s] exposure time"),
        (
            "FILTER",
            frame["filter"],
            "filter in the beam" + (" (shutter closed)" if closed else ""),
        ),
        ("OBJECT", spec.object, "target name"),
        ("DATE-OBS", frame["date_obs"], "[UTC] start of exposure"),
        ("GAIN", spec.gain, "[e-/ADU] detector gain"),
        ("RDNOISE", spec.read_noise, "[e-] read noise"),
        ("XBINNING", 1, "binning factor in x"),
        ("YBINNING", 1, "binning factor in y"),
        ("CCD-TEMP", spec.ccd_temp, "[C] CCD temperature"),
        ("INSTRUME", "ccdflow demo camera", "camera"),
        ("TELESCOP", "ccdflow demo", "telescope"),
    ]
    return fits.Header([c for c in cards if c[0] != "OBJECT" or frame["type"] == "light"])


def _write(path, data, header=None):
    """Write a single-HDU FITS file atomically (never half-written at ``path``)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fits.PrimaryHDU(data, header=header).writeto(tmp, overwrite=True)
    os.replace(tmp, path)


def make_night(outdir, *, preset="demo", seed=0, **overrides):
    """Generate a synthetic night: raw frames in ``outdir/raw``, truth in ``outdir/truth``.

    Same-named files are overwritten; other files are left alone.

    Parameters
    ----------
    outdir : str or Path
        Output directory (created if needed).
    preset : {"test", "demo", "benchmark"}
        Starting `NightSpec` from `PRESETS`.
    seed : int
        Seed of the single random generator; same seed and spec give identical raw files.
    **overrides
        `NightSpec` fields to replace, e.g. ``shape=(64, 96), n_lights=2``.

    Returns
    -------
    dict
        The truth, as `load_truth` returns it.
    """
    spec = dataclasses.replace(PRESETS[preset], **overrides)
    outdir = Path(outdir)
    raw_dir, truth_dir = outdir / "raw", outdir / "truth"
    for d in (raw_dir, truth_dir / "cosmics"):
        d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bias, dark_rate = _detector(spec, rng)
    model = {"spec": dataclasses.asdict(spec), "bias": bias, "dark_rate": dark_rate}
    model["flat"], model["stars"] = _flats(spec, rng), _stars(spec, rng)
    bad_pixels = _dead_pixels(spec, model["flat"], np.random.SeedSequence(seed).spawn(4)[3])
    bad_pixels[dark_rate != np.float32(spec.dark_current)] |= TRUTH_HOT
    frames = _plan(spec, rng)
    camera_rng, bad_rng, dome_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )  # spawn(3)[i] is spawn(1)[0], spawn(2)[1]: the streams of a night without dome flats
    bad = _bad_lights(spec, frames, bad_rng) if spec.bad_lights else []
    dome = _dome_flats(spec, frames + bad, dome_rng) if spec.n_dome_flats else []
    bias64 = bias.astype(np.float64)
    pro = spec.camera == "pro"
    if pro:
        (truth_dir / "overscan").mkdir(exist_ok=True)
        drift = _bias_drift(spec, frames, camera_rng)
        drift += _bias_drift(spec, bad, bad_rng) if bad else []
        drift += _bias_drift(spec, dome, dome_rng) if dome else []
        for frame, (offset, ramp) in zip(frames + bad + dome, drift, strict=True):
            frame["bias_offset"], frame["bias_ramp"] = offset, ramp
            frame["overscan"] = f"overscan/{Path(frame['file']).stem}.fits"
    frames += bad + dome
    for frame in frames:
        # the generator of this frame's noise
        dome_frame = frame.get("flat_kind") == "dome"
        g = bad_rng if "defect" in frame else dome_rng if dome_frame else rng
        electrons = expected_electrons(model, frame)
        counts = g.poisson(electrons).astype(np.float64) if frame["type"] != "bias" else 0.0
        if frame["type"] in ("light", "dark"):
            hits = _cosmics(spec, frame["exptime"], g)
            counts = counts + hits
            frame["cosmics"] = f"cosmics/{Path(frame['file']).stem}.fits"
            frame["n_cosmic_pixels"] = int(np.count_nonzero(hits))
            _write(truth_dir / frame["cosmics"], (hits > 0).astype(np.uint8))
        counts = counts + g.normal(0.0, spec.read_noise, spec.shape)
        frame_bias64 = frame_bias(model, frame) if pro else bias64
        adu = np.clip(np.rint(counts / spec.gain + frame_bias64), 0, spec.saturation)
        adu = adu.astype(np.uint16)
        if frame["type"] == "light":
            frame["n_saturated_pixels"] = int(np.count_nonzero(adu == spec.saturation))
            expected_adu = electrons / spec.gain + frame_bias64
            frame["saturated_star_ids"] = _saturated(spec, model["stars"], frame, expected_adu)
        if pro:
            level = _row_levels(spec, frame["bias_offset"], frame["bias_ramp"])
            g = bad_rng if "defect" in frame else dome_rng if dome_frame else camera_rng
            noise = g.normal(0.0, spec.read_noise, (spec.shape[0], spec.overscan_cols))
            strip = np.clip(np.rint(noise / spec.gain + level[:, None]), 0, spec.saturation)
            adu = np.hstack([adu, strip.astype(np.uint16)])
            _write(truth_dir / frame["overscan"], level)
        _write(raw_dir / frame["file"], adu, _header(spec, frame))
    files = {"bias": "bias.fits", "dark_rate": "dark_rate.fits", "stars": "stars.ecsv"}
    files["flat"] = {f: f"flat_{_safe(f)}.fits" for f in spec.filters}
    files["bad_pixels"] = "bad_pixels.fits"
    _write(truth_dir / files["bad_pixels"], bad_pixels)
    _write(truth_dir / files["bias"], bias)
    _write(truth_dir / files["dark_rate"], dark_rate)
    for f, name in files["flat"].items():
        _write(truth_dir / name, model["flat"][f])
    model["stars"].write(truth_dir / files["stars"], format="ascii.ecsv", overwrite=True)
    doc = {"ccdflow_version": __version__, "preset": preset, "seed": seed, "spec": model["spec"]}
    doc |= {"camera": _camera_doc(spec), "files": files, "frames": frames}
    (truth_dir / "truth.json").write_text(json.dumps(doc, indent=1) + "\n")
    return load_truth(outdir)


def _camera_doc(spec):
    """The ``camera`` entry of truth.json: style, cards and raw geometry."""
    ny, nx = spec.shape
    doc = dict(style=spec.camera, type_keyword=CAMERAS[spec.camera]["type_keyword"])
    doc["types"] = CAMERAS[spec.camera]["types"]
    doc |= {
        "maxim": dict(exptime_keyword="EXPTIME", filter_keyword="FILTER", gain_keyword="GAIN"),
        "pro": dict(exptime_keyword="EXPTIME", filter_keyword="FILTER", gain_keyword="GAIN"),
        "amateur": dict(
            exptime_keyword="EXPOSURE", filter_keyword="FILTNAME", gain_keyword="EGAIN"
        ),
        "nameonly": dict(exptime_keyword="EXPTIME", filter_keyword="FILTER", gain_keyword="GAIN"),
    }[spec.camera]
    doc["raw_shape"] = [ny, nx]
    if spec.camera == "pro":
        doc["raw_shape"] = [ny, nx + spec.overscan_cols]
        doc |= dict(biassec=_biassec(spec), trimsec=f"[1:{nx},1:{ny}]", datasec=f"[1:{nx},1:{ny}]")
    return doc


def _saturated(spec, stars, frame, expected_adu):
    """Ids of stars whose nearest pixel reaches saturation in the noiseless frame."""
    x, y = _frame_xy(stars, frame, spec.shape)
    ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    on = (ix >= 0) & (ix < spec.shape[1]) & (iy >= 0) & (iy < spec.shape[0])
    sat = np.zeros(len(stars), bool)
    sat[on] = expected_adu[iy[on], ix[on]] >= spec.saturation
    return [int(i) for i in np.asarray(stars["id"])[sat]]


def load_truth(outdir):
    """Read the truth written by `make_night`.

    Parameters
    ----------
    outdir : str or Path
        The directory given to `make_night`.

    Returns
    -------
    dict
        ``truth.json`` content plus ``bias`` (float32, ADU), ``dark_rate`` (float32, e-/s/px),
        ``flat`` (filter -> float32), ``stars`` (Table, x/y in px, flux_<filter> in e-/s),
        ``cosmics`` (raw file stem -> bool mask), ``bad_pixels`` (uint8 bits `TRUTH_HOT`,
        `TRUTH_DEAD`, `TRUTH_COLUMN`), for "pro" ``overscan`` (raw file stem ->
        float64 row levels ``L_f(y)``, ADU), ``raw_dir`` and ``truth_dir`` (Path).
    """
    outdir = Path(outdir)
    truth_dir = outdir / "truth"
    truth = json.loads((truth_dir / "truth.json").read_text())
    files = truth["files"]

    def image(name, dtype=np.float32):
        return np.asarray(fits.getdata(truth_dir / name), dtype=dtype)

    truth["bias"], truth["dark_rate"] = image(files["bias"]), image(files["dark_rate"])
    truth["flat"] = {f: image(name) for f, name in files["flat"].items()}
    if "bad_pixels" in files:
        truth["bad_pixels"] = image(files["bad_pixels"], np.uint8)
    truth["stars"] = Table.read(truth_dir / files["stars"], format="ascii.ecsv")
    truth["cosmics"] = {
        Path(f["file"]).stem: image(f["cosmics"], bool) for f in truth["frames"] if "cosmics" in f
    }
    overscan = {Path(f["file"]).stem: f["overscan"] for f in truth["frames"] if "overscan" in f}
    if overscan:
        truth["overscan"] = {stem: image(name, np.float64) for stem, name in overscan.items()}
    truth["raw_dir"], truth["truth_dir"] = outdir / "raw", truth_dir
    return truth


def main(argv=None):
    """Command line: ``python -m ccdflow.demo OUTDIR [--preset P] [--seed N] [--size NY NX]
    [--camera STYLE] [--nights N] [--dome-flats N] [--force]``."""
    parser = argparse.ArgumentParser(
        prog="python -m ccdflow.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("outdir", type=Path, help="directory for raw/ and truth/")
    parser.add_argument("--preset", choices=list(PRESETS), default="demo")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("NY", "NX"), help="frame shape (px)")
    parser.add_argument("--camera", choices=list(CAMERAS), default="maxim", help="header style")
    parser.add_argument("--nights", type=int, default=1, help="nights the lights span (default 1)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty raw/ anyway")
    parser.add_argument(
        "--dome-flats", type=int, default=0, metavar="N", help="also N dome flats per filter"
    )
    parser.add_argument(
        "--bad",
        action="append",
        default=[],
        metavar="KIND=VALUE",
        help="add a bad light frame, e.g. cloudy=0.3, seeing=2, trailed=8 (repeatable)",
    )
    parser.add_argument(
        "--bad-first",
        action="store_true",
        help="take the --bad frames before the first light, not after the last",
    )
    parser.add_argument(
        "--dead-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of the pixels with a low response (dead pixels), e.g. 0.002",
    )
    parser.add_argument(
        "--bad-column",
        action="append",
        default=[],
        metavar="X=RESPONSE",
        help="column x (0-based) with this response, e.g. 40=0.3 (repeatable)",
    )
    args = parser.parse_args(argv)
    raw_dir = args.outdir / "raw"
    before = {p.name for p in raw_dir.iterdir()} if raw_dir.is_dir() else set()
    if before and not args.force:
        msg = f"{raw_dir} is not empty; refusing to overwrite data (another OUTDIR or --force)"
        print(f"error: {msg}", file=sys.stderr)
        return 1
    overrides = {"shape": tuple(args.size)} if args.size else {}
    if args.camera != "maxim":
        overrides["camera"] = args.camera
    if args.nights != 1:
        overrides["n_nights"] = args.nights
    if args.dome_flats:
        overrides["n_dome_flats"] = args.dome_flats
    if args.dead_fraction:
        overrides["dead_pixel_fraction"] = args.dead_fraction
    try:
        if args.bad:
            overrides["bad_lights"] = tuple(_bad_arg(a) for a in args.bad)
            overrides["bad_lights_first"] = args.bad_first
        if args.bad_column:
            overrides["bad_columns"] = tuple(_column_arg(a) for a in args.bad_column)
        dataclasses.replace(PRESETS[args.preset], **overrides)  # checked before writing
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    truth = make_night(args.outdir, preset=args.preset, seed=args.seed, **overrides)
    for kind in _IMAGETYP:
        frames = [f for f in truth["frames"] if f["type"] == kind]
        exps = sorted({f["exptime"] for f in frames})
        filters = sorted({f["filter"] for f in frames}) if kind in ("flat", "light") else []
        detail = ", ".join([*(f"{t:g} s" for t in exps), *filters])
        print(f"{kind:<6}{len(frames):4d} frames ({detail})")
    print(f"raw:   {truth['raw_dir']}\ntruth: {truth['truth_dir']}")
    stale = before - {f["file"] for f in truth["frames"]}
    if stale:
        print(f"warning: {len(stale)} older files in {raw_dir} left as they were", file=sys.stderr)
    return 0


def _bad_arg(text):
    kind, _, value = text.partition("=")
    try:
        return kind, float(value)
    except ValueError:
        msg = f"--bad {text!r}: expected KIND=VALUE, KIND one of {list(BAD_LIGHTS)}"
        raise ValueError(msg) from None


def _column_arg(text):
    x, _, value = text.partition("=")
    try:
        return int(x), float(value)
    except ValueError:
        raise ValueError(f"--bad-column {text!r}: expected X=RESPONSE, e.g. 40=0.3") from None


if __name__ == "__main__":
    sys.exit(main())
