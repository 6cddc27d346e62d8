"""The README's picture of the bundled example: source, driving and result side by side, as a GIF.

    python run.py --config example/demo-256.yaml --checkpoint example/demo-cpk.pth.tar \
        --source_image example/source.png --driving_video example/driving.mp4 --relative --adapt \
        --output output/example.mp4                       # README command 1 (.ci/run runs it)
    python tools/example_gif.py                          # -> docs/example.gif

Every panel is what run.py sees or writes: the source and driving frames after its preprocessing
(utils.read_image / utils.open_driving_clip at the config's frame shape) and the frames of the
result video, scaled down to --size pixels so the GIF stays small.
"""
import argparse
import os
import sys

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_DIR)

import numpy as np  # noqa: E402

EXAMPLE = os.path.join(REPO_DIR, "example")


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


def panel(frame, size):
    """A float [H, W, 3] frame in [0, 1] scaled to `size` pixels high, as uint8."""
    from skimage.transform import resize

    import utils

    height, width = frame.shape[:2]
    return utils.to_uint8(resize(frame, (size, round(width * size / height)), anti_aliasing=True))


def rows(args):
    """Yield one uint8 row [source | driving | result] per frame of the result video."""
    import modules
    import utils

    config = modules.parse_config(utils.load_config(args.config))
    source = panel(utils.read_image(args.source_image, config.frame_shape), args.size)
    with utils.open_driving_clip(args.driving_video, config.frame_shape) as driving, \
            utils.open_video(args.result) as result:
        for driving_frame, result_frame in zip(driving, result):
            result_frame = np.asarray(result_frame, np.float32)[..., :3] / 255
            yield np.concatenate([source, panel(driving_frame, args.size), panel(result_frame, args.size)], axis=1)


def main(argv=None):
    import utils

    args = parse_args(argv)
    try:
        with utils.open_video(args.result) as result:
            fps = result.fps
        with utils.FrameWriter(args.output, fps) as writer:
            for row in rows(args):
                writer.write(row)
    except utils.UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {writer.frames_written} frames to {args.output} ({os.path.getsize(args.output) / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
