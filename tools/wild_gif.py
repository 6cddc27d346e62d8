"""The README's "in the wild" picture: a whole photo beside its animated version, as a GIF.

    python tools/wild_gif.py --make_photo            # -> example/wild.png (two copies of the example face)
    python run.py --config example/demo-256.yaml --checkpoint example/demo-cpk.pth.tar \
        --source_image example/wild.png --driving_video example/driving.mp4 --relative --adapt --crop \
        --output output/wild.mp4                     # the README's command
    python tools/wild_gif.py                         # -> docs/wild.gif

example/wild.png is made from the project's own example/source.png: a wider "photo" with the face
twice, at two sizes and places, on a soft background, so one command shows detection, cropping,
animation of every face and the paste-back into the full picture. The GIF uses example_gif's fixed
palette (the photo's median-cut colours, no dithering), so it is the same wherever the same video goes in.
"""
import argparse
import os
import sys

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_DIR)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import example_gif  # noqa: E402  (its palette functions)

PHOTO = os.path.join(REPO_DIR, "example", "wild.png")
PHOTO_SIZE = (720, 1280)  # height, width
FACES = ((110, 70, 400), (840, 300, 250))  # (x, y, size) of each copy of the example source


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--make_photo", action="store_true", help="write example/wild.png and exit")
    parser.add_argument("--photo", default=PHOTO)
    parser.add_argument("--result", default=os.path.join(REPO_DIR, "output", "wild.mp4"),
                        help="run.py --crop's output for that photo")
    parser.add_argument("--output", default=os.path.join(REPO_DIR, "docs", "wild.gif"))
    parser.add_argument("--height", type=int, default=240, help="height of each panel in the GIF")
    return parser.parse_args(argv)


def make_photo():
    """uint8 [720, 1280, 3]: a vertical grey-blue gradient with the example's face pasted twice."""
    from PIL import Image

    height, width = PHOTO_SIZE
    shade = np.linspace(215, 150, height, dtype=np.float32)[:, None, None]
    photo = np.broadcast_to(shade * np.array([0.92, 0.96, 1.0], np.float32), (height, width, 3)).round()
    photo = np.ascontiguousarray(photo.astype(np.uint8))
    source = Image.open(os.path.join(REPO_DIR, "example", "source.png")).convert("RGB")
    for x, y, size in FACES:
        photo[y:y + size, x:x + size] = np.asarray(source.resize((size, size), Image.LANCZOS))
    return photo


def scaled(frame, height):
    from PIL import Image

    width = round(frame.shape[1] * height / frame.shape[0])
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.LANCZOS))


def main(argv=None):
    import media
    import utils

    args = parse_args(argv)
    try:
        if args.make_photo:
            utils.write_atomically(args.photo, _png_bytes(make_photo()))
            print(f"wrote {args.photo}")
            return 0
        photo = scaled(np.asarray(media.decode_image(args.photo))[..., :3], args.height)
        palette = example_gif.median_cut_palette(photo)
        with media.open_video(args.result) as result, media.FrameWriter(args.output, result.fps) as writer:
            for frame in result:
                row = np.concatenate([photo, scaled(np.asarray(frame)[..., :3], args.height)], axis=1)
                writer.write(example_gif.to_palette(row, palette))
    except utils.UserError as err:
        utils.print_error(err)
        return 1
    print(f"wrote {writer.frames_written} frames to {args.output} ({os.path.getsize(args.output) / 1e3:.0f} kB)")
    return 0


def _png_bytes(image):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


if __name__ == "__main__":
    sys.exit(main())
