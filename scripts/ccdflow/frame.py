"""The frame: one image with its uncertainty, mask bits, header and unit.

Every step of the per-frame chain takes a :class:`Frame` and returns a new one; the
input is never modified. A Frame is what an ``astropy.nddata.CCDData`` holds, with the
mask kept as data-quality bits (:mod:`ccdflow.bits`) instead of a boolean plane:
:meth:`Frame.to_ccddata` gives a ``CCDData`` whose ``mask`` is "any bit set" and whose
``flags`` are the bits, and :meth:`Frame.from_ccddata` takes one back.

On disk a frame is a product in the ``CCDData`` layout (primary data, ``UNCERT``
standard deviation, ``MASK`` bits), read and written by :mod:`ccdflow.io`.
"""

__all__ = ["Frame", "read_product", "read_raw"]

import dataclasses

import numpy as np

from ccdflow import bits, io


@dataclasses.dataclass(frozen=True, eq=False)
class Frame:
    """An image and what belongs to it.

    Attributes
    ----------
    data : numpy.ndarray
        2-D float32 image, in ``unit``.
    uncertainty : numpy.ndarray or None
        Standard deviation of ``data``, same unit and shape; None when not known (raw
        frames).
    mask : numpy.ndarray
        ``bits.MASK_DTYPE`` data-quality bits, same shape (zeros when not given).
    header : astropy.io.fits.Header or ccdflow.io.Header
        Provenance for people; no step reads state back from it.
    unit : str or None
        ``'adu'``, ``'electron'``, ``''`` (a normalised flat), or None when unknown.
    """

    data: np.ndarray
    uncertainty: np.ndarray | None = None
    mask: np.ndarray | None = None
    header: object = None
    unit: str | None = None

    def __post_init__(self):
        if self.mask is None:
            object.__setattr__(self, "mask", np.zeros(self.data.shape, bits.MASK_DTYPE))
        if self.header is None:
            object.__setattr__(self, "header", io.Header())
        for name in ("uncertainty", "mask"):
            plane = getattr(self, name)
            if plane is not None and plane.shape != self.data.shape:
                raise ValueError(f"{name} has shape {plane.shape}, data {self.data.shape}")

    @property
    def shape(self):
        """``(ny, nx)`` of the image."""
        return self.data.shape

    def replace(self, **changes):
        """A new Frame with some attributes replaced (the others shared, not copied)."""
        return dataclasses.replace(self, **changes)

    def write(self, path):
        """Write the frame as a product (atomically: never half-written at ``path``)."""
        return io.write_product(
            path, self.data, self.header, self.uncertainty, self.mask, self.unit
        )

    def to_ccddata(self):
        """The frame as ``astropy.nddata.CCDData`` (mask = any bit set, flags = the bits)."""
        from astropy.nddata import CCDData, StdDevUncertainty

        header = self.header.to_astropy() if isinstance(self.header, io.Header) else self.header
        return CCDData(
            self.data,
            unit=self.unit if self.unit is not None else "adu",
            uncertainty=None if self.uncertainty is None else StdDevUncertainty(self.uncertainty),
            mask=self.mask != 0,
            flags=self.mask,
            meta=header.copy(),
        )

    @classmethod
    def from_ccddata(cls, ccd):
        """A Frame from ``CCDData``: ``flags`` (if an array) are the bits, else the mask
        becomes ``bits.BAD``."""
        from astropy.io import fits

        shape = np.shape(ccd.data)
        if isinstance(ccd.flags, np.ndarray) and ccd.flags.shape == shape:
            mask = ccd.flags.astype(bits.MASK_DTYPE)
        elif ccd.mask is not None:
            mask = np.where(np.asarray(ccd.mask), bits.BAD, 0).astype(bits.MASK_DTYPE)
        else:
            mask = None
        unc = None
        if ccd.uncertainty is not None:
            unc = np.asarray(ccd.uncertainty.represent_as_stddev().array, np.float32)
        unit = None if ccd.unit is None else ccd.unit.to_string()
        return cls(
            data=np.asarray(ccd.data, np.float32),
            uncertainty=unc,
            mask=mask,
            header=fits.Header(ccd.meta),
            unit={"electron": "electron", "adu": "adu", "": ""}.get(unit, unit),
        )


def read_raw(path, hdu=None):
    """A raw frame (ADU, no uncertainty); non-finite pixels are ``bits.BAD`` and 0.

    Raises :class:`ccdflow.io.FrameError` for a file that cannot be read.
    """
    data, header, mask = io.read_frame(path, hdu, fast=True)
    return Frame(data=data, uncertainty=None, mask=mask, header=header, unit="adu")


def read_product(path):
    """A product written by :meth:`Frame.write` (or :func:`ccdflow.io.write_product`)."""
    data, header, unc, mask = io.read_product(path, fast=True)
    unit = str(header.get("BUNIT", "")).strip().lower() or None
    return Frame(data=data, uncertainty=unc, mask=mask, header=header, unit=unit)
