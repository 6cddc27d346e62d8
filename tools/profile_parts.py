"""Where a frame's time goes: each stage of the generator (and the kp detector) timed on its own.

    python tools/profile_parts.py [--config config/vox-256.yaml] [--batch 4] [--repeats 3]

Random weights (speed does not depend on them). Every stage runs as its own tf.function on inputs
of the shape it sees in the model, twice per repeat: once as the original computes it (unfused:
BatchNorm after each conv, nearest upsampling then conv) and once as run.py does (modules'
load_* with BatchNorm folded and sub-pixel upsampling). Prints ms per frame (per video for the
source encoder, which run.py runs once per video) and the stage's share of the per-frame sum.
"""
import argparse
import os
import sys
import time

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_DIR)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PER_VIDEO = "source encoder (per video)"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=os.path.join(REPO_DIR, "config", "vox-256.yaml"))
    parser.add_argument("--batch", type=int, default=4, help="driving frames per call (default: 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the fastest counts (default: 3)")
    return parser.parse_args(argv)


def stages(config, generator, kp_detector, batch):
    """{stage name: zero-argument callable} over random inputs shaped as in the model."""
    import tensorflow as tf

    height, width = config.frame_shape[:2]
    kp = lambda count: {"value": tf.random.uniform([count, config.num_kp, 2], -0.5, 0.5),  # noqa: E731
                        "jacobian": tf.eye(2, batch_shape=[count, config.num_kp]) + 0.01}
    source = tf.random.uniform([1, height, width, 3])
    driving = tf.random.uniform([batch, height, width, 3])
    kp_driving, kp_source = kp(batch), kp(1)
    encode = tf.function(generator.encode_source)
    features = encode(source)
    motion = tf.function(lambda: generator.dense_motion_network(source, kp_driving, kp_source))
    deformation = motion()["deformation"]
    warp = tf.function(lambda: generator.deform_input(features, deformation))
    warped = warp()

    def run_blocks(blocks, x):
        for block in blocks:
            x = block(x)
        return x

    bottleneck = tf.function(lambda x: run_blocks(generator.bottleneck, x))
    up = [tf.function(block) for block in generator.up_blocks]
    up_inputs = [bottleneck(warped)]
    for block in up[:-1]:
        up_inputs.append(block(up_inputs[-1]))
    final_input = up[-1](up_inputs[-1])
    final_image = tf.function(generator.final_image)
    detect = tf.function(kp_detector)
    parts = {"kp_detector": lambda: detect(driving), "dense motion": motion, "warp features": warp,
             "bottleneck": lambda: bottleneck(warped)}
    parts.update({f"up block {i}": (lambda f=f, x=x: f(x)) for i, (f, x) in enumerate(zip(up, up_inputs))})
    parts["final conv + sigmoid"] = lambda: final_image(final_input)
    parts[PER_VIDEO] = lambda: encode(source)
    return parts


def timed_parts(parts, repeats):
    """{name: fastest seconds} over `repeats` runs of each callable, after one warm-up run."""
    for part in parts.values():
        part()
    best = {name: float("inf") for name in parts}
    for _ in range(repeats):
        for name, part in parts.items():
            started = time.perf_counter()
            result = part()
            getattr(result, "numpy", lambda: None)()  # wait for the value, not just the dispatch
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def main(argv=None):
    args = parse_args(argv)
    import backends

    backends.tensorflow()  # first, so that TensorFlow's start-up lines stay off the terminal
    import keras

    import modules
    import model_config

    config = model_config.load(args.config).model
    times = {}
    for kind, make in (("original", lambda: (modules.create_generator(config), modules.create_kp_detector(config))),
                       ("ours", lambda: (modules.load_generator(config, None), modules.load_kp_detector(config, None)))):
        keras.utils.set_random_seed(0)
        generator, kp_detector = make()
        times[kind] = timed_parts(stages(config, generator, kp_detector, args.batch), args.repeats)
    per_frame = {kind: {name: 1000 * seconds / (1 if name == PER_VIDEO else args.batch)
                        for name, seconds in kind_times.items()} for kind, kind_times in times.items()}
    totals = {kind: sum(ms for name, ms in parts.items() if name != PER_VIDEO) for kind, parts in per_frame.items()}
    print(f"{os.path.relpath(args.config, REPO_DIR)}, batch {args.batch}, fastest of {args.repeats}; ms per frame\n")
    print("| stage | original graph | ours (fused) | share of ours |")
    print("|---|---|---|---|")
    for name in per_frame["ours"]:
        share = "-" if name == PER_VIDEO else f"{per_frame['ours'][name] / totals['ours']:.0%}"
        print(f"| {name} | {per_frame['original'][name]:.1f} | {per_frame['ours'][name]:.1f} | {share} |")
    print(f"| per-frame sum | {totals['original']:.1f} | {totals['ours']:.1f} | 100% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
