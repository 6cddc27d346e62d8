"""Photos and videos "in the wild" made from pictures the project owns: a cropped face pasted at a known
place and scale on a larger canvas, and a cropped driving clip placed into a 1280x720 frame.

The tests hold detection and cropping to these known placements (tests/conftest.py), and benchmark.py's
`--crop` rows time run.py --crop on them; both build them here, so the benchmark measures the inputs
the tests check.
"""
import functools

import numpy as np
from PIL import Image

# A driving clip's frames placed on a 1280x720 frame (a webcam or phone video): its top-left corner at
# (x, y), scaled by the factor; 256 px frames become 384 px.
CLIP_FRAME = (720, 1280)  # height, width
PLACED = (700, 180, 1.5)


def background(height, width, seed=0):
    """A soft vertical gradient with faint seeded noise: not a flat page, not a face either. A new
    array each call (`place` draws on it)."""
    return _background(height, width, seed).copy()


@functools.lru_cache(maxsize=4)
def _background(height, width, seed):
    rows = np.linspace(150, 90, height, dtype=np.float32)[:, np.newaxis, np.newaxis]
    tint = np.array([1.0, 1.05, 1.15], np.float32)
    noise = np.random.default_rng(seed).normal(0, 4, (height, width, 3)).astype(np.float32)
    return np.clip(rows * tint + noise, 0, 255).astype(np.uint8)


def scaled(picture, scale):
    """`picture` (uint8 [H, W, 3]) resized by `scale` (bicubic), sizes rounded."""
    height, width = picture.shape[:2]
    return np.asarray(Image.fromarray(picture).resize((round(width * scale), round(height * scale)), Image.BICUBIC))


def place(canvas, picture, x, y, scale):
    """Paste `picture` scaled by `scale` with its top-left corner at (x, y) (in place); returns canvas."""
    piece = scaled(picture, scale)
    canvas[y:y + piece.shape[0], x:x + piece.shape[1]] = piece
    return canvas


def canvas(picture, height, width, placements):
    """A height x width background with `picture` pasted once per (x, y, scale) of `placements`."""
    result = background(height, width)
    for x, y, scale in placements:
        place(result, picture, x, y, scale)
    return result


def placed_clip(frames, drift=(0.0, 0.0)):
    """Each of `frames` placed on its own CLIP_FRAME background at PLACED, moved by `drift` (x, y) pixels
    a frame (a slowly panning camera); a generator, so a long clip is never held whole."""
    x, y, scale = PLACED
    height, width = CLIP_FRAME
    for index, frame in enumerate(frames):
        yield place(background(height, width, seed=1), np.asarray(frame)[..., :3], round(x + drift[0] * index),
                    round(y + drift[1] * index), scale)
