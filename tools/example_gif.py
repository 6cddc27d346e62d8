"""The README's picture of the bundled example: source, driving and result side by side, as a GIF.

    python run.py --config example/demo-256.yaml --checkpoint example/demo-cpk.pth.tar \
        --source_image example/source.png --driving_video example/driving.mp4 --relative --adapt \
        --output output/example.mp4                       # README command 1 (.ci/run runs it)
    python tools/example_gif.py                          # -> docs/example.gif

Every panel is what run.py sees or writes: the source and driving frames after its preprocessing
(media.read_image / media.open_driving_clip at the config's frame shape) and the frames of the
result video, scaled down to --size pixels so the GIF stays small.

All frames share one fixed palette, the source image's 256 median-cut colours (what the result is
made of), and each pixel becomes its nearest palette colour, without dithering. So a GIF pixel
depends on that pixel of its panel alone, and the GIF is the same wherever the same video goes in.
The result video is not quite the same everywhere: TensorFlow with and without oneDNN predicts a
few pixels one level apart, and H.264 spreads that into differences of up to ~20 levels over the
frame. With the fixed palette the GIF differs only where the video does, by about as much; with a
palette fitted to each frame (a GIF writer's default) any change moves colours all over the picture.
"""
import argparse
import os
import sys

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_DIR)

import numpy as np  # noqa: E402

EXAMPLE = os.path.join(REPO_DIR, "example")
COLOURS = 256  # a GIF frame's most


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=os.path.join(EXAMPLE, "demo-256.yaml"))
    parser.add_argument("--source_image", default=os.path.join(EXAMPLE, "source.png"))
    parser.add_argument("--driving_video", default=os.path.join(EXAMPLE, "driving.mp4"))
    parser.add_argument("--result", default=os.path.join(REPO_DIR, "output", "example.mp4"),
                        help="run.py's output for that source and driving video")
    parser.add_argument("--output", default=os.path.join(REPO_DIR, "docs", "example.gif"))
    parser.add_argument("--size", type=int, default=128, help="panel height in pixels (default: 128)")
    return parser.parse_args(argv)


def frame_shape(config_path):
    """The model's frame shape, from its config as run.py reads it."""
    import model_config

    return model_config.load(config_path).model.frame_shape


def panel(frame, size):
    """A float [H, W, 3] frame in [0, 1] scaled to `size` pixels high, as uint8."""
    from skimage.transform import resize

    import media

    height, width = frame.shape[:2]
    return media.to_uint8(resize(frame, (size, round(width * size / height)), anti_aliasing=True))


def median_cut_palette(image, colours=COLOURS):
    """[n <= colours, 3] uint8: Pillow's median-cut colours of a uint8 [H, W, 3] image (integer arithmetic)."""
    from PIL import Image

    quantised = Image.fromarray(image).quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    palette = np.asarray(quantised.getpalette(), np.uint8).reshape(-1, 3)
    return np.unique(palette[np.unique(np.asarray(quantised))], axis=0)


def to_palette(image, palette):
    """Each pixel of a uint8 [H, W, 3] image as its nearest palette colour (squared RGB distance, exact
    integers; a tie goes to the first colour)."""
    colours, inverse = np.unique(image.reshape(-1, 3), axis=0, return_inverse=True)
    colours, ints = colours.astype(np.int64), palette.astype(np.int64)
    distance = (ints * ints).sum(1) - 2 * colours @ ints.T  # |colour - p|^2 less |colour|^2 (the same for all p)
    return palette[distance.argmin(1)][inverse.reshape(-1)].reshape(image.shape)


def rows(args):
    """Yield one uint8 row [source | driving | result] per frame of the result video, in the palette."""
    import media

    shape = frame_shape(args.config)
    source = media.read_image(args.source_image, shape)
    palette = median_cut_palette(media.to_uint8(source))
    source = panel(source, args.size)
    with media.open_driving_clip(args.driving_video, shape) as driving, media.open_video(args.result) as result:
        for driving_frame, result_frame in zip(driving, result):
            result_frame = np.asarray(result_frame, np.float32)[..., :3] / 255
            row = np.concatenate([source, panel(driving_frame, args.size), panel(result_frame, args.size)], axis=1)
            yield to_palette(row, palette)


def main(argv=None):
    import media
    import utils

    args = parse_args(argv)
    try:
        with media.open_video(args.result) as result:
            fps = result.fps
        with media.FrameWriter(args.output, fps) as writer:
            for row in rows(args):
                writer.write(row)  # at most 256 colours: the GIF writer's own palette keeps them exactly
    except utils.UserError as err:
        utils.print_error(err)
        return 1
    print(f"wrote {writer.frames_written} frames to {args.output} ({os.path.getsize(args.output) / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
