"""Tests for utils.py: configs, image/video reading, atomic writing, output naming.

Every input is generated here in tmp_path; the reference for preprocessing is
the original demo.py's formula `resize(imageio.imread(path), shape)[..., :3]`.
"""

import inspect
import itertools
import os
import struct
import subprocess
import sys
import threading
import zlib

import imageio.v2 as imageio_v2
import imageio.v3 as imageio_v3
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image
from skimage import img_as_ubyte
from skimage.transform import resize

import media
import model_config
import utils
from utils import UserError

FRAME_SHAPE = [256, 256, 3]


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------

def random_uint8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def smooth_frames(count, height, width):
    """Gradients that move per frame: H.264 keeps them close, unlike noise."""
    y, x = np.mgrid[0:height, 0:width]
    frames = [np.stack([(x * 255 // width + 9 * i) % 256,
                        (y * 255 // height + 5 * i) % 256,
                        np.full_like(x, 40 * i % 256)], axis=-1) for i in range(count)]
    return np.asarray(frames, dtype=np.uint8)


def demo_formula(path, frame_shape):
    """demo.py's preprocessing (imageio.imread is imageio.v2.imread plus a deprecation warning)."""
    return resize(imageio_v2.imread(path), frame_shape[:2])[..., :3].astype(np.float32)


def write_png(path, array):
    """Pillow picks the mode from the array: L, LA, RGB, RGBA, 1 (bool) or I;16 (uint16)."""
    Image.fromarray(array).save(path)
    return str(path)


def write_png16(path, array):
    """A 16-bit PNG written by hand: Pillow cannot write 16-bit RGB."""
    height, width, channels = array.shape
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                + chunk(b"IEND", b""))
    return str(path)


def write_mp4(path, frames, fps):
    """Encode with imageio-ffmpeg directly, independently of media.FrameWriter."""
    height, width = frames.shape[1:3]
    encoder = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, macro_block_size=1)
    encoder.send(None)
    for frame in frames:
        encoder.send(frame.tobytes())
    encoder.close()
    return str(path)


def ffmpeg(*args):
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", *args], check=True)


def stream_kinds(path):
    """'video'/'audio' streams in a media file, from ffmpeg's stream listing."""
    listing = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                             capture_output=True, text=True).stderr
    return {kind for kind in ("video", "audio") if f"{kind.capitalize()}:" in listing}


def assert_one_line_error(excinfo, path):
    message = str(excinfo.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message


def leftovers(folder, keep=()):
    return sorted(set(os.listdir(folder)) - set(keep))


# ----------------------------------------------------------------------------
# read_image / preprocess_frame
# ----------------------------------------------------------------------------

def test_read_image_equals_demo_formula_on_rgb_png(tmp_path):
    path = write_png(tmp_path / "rgb.png", random_uint8((300, 200, 3)))
    image = media.read_image(path, FRAME_SHAPE)
    assert image.dtype == np.float32 and image.shape == (256, 256, 3)
    np.testing.assert_array_equal(image, demo_formula(path, FRAME_SHAPE))


def test_read_image_resizes_non_square_input_to_non_square_frame_shape(tmp_path):
    path = write_png(tmp_path / "wide.png", random_uint8((50, 80, 3)))
    image = media.read_image(path, [96, 64, 3])
    assert image.shape == (96, 64, 3)
    np.testing.assert_array_equal(image, demo_formula(path, [96, 64, 3]))


def test_read_image_equals_demo_formula_on_rgba_png(tmp_path):
    rgba = random_uint8((40, 60, 4))
    path = write_png(tmp_path / "rgba.png", rgba)
    rgb_path = write_png(tmp_path / "rgb.png", rgba[..., :3])
    image = media.read_image(path, FRAME_SHAPE)
    np.testing.assert_array_equal(image, demo_formula(path, FRAME_SHAPE))
    np.testing.assert_array_equal(image, media.read_image(rgb_path, FRAME_SHAPE))


def test_grayscale_image_becomes_rgb(tmp_path):
    gray = random_uint8((40, 60))
    path = write_png(tmp_path / "gray.png", gray)
    rgb_path = write_png(tmp_path / "rgb.png", np.stack([gray] * 3, axis=-1))
    np.testing.assert_array_equal(media.read_image(path, FRAME_SHAPE), media.read_image(rgb_path, FRAME_SHAPE))


def test_gray_with_alpha_becomes_rgb(tmp_path):
    gray_alpha = random_uint8((40, 60, 2))
    path = write_png(tmp_path / "la.png", gray_alpha)
    gray_path = write_png(tmp_path / "gray.png", gray_alpha[..., 0])
    np.testing.assert_array_equal(media.read_image(path, FRAME_SHAPE), media.read_image(gray_path, FRAME_SHAPE))


def test_one_channel_frame_becomes_rgb():
    gray = random_uint8((40, 60))
    np.testing.assert_array_equal(media.preprocess_frame(gray[..., np.newaxis], FRAME_SHAPE),
                                  media.preprocess_frame(np.stack([gray] * 3, axis=-1), FRAME_SHAPE))


def test_16bit_grayscale_is_scaled_to_unit_range(tmp_path):
    gray16 = np.random.default_rng(0).integers(0, 65536, (40, 60), dtype=np.uint16)
    path = write_png(tmp_path / "gray16.png", gray16)
    image = media.read_image(path, FRAME_SHAPE)
    expected = resize(gray16 / 65535.0, FRAME_SHAPE[:2])
    np.testing.assert_allclose(image, np.stack([expected] * 3, axis=-1), atol=1e-6)


def test_16bit_rgb_is_scaled_to_unit_range(tmp_path):
    rgb16 = np.random.default_rng(0).integers(0, 65536, (40, 60, 3), dtype=np.uint16)
    path = write_png16(tmp_path / "rgb16.png", rgb16)
    image = media.read_image(path, FRAME_SHAPE)
    # Pillow decodes 16-bit RGB to its top 8 bits, so the result is within one 8-bit step.
    np.testing.assert_allclose(image, resize(rgb16 / 65535.0, FRAME_SHAPE[:2]), atol=1 / 255)


def test_palette_png_becomes_rgb(tmp_path):
    rgb = random_uint8((40, 60, 3))
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(tmp_path / "palette.png")
    rgb_path = write_png(tmp_path / "rgb.png", np.asarray(palette.convert("RGB")))
    np.testing.assert_array_equal(media.read_image(tmp_path / "palette.png", FRAME_SHAPE),
                                  media.read_image(rgb_path, FRAME_SHAPE))


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    Image.frombytes("CMYK", (60, 40), random_uint8((40, 60, 4)).tobytes()).save(tmp_path / "cmyk.jpg")
    rgb = np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB"))
    np.testing.assert_array_equal(media.read_image(tmp_path / "cmyk.jpg", FRAME_SHAPE),
                                  resize(rgb, FRAME_SHAPE[:2]).astype(np.float32))


def test_one_bit_image_is_read(tmp_path):
    path = write_png(tmp_path / "bits.png", random_uint8((40, 60)) > 127)
    image = media.read_image(path, FRAME_SHAPE)
    assert image.shape == (256, 256, 3) and 0 <= image.min() and image.max() <= 1


# imageio warns while it tries its deprecated DICOM plugin on the garbage; not ours to fix.
@pytest.mark.filterwarnings("ignore:The legacy `DICOM` plugin:DeprecationWarning")
@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_unreadable_image_raises_one_line_user_error(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a readable image") as excinfo:
        media.read_image(path, FRAME_SHAPE)
    assert_one_line_error(excinfo, path)


def test_missing_image_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file") as excinfo:
        media.read_image(tmp_path / "missing.png", FRAME_SHAPE)
    assert_one_line_error(excinfo, tmp_path / "missing.png")


def test_to_uint8_equals_img_as_ubyte():
    frames = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    frames[0, 0, :3, 0] = [0.0, 1.0, 0.5 / 255]  # the range ends and a rounding midpoint
    result = media.to_uint8(frames)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, img_as_ubyte(frames))


# ----------------------------------------------------------------------------
# open_video / open_driving_clip
# ----------------------------------------------------------------------------

def test_open_video_streams_frames_with_fps_and_size(tmp_path):
    path = write_mp4(tmp_path / "clip.mp4", smooth_frames(7, 32, 48), fps=12.5)
    with media.open_video(path) as video:
        assert video.fps == 12.5
        assert video.size == (48, 32)
        frames = iter(video)
        assert inspect.isgenerator(frames)  # decoded one at a time, never all at once
        first = next(frames)
        assert first.dtype == np.uint8 and first.shape == (32, 48, 3)
        assert 1 + sum(1 for _ in frames) == 7


def test_open_video_iterates_again_from_the_first_frame(tmp_path):
    path = write_mp4(tmp_path / "clip.mp4", smooth_frames(5, 32, 48), fps=10)
    with media.open_video(path) as video:
        first_pass = list(video)
        second_pass = list(video)
    assert len(first_pass) == len(second_pass) == 5
    np.testing.assert_array_equal(first_pass[0], second_pass[0])


def test_open_video_reads_gif_fps_from_frame_duration(tmp_path):
    path = str(tmp_path / "clip.gif")
    imageio_v3.imwrite(path, smooth_frames(4, 20, 30), duration=80, loop=0)
    with media.open_video(path) as video:
        assert video.fps == pytest.approx(12.5)
        assert video.size == (30, 20)
        assert len(list(video)) == 4


def test_video_without_frames_raises_user_error(tmp_path):
    # A YUV4MPEG stream header with no FRAME records: a video stream holding zero frames.
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"YUV4MPEG2 W16 H16 F25:1 Ip A1:1 C420jpeg\n")
    with pytest.raises(UserError, match="no frames") as excinfo:
        media.open_video(path)
    assert_one_line_error(excinfo, path)


def test_video_without_video_stream_raises_user_error(tmp_path):
    path = tmp_path / "audio_only.mp4"
    ffmpeg("-f", "lavfi", "-i", "anullsrc", "-t", "0.5", str(path))
    with pytest.raises(UserError, match="no video stream") as excinfo:
        media.open_video(path)
    assert_one_line_error(excinfo, path)


@pytest.mark.parametrize("content", [b"", b"not a video"])
def test_unreadable_video_raises_one_line_user_error(tmp_path, content):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a readable video") as excinfo:
        media.open_video(path)
    assert_one_line_error(excinfo, path)


def test_phone_video_rotation_is_applied_when_decoding(tmp_path):
    # Phones record sideways and store the turn as display-matrix metadata; ffmpeg turns the frames upright
    # when it decodes them (autorotate), so a portrait clip arrives portrait, size included.
    landscape = write_mp4(tmp_path / "landscape.mp4", smooth_frames(3, 32, 48), fps=10)
    rotated = tmp_path / "portrait.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-display_rotation", "90", "-i", landscape,
                    "-c", "copy", str(rotated)], check=True)
    with media.open_video(landscape) as video:
        stored = list(video)
    with media.open_video(rotated) as video:
        assert video.size == (32, 48)  # (width, height): turned
        upright = list(video)
    for frame, original in zip(upright, stored):
        np.testing.assert_array_equal(frame, np.rot90(original))  # 90 degrees counter-clockwise, as displayed


def test_open_driving_clip_fails_on_missing_video_before_iterating(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        media.open_driving_clip(tmp_path / "missing.mp4", FRAME_SHAPE)


def test_open_driving_clip_preprocesses_each_frame_as_demo_py(tmp_path):
    path = write_mp4(tmp_path / "clip.mp4", smooth_frames(6, 32, 48), fps=10)
    with media.open_driving_clip(path, [64, 80, 3]) as clip:
        frames = list(itertools.islice(clip, 3))
    with media.open_video(path) as video:
        raw = list(video)[:3]
    assert len(frames) == 3
    for frame, original in zip(frames, raw):
        assert frame.dtype == np.float32 and frame.shape == (64, 80, 3)
        np.testing.assert_array_equal(frame, resize(original, (64, 80))[..., :3].astype(np.float32))


# ----------------------------------------------------------------------------
# FrameWriter
# ----------------------------------------------------------------------------

def test_frame_writer_writes_mp4_with_fps_and_frame_count(tmp_path):
    output = tmp_path / "out" / "result.mp4"
    frames = smooth_frames(5, 32, 48)
    with media.FrameWriter(output, fps=10) as writer:
        for frame in frames:
            writer.write(frame)
    assert leftovers(tmp_path / "out") == ["result.mp4"]
    with media.open_video(output) as video:
        decoded = np.asarray(list(video))
        assert video.fps == 10 and video.size == (48, 32)
    assert decoded.shape == frames.shape
    # Lossy (yuv420p halves chroma resolution); a garbled or shifted frame would be off by ~80.
    assert np.abs(decoded.astype(int) - frames).mean() < 8


def test_frame_writer_pads_odd_sizes_instead_of_rescaling(tmp_path):
    output = tmp_path / "odd.mp4"
    frames = smooth_frames(3, 33, 47)
    with media.FrameWriter(output, fps=10) as writer:
        for frame in frames:
            writer.write(frame)
    with media.open_video(output) as video:
        assert video.size == (48, 34)
        decoded = np.asarray(list(video))
    assert np.abs(decoded[:, :33, :47].astype(int) - frames).mean() < 8


def test_frame_writer_without_extension_writes_mp4_container(tmp_path):
    output = tmp_path / "result"
    with media.FrameWriter(output, fps=10) as writer:
        writer.write(smooth_frames(1, 16, 16)[0])
    assert output.read_bytes()[4:8] == b"ftyp"  # the ISO/mp4 box that starts the file


def test_frame_writer_writes_gif(tmp_path):
    output = tmp_path / "result.gif"
    with media.FrameWriter(output, fps=12.5) as writer:
        for frame in smooth_frames(4, 20, 30):
            writer.write(frame)
    assert leftovers(tmp_path) == ["result.gif"]
    with Image.open(output) as gif:
        assert gif.n_frames == 4 and gif.size == (30, 20)
        assert gif.info["duration"] == 80 and gif.info["loop"] == 0


def test_frame_writer_png_folder_round_trips_frames_exactly(tmp_path):
    frames = random_uint8((3, 20, 30, 3))
    with media.FrameWriter(f"{tmp_path}/frames/", fps=10) as writer:
        for frame in frames:
            writer.write(frame)
    assert leftovers(tmp_path) == ["frames"]
    assert leftovers(tmp_path / "frames") == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    for index, frame in enumerate(frames):
        np.testing.assert_array_equal(imageio_v3.imread(tmp_path / "frames" / f"frame_{index:05d}.png"), frame)


def test_frame_writer_treats_existing_folder_as_png_output_and_replaces_old_frames(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(3):
        write_png(folder / f"frame_{index:05d}.png", random_uint8((8, 8, 3)))
    with media.FrameWriter(folder, fps=10) as writer:  # no trailing slash: the folder exists
        writer.write(random_uint8((20, 30, 3), seed=1))
    assert leftovers(tmp_path) == ["frames"]
    assert leftovers(folder) == ["frame_00000.png"]
    np.testing.assert_array_equal(imageio_v3.imread(folder / "frame_00000.png"), random_uint8((20, 30, 3), seed=1))


def test_frame_writer_refuses_to_replace_folder_with_other_files(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="refusing to replace") as excinfo:
        media.FrameWriter(f"{folder}/", fps=10)
    assert_one_line_error(excinfo, folder)
    assert (folder / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("name", ["result.mp4", "result.gif", "frames/"])
def test_exception_inside_with_leaves_nothing_at_output(tmp_path, name):
    with pytest.raises(KeyError):
        with media.FrameWriter(f"{tmp_path}/{name}", fps=10) as writer:
            writer.write(smooth_frames(1, 16, 16)[0])
            raise KeyError("rendering failed")
    assert leftovers(tmp_path) == []


def test_exception_inside_with_keeps_previous_output_untouched(tmp_path):
    output = tmp_path / "result.mp4"
    output.write_bytes(b"previous render")
    with pytest.raises(KeyError):
        with media.FrameWriter(output, fps=10) as writer:
            writer.write(smooth_frames(1, 16, 16)[0])
            raise KeyError("rendering failed")
    assert output.read_bytes() == b"previous render"
    assert leftovers(tmp_path) == ["result.mp4"]


def test_frame_writer_without_frames_raises_and_writes_nothing(tmp_path):
    with pytest.raises(UserError, match="no frames"):
        with media.FrameWriter(tmp_path / "result.mp4", fps=10):
            pass
    assert leftovers(tmp_path) == []


def test_frame_writer_rejects_non_uint8_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        with media.FrameWriter(tmp_path / "result.mp4", fps=10) as writer:
            writer.write(np.zeros((16, 16, 3), np.float32))
    assert leftovers(tmp_path) == []


def test_frame_writer_copies_audio_from_driving_video(tmp_path):
    driving = tmp_path / "driving.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=32x32:r=10", "-f", "lavfi", "-i", "sine=frequency=440",
           "-t", "1", "-pix_fmt", "yuv420p", str(driving))
    output = tmp_path / "result.mp4"
    with media.FrameWriter(output, fps=10, audio_from=driving) as writer:
        for frame in smooth_frames(5, 32, 32):
            writer.write(frame)
    assert stream_kinds(output) == {"video", "audio"}
    assert leftovers(tmp_path, keep=["driving.mp4"]) == ["result.mp4"]


def test_frame_writer_with_silent_driving_video_writes_video_only(tmp_path):
    driving = write_mp4(tmp_path / "driving.mp4", smooth_frames(3, 32, 32), fps=10)
    output = tmp_path / "result.mp4"
    with media.FrameWriter(output, fps=10, audio_from=driving) as writer:
        writer.write(smooth_frames(1, 32, 32)[0])
    assert stream_kinds(output) == {"video"}


# ----------------------------------------------------------------------------
# output_path
# ----------------------------------------------------------------------------

def test_output_path_default_appends_mode_and_mp4():
    assert utils.output_path(None, "src.png", "drv.mp4", "animate", False) == "output/result_animate.mp4"
    assert utils.output_path("out/clip", None, "drv.mp4", "reconstruction", False) == \
        "out/clip_reconstruction.mp4"


def test_output_path_dontappend_keeps_name():
    assert utils.output_path("out/clip", "src.png", "drv.mp4", "animate", True) == "out/clip"


@pytest.mark.parametrize("name", ["out/clip.mp4", "out/clip.gif", "out/clip.MP4"])
def test_output_path_with_extension_is_used_as_given(name):
    assert utils.output_path(name, "src.png", "drv.mp4", "animate", False) == name


def test_output_path_folder_gets_trailing_slash(tmp_path):
    assert utils.output_path("out/frames/", "src.png", "drv.mp4", "animate", False) == "out/frames/"
    assert utils.output_path(str(tmp_path), "src.png", "drv.mp4", "animate", False) == f"{tmp_path}/"


def test_output_path_refuses_to_overwrite_an_input(tmp_path):
    driving = str(tmp_path / "drv.mp4")
    with pytest.raises(UserError, match="overwrite the driving video"):
        utils.output_path(driving, "src.png", driving, "animate", False)


# ----------------------------------------------------------------------------
# model_config.load / model_paths
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vox", "vox-adv", "taichi", "taichi-adv", "bair", "fashion", "mgif", "nemo"])
def test_shipped_configs_load(name):
    config = model_config.load(utils.model_paths(name)[0])
    assert config.frame_shape == (256, 256, 3)
    assert config.model.num_kp == 10


@pytest.mark.parametrize("text, message", [
    ("model_params: [unclosed", "not valid YAML"),
    ("- just\n- a list\n", "expected a YAML mapping"),
    ("dataset_params: {frame_shape: [256, 256, 3]}\n", "missing 'model_params'"),
    ("model_params: {}\ndataset_params: {root_dir: x}\n", "missing 'dataset_params.frame_shape'"),
    ("model_params: {}\ndataset_params: {frame_shape: [256, 0, 3]}\n", "frame_shape' must be"),
])
def test_config_load_rejects_bad_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as excinfo:
        model_config.load(path)
    assert_one_line_error(excinfo, path)


def test_config_load_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        model_config.load(tmp_path / "missing.yaml")


def test_model_paths_resolve_inside_the_repository():
    config, checkpoint = utils.model_paths("vox")
    assert config == os.path.join(utils.REPO_DIR, "config", "vox-256.yaml")
    assert checkpoint == os.path.join(utils.REPO_DIR, "checkpoint", "vox-cpk.pth.tar")


def test_model_paths_explicit_paths_win():
    assert utils.model_paths("vox", config="my.yaml", checkpoint="my.pth.tar") == ("my.yaml", "my.pth.tar")


def test_model_paths_unknown_model_lists_known_ones():
    with pytest.raises(UserError, match="known models: bair, fashion"):
        utils.model_paths("nonexistent")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64, bool])
@pytest.mark.parametrize("channels", [None, 1, 2, 3, 4])
def test_a_frame_of_the_model_size_preprocesses_as_the_original_resize(dtype, channels):
    # media.preprocess_frame skips skimage's resize for a frame that already has the model's size; the
    # original resizes every frame, so the skip must give its bits.
    shape = (64, 80) if channels is None else (64, 80, channels)
    rng = np.random.default_rng(channels or 0)
    if dtype == bool:
        frame = rng.random(shape) > 0.5
    elif np.issubdtype(dtype, np.integer):
        frame = rng.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)
    else:
        frame = rng.random(shape).astype(dtype)
    expected = resize(frame.astype(np.float64) if dtype == bool else frame, (64, 80))
    expected = media.to_rgb(expected).astype(np.float32)
    np.testing.assert_array_equal(media.preprocess_frame(frame, (64, 80, 3)), expected)


def test_eight_bit_pictures_never_import_scipy():
    # skimage's resize imports scipy.ndimage (0.3-0.45 s of a run's start-up): frames of the model's size skip
    # the resize, and 8- and 16-bit frames of other sizes take resize.py's copy of it; other dtypes still
    # go to skimage.
    code = ("import sys, numpy as np, media; "
            "media.preprocess_frame(np.zeros((256, 256, 3), np.uint8), (256, 256, 3)); "
            "media.preprocess_frame(np.zeros((300, 256, 3), np.uint8), (256, 256, 3)); "
            "media.preprocess_frame(np.zeros((100, 90), np.uint16), (256, 256, 3)); "
            "assert 'scipy.ndimage' not in sys.modules, 'imported'; "
            "media.preprocess_frame(np.zeros((300, 256, 3), np.float32), (256, 256, 3)); "
            "assert 'scipy.ndimage' in sys.modules, 'not imported when resizing float32'")
    result = subprocess.run([sys.executable, "-c", code], cwd=utils.REPO_DIR, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-500:]


def test_loaded_on_thread_lets_the_caller_go_on_then_waits_and_repeats_a_failure():
    started, release = threading.Event(), threading.Event()

    def load(offset):
        started.set()
        release.wait(10)
        return lambda x, scale=1: (x + offset) * scale

    call = utils.LoadedOnThread(load, 1)
    assert started.wait(10) and not release.is_set(), "the load did not start on its own thread"
    release.set()
    assert call(2) == 3 and call(2, scale=2) == 6 and call.wait()(5) == 6

    def fails():
        raise UserError("model.tflite: cannot load it")

    broken = utils.LoadedOnThread(fails)
    for attempt in (lambda: broken(x=1), broken.wait, lambda: broken(x=1)):
        with pytest.raises(UserError, match="cannot load it"):
            attempt()
