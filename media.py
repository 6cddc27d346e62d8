"""Media in and out: images, videos streamed in, frames written out atomically (mp4, GIF, PNG folder),
clips (a video as the model takes it: file, frame folder or strip) and audio tracks.

Preprocessing is the original demo.py's. Everything a user can get wrong is raised as utils.UserError
whose message starts with the offending path.
"""
import contextlib
import math
import numbers
import os
import re
import shutil
import subprocess
import warnings

import imageio.v2 as imageio_v2
import imageio.v3 as imageio_v3
import imageio_ffmpeg
import numpy as np
from PIL import Image
from skimage import img_as_float, img_as_float32, img_as_ubyte

import resize
import utils


# ----------------------------------------------------------------------------
# 1. Images and frames
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
    utils.require_file(path, "an image")
    return preprocess_frame(decode_image(path), frame_shape)


def decode_image(path):
    """The first image in `path` as imageio returns it (any dtype, 2-D or HxWxC)."""
    try:
        with imageio_quiet():
            image = imageio_v2.imread(path)
        if image.ndim == 3 and image.shape[-1] == 4 and _is_cmyk(path):
            # Pillow hands CMYK JPEGs over as raw ink channels; `[..., :3]`
            # would then show C, M, Y as R, G, B. Let Pillow convert instead.
            image = imageio_v3.imread(path, index=0, mode="RGB")
    # imageio's plugins report undecodable input with many unrelated exception
    # types (ValueError, OSError, SyntaxError, struct.error, ...); this wraps
    # only the decode call, so nothing else is hidden.
    except Exception as err:
        raise utils.UserError(f"{path}: not a readable image ({describe_decode_error(err)})") from err
    return np.asarray(image)


@contextlib.contextmanager
def imageio_quiet():
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


# skimage's resize to the size a frame already has is its img_as_float, bit for bit, for these dtypes (the
# interpolation weights are exactly 0 and 1; tests/test_utils.py checks it): a frame of the model's size
# skips it.
SAME_SIZE_DTYPES = (np.uint8, np.uint16, np.float32, np.float64)


def preprocess_frame(frame, frame_shape):
    """Resize one decoded image or video frame to float32 [H, W, 3] in [0, 1].

    Resizing is skimage's `resize` with its defaults, exactly as demo.py does
    (for 8- and 16-bit pictures, resize.py's NumPy copy of it, to the bit); it
    also maps uint8 and uint16 to [0, 1]. Channels are fixed up after the
    resize: skimage resizes each channel independently, so for RGB and RGBA
    this is the original's `[..., :3]`, and for the rest (grayscale, gray+alpha)
    it equals resizing the RGB version of the image.
    """
    frame = np.asarray(frame)
    if frame.dtype == bool:
        # 1-bit images: skimage refuses to interpolate bool data.
        frame = frame.astype(np.float64)
    height, width = (int(size) for size in frame_shape[:2])
    if frame.shape[:2] == (height, width) and frame.dtype in SAME_SIZE_DTYPES:
        resized = img_as_float(frame)
    elif resize.handles(frame):  # 8- and 16-bit pictures: skimage's resize, bit for bit, without scipy
        resized = resize.resize(frame, height, width)
    else:
        from skimage.transform import resize as skimage_resize  # imports scipy.ndimage: 0.3-0.45 s
        resized = skimage_resize(frame, (height, width))
    return to_rgb(resized).astype(np.float32)


def to_rgb(image):
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
# 2. Reading video as a stream
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
        utils.require_file(self.path, "a video")
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
            with imageio_quiet():
                self._reader = imageio_v2.get_reader(self.path)
        # As for images: imageio and its ffmpeg plugin signal unreadable input
        # with assorted exception types, and this wraps only the open call.
        except Exception as err:
            raise utils.UserError(f"{self.path}: not a readable video ({_describe_video_error(err)})") from err
        self._frames = iter(self._reader)
        try:
            self._first = as_hwc(next(self._frames))
        except StopIteration:
            self.close()
            raise utils.UserError(f"{self.path}: the video has no frames") from None
        except (OSError, RuntimeError, ValueError) as err:
            self.close()
            raise utils.UserError(f"{self.path}: cannot decode the first frame ({utils.first_line(err)})") from err

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
                warnings.warn(f"{self.path}: stopped after {count} frames ({utils.first_line(err)})")
                return
            except OSError as err:
                raise utils.UserError(f"{self.path}: cannot decode frame {count} ({utils.first_line(err)})") from err
            count += 1
            yield as_hwc(frame)

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


def as_hwc(frame):
    frame = np.asarray(frame)
    return frame[..., np.newaxis] if frame.ndim == 2 else frame


def _frames_per_second(meta):
    """Frame rate from imageio metadata: ffmpeg states `fps`; GIFs state `duration` in ms per frame."""
    if "fps" in meta:
        # ffmpeg's `duration` is the whole video's, in seconds: never read it as a frame duration.
        return float(meta["fps"]) if is_positive(meta["fps"]) else DEFAULT_FPS
    duration_ms = meta.get("duration")
    return 1000.0 / duration_ms if is_positive(duration_ms) else DEFAULT_FPS


def is_positive(value):
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
    if is_positive(seconds):
        return max(1, round(seconds * fps))
    return None


def _describe_video_error(err):
    """A one-line reason for a failed open; imageio's ffmpeg errors embed ffmpeg's whole log."""
    text = str(err)
    if "Input #0" in text and "Video:" not in text:
        return "no video stream"
    return describe_decode_error(err)


def describe_decode_error(err):
    """imageio's reason in the user's terms: its plugin search ("no backend ... iomode") is internal."""
    if "Could not find a backend" in str(err):
        return "unrecognised or damaged file"
    return utils.first_line(err)



# ----------------------------------------------------------------------------
# 3. Writing video, GIF or PNG frames atomically
# ----------------------------------------------------------------------------

MP4_QUALITY = 8  # imageio-ffmpeg's 0..10 scale; 8 is libx264 crf 10, visually lossless

# Extensions whose container ffmpeg infers and which hold H.264; other names get an mp4 container.
H264_CONTAINERS = (".mp4", ".m4v", ".mov", ".mkv", ".avi")
VIDEO_OUTPUT_EXTENSIONS = H264_CONTAINERS + (".gif",)  # what FrameWriter writes as one video file
# Names of video files (read by ffmpeg); a one-frame file with another name is a still image.
VIDEO_EXTENSIONS = VIDEO_OUTPUT_EXTENSIONS + (".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts")

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
        if not is_positive(fps):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        output_path = str(output_path)
        self.fps = float(fps)
        self.audio_from = audio_from
        self.frames_written = 0
        self._frame_size = None
        if output_path.endswith(("/", os.sep)) or os.path.isdir(output_path):
            self.path = os.path.normpath(output_path)
            self._check_replaceable_folder()
            self._sink = _PngFolderSink(utils.make_temp(self.path, is_dir=True))
        else:
            self.path = output_path
            utils.make_parent(self.path)
            extension = os.path.splitext(self.path)[1].lower()
            temp = utils.make_temp(self.path, is_dir=False)
            if extension == ".gif":
                self._sink = _GifSink(temp, self.fps)
            else:
                self._sink = _VideoSink(temp, self.fps, infer_container=extension in H264_CONTAINERS)
        if audio_from is not None and not isinstance(self._sink, _VideoSink):
            warnings.warn(f"{self.path}: GIF and PNG outputs carry no audio; not copying it")
            self.audio_from = None

    def _check_replaceable_folder(self):
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise utils.UserError(f"{self.path}: exists and is not a directory")
        _check_only_frames(self.path)
        utils.make_parent(self.path)

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
            raise utils.UserError(f"{self.path}: cannot write frame {self.frames_written} ({utils.os_reason(err)})") from err
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
            raise utils.UserError(f"{self.path}: no frames to write")
        try:
            self._sink.finish()
            if self.audio_from is not None:
                self._sink.add_audio(self.audio_from, self.frames_written / self.fps)
            self._sink.move_to(self.path)
        except OSError as err:
            self._sink.discard()
            raise utils.UserError(f"{self.path}: cannot write output ({utils.os_reason(err)})") from err
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
        utils.swap_in_dir(self.temp, path)

    def discard(self):
        shutil.rmtree(self.temp, ignore_errors=True)


def _check_only_frames(folder):
    """Refuse to replace a folder holding anything but the frames of an earlier run."""
    if not os.path.isdir(folder):
        return
    foreign = sorted(name for name in os.listdir(folder) if not _FRAME_NAME_PATTERN.fullmatch(name))
    if foreign:
        raise utils.UserError(f"{folder}: directory holds files other than frame_NNNNN.png "
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
            warnings.warn(f"{audio_from}: audio not copied ({utils.first_line(result.stderr or 'ffmpeg failed')})")
            return
        os.replace(muxed, self.temp)


def _pad_to_even(frame):
    """Pad odd heights/widths by one replicated edge pixel: yuv420p needs even sides."""
    height, width = frame.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return frame
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")



# ----------------------------------------------------------------------------
# 4. Clips: a video as the model takes it, from a file, a frame folder or a strip
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
    raise utils.UserError(f"{path}: not a dataset video (expected a folder of frames, "
                    f"{', '.join(DATASET_VIDEO_EXTENSIONS + DATASET_STRIP_EXTENSIONS)})")


def dataset_frame(frame, frame_shape):
    """A decoded dataset frame as float32 [H, W, 3] in [0, 1] (see `open_dataset_clip`)."""
    frame = as_hwc(frame)
    if frame.shape[:2] != tuple(frame_shape[:2]):
        return preprocess_frame(frame, frame_shape)
    # img_as_float32 rather than a same-size resize, which is one float32 ulp off FramesDataset.
    return to_rgb(img_as_float32(frame))


def _video_clip(path, convert):
    video = open_video(path)

    def read_frames():
        return (convert(frame) for frame in video)

    return Clip(path, video.fps, video.frame_count, read_frames, media_path=path, close=video.close, size=video.size)


def _folder_clip(path, frame_shape):
    # Hidden files (.DS_Store and the like) are not frames.
    names = sorted(name for name in os.listdir(path) if not name.startswith("."))
    if not names:
        raise utils.UserError(f"{path}: the folder holds no frames")
    files = [os.path.join(path, name) for name in names]

    def read_frames():
        return (dataset_frame(decode_image(file), frame_shape) for file in files)

    return Clip(path, DEFAULT_FPS, len(files), read_frames)


def _strip_clip(path, frame_shape):
    frames = split_strip(decode_image(path), frame_shape, path)
    return Clip(path, DEFAULT_FPS, len(frames), lambda: (dataset_frame(f, frame_shape) for f in frames))


def split_strip(image, frame_shape, path="strip"):
    """[H, T*W, C] frames side by side -> list of T [H, W, C] frames, W from frame_shape's aspect ratio.

    FramesDataset reshapes the strip with frame_shape, which is only right for
    square frames; this splits it into frame-wide columns instead.
    """
    image = as_hwc(image)
    height, width = image.shape[:2]
    frame_width = round(height * frame_shape[1] / frame_shape[0])
    if frame_width < 1 or width % frame_width:
        raise utils.UserError(f"{path}: a {width}x{height} strip does not split into frames of "
                        f"{frame_shape[1]}x{frame_shape[0]} proportions")
    return [image[:, left:left + frame_width] for left in range(0, width, frame_width)]



# ----------------------------------------------------------------------------
# 5. Audio tracks
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
