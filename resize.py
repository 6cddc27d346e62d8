"""skimage's `resize(image, (height, width))` with its defaults, bit for bit, in NumPy: no scipy import.

The original demo.py resizes the photo and every driving frame with skimage's resize, so we must give the
same float64 values. skimage computes it as scipy.ndimage's `gaussian_filter` (anti-aliasing when an axis
shrinks, sigma (factor - 1) / 2, mode 'mirror') followed by `zoom` (order 1, grid_mode, mode 'mirror'),
then clips to the input's range. Importing scipy.ndimage and skimage.transform costs 0.3-0.45 s of every
run whose photo or video is not the model's size, before its first frame. Here the same float64
operations run in the same order as scipy's C loops, so the results are identical, not merely close
(tests/test_resize.py compares with skimage over many shapes):

- the 1-D gaussian pass (scipy's `NI_Correlate1D`, symmetric branch): `x[i] * w[0]`, then
  `+= (x[i - k] + x[i + k]) * w[k]` for k from the radius down to 1;
- the zoom (scipy's `NI_ZoomShift`, order 1): per axis, the source coordinate `((k + 0.5) * zoom) - 0.5`
  mirrored into the image, weights `1 - frac` and `1 - (1 - frac)`; per pixel, taps in C order, each
  `value * w_row * w_col`, summed from 0.0. (Along the channel axis the zoom is 1: weights 1 and 0, whose
  zero taps add +0.0 and change nothing.)

Only the filtered rows and columns the zoom reads are computed, which also makes it faster than scipy on
large frames. Other dtypes than unsigned integers (whose values are never negative, which the signed-zero
argument above needs) go to skimage itself: see `handles`.
"""
import functools
import math
import typing

import numpy as np
from skimage import img_as_float

GAUSSIAN_TRUNCATE = 4.0  # scipy's gaussian_filter default: the kernel reaches 4 sigma
SIGMA_EPSILON = 1e-15  # scipy's gaussian_filter skips an axis whose sigma is not above this


def handles(image):
    """Whether `resize` gives skimage's result for this image: unsigned integers, 2-D or HxWxC."""
    return image.dtype in (np.uint8, np.uint16) and image.ndim in (2, 3) and min(image.shape) > 0


def resize(image, height, width):
    """skimage.transform.resize(image, (height, width)): float64, [H, W] or [H, W, C], in the input's range."""
    if not handles(image):
        raise ValueError(f"resize takes uint8 or uint16 [H, W(, C)] images, not {image.dtype} {image.shape}")
    in_height, in_width = image.shape[:2]
    row_taps = ZoomTaps.along(in_height, height)
    col_taps = ZoomTaps.along(in_width, width)
    if height < in_height or width < in_width:  # skimage anti-aliases when any axis shrinks
        filtered = filtered_at(image, row_taps.sources, col_taps.sources, in_height / height, in_width / width)
    else:
        filtered = img_as_float(image[row_taps.sources][:, col_taps.sources])
    out = interpolate(filtered, row_taps.at, row_taps.weight, col_taps.at, col_taps.weight)
    # The float conversion (x * (1 / 255) for uint8) keeps order, so the range is the converted extremes.
    low, high = img_as_float(np.array([image.min(), image.max()], image.dtype))
    return np.clip(out, low, high, out=out)


def filtered_at(image, rows, cols, row_factor, col_factor):
    """skimage's anti-aliasing `gaussian_filter(img_as_float(image), sigma=max(0, (factor - 1) / 2),
    mode='mirror')`, at rows x cols only: the rows pass first (over every column the columns pass reads),
    then the columns. A few rows at a time, so each pass works in cache; values convert to float as read."""
    row_weights = axis_weights(row_factor)
    col_weights = axis_weights(col_factor)
    out = np.empty((len(rows), len(cols)) + image.shape[2:], np.float64)
    for start in range(0, len(rows), ROWS_PER_CHUNK):
        chunk = slice(start, start + ROWS_PER_CHUNK)
        along_rows = correlate_mirror(image, row_weights, rows[chunk], axis=0)
        out[chunk] = correlate_mirror(along_rows, col_weights, cols, axis=1)
    return out


ROWS_PER_CHUNK = 32  # rows x width x channels float64 temporaries stay in cache on HD frames (measured: 8-64 alike)


def axis_weights(factor):
    """The gaussian kernel skimage filters one axis with; [1.0] where scipy skips the axis (sigma 0),
    which leaves every value as it is (x * 1.0 == x)."""
    sigma = max(0.0, (factor - 1) / 2)
    return gaussian_weights(sigma) if sigma > SIGMA_EPSILON else np.ones(1)


def gaussian_weights(sigma):
    """scipy's gaussian_filter1d kernel (order 0, truncate 4): [w0, w1, ..., w_radius], symmetric."""
    radius = int(GAUSSIAN_TRUNCATE * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    phi = phi / phi.sum()
    return phi[radius:]


def correlate_mirror(values, weights, at, axis):
    """scipy's correlate1d(img_as_float(values), symmetric weights, axis, mode='mirror') at indices `at`
    along `axis`, summed in its order: centre first, then the pairs from the farthest in."""
    length = values.shape[axis]
    out = img_as_float(np.take(values, at, axis=axis)) * weights[0]
    for k in range(len(weights) - 1, 0, -1):
        left = img_as_float(np.take(values, mirror_index(at - k, length), axis=axis))
        right = img_as_float(np.take(values, mirror_index(at + k, length), axis=axis))
        out += (left + right) * weights[k]
    return out


def mirror_index(i, length):
    """Indices folded into [0, length) by mirroring at the first and last sample (d c b | a b c d | c b a):
    scipy's 'mirror' extension, as its line buffers and its zoom's edge taps apply it."""
    if length <= 1:
        return np.zeros_like(i)
    period = 2 * length - 2
    folded = np.abs(i) % period
    return np.where(folded >= length, period - folded, folded)


def mirror_coordinate(c, length):
    """scipy's map_coordinate for mode 'mirror' on a float coordinate (C truncation toward zero)."""
    if length <= 1:
        return 0.0 if c < 0 or c > length - 1 else c
    period = 2 * length - 2
    if c < 0:
        c = period * int(-c / period) + c
        return c + period if c <= 1 - length else -c
    if c > length - 1:
        c -= period * int(c / period)
        return period - c if c >= length else c
    return c


class ZoomTaps(typing.NamedTuple):
    """Along one axis of scipy's order-1 zoom, per output index: its two source samples, as positions `at`
    in `sources` (the sorted source indices the zoom reads, which are all the filter needs computing), and
    their weights. Cached per (input size, output size): every frame of a video has the same."""
    sources: np.ndarray  # [n] int, sorted, unique
    at: np.ndarray  # [out, 2] int, into sources
    weight: np.ndarray  # [out, 2] float64

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def along(in_size, out_size):
        zoom = in_size / out_size  # scipy: input.shape / output_shape, in float64 (grid_mode)
        index = np.empty((out_size, 2), np.intp)
        weight = np.empty((out_size, 2), np.float64)
        for k in range(out_size):
            c = k + 0.5
            c *= zoom
            c -= 0.5
            c = mirror_coordinate(c, in_size)
            start = math.floor(c)
            first = 1.0 - (c - start)
            index[k] = start, start + 1
            weight[k] = first, 1.0 - first
        sources, at = np.unique(mirror_index(index, in_size), return_inverse=True)
        taps = ZoomTaps(sources, at.reshape(index.shape), weight)
        for array in taps:
            array.setflags(write=False)  # shared by every later call with these sizes
        return taps


def interpolate(filtered, row_at, row_weight, col_at, col_weight):
    """The zoom's per-pixel sum over the 2 x 2 taps, in scipy's order: ((t00 + t01) + t10) + t11, with
    t = value * row weight * column weight. `row_at` / `col_at` index `filtered`'s rows / columns."""
    extra = (np.newaxis,) * (filtered.ndim - 2)  # the channel axis, if any, broadcasts

    def tap(r, c):
        rows = filtered[row_at[:, r]]
        picked = rows[:, col_at[:, c]]
        return picked * row_weight[(slice(None), r, np.newaxis) + extra] * col_weight[(np.newaxis, slice(None), c) + extra]

    out = tap(0, 0)
    out += tap(0, 1)
    out += tap(1, 0)
    out += tap(1, 1)
    return out
