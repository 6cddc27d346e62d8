"""The original logger.Visualizer's row of panels per frame (run.py --visualizer), without matplotlib."""
import warnings

import numpy as np
from skimage.draw import disk

import media


# matplotlib's gist_rainbow (the colormap every original config names), as its segment data:
# (position, (r, g, b)), linear in between. Written out so that no plotting library is needed.
GIST_RAINBOW = (
    (0.000, (1.00, 0.00, 0.16)),
    (0.030, (1.00, 0.00, 0.00)),
    (0.215, (1.00, 1.00, 0.00)),
    (0.400, (0.00, 1.00, 0.00)),
    (0.586, (0.00, 1.00, 1.00)),
    (0.770, (0.00, 0.00, 1.00)),
    (0.954, (1.00, 0.00, 1.00)),
    (1.000, (1.00, 0.00, 0.75)),
)
COLORMAP_SIZE = 256  # matplotlib samples a segmented colormap into this many entries


def gist_rainbow(x):
    """RGB in [0, 1] of gist_rainbow at x in [0, 1], as matplotlib's `get_cmap('gist_rainbow')(x)[:3]`.

    matplotlib looks x up in a 256-entry table sampled from the segments, so x
    is first snapped down to one of those samples.
    """
    entry = min(int(float(x) * COLORMAP_SIZE), COLORMAP_SIZE - 1)
    position = entry / (COLORMAP_SIZE - 1)
    stops = [stop for stop, _ in GIST_RAINBOW]
    colors = np.array([color for _, color in GIST_RAINBOW])
    return np.array([np.interp(position, stops, colors[:, channel]) for channel in range(3)])


def resize_nearest(image, height, width):
    """[h, w, C] -> [height, width, C] as torch's F.interpolate(mode='nearest') (the Visualizer's resize)."""
    rows = np.minimum(np.floor(np.arange(height) * (image.shape[0] / height)).astype(int), image.shape[0] - 1)
    cols = np.minimum(np.floor(np.arange(width) * (image.shape[1] / width)).astype(int), image.shape[1] - 1)
    return image[rows][:, cols]


class Visualizer:
    """One image row per frame, like the original's logger.Visualizer.

    Panels, left to right: the source with its keypoints, the driving frame
    with its keypoints, the deformed source, the prediction with the keypoints
    the generator followed, the prediction, the occlusion map, and the motion
    masks coloured per keypoint (background black). Panels whose generator
    output is absent (no occlusion map in the config, a --predictiononly
    export) are left out. Keypoint colours follow gist_rainbow as the original's.
    """

    def __init__(self, kp_size=5, draw_border=False, colormap="gist_rainbow"):
        if colormap != "gist_rainbow":
            warnings.warn(f"visualizer colormap {colormap!r} is not built in; using gist_rainbow")
        self.kp_size = kp_size
        self.draw_border = draw_border

    @classmethod
    def from_params(cls, params):
        """A Visualizer with a config's `visualizer_params` (the original's defaults where absent)."""
        return cls(kp_size=params.get("kp_size", 5), draw_border=params.get("draw_border", False),
                   colormap=params.get("colormap", "gist_rainbow"))

    def draw_keypoints(self, image, kp):
        """A copy of [H, W, 3] `image` with a disk per keypoint; kp [K, 2] is (x, y) in [-1, 1]."""
        image = np.array(image, np.float32)
        height, width = image.shape[:2]
        pixels = (np.asarray(kp, np.float64) + 1) / 2 * np.array([width, height])
        for index, (x, y) in enumerate(pixels):
            rows, cols = disk((y, x), self.kp_size, shape=(height, width))
            image[rows, cols] = gist_rainbow(index / len(pixels))
        return image

    def motion_masks(self, mask, height, width):
        """[h, w, K+1] dense-motion masks -> [height, width, 3]: mask k coloured like keypoint k, background black."""
        count = mask.shape[-1] - 1
        colors = np.stack([np.zeros(3)] + [gist_rainbow(k / count) for k in range(count)])  # [K+1, 3]
        return resize_nearest(mask, height, width) @ colors

    def panels(self, source, driving, outputs):
        """The float [H, W, 3] panels of one frame (see the class docstring)."""
        height, width = source.shape[:2]
        panels = [self.draw_keypoints(source, outputs["kp_source"]),
                  self.draw_keypoints(driving, outputs["kp_driving"])]
        if "deformed" in outputs:
            panels.append(outputs["deformed"])
        panels += [self.draw_keypoints(outputs["prediction"], outputs["kp_norm"]), outputs["prediction"]]
        if "occlusion_map" in outputs:
            panels.append(np.repeat(resize_nearest(outputs["occlusion_map"], height, width), 3, axis=-1))
        if "mask" in outputs:
            panels.append(self.motion_masks(outputs["mask"], height, width))
        return panels

    def visualize(self, source, driving, outputs):
        """uint8 [H, n * W, 3]: one frame's panels side by side, white-edged with draw_border.

        `outputs` is one frame of animate.animate_frames: the generator outputs
        plus 'kp_source', 'kp_driving' and 'kp_norm'. Pixels are converted like
        the written frames (`to_uint8`), so the plain prediction panel equals
        the frame written to the result video.
        """
        panels = [np.clip(np.asarray(panel, np.float32), 0, 1) for panel in self.panels(source, driving, outputs)]
        if self.draw_border:
            for panel in panels:
                panel[:, [0, -1]] = 1
        return media.to_uint8(np.concatenate(panels, axis=1))
