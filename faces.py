"""Faces in photos and videos in the wild: find them, crop them as the model was trained, stream a
cropped driving video, and paste animated crops back into the full-resolution photo.

The model only works on crops like its training data, which the original's `crop-video.py` (and the
VoxCeleb preprocessing, with the same geometry) made: a face box enlarged by `increase` on every side
and widened to a square, one fixed box per face track. This module reproduces that geometry (for any
`frame_shape` aspect, square for the published configs) with three deliberate differences:

* Detection is MTCNN (the `mtcnn` package: TensorFlow, its weights inside the wheel, nothing
  downloaded), not face_alignment's S3FD (PyTorch, weights downloaded on first use). Its boxes are
  tighter around the face than S3FD's, so crops come out somewhat tighter than the original's. The
  same networks also run on LiteRT (faces_lite, use_litert_detector), for the tflite target.
* A crop that leaves the picture is padded by replicating the picture's edge pixels instead of being
  clamped (the original clamps, which changes the crop's aspect and so stretches the face). Edge
  replication adds no new edges or features for the keypoint detector to latch onto, unlike black
  (a hard border) or mirroring (a mirrored ear or chin); the padding is cut away again on paste-back.
* Photos are searched at full resolution up to PHOTO_MAX_SIDE (see `detect_faces`).

Sections: 1. detection, 2. crop geometry, 3. face tracks over a video and the streamed driving crop,
4. pasting animated crops back. TensorFlow loads (through `backends`) only when mtcnn's detector is built,
so importing this module is cheap and the CLIs can check their arguments first.
"""
import argparse
import contextlib
import dataclasses
import functools
import math
import os
import warnings

import numpy as np
from PIL import Image, ImageOps
from skimage import img_as_ubyte

import backends
import faces_lite
import media
import utils


# ----------------------------------------------------------------------------
# 1. Detection
# ----------------------------------------------------------------------------

# The original's crop-video.py detects on frames downscaled to at most 640 px: a driving face must be
# large in the frame anyway, and it keeps detection cheap enough to run on many frames.
VIDEO_MAX_SIDE = 640

# Photos: MTCNN's image pyramid is itself a sliding window at every scale, so running it on the whole
# picture finds small faces as well as tiling would, without seams or duplicate faces. Its cost grows
# with the pixel count (0.75 s for 1920x1080 on 2 cores, given float32 pixels; several seconds for
# 4000x3000), so larger photos are downscaled to this long side first. MTCNN finds faces of 20 px and
# up, so a 4000 px photo still gives faces of 40 px (a 1080p group photo: 20 px), under the 64 px at
# which SMALL_FACE warns anyway.
PHOTO_MAX_SIDE = 2048

# MTCNN's last stage accepts from 0.8; textured noise can reach that, real faces score above 0.99.
MIN_CONFIDENCE = 0.9

# MTCNN's smallest face (its `min_face_size` default). mtcnn 1.0.0's pyramid breaks for larger values
# (its scale count ignores them, the last levels fall under 12 px and it reports no faces at all), so
# the detector always runs with this and bigger minimum faces are had by downscaling the image.
_MTCNN_MIN_FACE = faces_lite.MIN_FACE
_LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclasses.dataclass(frozen=True)
class Face:
    """A detected face: `box` (x, y, w, h) in the searched image's pixels (floats; it may reach past
    the picture's edge for a face cut by it), MTCNN's `confidence` in [0, 1] and five `landmarks`
    {name: (x, y)}: left_eye, right_eye, nose, mouth_left, mouth_right (left = the image's left)."""
    box: tuple
    confidence: float
    landmarks: dict


def weight_paths():
    """Absolute paths of the weight files inside the installed mtcnn package.

    mtcnn 1.0.0's `load_weights(name)` tries `os.path.abspath(name)` -- the current directory -- before
    its own assets, and loads with joblib (a pickle): given the bare names, a `pnet.lz4` planted where a
    user runs the tool would run code. An absolute path into the package is the only file it opens.
    """
    paths = faces_lite.mtcnn_weight_paths()
    if paths is None:
        raise utils.UserError("face detection needs the mtcnn package: pip install 'mtcnn>=1.0,<2'")
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise utils.UserError(f"{missing[0]}: the mtcnn package lacks its weights; reinstall it "
                              f"(pip install --force-reinstall 'mtcnn>=1.0,<2')")
    return paths


def build_detector():
    """A new MTCNN (P-, R- and O-Net with landmarks) on the package's own weights; see weight_paths."""
    backends.tensorflow()
    pnet, rnet, onet = weight_paths()
    with backends.native_output_hidden():
        from mtcnn import MTCNN
        from mtcnn.stages import StageONet, StagePNet, StageRNet

        return MTCNN(stages=[StagePNet(weights=pnet), StageRNet(weights=rnet), StageONet(weights=onet)])


class MtcnnDetector:
    """The mtcnn package's MTCNN on TensorFlow (build_detector); `rows` as faces_lite.LiteDetector's."""

    def __init__(self):
        self.mtcnn = build_detector()

    def rows(self, image):
        """mtcnn's numpy rows for float32 RGB pixels (see detect_faces)."""
        return self.mtcnn.detect_faces(image, min_face_size=_MTCNN_MIN_FACE, box_format="xyxy", output_type="numpy",
                                       fit_to_image=False)


_detector_files = None  # build.py's LiteRT detector files when use_litert_detector chose them


def use_litert_detector(paths):
    """Detect on LiteRT with build.py's detector files (faces_lite.find_detector's paths), or on the mtcnn
    package's TensorFlow networks when `paths` is None (the default); the next detector() builds that one."""
    global _detector_files
    _detector_files = paths
    detector.cache_clear()


@contextlib.contextmanager
def litert_detector(paths):
    """use_litert_detector(paths) for a with-block, then back to the detector chosen before."""
    previous = _detector_files
    use_litert_detector(paths)
    try:
        yield
    finally:
        use_litert_detector(previous)


@functools.lru_cache(maxsize=1)
def detector():
    """The process's detector, built on first use: MTCNN on LiteRT (faces_lite, when use_litert_detector
    gave its files) or on TensorFlow (about 0.3 s once TensorFlow is loaded). Both give mtcnn's rows."""
    return MtcnnDetector() if _detector_files is None else faces_lite.LiteDetector(_detector_files)


def detect_faces(image, max_side=PHOTO_MAX_SIDE, min_confidence=MIN_CONFIDENCE):
    """The faces in one upright picture, sorted left to right (by the box's left edge).

    `image` is [H, W, 3] RGB (uint8; other dtypes and gray/RGBA are converted). EXIF orientation is the
    caller's business (see read_photo_upright). An image whose long side exceeds `max_side` is
    searched downscaled to it (as the original's crop-video.py does with 640) and the boxes scaled back,
    so boxes and landmarks are always in `image`'s pixels. Returns [] when nothing is found.
    """
    image = _as_rgb_uint8(image)
    small, scale = _fit_long_side(image, max_side)
    if min(small.shape[:2]) < _MTCNN_MIN_FACE:
        return []  # no face of MTCNN's minimum size fits
    # float32 in: mtcnn normalizes its input with NumPy and resizes every pyramid level from it, which on
    # uint8 makes a float64 copy; float32 halves that work (1.28 -> 0.75 s for a 1080p photo, same boxes).
    rows = detector().rows(small.astype(np.float32))
    found = [_face_from_row(row, scale) for row in np.asarray(rows).reshape(-1, 16)]
    found = [face for face in found if face.confidence >= min_confidence]
    return sorted(found, key=lambda face: (face.box[0], face.box[1]))


def _face_from_row(row, scale):
    """mtcnn's numpy row [image, x1, y1, x2, y2, confidence, 5 landmark x, 5 landmark y] -> Face."""
    x1, y1, x2, y2 = (float(value) * scale for value in row[1:5])
    landmarks = {name: (float(row[6 + i]) * scale, float(row[11 + i]) * scale)
                 for i, name in enumerate(_LANDMARK_NAMES)}
    return Face(box=(x1, y1, x2 - x1, y2 - y1), confidence=float(row[5]), landmarks=landmarks)


def _fit_long_side(image, max_side):
    """(image downscaled so its long side is at most max_side, factor from its pixels to image's).

    Sizes are truncated and the factor is one number for both axes, as the original's extract_bbox.
    Pillow's bilinear filter widens with the reduction (anti-aliased, like the original's skimage
    resize) and is an order of magnitude faster, which matters once per sampled video frame.
    """
    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return image, 1.0
    scale = max(height, width) / float(max_side)
    size = (int(width / scale), int(height / scale))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)), scale


def _as_rgb_uint8(image):
    """Any decoded picture as contiguous uint8 [H, W, 3]: gray repeated, alpha dropped, 16-bit scaled."""
    image = np.asarray(image)
    return np.ascontiguousarray(media.to_rgb(image if image.dtype == np.uint8 else img_as_ubyte(image)))


def find_faces(image, name, hint="--crop_box X,Y,W,H", max_side=PHOTO_MAX_SIDE):
    """detect_faces, but no face is a UserError naming the picture (`name`) and the by-hand `hint`."""
    found = detect_faces(image, max_side=max_side)
    if not found:
        raise utils.UserError(f"{name}: no face found; give the crop by hand with {hint}")
    return found


def read_photo_upright(path):
    """A photo file as uint8 RGB [H, W, 3], turned upright by its EXIF orientation.

    Phones store pictures as the sensor saw them plus an EXIF tag saying how to turn them; imageio
    (and so media.read_image) ignores the tag, which would hand the detector a face lying on its side.
    Gray, palette, RGBA (alpha dropped, as the original's `[..., :3]`), CMYK and 16-bit are converted.
    """
    path = str(path)
    utils.require_file(path, "an image")
    try:
        with Image.open(path) as picture:
            picture = ImageOps.exif_transpose(picture)
            picture.load()
            if picture.mode.startswith("I;16"):
                return _as_rgb_uint8(np.asarray(picture).astype(np.uint16))
            return np.asarray(picture.convert("RGB"))
    # Pillow reports undecodable or hostile files with assorted types (UnidentifiedImageError is an
    # OSError; truncated data, bad tags and decompression bombs are not); only the decode is wrapped.
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise utils.UserError(f"{path}: not a readable image ({utils.first_line(err)})") from err


# ----------------------------------------------------------------------------
# 2. Crop geometry
# ----------------------------------------------------------------------------

# A crop whose side is under this fraction of the model's input is upscaled more than 4x: blurry.
SMALL_FACE = 0.25


class SmallFaceWarning(UserWarning):
    """A face whose crop is under SMALL_FACE of the model's input (warnings.warn, one line)."""


@dataclasses.dataclass(frozen=True)
class CropBox:
    """A crop in a picture's pixels: left `x`, top `y`, width `w`, height `h` (integers). It may
    extend past the picture's edges; `cut` pads what lies outside. str() gives "X,Y,W,H", the form
    `--crop_box` takes."""
    x: int
    y: int
    w: int
    h: int

    @property
    def right(self):
        return self.x + self.w

    @property
    def bottom(self):
        return self.y + self.h

    def inside(self, width, height):
        """Whether the crop lies wholly within a width x height picture (needs no padding)."""
        return self.x >= 0 and self.y >= 0 and self.right <= width and self.bottom <= height

    def __str__(self):
        return f"{self.x},{self.y},{self.w},{self.h}"


class CropBoxError(argparse.ArgumentTypeError, ValueError):
    """A malformed X,Y,W,H: argparse shows its one-line message as is when parse_crop_box is a `type=`."""


def parse_crop_box(text):
    """"X,Y,W,H" (integers, W and H positive; X and Y may be negative) -> CropBox; CropBoxError otherwise."""
    parts = str(text).split(",")
    try:
        x, y, w, h = (int(part.strip()) for part in parts)
    except ValueError:
        raise CropBoxError(f"{text!r}: expected X,Y,W,H (four integers, e.g. 120,80,300,300)") from None
    if w <= 0 or h <= 0:
        raise CropBoxError(f"{text!r}: width and height must be positive")
    return CropBox(x, y, w, h)


def crop_box(face_box, frame_shape, increase=0.1):
    """The crop the original's crop-video.py makes around a face box, at the aspect of `frame_shape`.

    `face_box` is (x, y, w, h) (a Face's or a Track's box); `frame_shape` the config's [H, W, ...].
    Every side grows by `increase` of the box's size, and the narrower direction grows more, until
    the crop has the model's aspect: for a square frame_shape this is the original's compute_bbox
    exactly (a square of side (1 + 2 * increase) * max(w, h), centred on the box). Coordinates are
    floored, which is the original's int() wherever it keeps them (the original clamps negative ones
    to 0); unlike the original the crop is not clamped to the picture: `cut` pads instead, so the
    aspect never changes. Like the original's, the truncation can leave the aspect one pixel off.
    """
    x, y, w, h = (float(value) for value in face_box)
    if not (w > 0 and h > 0):
        raise ValueError(f"face box {face_box!r}: width and height must be positive")
    aspect = frame_shape[1] / frame_shape[0]  # width / height of the model's input
    width_increase = max(increase, ((1 + 2 * increase) * h * aspect - w) / (2 * w))
    height_increase = max(increase, ((1 + 2 * increase) * w / aspect - h) / (2 * h))
    left = math.floor(x - width_increase * w)
    top = math.floor(y - height_increase * h)
    right = math.floor(x + w + width_increase * w)
    bottom = math.floor(y + h + height_increase * h)
    return CropBox(left, top, right - left, bottom - top)


def cut(image, box):
    """image[box] as a new [box.h, box.w, C] array of image's dtype; outside the picture, its edge
    pixels repeated (see the module's docstring for why edge replication)."""
    image = media.as_hwc(np.asarray(image))
    height, width = image.shape[:2]
    if box.inside(width, height):
        return image[box.y:box.bottom, box.x:box.right].copy()
    rows = np.clip(np.arange(box.y, box.bottom), 0, height - 1)
    cols = np.clip(np.arange(box.x, box.right), 0, width - 1)
    return image[rows[:, np.newaxis], cols[np.newaxis, :]]


def resize_to(crop, frame_shape):
    """A crop as the model's input, float32 [H, W, 3] in [0, 1]: media.preprocess_frame, the path every
    source image and driving frame takes, so a crop is preprocessed exactly as a cropped file would be."""
    return media.preprocess_frame(crop, frame_shape)


def crop_and_resize(image, box, frame_shape):
    """resize_to(cut(image, box), frame_shape): one picture's crop, ready for the model."""
    return resize_to(cut(image, box), frame_shape)


def warn_if_small(box, frame_shape, name):
    """warnings.warn(SmallFaceWarning) when the crop is under SMALL_FACE of the model's input on
    either side; returns whether it is. `name` says which picture and face, e.g. "photo.jpg face 1"."""
    model_height, model_width = frame_shape[:2]
    small = box.w < SMALL_FACE * model_width or box.h < SMALL_FACE * model_height
    if small:
        warnings.warn(f"{name}: the face's crop is {box.w}x{box.h}, under a quarter of the model's "
                      f"{model_width}x{model_height} input; the result will be blurry", SmallFaceWarning)
    return small


def source_crops(photo, frame_shape, name, increase=0.1, face=None, hint="--crop_box X,Y,W,H"):
    """[(Face, CropBox)] for the faces of a source photo, left to right; only face number `face` when
    given. No face -> UserError (see find_faces); a `face` out of range -> UserError; small crops warn."""
    found = find_faces(photo, name, hint)
    numbered = list(enumerate(found))
    if face is not None:
        if not 0 <= face < len(found):
            raise utils.UserError(f"--face {face}: {name} has {len(found)} face{'s' if len(found) != 1 else ''} "
                                  f"(numbered 0-{len(found) - 1} left to right)")
        numbered = [numbered[face]]
    result = []
    for index, one in numbered:
        box = crop_box(one.box, frame_shape, increase)
        warn_if_small(box, frame_shape, f"{name} face {index}")
        result.append((one, box))
    return result


# ----------------------------------------------------------------------------
# 3. Face tracks over a video, and the driving video cropped as a stream
# ----------------------------------------------------------------------------

# Detect on every DETECT_EVERY-th frame of a driving video. Measured on this project's 2-core machine
# (shared, so medians): MTCNN on a 1280x720 frame downscaled to 640x360 as the original does, one
# face, 0.15 s (0.15 s for 1920x1080 too: the downscale makes it size-independent), plus 0.011 s to
# decode each frame of the detection pass. vox-256 animation takes 0.44-0.6 s a frame end to end
# (README's Performance table: tflite-int8 batch 8 to direct batch 4). Detection within 10% of
# 0.44 s needs 0.011 + 0.15 / k <= 0.044, so k >= 4.6: every 5th frame (0.2 s apart at 25 fps, less
# than a head moves out of its crop's margin), which is 8-9% of the animation time. What counts is
# the time between searches, so a video of another frame rate is searched every DETECT_SECONDS
# (every_kth_frame): every 6th frame at 30 fps, every 12th at 60 fps (phones), never more often than every 5th.
DETECT_EVERY = 5
DETECT_SECONDS = 0.2


def every_kth_frame(fps):
    """How many frames apart a driving video of `fps` frames a second is searched: DETECT_SECONDS apart,
    never more often than every DETECT_EVERY-th frame (the budget above); DETECT_EVERY when the rate is
    unknown."""
    if not fps or not math.isfinite(fps):
        return DETECT_EVERY
    return max(DETECT_EVERY, round(fps * DETECT_SECONDS))


@dataclasses.dataclass
class Track:
    """One face followed through a video, as the original's trajectories: `first` is the box every
    detection is compared with, `union` the union of all its boxes (both (left, top, right, bottom)),
    `start` / `end` the first and last frame it was detected in (inclusive), `hits` how many
    detections joined it."""
    first: tuple
    union: tuple
    start: int
    end: int
    hits: int = 1

    @property
    def box(self):
        """The union box as (x, y, w, h), what crop_box takes."""
        left, top, right, bottom = self.union
        return (left, top, right - left, bottom - top)

    @property
    def frames(self):
        """Frames from the first to the last detection, inclusive."""
        return self.end - self.start + 1

    def add(self, box, index):
        left, top, right, bottom = self.union
        self.union = (min(left, box[0]), min(top, box[1]), max(right, box[2]), max(bottom, box[3]))
        self.end = index
        self.hits += 1


def iou(first, second):
    """Intersection over union of two (left, top, right, bottom) boxes, with the original's (and its
    VoxCeleb preprocessing's) convention that a box covers right - left + 1 pixels."""
    inner_w = max(0.0, min(first[2], second[2]) - max(first[0], second[0]) + 1)
    inner_h = max(0.0, min(first[3], second[3]) - max(first[1], second[1]) + 1)
    inner = inner_w * inner_h
    area_first = (first[2] - first[0] + 1) * (first[3] - first[1] + 1)
    area_second = (second[2] - second[0] + 1) * (second[3] - second[1] + 1)
    return inner / float(area_first + area_second - inner)


def tracks(detections_per_frame, iou_with_initial=0.25, hold_on_miss=False):
    """Face tracks from detections, by the original crop-video.py's rules.

    `detections_per_frame`: (frame index, faces) pairs in frame order, for the frames searched (others
    neither extend nor end a track); faces are Face or (x, y, w, h). A detection joins the live track
    whose first box it overlaps most, when that IoU is > iou_with_initial, else starts a new track.
    With `hold_on_miss` False (the original, crop.py) a searched frame where no detection overlaps a
    track's first box that much ends the track -- a frame where detection misses ends them all. With
    True (run.py --crop) a track is never ended: a miss holds its box, and the face is picked up
    again when it comes back near where the track began.
    Returns every track, ended or not, ordered by start frame, then left to right.
    """
    live, ended = [], []
    for index, faces in detections_per_frame:
        boxes = [_ltrb(face) for face in faces]
        if not hold_on_miss:
            still = [track for track in live if any(iou(track.first, box) > iou_with_initial for box in boxes)]
            ended += [track for track in live if track not in still]
            live = still
        for box in boxes:
            best, best_iou = None, 0.0
            for track in live:
                overlap = iou(track.first, box)
                if overlap > iou_with_initial and overlap > best_iou:
                    best, best_iou = track, overlap
            if best is None:
                live.append(Track(first=box, union=box, start=index, end=index))
            else:
                best.add(box, index)
    return sorted(ended + live, key=lambda track: (track.start, track.union[0]))


def _ltrb(face):
    x, y, w, h = face.box if isinstance(face, Face) else face
    return (float(x), float(y), float(x) + float(w), float(y) + float(h))


def detect_video(frames, every=DETECT_EVERY, max_side=VIDEO_MAX_SIDE, max_frames=None):
    """[(frame index, [Face])] for every `every`-th frame (0, every, 2 * every, ...) of a stream of
    frames (a media.VideoSource or any iterable of [H, W, C] arrays), detected downscaled to
    `max_side` as the original does. Frames are decoded one at a time and none is kept."""
    found = []
    for index, frame in enumerate(frames):
        if max_frames is not None and index >= max_frames:
            break
        if index % every == 0:
            found.append((index, detect_faces(frame, max_side=max_side)))
    return found


def longest_track(found_tracks):
    """The track spanning the most frames (ties: the most detections, then the earliest)."""
    return max(found_tracks, key=lambda track: (track.frames, track.hits, -track.start))


def driving_crop_box(video, frame_shape, name, face=None, increase=0.1, iou_with_initial=0.25,
                     every=None, max_frames=None, hint="--driving_crop_box X,Y,W,H"):
    """(CropBox, Track, all tracks) for a driving video, as run.py --crop uses it: faces detected on
    every `every`-th frame (default: every_kth_frame of the video's fps), tracks with hold_on_miss, the
    longest track's union box (or track number `face` in tracks()' order) made into a crop. The video is
    read once, as a stream. No face in any searched frame, or a `face` out of range -> UserError naming `name`."""
    every = every or every_kth_frame(getattr(video, "fps", None))
    found_tracks = tracks(detect_video(video, every=every, max_frames=max_frames),
                          iou_with_initial=iou_with_initial, hold_on_miss=True)
    if not found_tracks:
        raise utils.UserError(f"{name}: no face found in the video; give the crop by hand with {hint}")
    if face is None:
        chosen = longest_track(found_tracks)
    elif 0 <= face < len(found_tracks):
        chosen = found_tracks[face]
    else:
        raise utils.UserError(f"--driving_face {face}: {name} has {len(found_tracks)} face "
                              f"track{'s' if len(found_tracks) != 1 else ''} (numbered 0-{len(found_tracks) - 1})")
    box = crop_box(chosen.box, frame_shape, increase)
    warn_if_small(box, frame_shape, name)
    return box, chosen, found_tracks


class DrivingCrop:
    """A driving video cropped to one fixed box on the fly: iterating yields float32 [H, W, 3] frames
    for the model (crop_and_resize), one at a time, so memory stays flat in the video's length.

    `source` is a media.VideoSource, a media.Clip of raw frames, or any iterable of [H, W, C] arrays;
    iterating again starts again when the source does (a VideoSource reopens). It carries the
    source's `path`, `fps`, `frame_count` and `media_path` (for --audio) where it has them, and
    `size` = the crop's (width, height), so it stands wherever run.py takes a media.Clip.
    """

    def __init__(self, source, box, frame_shape):
        self.source = source
        self.box = box
        self.frame_shape = tuple(frame_shape)
        self.path = getattr(source, "path", "driving video")
        self.fps = getattr(source, "fps", media.DEFAULT_FPS)
        self.frame_count = getattr(source, "frame_count", None)
        self.media_path = getattr(source, "media_path", self.path if isinstance(source, media.VideoSource) else None)
        self.size = (box.w, box.h)

    def __iter__(self):
        for frame in self.source:
            yield self.prepare(frame)

    def prepare(self, frame):
        """One decoded frame of the source as the model's input: cut to the box, resized."""
        return crop_and_resize(frame, self.box, self.frame_shape)

    def close(self):
        close = getattr(self.source, "close", None)
        if close is not None:
            close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        self.close()
        return False


# ----------------------------------------------------------------------------
# 4. Pasting animated crops back into the photo
# ----------------------------------------------------------------------------

# The feather's width as a fraction of the crop's shorter side: 1/12 is the margin increase=0.1 adds
# around the face (0.1 / 1.2), so the blend runs over background and hair, not over the face.
FEATHER_FRACTION = 1 / 12


def paste_back(photo, crop, box, feather=None):
    """A copy of `photo` (uint8 [H, W, 3]) with an animated `crop` blended in at `box`.

    `crop` (float in [0, 1] or uint8, any size, usually the model's frame_shape) is resized to the
    box's size and blended with a mask that ramps smoothly from 0 at the box's border to 1 at
    `feather` pixels inside it (default FEATHER_FRACTION of its shorter side; 0 pastes hard), so no
    seam shows. Sides of the box at or past the photo's edge get no ramp (there is nothing to blend
    with), and what lies outside the photo is dropped. Pixels outside the box are the photo's, bit
    for bit.
    """
    return paste_all(photo, [(crop, box)], feather)


def paste_all(photo, pieces, feather=None):
    """paste_back for several faces: `pieces` is [(crop, box)], pasted in order on one copy."""
    canvas = np.array(photo, dtype=np.uint8, copy=True)
    for crop, box in pieces:
        _paste_into(canvas, crop, box, feather)
    return canvas


def _paste_into(canvas, crop, box, feather):
    height, width = canvas.shape[:2]
    top, bottom = max(box.y, 0), min(box.bottom, height)
    left, right = max(box.x, 0), min(box.right, width)
    if top >= bottom or left >= right:
        return
    if feather is None:
        feather = max(1, round(FEATHER_FRACTION * min(box.w, box.h)))
    ramped = (box.y > 0, box.bottom < height, box.x > 0, box.right < width)  # top, bottom, left, right
    mask = _feather_mask(box.h, box.w, feather, ramped)
    window = (slice(top - box.y, bottom - box.y), slice(left - box.x, right - box.x))
    animated = _resized_to_box(crop, box)[window]
    weight = mask[window][..., np.newaxis]
    region = canvas[top:bottom, left:right].astype(np.float32)
    blended = animated * np.float32(255)  # region + weight * (animated - region), in place
    blended -= region
    blended *= weight
    blended += region
    np.rint(blended, out=blended)
    canvas[top:bottom, left:right] = np.clip(blended, 0, 255, out=blended)


def _resized_to_box(crop, box):
    """The animated crop as float32 [box.h, box.w, 3] in [0, 1]: Pillow's bilinear filter on each channel
    in float ("F") mode, anti-aliased when shrinking. As precise as skimage's resize for this and about
    8x faster (3 ms instead of 25 ms for 256 -> 420 px), which counts once per output frame."""
    crop = np.asarray(crop)
    crop = crop.astype(np.float32) / 255.0 if crop.dtype == np.uint8 else crop.astype(np.float32)
    if crop.shape[:2] == (box.h, box.w):
        return crop[..., :3]
    channels = [Image.fromarray(np.ascontiguousarray(crop[..., channel])).resize((box.w, box.h), Image.BILINEAR)
                for channel in range(3)]
    return np.stack([np.asarray(channel) for channel in channels], axis=-1)


@functools.lru_cache(maxsize=16)
def _feather_mask(height, width, feather, ramped):
    """float32 [height, width] weights: the product of smoothstep ramps from each ramped side
    (top, bottom, left, right), each 0 at the border and 1 from `feather` pixels in. Cached: a video
    pastes the same box on every frame."""
    top, bottom, left, right = ramped
    rows = _ramp(height, feather, top, bottom)
    cols = _ramp(width, feather, left, right)
    mask = rows[:, np.newaxis] * cols[np.newaxis, :]
    mask.setflags(write=False)
    return mask


def _ramp(length, feather, at_start, at_end):
    weights = np.ones(length, np.float32)
    if feather <= 0:
        return weights
    distance = np.arange(length, dtype=np.float32) + 0.5  # pixel centres from the start
    for side, reach in ((at_start, distance), (at_end, length - distance)):
        if side:
            t = np.clip(reach / feather, 0.0, 1.0)
            weights *= t * t * (3 - 2 * t)
    return weights
