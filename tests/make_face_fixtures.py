"""Reference numbers for the face-crop geometry, made by the original crop-video.py itself.

tests/test_faces.py checks faces.crop_box and faces.tracks against what the original computes, so the
expected numbers must come from the original's code, not from our reading of it. This script imports
`crop-video.py` at run time from $FOMM_ORIGINAL (a checkout of AliaksandrSiarohin/first-order-model;
none of its code lives in this repository) with `face_alignment` replaced by a stub: the stub's face
detector returns hand-made boxes instead of running S3FD, so no weights are needed and the boxes are
known exactly. It writes tests/fixtures/faces/crop_reference.json:

* "crop_boxes": hand-made face boxes (left, top, right, bottom) with the original's `compute_bbox`
  crop for them, both as the original prints it (clamped to the video frame) and unclamped: the box
  shifted far into a huge frame, so nothing is clamped, and shifted back. Shifting by an integer
  turns the original's int() (truncation toward zero) into floor() for negative coordinates, which is
  what faces.crop_box does so that a box crossing the picture's edge keeps its size.
* "tracks": hand-made detections per frame run through the original's `process_video` (its track
  building, its `min_frames` filter and its ffmpeg crop commands), parsed back into numbers.

Usage (from the repository root):

    FOMM_ORIGINAL=/path/to/first-order-model python tests/make_face_fixtures.py
"""
import importlib.util
import json
import os
import re
import sys
import types
from argparse import Namespace
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "fixtures" / "faces" / "crop_reference.json"

# Far enough that every hand-made box, however enlarged, stays at positive coordinates.
OFFSET = 100000
HUGE = (10 * OFFSET, 10 * OFFSET, 3)

# (name, (left, top, right, bottom), video frame (height, width), increase). Coordinates are integers
# or binary fractions, so (x, y, w, h) -> (x, y, x + w, y + h) round-trips exactly in float64.
CROP_CASES = [
    ("tall face, inside", (500, 200, 600, 330), (720, 1280), 0.1),
    ("wide face, inside", (300, 300, 460, 400), (720, 1280), 0.1),
    ("square face, inside", (640, 360, 740, 460), (720, 1280), 0.1),
    ("fractional box", (123.25, 87.5, 201.75, 190.125), (720, 1280), 0.1),
    ("no increase", (500, 200, 600, 330), (720, 1280), 0.0),
    ("large increase", (500, 200, 600, 330), (720, 1280), 0.3),
    ("crosses the left edge", (4, 250, 124, 400), (720, 1280), 0.1),
    ("crosses the top edge", (700, 3, 790, 110), (720, 1280), 0.1),
    ("crosses the bottom-right corner", (1200, 640, 1270, 715), (720, 1280), 0.1),
    ("larger than the frame", (20, 10, 380, 470), (480, 400), 0.1),
    ("negative corner (detector overshoot)", (-6.5, -10.25, 80, 105), (360, 640), 0.1),
    ("tiny face", (300, 200, 316, 221), (360, 640), 0.1),
]

FPS = 25.0
FRAME_HW = (360, 640)  # no larger than 640 px, so extract_bbox hands the stub's boxes back unscaled


def _track_frames():
    """Hand-made detections per frame (left, top, right, bottom), exercising every rule of the original:
    a face that stays, a second face, a frame with no face (which ends every track), a face drifting
    until its IoU with the track's first box falls under iou_with_initial, and a short-lived face."""
    frames = []
    for i in range(8):  # A jitters in place, B stays; C appears for frames 3-4 only
        boxes = [(100 + i % 3, 80 - i % 2, 180 + i % 3, 180 + i % 2), (400, 100, 470, 190)]
        if i in (3, 4):
            boxes.append((250, 250, 290, 300))
        frames.append(boxes)
    frames.append([])  # frame 8: nothing found
    for i in range(9, 24):  # A again, drifting right 6 px a frame; B back from frame 12
        shift = 6 * (i - 9)
        boxes = [(100 + shift, 80, 180 + shift, 180)]
        if i >= 12:
            boxes.append((401, 101, 471, 189))
        frames.append(boxes)
    return frames


def load_original(root):
    """crop-video.py as a module, with face_alignment stubbed (it is only used for its detector)."""
    stub = types.ModuleType("face_alignment")
    stub.LandmarksType = types.SimpleNamespace(_2D="2D")
    stub.FaceAlignment = None  # set per run by run_process_video
    sys.modules["face_alignment"] = stub
    spec = importlib.util.spec_from_file_location("crop_video_original", os.path.join(root, "crop-video.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_command(command):
    """The original's ffmpeg command -> (start seconds, duration seconds, left, top, width, height)."""
    match = re.search(r"-ss (\S+) -t (\S+) -filter:v \"crop=(\d+):(\d+):(\d+):(\d+),", command)
    start, duration, width, height, left, top = match.groups()
    return float(start), float(duration), int(left), int(top), int(width), int(height)


def crop_references(original):
    cases = []
    for name, box, (height, width), increase in CROP_CASES:
        clamped = original.compute_bbox(0, 1, FPS, box, (height, width, 3), "in.mp4", (256, 256), increase)
        shifted = tuple(value + OFFSET for value in box)
        unclamped = original.compute_bbox(0, 1, FPS, shifted, HUGE, "in.mp4", (256, 256), increase)
        _, _, left, top, crop_width, crop_height = parse_command(clamped)
        _, _, far_left, far_top, far_width, far_height = parse_command(unclamped)
        cases.append({
            "name": name, "box_ltrb": list(box), "frame_hw": [height, width], "increase": increase,
            "original_clamped_xywh": [left, top, crop_width, crop_height],
            "original_unclamped_xywh": [far_left - OFFSET, far_top - OFFSET, far_width, far_height],
        })
    return cases


def run_process_video(original, frames, iou_with_initial, min_frames):
    """The original's process_video over a fake video whose detector returns `frames`' boxes."""
    calls = iter(frames)

    class FakeDetector:
        def detect_from_image(self, image):
            return [np.array([*box, 0.99]) for box in next(calls)]  # S3FD rows end with a score

    class FakeAlignment:
        def __init__(self, *args, **kwargs):
            self.face_detector = FakeDetector()

    class FakeReader:
        def get_meta_data(self):
            return {"fps": FPS}

        def __iter__(self):
            return iter([np.zeros((*FRAME_HW, 3), np.uint8)] * len(frames))

    sys.modules["face_alignment"].FaceAlignment = FakeAlignment
    original.face_alignment.FaceAlignment = FakeAlignment
    original.imageio = types.SimpleNamespace(get_reader=lambda path: FakeReader())
    original.tqdm = lambda iterable: iterable
    args = Namespace(inp="in.mp4", image_shape=(256, 256), increase=0.1, iou_with_initial=iou_with_initial,
                     min_frames=min_frames, cpu=True)
    return [parse_command(command) for command in original.process_video(args)]


def track_references(original):
    frames = _track_frames()
    runs = []
    for iou_with_initial, min_frames in ((0.25, 0), (0.25, 5), (0.5, 0)):
        commands = run_process_video(original, frames, iou_with_initial, min_frames)
        runs.append({
            "iou_with_initial": iou_with_initial, "min_frames": min_frames,
            "commands": [{"start_s": start, "duration_s": duration, "crop_xywh": [left, top, width, height]}
                         for start, duration, left, top, width, height in commands],
        })
    return {"fps": FPS, "frame_hw": list(FRAME_HW), "increase": 0.1,
            "frames_ltrb": [[list(box) for box in boxes] for boxes in frames], "runs": runs}


def main():
    root = os.environ.get("FOMM_ORIGINAL")
    if not root or not os.path.exists(os.path.join(root, "crop-video.py")):
        sys.exit("Set FOMM_ORIGINAL to a checkout of AliaksandrSiarohin/first-order-model.")
    original = load_original(root)
    reference = {
        "source": "AliaksandrSiarohin/first-order-model crop-video.py (compute_bbox, process_video), "
                  "face_alignment stubbed; made by tests/make_face_fixtures.py",
        "crop_boxes": crop_references(original),
        "tracks": track_references(original),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
