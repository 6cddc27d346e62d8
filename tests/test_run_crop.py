"""run.py --crop: photos and videos in the wild, animated on the bundled demo model.

The "wild" photo is a canvas the test makes from the example source, pasted twice at known places
and sizes; the references are run.py's own ordinary (uncropped) path on the same crops, which the
suite checks against the original elsewhere.
"""
import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, assert_one_line_error, load_fixture, read_png_frames

import faces
import media
import run

CONFIG = REPO / "example" / "demo-256.yaml"
MODEL = ["--config", str(CONFIG), "--checkpoint", str(REPO / "example" / "demo-cpk.pth.tar")]
DRIVING = str(REPO / "example" / "driving.mp4")
SHAPE = (256, 256, 3)
FRAMES = "4"


def place(canvas, image, x, y, size):
    canvas[y:y + size, x:x + size] = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A 960x540 photo with the example's face twice: large on the left, small on the right."""
    source = np.asarray(Image.open(REPO / "example" / "source.png").convert("RGB"))
    canvas = np.full((540, 960, 3), 190, np.uint8)
    place(canvas, source, 80, 60, 360)
    place(canvas, source, 640, 250, 200)
    path = tmp_path_factory.mktemp("wild") / "photo.png"
    Image.fromarray(canvas).save(path)
    return path, canvas


def crop_run(photo_path, output, *extra):
    return run.main([*MODEL, "--source_image", str(photo_path), "--driving_video", DRIVING, "--relative", "--adapt",
                     "--frames", FRAMES, "--output", f"{output}/", *extra])


def outside(mask_boxes, shape):
    keep = np.ones(shape[:2], bool)
    for box in mask_boxes:
        keep[max(box.y, 0):box.bottom, max(box.x, 0):box.right] = False
    return keep


@pytest.fixture(scope="module")
def two_face_run(photo, tmp_path_factory):
    path, canvas = photo
    out = tmp_path_factory.mktemp("two")
    assert crop_run(path, out, "--crop", "source") == 0
    boxes = [box for _, box in faces.source_crops(canvas, SHAPE, "photo")]
    return read_png_frames(out), boxes


def test_every_face_is_animated_and_the_rest_of_the_photo_stays(photo, two_face_run):
    _, canvas = photo
    frames, boxes = two_face_run
    assert len(boxes) == 2 and frames.shape == (int(FRAMES), *canvas.shape)
    keep = outside(boxes, canvas.shape)
    for frame in frames:
        np.testing.assert_array_equal(frame[keep], canvas[keep])  # outside every pasted region: the photo
    for box in boxes:  # inside: the face moves
        region = (slice(box.y, box.bottom), slice(box.x, box.right))
        assert np.abs(frames[-1][region].astype(int) - canvas[region].astype(int)).mean() > 1


def test_each_pasted_face_equals_its_single_face_run(photo, two_face_run, tmp_path):
    path, _ = photo
    frames, boxes = two_face_run
    for index, box in enumerate(boxes):
        out = tmp_path / f"face{index}"
        assert crop_run(path, out, "--crop", "source", "--face", str(index)) == 0
        single = read_png_frames(out)
        region = (slice(None), slice(box.y, box.bottom), slice(box.x, box.right))
        np.testing.assert_array_equal(single[region], frames[region])


def test_animated_crop_equals_the_same_crop_given_as_source(photo, tmp_path):
    # A 256x256 box needs no resize on either side, so the pasted centre is the model's frame itself.
    path, canvas = photo
    box = faces.CropBox(120, 80, 256, 256)
    cropped = tmp_path / "crop.png"
    Image.fromarray(faces.cut(canvas, box)).save(cropped)
    assert crop_run(path, tmp_path / "pasted", "--crop_box", str(box)) == 0
    assert run.main([*MODEL, "--source_image", str(cropped), "--driving_video", DRIVING, "--relative", "--adapt",
                     "--frames", FRAMES, "--output", f"{tmp_path / 'plain'}/"]) == 0
    feather = round(faces.FEATHER_FRACTION * 256)
    inner = (slice(None), slice(box.y + feather, box.bottom - feather), slice(box.x + feather, box.right - feather))
    pasted = read_png_frames(tmp_path / "pasted")[inner].astype(int)
    plain = read_png_frames(tmp_path / "plain")[:, feather:-feather, feather:-feather].astype(int)
    difference = np.abs(pasted - plain)
    print(f"pasted centre vs plain run: {np.mean(difference == 0):.5%} equal, max {difference.max()}")
    assert np.mean(difference == 0) >= 0.999 and difference.max() <= 1


def test_cropped_driving_video_is_followed_at_its_face(tmp_path):
    # the example clip placed in a 640x360 frame: the crop finds it and the output is the model's size
    canvas = np.full((360, 640, 3), 30, np.uint8)
    with media.open_video(DRIVING) as video:
        frames = []
        for frame in video:
            placed = canvas.copy()
            placed[60:316, 300:556] = frame[..., :3]
            frames.append(placed)
    wide = tmp_path / "wide.mp4"
    with media.FrameWriter(wide, 25) as writer:
        for frame in frames[:12]:
            writer.write(frame)
    assert run.main([*MODEL, "--source_image", str(REPO / "example" / "source.png"), "--driving_video", str(wide),
                     "--crop", "driving", "--relative", "--frames", FRAMES, "--output", f"{tmp_path / 'out'}/"]) == 0
    assert read_png_frames(tmp_path / "out").shape == (int(FRAMES), 256, 256, 3)


def test_photo_without_a_face_is_one_line_naming_crop_box(tmp_path, capsys):
    plain = tmp_path / "wall.png"
    Image.fromarray(np.full((300, 400, 3), 120, np.uint8)).save(plain)
    code = crop_run(plain, tmp_path / "out", "--crop", "source")
    assert_one_line_error(capsys, code, "wall.png", "no face", "--crop_box")
    assert not (tmp_path / "out").exists()


def test_face_index_out_of_range_is_one_line(photo, tmp_path, capsys):
    path, _ = photo
    code = crop_run(path, tmp_path / "out", "--crop", "source", "--face", "7")
    assert_one_line_error(capsys, code, "--face")
    assert not (tmp_path / "out").exists()


def test_crop_is_refused_for_a_model_of_another_domain(tmp_path, capsys):
    fx = load_fixture("zero_order")
    config = tmp_path / "taichi-256.yaml"
    config.write_text(yaml.safe_dump(yaml.safe_load(fx.config_path.read_text())))
    code = run.main(["--config", str(config), "--checkpoint", str(fx.checkpoint()), "--source_image",
                     str(fx.dir / "source.png"), "--driving_video", str(fx.dir / "driving.mp4"), "--crop",
                     "--output", str(tmp_path / "x.mp4")])
    assert_one_line_error(capsys, code, "not a face model", "--crop_box")
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("flags, said", [
    (["--face", "0"], "--face picks a face for --crop"),
    (["--crop", "driving", "--crop_box", "1,2,30,30"], "--crop_box crops the source photo"),
    (["--crop_box", "1,2,-3,4"], "--crop_box"),
    (["--datamode", "dataset", "--crop"], "apply to --datamode file"),
])
def test_face_flags_out_of_place_are_one_line_usage_errors(flags, said, capsys):
    with pytest.raises(SystemExit) as exit_:
        run.parse_args([*MODEL, *flags])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and said in err, err


def test_readme_in_the_wild_commands_run_and_make_the_picture(tmp_path, monkeypatch):
    import shlex
    import subprocess
    import sys

    import wild_gif  # tools/, on sys.path through conftest
    from conftest import readme_commands

    commands = readme_commands("Photos and videos in the wild")
    assert [shlex.split(c)[:2] for c in commands] == [["python", "run.py"], ["python", "crop.py"]]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "example").symlink_to(REPO / "example")
    assert run.main(shlex.split(commands[0])[2:]) == 0
    cropped = subprocess.run([sys.executable, str(REPO / "crop.py"), *shlex.split(commands[1])[2:]],
                             capture_output=True, text=True)
    assert cropped.returncode == 0 and "wrote output/crops/driving_face0.mp4" in cropped.stdout, cropped.stderr
    gif = tmp_path / "wild.gif"
    assert wild_gif.main(["--result", "output/wild.mp4", "--output", str(gif)]) == 0
    # the committed picture is what the tool makes from that run (panels within GIF quantisation)
    import imageio.v3 as iio
    made, committed = iio.imread(gif, index=None)[..., :3], iio.imread(REPO / "docs" / "wild.gif", index=None)[..., :3]
    assert made.shape == committed.shape
    assert np.abs(made.astype(int) - committed.astype(int)).mean() < 2.0


def test_committed_wild_photo_is_what_the_tool_makes():
    import wild_gif

    np.testing.assert_array_equal(wild_gif.make_photo(), np.asarray(Image.open(wild_gif.PHOTO).convert("RGB")))
