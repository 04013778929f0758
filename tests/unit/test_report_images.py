"""The night report's image downsampling (the page is tested in a browser in
tests/workflow/test_report.py)."""

import numpy as np

from ccdflow.report import MAX_IMAGE_PX, downsample


def test_downsample_keeps_the_longer_side_within_the_limit_and_the_mean():
    rng = np.random.default_rng(1)
    data = rng.normal(100, 5, (1500, 2100)).astype(np.float32)
    small = downsample(data)
    assert max(small.shape) <= MAX_IMAGE_PX
    assert small.shape == (1500 // 4, 2100 // 4)
    assert abs(float(np.mean(small)) - float(np.mean(data))) < 0.01


def test_downsample_leaves_non_finite_pixels_out_of_their_block():
    data = np.ones((8, 8), np.float32)
    data[0, 0] = np.nan
    data[4:, 4:] = np.nan
    small = downsample(data, max_px=2)
    assert small[0, 0] == 1.0
    assert np.isnan(small[1, 1])
    assert downsample(data[:2, :2], max_px=2).shape == (2, 2)
