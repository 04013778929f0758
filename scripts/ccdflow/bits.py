"""Data-quality bits of the ``MASK`` plane, as named constants.

Every product's mask plane is an unsigned integer image in which each bit has one
meaning. A pixel is good when its mask value is 0. Readers that only want a boolean
mask (``CCDData.read``) get ``mask != 0``.
"""

__all__ = [
    "BAD",
    "BAD_COLUMN",
    "BIT_NAMES",
    "COSMIC",
    "DEAD",
    "DEFECT_BITS",
    "FLAT_LOW",
    "HOT",
    "MASK_DTYPE",
    "NODATA",
    "NOT_COVERED",
    "SATURATED",
    "describe",
    "header_cards",
]

import numpy as np

#: Storage type of the mask plane.
MASK_DTYPE = np.uint16

#: Pixel known to be bad (non-finite in the raw frame or in a master).
BAD = np.uint16(1)
#: Raw value at or above the saturation level.
SATURATED = np.uint16(2)
#: Flagged as a cosmic-ray hit.
COSMIC = np.uint16(4)
#: Master flat below the configured floor; the flat there was set to 1.
FLAT_LOW = np.uint16(8)
#: No data: outside the detector after resampling, or no valid input at all.
NODATA = np.uint16(16)
#: Stack pixel that no input frame covered.
NOT_COVERED = np.uint16(32)
#: Hot pixel: dark signal far above the local level in the master dark
#: (`ccdflow.badpix.find_hot`); set in the master dark's mask and every frame it calibrates.
HOT = np.uint16(64)
#: Dead or low pixel: master-flat response far below the local level
#: (`ccdflow.badpix.find_low`); set in the master flat's mask and every frame it calibrates.
DEAD = np.uint16(128)
#: Part of a bad column: a column segment of the master flat whose median response is below
#: its neighbours' (`ccdflow.badpix.find_bad_columns`); as ``DEAD``.
BAD_COLUMN = np.uint16(256)
#: The detector-defect bits of the bad-pixel map (``BAD`` also marks a user-supplied map).
DEFECT_BITS = np.uint16(HOT | DEAD | BAD_COLUMN)

#: Bit value -> short name, written into every product header (``MASKBn`` cards).
BIT_NAMES = {
    int(BAD): "BAD",
    int(SATURATED): "SATURATED",
    int(COSMIC): "COSMIC",
    int(FLAT_LOW): "FLAT_LOW",
    int(NODATA): "NODATA",
    int(NOT_COVERED): "NOT_COVERED",
    int(HOT): "HOT",
    int(DEAD): "DEAD",
    int(BAD_COLUMN): "BAD_COLUMN",
}


def describe(value):
    """Return the names of the bits set in a mask value, e.g. ``['BAD', 'COSMIC']``."""
    return [name for bit, name in BIT_NAMES.items() if int(value) & bit]


def header_cards():
    """FITS cards documenting the bits, for the header of a ``MASK`` extension."""
    return [
        (f"MASKB{bit.bit_length() - 1}", name, f"mask bit value {bit}")
        for bit, name in BIT_NAMES.items()
    ]
