"""Input/output helpers: configs, model paths, images, streamed video in and out.

No model code lives here. Everything a user can get wrong (a missing file, an
undecodable image, a video without frames) is raised as `UserError`, whose
message is one line starting with the offending path; the CLIs print it and
exit with status 1 instead of showing a traceback.

Sections:
  1. errors
  2. configs and model paths
  3. images and frames (preprocessing identical to the original demo.py)
  4. reading video as a stream
  5. writing video / GIF / PNG frames atomically
  6. output naming
  7. exported models (savedmodel / tflite / onnx targets): layout, loading, op lists
  8. clips: a video as the model takes it (file, frame folder, strip of frames)
  9. datasets: the original FramesDataset's test split, PairedDataset's pairs
 10. audio tracks
 11. visualizer: the original's row of panels per frame
"""

import argparse
import contextlib
import csv
import itertools
import json
import math
import numbers
import os
import re
import shutil
import subprocess
import tempfile
import warnings

import imageio.v2 as imageio_v2
import imageio.v3 as imageio_v3
import imageio_ffmpeg
import numpy as np
import yaml
from PIL import Image
from skimage import img_as_float32, img_as_ubyte
from skimage.draw import disk
from skimage.transform import resize

REPO_DIR = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------
# 1. Errors
# ----------------------------------------------------------------------------

class UserError(Exception):
    """A bad input, reported by the CLI as one line with exit code 1.

    The message is collapsed onto one line here, so that no caller can leak a
    multi-line library error (ffmpeg and imageio both produce those) to the user.
    """

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (exit code 2), like every other error of the CLIs."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _first_line(error):
    """The first non-empty line of an exception's text, for short error messages."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


def _os_reason(error):
    """Why an OSError happened ("Permission denied"), without the file names it carries:
    those are often our temporary names, which mean nothing to the user."""
    return error.strerror or _first_line(error)


def _require_file(path, what):
    """Raise UserError unless `path` is an existing regular file."""
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, not {what}")


# ----------------------------------------------------------------------------
# 2. Configs and model paths
# ----------------------------------------------------------------------------

def load_config(path):
    """Read a model config (YAML) and check the keys inference relies on.

    Returns the parsed mapping. Raises UserError when the file is missing or
    unreadable, is not YAML, is not a mapping, lacks `model_params`, lacks a
    valid `dataset_params.frame_shape` ([H, W, C], positive integers), or when
    a `model_params` entry of `MODEL_PARAMS` is missing or of the wrong type;
    the message names the key.
    """
    path = str(path)
    _require_file(path, "a config file")
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read config ({_first_line(err)})") from err
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({_describe_yaml_error(err)})") from err

    if not isinstance(config, dict):
        raise UserError(f"{path}: not a config (expected a YAML mapping, got {type(config).__name__})")
    if not isinstance(config.get("model_params"), dict):
        raise UserError(f"{path}: missing 'model_params'")
    dataset_params = config.get("dataset_params")
    if not isinstance(dataset_params, dict) or "frame_shape" not in dataset_params:
        raise UserError(f"{path}: missing 'dataset_params.frame_shape'")
    if not _is_frame_shape(dataset_params["frame_shape"]):
        raise UserError(f"{path}: 'dataset_params.frame_shape' must be [height, width, channels] "
                        f"of positive integers, got {_short_repr(dataset_params['frame_shape'])}")
    _check_model_params(path, config["model_params"])
    return config


# The model_params entries inference reads, as the original's YAML spells them:
# (dotted key under model_params, kind, required). Checked here so that a typo
# is reported with the file and key instead of surfacing as a TensorFlow error.
MODEL_PARAMS = (
    ("common_params.num_kp", "size", True),
    ("common_params.num_channels", "size", True),
    ("common_params.estimate_jacobian", "flag", False),
    ("kp_detector_params.temperature", "positive number", True),
    ("kp_detector_params.block_expansion", "size", True),
    ("kp_detector_params.max_features", "size", True),
    ("kp_detector_params.num_blocks", "size", True),
    ("kp_detector_params.scale_factor", "positive number", False),
    ("kp_detector_params.single_jacobian_map", "flag", False),
    ("kp_detector_params.pad", "padding", False),
    ("generator_params.block_expansion", "size", True),
    ("generator_params.max_features", "size", True),
    ("generator_params.num_down_blocks", "count", True),
    ("generator_params.num_bottleneck_blocks", "count", True),
    ("generator_params.estimate_occlusion_map", "flag", False),
    ("generator_params.dense_motion_params.block_expansion", "size", True),
    ("generator_params.dense_motion_params.max_features", "size", True),
    ("generator_params.dense_motion_params.num_blocks", "size", True),
    ("generator_params.dense_motion_params.scale_factor", "positive number", False),
    ("generator_params.dense_motion_params.kp_variance", "positive number", False),
)

_KIND_TEXT = {
    "size": "a positive integer",
    "count": "a non-negative integer",
    "positive number": "a positive number",
    "flag": "true or false",
    "padding": "a non-negative integer or a list of them",
}


def _check_model_params(path, model_params):
    """UserError naming the first MODEL_PARAMS entry that is missing or of the wrong kind."""
    for key, kind, required in MODEL_PARAMS:
        *sections, name = key.split(".")
        parent, where = model_params, "model_params"
        for section in sections:
            where = f"{where}.{section}"
            if section not in parent:
                raise UserError(f"{path}: missing '{where}'")
            if not isinstance(parent[section], dict):
                raise UserError(f"{path}: '{where}' must be a mapping, got {_short_repr(parent[section])}")
            parent = parent[section]
        if name not in parent:
            if required:
                raise UserError(f"{path}: missing '{where}.{name}'")
            continue
        if not _is_kind(parent[name], kind):
            raise UserError(f"{path}: '{where}.{name}' must be {_KIND_TEXT[kind]}, got {_short_repr(parent[name])}")


def _short_repr(value, limit=40):
    """repr() of a value from a user's file, cut short for a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_kind(value, kind):
    """Whether a YAML value fits one of the MODEL_PARAMS kinds."""
    if kind == "flag":
        return isinstance(value, bool)
    if kind == "padding" and isinstance(value, list):
        return len(value) > 0 and all(_is_kind(v, "count") for v in value)
    # bool is an int subclass, but `num_kp: true` is a typo, not a number.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    if kind == "positive number":
        return math.isfinite(value) and value > 0
    minimum = 1 if kind == "size" else 0
    return isinstance(value, int) and value >= minimum


def _describe_yaml_error(err):
    """'line N: problem' from a PyYAML error, whose own str() spans several lines."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or _first_line(err)
    return f"line {mark.line + 1}: {problem}" if mark is not None else problem


def _is_frame_shape(value):
    # bool is an int subclass; `[True, True, 3]` is a typo, not a shape.
    return (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def model_paths(model, config=None, checkpoint=None):
    """Resolve (config_path, checkpoint_path) for `--model NAME`.

    `NAME` maps to `config/NAME-256.yaml` and `checkpoint/NAME-cpk.pth.tar`
    inside the repository (the folder of this file), whatever the current
    directory is. An explicit `config` / `checkpoint` path wins over the name.
    Only the config's existence is checked here, to list the known model names
    in the error; the checkpoint is checked by whoever loads it (exported
    targets never need it).
    """
    if model is None and (config is None or checkpoint is None):
        raise UserError("--model is required unless both --config and --checkpoint are given")
    if config is None:
        config = os.path.join(REPO_DIR, "config", f"{model}-256.yaml")
        if not os.path.isfile(config):
            raise UserError(f"{config}: no config for model '{model}' "
                            f"(known models: {', '.join(known_models()) or 'none'})")
    if checkpoint is None:
        checkpoint = os.path.join(REPO_DIR, "checkpoint", f"{model}-cpk.pth.tar")
    return str(config), str(checkpoint)


def checkpoint_for_config(config_path):
    """The checkpoint that goes with `X/NAME-256.yaml` by the published naming rule, or None.

    `X/NAME-cpk.pth.tar` beside the config wins, then the repository's `checkpoint/NAME-cpk.pth.tar`;
    a config named otherwise, or whose checkpoint is in neither place, has none.
    """
    stem = os.path.splitext(os.path.basename(str(config_path)))[0]
    if not stem.endswith("-256"):
        return None
    name = f"{stem[:-len('-256')]}-cpk.pth.tar"
    for candidate in (os.path.join(os.path.dirname(str(config_path)), name), os.path.join(REPO_DIR, "checkpoint", name)):
        if os.path.isfile(candidate):
            return candidate
    return None


def published_checkpoint_missing(checkpoint_path):
    """The message for a `checkpoint/NAME-cpk.pth.tar` that is not there yet: where to get it."""
    return (f"{checkpoint_path}: no such file; download the published checkpoint into checkpoint/ "
            f"(see checkpoint/README.md), or give --config and --checkpoint")


def known_models():
    """Model names that have a `config/NAME-256.yaml`, sorted."""
    suffix = "-256.yaml"
    config_dir = os.path.join(REPO_DIR, "config")
    names = os.listdir(config_dir) if os.path.isdir(config_dir) else []
    return sorted(name[:-len(suffix)] for name in names if name.endswith(suffix))


# ----------------------------------------------------------------------------
# 3. Images and frames
# ----------------------------------------------------------------------------

def read_image(path, frame_shape):
    """Read an image file as float32 [H, W, 3] in [0, 1], H, W = frame_shape[:2].

    For 8-bit RGB this is bit for bit the original demo.py:
    `resize(imageio.imread(path), frame_shape[:2])[..., :3]` in float64, then
    float32. Grayscale, gray+alpha, RGBA, palette, CMYK and 16-bit images are
    converted (see `preprocess_frame`); anything imageio cannot decode raises
    UserError.
    """
    path = str(path)
    _require_file(path, "an image")
    return preprocess_frame(_decode_image(path), frame_shape)


def image_size(path):
    """(height, width) of the image at `path`, decoded as read_image would; UserError as read_image."""
    path = str(path)
    _require_file(path, "an image")
    return _decode_image(path).shape[:2]


def _decode_image(path):
    """The first image in `path` as imageio returns it (any dtype, 2-D or HxWxC)."""
    try:
        with _imageio_quiet():
            image = imageio_v2.imread(path)
        if image.ndim == 3 and image.shape[-1] == 4 and _is_cmyk(path):
            # Pillow hands CMYK JPEGs over as raw ink channels; `[..., :3]`
            # would then show C, M, Y as R, G, B. Let Pillow convert instead.
            image = imageio_v3.imread(path, index=0, mode="RGB")
    # imageio's plugins report undecodable input with many unrelated exception
    # types (ValueError, OSError, SyntaxError, struct.error, ...); this wraps
    # only the decode call, so nothing else is hidden.
    except Exception as err:
        raise UserError(f"{path}: not a readable image ({_describe_decode_error(err)})") from err
    return np.asarray(image)


@contextlib.contextmanager
def _imageio_quiet():
    """imageio warns about its own plugins while it searches one for an unknown file ("The legacy `DICOM`
    plugin is deprecated..."): that is its business, not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The legacy .* plugin is deprecated")
        yield


def _is_cmyk(path):
    """Whether Pillow reads `path` as CMYK; False for files Pillow does not handle."""
    try:
        return imageio_v3.immeta(path, index=0, plugin="pillow").get("mode") == "CMYK"
    except (OSError, ValueError):
        return False


def preprocess_frame(frame, frame_shape):
    """Resize one decoded image or video frame to float32 [H, W, 3] in [0, 1].

    Resizing is skimage's `resize` with its defaults, exactly as demo.py does;
    it also maps uint8 and uint16 to [0, 1]. Channels are fixed up after the
    resize: skimage resizes each channel independently, so for RGB and RGBA
    this is the original's `[..., :3]`, and for the rest (grayscale, gray+alpha)
    it equals resizing the RGB version of the image.
    """
    frame = np.asarray(frame)
    if frame.dtype == bool:
        # 1-bit images: skimage refuses to interpolate bool data.
        frame = frame.astype(np.float64)
    height, width = (int(size) for size in frame_shape[:2])
    resized = resize(frame, (height, width))
    return _to_rgb(resized).astype(np.float32)


def _to_rgb(image):
    """[H, W] or [H, W, C] -> [H, W, 3]: gray is repeated, alpha and extras are dropped."""
    if image.ndim == 2:
        image = image[..., np.newaxis]
    if image.shape[-1] < 3:
        # 1 channel (L) or 2 channels (L + alpha): the first one is the luminance.
        return np.repeat(image[..., :1], 3, axis=-1)
    return image[..., :3]


def to_uint8(frames):
    """Float frames in [0, 1] -> uint8, exactly `skimage.img_as_ubyte` as demo.py writes them."""
    return img_as_ubyte(np.asarray(frames))


# ----------------------------------------------------------------------------
# 4. Reading video as a stream
# ----------------------------------------------------------------------------

DEFAULT_FPS = 25.0  # when a container states neither a frame rate nor a frame duration


class VideoSource:
    """A video (mp4, gif, any format imageio reads) opened for streaming.

    `fps` and `size` (width, height) are known on opening; iterating yields
    raw HxWxC uint8 (or uint16) frames one at a time, decoded on demand, so
    memory does not grow with the video's length. Each new iteration starts
    again from the first frame. Use as a context manager or call `close()`.
    """

    def __init__(self, path):
        self.path = str(path)
        _require_file(self.path, "a video")
        self._reader = None
        self._open()
        meta = self._reader.get_meta_data()
        self.fps = _frames_per_second(meta)
        self.size = (self._first.shape[1], self._first.shape[0])
        self.frame_count = _estimate_frame_count(self._reader, meta, self.fps)
        self._started = False

    def _open(self):
        """(Re)open the reader and decode the first frame, so that no frames is an error now."""
        self.close()
        try:
            with _imageio_quiet():
                self._reader = imageio_v2.get_reader(self.path)
        # As for images: imageio and its ffmpeg plugin signal unreadable input
        # with assorted exception types, and this wraps only the open call.
        except Exception as err:
            raise UserError(f"{self.path}: not a readable video ({_describe_video_error(err)})") from err
        self._frames = iter(self._reader)
        try:
            self._first = _as_hwc(next(self._frames))
        except StopIteration:
            self.close()
            raise UserError(f"{self.path}: the video has no frames") from None
        except (OSError, RuntimeError, ValueError) as err:
            self.close()
            raise UserError(f"{self.path}: cannot decode the first frame ({_first_line(err)})") from err

    def __iter__(self):
        if self._started:
            self._open()
        self._started = True
        first, self._first = self._first, None
        yield first
        yield from self._remaining_frames()

    def _remaining_frames(self):
        count = 1
        while True:
            try:
                frame = next(self._frames)
            except StopIteration:
                return
            except RuntimeError as err:
                # demo.py stops reading at a RuntimeError and animates the
                # frames read so far (some encoders leave a broken tail).
                warnings.warn(f"{self.path}: stopped after {count} frames ({_first_line(err)})")
                return
            except OSError as err:
                raise UserError(f"{self.path}: cannot decode frame {count} ({_first_line(err)})") from err
            count += 1
            yield _as_hwc(frame)

    def close(self):
        """Stop the decoder (for ffmpeg, its subprocess). Safe to call twice."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        self.close()
        return False


def open_video(path):
    """Open `path` for streaming; see `VideoSource`. UserError if missing, unreadable or empty."""
    return VideoSource(path)


def iter_driving_frames(path, frame_shape, max_frames=None):
    """Preprocessed driving frames (float32 [H, W, 3]), streamed, at most `max_frames`.

    The video is opened before this returns, so a bad path fails here rather
    than at the first `next()`; it is closed when the iteration ends.
    """
    video = open_video(path)
    return _preprocessed_frames(video, frame_shape, max_frames)


def _preprocessed_frames(video, frame_shape, max_frames):
    with video:
        for frame in itertools.islice(video, max_frames):
            yield preprocess_frame(frame, frame_shape)


def _as_hwc(frame):
    frame = np.asarray(frame)
    return frame[..., np.newaxis] if frame.ndim == 2 else frame


def _frames_per_second(meta):
    """Frame rate from imageio metadata: ffmpeg states `fps`; GIFs state `duration` in ms per frame."""
    if "fps" in meta:
        # ffmpeg's `duration` is the whole video's, in seconds: never read it as a frame duration.
        return float(meta["fps"]) if _is_positive(meta["fps"]) else DEFAULT_FPS
    duration_ms = meta.get("duration")
    return 1000.0 / duration_ms if _is_positive(duration_ms) else DEFAULT_FPS


def _is_positive(value):
    """A finite number above zero (numpy scalars included)."""
    return isinstance(value, numbers.Real) and math.isfinite(value) and value > 0


def _estimate_frame_count(reader, meta, fps):
    """Approximate number of frames, for progress bars only; None when unknown.

    Frame-based readers (GIF) know their length; ffmpeg reports infinity and a
    duration in seconds instead. Reading never stops at this count.
    """
    length = reader.get_length()
    if math.isfinite(length):
        return int(length)
    seconds = meta.get("duration")
    if _is_positive(seconds):
        return max(1, round(seconds * fps))
    return None


def _describe_video_error(err):
    """A one-line reason for a failed open; imageio's ffmpeg errors embed ffmpeg's whole log."""
    text = str(err)
    if "Input #0" in text and "Video:" not in text:
        return "no video stream"
    return _describe_decode_error(err)


def _describe_decode_error(err):
    """imageio's reason in the user's terms: its plugin search ("no backend ... iomode") is internal."""
    if "Could not find a backend" in str(err):
        return "unrecognised or damaged file"
    return _first_line(err)


# ----------------------------------------------------------------------------
# 5. Writing video, GIF or PNG frames atomically
# ----------------------------------------------------------------------------

MP4_QUALITY = 8  # imageio-ffmpeg's 0..10 scale; 8 is libx264 crf 10, visually lossless
# Extensions whose container ffmpeg infers and which hold H.264; other names get an mp4 container.
H264_CONTAINERS = (".mp4", ".m4v", ".mov", ".mkv", ".avi")
FRAME_NAME = "frame_{:05d}.png"
_FRAME_NAME_PATTERN = re.compile(r"frame_\d{5,}\.png")


class FrameWriter:
    """Streams uint8 RGB frames to a video, a GIF or a folder of PNGs, atomically.

    The kind of output follows `output_path`:
      * ends in '/' or is an existing directory -> lossless `frame_00000.png`,
        `frame_00001.png`, ... in the order written;
      * ends in '.gif' -> an animated GIF looping forever, frame duration 1000/fps ms
        (imageio's Pillow writer holds GIF frames until the end; prefer mp4 or
        PNG for long videos);
      * anything else -> H.264 yuv420p via imageio-ffmpeg at `fps`
        (container from the extension, mp4 when ffmpeg cannot infer one).
        No resizing to macroblock multiples: yuv420p only needs even sides, so
        an odd width or height is padded by one replicated edge pixel.

    Frames go to a temporary name beside the destination, which is moved into
    place only when the `with` block ends cleanly; if it raises, the temporary
    is deleted and `output_path` is left as it was. With `audio_from` (a video
    path), its first audio track, if any, is copied into a video output.
    """

    def __init__(self, output_path, fps, audio_from=None):
        if not _is_positive(fps):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        output_path = str(output_path)
        self.fps = float(fps)
        self.audio_from = audio_from
        self.frames_written = 0
        self._frame_size = None
        if output_path.endswith(("/", os.sep)) or os.path.isdir(output_path):
            self.path = os.path.normpath(output_path)
            self._check_replaceable_folder()
            self._sink = _PngFolderSink(_make_temp(self.path, is_dir=True))
        else:
            self.path = output_path
            _make_parent(self.path)
            extension = os.path.splitext(self.path)[1].lower()
            temp = _make_temp(self.path, is_dir=False)
            if extension == ".gif":
                self._sink = _GifSink(temp, self.fps)
            else:
                self._sink = _VideoSink(temp, self.fps, infer_container=extension in H264_CONTAINERS)
        if audio_from is not None and not isinstance(self._sink, _VideoSink):
            warnings.warn(f"{self.path}: GIF and PNG outputs carry no audio; not copying it")
            self.audio_from = None

    def _check_replaceable_folder(self):
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise UserError(f"{self.path}: exists and is not a directory")
        _check_only_frames(self.path)
        _make_parent(self.path)

    def write(self, frame):
        """Append one frame: uint8 [H, W, 3], the same size every time."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
        if self._frame_size is None:
            self._frame_size = frame.shape
        elif frame.shape != self._frame_size:
            raise ValueError(f"frame {self.frames_written} is {frame.shape}, earlier ones {self._frame_size}")
        try:
            self._sink.write(frame)
        except OSError as err:
            raise UserError(f"{self.path}: cannot write frame {self.frames_written} ({_os_reason(err)})") from err
        self.frames_written += 1

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self._commit()
        else:
            self._sink.discard()
        return False

    def _commit(self):
        if self.frames_written == 0:
            self._sink.discard()
            raise UserError(f"{self.path}: no frames to write")
        try:
            self._sink.finish()
            if self.audio_from is not None:
                self._sink.add_audio(self.audio_from, self.frames_written / self.fps)
            self._sink.move_to(self.path)
        except OSError as err:
            self._sink.discard()
            raise UserError(f"{self.path}: cannot write output ({_os_reason(err)})") from err
        except BaseException:
            self._sink.discard()
            raise


class _PngFolderSink:
    """Lossless frames in a temporary folder, swapped in for the destination at the end."""

    def __init__(self, temp_dir):
        self.temp = temp_dir
        self._index = 0

    def write(self, frame):
        # Pillow itself rather than imageio: imageio makes a plugin object per file, and Ctrl-C
        # landing while one is half made has its __del__ print an "Exception ignored" traceback.
        Image.fromarray(frame).save(os.path.join(self.temp, FRAME_NAME.format(self._index)), format="PNG")
        self._index += 1

    def finish(self):
        pass

    def move_to(self, path):
        if not os.path.exists(path):
            os.rename(self.temp, path)
            return
        _check_only_frames(path)  # again: files may have appeared while rendering
        # A folder cannot be atomically replaced by another one, so the old one
        # (checked to hold only earlier frames) is renamed aside first and
        # deleted once the new frames are in place.
        old = _make_temp(path, is_dir=True)
        os.rmdir(old)
        os.rename(path, old)
        os.rename(self.temp, path)
        shutil.rmtree(old)

    def discard(self):
        shutil.rmtree(self.temp, ignore_errors=True)


def _check_only_frames(folder):
    """Refuse to replace a folder holding anything but the frames of an earlier run."""
    if not os.path.isdir(folder):
        return
    foreign = sorted(name for name in os.listdir(folder) if not _FRAME_NAME_PATTERN.fullmatch(name))
    if foreign:
        raise UserError(f"{folder}: directory holds files other than frame_NNNNN.png "
                        f"(e.g. {foreign[0]}); refusing to replace it")


class _FileSink:
    """A sink writing one temporary file that is renamed over the destination at the end."""

    def __init__(self, temp):
        self.temp = temp

    def move_to(self, path):
        if not os.path.isfile(self.temp) or os.path.getsize(self.temp) == 0:
            raise OSError("the encoder produced no data")
        os.replace(self.temp, path)

    def discard(self):
        self.finish_quietly()
        if os.path.exists(self.temp):
            os.remove(self.temp)

    def finish_quietly(self):
        """Release the encoder without caring whether its output is usable."""


class _GifSink(_FileSink):
    def __init__(self, temp, fps):
        super().__init__(temp)
        self._duration_ms = 1000.0 / fps
        self._file = imageio_v3.imopen(temp, "w", plugin="pillow")

    def write(self, frame):
        self._file.write(frame, duration=self._duration_ms, loop=0, is_batch=False)

    def finish(self):
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def finish_quietly(self):
        # imageio's Pillow plugin buffers frames and encodes them all on close
        # (also from __del__); emptying its buffer first skips that work.
        if self._file is not None:
            self._file.images_to_write.clear()
        self.finish()


class _VideoSink(_FileSink):
    """H.264 through an ffmpeg subprocess fed raw RGB frames."""

    def __init__(self, temp, fps, infer_container):
        super().__init__(temp)
        self._fps = fps
        self._output_params = [] if infer_container else ["-f", "mp4"]
        self._encoder = None

    def write(self, frame):
        frame = _pad_to_even(frame)
        if self._encoder is None:
            height, width = frame.shape[:2]
            self._encoder = imageio_ffmpeg.write_frames(
                self.temp, (width, height), fps=self._fps, quality=MP4_QUALITY,
                codec="libx264", pix_fmt_out="yuv420p", macro_block_size=1,
                output_params=self._output_params)
            self._encoder.send(None)  # start ffmpeg
        self._encoder.send(np.ascontiguousarray(frame).tobytes())

    def finish(self):
        encoder, self._encoder = self._encoder, None
        if encoder is not None:
            encoder.close()  # waits for ffmpeg to flush and exit

    def finish_quietly(self):
        self.finish()

    def add_audio(self, audio_from, seconds):
        """Copy the first audio track of `audio_from`, if it has one, into the finished video.

        Both streams are copied without re-encoding, cut to the video's length
        (`--frames` may shorten it). If ffmpeg fails (e.g. the codec does not
        fit the container), the video is kept silent with a warning, as the
        original demo.py does.
        """
        root, extension = os.path.splitext(self.temp)
        muxed = f"{root}.audio{extension}"
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error",
                   "-i", self.temp, "-i", str(audio_from),
                   "-map", "0:v:0", "-map", "1:a:0?", "-c", "copy", "-t", f"{seconds:.6f}",
                   *self._output_params, muxed]
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            if os.path.exists(muxed):
                os.remove(muxed)
            warnings.warn(f"{audio_from}: audio not copied ({_first_line(result.stderr or 'ffmpeg failed')})")
            return
        os.replace(muxed, self.temp)


def _pad_to_even(frame):
    """Pad odd heights/widths by one replicated edge pixel: yuv420p needs even sides."""
    height, width = frame.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return frame
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def _make_parent(path):
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise UserError(f"{path}: cannot create the folder {parent} ({_os_reason(err)})") from err


def _make_temp(path, is_dir):
    """A new, uniquely named file or folder beside `path`, with normal permissions.

    Its name is `<name>.tmp<random><extension>`: beside the destination so the
    final rename stays on one filesystem (atomic), and keeping the extension so
    ffmpeg and Pillow pick the right format.
    """
    parent, name = os.path.split(os.path.abspath(path))
    extension = "" if is_dir else os.path.splitext(name)[1]
    try:
        if is_dir:
            temp = tempfile.mkdtemp(prefix=f"{name}.tmp", dir=parent)
        else:
            handle, temp = tempfile.mkstemp(prefix=f"{name}.tmp", suffix=extension, dir=parent)
            os.close(handle)
    except OSError as err:
        raise UserError(f"{path}: cannot write there ({_os_reason(err)})") from err
    # mkstemp/mkdtemp create private (0600/0700) entries; the result should
    # have the permissions any other new file gets.
    os.chmod(temp, (0o777 if is_dir else 0o666) & ~_current_umask())
    return temp


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------
# 6. Output naming
# ----------------------------------------------------------------------------

DEFAULT_OUTPUT = os.path.join("output", "result")


def output_path(output, source_image, driving_video, mode, dontappend):
    """The path run.py writes to, from `--output` (default `output/result`).

    Rules, in order:
      * a name ending in '/' or naming an existing directory is a folder of PNG
        frames and is returned with a trailing '/';
      * a name with an extension (`.mp4`, `.gif`, ...) is used as given;
      * a name without one gets `_<mode>.mp4` appended (`output/result` ->
        `output/result_animate.mp4`), unless `dontappend`, in which case it is
        used as given and written as mp4.
    Writing over `source_image` or `driving_video` is refused with UserError,
    since the render would destroy its own input.
    """
    output = str(output) if output else DEFAULT_OUTPUT
    if output.endswith(("/", os.sep)) or os.path.isdir(output):
        path = output.rstrip("/" + os.sep) + "/"
    elif os.path.splitext(output)[1] or dontappend:
        path = output
    else:
        path = f"{output}_{mode}.mp4"
    for role, input_path in (("source image", source_image), ("driving video", driving_video)):
        if input_path is not None and _same_path(path, input_path):
            raise UserError(f"{path}: output would overwrite the {role}")
    return path


def _same_path(first, second):
    return os.path.realpath(first.rstrip("/" + os.sep) or "/") == os.path.realpath(str(second))


# ----------------------------------------------------------------------------
# 7. Exported models: layout, loading per target, TF Lite and ONNX op lists
# ----------------------------------------------------------------------------

EXPORT_MODULES = ("kp_detector", "process_kp_driving", "generator")
# Optional exports beside them: the generator split into its once-per-video source side and the rest.
CACHED_EXPORT_MODULES = ("source_encoder", "generator_cached")
SIGNATURE_KEY = "serving_default"
SIGNATURE_JSON = "signature.json"  # name of the signature description inside SavedModel and TF.js folders
ONNX_INSTALL = "pip install -r requirements-onnx.txt"  # tf2onnx and onnxruntime are optional extras


def export_model_name(model, config=None):
    """The <model> of the export paths: the config file's stem minus '-256' when a config path is given."""
    if config is None:
        return model
    stem = os.path.splitext(os.path.basename(str(config)))[0]
    return stem[:-len("-256")] if stem.endswith("-256") else stem


def savedmodel_path(root, model, module):
    """saved_models/<model>/<module>/ under the export root."""
    return os.path.join(root, "saved_models", model, module)


def tflite_path(root, model, module, float16=False, int8=False):
    """tflite/<model>/<module>.tflite, or <module>-float16.tflite / <module>-int8.tflite, under the export root."""
    suffix = "-float16" if float16 else "-int8" if int8 else ""
    return os.path.join(root, "tflite", model, f"{module}{suffix}.tflite")


def onnx_path(root, model, module):
    """onnx/<model>/<module>.onnx under the export root."""
    return os.path.join(root, "onnx", model, f"{module}.onnx")


def tfjs_path(root, model, module):
    """js/<model>/<module>/ (model.json, weight shards, signature.json) under the export root."""
    return os.path.join(root, "js", model, module)


def signature_json_path(target, path):
    """Where build.py describes the export at `path`: inputs, outputs (in order) and build options."""
    if target in ("tflite", "onnx"):
        return os.path.splitext(path)[0] + ".json"
    if target == "savedmodel":
        # assets.extra/ is the SavedModel folder for files TensorFlow itself ignores.
        return os.path.join(path, "assets.extra", SIGNATURE_JSON)
    return os.path.join(path, SIGNATURE_JSON)


def read_signature_json(target, path):
    """The signature description build.py wrote beside an export; UserError if absent or unreadable."""
    json_path = signature_json_path(target, path)
    try:
        with open(json_path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{json_path}: missing (the export at {path} was not made by build.py)") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{json_path}: unreadable ({_first_line(err)})") from err


def tflite_interpreter(path=None, model_content=None):
    """A TF Lite interpreter on all cores: LiteRT's (ai_edge_litert), else TensorFlow's tf.lite.Interpreter."""
    import backends

    interpreter_class = backends.tflite_interpreter_class()
    with backends.native_output_hidden():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        return interpreter_class(model_path=path, model_content=model_content, num_threads=os.cpu_count())


def savedmodel_function(path):
    """Run a SavedModel's serving_default with numpy keyword inputs; returns {output name: numpy}."""
    import backends

    tf = backends.tensorflow()

    loaded = tf.saved_model.load(path)
    function = loaded.signatures[SIGNATURE_KEY]

    def call(**inputs):
        outputs = function(**{name: tf.constant(value, tf.float32) for name, value in inputs.items()})
        return {name: value.numpy() for name, value in outputs.items()}

    call.saved_model = loaded  # the signature holds the loaded variables only weakly: keep them alive
    return call


def tflite_function(path):
    """Run a .tflite file's serving_default signature with numpy keyword inputs (any batch size)."""
    import backends

    runner = tflite_interpreter(path).get_signature_runner(SIGNATURE_KEY)
    shapes_seen = set()

    def call(**inputs):
        # The signature runner resizes every input to the given arrays, so a dynamic batch just works.
        inputs = {name: np.asarray(value, np.float32) for name, value in inputs.items()}
        shapes = tuple(sorted((name, value.shape) for name, value in inputs.items()))
        # LiteRT applies its XNNPACK delegate, and announces it on stderr, at the first call per input shape.
        quiet = backends.native_output_hidden() if shapes not in shapes_seen else contextlib.nullcontext()
        with quiet:
            outputs = runner(**inputs)
        shapes_seen.add(shapes)
        return {name: np.array(value) for name, value in outputs.items()}

    return call


def onnx_session(path):
    """An onnxruntime session on the CPU with one intra-op thread per core; UserError without onnxruntime."""
    try:
        import onnxruntime
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
    except ImportError:
        raise UserError(f"--target onnx needs onnxruntime: {ONNX_INSTALL}") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
    # onnxruntime's load errors derive from Exception directly, so they are named one by one.
    load_errors = (ort_errors.Fail, ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.InvalidArgument,
                   ort_errors.NoSuchFile, ort_errors.NotImplemented)
    try:
        return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except load_errors as err:
        raise UserError(f"{path}: onnxruntime cannot load it ({_first_line(err)})") from err


def onnx_function(path):
    """Run an .onnx file with numpy keyword inputs (any batch size); returns {output name: numpy}."""
    session = onnx_session(path)
    output_names = [output.name for output in session.get_outputs()]

    def call(**inputs):
        outputs = session.run(output_names, {name: np.asarray(value, np.float32) for name, value in inputs.items()})
        return dict(zip(output_names, outputs))

    return call

# LiteRT 2.3's XNNPACK delegate returns wrong generator_cached outputs (max abs 0.8) from the second call
# with new keypoints on, in a process where TensorFlow has run (the first call is right; so is every call
# without XNNPACK, but 3x slower; the plain generator is right). build.py converts these to SavedModel,
# TF.js and ONNX (onnxruntime runs them right) but not TF Lite, and find_exports ignores .tflite files of
# them from older builds, so the tflite target runs the plain generator.
NO_TFLITE_MODULES = ("source_encoder", "generator_cached")


class ExportMissing(UserError):
    """An export that run.py needs is not on disk; `path` names it."""

    def __init__(self, path):
        super().__init__(f"{path}: no such export")
        self.path = path


def find_exports(target, root, model, float16=False, int8=False):
    """{module: (path, signature description)} of the exports of `model` under `root`.

    `target` is 'savedmodel', 'tflite' (float16 / int8 pick those files) or 'onnx'. Nothing is
    loaded yet, so a caller can check the build options first. Raises ExportMissing for the first
    absent EXPORT_MODULES export; CACHED_EXPORT_MODULES are included when present, except for TF Lite:
    LiteRT's XNNPACK delegate gives wrong generator_cached frames (see NO_TFLITE_MODULES),
    so stale .tflite files of the pair from older builds are never used.
    """
    exports = {}
    cached_modules = tuple(m for m in CACHED_EXPORT_MODULES if target != "tflite" or m not in NO_TFLITE_MODULES)
    for module in EXPORT_MODULES + cached_modules:
        path = _export_file(target, root, model, module, float16, int8)
        present = os.path.isfile(os.path.join(path, "saved_model.pb") if target == "savedmodel" else path)
        if present:
            exports[module] = (path, read_signature_json(target, path))
        elif module in EXPORT_MODULES:
            raise ExportMissing(path)
    return exports


def _export_file(target, root, model, module, float16, int8):
    if target == "savedmodel":
        return savedmodel_path(root, model, module)
    if target == "onnx":
        return onnx_path(root, model, module)
    return tflite_path(root, model, module, float16, int8)


def load_export(target, path):
    """A callable over numpy keyword inputs for the savedmodel, tflite or onnx export at `path`."""
    loaders = {"savedmodel": savedmodel_function, "tflite": tflite_function, "onnx": onnx_function}
    return loaders[target](path)


def tflite_ops(path):
    """Sorted names of the operators a .tflite file runs (builtins as CONV_2D; custom ops by custom code).

    Read from the flatbuffer with the schema bindings TensorFlow ships, counting only operators
    that appear in a subgraph.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    with open(path, "rb") as f:
        model = schema.Model.GetRootAs(f.read(), 0)
    builtin_names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    ops = set()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            code = model.OperatorCodes(subgraph.Operators(o).OpcodeIndex())
            # Builtin codes above 127 live in BuiltinCode; older files only fill DeprecatedBuiltinCode.
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            if builtin == schema.BuiltinOperator.CUSTOM:
                ops.add(code.CustomCode().decode())
            else:
                ops.add(builtin_names[builtin])
    return sorted(ops)


def onnx_ops(path):
    """Sorted op types an .onnx file runs, those inside control-flow subgraphs included.

    Ops outside the standard ONNX domain are named domain:op_type, so they stand out.
    """
    import onnx

    def graph_ops(graph):
        for node in graph.node:
            yield node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"
            for attribute in node.attribute:  # the bodies of Loop / If / Scan
                subgraphs = list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else [])
                for subgraph in subgraphs:
                    yield from graph_ops(subgraph)

    return sorted(set(graph_ops(onnx.load(path, load_external_data=False).graph)))


# ----------------------------------------------------------------------------
# 8. Clips: a video as the model takes it, from a file, a frame folder or a strip
# ----------------------------------------------------------------------------

# FramesDataset's layouts: a video file, a folder of frame images, or one image of frames side by side.
DATASET_VIDEO_EXTENSIONS = (".mp4", ".gif", ".mov")
DATASET_STRIP_EXTENSIONS = (".png", ".jpg")


class Clip:
    """A video as float32 [H, W, 3] frames in [0, 1], decoded as a stream.

    `path` is the file or folder, `fps` the frame rate the output keeps,
    `frame_count` an estimate for progress bars (None when unknown) and
    `media_path` the file whose audio track `--audio` copies (None for folders
    and strips). Iterating again starts from the first frame, so a clip can be
    read twice (the best-frame search does) without holding it in memory.
    """

    def __init__(self, path, fps, frame_count, read_frames, media_path=None, close=None, size=None):
        self.path = str(path)
        self.size = size  # (width, height) of the frames as stored, when known before decoding them
        self.fps = fps
        self.frame_count = frame_count
        self.media_path = media_path
        self._read_frames = read_frames
        self._close = close

    def __iter__(self):
        return self._read_frames()

    def close(self):
        if self._close is not None:
            self._close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        self.close()
        return False


def open_driving_clip(path, frame_shape):
    """A driving video file preprocessed as the original demo.py does (`preprocess_frame`)."""
    return _video_clip(path, lambda frame: preprocess_frame(frame, frame_shape))


def open_dataset_clip(path, frame_shape):
    """One video of a dataset in any of the original FramesDataset's layouts.

    A folder holds one image per frame, in sorted name order; a `.png`/`.jpg`
    is a strip of frames side by side, each `frame_shape` wide; `.mp4`, `.gif`
    and `.mov` are video files. Frames of `frame_shape` size are converted
    exactly as FramesDataset does (`img_as_float32`); other sizes are resized
    as demo.py does, where FramesDataset would feed them to the model unresized.
    """
    path = str(path)
    lower = path.lower()
    if os.path.isdir(path):
        return _folder_clip(path, frame_shape)
    if lower.endswith(DATASET_STRIP_EXTENSIONS):
        return _strip_clip(path, frame_shape)
    if lower.endswith(DATASET_VIDEO_EXTENSIONS):
        return _video_clip(path, lambda frame: dataset_frame(frame, frame_shape))
    raise UserError(f"{path}: not a dataset video (expected a folder of frames, "
                    f"{', '.join(DATASET_VIDEO_EXTENSIONS + DATASET_STRIP_EXTENSIONS)})")


def dataset_frame(frame, frame_shape):
    """A decoded dataset frame as float32 [H, W, 3] in [0, 1] (see `open_dataset_clip`)."""
    frame = _as_hwc(frame)
    if frame.shape[:2] != tuple(frame_shape[:2]):
        return preprocess_frame(frame, frame_shape)
    # img_as_float32 rather than a same-size resize, which is one float32 ulp off FramesDataset.
    return _to_rgb(img_as_float32(frame))


def _video_clip(path, convert):
    video = open_video(path)

    def read_frames():
        return (convert(frame) for frame in video)

    return Clip(path, video.fps, video.frame_count, read_frames, media_path=path, close=video.close, size=video.size)


def _folder_clip(path, frame_shape):
    # Hidden files (.DS_Store and the like) are not frames.
    names = sorted(name for name in os.listdir(path) if not name.startswith("."))
    if not names:
        raise UserError(f"{path}: the folder holds no frames")
    files = [os.path.join(path, name) for name in names]

    def read_frames():
        return (dataset_frame(_decode_image(file), frame_shape) for file in files)

    return Clip(path, DEFAULT_FPS, len(files), read_frames)


def _strip_clip(path, frame_shape):
    frames = split_strip(_decode_image(path), frame_shape, path)
    return Clip(path, DEFAULT_FPS, len(frames), lambda: (dataset_frame(f, frame_shape) for f in frames))


def split_strip(image, frame_shape, path="strip"):
    """[H, T*W, C] frames side by side -> list of T [H, W, C] frames, W from frame_shape's aspect ratio.

    FramesDataset reshapes the strip with frame_shape, which is only right for
    square frames; this splits it into frame-wide columns instead.
    """
    image = _as_hwc(image)
    height, width = image.shape[:2]
    frame_width = round(height * frame_shape[1] / frame_shape[0])
    if frame_width < 1 or width % frame_width:
        raise UserError(f"{path}: a {width}x{height} strip does not split into frames of "
                        f"{frame_shape[1]}x{frame_shape[0]} proportions")
    return [image[:, left:left + frame_width] for left in range(0, width, frame_width)]


# ----------------------------------------------------------------------------
# 9. Datasets: the original FramesDataset's test split and PairedDataset's pairs
# ----------------------------------------------------------------------------

TEST_SIZE = 0.2  # FramesDataset's train_test_split(test_size=0.2, random_state=0) without a train/ folder


def dataset_test_videos(root_dir):
    """Paths of the videos in the test split of the dataset at `root_dir`.

    As the original FramesDataset: `root_dir/test/` when `root_dir/train/`
    exists, else a random 20% of `root_dir` chosen exactly as scikit-learn's
    `train_test_split(names, test_size=0.2, random_state=0)`. Names are sorted
    first: the original lists them in the file system's arbitrary order, which
    makes its split differ between machines.
    """
    root_dir = str(root_dir)
    if not os.path.isdir(root_dir):
        raise UserError(f"{root_dir}: no such dataset folder (set dataset_params.root_dir or pass --root_dir)")
    if os.path.isdir(os.path.join(root_dir, "train")):
        test_dir = os.path.join(root_dir, "test")
        if not os.path.isdir(test_dir):
            raise UserError(f"{root_dir}: has train/ but no test/ folder")
        names = _dataset_entries(test_dir)
        if not names:
            raise UserError(f"{test_dir}: no videos in the test split")
        return [os.path.join(test_dir, name) for name in names]
    return [os.path.join(root_dir, name) for name in random_test_split(_dataset_entries(root_dir), root_dir)]


def _dataset_entries(folder):
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def random_test_split(names, where="dataset"):
    """The test part of scikit-learn's `train_test_split(names, test_size=0.2, random_state=0)`.

    ShuffleSplit draws one permutation from `RandomState(0)` and takes its first
    ceil(0.2 * n) indices as the test set, in permutation order.
    """
    count = len(names)
    test_count = math.ceil(TEST_SIZE * count)
    if count - test_count < 1:
        raise UserError(f"{where}: {count} video(s) are too few for a random train/test split; "
                        f"put the test videos in test/ and the others in train/")
    permutation = np.random.RandomState(0).permutation(count)
    return [names[i] for i in permutation[:test_count]]


def animation_pairs(names, num_pairs, pairs_list=None):
    """(driving, source) name pairs for dataset animation, as the original PairedDataset picks them.

    With a pairs list (a CSV with `source` and `driving` columns, like the
    original's data/vox256.csv), its first `num_pairs` rows whose two videos
    are both in `names`. Without one, `num_pairs` distinct (driving, source)
    index pairs drawn with `np.random.seed(0)` from the first
    min(num_pairs, len(names)) videos (a video may drive itself).
    """
    if pairs_list is not None:
        return _listed_pairs(names, num_pairs, pairs_list)
    side = min(num_pairs, len(names))
    grid = np.mgrid[:side, :side].reshape(2, -1).T  # [side * side, 2]: (driving, source) indices
    count = min(len(grid), num_pairs)
    chosen = grid.take(np.random.RandomState(0).choice(len(grid), count, replace=False), axis=0)
    return [(names[driving], names[source]) for driving, source in chosen]


def _listed_pairs(names, num_pairs, pairs_list):
    known = set(names)
    try:
        with open(pairs_list, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{pairs_list}: cannot read the pairs list ({_first_line(err)})") from err
    if rows and not {"source", "driving"} <= set(rows[0]):
        raise UserError(f"{pairs_list}: a pairs list needs 'source' and 'driving' columns")
    pairs = [(row["driving"], row["source"]) for row in rows if row["driving"] in known and row["source"] in known]
    return pairs[:num_pairs]


def write_csv_atomically(path, rows):
    """Write rows (lists of cells) as CSV under a temporary name, then rename it into place."""
    _make_parent(path)
    temp = _make_temp(path, is_dir=False)
    try:
        with open(temp, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)
        os.replace(temp, path)
    except OSError as err:
        if os.path.exists(temp):
            os.remove(temp)
        raise UserError(f"{path}: cannot write ({_first_line(err)})") from err


# ----------------------------------------------------------------------------
# 10. Audio tracks
# ----------------------------------------------------------------------------

def audio_stream(path):
    """The line ffmpeg prints for the first audio stream of a media file, or None when it has none."""
    # `ffmpeg -i` alone describes the input on stderr and exits with an error for want of an output.
    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
    for line in result.stderr.splitlines():
        if line.strip().startswith("Stream #") and "Audio:" in line:
            return line.strip()
    return None


# ----------------------------------------------------------------------------
# 11. Visualizer: the original logger.Visualizer's row of panels per frame
# ----------------------------------------------------------------------------

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
    def from_config(cls, config):
        """A Visualizer with the config's `visualizer_params` (the original's defaults where absent)."""
        params = config.get("visualizer_params") or {}
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
        return to_uint8(np.concatenate(panels, axis=1))
