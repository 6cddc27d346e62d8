"""Inference CLI: animate a source image with a driving video, or evaluate a model on a dataset.

    python run.py --model vox --source_image photo.png --driving_video video.mp4 --relative --adapt
    python run.py --model vox --datamode dataset --mode reconstruction --output output/vox/

Every mode and datamode becomes a list of jobs (one driving clip -> one output video), rendered with
the model loaded once: --datamode file animates --source_image (or, with --mode reconstruction,
rebuilds the driving video from its first frame); --datamode dataset does the same over the config's
test split. --find_best_frame / --best_frame, --audio, --visualizer and --profile apply to any job.
`--target savedmodel` and `--target tflite` run the files `python build.py --model vox` writes,
`--target onnx` those of `python build.py --model vox --onnx` (with onnxruntime); no checkpoint is
needed, and the options each export was built with are checked against the run's.
Bad input ends with one line on stderr and exit code 1 (2 for usage errors, 130 on Ctrl-C);
outputs appear only when complete.
"""
import argparse
import contextlib
import functools
import os
import shlex
import sys
import warnings
from dataclasses import dataclass
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the terminal

REPO_DIR = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Run inference")
    parser.add_argument("--target", choices=["direct", "savedmodel", "tflite", "onnx"], default="direct",
                        help="run the model directly, or its SavedModel, TF Lite or ONNX (onnxruntime) export")
    parser.add_argument("--exportdir", default=REPO_DIR,
                        help="folder holding build.py's saved_models/, tflite/ and onnx/ (default: the repository)")
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
    parser.add_argument("--int8", action="store_true",
                        help="use the dynamic-range int8 TF Lite files (--target tflite; faster, not exact)")
    parser.add_argument("--device", default=None, help="TensorFlow device, e.g. /CPU:0 or /GPU:0")
    parser.add_argument("--profile", action="store_true", help="TensorBoard profiling under ./log")
    parser.add_argument("--visualizer", action="store_true", help="write the original's visualisation")
    parser.add_argument("--loadwithtorch", action="store_true",
                        help="load the checkpoint with torch.load instead of the built-in reader (needs PyTorch)")
    parser.add_argument("--find_best_frame", action="store_true",
                        help="measure relative motion from the driving frame whose keypoints best match the source")
    parser.add_argument("--best_frame", type=int, default=None,
                        help="measure relative motion from this driving frame (0-based)")
    parser.add_argument("--audio", action="store_true", help="copy the driving video's audio track")
    parser.add_argument("--root_dir", help="dataset folder for --datamode dataset (default: the config's "
                                           "dataset_params.root_dir)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batchsize must be at least 1")
    if args.best_frame is not None and args.best_frame < 0:
        parser.error("--best_frame must be 0 or more")
    if args.mode == "reconstruction" and (args.find_best_frame or args.best_frame is not None):
        parser.error("--find_best_frame and --best_frame apply to --mode animate")
    if args.mode == "reconstruction" and (args.relative or args.adapt):
        parser.error("--mode reconstruction uses absolute keypoints, as the original; drop --relative / --adapt")
    if args.root_dir is not None and args.datamode != "dataset":
        parser.error("--root_dir applies to --datamode dataset")
    if args.float16 and args.target != "tflite":
        parser.error("--float16 applies to --target tflite only")
    if args.int8 and (args.target != "tflite" or args.float16):
        parser.error("--int8 applies to --target tflite only, without --float16")
    return args


# --------------------------------------------------------------------------------------------------
# Dispatch: every mode and datamode is a list of jobs, each one driving video rendered to one output
# --------------------------------------------------------------------------------------------------

LOG_DIR = "log"  # --profile's TensorBoard traces, relative to the current directory as in the seed
TRACE_BATCHES = 3  # batches a TensorBoard trace covers: enough to see the steady state, small to load
DATASET_FORMATS = (".mp4", ".gif", ".mov", ".mkv", ".avi", ".m4v")


@dataclass
class Job:
    """One driving clip rendered to one output; `source` None means the clip's own first frame.

    `open_driving()` opens the clip (a utils.Clip) only when its turn comes, so that a dataset's
    videos are decoded one at a time.
    """
    name: str
    open_driving: Callable
    source: object  # float32 [H, W, 3] or None
    output: str
    relative: bool = False
    adapt: bool = False
    relative_jacobian: bool = True  # with relative motion: the jacobian too (demo.py), or as detected


def run(args):
    """Load the model once, render every job of --mode / --datamode, then report metrics and timings."""
    import time

    import animate
    import modules
    import utils

    started = time.perf_counter()
    config_path, checkpoint_path = utils.model_paths(args.model, args.config, args.checkpoint)
    raw_config = utils.load_config(config_path)
    config = modules.parse_config(raw_config)
    jobs = file_jobs(args, config) if args.datamode == "file" else dataset_jobs(args, raw_config, config)
    visualizer = utils.Visualizer.from_config(raw_config) if args.visualizer else None
    timings = animate.Timings() if args.profile else None
    losses = {}
    outputs = []
    frames = 0
    with _device(args.device):
        load = load_models if timings is None else timings.timed("load models", load_models)
        models = load(args, config, checkpoint_path)
        if timings is not None:
            models = animate.timed_models(models, timings)
        with TensorBoardTrace(args) as trace:
            for job in jobs:
                with job.open_driving() as clip:
                    written, losses[job.name] = render(args, models, job, clip, visualizer, timings, trace)
                frames += written
                outputs.append(job.output)
    if not outputs:
        raise utils.UserError("nothing to render: the dataset's test split gives no videos or pairs")
    if args.mode == "reconstruction":
        report_reconstruction(losses, metrics_path(args, outputs[0]))
    if timings is not None:
        print(timings.summary(frames, time.perf_counter() - started))


def render(args, models, job, clip, visualizer, timings, trace):
    """Animate or reconstruct one job's driving clip and write its video (and visualisation).

    Returns the number of frames written and, for reconstruction, each frame's L1 to the real frame.
    """
    import animate
    import utils
    from tqdm import tqdm

    initial = start_keypoints(args, models, job, clip)
    frames = limited_frames(clip, args.frames)
    if timings is not None:
        frames = timings.timed_iter("decode", frames)
    if job.source is None:
        outputs = animate.reconstruct_frames(models, frames, args.batch_size, args.exactbatch)
    else:
        outputs = animate.animate_frames(models, job.source, frames, job.relative, job.adapt, args.batch_size,
                                         args.exactbatch, kp_driving_initial=initial,
                                         relative_jacobian=job.relative_jacobian)
    losses = []
    source = job.source
    with contextlib.ExitStack() as stack:
        audio = audio_source(args, job, clip)
        writer = stack.enter_context(utils.FrameWriter(job.output, clip.fps, audio_from=audio))
        encode = _timed(timings, "encode", lambda prediction: writer.write(utils.to_uint8(prediction)))
        if visualizer is not None:
            visual_writer = stack.enter_context(utils.FrameWriter(visualizer_path(job.output), clip.fps))
            draw = _timed(timings, "visualizer", lambda source, driving, out: visual_writer.write(
                visualizer.visualize(source, driving, out)))
        for driving, out in tqdm(outputs, total=expected_frames(clip, args.frames), unit="frame", desc=job.name):
            source = driving if source is None else source  # reconstruction: frame 0 is the source
            encode(out["prediction"])
            if visualizer is not None:
                draw(source, driving, out)
            if job.source is None:
                losses.append(animate.reconstruction_l1(out["prediction"], driving))
            trace.frame_done()
        if writer.frames_written == 0:
            raise utils.UserError(f"{clip.path}: no frames to animate")
    print(f"wrote {writer.frames_written} frames to {job.output}" +
          (f" (and {visualizer_path(job.output)})" if visualizer is not None else ""))
    return writer.frames_written, losses


def _timed(timings, stage, function):
    return function if timings is None else timings.timed(stage, function)


def limited_frames(clip, limit):
    """A new stream of the clip's frames, cut to --frames when that is set."""
    import itertools

    return itertools.islice(iter(clip), None if limit < 0 else limit)


def expected_frames(clip, limit):
    """Frame count for the progress bar (None when unknown)."""
    if limit < 0:
        return clip.frame_count
    return limit if clip.frame_count is None else min(clip.frame_count, limit)


def start_keypoints(args, models, job, clip):
    """kp_driving_initial for --best_frame N / --find_best_frame, None without them.

    Relative motion is then measured from that frame, as the original demo.py's forward/backward
    animation from its best frame (see animate.find_best_frame); the output keeps driving order.
    """
    import animate
    import utils

    if args.best_frame is None and not args.find_best_frame:
        return None
    frames = limited_frames(clip, args.frames)
    if args.best_frame is not None:
        try:
            kp = animate.keypoints_at(models, frames, args.best_frame, args.batch_size, args.exactbatch)
        except IndexError as err:
            cut = f" with --frames {args.frames}" if args.frames >= 0 else ""
            raise utils.UserError(f"--best_frame {args.best_frame}: {clip.path}{cut}: {err}") from None
        print(f"{job.name}: starting from driving frame {args.best_frame}")
        return kp
    try:
        index, kp = animate.find_best_frame(models, job.source, frames, args.batch_size, args.exactbatch)
    except ValueError:
        raise utils.UserError(f"{clip.path}: no frames to animate") from None
    print(f"{job.name}: best frame {index} (keypoints closest to the source's)")
    return kp


def audio_source(args, job, clip):
    """The file whose audio track --audio copies into this job's output, or None (with a warning why)."""
    import utils

    if not args.audio:
        return None
    if job.output.endswith("/") or job.output.lower().endswith(".gif"):
        warn(f"--audio: {job.output} is a GIF or PNG frames, which carry no audio; writing it without")
        return None
    if clip.media_path is None or utils.audio_stream(clip.media_path) is None:
        warn(f"--audio: {clip.path} has no audio track; writing a silent video")
        return None
    return clip.media_path


def warn(message):
    print(f"warning: {message}", file=sys.stderr)


def visualizer_path(output):
    """Where --visualizer writes beside an output: a.mp4 -> a_visualizer.mp4, frames/ -> frames_visualizer/."""
    if output.endswith("/"):
        return output.rstrip("/") + "_visualizer/"
    root, extension = os.path.splitext(output)
    return f"{root}_visualizer{extension}"


def metrics_path(args, output):
    """reconstruction's metrics.csv: in the dataset output folder, or beside the file datamode's output."""
    if args.datamode == "dataset":
        return os.path.join(dataset_output_dir(args), "metrics.csv")
    return os.path.join(os.path.dirname(output.rstrip("/" + os.sep)), "metrics.csv")


def report_reconstruction(losses, path):
    """Print and save the per-video and mean L1 (the mean over every frame, as reconstruction.py)."""
    import numpy as np

    import utils

    rows = [["video", "frames", "l1"]]
    for name, values in losses.items():
        rows.append([name, len(values), f"{np.mean(values):.8f}"])
        print(f"L1 {name}: {np.mean(values):.6f} ({len(values)} frames)")
    every_frame = [value for values in losses.values() for value in values]
    rows.append(["mean", len(every_frame), f"{np.mean(every_frame):.8f}"])
    print(f"mean L1: {np.mean(every_frame):.6f} ({len(losses)} videos, {len(every_frame)} frames); wrote {path}")
    utils.write_csv_atomically(path, rows)


class TensorBoardTrace:
    """A tf.profiler trace of the first TRACE_BATCHES batches under ./log (direct and savedmodel targets).

    TF Lite and onnxruntime run outside TensorFlow's profiler, so those targets get the timing summary only.
    """

    def __init__(self, args):
        self.enabled = args.profile and args.target in ("direct", "savedmodel")
        self.remaining = TRACE_BATCHES * args.batch_size
        self.active = False
        if args.profile and not self.enabled:
            warn(f"--profile: no TensorBoard trace for --target {args.target}; timings are printed at the end")

    def __enter__(self):
        if self.enabled:
            import tensorflow as tf

            tf.profiler.experimental.start(LOG_DIR)
            self.active = True
        return self

    def frame_done(self):
        """Count one written frame; the trace stops once it covers TRACE_BATCHES batches."""
        self.remaining -= 1
        if self.remaining == 0:
            self.stop()

    def stop(self):
        if self.active:
            import tensorflow as tf

            tf.profiler.experimental.stop()
            self.active = False
            print(f"TensorBoard trace written under {LOG_DIR}/ (view it with: tensorboard --logdir {LOG_DIR})")

    def __exit__(self, *exc):
        self.stop()
        return False


# --------------------------------------------------------------------------------------------------
# Jobs per datamode
# --------------------------------------------------------------------------------------------------

def file_jobs(args, config):
    """The one job of --datamode file: animate --source_image, or reconstruct the driving video."""
    import utils

    reconstruction = args.mode == "reconstruction"
    source = None if reconstruction else utils.read_image(args.source_image, config.frame_shape)
    output = utils.output_path(args.output, None if reconstruction else args.source_image, args.driving_video,
                               args.mode, args.dontappend)
    def open_driving():
        return utils.open_driving_clip(args.driving_video, config.frame_shape)

    open_driving().close()  # a bad video fails now, before the model loads
    return [Job(os.path.basename(args.driving_video), open_driving, source, output, args.relative, args.adapt)]


def dataset_jobs(args, raw_config, config):
    """Jobs over the test split of the config's dataset (or --root_dir), as the original run.py's modes.

    reconstruction: each test video from its own first frame (at most reconstruction_params.num_videos + 1,
    as reconstruction.py);
    animate: animate_params.num_pairs (driving, source) pairs, with relative motion and movement
    scaling from animate_params.normalization_params (or --relative / --adapt). The videos are listed
    now, so a bad dataset fails before the model loads, and opened one job at a time.
    """
    import utils

    root = args.root_dir or raw_config["dataset_params"].get("root_dir")
    if not root:
        raise utils.UserError("the config has no dataset_params.root_dir; pass --root_dir")
    videos = utils.dataset_test_videos(root)
    folder = dataset_output_dir(args)
    shape = config.frame_shape
    if args.mode == "reconstruction":
        params = raw_config.get("reconstruction_params") or {}
        extension = output_format(params)
        if params.get("num_videos") is not None:
            # reconstruction.py stops at `it > num_videos`, so it reconstructs num_videos + 1 videos.
            videos = videos[:params["num_videos"] + 1]
        return (dataset_job(os.path.basename(path), path, None, os.path.join(folder, _stem(path) + extension), shape)
                for path in videos)
    params = raw_config.get("animate_params") or {}
    normalization = params.get("normalization_params") or {}
    relative = args.relative or bool(normalization.get("use_relative_movement", False))
    adapt = args.adapt or bool(normalization.get("adapt_movement_scale", False))
    # normalize_kp's own default is False; a config without the key but run with --relative follows demo.py.
    relative_jacobian = bool(normalization.get("use_relative_jacobian", args.relative))
    extension = output_format(params)
    by_name = {os.path.basename(path): path for path in videos}
    pairs = utils.animation_pairs(list(by_name), params.get("num_pairs", 50), pairs_list(raw_config))
    return (dataset_job(f"{driving}-{source}", by_name[driving], by_name[source],
                        os.path.join(folder, f"{_stem(driving)}-{_stem(source)}{extension}"), shape, relative, adapt,
                        relative_jacobian)
            for driving, source in pairs)


def dataset_job(name, driving_path, source_path, output, frame_shape, relative=False, adapt=False,
                relative_jacobian=True):
    """Open one dataset job; the source is the first frame of `source_path` (None: reconstruction)."""
    import utils

    source = None
    if source_path is not None:
        with utils.open_dataset_clip(source_path, frame_shape) as clip:
            source = next(iter(clip))
    return Job(name, functools.partial(utils.open_dataset_clip, driving_path, frame_shape), source, output,
               relative, adapt, relative_jacobian)


def dataset_output_dir(args):
    """The folder --datamode dataset writes to: --output as given when it ends in '/' or with
    --dontappend, else --output plus '_<mode>' (output/result -> output/result_reconstruction/)."""
    if args.output.endswith(("/", os.sep)) or args.dontappend:
        return args.output.rstrip("/" + os.sep)
    return f"{args.output}_{args.mode}"


def output_format(params):
    """The extension a dataset mode writes its videos with: the config's `format` (default .mp4)."""
    import utils

    extension = params.get("format", ".mp4")
    if extension not in DATASET_FORMATS:
        raise utils.UserError(f"format {extension!r} in the config: expected one of {', '.join(DATASET_FORMATS)}")
    return extension


def pairs_list(raw_config):
    """The config's dataset_params.pairs_list when that file exists (relative to the current directory,
    as in the original), else None: pairs are then drawn within the test split."""
    path = raw_config["dataset_params"].get("pairs_list")
    return path if path and os.path.isfile(path) else None


def _stem(path):
    return os.path.splitext(os.path.basename(path.rstrip("/" + os.sep)))[0]


def _device(name):
    """tf.device(name), or no placement when --device is not given."""
    if name is None:
        return contextlib.nullcontext()
    import tensorflow as tf

    return tf.device(name)


def load_models(args, config, checkpoint_path):
    """animate.Models for --target: built from the checkpoint (direct) or loaded from build.py's exports."""
    import animate
    import checkpoint_loader

    if args.target == "direct":
        state_dicts = checkpoint_loader.load_state_dicts(checkpoint_path, use_torch=args.loadwithtorch)
        return animate.direct_models(config, state_dicts, checkpoint_path, prescale=args.prescale)
    return exported_models(args, checkpoint_path)


def exported_models(args, checkpoint_path):
    """animate.Models over the savedmodel / tflite / onnx exports, after checking they fit the requested run."""
    import animate
    import utils

    command = build_command(args, checkpoint_path)
    name = utils.export_model_name(args.model, args.config)
    try:
        exports = utils.find_exports(args.target, args.exportdir, name, args.float16, args.int8)
    except utils.ExportMissing as missing:
        raise utils.UserError(f"{missing.path}: no such export; make it with: {command}") from None
    exports = without_stale_cache(exports, command)
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
                          prescale=builds["generator"]["prescale"], source_encoder=calls.get("source_encoder"),
                          generator_cached=calls.get("generator_cached"))


def without_stale_cache(exports, command):
    """`exports` with source_encoder / generator_cached only if both are there and hold the generator's weights.

    build.py records a digest of the weights in each export's JSON; a pair left from a build of other
    weights (or a partial one) is dropped with a warning, and the plain generator runs instead.
    """
    import utils

    cached = [module for module in utils.CACHED_EXPORT_MODULES if module in exports]
    if not cached:
        return exports
    weights = exports["generator"][1].get("weights")
    complete = len(cached) == len(utils.CACHED_EXPORT_MODULES)
    if complete and weights is not None and all(exports[module][1].get("weights") == weights for module in cached):
        return exports
    warn(f"the {' and '.join(cached)} exports do not match the generator export; running without them "
         f"(rebuild with: {command})")
    return {module: entry for module, entry in exports.items() if module not in cached}


def build_command(args, checkpoint_path):
    """The build.py command that makes the exports this run asks for."""
    words = ["python", "build.py"]
    if args.config:
        words += ["--config", args.config, "--checkpoint", checkpoint_path]
    else:
        words += ["--model", args.model]
    words += [flag for flag, on in (("--prescale", args.prescale), ("--float16", args.float16), ("--int8", args.int8),
                                    ("--onnx", args.target == "onnx")) if on]
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


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    warn(str(message))


def main(argv=None):
    args = parse_args(argv)
    try:
        # Importing TensorFlow takes seconds; Ctrl-C during them must be as clean as later.
        import checkpoint_loader
        import modules
        import utils

        with warnings.catch_warnings():
            # Library warnings (a broken video tail, an audio track that does not fit) as one line each.
            warnings.showwarning = _one_line_warning
            run(args)
    except KeyboardInterrupt:  # first, so that it never needs the modules named below
        print("interrupted: no output written", file=sys.stderr)
        return 130
    except (utils.UserError, checkpoint_loader.CheckpointError, modules.ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
