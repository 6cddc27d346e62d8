"""Inference CLI: animate a source image with a driving video.

    python run.py --model vox --source_image photo.png --driving_video video.mp4 --relative --adapt

Bad input ends with one line on stderr and exit code 1 (2 for usage errors, 130 on Ctrl-C);
outputs appear only when complete.
"""
import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the terminal

NOT_YET = {
    "savedmodel": "--target savedmodel",
    "tflite": "--target tflite",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Run inference")
    parser.add_argument("--target", choices=["direct", "savedmodel", "tflite"], default="direct",
                        help="run the model directly, from its SavedModel, or from its TF Lite file")
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
    parser.add_argument("--float16", action="store_true", help="use the float16 TF Lite files")
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
    return args


def unsupported_option(args):
    """The first requested option this build cannot run yet, or None."""
    if args.target in NOT_YET:
        return NOT_YET[args.target]
    for flag, on in (("--mode reconstruction", args.mode == "reconstruction"),
                     ("--datamode dataset", args.datamode == "dataset"),
                     ("--prescale", args.prescale), ("--profile", args.profile),
                     ("--visualizer", args.visualizer), ("--find_best_frame", args.find_best_frame),
                     ("--best_frame", args.best_frame is not None), ("--audio", args.audio),
                     ("--float16", args.float16)):
        if on:
            return flag
    return None


def run_animation(args):
    import itertools

    import tensorflow as tf
    from tqdm import tqdm

    import animate
    import checkpoint_loader
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
        state_dicts = checkpoint_loader.load_state_dicts(checkpoint_path, use_torch=args.loadwithtorch)
        with tf.device(args.device) if args.device else _no_device():
            models = animate.direct_models(config, state_dicts, checkpoint_path)
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
