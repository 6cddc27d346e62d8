"""crop.py: one cropped clip per face track long enough, one PNG per face of a photo, and bad input
refused in one line with nothing written.

The inputs are built from the example as in test_faces.py: a 1280x720 video with the example driving
clip placed in it for all 40 frames, example/source.png standing still in it for frames 12-35 and a
smaller copy for frames 5-9 only; and the 1920x1080 group canvas of test_faces.py as a photo.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import crop
import faces
import media
from conftest import (REPO, SOURCE, SQUARE, assert_one_line_error, background, canvas_picture, driving_frames,
                      map_back, place)

FPS = 25.0
# (x, y, scale) on the 1280x720 frame.
MOVING = (100, 80, 1.5)  # the example driving clip, all 40 frames
STILL = (900, 330, 1.2)  # example/source.png, frames 12-35
BRIEF = (560, 60, 0.5)  # a smaller copy, frames 5-9: a track shorter than --min_frames


def three_face_frame(index):
    canvas = place(background(720, 1280, seed=1), driving_frames()[index], *MOVING)
    source = media.decode_image(str(SOURCE))
    if 12 <= index <= 35:
        place(canvas, source, *STILL)
    if 5 <= index <= 9:
        place(canvas, source, *BRIEF)
    return canvas


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "party.mp4"
    with media.FrameWriter(str(path), FPS) as writer:
        for index in range(len(driving_frames())):
            writer.write(three_face_frame(index))
    return path


@pytest.fixture(scope="module")
def video_run(video, tmp_path_factory):
    """crop.py on the three-face video, run once: (exit code, stdout, stderr, outdir). Every 2nd frame
    is searched, to keep the test fast: tracks then start and end on even frames."""
    outdir = tmp_path_factory.mktemp("crops")
    code, out, err = run_crop(["--inp", str(video), "--min_frames", "15", "--detect_every", "2",
                               "--outdir", str(outdir)])
    return code, out, err, outdir


def run_crop(argv):
    """crop.main in this process, with its stdout and stderr."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = crop.main(argv)
    return code, out.getvalue(), err.getvalue()


def parse_wrote(line):
    """'wrote PATH: face I, box X,Y,W,H, frames S-E (a-b s)' -> (path, index, CropBox, start, end, seconds)."""
    head, rest = line[len("wrote "):].split(": face ", 1)
    index, rest = rest.split(", box ", 1)
    box_text, rest = rest.split(", frames ", 1)
    frames_text, seconds = rest.split(" (", 1)
    start, end = (int(value) for value in frames_text.split("-"))
    return head, int(index), faces.parse_crop_box(box_text), start, end, seconds.rstrip(")")


def read_clip(path):
    with media.open_video(str(path)) as clip:
        return clip.fps, [np.array(frame) for frame in clip]


# ----------------------------------------------------------------------------
# A video: one clip per long-enough track
# ----------------------------------------------------------------------------

def test_one_clip_per_track_at_least_min_frames_long(video_run):
    code, out, err, outdir = video_run
    assert code == 0, err
    lines = out.splitlines()
    written = [parse_wrote(line) for line in lines]
    # Tracks are numbered by start frame: the driving clip (0), the brief copy (1: frames 6-8 searched,
    # 3 < 15), the still one (2). They end at the last searched frame that found them.
    assert [(index, start, end, seconds) for _, index, _, start, end, seconds in written] == [
        (0, 0, 38, "0.00-1.56 s"), (2, 12, 34, "0.48-1.40 s")]
    assert sorted(os.listdir(outdir)) == ["party_face0.mp4", "party_face2.mp4"]
    assert "1 face track shorter than --min_frames 15 not written" in err
    for path, _, _, start, end, _ in written:
        fps, frames = read_clip(path)
        assert fps == FPS and len(frames) == end - start + 1
        assert all(frame.shape == SQUARE for frame in frames)


def test_each_clip_is_its_stated_box_cut_from_its_stated_frames(video_run):
    _, out, _, _ = video_run
    for path, _, box, start, _, _ in (parse_wrote(line) for line in out.splitlines()):
        _, frames = read_clip(path)
        for offset in (0, len(frames) - 1):
            expected = media.to_uint8(faces.crop_and_resize(three_face_frame(start + offset), box, SQUARE))
            difference = np.abs(frames[offset].astype(int) - expected).mean()
            assert difference < 3, (path, offset, difference)  # H.264 at crf 10 is near lossless


def test_a_still_faces_clip_box_is_its_face_cropped_as_the_original(video_run):
    # The still copy's track is the same face in every frame: its box, mapped back onto
    # example/source.png, is the crop of the face found there alone (within 3% of the side).
    _, out, _, _ = video_run
    _, _, box, _, _, _ = parse_wrote(out.splitlines()[1])
    own = faces.crop_box(faces.detect_faces(media.decode_image(str(SOURCE)))[0].box, SQUARE)
    mapped = map_back((box.x, box.y, box.w, box.h), *STILL)
    worst = max(abs(a - b) for a, b in zip(mapped, (own.x, own.y, own.w, own.h))) / own.w
    assert worst <= 0.03, (mapped, own)


def test_crop_box_by_hand_crops_every_frame(video, tmp_path):
    code, out, err = run_crop(["--inp", str(video), "--crop_box", "600,40,400,400", "--image_shape", "128,128",
                               "--outdir", str(tmp_path)])
    assert code == 0, err
    path, index, box, start, end, _ = parse_wrote(out.strip())
    assert (index, str(box), start, end) == (0, "600,40,400,400", 0, 39)
    _, frames = read_clip(path)
    assert len(frames) == 40 and frames[0].shape == (128, 128, 3)


# ----------------------------------------------------------------------------
# A photo: one PNG per face
# ----------------------------------------------------------------------------

def test_one_png_per_face_of_a_photo(tmp_path):
    photo = canvas_picture("landscape 1920x1080")
    path = tmp_path / "group.png"
    Image.fromarray(photo).save(path)
    outdir = tmp_path / "crops"
    code, out, err = run_crop(["--inp", str(path), "--outdir", str(outdir)])
    assert code == 0, err
    lines = out.splitlines()
    assert sorted(os.listdir(outdir)) == ["group_face0.png", "group_face1.png", "group_face2.png"]
    assert [line.split(":")[0] for line in lines] == [f"wrote {outdir}/group_face{i}.png" for i in range(3)]
    # The small copy's crop is under a quarter of the model's input: one warning line for it.
    warnings_said = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings_said) == 1 and "face 1" in warnings_said[0]
    for index, line in enumerate(lines):
        box = faces.parse_crop_box(line.split(", box ")[1].split(" ")[0])
        written = np.asarray(Image.open(outdir / f"group_face{index}.png"))
        np.testing.assert_array_equal(written, media.to_uint8(faces.crop_and_resize(photo, box, SQUARE)))


def test_a_photo_is_cropped_upright(tmp_path):
    # Stored lying on its side with EXIF orientation 6, as phones do: the face is found upright.
    upright = media.decode_image(str(SOURCE))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(np.rot90(upright, k=1).copy()).save(path, exif=exif, quality=95)
    code, out, err = run_crop(["--inp", str(path), "--outdir", str(tmp_path / "out")])
    assert code == 0, err
    assert len(out.splitlines()) == 1


# ----------------------------------------------------------------------------
# Bad input: exit 1, one line, nothing written
# ----------------------------------------------------------------------------

def _plain_video(path, frames=3):
    with media.FrameWriter(str(path), FPS) as writer:
        for _ in range(frames):
            writer.write(np.full((120, 160, 3), 90, np.uint8))
    return path


BAD_INPUTS = {
    "missing file": (lambda tmp: tmp / "nope.mp4", [], "no such file"),
    "a folder": (lambda tmp: tmp, [], "is a directory"),
    "corrupt video": (lambda tmp: _write(tmp / "bad.mp4", b"\x00\x01 not a video" * 50), [], "not a readable video"),
    "corrupt photo": (lambda tmp: _write(tmp / "bad.png", b"\x89PNG\r\n\x1a\n broken"), [], "not a readable image"),
    "photo without a face": (lambda tmp: _save(tmp / "wall.png", np.full((200, 300, 3), 128, np.uint8)), [],
                             "no face found; give the crop by hand with --crop_box X,Y,W,H"),
    "video without a face": (lambda tmp: _plain_video(tmp / "empty.mp4"), [],
                             "no face found in the video; give the crop by hand with --crop_box X,Y,W,H"),
    "tracks all too short": (lambda tmp: REPO / "example" / "driving.mp4", ["--min_frames", "100", "--detect_every", "10"],
                             "no face track spans --min_frames 100 frames (the longest: 31, frames 0-30)"),
    "outdir is a file": (lambda tmp: REPO / "example" / "source.png", ["--outdir", "FILE"], "exists and is not a folder"),
}


def _write(path, data):
    path.write_bytes(data)
    return path


def _save(path, picture):
    Image.fromarray(picture).save(path)
    return path


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_1_and_writes_nothing(name, tmp_path, capsys):
    make, extra, fragment = BAD_INPUTS[name]
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = make(inputs)
    outdir = tmp_path / "out"
    if "FILE" in extra:
        outdir.write_text("not a folder")
        extra = ["--outdir", str(outdir)]
    code = crop.main(["--inp", str(path), "--outdir", str(outdir), *extra])
    assert_one_line_error(capsys, code, "error: ", fragment)
    assert not outdir.is_dir() or not os.listdir(outdir)


@pytest.mark.parametrize("flags, fragment", [
    (["--image_shape", "256"], "--image_shape: '256': expected HEIGHT,WIDTH"),
    (["--increase", "-0.1"], "--increase: '-0.1': must be 0 or more"),
    (["--iou_with_initial", "1.5"], "--iou_with_initial: '1.5': must be at least 0 and below 1"),
    (["--min_frames", "0"], "--min_frames: '0': must be 1 or more"),
    (["--crop_box", "1,2,3"], "--crop_box: '1,2,3': expected X,Y,W,H"),
])
def test_usage_errors_are_one_line_exit_2(flags, fragment, capsys):
    with pytest.raises(SystemExit) as raised:
        crop.main(["--inp", "x.mp4", *flags])
    err = capsys.readouterr().err
    assert raised.value.code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err


def test_bad_paths_fail_before_tensorflow_loads(tmp_path):
    script = ("import sys, crop; code = crop.main(['--inp', 'missing.mp4']); "
              "print(code, 'tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["1", "False"], result.stderr
    assert result.stderr.strip() == "error: missing.mp4: no such file"
