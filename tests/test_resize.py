"""resize.py equals skimage.transform.resize with its defaults (what the original demo.py resizes every photo
and driving frame with), bit for bit: the same float64 values, signed zeros included."""
import numpy as np
import pytest
from skimage.transform import resize as skimage_resize

import resize

# (input shape, output height, output width): what each case covers is in its comment.
CASES = [
    ((402, 402, 4), 256, 256),  # ../shared/data/source.png's shape: RGBA, shrunk (gaussian radius 1)
    ((1080, 1920, 3), 256, 256),  # an HD driving frame: radius 6 down the rows, 14 across
    ((4000, 3000, 3), 256, 256),  # a phone photo: radius 31 / 23
    ((100, 100, 3), 256, 256),  # enlarged: no anti-aliasing, mirrored coordinates at both edges
    ((300, 200, 3), 256, 256),  # one axis shrinks, the other grows
    ((200, 300, 3), 256, 256),
    ((256, 400, 3), 256, 256),  # one axis already the right size (zoom 1, weights 1 and 0)
    ((257, 256, 3), 256, 256),  # one pixel too many: sigma 0.002, a radius-0 kernel
    ((255, 256, 3), 256, 256),
    ((512, 512), 256, 256),  # grayscale, 2-D
    ((300, 200, 2), 256, 256),  # gray + alpha
    ((300, 200, 1), 64, 64),
    ((1, 1, 3), 256, 256),  # one pixel
    ((1, 5, 3), 256, 256),
    ((2, 2, 1), 3, 5),
    ((3, 700, 3), 256, 256),  # radius 5 across 700 columns, 3 rows enlarged
    ((720, 1280, 3), 384, 512),  # non-square output
    ((333, 517, 3), 17, 701),
]


def random_image(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


def assert_bitwise_equal(ours, expected):
    assert ours.shape == expected.shape and ours.dtype == expected.dtype == np.float64
    np.testing.assert_array_equal(ours.view(np.uint64), expected.view(np.uint64))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape, height, width", CASES, ids=[f"{s}->{h}x{w}" for s, h, w in CASES])
def test_resize_is_skimages_bit_for_bit(shape, height, width, dtype):
    image = random_image(shape, dtype, seed=sum(shape))
    assert_bitwise_equal(resize.resize(image, height, width), skimage_resize(image, (height, width)))


@pytest.mark.parametrize("seed", range(12))
def test_random_shapes_resize_as_skimage(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 700, 2)) + ((int(rng.integers(1, 5)),) if seed % 3 else ())
    height, width = (int(n) for n in rng.integers(1, 400, 2))
    image = random_image(shape, np.uint8, seed)
    image = image // 64 * 64 if seed % 2 else image  # flat areas and the clip's extremes, too
    assert_bitwise_equal(resize.resize(image, height, width), skimage_resize(image, (height, width)))


@pytest.mark.parametrize("image", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.int16),
                                   np.zeros((2, 8, 8, 3), np.uint8)], ids=["float32", "int16", "4-D"])
def test_other_pictures_are_left_to_skimage(image):
    assert not resize.handles(image)
    with pytest.raises(ValueError, match="uint8 or uint16"):
        resize.resize(image, 4, 4)
