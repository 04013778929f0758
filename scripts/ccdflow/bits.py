"""Data-quality bits of the ``MASK`` plane, as named constants.

Every product's mask plane is an unsigned integer image in which each bit has one
meaning. A pixel is good when its mask value is 0. Readers that only want a boolean
mask (``CCDData.read``) get ``mask != 0``.
"""

__all__ = [
    "BAD",
    "BIT_NAMES",
    "COSMIC",
    "FLAT_LOW",
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

#: Bit value -> short name, written into every product header (``MASKBn`` cards).
BIT_NAMES = {
    int(BAD): "BAD",
    int(SATURATED): "SATURATED",
    int(COSMIC): "COSMIC",
    int(FLAT_LOW): "FLAT_LOW",
    int(NODATA): "NODATA",
    int(NOT_COVERED): "NOT_COVERED",
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
