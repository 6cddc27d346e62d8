"""What --precision bfloat16 costs in quality, on trained models, against float32 on the direct target.

    python tools/precision_quality.py [--frames 16] [--datadir DIR]

Models: the bundled demo model (example/demo-256.yaml, trained by this project) on a source photo and
driving video (source.png / driving.mp4 of --datadir: ../shared/data beside this checkout when it holds
them, else example/), and every test fixture (small models trained briefly by tests/make_fixtures.py)
on its own clip. For each: the animation (relative, adapt) at float32 and bfloat16 on the first
--frames driving frames, and the reconstruction of those frames from the first one. Prints a markdown
table: prediction max / mean abs difference and PSNR against float32, the keypoints' largest shift in
pixels of the frame, and the reconstruction L1 at each precision.
"""
import argparse
import os
import sys

import numpy as np

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_DIR)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED_DATA_DIR = os.path.normpath(os.path.join(REPO_DIR, os.pardir, "shared", "data"))
PRECISIONS = ("float32", "bfloat16")
BATCH = 4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16, help="driving frames per model (default: 16)")
    default_data = SHARED_DATA_DIR if os.path.isfile(os.path.join(SHARED_DATA_DIR, "driving.mp4")) else "example"
    parser.add_argument("--datadir", default=default_data,
                        help="source.png and driving.mp4 for the demo model (default: ../shared/data, else example/)")
    return parser.parse_args(argv)


def cases(args):
    """[(label, config, checkpoint, source image, driving video)]: the demo model, then every fixture."""
    example = os.path.join(REPO_DIR, "example")
    found = [(f"demo ({os.path.basename(os.path.abspath(args.datadir))})", os.path.join(example, "demo-256.yaml"),
              os.path.join(example, "demo-cpk.pth.tar"), os.path.join(args.datadir, "source.png"),
              os.path.join(args.datadir, "driving.mp4"))]
    fixtures = os.path.join(REPO_DIR, "tests", "fixtures")
    for name in sorted(os.listdir(fixtures)):
        folder = os.path.join(fixtures, name)
        if os.path.isfile(os.path.join(folder, "reference.npz")):
            found.append((f"fixture {name}", os.path.join(folder, "config.yaml"), os.path.join(folder, "legacy.pth.tar"),
                          os.path.join(folder, "source.png"), os.path.join(folder, "driving.mp4")))
    return found


def outputs(models, source, frames):
    """(predictions [N, H, W, C], driving keypoints [N, K, 2], reconstruction L1) of one model."""
    import animate

    predictions = np.stack(list(animate.animate(models, source, frames, relative=True, adapt=True, batch_size=BATCH)))
    keypoints = np.concatenate([kp["value"] for kp in animate.frame_keypoints(models, frames, animate.Batching(BATCH))])
    l1 = np.mean([animate.reconstruction_l1(out["prediction"], frame)
                  for frame, out in animate.reconstruct_frames(models, frames, animate.Batching(BATCH))])
    return predictions, keypoints, float(l1)


def measure(case, frame_count):
    """{precision: outputs} of one case."""
    import animate
    import checkpoint_loader
    import media
    import model_config

    _, config_path, checkpoint, source_path, driving_path = case
    config = model_config.load(config_path).model
    source = media.read_image(source_path, config.frame_shape)
    with media.open_driving_clip(driving_path, config.frame_shape) as clip:
        frames = [frame for _, frame in zip(range(frame_count), clip)]
    state_dicts = checkpoint_loader.load_state_dicts(checkpoint)
    return config, {precision: outputs(animate.direct_models(config, state_dicts, precision=precision), source, frames)
                    for precision in PRECISIONS}


def row(label, config, results):
    (exact, kp_exact, l1_exact), (reduced, kp_reduced, l1_reduced) = (results[p] for p in PRECISIONS)
    difference = np.abs(reduced.astype(np.float64) - exact)
    psnr = 10 * np.log10(1 / max(np.mean(difference ** 2), 1e-20))
    # keypoints live in [-1, 1]: half the frame's width (height) per unit
    scale = np.array(config.frame_shape[1::-1], np.float64) / 2
    shift = np.abs(kp_reduced - kp_exact) * scale
    return (f"| {label} | {len(exact)} | {difference.max():.4f} | {difference.mean():.5f} | {psnr:.1f} | "
            f"{shift.max():.3f} | {l1_exact:.4f} | {l1_reduced:.4f} ({l1_reduced / l1_exact - 1:+.2%}) |")


def main(argv=None):
    args = parse_args(argv)
    import backends

    backends.tensorflow()
    print("| model | frames | prediction max abs | prediction mean abs | PSNR dB | keypoint shift px | "
          "reconstruction L1 float32 | reconstruction L1 bfloat16 |")
    print("|---|---|---|---|---|---|---|---|")
    for case in cases(args):
        config, results = measure(case, args.frames)
        print(row(case[0], config, results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
