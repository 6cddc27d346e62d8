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
Everything the user can get wrong is checked first (`prepare`, which never imports TensorFlow), then
the target's runtime and the model load (`run`). Bad input ends with one line on stderr and exit code 1
(2 for usage errors, 130 on Ctrl-C); outputs appear only when complete.
"""
import contextlib
import functools
import itertools
import os
import sys
import warnings
from dataclasses import dataclass

try:
    # TensorFlow-free: everything a user can get wrong is checked with these before TensorFlow loads.
    import animate
    import backends
    import checkpoint_loader
    import datasets
    import export_checks
    import export_files
    import faces
    import jobs
    import media
    import model_cache
    import model_config
    import options
    import precision
    import utils
    import visualizer
except KeyboardInterrupt:  # Ctrl-C while scikit-image and imageio load: as clean as later
    print("interrupted: no output written", file=sys.stderr)
    sys.exit(130)

ASPECT_TOLERANCE = 0.05  # a frame whose aspect differs more from frame_shape's is visibly stretched


def parse_args(argv=None):
    """The command line, every combination checked (a usage error exits 2), as an options.RunOptions."""
    parser = utils.ArgumentParser(description="Run inference")
    parser.add_argument("--target", choices=["direct", "savedmodel", "tflite", "onnx"], default="direct",
                        help="run the model directly, or its SavedModel, TF Lite or ONNX (onnxruntime) export")
    parser.add_argument("--exportdir", default=utils.REPO_DIR,
                        help="folder holding build.py's saved_models/, tflite/ and onnx/ (default: the repository)")
    parser.add_argument("--mode", choices=["animate", "reconstruction"], default="animate", help="run mode")
    parser.add_argument("--datamode", choices=["file", "dataset"], default="file",
                        help="CLI-given files or the config's dataset")
    parser.add_argument("--model", default=None,
                        help="model name: config/NAME-256.yaml and checkpoint/NAME-cpk.pth.tar (default: vox)")
    parser.add_argument("--config", help="config path (overrides --model)")
    parser.add_argument("--checkpoint", help="checkpoint path (overrides --model)")
    parser.add_argument("--source_image", default=None,
                        help="source image (file datamode; default: the bundled example/source.png)")
    parser.add_argument("--driving_video", default=None,
                        help="driving video (file datamode; default: the bundled example/driving.mp4)")
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
    parser.add_argument("--precision", choices=(*precision.PRECISIONS, precision.AUTO), default=precision.DEFAULT,
                        help="arithmetic of the model: float32 (exact, default), bfloat16 (direct and savedmodel; "
                             "faster on CPUs with AVX512_BF16 / AMX, quality in the README), int8 (tflite: the "
                             "experimental full-integer generator of build.py --precision int8; not exact) or auto "
                             "(the fastest precision of the target that passed the README's near-lossless gate and "
                             "this CPU runs natively, else float32; says what it chose)")
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
    parser.add_argument("--no_cache", action="store_true",
                        help="direct target: build the models from the checkpoint without reading or writing the "
                             "model cache")
    parser.add_argument("--clear_cache", action="store_true",
                        help=f"empty the model cache (${model_cache.ENV_VAR}, default "
                             f"~/.cache/{model_cache.FOLDER_NAME}) and exit")
    parser.add_argument("--root_dir", help="dataset folder for --datamode dataset (default: the config's "
                                           "dataset_params.root_dir)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads the model may use (default: every core; with --workers, each worker's CPUs)")
    add_face_arguments(parser)
    add_batch_arguments(parser)
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("--verbose", action="store_true",
                          help="also show TensorFlow's and LiteRT's own start-up and log lines")
    loudness.add_argument("--quiet", action="store_true", help="print errors only (no progress, notes or warnings)")
    args = parser.parse_args(argv)
    check_combinations(parser, args)
    check_face_arguments(parser, args)
    check_batch_arguments(parser, args)
    return options.RunOptions.from_namespace(args)


def add_face_arguments(parser):
    crop = parser.add_argument_group("faces in the wild (see README)")
    crop.add_argument("--crop", nargs="?", const="both", choices=["both", "source", "driving"],
                      help="find the faces and crop the inputs as the model was trained (both, or only the source "
                           "photo or only the driving video); every face of the photo is animated and pasted back")
    crop.add_argument("--face", type=int, help="with --crop: animate only this face of the photo (0 = leftmost)")
    crop.add_argument("--crop_box", type=faces.parse_crop_box, metavar="X,Y,W,H",
                      help="crop the source photo to this box instead of detecting faces (any model)")
    crop.add_argument("--driving_face", type=int, help="with --crop: follow this face track of the driving video "
                                                       "(default: the longest)")
    crop.add_argument("--driving_crop_box", type=faces.parse_crop_box, metavar="X,Y,W,H",
                      help="crop the driving video to this box instead of detecting faces (any model)")
    crop.add_argument("--list_faces", action="store_true",
                      help="print the faces found in the source photo (and the driving video's face tracks) and exit")


def add_batch_arguments(parser):
    batch = parser.add_argument_group("many videos: batches and Ray workers (see README, Scale out)")
    batch.add_argument("--jobs", metavar="FILE.csv",
                       help="render many pairs: a CSV with the columns source_image,driving_video,output "
                            "(paths relative to the CSV's folder)")
    batch.add_argument("--overwrite", action="store_true",
                       help="with --jobs or --datamode dataset: redo the outputs an earlier run completed "
                            "(by default they are skipped)")
    batch.add_argument("--workers", type=int, metavar="N",
                       help="render the jobs on N Ray workers (needs: pip install -r requirements-cluster.txt); "
                            "a local Ray instance unless --ray_address or RAY_ADDRESS names a cluster")
    batch.add_argument("--ray_address", metavar="HOST:PORT",
                       help="with --workers: join this Ray cluster (default: $RAY_ADDRESS, else start a local one)")


def check_batch_arguments(parser, args):
    """Usage errors of --jobs / --workers: each flag where it means something."""
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.workers is not None and args.jobs is None and args.datamode != "dataset":
        parser.error("--workers renders a batch: give --jobs FILE.csv or --datamode dataset")
    if args.ray_address is not None and args.workers is None:
        parser.error("--ray_address runs the jobs on Ray workers: give --workers N too")
    if args.jobs is not None and args.datamode == "dataset":
        parser.error("--jobs lists the jobs of --datamode file; drop --datamode dataset")
    if args.jobs is not None and (args.source_image is not None or args.driving_video is not None):
        parser.error("--jobs names every source_image and driving_video; drop --source_image / --driving_video")
    if args.overwrite and args.jobs is None and args.datamode != "dataset":
        parser.error("--overwrite applies to --jobs and --datamode dataset (a single output is always rewritten)")
    if args.workers is not None and args.profile:
        parser.error("--profile times the in-process run; drop --workers to profile")


def check_face_arguments(parser, args):
    """Usage errors of the face options: each flag in a combination where it means something."""
    if args.face is not None and args.crop not in ("both", "source"):
        parser.error("--face picks a face for --crop (or --crop source)")
    if args.driving_face is not None and args.crop not in ("both", "driving"):
        parser.error("--driving_face picks a face track for --crop (or --crop driving)")
    if args.crop_box is not None and args.crop not in (None, "both", "source"):
        parser.error("--crop_box crops the source photo; it does not go with --crop driving")
    if args.driving_crop_box is not None and args.crop == "source":
        parser.error("--driving_crop_box crops the driving video; it does not go with --crop source")
    for flag, value in (("--face", args.face), ("--driving_face", args.driving_face)):
        if value is not None and value < 0:
            parser.error(f"{flag} must be 0 or more, got {value}")
    if (args.crop or args.crop_box or args.driving_crop_box or args.list_faces) and args.datamode == "dataset":
        parser.error("--crop and the face options apply to --datamode file (crop a dataset with crop.py)")
    if (args.crop or args.crop_box or args.driving_crop_box or args.list_faces) and (args.jobs or args.workers):
        parser.error("--crop and the face options apply to one --source_image and --driving_video, in-process "
                     "(crop many videos with crop.py first)")


def check_combinations(parser, args):
    """Usage errors: numbers out of range and flags that contradict each other (one line, exit 2)."""
    if args.batch_size < 1:
        parser.error("--batchsize must be at least 1")
    if args.frames == 0 or args.frames < -1:
        parser.error(f"--frames must be a positive number of frames (or -1 for all), got {args.frames}")
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
    if args.precision == "int8" and (args.int8 or args.float16):
        parser.error("--precision int8 runs the full-integer TF Lite files; drop --int8 / --float16")
    if args.precision == precision.AUTO and (args.int8 or args.float16):
        parser.error("--precision auto picks the TF Lite files itself; drop --int8 / --float16")
    pair_error = None if args.precision == precision.AUTO else precision.run_pair_error(args.target, args.precision)
    if pair_error:
        parser.error(pair_error)


# --------------------------------------------------------------------------------------------------
# Dispatch: every mode and datamode is a list of jobs, each one driving video rendered to one output
# --------------------------------------------------------------------------------------------------

LOG_DIR = "log"  # --profile's TensorBoard traces, relative to the current directory as in the seed
TRACE_BATCHES = 3  # batches a TensorBoard trace covers: enough to see the steady state, small to load


@dataclass
class Plan:
    """Everything a run needs that can be checked without TensorFlow: it is made before the import."""
    config: model_config.Config
    checkpoint_path: object  # str, or None for an export target without one
    jobs: list
    exports: object = None  # CheckedExports for the savedmodel / tflite / onnx targets
    face_detector: object = None  # build.py's LiteRT face detector files when faces are found on LiteRT


def prepare(args):
    """Resolve defaults and check every path, file kind and flag combination; never imports TensorFlow.

    Returns a Plan; raises UserError naming the flag or file at fault, so a typo fails in well under a
    second instead of after TensorFlow and the model have loaded.
    """
    warn_about_flags(args)
    args.precision, dynamic_int8 = precision.run_settings(resolve_precision(args))
    args.int8 = args.int8 or dynamic_int8
    config_path, checkpoint_path = resolve_model(args)
    config = model_config.load(config_path)
    exports = export_checks.check_exports(args, checkpoint_path) if args.target != "direct" else None
    if args.jobs is not None:
        listed = csv_jobs(args, config)
    elif args.datamode == "file":
        listed = file_jobs(args, config)
    else:
        listed = dataset_jobs(args, config)
    return Plan(config, checkpoint_path, listed, exports, litert_face_detector(args, checkpoint_path))


def litert_face_detector(args, checkpoint_path):
    """The face detector files of a --target tflite / onnx run that finds faces
    (export_checks.litert_face_detector), else None: direct and savedmodel load TensorFlow anyway, and its
    mtcnn finds the same faces."""
    if args.target not in ("tflite", "onnx") or not (detects_faces(args) or args.list_faces):
        return None
    return export_checks.litert_face_detector(args, checkpoint_path)


def resolve_precision(args):
    """The precision to run: --precision auto's choice (said in one note line; precision.DYNAMIC_INT8 stands
    for --int8), else the one asked for, or float32 with a warning where this CPU would emulate it."""
    if args.precision != precision.AUTO:
        return precision.effective(args.precision, warn)
    chosen, why = precision.auto(args.target, functools.partial(export_checks.export_exists, args))
    note(f"--precision auto chose {precision.choice_text(chosen)} for --target {args.target}: {why}")
    return chosen


def warn_about_flags(args):
    """Flags that do nothing in this combination: say so rather than ignore them silently."""
    relative_from_flags = args.datamode == "file" and not args.relative  # dataset mode reads the config's
    if args.adapt and relative_from_flags and args.mode == "animate":
        warn("--adapt scales relative motion and does nothing without --relative; add --relative")
    if args.find_best_frame and relative_from_flags:
        warn("--find_best_frame picks where relative motion starts and does nothing without --relative; "
             "add --relative")
    if args.best_frame is not None and relative_from_flags:
        warn("--best_frame picks where relative motion starts and does nothing without --relative; add --relative")
    if args.source_image is not None and args.mode == "reconstruction":
        warn("--source_image is not used: --mode reconstruction rebuilds the driving video from its own first frame")
    if args.datamode == "dataset" and (args.source_image is not None or args.driving_video is not None):
        warn("--source_image and --driving_video are not used with --datamode dataset")
    if args.no_cache and args.target != "direct":
        warn(f"--no_cache applies to the direct target; --target {args.target} runs build.py's exports")
    if args.device is not None and args.target in ("tflite", "onnx"):
        warn(f"--device applies to the direct and savedmodel targets; --target {args.target} runs on the CPU")


def resolve_model(args):
    """(config path, checkpoint path or None) from --model / --config / --checkpoint, checked to exist.

    The direct target needs the checkpoint; export targets only name it in build hints.
    """
    if args.config is None:
        if args.model is None:
            note(f"no --model given: using {utils.DEFAULT_MODEL} (config/{utils.DEFAULT_MODEL}-256.yaml)")
        config_path, published = utils.model_paths(args.model or utils.DEFAULT_MODEL)
        checkpoint_path = args.checkpoint or published
    else:
        utils.require_file(args.config, "a config file", "--config")
        config_path = args.config
        checkpoint_path = args.checkpoint or utils.checkpoint_for_config(args.config)
        if args.checkpoint is None and checkpoint_path is not None and args.target == "direct":
            note(f"no --checkpoint given: using {checkpoint_path}, named after the config")
    if args.target != "direct":
        return config_path, checkpoint_path
    if checkpoint_path is None:
        raise utils.UserError(f"--config {args.config}: give --checkpoint (no checkpoint named after the config "
                              f"was found beside it or in checkpoint/)")
    if args.checkpoint is None and args.config is None and not os.path.exists(checkpoint_path):
        raise utils.UserError(utils.published_checkpoint_missing(checkpoint_path))
    utils.require_file(checkpoint_path, "a checkpoint", "--checkpoint")
    return config_path, checkpoint_path


def example_input(path, flag):
    """The bundled example standing in for a flag the user did not give, said in one line."""
    note(f"no {flag} given: using the bundled {path}")
    return os.path.join(utils.REPO_DIR, path)


def run(args, plan):
    """Render every job of --mode / --datamode / --jobs, then report metrics, timings and failures.

    Batch runs (--jobs, --datamode dataset) skip outputs an earlier run completed with the same model and
    options, and a failing job fails alone; --workers renders on Ray (cluster.py), else in this process
    with the model loaded once.
    """
    with faces.litert_detector(plan.face_detector):  # for this run only: run.main may be called again
        return run_jobs(args, plan)


def run_jobs(args, plan):
    """run()'s work, with the face detector chosen."""
    import time

    started = time.perf_counter()
    if args.list_faces:
        if plan.face_detector is None:
            status("loading TensorFlow")
            backends.tensorflow()  # the face detector runs on TensorFlow
        status("looking for faces")
        return list_faces(args, plan)
    plan.jobs = todo = list(plan.jobs)
    if not todo:
        raise utils.UserError("nothing to render: the dataset's test split gives no videos or pairs")
    resumed = []
    if is_batch(args):
        todo, resumed = resume(args, todo, batch_key(args, plan))
    timings = animate.Timings() if args.profile else None
    ready, write_entry = started, None
    if not todo:
        rendered = []
    elif args.workers:
        import cluster

        rendered, ready = cluster.render_jobs(args, plan, todo)
    else:
        rendered, ready, write_entry = render_in_process(args, plan, todo, timings)
    clock = Clock(started, ready, time.perf_counter())
    if write_entry is not None:  # after the outputs, so that a cold run's frames do not wait for it
        _timed(timings, "model cache write", write_model_cache)(write_entry)
    by_output = {result.output: result for result in resumed + rendered}
    in_order = [by_output[job.output] for job in plan.jobs if job.output in by_output]
    finish(args, in_order, len(resumed), timings, clock)


@dataclass
class Clock:
    """When the run started, when its model (or every worker's) was loaded, and when it ended."""
    started: float
    ready: float
    ended: float


def render_in_process(args, plan, todo, timings):
    """Load the model once and render the jobs one after another; returns their jobs.Result and when the
    model was ready."""
    import time

    status("loading TensorFlow" if args.target in ("direct", "savedmodel") else f"loading the {args.target} runtime")
    if args.threads is not None:
        backends.set_threads(args.threads)
    checkpoint = None
    if args.target == "direct" and not args.loadwithtorch:
        checkpoint = read_checkpoint(args, plan.config.model, plan.checkpoint_path, verify_in_background=True)
    if args.target in ("direct", "savedmodel") or (detects_faces(args) and plan.face_detector is None):
        # mtcnn's face detector runs on TensorFlow too; imported here, not on the thread that finds the faces,
        # so that it never imports while this thread imports the model's runtime
        load_tensorflow(args, plan, timings)
        check_device(args.device)
    elif plan.face_detector is not None:
        backends.tflite_interpreter_class()  # LiteRT, which both threads run, imported once, here
    cropped = None
    if args.crop or args.crop_box or args.driving_crop_box:
        status("looking for faces" if args.crop else "cropping")
        cropped = in_background(crop_inputs, args, plan, timings)  # while the model loads
    drawer = visualizer.Visualizer.from_params(plan.config.visualizer_params) if args.visualizer else None
    results = []
    with _device(args.device):
        status(f"loading the model ({describe_model(args, plan)})")
        load = (load_models_and_cache_writer if timings is None
                else timings.timed("load models", load_models_and_cache_writer))
        models, write_entry = load(args, plan.config.model, plan.checkpoint_path, plan.exports, checkpoint)
        if is_batch(args) or timings is not None:
            # A generator still loading or building on a thread (Models.wait): a batch run waits before its
            # first job, so that a load that fails stops the run once instead of failing every job alike,
            # and the start-up it reports includes the load; so does --profile's "load models" stage. A
            # single job goes on while it loads.
            models.wait()
        if cropped is not None:
            cropped()  # the crops are ready, or what went wrong (no face found) is raised here
        if timings is not None:
            models = animate.timed_models(models, timings)
        ready = time.perf_counter()
        with TensorBoardTrace(args) as trace:
            for job in todo:
                result = execute(args, models, job, drawer, timings, trace)
                if not result.ok:
                    jobs.report_failure(result)
                results.append(result)
    return results, ready, write_entry


def in_background(function, *args, name="faces"):
    """Start function(*args) on a thread of its own; returns a callable to call once, which waits for it and
    returns its result or raises its exception, and then holds it no longer (the checkpoint's tensors are
    garbage once the models are built from them).

    --crop finds faces this way while the model loads: detection spends most of its time in TensorFlow
    ops, which run without the GIL, so with a core free the two overlap (README, Performance: what
    --crop adds). The direct target checks its model cache entry this way while TensorFlow imports.
    """
    pending = utils.LoadedOnThread(function, *args, name=name)

    def result():
        nonlocal pending
        done, pending = pending, None
        return done.wait()

    return result


def load_tensorflow(args, plan, timings=None):
    """TensorFlow for this run. Where it only loads and calls SavedModels (the savedmodel target, the direct
    target's model cache) that is backends.saved_model_runtime(), about 1.2 s sooner than the whole import, which
    then follows only if a model is built after all (a cache miss). On an onnx target (tflite without
    build.py's LiteRT detector files) only --crop's mtcnn detector needs it, so --profile times the import
    there as "load TensorFlow", part of what --crop costs."""
    load = backends.tensorflow if needs_whole_tensorflow(args, plan) else backends.saved_model_runtime
    if timings is None or args.target in ("direct", "savedmodel"):
        return load()
    return timings.timed("load TensorFlow", load)()


def needs_whole_tensorflow(args, plan):
    """Whether the run uses more of TensorFlow than SavedModel calls: Keras builds the direct target's models
    without the cache; mtcnn finds faces (no LiteRT detector files); --device places ops; --profile traces."""
    builds = args.target == "direct" and (args.no_cache or args.loadwithtorch)
    mtcnn = detects_faces(args) and plan.face_detector is None
    return builds or mtcnn or args.target not in ("direct", "savedmodel") or args.device is not None or args.profile


def execute(args, models, job, drawer=None, timings=None, trace=None):
    """Render one job into a jobs.Result. A batch job (one with a key) records its completion, and any
    failure becomes its Result, with the traceback in a log beside the output; a single job raises."""
    try:
        frames, losses = render_job(args, models, job, drawer, timings, trace or TensorBoardTrace(args))
    except Exception as err:  # noqa: BLE001 -- a batch goes on past a bad video or a bug in one job
        if job.key is None:
            raise
        message = str(err) if isinstance(err, (utils.UserError, checkpoint_loader.CheckpointError)) \
            else f"{type(err).__name__}: {utils.first_line(err)}"
        return jobs.Result(job.name, job.output, error=message, log=jobs.write_failure_log(job.output, job.name, err))
    result = jobs.Result(job.name, job.output, frames, [float(loss) for loss in losses])
    if job.key is not None:
        jobs.write_record(result, job.key)
        jobs.clear_failure_log(job.output)
    return result


def finish(args, results, resumed, timings, clock):
    """Metrics over every job, in the jobs' order (resumed ones from their records), the batch summary, and
    a UserError (exit 1) when a job failed."""
    done = [result for result in results if result.ok]
    failed = [result.name for result in results if not result.ok]
    if args.mode == "reconstruction" and done:
        report_reconstruction({result.name: result.losses for result in done}, metrics_path(args, done[0].output))
    frames = sum(result.frames for result in results if not result.resumed)
    if timings is not None:
        say(timings.summary(frames, clock.ended - clock.started))
    if is_batch(args):
        rendering = max(clock.ended - clock.ready, 1e-9)
        say(f"{plural(len(results) - resumed - len(failed), 'video')} rendered, {resumed} already complete, "
            f"{len(failed)} failed: {plural(frames, 'frame')} in {rendering:.1f} s ({frames / rendering:.2f} frames/s) "
            f"after {clock.ready - clock.started:.1f} s of start-up")
    if failed:
        raise utils.UserError(f"{len(failed)} of {len(results)} jobs failed ({', '.join(failed)}); "
                              f"the other outputs were written")


def is_batch(args):
    """Many outputs: resumable, and a failing job fails alone."""
    return args.jobs is not None or args.datamode == "dataset"


# Flags that change a batch output's pixels (or its files); the batch size and thread count do not.
PIXEL_FLAGS = ("mode", "target", "precision", "frames", "relative", "adapt", "prescale", "float16", "int8",
               "best_frame", "find_best_frame", "audio", "visualizer", "dontappend")


def batch_key(args, plan):
    """The fingerprint of the model files and flags every job of this batch shares."""
    model = {"config": plan.config.raw}
    if args.target == "direct":
        model["checkpoint"] = [os.path.abspath(plan.checkpoint_path), jobs.file_identity(plan.checkpoint_path)]
    else:
        model["exports"] = {module: [os.path.abspath(path), description]
                            for module, (path, description) in plan.exports.exports.items()}
    return jobs.fingerprint({"model": model, "flags": {flag: getattr(args, flag) for flag in PIXEL_FLAGS}})


def resume(args, todo, key):
    """(jobs to render, Results of those an earlier run completed); every job gets its own key."""
    pending, resumed = [], []
    for job in todo:
        job.key = jobs.fingerprint({"batch": key, "motion": job.motion,
                                    "inputs": [(path, jobs.file_identity(path))
                                               for path in (job.source_path, job.driving_path) if path]})
        done = None if args.overwrite else jobs.completed(job.name, job.output, job.key)
        if done is None:
            jobs.remove_partial(job.output, utils.visualizer_path(job.output))  # a killed run's temporaries
            pending.append(job)
        else:
            resumed.append(done)
    if resumed:
        note(f"{plural(len(resumed), 'output')} of {len(todo)} already complete with this model and these options: "
             f"skipping {'it' if len(resumed) == 1 else 'them'} (--overwrite redoes them)")
    return pending, resumed


def render_job(args, models, job, drawer, timings, trace):
    with job.open_driving() as clip:
        return render(args, models, job.with_source(), clip, drawer, timings, trace)


def describe_model(args, plan):
    if args.target == "direct":
        return f"{plan.checkpoint_path}"
    return f"{args.target} exports of {export_files.export_model_name(args.model or utils.DEFAULT_MODEL, args.config)}"


def check_device(name):
    """--device naming a device this machine lacks: one line, before the model loads."""
    if name is None:
        return
    tf = backends.tensorflow()
    try:
        wanted = tf.DeviceSpec.from_string(name)
    except ValueError:
        raise utils.UserError(f"--device {name}: not a device name (expected e.g. /CPU:0 or /GPU:0)") from None
    devices = [tf.DeviceSpec.from_string(device.name) for device in tf.config.list_logical_devices()]
    for device in devices:
        if ((wanted.device_type or "").upper() == (device.device_type or "").upper()
                and wanted.device_index in (None, device.device_index)):
            return
    have = ", ".join(f"/{d.device_type}:{d.device_index}" for d in devices)
    raise utils.UserError(f"--device {name}: no such device on this machine (it has {have})")


def render(args, models, job, clip, drawer, timings, trace):
    """Animate or reconstruct one job's driving clip and write its video (and visualisation).

    Returns the number of frames written and, for reconstruction, each frame's L1 to the real frame.
    """
    initial = None if job.faces is not None else start_keypoints(args, models, job.name, job.source, clip)
    frames = driving_frames(clip, args.frames, timings)
    if job.source is None:
        outputs = animate.reconstruct_frames(models, frames, batching(args))
    elif job.faces is not None:
        outputs = pasted_frames(args, models, job, clip, frames, _timed(timings, "paste", faces.paste_all))
    else:
        outputs = animate.animate_frames(models, job.source, frames, job.motion, batching(args), initial)
    losses = []
    source = job.source
    with contextlib.ExitStack() as stack:
        audio = audio_source(args, job, clip)
        writer = stack.enter_context(media.FrameWriter(job.output, clip.fps, audio_from=audio))
        encode = _timed(timings, "encode", lambda frame: writer.write(media.to_uint8(frame)))
        if drawer is not None:
            visual_writer = stack.enter_context(media.FrameWriter(utils.visualizer_path(job.output), clip.fps))
            draw = _timed(timings, "visualizer", lambda source, driving, out: visual_writer.write(
                drawer.visualize(source, driving, out)))
        status(f"{job.name}: building the graph on the first batch")
        with Progress(expected_frames(clip, args.frames), job.name) as progress:
            for driving, out in outputs:
                source = driving if source is None else source  # reconstruction: frame 0 is the source
                encode(out["photo"] if "photo" in out else out["prediction"])
                if drawer is not None:
                    draw(source, driving, out)
                if job.source is None:
                    losses.append(animate.reconstruction_l1(out["prediction"], driving))
                trace.frame_done()
                progress.frame_done()
        if writer.frames_written == 0:
            raise utils.UserError(f"{clip.path}: no frames to animate")
    say(f"wrote {plural(writer.frames_written, 'frame')} to {job.output}" +
        (f" (and {utils.visualizer_path(job.output)})" if drawer is not None else ""))
    return writer.frames_written, losses


def pasted_frames(args, models, job, clip, frames, paste):
    """(driving frame, outputs) per frame for --crop: every face of the photo animated by the same
    driving frames, outputs['photo'] the full photo with each animated face pasted back (uint8);
    the rest of the outputs are the first face's (for the visualizer)."""
    streams = itertools.tee(frames, len(job.faces))
    per_face = [animate.animate_frames(models, source, stream, job.motion, batching(args),
                                       start_keypoints(args, models, job.name, source, clip))
                for (source, _), stream in zip(job.faces, streams)]
    for results in zip(*per_face):
        driving, first = results[0]
        pieces = [(out["prediction"], box) for (_, out), (_, box) in zip(results, job.faces)]
        yield driving, {**first, "photo": paste(job.photo, pieces)}


class Progress:
    """A tqdm bar that starts at the first finished frame.

    The first batch also traces the graph, so a bar started before it shows an ETA of minutes for a job
    of seconds; started after it, the rate is that of the frames to come.
    """

    def __init__(self, total, name):
        self.total = total
        self.name = name
        self.bar = None

    def frame_done(self):
        if self.bar is None:
            from tqdm import tqdm

            # initial=1: the first frame shows at once, and the rate counts the frames after it
            self.bar = tqdm(total=self.total, initial=1, unit="frame", desc=self.name,
                            disable=backends.verbosity() == "quiet")
        else:
            self.bar.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False


def batching(args):
    return animate.Batching(args.batch_size, args.exactbatch)


def plural(count, noun):
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _timed(timings, stage, function):
    return function if timings is None else timings.timed(stage, function)


def limited_frames(clip, limit):
    """A new stream of the clip's frames, cut to --frames when that is set."""
    return itertools.islice(iter(clip), None if limit < 0 else limit)


def driving_frames(clip, limit, timings=None):
    """limited_frames, with --profile timing each frame's decoding and, for a video cropped on the fly
    (--crop), its crop + resize apart, so the profile shows what cropping costs a frame."""
    if timings is None:
        return limited_frames(clip, limit)
    if isinstance(clip, faces.DrivingCrop):
        decoded = timings.timed_iter("decode", limited_frames(clip.source, limit))
        return map(timings.timed("crop+resize", clip.prepare), decoded)
    return timings.timed_iter("decode", limited_frames(clip, limit))


def expected_frames(clip, limit):
    """Frame count for the progress bar (None when unknown)."""
    if limit < 0:
        return clip.frame_count
    return limit if clip.frame_count is None else min(clip.frame_count, limit)


def start_keypoints(args, models, name, source, clip):
    """kp_driving_initial for --best_frame N / --find_best_frame, None without them.

    Relative motion is then measured from that frame, as the original demo.py's forward/backward
    animation from its best frame (see animate.find_best_frame); the output keeps driving order.
    """
    if args.best_frame is None and not args.find_best_frame:
        return None
    frames = limited_frames(clip, args.frames)
    if args.best_frame is not None:
        try:
            kp = animate.keypoints_at(models, frames, args.best_frame, batching(args))
        except IndexError as err:
            cut = f" with --frames {args.frames}" if args.frames >= 0 else ""
            raise utils.UserError(f"--best_frame {args.best_frame}: {clip.path}{cut}: {err}") from None
        say(f"{name}: starting from driving frame {args.best_frame}")
        return kp
    try:
        index, kp = animate.find_best_frame(models, source, frames, batching(args))
    except ValueError:
        raise utils.UserError(f"{clip.path}: no frames to animate") from None
    say(f"{name}: best frame {index} (keypoints closest to the source's)")
    return kp


def audio_source(args, job, clip):
    """The file whose audio track --audio copies into this job's output, or None (with a warning why)."""
    if not args.audio:
        return None
    if job.output.endswith("/") or job.output.lower().endswith(".gif"):
        kind = "PNG frames" if job.output.endswith("/") else "a GIF"
        warn(f"--audio: {job.output} is {kind}, which cannot hold sound; writing it without the audio track")
        return None
    if clip.media_path is None or media.audio_stream(clip.media_path) is None:
        warn(f"--audio: {clip.path} has no audio track; writing a silent video")
        return None
    return clip.media_path


warn, note, status, inform, say = utils.warn, utils.note, utils.status, utils.inform, utils.say  # one voice


def metrics_path(args, output):
    """reconstruction's metrics.csv: in the dataset output folder, or beside the file datamode's output."""
    if args.datamode == "dataset":
        return os.path.join(dataset_output_dir(args), "metrics.csv")
    return os.path.join(os.path.dirname(output.rstrip("/" + os.sep)), "metrics.csv")


def report_reconstruction(losses, path):
    """Print and save the per-video and mean L1 (the mean over every frame, as reconstruction.py)."""
    import numpy as np

    rows = [["video", "frames", "l1"]]
    for name, values in losses.items():
        rows.append([name, len(values), f"{np.mean(values):.8f}"])
        say(f"L1 {name}: {np.mean(values):.6f} ({plural(len(values), 'frame')})")
    every_frame = [value for values in losses.values() for value in values]
    rows.append(["mean", len(every_frame), f"{np.mean(every_frame):.8f}"])
    say(f"mean L1: {np.mean(every_frame):.6f} ({plural(len(losses), 'video')}, "
        f"{plural(len(every_frame), 'frame')}); wrote {path}")
    datasets.write_csv_atomically(path, rows)


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
            say(f"TensorBoard trace written under {LOG_DIR}/ (to view it: pip install tensorboard "
                f"tensorboard-plugin-profile, then tensorboard --logdir {LOG_DIR}, Profile tab)")

    def __exit__(self, *exc):
        self.stop()
        return False


# --------------------------------------------------------------------------------------------------
# Jobs per datamode
# --------------------------------------------------------------------------------------------------

def file_jobs(args, config):
    """The one job of --datamode file: animate --source_image, or reconstruct the driving video.

    With --crop the photo is read whole (upright, as its EXIF says) and its faces are found once
    TensorFlow has loaded (crop_inputs); the checks here need no detector.
    """
    frame_shape = config.frame_shape
    reconstruction = args.mode == "reconstruction"
    source_path = source = photo = None
    if not reconstruction:
        source_path = args.source_image or example_input(utils.EXAMPLE_SOURCE, "--source_image")
        utils.require_file(source_path, "an image", "--source_image")
        if crops_source(args) or args.list_faces:
            photo = faces.read_photo_upright(source_path)
        else:
            source = read_source(source_path, frame_shape)
    driving_path = args.driving_video or example_input(utils.EXAMPLE_DRIVING, "--driving_video")
    utils.require_file(driving_path, "a video", "--driving_video")
    check_face_model(args, config)
    output = utils.output_path(args.output, source_path, driving_path, args.mode, args.dontappend)
    open_driving = functools.partial(media.open_driving_clip, driving_path, frame_shape)
    with open_driving() as clip:  # a bad video fails now, before the model loads
        check_driving_clip(clip, args.frames, frame_shape, stretched_warning=not crops_driving(args))
    return [jobs.Job(os.path.basename(driving_path), open_driving, source, output,
                     animate.Motion(args.relative, args.adapt), driving_path=driving_path, source_path=source_path,
                     photo=photo)]


def csv_jobs(args, config):
    """The jobs --jobs FILE.csv lists, one per row, with the run's --mode and motion flags.

    Each row's inputs are read when its job renders: a missing image or a broken video fails that job
    only, and the others are written.
    """
    shape = config.frame_shape
    reconstruction = args.mode == "reconstruction"
    listed = []
    for row in jobs.read_jobs_csv(args.jobs, needs_source=not reconstruction):
        output = utils.output_path(row.output, row.source_image, row.driving_video, args.mode, args.dontappend)
        check_output_format(f"--jobs {args.jobs}, line {row.line}", output)
        open_source = None if reconstruction else functools.partial(jobs.read_source, row.source_image, shape)
        listed.append(jobs.Job(os.path.basename(output.rstrip("/")),
                               functools.partial(media.open_driving_clip, row.driving_video, shape), None, output,
                               animate.Motion(args.relative, args.adapt), driving_path=row.driving_video,
                               source_path=row.source_image, open_source=open_source))
    return listed


def check_output_format(where, output):
    """An output must be a folder (ends in /) or a file FrameWriter writes."""
    extension = os.path.splitext(output)[1].lower()
    if not output.endswith("/") and extension not in media.VIDEO_OUTPUT_EXTENSIONS:
        raise utils.UserError(f"{where}: {output}: cannot write {extension or 'a file without extension'} "
                              f"(give one of {', '.join(media.VIDEO_OUTPUT_EXTENSIONS)}, or a folder ending in /)")


# Published models whose training data is not faces: the face detector cannot find their subject.
NOT_FACE_MODELS = ("taichi", "bair", "fashion", "mgif")


def crops_source(args):
    return args.mode == "animate" and (args.crop in ("both", "source") or args.crop_box is not None)


def crops_driving(args):
    return args.crop in ("both", "driving") or args.driving_crop_box is not None


def detects_faces(args):
    """Whether the run searches the photo or the video for faces (--crop without boxes given by hand)."""
    detects_source = crops_source(args) and args.crop_box is None
    detects_driving = args.crop in ("both", "driving") and args.driving_crop_box is None
    return detects_source or detects_driving


def check_face_model(args, config):
    """--crop detects faces: refused for a model of another domain unless the boxes are given by hand."""
    name = os.path.basename(config.path)
    if (detects_faces(args) or args.list_faces) and name.startswith(NOT_FACE_MODELS):
        raise utils.UserError(f"--crop finds faces, and {name} is not a face model: give the boxes by hand with "
                              f"--crop_box X,Y,W,H (photo) and --driving_crop_box X,Y,W,H (video)")


def crop_inputs(args, plan, timings=None):
    """--crop: find the faces (with mtcnn's detector TensorFlow is loaded by now; the LiteRT one needs none), then
    crop the source and the driving video.
    With --profile, building the detector and searching the photo and the clip are timed apart."""
    shape = plan.config.frame_shape
    if detects_faces(args):
        _timed(timings, "build detector", faces.detector)()
    for job in plan.jobs:
        if job.photo is not None and crops_source(args):
            boxes = _timed(timings, "detect photo", source_boxes)(args, job, shape)
            job.faces = [(faces.crop_and_resize(job.photo, box, shape), box) for box in boxes]
            job.source = job.faces[0][0]
            say(f"{job.name}: animating {plural(len(boxes), 'face')} of the photo at " +
                "; ".join(str(box) for box in boxes))
        if crops_driving(args):
            box = _timed(timings, "detect clip", driving_box)(args, job, shape)
            job.open_driving = functools.partial(open_cropped_driving, job.driving_path, box, shape)


def source_boxes(args, job, shape):
    """The photo's crop boxes: --crop_box, or one per face found (or the --face one), left to right."""
    if args.crop_box is not None:
        faces.warn_if_small(args.crop_box, shape, args.source_image)
        return [args.crop_box]
    name = args.source_image or utils.EXAMPLE_SOURCE
    return [box for _, box in faces.source_crops(job.photo, shape, name, face=args.face)]


def driving_box(args, job, shape):
    """The driving video's one fixed crop box: --driving_crop_box, or the longest face track's (--driving_face)."""
    if args.driving_crop_box is not None:
        return args.driving_crop_box
    limit = args.frames if args.frames > 0 else None
    with media.open_video(job.driving_path) as video:
        box, track, found = faces.driving_crop_box(video, shape, job.driving_path, face=args.driving_face,
                                                   max_frames=limit)
    say(f"{job.name}: following face track {found.index(track)} of {len(found)} (frames {track.start}-{track.end}), "
        f"crop box {box}")
    return box


def open_cropped_driving(path, box, shape):
    return faces.DrivingCrop(media.open_video(path), box, shape)


def list_faces(args, plan):
    """--list_faces: the photo's faces and the driving video's face tracks, then exit."""
    for job in plan.jobs:
        if job.photo is not None:
            found = faces.detect_faces(job.photo)
            say(f"{args.source_image or utils.EXAMPLE_SOURCE}: {plural(len(found), 'face')}")
            for index, face in enumerate(found):
                x, y, w, h = face.box
                say(f"  face {index}: box {round(x)},{round(y)},{round(w)},{round(h)} "
                    f"confidence {face.confidence:.3f}")
        with media.open_video(job.driving_path) as video:
            found = faces.tracks(faces.detect_video(video), hold_on_miss=True)
        say(f"{job.driving_path}: {plural(len(found), 'face track')}")
        for index, track in enumerate(found):
            x, y, w, h = track.box
            say(f"  track {index}: frames {track.start}-{track.end}, box {round(x)},{round(y)},{round(w)},{round(h)}")


def read_source(path, frame_shape):
    """The source image, preprocessed as demo.py does, with a warning when resizing will stretch it."""
    image = media.decode_image(path)
    warn_if_stretched(path, "source image", image.shape[1], image.shape[0], frame_shape)
    return media.preprocess_frame(image, frame_shape)


def check_driving_clip(clip, frames, frame_shape, stretched_warning=True):
    """A still image is not a driving video; --frames beyond the clip's end is said, not ignored."""
    if clip.frame_count == 1 and os.path.splitext(clip.path)[1].lower() not in media.VIDEO_EXTENSIONS:
        raise utils.UserError(f"--driving_video {clip.path}: a still image, not a video (give a video, "
                              f"e.g. .mp4 or .gif, whose motion the source will follow)")
    if frames > 0 and clip.frame_count is not None and frames > clip.frame_count:
        warn(f"--frames {frames}: {clip.path} has {plural(clip.frame_count, 'frame')}; animating all of them")
    if clip.size is not None and stretched_warning:
        warn_if_stretched(clip.path, "driving video", *clip.size, frame_shape)


def warn_if_stretched(path, what, width, height, frame_shape):
    """The original resizes to frame_shape whatever the aspect (kept, for parity); say when that distorts."""
    model_height, model_width = frame_shape[:2]
    if abs((width / height) / (model_width / model_height) - 1) > ASPECT_TOLERANCE:
        warn(f"{path}: the {what} is {width}x{height} and will be stretched to the model's "
             f"{model_width}x{model_height}; crop it to that aspect first (or see --crop)")


def dataset_jobs(args, config):
    """Jobs over the test split of the config's dataset (or --root_dir), as the original run.py's modes.

    reconstruction: each test video from its own first frame (at most reconstruction_params.num_videos + 1,
    as reconstruction.py);
    animate: animate_params.num_pairs (driving, source) pairs, with relative motion and movement
    scaling from animate_params.normalization_params (or --relative / --adapt). The videos are listed
    now, so a bad dataset fails before the model loads, and opened one job at a time.
    """
    root = args.root_dir or config.dataset_params.get("root_dir")
    if not root:
        raise utils.UserError("the config has no dataset_params.root_dir; pass --root_dir")
    videos = datasets.dataset_test_videos(root)
    folder = dataset_output_dir(args)
    shape = config.frame_shape
    if args.mode == "reconstruction":
        params = config.reconstruction_params
        extension = output_format(params)
        if params.get("num_videos") is not None:
            # reconstruction.py stops at `it > num_videos`, so it reconstructs num_videos + 1 videos.
            videos = videos[:params["num_videos"] + 1]
        return (dataset_job(os.path.basename(path), path, None, os.path.join(folder, _stem(path) + extension), shape)
                for path in videos)
    params = config.animate_params
    normalization = params.get("normalization_params") or {}
    # normalize_kp's own default for use_relative_jacobian is False; a config without the key but run with
    # --relative follows demo.py.
    motion = animate.Motion(relative=args.relative or bool(normalization.get("use_relative_movement", False)),
                            adapt=args.adapt or bool(normalization.get("adapt_movement_scale", False)),
                            relative_jacobian=bool(normalization.get("use_relative_jacobian", args.relative)))
    extension = output_format(params)
    by_name = {os.path.basename(path): path for path in videos}
    pairs = datasets.animation_pairs(list(by_name), params.get("num_pairs", 50), pairs_list(config))
    return (dataset_job(f"{driving}-{source}", by_name[driving], by_name[source],
                        os.path.join(folder, f"{_stem(driving)}-{_stem(source)}{extension}"), shape, motion)
            for driving, source in pairs)


def dataset_job(name, driving_path, source_path, output, frame_shape, motion=animate.Motion()):
    """One dataset job; its source is the first frame of `source_path` (None: reconstruction), read when
    the job renders, so a broken source video fails that job only."""
    open_source = None if source_path is None else functools.partial(jobs.first_frame, source_path, frame_shape)
    return jobs.Job(name, functools.partial(media.open_dataset_clip, driving_path, frame_shape), None, output, motion,
                    driving_path=driving_path, source_path=source_path, open_source=open_source)


def dataset_output_dir(args):
    """The folder --datamode dataset writes to: --output as given when it ends in '/' or with
    --dontappend, else --output plus '_<mode>' (output/result -> output/result_reconstruction/)."""
    if args.output.endswith(("/", os.sep)) or args.dontappend:
        return args.output.rstrip("/" + os.sep)
    return f"{args.output}_{args.mode}"


def output_format(params):
    """The extension a dataset mode writes its videos with: the config's `format` (default .mp4)."""
    extension = params.get("format", ".mp4")
    if extension not in media.VIDEO_OUTPUT_EXTENSIONS:
        raise utils.UserError(f"format {extension!r} in the config: expected one of "
                              f"{', '.join(media.VIDEO_OUTPUT_EXTENSIONS)}")
    return extension


def pairs_list(config):
    """The config's dataset_params.pairs_list when that file exists (relative to the current directory,
    as in the original), else None: pairs are then drawn within the test split."""
    path = config.dataset_params.get("pairs_list")
    return path if path and os.path.isfile(path) else None


def _stem(path):
    return os.path.splitext(os.path.basename(path.rstrip("/" + os.sep)))[0]


def _device(name):
    """tf.device(name), or no placement when --device is not given."""
    if name is None:
        return contextlib.nullcontext()
    return backends.tensorflow().device(name)


def load_models(args, config, checkpoint_path, exports=None):
    """animate.Models for --target: built from the checkpoint (direct) or loaded from build.py's exports
    (`exports`, the CheckedExports prepare() found; looked up again when not given)."""
    return load_models_and_cache_writer(args, config, checkpoint_path, exports)[0]


def load_models_and_cache_writer(args, config, checkpoint_path, exports=None, checkpoint=None):
    """(load_models' Models, a callable that writes the direct target's model cache entry after a miss, or
    None when there is nothing to write). `checkpoint`: read_checkpoint's callable, when it has run already."""
    if args.target != "direct":
        return (exports or export_checks.check_exports(args, checkpoint_path)).load(args.target), None
    state_dicts, verified = (checkpoint or read_checkpoint(args, config, checkpoint_path))()
    if verified is None:
        return animate.direct_models(config, state_dicts, checkpoint_path, prescale=args.prescale,
                                     precision=args.precision), None
    return model_cache.direct_models(config, state_dicts, checkpoint_path, verified, model_cache_of_run(),
                                     prescale=args.prescale, precision=args.precision)


def read_checkpoint(args, config, checkpoint_path, verify_in_background=False):
    """What the direct target reads before it needs TensorFlow: the checkpoint's tensors and the model cache
    entry's check (its files' sha256, 0.2-0.4 s at vox-256). Returns a callable for (the tensors, the cache's
    Verified, or None with --no_cache). Files and hashes only, nothing printed.

    verify_in_background: the entry is checked on a thread while TensorFlow imports (sha256 runs without
    the GIL). The checkpoint itself is read here, before: parsing it is Python work, which on a thread
    slowed the import about as much as it overlapped it (README, Run F)."""
    state_dicts = checkpoint_loader.load_state_dicts(checkpoint_path, use_torch=args.loadwithtorch)
    verified = lambda: None  # noqa: E731
    if not args.no_cache:
        key = model_cache.cache_key(config, checkpoint_path, state_dicts, args.prescale, args.device, args.precision)
        verify = functools.partial(model_cache_of_run().verify, key)
        verified = in_background(verify, name="cache-entry") if verify_in_background else verify

    def result():  # once: the tensors are garbage once the models are built from them
        nonlocal state_dicts
        handed, state_dicts = state_dicts, None
        return handed, verified()

    return result


def model_cache_of_run():
    return model_cache.ModelCache(warn=warn, status=inform)


def write_model_cache(write_entry):
    """After the outputs are written: write the model cache entry (a miss's). Ctrl-C now loses only the entry."""
    try:
        write_entry()
    except KeyboardInterrupt:
        print("interrupted: the outputs are complete; the model cache entry was not written", file=sys.stderr)
        sys.exit(130)


def clear_cache():
    """--clear_cache: empty the model cache folder and say how much that freed."""
    cache = model_cache.ModelCache()
    try:
        freed = cache.clear()
    except OSError as err:
        utils.print_error(f"{cache.folder}: cannot clear the model cache ({utils.os_reason(err)})")
        return 1
    say(f"cleared the model cache {cache.folder}: freed {model_cache.megabytes(freed)}")
    return 0


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    warn(str(message))


def main(argv=None):
    args = parse_args(argv)
    backends.set_verbosity("quiet" if args.quiet else "verbose" if args.verbose else "normal")
    if args.clear_cache:
        return clear_cache()
    try:
        with warnings.catch_warnings():
            # Library warnings (a broken video tail, an audio track that does not fit) as one line each.
            warnings.showwarning = _one_line_warning
            plan = prepare(args)  # before TensorFlow: a typo fails in well under a second
            run(args, plan)
    except KeyboardInterrupt:  # Ctrl-C while TensorFlow imports must be as clean as later
        print("interrupted: the outputs completed so far are kept, nothing half-written; run the same command "
              "again to resume" if is_batch(args) else "interrupted: no output written", file=sys.stderr)
        return 130
    except (utils.UserError, checkpoint_loader.CheckpointError) as err:
        utils.print_error(err)
        return 1
    return 0


def exit_without_teardown(code):
    """End the process with `code` once main has returned and TensorFlow is loaded: run the atexit handlers
    (temporary folders, logging, Ray), flush the standard streams, and skip the interpreter's teardown,
    which then frees TensorFlow's objects one by one for 0.8-1.0 s after the output is written (strace:
    CPU, no I/O). Every file run.py writes is closed before main returns."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (| head): nothing more can reach it
            pass
    os._exit(code)


if __name__ == "__main__":
    exit_code = main()
    if "tensorflow" in sys.modules:
        exit_without_teardown(exit_code)
    sys.exit(exit_code)
