"""The README's side-by-side picture of --precision: one frame of the example at each precision.

    python tools/precision_png.py [--frame 12] [--amplify 10]     # -> docs/precision.png

The bundled demo model animates example/source.png with example/driving.mp4 (relative, adapt, as the
README's first command) at float32 and bfloat16 on the direct target and at int8 on the tflite target
(dynamic range, run.py --int8: what --precision auto runs on tflite; built into a temporary folder as
tools/quality.py builds it). The picture is driving frame --frame
as five labelled panels: float32 | bfloat16 | int8 | |bfloat16 - float32| x A | |int8 - float32| x A,
where a difference panel is the largest of the three channels' absolute differences, times A
(--amplify), in grey (white = a difference of 1/A or more).
"""
import argparse
import os
import sys
import tempfile

import numpy as np

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TOOLS_DIR)

import quality  # noqa: E402  (tools/ is not a package; quality.py puts the repository on the path)
import precision  # noqa: E402

LABEL_HEIGHT = 14  # pixels of the label strip above each panel
INT8 = precision.DYNAMIC_INT8  # the int8 the picture shows: run.py --int8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frame", type=int, default=12, help="driving frame to show, 0-based (default: 12)")
    parser.add_argument("--amplify", type=float, default=10.0,
                        help="factor the absolute differences are multiplied by (default: 10)")
    parser.add_argument("--output", default=os.path.join(quality.REPO_DIR, "docs", "precision.png"))
    args = parser.parse_args(argv)
    if args.frame < 0 or args.amplify <= 0:
        parser.error("--frame must be 0 or more and --amplify more than 0")
    return args


def predictions(frame_index):
    """{precision: the prediction [H, W, 3] of driving frame frame_index} for float32, bfloat16 and INT8."""
    import animate
    import checkpoint_loader
    import model_config

    case = quality.demo_case(quality.EXAMPLE_DIR, "demo, example clip")
    config = model_config.load(case.config).model
    source, frames = quality.read_inputs(case, config.frame_shape, frame_index + 1)
    if len(frames) <= frame_index:
        raise SystemExit(f"error: --frame {frame_index}: the example clip has {len(frames)} frames")
    state_dicts = checkpoint_loader.load_state_dicts(case.checkpoint)
    found = {}
    with tempfile.TemporaryDirectory(prefix="precision-png-") as exportdir:
        quality.build_int8_exports(case, exportdir)
        for name in ("float32", "bfloat16", INT8):
            models = quality.models_at(name, case, config, state_dicts, exportdir)
            found[name] = list(animate.animate(models, source, frames, relative=True, adapt=True,
                                               batch_size=quality.BATCH))[frame_index]
    return found


def difference_panel(a, b, amplify):
    """|a - b| x amplify as a grey [H, W, 3] image in [0, 1]: the channels' largest difference per pixel."""
    difference = np.abs(np.asarray(a, np.float64) - b).max(axis=-1) * amplify
    return np.repeat(np.clip(difference, 0, 1)[..., None], 3, axis=-1)


def labelled(panel, text):
    """A uint8 panel with `text` in a black strip above it."""
    from PIL import Image, ImageDraw

    import media

    image = media.to_uint8(panel)
    strip = Image.new("RGB", (image.shape[1], LABEL_HEIGHT), "black")
    ImageDraw.Draw(strip).text((3, 1), text, fill="white")
    return np.concatenate([np.asarray(strip), image], axis=0)


def picture(found, amplify):
    factor = f"{amplify:g}"
    panels = [(found["float32"], "float32"), (found["bfloat16"], "bfloat16"), (found[INT8], "int8 (--int8)"),
              (difference_panel(found["bfloat16"], found["float32"], amplify), f"|bfloat16 - float32| x{factor}"),
              (difference_panel(found[INT8], found["float32"], amplify), f"|int8 - float32| x{factor}")]
    return np.concatenate([labelled(panel, text) for panel, text in panels], axis=1)


def main(argv=None):
    args = parse_args(argv)
    import backends
    from PIL import Image

    backends.tensorflow()
    image = picture(predictions(args.frame), args.amplify)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    Image.fromarray(image).save(args.output, optimize=True)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
