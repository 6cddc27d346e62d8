"""faces.py: detection on pictures in the wild, the original's crop geometry and tracks, the streamed
driving crop, paste-back, and the detector's weights never loaded from the working directory.

The "wild" inputs are made here from what the project owns: example/source.png and example/driving.mp4
placed at known places and scales on larger canvases, and scikit-image's astronaut photo, of which
example/source.png is a crop (tests/make_fixtures.py, SCENES['face']). A box found on a canvas, mapped
back through the known placement, is compared with the box found on the picture alone.
"""
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from conftest import (CANVASES, DRIVING, PLACED, REPO, SOURCE, SQUARE, background, box_iou, canvas_picture,
                      driving_frames, map_back, placed_clip)

import faces
import faces_lite
import media
import utils

REFERENCE = json.loads((REPO / "tests" / "fixtures" / "faces" / "crop_reference.json").read_text())


@pytest.fixture(scope="module")
def source_face():
    """The face found on example/source.png alone: the reference every mapped-back box is held to."""
    found = faces.detect_faces(media.decode_image(str(SOURCE)))
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def canvas_faces():
    return {name: faces.detect_faces(canvas_picture(name)) for name in CANVASES}


@pytest.fixture(scope="module")
def clip():
    return driving_frames()


# ----------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------

def test_source_face_is_where_the_example_put_it(source_face):
    # example/source.png is the astronaut's head; the box must hold both eyes, nose and mouth.
    x, y, w, h = source_face.box
    assert source_face.confidence > 0.99
    for px, py in source_face.landmarks.values():
        assert x < px < x + w and y < py < y + h


@pytest.mark.parametrize("name", sorted(CANVASES))
def test_each_pasted_copy_is_one_face_at_its_place(name, canvas_faces, source_face):
    found = canvas_faces[name]
    placements = CANVASES[name][2]
    assert len(found) == len(placements), found
    for face, (x, y, scale) in zip(found, placements):  # both left to right
        overlap = box_iou(map_back(face.box, x, y, scale), source_face.box)
        print(f"{name} copy at ({x}, {y}) x{scale}: box {tuple(round(v, 1) for v in face.box)}, "
              f"IoU {overlap:.3f} with the source's")
        assert overlap >= 0.8


def test_small_face_needs_full_resolution_and_warns(canvas_faces):
    # The 0.3 copy survives because photos are searched at full resolution; at the original's 640 px
    # it is lost. Its crop is under a quarter of the model's input: a SmallFaceWarning.
    canvas = canvas_picture("landscape 1920x1080")
    at_640 = faces.detect_faces(canvas, max_side=faces.VIDEO_MAX_SIDE)
    assert len(at_640) == 2
    small = canvas_faces["landscape 1920x1080"][1]
    with pytest.warns(faces.SmallFaceWarning, match="under a quarter"):
        assert faces.warn_if_small(faces.crop_box(small.box, SQUARE), SQUARE, "group.jpg face 1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        big = canvas_faces["landscape 1920x1080"][0]
        assert not faces.warn_if_small(faces.crop_box(big.box, SQUARE), SQUARE, "group.jpg face 0")


def test_astronaut_photo_face_maps_onto_the_example_crop(source_face):
    # tests/make_fixtures.py renders example/source.png from the astronaut's 250x250 square centred
    # on (225, 135) at 256x256: picture x -> (x - 100) * 256/250 - 0.5, y -> (y - 10) * 256/250 - 0.5.
    found = faces.detect_faces(skdata.astronaut())
    assert len(found) == 1, found
    x, y, w, h = found[0].box
    zoom = 256 / 250
    in_source = ((x - 100) * zoom - 0.5, (y - 10) * zoom - 0.5, w * zoom, h * zoom)
    overlap = box_iou(in_source, source_face.box)
    print(f"astronaut: box {tuple(round(v, 1) for v in found[0].box)}, IoU {overlap:.3f} with the source's")
    assert overlap >= 0.8


@pytest.mark.parametrize("kind", ["plain", "noise"])
def test_no_face_is_a_one_line_error_naming_the_file(kind):
    if kind == "plain":
        picture = np.full((480, 640, 3), 128, np.uint8)
    else:
        picture = np.random.default_rng(7).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    assert faces.detect_faces(picture) == []
    with pytest.raises(utils.UserError) as raised:
        faces.find_faces(picture, "holiday.jpg")
    message = str(raised.value)
    assert "\n" not in message and "holiday.jpg" in message and "--crop_box X,Y,W,H" in message


def test_tiny_picture_has_no_face():
    assert faces.detect_faces(np.zeros((15, 300, 3), np.uint8)) == []  # under MTCNN's 20 px face


# ----------------------------------------------------------------------------
# Detection on LiteRT (faces_lite): the same faces as mtcnn's
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def litert_files(tmp_path_factory):
    """build.py's three detector files, written into a fresh export root."""
    import build

    root = tmp_path_factory.mktemp("detector")
    assert len(build.export_face_detector(str(root))) == 3
    paths, why_not = faces_lite.find_detector(str(root))
    assert why_not is None
    return paths


def detected_on_litert(paths, picture, **options):
    with faces.litert_detector(paths):
        return faces.detect_faces(picture, **options)


WILD_PICTURES = {
    **{name: (lambda name=name: canvas_picture(name), {}) for name in CANVASES},
    "astronaut": (skdata.astronaut, {}),
    # the placed clip's first frame as run.py --crop searches a driving video: downscaled to 640 px
    "clip 1280x720": (lambda: next(placed_clip(driving_frames()[:1])), {"max_side": faces.VIDEO_MAX_SIDE}),
    "noise": (lambda: np.random.default_rng(7).integers(0, 256, (720, 1280, 3), dtype=np.uint8), {}),
}


@pytest.mark.parametrize("name", sorted(WILD_PICTURES))
def test_litert_detector_finds_mtcnns_faces(name, litert_files):
    # Measured: boxes and landmarks within 0.0011 px of mtcnn's, confidences within 1e-4 (the two run the
    # same networks; only float rounding differs). A box shifted by a tenth of a pixel, a landmark out of
    # order or a stage's threshold or suppression changed breaks these.
    make, options = WILD_PICTURES[name]
    picture = make()
    expected = faces.detect_faces(picture, **options)
    found = detected_on_litert(litert_files, picture, **options)
    assert len(found) == len(expected), (found, expected)
    assert len(expected) > 0 or name == "noise"
    for ours, theirs in zip(found, expected):
        np.testing.assert_allclose(ours.box, theirs.box, atol=0.05)
        assert abs(ours.confidence - theirs.confidence) < 1e-3
        assert list(ours.landmarks) == list(theirs.landmarks)
        np.testing.assert_allclose(list(ours.landmarks.values()), list(theirs.landmarks.values()), atol=0.05)


def test_litert_detector_built_from_other_mtcnn_weights_is_not_used(litert_files, tmp_path):
    # build.py records the digest of the mtcnn weights it converted; another package version's files are stale
    folder = tmp_path / "tflite"
    folder.mkdir()
    for path in litert_files:
        shutil.copy(path, folder)
        shutil.copy(Path(path).with_suffix(".json"), folder)
    assert faces_lite.find_detector(str(tmp_path))[0] is not None
    description = json.loads((folder / "face-rnet.json").read_text())
    (folder / "face-rnet.json").write_text(json.dumps(dict(description, weights="0" * 64)))
    paths, why_not = faces_lite.find_detector(str(tmp_path))
    assert paths is None and "face-rnet.tflite: built from other mtcnn weights" in why_not


def test_litert_pyramid_levels_are_tensorflows_area_resize():
    # mtcnn resizes every pyramid level with tf.image.resize(method="area") at its float size (truncated)
    import tensorflow as tf

    image = faces_lite.normalize(np.random.default_rng(3).integers(0, 256, (97, 131, 3), dtype=np.uint8))
    pyramid = faces_lite.AreaPyramid(image)
    for scale in faces_lite.pyramid_scales(97, 131):
        expected = tf.image.resize(image[np.newaxis], np.asarray([97, 131]) * scale, method="area")[0].numpy()
        level = pyramid.level(scale)
        assert level.shape == expected.shape
        np.testing.assert_allclose(level, expected, atol=2e-5)


def test_litert_crops_are_tensorflows_crop_and_resize():
    # R- and O-Net's inputs: tf.image.crop_and_resize at the boxes / picture size, 0 outside the picture
    import tensorflow as tf

    image = faces_lite.normalize(np.random.default_rng(4).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    boxes = np.array([[10.3, 5.7, 40.1, 35.5], [-8.0, -3.5, 20.0, 24.5], [60.2, 40.0, 95.0, 74.8]])
    expected = tf.image.crop_and_resize(image[np.newaxis], (boxes[:, [1, 0, 3, 2]] / [60, 80, 60, 80]).astype(np.float32),
                                        np.zeros(3, np.int32), (24, 24)).numpy()
    np.testing.assert_allclose(faces_lite.crops(image, boxes, 24), expected, atol=2e-5)


def test_photo_is_read_upright_by_its_exif_orientation(tmp_path):
    # Orientation 6: the stored pixels must be turned 90 degrees clockwise to be seen upright.
    upright = media.decode_image(str(SOURCE))[:, :200]  # not square, so a wrong turn shows in the shape
    stored = Image.fromarray(np.rot90(upright, k=1).copy())
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.png"
    stored.save(path, exif=exif)
    np.testing.assert_array_equal(faces.read_photo_upright(path), upright)


def test_unreadable_photo_is_a_one_line_error(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(utils.UserError) as raised:
        faces.read_photo_upright(path)
    assert str(raised.value).startswith(f"{path}: not a readable image") and "\n" not in str(raised.value)


# ----------------------------------------------------------------------------
# Crop geometry
# ----------------------------------------------------------------------------

def clamped(box, frame_hw):
    """A crop clamped to the frame as the original's compute_bbox does, as (x, y, w, h)."""
    height, width = frame_hw
    left, top = max(0, box.x), max(0, box.y)
    right, bottom = min(box.right, width), min(box.bottom, height)
    return [left, top, right - left, bottom - top]


@pytest.mark.parametrize("case", REFERENCE["crop_boxes"], ids=lambda case: case["name"])
def test_crop_box_is_the_originals_compute_bbox(case):
    # Expected numbers: the original's compute_bbox, run by tests/make_face_fixtures.py.
    left, top, right, bottom = case["box_ltrb"]
    box = faces.crop_box((left, top, right - left, bottom - top), SQUARE, case["increase"])
    print(f"{case['name']}: ours {box}, original {case['original_unclamped_xywh']} unclamped, "
          f"{case['original_clamped_xywh']} clamped")
    assert [box.x, box.y, box.w, box.h] == case["original_unclamped_xywh"]
    assert clamped(box, case["frame_hw"]) == case["original_clamped_xywh"]


@pytest.mark.parametrize("frame_shape, face_box, expected", [
    # increase 0.25 and aspects 2 and 1/2 keep the arithmetic exact, so the numbers are the formula's.
    # 2:1 frame: the width grows to twice the (1 + 2 * 0.25) * height = 300, the height by 0.25 a side.
    ((256, 512, 3), (100, 100, 80, 100), (-10, 75, 300, 150)),
    # 1:2 frame: the height grows to twice the enlarged width, 2 * 1.5 * 80 = 240.
    ((512, 256, 3), (100, 100, 80, 60), (80, 10, 120, 240)),
    # 2:1 frame and a face wider than that already: only the height grows past 0.25 a side.
    ((256, 512, 3), (50, 50, 400, 100), (-50, -50, 600, 300)),
])
def test_crop_box_takes_the_aspect_of_frame_shape(frame_shape, face_box, expected):
    box = faces.crop_box(face_box, frame_shape, increase=0.25)
    assert (box.x, box.y, box.w, box.h) == expected
    assert box.w * frame_shape[0] == box.h * frame_shape[1]


def test_crop_aspect_stays_within_a_pixel_of_the_models():
    rng = np.random.default_rng(3)
    for frame_shape in ((256, 256, 3), (256, 384, 3), (384, 256, 3)):
        aspect = frame_shape[1] / frame_shape[0]
        for x, y, w, h in rng.uniform((-50, -50, 20, 20), (600, 400, 400, 400), (50, 4)):
            box = faces.crop_box((x, y, w, h), frame_shape)
            assert abs(box.w - aspect * box.h) <= 1 + aspect


def test_cut_pads_with_the_pictures_edge_pixels():
    picture = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    crop = faces.cut(picture, faces.CropBox(-2, -1, 9, 7))
    assert crop.shape == (7, 9, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop[1:5, 2:7], picture)  # the picture itself, unmoved
    np.testing.assert_array_equal(crop[0], crop[1])  # above: the top row repeated
    np.testing.assert_array_equal(crop[5:], np.broadcast_to(picture[-1:, [0, 0, 0, 1, 2, 3, 4, 4, 4]], (2, 9, 3)))
    np.testing.assert_array_equal(crop[:, 0], crop[:, 2])  # left: the left column repeated
    far = faces.cut(picture, faces.CropBox(10, 10, 3, 2))  # wholly outside: the nearest corner
    assert (far == picture[-1, -1]).all()


def test_a_crop_is_preprocessed_as_the_same_crop_saved_and_read_as_a_source(tmp_path):
    # run.py reads a cropped source file with media.read_image; a crop taken in memory must give the
    # model the very same float32 input.
    photo = canvas_picture("portrait 1080x1920")
    box = faces.CropBox(60, 250, 600, 600)
    path = tmp_path / "crop.png"
    Image.fromarray(faces.cut(photo, box)).save(path)
    ours = faces.crop_and_resize(photo, box, SQUARE)
    assert ours.dtype == np.float32 and ours.shape == SQUARE
    np.testing.assert_array_equal(ours, media.read_image(str(path), SQUARE))


@pytest.mark.parametrize("text, expected", [("10,20,300,400", (10, 20, 300, 400)), ("-5, -6, 7, 8", (-5, -6, 7, 8))])
def test_parse_crop_box(text, expected):
    box = faces.parse_crop_box(text)
    assert (box.x, box.y, box.w, box.h) == expected and str(box) == text.replace(" ", "")


@pytest.mark.parametrize("text", ["10,20,300", "a,b,c,d", "1,2,0,5", "1,2,3,-4", ""])
def test_parse_crop_box_refuses_bad_boxes(text):
    with pytest.raises(ValueError):
        faces.parse_crop_box(text)


# ----------------------------------------------------------------------------
# Tracks
# ----------------------------------------------------------------------------

def reference_detections():
    frames = REFERENCE["tracks"]["frames_ltrb"]
    return [(index, [(l, t, r - l, b - t) for l, t, r, b in boxes]) for index, boxes in enumerate(frames)]


@pytest.mark.parametrize("run", REFERENCE["tracks"]["runs"],
                         ids=lambda run: f"iou{run['iou_with_initial']}-min{run['min_frames']}")
def test_tracks_are_the_originals(run):
    # Expected: the original's process_video on the same hand-made detections (ffmpeg commands parsed
    # back by tests/make_face_fixtures.py), with its own min_frames rule (end - start > min_frames).
    fps = REFERENCE["tracks"]["fps"]
    found = faces.tracks(reference_detections(), iou_with_initial=run["iou_with_initial"])
    ours = sorted((track.start, track.end - track.start, clamped(faces.crop_box(track.box, SQUARE),
                                                                 REFERENCE["tracks"]["frame_hw"]))
                  for track in found if track.end - track.start > run["min_frames"])
    original = sorted((round(command["start_s"] * fps), round(command["duration_s"] * fps), command["crop_xywh"])
                      for command in run["commands"])
    assert ours == original


def test_a_missed_frame_holds_the_track_in_crop_mode():
    # Frame 8 of the reference detections finds nothing: the original ends every track there, the
    # hold_on_miss rule (run.py --crop) keeps them, so the first face's track resumes after it.
    ended = faces.tracks(reference_detections())
    held = faces.tracks(reference_detections(), hold_on_miss=True)
    assert [(t.start, t.end) for t in ended if t.start == 0] == [(0, 7), (0, 7)]
    first_face = [t for t in held if t.start == 0 and t.first[0] < 200][0]
    assert first_face.end > 8 and first_face.hits > 8


def test_iou_uses_the_originals_pixel_convention():
    # (0, 0, 9, 9) covers 10x10 pixels in the original's convention; shifted by 5 they share 5x10.
    assert faces.iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(50 / 150)


# ----------------------------------------------------------------------------
# The driving video: its crop box, and the crop as a stream
# ----------------------------------------------------------------------------

def test_driving_crop_on_a_placed_clip_maps_back_onto_the_clips_own(clip):
    own, _, own_tracks = faces.driving_crop_box(clip, SQUARE, "driving.mp4")
    placed, _, placed_tracks = faces.driving_crop_box(placed_clip(clip), SQUARE, "placed.mp4")
    assert len(own_tracks) == 1 and len(placed_tracks) == 1
    x, y, scale = PLACED
    mapped = map_back((placed.x, placed.y, placed.w, placed.h), x, y, scale)
    worst = max(abs(a - b) for a, b in zip(mapped, (own.x, own.y, own.w, own.h))) / own.w
    print(f"driving crop: own {own}, placed {placed} -> {tuple(round(v, 1) for v in mapped)}, "
          f"worst difference {100 * worst:.2f}% of the side")
    assert worst <= 0.03


def test_a_slowly_drifting_clip_is_one_track_over_every_searched_frame(clip):
    every = faces.DETECT_EVERY
    searched = faces.detect_video(placed_clip(clip, drift=(1.5, 0.5)), every=every)
    assert [index for index, _ in searched] == list(range(0, len(clip), every))
    found = faces.tracks(searched)  # the original's rule: any searched frame without it would end it
    assert len(found) == 1
    track = found[0]
    assert (track.start, track.end, track.hits) == (0, searched[-1][0], len(searched))
    left, top, right, bottom = track.union  # the union holds the first and the last placed face
    for index, faces_found in (searched[0], searched[-1]):
        fx, fy, fw, fh = faces_found[0].box
        assert left <= fx and top <= fy and fx + fw <= right and fy + fh <= bottom


def test_a_driving_video_is_searched_every_fifth_of_a_second_never_more_often_than_every_fifth_frame():
    # 0.2 s apart: every 6th frame at 30 fps, every 12th at 60; never denser than the 10% budget's 5th frame
    assert [faces.every_kth_frame(fps) for fps in (25.0, 30.0, 60.0, 12.0, None, float("nan"))] == [5, 6, 12, 5, 5, 5]


def test_no_face_in_a_driving_video_is_a_one_line_error():
    plain = (np.full((120, 160, 3), 100, np.uint8) for _ in range(3))
    with pytest.raises(utils.UserError, match=r"^still.mp4: no face found in the video; .*--driving_crop_box"):
        faces.driving_crop_box(plain, SQUARE, "still.mp4", every=1)


def test_driving_crop_streams_one_frame_at_a_time(clip):
    pulled = []

    def source():
        for index, frame in enumerate(clip):
            pulled.append(index)
            yield frame

    box = faces.CropBox(-20, 10, 200, 200)
    stream = iter(faces.DrivingCrop(source(), box, SQUARE))
    first = next(stream)
    assert pulled == [0]  # nothing read ahead, nothing held
    np.testing.assert_array_equal(first, faces.crop_and_resize(clip[0], box, SQUARE))
    second = next(stream)
    assert pulled == [0, 1] and second.dtype == np.float32 and second.shape == SQUARE


def test_driving_crop_carries_the_videos_timing_and_reopens(tmp_path):
    box = faces.CropBox(30, 20, 180, 180)
    with faces.DrivingCrop(media.open_video(str(DRIVING)), box, SQUARE) as cropped:
        assert cropped.fps == 25.0 and cropped.size == (180, 180) and cropped.media_path == str(DRIVING)
        first_pass = sum(1 for _ in cropped)
        assert first_pass == 40 and sum(1 for _ in cropped) == 40


# ----------------------------------------------------------------------------
# Paste-back
# ----------------------------------------------------------------------------

def outside(box, shape):
    """Boolean mask of the photo's pixels outside a pasted box."""
    mask = np.ones(shape[:2], bool)
    mask[max(box.y, 0):max(box.bottom, 0), max(box.x, 0):max(box.right, 0)] = False
    return mask


@pytest.mark.parametrize("box", [faces.CropBox(100, 60, 150, 150), faces.CropBox(-40, 200, 160, 160),
                                 faces.CropBox(300, -30, 120, 120)])
def test_paste_back_leaves_every_pixel_outside_the_box_bit_identical(box):
    photo = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    animated = np.random.default_rng(2).random((256, 256, 3), dtype=np.float32)
    result = faces.paste_back(photo, animated, box)
    keep = outside(box, photo.shape)
    np.testing.assert_array_equal(result[keep], photo[keep])
    assert not np.array_equal(result[~keep], photo[~keep])


def test_paste_back_has_no_seam():
    # A flat photo and a flat crop 100 levels brighter: pasted hard that is a step of 100 at the
    # border; feathered, no two neighbouring pixels differ by more than the ramp's steepest step.
    photo = np.full((300, 400, 3), 100, np.uint8)
    animated = np.full((256, 256, 3), 200 / 255, np.float32)
    box = faces.CropBox(100, 50, 192, 192)
    feather = round(faces.FEATHER_FRACTION * 192)
    result = faces.paste_back(photo, animated, box).astype(int)
    steepest = 100 * 1.5 / feather + 1  # smoothstep's slope is at most 1.5 / feather, plus rounding
    seam = max(np.abs(np.diff(result, axis=0)).max(), np.abs(np.diff(result, axis=1)).max())
    hard = faces.paste_back(photo, animated, box, feather=0).astype(int)
    print(f"paste-back: largest step between neighbours {seam} feathered ({feather} px), "
          f"{np.abs(np.diff(hard, axis=1)).max()} hard")
    assert seam <= steepest
    assert result[50 + 96, 100 + 96, 0] == 200  # the middle is the animated crop's


def test_pasting_the_unchanged_crop_gives_the_photo_back():
    photo = canvas_picture("landscape 1920x1080")
    box = faces.CropBox(250, 150, 500, 500)
    np.testing.assert_array_equal(faces.paste_back(photo, faces.cut(photo, box), box), photo)


def test_paste_back_does_not_ramp_at_the_photos_edge():
    # The box runs past the left edge: the photo's first column is wholly the animated crop's.
    photo = np.zeros((200, 200, 3), np.uint8)
    white = np.ones((64, 64, 3), np.float32)
    result = faces.paste_back(photo, white, faces.CropBox(-30, 40, 120, 120))
    assert (result[100, 0] == 255).all() and (result[100, 70] == 255).all()
    assert 0 < result[100, 85, 0] < 255  # ... but its right side, inside the photo, ramps (10 px)


def test_paste_all_pastes_every_face_and_nothing_else():
    photo = background(400, 600)
    boxes = [faces.CropBox(20, 30, 150, 150), faces.CropBox(350, 200, 180, 180)]
    crops = [np.full((256, 256, 3), value, np.float32) for value in (0.0, 1.0)]
    result = faces.paste_all(photo, list(zip(crops, boxes)))
    keep = outside(boxes[0], photo.shape) & outside(boxes[1], photo.shape)
    np.testing.assert_array_equal(result[keep], photo[keep])
    assert (result[105, 95] == 0).all() and (result[290, 440] == 255).all()


# ----------------------------------------------------------------------------
# Safety: the detector's weights come from its package, never the working directory
# ----------------------------------------------------------------------------

class _Planted:
    """Unpickling this creates the file it names: the stand-in for code a planted pickle would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_weights_planted_in_the_working_directory_are_never_loaded(tmp_path, monkeypatch):
    import joblib
    from mtcnn.utils.tensorflow import load_weights

    marker = tmp_path / "planted_pickle_ran"
    for name in ("pnet.lz4", "rnet.lz4", "onet.lz4"):
        joblib.dump(_Planted(marker), tmp_path / name)
    monkeypatch.chdir(tmp_path)

    detector = faces.build_detector()  # a fresh one, built with the planted files in the cwd
    assert not marker.exists()
    assert all(Path(path).is_absolute() and Path(path).parent != tmp_path for path in faces.weight_paths())
    assert len(detector.detect_faces(media.decode_image(str(SOURCE)))) == 1

    load_weights("pnet.lz4")  # the package's own lookup by bare name does run the planted file
    assert marker.exists()
