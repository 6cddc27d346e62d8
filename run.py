"""Inference CLI: animate a source image with a driving video.

    python run.py --model vox --source_image photo.png --driving_video video.mp4 --relative --adapt

`--target savedmodel` and `--target tflite` run the files `python build.py --model vox` writes
(no checkpoint needed); the options each export was built with are checked against the run's.
Bad input ends with one line on stderr and exit code 1 (2 for usage errors, 130 on Ctrl-C);
outputs appear only when complete.
"""
import argparse
import os
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the terminal

REPO_DIR = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Run inference")
    parser.add_argument("--target", choices=["direct", "savedmodel", "tflite"], default="direct",
                        help="run the model directly, from its SavedModel, or from its TF Lite file")
    parser.add_argument("--exportdir", default=REPO_DIR,
                        help="folder holding build.py's saved_models/ and tflite/ (default: the repository)")
    parser.add_argument("--mode", choices=["animate", "reconstruction"], default="animate", help="run mode")
    parser.add_argument("--datamode", choices=["file", "dataset"], default="file",
                        help="CLI-given files or the config's dataset")
    parser.add_argument("--model", default="vox",
                        help="model name: config/NAME-256.yaml and checkpoint/NAME-cpk.pth.tar")
    parser.add_argument("--config", help="config path (overrides --model)")
    parser.add_argument("--checkpoint", help="checkpoint path (overrides --model)")
    parser.add_argument("--source_image", default="example/source.png", help="source image (file datamode)")
    parser.add_argument("--driving_video", default="example/driving.mp4", help="driving video (file datamode)")
    parser.add_argument("--output", default="output/result",
                        help="output: .mp4 (default), .gif, or a directory ending in / for PNG frames")
    parser.add_argument("--dontappend", action="store_true",
                        help="don't append the mode name and .mp4 to the output filename")
    parser.add_argument("--relative", action="store_true", help="relative keypoint motion")
    parser.add_argument("--adapt", action="store_true",
                        help="adapt movement to the size ratio of source and driving subjects")
    parser.add_argument("--prescale", action="store_true",
                        help="reuse kp_detector's downscaled source in the dense motion network")
    parser.add_argument("--frames", type=int, default=-1, help="number of frames to process (-1: all)")
    parser.add_argument("--batchsize", "--batch_size", dest="batch_size", type=int, default=4, help="batch size")
    parser.add_argument("--exactbatch", action="store_true",
                        help="force a static batch size: pad the last batch")
    parser.add_argument("--float16", action="store_true", help="use the float16 TF Lite files (--target tflite)")
    parser.add_argument("--device", default=None, help="TensorFlow device, e.g. /CPU:0 or /GPU:0")
    parser.add_argument("--profile", action="store_true", help="TensorBoard profiling under ./log")
    parser.add_argument("--visualizer", action="store_true", help="write the original's visualisation")
    parser.add_argument("--loadwithtorch", action="store_true",
                        help="load the checkpoint with torch.load instead of the built-in reader (needs PyTorch)")
    parser.add_argument("--find_best_frame", action="store_true",
                        help="start from the driving frame whose keypoints best match the source")
    parser.add_argument("--best_frame", type=int, default=None, help="start from this driving frame")
    parser.add_argument("--audio", action="store_true", help="copy the driving video's audio track")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batchsize must be at least 1")
    if args.float16 and args.target != "tflite":
        parser.error("--float16 applies to --target tflite only")
    return args


def unsupported_option(args):
    """The first requested option this build cannot run yet, or None."""
    for flag, on in (("--mode reconstruction", args.mode == "reconstruction"),
                     ("--datamode dataset", args.datamode == "dataset"),
                     ("--profile", args.profile),
                     ("--visualizer", args.visualizer), ("--find_best_frame", args.find_best_frame),
                     ("--best_frame", args.best_frame is not None), ("--audio", args.audio)):
        if on:
            return flag
    return None


def run_animation(args):
    import itertools

    import tensorflow as tf
    from tqdm import tqdm

    import animate
    import modules
    import utils

    config_path, checkpoint_path = utils.model_paths(args.model, args.config, args.checkpoint)
    config = modules.parse_config(utils.load_config(config_path))
    source = utils.read_image(args.source_image, config.frame_shape)
    video = utils.open_video(args.driving_video)
    output = utils.output_path(args.output, args.source_image, args.driving_video, args.mode, args.dontappend)
    try:
        frames = (utils.preprocess_frame(frame, config.frame_shape) for frame in video)
        limit = None if args.frames < 0 else args.frames
        total = getattr(video, "frame_count", None)
        if limit is not None:
            frames = itertools.islice(frames, limit)
            total = limit if total is None else min(total, limit)
        with tf.device(args.device) if args.device else _no_device():
            models = load_models(args, config, checkpoint_path)
            predictions = animate.animate(models, source, frames, relative=args.relative, adapt=args.adapt,
                                          batch_size=args.batch_size, exact_batch=args.exactbatch)
            written = 0
            with utils.FrameWriter(output, video.fps) as writer:
                for prediction in tqdm(predictions, total=total, unit="frame", desc="animate"):
                    writer.write(utils.to_uint8(prediction))
                    written += 1
                if written == 0:
                    raise utils.UserError(f"{args.driving_video}: no frames to animate")
    finally:
        video.close()
    print(f"wrote {written} frames to {output}")


def load_models(args, config, checkpoint_path):
    """animate.Models for --target: built from the checkpoint (direct) or loaded from build.py's exports."""
    import animate
    import checkpoint_loader

    if args.target == "direct":
        state_dicts = checkpoint_loader.load_state_dicts(checkpoint_path, use_torch=args.loadwithtorch)
        return animate.direct_models(config, state_dicts, checkpoint_path, prescale=args.prescale)
    return exported_models(args, checkpoint_path)


def exported_models(args, checkpoint_path):
    """animate.Models over the savedmodel / tflite exports, after checking they fit the requested run."""
    import animate
    import utils

    command = build_command(args, checkpoint_path)
    name = utils.export_model_name(args.model, args.config)
    try:
        exports = utils.find_exports(args.target, args.exportdir, name, args.float16)
    except utils.ExportMissing as missing:
        raise utils.UserError(f"{missing.path}: no such export; make it with: {command}") from None
    builds = {module: description["build"] for module, (_, description) in exports.items()}
    generator_inputs = [i["name"] for i in exports["generator"][1]["inputs"]]
    first_order = "kp_driving_jacobian" in generator_inputs
    check_prescale_exports(args, builds, command)
    check_static_batch(args, builds, command)
    hardcode = builds["process_kp_driving"]["hardcode"]
    if hardcode is not None:
        check_hardcode(args, hardcode, first_order, command)
    calls = {module: utils.load_export(args.target, path) for module, (path, _) in exports.items()}
    process = calls["process_kp_driving"] if hardcode is None else without_flag_inputs(calls["process_kp_driving"])
    return animate.Models(calls["kp_detector"], process, calls["generator"], estimate_jacobian=first_order,
                          prescale=builds["generator"]["prescale"])


def build_command(args, checkpoint_path):
    """The build.py command that makes the exports this run asks for."""
    words = ["python", "build.py"]
    if args.config:
        words += ["--config", args.config, "--checkpoint", checkpoint_path]
    else:
        words += ["--model", args.model]
    words += [flag for flag, on in (("--prescale", args.prescale), ("--float16", args.float16)) if on]
    if os.path.abspath(args.exportdir) != REPO_DIR:
        words += ["--outdir", args.exportdir]
    return shlex.join(words)


def check_prescale_exports(args, builds, command):
    """--prescale needs prescale exports; kp_detector and generator must agree either way."""
    import utils

    kp_prescale, generator_prescale = builds["kp_detector"]["prescale"], builds["generator"]["prescale"]
    if args.prescale and not (kp_prescale and generator_prescale):
        raise utils.UserError(f"--prescale: the {args.target} exports were built without --prescale; "
                              f"make them with: {command}")
    if kp_prescale != generator_prescale:
        raise utils.UserError(f"the {args.target} kp_detector and generator exports disagree on --prescale; "
                              f"rebuild both with: {command}")


def check_static_batch(args, builds, command):
    """An export with --staticbatchsize N runs only full batches of N (--batchsize N --exactbatch)."""
    import utils

    for module, build in builds.items():
        size = build["static_batch_size"]
        if size is not None and (args.batch_size != size or not args.exactbatch):
            raise utils.UserError(f"the {args.target} {module} export has a static batch size of {size}: "
                                  f"run with --batchsize {size} --exactbatch, or rebuild for any batch size "
                                  f"with: {command}")


def check_hardcode(args, hardcode, first_order, command):
    """A process_kp_driving built with --hardcode XY only serves runs whose flags equal X and Y.

    The pipeline always asks for a relative jacobian (X = 1) and for adapt_movement_scale = --adapt;
    zero-order models have no jacobian, so X does not matter for them.
    """
    import utils

    relative_jacobian, adapt = hardcode
    if args.relative and ((first_order and relative_jacobian != "1") or adapt != ("1" if args.adapt else "0")):
        raise utils.UserError(f"the {args.target} process_kp_driving export was built with --hardcode {hardcode}, "
                              f"which does not fit --relative{' --adapt' if args.adapt else ''}; "
                              f"rebuild it with: {command}")


def without_flag_inputs(process):
    """Call a --hardcode process_kp_driving export: its two flags are baked in, not inputs."""
    import modules

    def call(**inputs):
        return process(**{k: v for k, v in inputs.items() if k not in modules.HARDCODE_FLAGS})

    return call


class _no_device:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv=None):
    args = parse_args(argv)
    missing = unsupported_option(args)
    if missing:
        print(f"error: {missing} is not available in this version yet", file=sys.stderr)
        return 2
    import checkpoint_loader
    import modules
    import utils

    try:
        run_animation(args)
    except (utils.UserError, checkpoint_loader.CheckpointError, modules.ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: no output written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
