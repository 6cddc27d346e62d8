"""MTCNN on LiteRT: the face detector of `run.py --target tflite/onnx --crop`, so those runs never import TensorFlow.

build.py writes MTCNN's three networks (P-, R- and O-Net, converted from the mtcnn package's own weights)
as tflite/face-pnet.tflite, face-rnet.tflite and face-onet.tflite (each with its JSON) beside the models'
TF Lite folders. `LiteDetector` runs them with the algorithm of mtcnn 1.0.0 written here in NumPy, so
its rows are that package's (faces.detect_faces turns either into Face objects):

1. the picture, normalised to (pixel - 127.5) / 128, is area-resized to a pyramid of scales (0.6 for
   MTCNN's 20 px minimum face over its 12 px window, times 0.709 per level, down to 12 px);
2. P-Net slides over every level (stride 2, 12 px cells); cells scoring over 0.6 become boxes moved by
   its regression, suppressed per level (IoU 0.5) and then over all levels (IoU 0.7), made square;
3. R-Net scores each box's 24x24 crop (bilinear, zeros outside the picture), moves it, keeps it over
   0.7, suppresses (IoU 0.7) and squares it;
4. O-Net does the same at 48x48 (over 0.8; suppression by intersection over the smaller box, 0.7) and
   places the five landmarks in the box it was given.

mtcnn's suppression keeps a box unless a higher-scoring box overlaps it, whether or not that box was
itself kept; this one does the same, so the two detectors agree box for box. Nothing here imports
TensorFlow or mtcnn: the package's weight files are only hashed, to tell detector files built from other
weights (see `find_detector`).
"""
import hashlib
import importlib.util
import os

import numpy as np

import export_files
import utils

DETECTOR_MODULES = ("face-pnet", "face-rnet", "face-onet")
WEIGHT_FILES = ("pnet.lz4", "rnet.lz4", "onet.lz4")  # their sources in the mtcnn package, in the same order
# Each network's input as build.py declares it: P-Net takes a picture of any size (resized at run time),
# R- and O-Net a batch of square crops.
INPUT_SHAPES = {"face-pnet": (1, None, None, 3), "face-rnet": (None, 24, 24, 3), "face-onet": (None, 48, 48, 3)}
OUTPUT_NAMES = {"face-pnet": ("offsets", "scores"), "face-rnet": ("offsets", "scores"),
                "face-onet": ("offsets", "landmarks", "scores")}  # the order of the Keras networks' outputs

# mtcnn 1.0.0's defaults, which faces.detect_faces runs it with.
MIN_FACE = 20
WINDOW = 12  # P-Net's cell: a face of WINDOW px at a pyramid level
SCALE_FACTOR = 0.709
STRIDE = 2
THRESHOLDS = (0.6, 0.7, 0.8)  # P-, R-, O-Net
PNET_NMS = (0.5, 0.7)  # per pyramid level, then over all levels
RNET_NMS = 0.7
ONET_NMS = 0.7


# ----------------------------------------------------------------------------
# The detector files, and the mtcnn weights they are made from
# ----------------------------------------------------------------------------

def detector_paths(root):
    """tflite/face-pnet.tflite, face-rnet.tflite, face-onet.tflite under the export root."""
    return tuple(os.path.join(root, "tflite", f"{module}.tflite") for module in DETECTOR_MODULES)


def mtcnn_weight_paths():
    """Absolute paths of the mtcnn package's weight files, found without importing it (its __init__
    imports TensorFlow); None when the package is not installed."""
    spec = importlib.util.find_spec("mtcnn")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(os.path.abspath(list(spec.submodule_search_locations)[0]), "assets", "weights")
    return tuple(os.path.join(folder, name) for name in WEIGHT_FILES)


def weights_digest(paths):
    """sha256 over the weight files' bytes, in order: what the detector files were built from."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def installed_weights_digest():
    """weights_digest of the installed mtcnn's files; None without the package or its weights."""
    paths = mtcnn_weight_paths()
    if paths is None or not all(os.path.isfile(path) for path in paths):
        return None
    return weights_digest(paths)


def find_detector(root):
    """(paths, None) when the export root has the three detector files, built from the installed mtcnn's
    weights (any, without mtcnn installed); (None, why not) otherwise."""
    paths = detector_paths(root)
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        return None, f"{missing[0]}: no such file"
    installed = installed_weights_digest()
    for path in paths:
        try:
            built_from = export_files.read_signature_json("tflite", path).get("weights")
        except utils.UserError as err:
            return None, str(err)
        if installed is not None and built_from != installed:
            return None, f"{path}: built from other mtcnn weights than the installed package's"
    return paths, None


# ----------------------------------------------------------------------------
# Image operations: the pyramid's area resize and the stages' crops
# ----------------------------------------------------------------------------

def normalize(image):
    """uint8 or float pixels [H, W, 3] -> float32 (pixel - 127.5) / 128, MTCNN's input range."""
    return (np.asarray(image, np.float32) - np.float32(127.5)) / np.float32(128)


def pyramid_scales(height, width):
    """mtcnn's scales: 0.6 (its 20 px minimum face at P-Net's 12 px window) times 0.709 ** k, for as many
    levels as mtcnn counts (the count rounded, so the smallest level is about 12 px)."""
    levels = round(-(np.log(min(height, width) / WINDOW) / np.log(SCALE_FACTOR) + 1))
    return (WINDOW / MIN_FACE) * SCALE_FACTOR ** np.arange(max(levels, 0))


class AreaPyramid:
    """Area-averaged downscales of one picture, as tf.image.resize(method="area"): each output pixel is the
    mean of the input it covers, partial pixels weighted by the part covered. The average is separable, so
    each axis is an integral (a running sum) sampled at the output pixels' edges; the rows' running sum is
    made once for every level."""

    def __init__(self, image):
        self.image = image  # float32 [H, W, 3]
        self.row_sums = _running_sum(image, axis=0)

    def level(self, scale):
        """The picture resized by `scale`: sizes truncated, as mtcnn's float sizes are by TensorFlow."""
        height, width = self.image.shape[:2]
        rows = _area_mean(self.image, self.row_sums, int(height * scale), axis=0)
        return _area_mean(rows, _running_sum(rows, axis=1), int(width * scale), axis=1).astype(np.float32)


def _running_sum(values, axis):
    """float64 sums of the first 0..n entries along `axis` (n + 1 of them)."""
    sums = np.cumsum(values, axis=axis, dtype=np.float64)
    pad = [(0, 0)] * values.ndim
    pad[axis] = (1, 0)
    return np.pad(sums, pad)


def _area_mean(values, sums, size, axis):
    """`values` averaged along `axis` into `size` equal spans, from its running sums."""
    length = values.shape[axis]
    span = length / size
    edges = np.minimum(np.arange(size + 1) * span, length)
    whole = np.floor(edges).astype(np.int64)
    part = edges - whole  # the covered fraction of pixel `whole`
    shape = [1] * values.ndim
    shape[axis] = size + 1
    integral = (np.take(sums, whole, axis=axis) +
                part.reshape(shape) * np.take(values, np.minimum(whole, length - 1), axis=axis))
    return np.diff(integral, axis=axis) / span


def crops(image, boxes, size):
    """[N, size, size, 3] bilinear crops of `image` (float32 [H, W, 3]) at (x1, y1, x2, y2) `boxes`, as
    tf.image.crop_and_resize places them (corner samples on the box's edges scaled by (H - 1) / H), and 0
    where a sample falls outside the picture."""
    height, width = image.shape[:2]
    boxes = boxes.astype(np.float32)  # the precision mtcnn hands TensorFlow its boxes in
    steps = np.arange(size, dtype=np.float32)
    ys = _sample_positions(boxes[:, 1] / height, boxes[:, 3] / height, height, steps)  # [N, size]
    xs = _sample_positions(boxes[:, 0] / width, boxes[:, 2] / width, width, steps)
    y_inside = (ys >= 0) & (ys <= height - 1)
    x_inside = (xs >= 0) & (xs <= width - 1)
    top, left = _clamped_floor(ys, height), _clamped_floor(xs, width)
    bottom, right = _clamped_ceil(ys, height), _clamped_ceil(xs, width)
    y_frac = (ys - np.floor(ys))[:, :, np.newaxis, np.newaxis]
    x_frac = (xs - np.floor(xs))[:, np.newaxis, :, np.newaxis]

    def gather(rows, cols):  # [N, size, size, 3]
        return image[rows[:, :, np.newaxis], cols[:, np.newaxis, :]]

    upper = gather(top, left) + (gather(top, right) - gather(top, left)) * x_frac
    lower = gather(bottom, left) + (gather(bottom, right) - gather(bottom, left)) * x_frac
    patches = upper + (lower - upper) * y_frac
    inside = y_inside[:, :, np.newaxis] & x_inside[:, np.newaxis, :]
    return np.where(inside[..., np.newaxis], patches, np.float32(0)).astype(np.float32)


def _sample_positions(start, end, length, steps):
    return start[:, np.newaxis] * (length - 1) + steps * ((end - start) * (length - 1) / (len(steps) - 1))[:, np.newaxis]


def _clamped_floor(positions, length):
    return np.clip(np.floor(positions), 0, length - 1).astype(np.int64)


def _clamped_ceil(positions, length):
    return np.clip(np.ceil(positions), 0, length - 1).astype(np.int64)


# ----------------------------------------------------------------------------
# Boxes: rows [x1, y1, x2, y2, confidence, ...] in float64
# ----------------------------------------------------------------------------

def by_confidence(rows):
    """Rows from the most to the least confident (mtcnn's order, ties included: a reversed argsort)."""
    return rows[np.argsort(rows[:, 4])[::-1]]


def suppress(rows, threshold, over="union"):
    """The rows (sorted by confidence) that no more confident row overlaps by more than `threshold`:
    intersection over the union, or over the smaller box with over="min". As mtcnn, a row suppressed by
    one that was itself suppressed stays suppressed. Columns are handled in blocks to bound memory."""
    boxes = rows[:, :4]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = np.ones(len(rows), bool)
    block = 1024
    for start in range(0, len(rows), block):
        later = slice(start, min(start + block, len(rows)))
        inner_w = np.maximum(0, np.minimum(boxes[:, np.newaxis, 2], boxes[np.newaxis, later, 2]) -
                             np.maximum(boxes[:, np.newaxis, 0], boxes[np.newaxis, later, 0]))
        inner_h = np.maximum(0, np.minimum(boxes[:, np.newaxis, 3], boxes[np.newaxis, later, 3]) -
                             np.maximum(boxes[:, np.newaxis, 1], boxes[np.newaxis, later, 1]))
        inner = inner_w * inner_h  # [all rows, rows of this block]
        if over == "union":
            base = areas[:, np.newaxis] + areas[np.newaxis, later] - inner
        else:
            base = np.minimum(areas[:, np.newaxis], areas[np.newaxis, later])
        with np.errstate(divide="ignore", invalid="ignore"):
            overlapping = inner / base > threshold
        earlier = np.arange(len(rows))[:, np.newaxis] < np.arange(len(rows))[np.newaxis, later]
        keep[later] = ~(overlapping & earlier).any(axis=0)
    return rows[keep]


def squared(rows):
    """Each box widened to a square of its longer side about the same centre."""
    rows = rows.copy()
    width, height = rows[:, 2] - rows[:, 0], rows[:, 3] - rows[:, 1]
    side = np.maximum(width, height)
    rows[:, 0] += (width - side) / 2
    rows[:, 1] += (height - side) / 2
    rows[:, 2] = rows[:, 0] + side
    rows[:, 3] = rows[:, 1] + side
    return rows


def moved(rows, offsets):
    """Boxes moved by a network's regression, in units of the box's size (MTCNN's inclusive w + 1)."""
    rows = rows.copy()
    width, height = rows[:, 2] - rows[:, 0] + 1, rows[:, 3] - rows[:, 1] + 1
    rows[:, :4] += offsets * np.stack([width, height, width, height], axis=-1)
    return rows


def cell_boxes(offsets, scores, scale):
    """P-Net's cells scoring over its threshold as rows [x1, y1, x2, y2, score] in the picture's pixels,
    most confident first: cell (y, x) covers pixels STRIDE * (y, x) + 1 to + WINDOW of the level, moved by
    the regression in units of WINDOW - 1."""
    face = scores[0, :, :, 1]
    ys, xs = np.nonzero(face > THRESHOLDS[0])
    if len(ys) == 0:
        return np.empty((0, 5))
    dx1, dy1, dx2, dy2 = offsets[0, ys, xs].T.astype(np.float64)
    reach = WINDOW - 1
    left, top = STRIDE * xs + 1, STRIDE * ys + 1
    rows = np.stack([left + dx1 * reach, top + dy1 * reach, left + reach + dx2 * reach, top + reach + dy2 * reach,
                     face[ys, xs].astype(np.float64)], axis=-1)
    rows[:, :4] /= scale
    return by_confidence(rows)


# ----------------------------------------------------------------------------
# The detector
# ----------------------------------------------------------------------------

class LiteDetector:
    """MTCNN's three networks on LiteRT (`paths`: find_detector's) with the stages above.

    `rows(image)` takes float32 (or uint8) RGB [H, W, 3] pixels in 0..255 and returns mtcnn's numpy rows
    [image index 0, x1, y1, x2, y2, confidence, 5 landmark x, 5 landmark y] (no clipping to the picture,
    like mtcnn with fit_to_image=False), as faces.detect_faces reads them.
    """

    def __init__(self, paths):
        self.pnet, self.rnet, self.onet = (export_files.tflite_function(path) for path in paths)

    def rows(self, image):
        image = normalize(image)
        found = self.proposals(image)
        if len(found):
            found = self.refined(image, found)
        if len(found):
            found = self.final(image, found)
        return np.concatenate([np.zeros((len(found), 1)), found], axis=1) if len(found) else np.empty((0, 16))

    def proposals(self, image):
        """Stage 1: P-Net over the pyramid -> square rows [x1, y1, x2, y2, score]."""
        pyramid = AreaPyramid(image)
        per_level = []
        for scale in pyramid_scales(*image.shape[:2]):
            out = self.pnet(image=pyramid.level(scale)[np.newaxis])
            per_level.append(suppress(cell_boxes(out["offsets"], out["scores"], scale), PNET_NMS[0]))
        rows = np.concatenate(per_level) if per_level else np.empty((0, 5))
        return squared(suppress(by_confidence(rows), PNET_NMS[1]))

    def refined(self, image, rows):
        """Stage 2: R-Net on 24x24 crops -> square rows, its score in place of P-Net's."""
        out = self.rnet(image=crops(image, rows, 24))
        rows = moved(np.concatenate([rows[:, :4], out["scores"][:, 1:].astype(np.float64)], axis=1), out["offsets"])
        rows = rows[rows[:, 4] > THRESHOLDS[1]]
        return squared(suppress(by_confidence(rows), RNET_NMS))

    def final(self, image, rows):
        """Stage 3: O-Net on 48x48 crops -> rows [x1, y1, x2, y2, score, 5 x, 5 y]; the landmarks are placed
        in the box O-Net was given (MTCNN's inclusive size, less one), the box is then moved."""
        out = self.onet(image=crops(image, rows, 48))
        width, height = rows[:, 2:3] - rows[:, 0:1] + 1, rows[:, 3:4] - rows[:, 1:2] + 1
        landmarks = out["landmarks"].astype(np.float64)
        xs = width * landmarks[:, :5] + rows[:, 0:1] - 1
        ys = height * landmarks[:, 5:] + rows[:, 1:2] - 1
        boxes = moved(np.concatenate([rows[:, :4], out["scores"][:, 1:].astype(np.float64)], axis=1), out["offsets"])
        rows = np.concatenate([boxes, xs, ys], axis=1)
        rows = rows[rows[:, 4] > THRESHOLDS[2]]
        return suppress(by_confidence(rows), ONET_NMS, over="min")
