"""Crop the faces out of a video or a photo as the model was trained: the original crop-video.py's job,
done for real (it only printed ffmpeg commands, and needed PyTorch and face-alignment).

    python crop.py --inp talk.mp4 --min_frames 50            # one clip per face track, in output/
    python crop.py --inp group.jpg --image_shape 256,256     # one PNG per face

A video: faces are detected on every --detect_every-th frame (default every frame, as the original)
downscaled to 640 px, grouped into tracks by the original's rules (a detection stays in a track while
its IoU with the track's first box is > --iou_with_initial; a searched frame without such a detection
ends the track), and every track spanning at least --min_frames frames is written as
DIR/NAME_faceI.mp4: its frames cropped to one fixed box -- the track's union box enlarged by
--increase as the original's compute_bbox -- and resized to --image_shape. A photo (upright by its
EXIF orientation): DIR/NAME_faceI.png per face. Crops reaching past the picture's edge are padded with
its edge pixels, not clamped, so the face is never stretched. --crop_box X,Y,W,H crops by hand instead
(no detector; any domain). Faces are numbered as run.py --face / --driving_face number them.

Prints one line per file written (path, box, frames and seconds). Bad input ends with one line on
stderr and exit code 1 (usage errors: 2), and nothing is written; files appear only when complete.
"""
import argparse
import contextlib
import os
import sys
import warnings

import faces  # cheap: TensorFlow loads only when the detector is first used
import media
import utils

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def parse_args(argv=None):
    parser = utils.ArgumentParser(description="Crop the faces of a video or photo as the model was trained")
    parser.add_argument("--inp", required=True, help="input video, or photo (.png, .jpg, ...)")
    parser.add_argument("--image_shape", default=(256, 256), type=_shape,
                        help="HEIGHT,WIDTH of the crops written (default 256,256); the crop has its aspect")
    parser.add_argument("--increase", default=0.1, type=_non_negative,
                        help="enlarge the face box by this fraction on every side (default 0.1)")
    parser.add_argument("--iou_with_initial", default=0.25, type=_fraction,
                        help="a face stays in a track while its IoU with the track's first box is above this")
    parser.add_argument("--min_frames", default=150, type=_positive_int,
                        help="write only tracks spanning at least this many frames (default 150)")
    parser.add_argument("--detect_every", default=1, type=_positive_int,
                        help="search every K-th frame only (default 1, as the original; faster with more)")
    parser.add_argument("--crop_box", type=faces.parse_crop_box, default=None,
                        help="X,Y,W,H: crop this box by hand (no detector), every frame of a video")
    parser.add_argument("--outdir", default="output", help="folder for the crops (default output/)")
    return parser.parse_args(argv)


def _shape(text):
    try:
        height, width = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HEIGHT,WIDTH, e.g. 256,256") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: height and width must be positive")
    return height, width


def _non_negative(text):
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or more")
    return value


def _fraction(text):
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 0 and below 1")
    return value


def _number(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r}: not a finite number")
    return value


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 1 or more")
    return value


# ----------------------------------------------------------------------------
# Checks before TensorFlow loads, then the work
# ----------------------------------------------------------------------------

def is_photo(path):
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def check_outdir(outdir):
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise utils.UserError(f"--outdir {outdir}: exists and is not a folder")


def output_path(args, index, extension):
    stem = os.path.splitext(os.path.basename(args.inp))[0]
    return os.path.join(args.outdir, f"{stem}_face{index}{extension}")


def crop_photo(args):
    """One PNG per face (or for --crop_box), written together: all or none."""
    photo = faces.read_photo_upright(args.inp)  # before the detector: an unreadable file fails fast
    frame_shape = (*args.image_shape, 3)
    if args.crop_box is not None:
        crops = [(0, args.crop_box, "by hand")]
    else:
        crops = [(index, box, f"confidence {face.confidence:.2f}") for index, (face, box)
                 in enumerate(faces.source_crops(photo, frame_shape, args.inp, args.increase,
                                                 hint="--crop_box X,Y,W,H"))]
    written = []
    with _all_or_none() as temps:
        for index, box, how in crops:
            path = output_path(args, index, ".png")
            image = media.to_uint8(faces.crop_and_resize(photo, box, frame_shape))
            temps.append((_write_png_temp(path, image), path))
            written.append(f"wrote {path}: face {index}, box {box} ({how})")
    for line in written:
        print(line)


@contextlib.contextmanager
def _all_or_none():
    """Collects (temporary, final) paths; renames them all when the block succeeds, else deletes them."""
    temps = []
    try:
        yield temps
    except BaseException:
        for temp, _ in temps:
            if os.path.exists(temp):
                os.remove(temp)
        raise
    for temp, final in temps:
        try:
            os.replace(temp, final)
        except OSError as err:
            raise utils.UserError(f"{final}: cannot write it ({utils.os_reason(err)})") from err


def _write_png_temp(path, image):
    from PIL import Image

    utils.make_parent(path)
    temp = utils.make_temp(path, is_dir=False)
    try:
        Image.fromarray(image).save(temp, format="PNG")
    except OSError as err:
        os.remove(temp)
        raise utils.UserError(f"{path}: cannot write it ({utils.os_reason(err)})") from err
    return temp


def crop_video(args):
    """One clip per face track spanning at least --min_frames frames (or one of all frames for --crop_box)."""
    frame_shape = (*args.image_shape, 3)
    with media.open_video(args.inp) as video:
        if args.crop_box is not None:
            jobs = [(0, args.crop_box, 0, None)]
        else:
            jobs = _track_jobs(args, video, frame_shape)
        counts = _write_clips(args, video, jobs, frame_shape)
        for (index, box, start, _), (path, count) in zip(jobs, counts):
            end = start + count - 1
            print(f"wrote {path}: face {index}, box {box}, frames {start}-{end} "
                  f"({start / video.fps:.2f}-{(end + 1) / video.fps:.2f} s)")


def _track_jobs(args, video, frame_shape):
    """[(track number, CropBox, first frame, last frame)] for the tracks long enough to write."""
    found = faces.tracks(faces.detect_video(video, every=args.detect_every),
                         iou_with_initial=args.iou_with_initial, hold_on_miss=False)
    if not found:
        raise utils.UserError(f"{args.inp}: no face found in the video; give the crop by hand with --crop_box X,Y,W,H")
    kept = [(index, track) for index, track in enumerate(found) if track.frames >= args.min_frames]
    if not kept:
        longest = faces.longest_track(found)
        raise utils.UserError(f"{args.inp}: no face track spans --min_frames {args.min_frames} frames (the longest: "
                              f"{longest.frames}, frames {longest.start}-{longest.end}); lower --min_frames")
    skipped = len(found) - len(kept)
    if skipped:
        print(f"note: {skipped} face track{'s' if skipped != 1 else ''} shorter than --min_frames "
              f"{args.min_frames} not written", file=sys.stderr)
    jobs = []
    for index, track in kept:
        box = faces.crop_box(track.box, frame_shape, args.increase)
        faces.warn_if_small(box, frame_shape, f"{args.inp} face {index}")
        jobs.append((index, box, track.start, track.end))
    return jobs


def _write_clips(args, video, jobs, frame_shape):
    """Stream the video once more, each frame to the writers whose range holds it; all commit or none."""
    last = None if any(end is None for _, _, _, end in jobs) else max(end for _, _, _, end in jobs)
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(media.FrameWriter(output_path(args, index, ".mp4"), video.fps))
                   for index, _, _, _ in jobs]
        for frame_index, frame in enumerate(video):
            if last is not None and frame_index > last:
                break
            for writer, (_, box, start, end) in zip(writers, jobs):
                if start <= frame_index and (end is None or frame_index <= end):
                    writer.write(media.to_uint8(faces.crop_and_resize(frame, box, frame_shape)))
    return [(writer.path, writer.frames_written) for writer in writers]


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr, flush=True)


def main(argv=None):
    args = parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            utils.require_file(args.inp, "a video or photo")
            check_outdir(args.outdir)
            if is_photo(args.inp):
                crop_photo(args)
            else:
                crop_video(args)
    except KeyboardInterrupt:
        print("interrupted: no output written", file=sys.stderr)
        return 130
    except utils.UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
