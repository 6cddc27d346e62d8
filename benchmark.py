"""Speed and memory of every target against the original PyTorch code, in one run on one machine.

    python benchmark.py                                              # the full table (vox-256, 16 frames)
    python benchmark.py --targets direct,tflite --batch 4 --frames 8  # a quick look
    FOMM_ORIGINAL=/path/to/first-order-model python benchmark.py     # + the original's demo.make_animation
    python benchmark.py --checkpoint CKPT --end_to_end 32,300 --no-steady  # fresh processes, end to end
    python benchmark.py --checkpoint CKPT --targets direct,tflite --crop 16 --no-steady  # what --crop adds

Every row animates the same source image with the same N driving frames (relative, adapt), end to
end: decode the driving video, preprocess, animate, encode an mp4. Weights are random (speed does not
depend on their values); the exports of the savedmodel / tflite / onnx rows are built from the same random
weights by build.py's own functions into a temporary folder. Each row runs in a subprocess of its
own, so that its peak resident memory (ru_maxrss) is its own, and starts with one untimed warm-up
batch (tracing, interpreter allocation). The original row needs torch and FOMM_ORIGINAL (imported at
run time like tests/make_fixtures.py; none of its code lives here).

FLOPs per frame are TensorFlow's profiler count (tf.compat.v1.profiler float_operation) of each
module's graph at batch 1 (the GFLOP/frame column: per-frame modules plus per-video work shared by
the frames). "% roof" is the FLOP rate of a row's model time (its modules' calls, without decoding and
encoding) as a fraction of the roof of the row's own dtype (float32, bfloat16, int8), measured right
before each row: the faster of TensorFlow's 4096^2 matmul and a conv at the generator's bottleneck
shape (3x3, 256 -> 256, 64x64, batch 4), and for int8 that conv as a full-integer TF Lite model run by
XNNPACK; the roof is the fastest measurement of the run. NumPy is no roof: these machines pin OpenBLAS
to its AVX2 kernels. The streaming check runs run.py on synthetic 64- and
1,024-frame clips with the small example model and compares their peak RSS.

--end_to_end N,M times what users wait for: a fresh run.py process per target (direct with an empty and
with a filled model cache, savedmodel, tflite, tflite-int8, onnx, the bfloat16 rows) and the original's
demo.py path, from the command's start to the first frame, to the output file written, and to exit, on
clips of N and M frames; then what each of those rows imports before its model loads (TensorFlow's
SavedModel runtime, all of TensorFlow, LiteRT, onnxruntime, torch), timed alone in fresh processes.

--crop N times what run.py --crop adds (issue 14's budget: at most 15% of the end-to-end time): per target
(direct, savedmodel, tflite, onnx among --targets), a fresh run.py on the cropped inputs (the source image,
an N-frame clip of the driving video) against a fresh run.py --crop on the same pictures in the wild
(wild_inputs.py: the source pasted on a 1920x1080 photo, the clip placed in a 1280x720 video), and the
split of a third, profiled --crop run: TensorFlow's import where only mtcnn's face detector needs it (tflite
and onnx find faces on LiteRT with build.py's detector files, so "-" there), building the detector,
detection on the photo and on the clip, and per frame the crop + resize, animation, paste-back and encoding.

Prints a markdown table and writes JSON (--json). The machine is shared and noisy: compare rows of
one run, not numbers across runs.
"""
import argparse
import datetime
import itertools
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the terminal

REPO_DIR = os.path.dirname(os.path.abspath(__file__))
TARGETS = ("direct", "savedmodel", "tflite", "tflite-float16", "tflite-int8", "tflite-int8full", "onnx", "original",
           "direct-nocache", "direct-plain", "direct-bfloat16", "savedmodel-bfloat16")
DEFAULT_TARGETS = ("direct", "savedmodel", "tflite", "tflite-float16", "original")
# The source / driving pair every row animates (--datadir): by default the shared data folder beside
# this checkout (../shared/data) when it holds a driving.mp4, else the bundled example.
SHARED_DATA_DIR = os.path.normpath(os.path.join(REPO_DIR, os.pardir, "shared", "data"))
EXAMPLE_DIR = os.path.join(REPO_DIR, "example")
EXPORT_NAME = "bench"  # <model> of the temporary exports
RESULT_PREFIX = "BENCHMARK_RESULT "  # how a job's one JSON line is told apart from library output
# The table times every module apart (source_encoder and generator_cached too), under its own name.
MODULE_STAGES = {name: name for name in ("kp_detector", "process_kp_driving", "generator", "source_encoder",
                                         "generator_cached")}
# The roof's two kernels: a square matmul, and the generator's bottleneck conv (batch, size, channels, kernel):
# twelve 3x3 256 -> 256 convolutions at 64 x 64 are most of a vox-256 frame's FLOPs.
ROOF_MATMUL = 4096
ROOF_CONV = (4, 64, 256, 3)
ROOF_DTYPES = ("float32", "bfloat16", "int8")
# /proc/cpuinfo flags that say which dtype runs natively (printed beside the roofs).
ROOF_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512_fp16", "amx_bf16", "amx_int8")
STREAM_LENGTHS = (64, 1024)
# int8's quality cost is measured on a trained model (random weights would say nothing): the example's.
EXAMPLE = {name: os.path.join(REPO_DIR, "example", file) for name, file in (
    ("config", "demo-256.yaml"), ("checkpoint", "demo-cpk.pth.tar"), ("source_image", "source.png"),
    ("driving_video", "driving.mp4"))}


def default_datadir():
    """--datadir's default: ../shared/data beside this checkout when it holds a driving.mp4, else example/."""
    return SHARED_DATA_DIR if os.path.isfile(os.path.join(SHARED_DATA_DIR, "driving.mp4")) else EXAMPLE_DIR


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Frames/s and peak memory of every target vs the original.")
    parser.add_argument("--config", default=os.path.join(REPO_DIR, "config", "vox-256.yaml"),
                        help="model config (default: config/vox-256.yaml)")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                        help=f"comma-separated subset of {','.join(TARGETS)} (default: {','.join(DEFAULT_TARGETS)}); "
                             "direct-nocache runs without the cached source encoder, direct-plain also unfused "
                             "(the port before its speed work); tflite-int8 is build.py --int8 (dynamic range), "
                             "tflite-int8full build.py --precision int8 (full-integer generator, calibrated on the "
                             "example clip)")
    parser.add_argument("--batch", default="1,4,8", help="comma-separated batch sizes (default: 1,4,8)")
    parser.add_argument("--frames", type=int, default=16, help="driving frames per row (default: 16)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed passes over the frames per row; the fastest counts (default: 2)")
    parser.add_argument("--datadir", metavar="DIR", default=default_datadir(),
                        help="folder holding the source.png and driving.mp4 every row animates (default: "
                             "../shared/data beside this checkout when it holds a driving.mp4, else example/)")
    parser.add_argument("--source_image", help="source image (default: source.png of --datadir)")
    parser.add_argument("--driving_video", help="driving video (default: driving.mp4 of --datadir)")
    parser.add_argument("--streaming", action=argparse.BooleanOptionalAction, default=True,
                        help="peak RSS of run.py on 64 vs 1,024 driving frames (default: on)")
    parser.add_argument("--end_to_end", metavar="FRAMES", default="",
                        help="also time fresh run.py processes (command start -> file written, and the first frame) "
                             "on clips of these comma-separated frame counts, e.g. 32,300; needs --checkpoint")
    parser.add_argument("--checkpoint", help="the checkpoint the end-to-end rows load (direct and original) and "
                                             "build their exports from; a published one, or random weights in "
                                             "its format")
    parser.add_argument("--crop", metavar="FRAMES", type=int, default=0,
                        help="also time run.py --crop (fresh processes) on a 1920x1080 photo and a 1280x720 clip of "
                             "FRAMES frames against the same run on the cropped inputs, with the split of what "
                             "--crop adds (detection, crop + resize, paste, encode); needs --checkpoint")
    parser.add_argument("--steady", action=argparse.BooleanOptionalAction, default=True,
                        help="the steady-state rows (default: on; --no-steady with --end_to_end times only those)")
    parser.add_argument("--json", default=os.path.join(REPO_DIR, "output", "benchmark.json"),
                        help="where to write the results (default: output/benchmark.json)")
    parser.add_argument("--report", metavar="JSON", help="only print the table of an earlier run's JSON")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # internal: run one job (a JSON spec) and exit
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    try:
        args.batch = [int(b) for b in args.batch.split(",")]
    except ValueError:
        parser.error(f"--batch takes comma-separated integers, got {args.batch!r}")
    if args.frames < 1 or args.repeats < 1 or min(args.batch) < 1:
        parser.error("--frames, --repeats and every --batch must be at least 1")
    try:
        args.end_to_end = [int(n) for n in args.end_to_end.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--end_to_end takes comma-separated frame counts, got {args.end_to_end!r}")
    if args.end_to_end and not (args.checkpoint and os.path.isfile(args.checkpoint)):
        parser.error("--end_to_end needs --checkpoint PATH (an existing checkpoint file)")
    if args.crop < 0:
        parser.error("--crop takes a frame count of at least 1 (0: no --crop rows)")
    if args.crop and not (args.checkpoint and os.path.isfile(args.checkpoint)):
        parser.error("--crop needs --checkpoint PATH (an existing checkpoint file)")
    if args.crop and not crop_targets(args.targets):
        parser.error(f"--crop times run.py targets: give --targets with one of {', '.join(CROP_TARGETS)}")
    args.source_image = args.source_image or os.path.join(args.datadir, "source.png")
    args.driving_video = args.driving_video or os.path.join(args.datadir, "driving.mp4")
    return args


# --------------------------------------------------------------------------------------------------
# Jobs: each runs in a subprocess of its own and prints one JSON result line
# --------------------------------------------------------------------------------------------------

def run_job(spec):
    """Start `benchmark.py --job spec` and return its result dict ({'error': ...} if it failed)."""
    command = [sys.executable, os.path.abspath(__file__), "--job", json.dumps(spec)]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_DIR)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return {"error": lines[-1] if lines else f"exit status {result.returncode}"}


def job_main(spec):
    """Entry point of a job subprocess."""
    kinds = {"build": job_build, "flops": job_flops, "roof": job_roof, "row": job_row,
             "original": job_original, "stream": job_stream, "int8_quality": job_int8_quality,
             "end_to_end": job_end_to_end, "end_to_end_original": job_end_to_end_original, "crop": job_crop}
    result = kinds[spec["kind"]](spec)
    result["peak_rss_mb"] = peak_rss_mb()
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def peak_rss_mb():
    """This process's peak resident set size (Linux reports ru_maxrss in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_keras_models(config_path):
    """(config, KPDetector, OcclusionAwareGenerator) as created, before any inference fusing; seeded weights."""
    import keras

    import modules
    import model_config

    config = model_config.load(config_path).model
    keras.utils.set_random_seed(0)
    return config, modules.create_kp_detector(config), modules.create_generator(config)


def job_build(spec):
    """Every build.py export (SavedModel, TF Lite files) of every module, from seeded random weights."""
    import keras

    import build
    import model_config
    import precision

    config = model_config.load(spec["config"]).model
    variants = [kind for kind in spec["tflite"] if kind not in ("float32", "int8full")]
    flags = [f"--{kind}" for kind in variants] if spec["tflite"] else ["--nolite"]
    flags += ["--onnx"] if spec.get("onnx") else []
    builds = [(build.MODULES, flags)]
    if spec.get("bfloat16"):  # the generator modules again, as <module>-bfloat16 SavedModels
        builds.append((precision.BFLOAT16_MODULES, ["--precision", "bfloat16", "--nolite"]))
    if "int8full" in spec["tflite"]:  # the generator again, as full-integer generator-int8full.tflite
        builds.append((precision.INT8_MODULES, ["--precision", "int8", "--calibration", EXAMPLE["driving_video"]]))
    for module_names, build_flags in builds:
        args = build.parse_args(["--model", EXPORT_NAME, "--outdir", spec["outdir"], *build_flags])
        calibration = random_weights_calibration(config, args)
        for name in module_names:
            def make(winograd=False, name=name, args=args):
                keras.utils.set_random_seed(0)  # the same weights in every module (and build) of the generator
                return build.make_module(name, config, None, "random weights", args, winograd)  # None: random
            build.build_and_export(make, EXPORT_NAME, name, args, calibration.get(name))
    return {}


def random_weights_calibration(config, args):
    """build.py's int8 calibration samples ({module: samples}) for an int8 build, with the keypoints of the
    same seeded random kp_detector the float32 export holds; {} for any other build."""
    import keras

    import build

    if args.precision != "int8":
        return {}
    keras.utils.set_random_seed(0)
    return build.calibration_samples(config, None, "random weights", args)


def job_flops(spec):
    """GFLOP of one call of each module at batch 1: the original's graph and ours (fused, cached)."""
    import modules

    config, kp_detector, generator = random_keras_models(spec["config"])
    counts = {"kp_detector": graph_gflop(modules.KPDetectorModule(kp_detector, batch_size=1)),
              "generator (original)": graph_gflop(modules.GeneratorModule(generator, batch_size=1))}
    kp_detector = modules.fused_kp_detector(kp_detector)
    generator = modules.fused_generator(generator)
    counts["kp_detector (fused)"] = graph_gflop(modules.KPDetectorModule(kp_detector, batch_size=1))
    counts["generator (fused)"] = graph_gflop(modules.GeneratorModule(generator, batch_size=1))
    counts["source_encoder"] = graph_gflop(modules.SourceEncoderModule(generator))
    counts["generator_cached"] = graph_gflop(modules.CachedGeneratorModule(generator, batch_size=1))
    return {"gflop": counts}


def graph_gflop(module):
    """The profiler's float-op count of a module's frozen signature graph, in GFLOP."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    graph = convert_variables_to_constants_v2(module.concrete_function()).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops / 1e9


def job_roof(spec):
    """The roof per dtype: GFLOP/s of the faster of a 4096^2 matmul and a bottleneck-shaped conv.

    float32 and bfloat16 are timed in TensorFlow (oneDNN), int8 as a full-integer TF Lite conv through
    the interpreter the tflite rows use (XNNPACK). NumPy is left out on purpose: these machines pin
    OpenBLAS to its AVX2 kernels (OPENBLAS_CORETYPE=Haswell), so its matmul is no roof on AVX-512 CPUs.
    """
    repeats = spec.get("repeats", 5)
    kernels = {}
    for dtype in ("float32", "bfloat16"):
        kernels[dtype] = {"matmul": tensorflow_matmul_gflops(dtype, repeats), "conv": tensorflow_conv_gflops(dtype, repeats)}
    kernels["int8"] = {"conv": tflite_int8_conv_gflops(spec["tmpdir"], repeats)}
    return {"roof_gflops": {dtype: max(rates.values()) for dtype, rates in kernels.items()}, "kernels": kernels}


def tensorflow_matmul_gflops(dtype, repeats):
    """GFLOP/s of a ROOF_MATMUL^2 matmul in TensorFlow at `dtype`."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal([ROOF_MATMUL, ROOF_MATMUL]), dtype)
    # Only a corner comes back to Python, so the copy of the result is not timed.
    matmul = tf.function(lambda: tf.matmul(a, a)[:1, :1], autograph=False)
    return 2 * ROOF_MATMUL ** 3 / best_seconds(lambda: matmul().numpy(), repeats) / 1e9


def tensorflow_conv_gflops(dtype, repeats):
    """GFLOP/s of the generator's bottleneck conv (ROOF_CONV) in TensorFlow at `dtype`."""
    import tensorflow as tf

    batch, size, channels, kernel = ROOF_CONV
    x = tf.cast(tf.random.normal([batch, size, size, channels]), dtype)
    w = tf.cast(tf.random.normal([kernel, kernel, channels, channels], stddev=0.02), dtype)
    conv = tf.function(lambda: tf.nn.conv2d(x, w, 1, "SAME")[:1, :1, :1, :1], autograph=False)
    return conv_flop() / best_seconds(lambda: conv().numpy(), repeats) / 1e9


def conv_flop():
    batch, size, channels, kernel = ROOF_CONV
    return 2 * batch * size * size * channels * channels * kernel * kernel


def tflite_int8_conv_gflops(tmpdir, repeats):
    """GFLOP/s of ROOF_CONV as a full-integer (int8 activations and weights) TF Lite model, run by the
    interpreter the tflite rows use on all cores (XNNPACK's int8 kernels, VNNI where the CPU has it)."""
    import numpy as np

    import export_files

    batch, size, channels, _ = ROOF_CONV
    interpreter = export_files.tflite_interpreter(model_content=int8_conv_flatbuffer())
    interpreter.allocate_tensors()
    [inp] = interpreter.get_input_details()
    [out] = interpreter.get_output_details()
    interpreter.set_tensor(inp["index"], np.random.default_rng(0).integers(
        -128, 127, [batch, size, size, channels], dtype=np.int8))
    seconds = best_seconds(lambda: (interpreter.invoke(), interpreter.get_tensor(out["index"])), repeats)
    return conv_flop() / seconds / 1e9


def int8_conv_flatbuffer():
    """ROOF_CONV as a .tflite with int8 input, output, weights and activations (TF Lite builtins only)."""
    import numpy as np
    import tensorflow as tf

    batch, size, channels, kernel = ROOF_CONV
    weights = tf.constant(np.random.default_rng(0).normal(0, 0.02, [kernel, kernel, channels, channels]), tf.float32)
    conv = tf.function(lambda x: tf.nn.conv2d(x, weights, 1, "SAME"),
                       input_signature=[tf.TensorSpec([batch, size, size, channels], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([conv.get_concrete_function()], conv)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(1)
    converter.representative_dataset = lambda: (
        [rng.normal(size=[batch, size, size, channels]).astype(np.float32)] for _ in range(2))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    return converter.convert()


def best_seconds(function, repeats):
    """The fastest of `repeats` timed calls after one warm-up call (others' work only slows a call down)."""
    function()
    return min(timed(function) for _ in range(repeats))


def cpu_flags():
    """The CPU's instruction-set flags that decide each dtype's roof, in ROOF_FLAGS' order."""
    import precision

    flags = precision.cpu_flags()
    return [flag for flag in ROOF_FLAGS if flag in flags]


def timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def best_pass(spec, run_pass, timings_type):
    """The fastest of spec['repeats'] timed passes: {'seconds', 'module_seconds'}.

    run_pass(timings) animates the N frames once, end to end, timing its modules in `timings`, an
    animate.Timings. Other work on a shared machine only ever slows a pass down, so the fastest one
    is the closest to what the code itself costs.
    """
    passes = []
    for _ in range(spec["repeats"]):
        timings = timings_type()
        start = time.perf_counter()
        run_pass(timings)
        passes.append({"seconds": time.perf_counter() - start, "module_seconds": timings.seconds})
    return min(passes, key=lambda p: p["seconds"])


def job_row(spec):
    """One target at one batch size: load, warm up, then animate N frames end to end (best of the passes)."""
    import numpy as np

    import animate
    import media

    started = time.perf_counter()
    config, models = load_row_models(spec)
    load_s = time.perf_counter() - started
    source = media.read_image(spec["source_image"], config.frame_shape)
    warmup = list(driving_frames(spec["driving_video"], config.frame_shape, spec["batch"]))
    animate.Animator(models, source, animate.Motion(relative=True, adapt=True),
                     animate.Batching(spec["batch"])).animate_batch(
        np.stack(warmup))
    output = os.path.join(spec["tmpdir"], f"{spec['target']}-{spec['batch']}.mp4")

    def run_pass(timings):
        frames = driving_frames(spec["driving_video"], config.frame_shape, spec["frames"])
        with media.FrameWriter(output, 25) as writer:
            for prediction in animate.animate(animate.timed_models(models, timings, MODULE_STAGES), source, frames, relative=True,
                                              adapt=True, batch_size=spec["batch"]):
                writer.write(media.to_uint8(prediction))

    return dict(best_pass(spec, run_pass, animate.Timings), load_s=load_s, cached=models.cached)


def driving_frames(path, frame_shape, count):
    """`count` preprocessed frames of the driving video, starting over at its end when it is short."""
    import media

    def passes():
        with media.open_driving_clip(path, frame_shape) as clip:
            while True:
                yield clip  # iterating a clip again starts from its first frame

    return itertools.islice(itertools.chain.from_iterable(passes()), count)


def load_row_models(spec):
    """(config, animate.Models) for the row's target, loaded the way run.py loads them."""
    import keras

    import run
    import model_config

    config = model_config.load(spec["config"]).model
    if spec["target"].startswith("direct"):
        keras.utils.set_random_seed(0)
        return config, direct_variant(config, spec["target"])
    target, _, kind = spec["target"].partition("-")
    argv = ["--target", target, "--model", EXPORT_NAME, "--exportdir", spec["outdir"],
            "--batchsize", str(spec["batch"])]
    argv += {"float16": ["--float16"], "int8": ["--int8"], "int8full": ["--precision", "int8"],
             "bfloat16": ["--precision", "bfloat16"]}.get(kind, [])
    return config, run.load_models(run.parse_args(argv), config, None)


def direct_variant(config, target):
    """animate.Models of the direct target ('direct', as run.py runs it) or of an ablation of it."""
    import dataclasses

    import animate
    import modules

    if target == "direct-plain":
        def numpy_call(module):
            return lambda **kwargs: {k: v.numpy() for k, v in module(**kwargs).items()}

        return animate.Models(numpy_call(modules.KPDetectorModule(modules.create_kp_detector(config))),
                              numpy_call(modules.build_module("process_kp_driving", config)),
                              numpy_call(modules.GeneratorModule(modules.create_generator(config))),
                              config.estimate_jacobian)
    precision = "bfloat16" if target == "direct-bfloat16" else "float32"
    models = animate.direct_models(config, None, precision=precision)  # None: random weights
    if target == "direct-nocache":
        return dataclasses.replace(models, source_encoder=None, generator_cached=None)
    return models


def job_original(spec):
    """The original's demo.py path: read the video, demo.make_animation, write the mp4."""
    from skimage import img_as_ubyte

    import media
    import model_config
    from animate import Timings  # ours, imported before the original takes over the name `animate`

    original, demo = import_original()
    import imageio
    import torch

    config = model_config.load(spec["config"])
    params, frame_shape = config.raw["model_params"], config.frame_shape
    started = time.perf_counter()
    torch.manual_seed(0)
    generator = original.OcclusionAwareGenerator(**params["generator_params"], **params["common_params"]).eval()
    kp_detector = original.KPDetector(**params["kp_detector_params"], **params["common_params"]).eval()
    load_s = time.perf_counter() - started
    source = media.read_image(spec["source_image"], frame_shape)
    warmup = list(driving_frames(spec["driving_video"], frame_shape, 1))
    demo.make_animation(source, warmup, generator, kp_detector, relative=True, adapt_movement_scale=True, cpu=True)

    output = os.path.join(spec["tmpdir"], "original.mp4")
    normalize_kp = demo.normalize_kp

    def run_pass(timings):
        # demo.make_animation calls the normalize_kp it imported, so that one is timed in demo's namespace.
        demo.normalize_kp = timings.timed("process_kp_driving", normalize_kp)
        driving = list(driving_frames(spec["driving_video"], frame_shape, spec["frames"]))  # demo.py reads all
        predictions = demo.make_animation(source, driving, timings.timed("generator", generator),
                                          timings.timed("kp_detector", kp_detector), relative=True,
                                          adapt_movement_scale=True, cpu=True)
        imageio.mimsave(output, [img_as_ubyte(p) for p in predictions], fps=25)

    return dict(best_pass(spec, run_pass, Timings), load_s=load_s, cached=False,
                torch_threads=torch.get_num_threads())


def import_original():
    """(namespace, demo module) of the original, through tests/make_fixtures.py's import_original."""
    sys.path.insert(0, os.path.join(REPO_DIR, "tests"))
    import make_fixtures

    original = make_fixtures.import_original()
    return original, sys.modules["demo"]


def original_available():
    """None when the original row can run here, else why not."""
    root = os.environ.get("FOMM_ORIGINAL")
    if not root or not os.path.isfile(os.path.join(root, "modules", "generator.py")):
        return "FOMM_ORIGINAL is not set to a checkout of the original"
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed"
    return None


def job_stream(spec):
    """run.py with the small example model on a clip of spec['frames'] frames; its peak RSS is the result."""
    import run

    example = os.path.join(REPO_DIR, "example")
    code = run.main(["--config", os.path.join(example, "demo-256.yaml"),
                     "--checkpoint", os.path.join(example, "demo-cpk.pth.tar"),
                     "--source_image", os.path.join(example, "source.png"), "--driving_video", spec["clip"],
                     "--output", os.path.join(spec["tmpdir"], f"stream-{spec['frames']}.mp4"),
                     "--relative", "--adapt"])
    return {"exit_code": code, "frames": spec["frames"]}


def job_int8_quality(spec):
    """float32 vs int8 TF Lite exports of the example model on the example clip.

    Animation (relative, adapt): the int8 predictions' max / mean abs difference from float32's.
    Reconstruction (the clip from its first frame): each one's L1 to the real frames, and the change.
    """
    import numpy as np

    import animate
    import build
    import run
    import media
    import model_config

    paths = ["--config", EXAMPLE["config"], "--checkpoint", EXAMPLE["checkpoint"]]
    if build.main([*paths, "--outdir", spec["outdir"], "--int8"]) != 0:
        raise RuntimeError("build.py --int8 failed on the example model")
    config = model_config.load(EXAMPLE["config"]).model
    source = media.read_image(EXAMPLE["source_image"], config.frame_shape)
    with media.open_driving_clip(EXAMPLE["driving_video"], config.frame_shape) as clip:
        frames = list(clip)  # a short clip
    predictions, l1 = {}, {}
    for kind, flags in (("float32", []), ("int8", ["--int8"])):
        args = run.parse_args([*paths, "--target", "tflite", "--exportdir", spec["outdir"], *flags])
        models = run.load_models(args, config, EXAMPLE["checkpoint"])
        predictions[kind] = np.stack(list(animate.animate(models, source, frames, relative=True, adapt=True,
                                                          batch_size=4)))
        l1[kind] = float(np.mean([animate.reconstruction_l1(out["prediction"], frame)
                                  for frame, out in animate.reconstruct_frames(models, frames, animate.Batching(4))]))
    difference = np.abs(predictions["int8"] - predictions["float32"])
    return {"frames": len(frames), "prediction_max_abs": float(difference.max()),
            "prediction_mean_abs": float(difference.mean()), "reconstruction_l1": l1,
            "reconstruction_l1_change": l1["int8"] / l1["float32"] - 1}


def write_clip(source_video, path, count, place=None):
    """A `count`-frame clip of `source_video` played forwards and backwards, written as a stream; `place`
    (a generator of frames from frames, e.g. wild_inputs.placed_clip) changes every frame on the way."""
    import media

    with media.open_video(source_video) as video:
        fps = video.fps
        frames = [frame[..., :3] for frame in video]  # the short source clip; the long one is never held
    loop = frames + frames[-2:0:-1]
    looped = (loop[index % len(loop)] for index in range(count))
    with media.FrameWriter(path, fps) as writer:
        for frame in (looped if place is None else place(looped)):
            writer.write(frame)


# --------------------------------------------------------------------------------------------------
# End to end: what a user waits for, a fresh process per run (--end_to_end)
# --------------------------------------------------------------------------------------------------

# The rows, per requested target: the direct target twice, with its model cache empty (cold: the run builds
# the models and writes the entry after its output) and filled by that run (warm).
END_TO_END_ROWS = {"direct": ("direct-cold", "direct-warm"), "savedmodel": ("savedmodel",), "tflite": ("tflite",),
                   "tflite-int8": ("tflite-int8",), "onnx": ("onnx",), "original": ("original",),
                   "direct-bfloat16": ("direct-bfloat16-cold", "direct-bfloat16-warm"),
                   "savedmodel-bfloat16": ("savedmodel-bfloat16",)}
CACHE_STATES = ("-cold", "-warm")
FIRST_FRAME_MARK = "FIRST_FRAME"  # what the original's job prints when its first frame is computed
# run.py's progress bar starts at the first written frame: "  1/N [" is that moment.
_PROGRESS_FIRST = " 1/{} ["


def end_to_end_rows(targets):
    return [row for target in targets for row in END_TO_END_ROWS.get(target, ())]


def run_py_command(args, row, clip, output, exportdir, source=None):
    """The run.py command line of one end-to-end row (run.py's defaults otherwise: batch 4, mp4), animating
    `source` (default --source_image)."""
    target = row.split("-")[0]
    command = [sys.executable, os.path.join(REPO_DIR, "run.py"), "--target", target, "--config", args.config,
               "--checkpoint", args.checkpoint, "--source_image", source or args.source_image,
               "--driving_video", clip, "--relative", "--adapt", "--output", output]
    command += ["--precision", "bfloat16"] if "-bfloat16" in row else []
    command += ["--int8"] if row == "tflite-int8" else []  # dynamic range: the int8 that passed the quality gate
    return command + (["--exportdir", exportdir] if target != "direct" else [])


def original_command(args, clip, output):
    spec = {"kind": "end_to_end_original", "config": args.config, "checkpoint": args.checkpoint,
            "source_image": args.source_image, "driving_video": clip, "output": output}
    return [sys.executable, os.path.abspath(__file__), "--job", json.dumps(spec)]


def timed_process(command, frames, env):
    """Run a command; return seconds from its start to its first frame, to its output written (the
    'wrote' result line) and to its exit, with its exit status and peak RSS.

    The first frame is when run.py's progress bar shows frame 1 of `frames` (it starts there), or when the
    original's job prints FIRST_FRAME_MARK.
    """
    import threading

    marks = {}
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO_DIR)
    first_frame = (_PROGRESS_FIRST.format(frames).encode(), FIRST_FRAME_MARK.encode())
    tails = {}

    def watch(stream, name):
        seen = b""
        while True:
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                break
            seen = seen[-4096:] + chunk
            now = time.perf_counter() - started
            if "first_frame_s" not in marks and any(mark in seen for mark in first_frame):
                marks["first_frame_s"] = now
            if "written_s" not in marks and name == "stdout" and b"wrote " in seen:
                marks["written_s"] = now
        tails[name] = seen.decode(errors="replace")

    watchers = [threading.Thread(target=watch, args=(process.stdout, "stdout")),
                threading.Thread(target=watch, args=(process.stderr, "stderr"))]
    for watcher in watchers:
        watcher.start()
    _, status, usage = os.wait4(process.pid, 0)
    exit_s = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    for watcher in watchers:
        watcher.join()
    if process.returncode != 0:
        lines = [line for line in tails.get("stderr", "").splitlines() if line.strip()]
        return {"error": lines[-1] if lines else f"exit status {process.returncode}"}
    return dict(marks, exit_s=exit_s, peak_rss_mb=usage.ru_maxrss / 1024)


def job_end_to_end_original(spec):
    """The original demo.py's path in a fresh process (no TensorFlow imported): read and resize the frames,
    load_checkpoints, make_animation, mimsave. Prints FIRST_FRAME_MARK when the first frame is computed
    (demo.py writes every frame at the end) and a 'wrote' line when the file is written."""
    import imageio
    from skimage import img_as_ubyte
    from skimage.transform import resize

    import model_config

    original, demo = import_original()
    shape = model_config.load(spec["config"]).frame_shape[:2]
    source = resize(imageio.imread(spec["source_image"]), shape)[..., :3]
    reader = imageio.get_reader(spec["driving_video"])
    fps = reader.get_meta_data()["fps"]
    driving = [resize(frame, shape)[..., :3] for frame in reader]
    generator, kp_detector = demo.load_checkpoints(spec["config"], spec["checkpoint"], cpu=True)
    forward = generator.forward

    def first_timed(*args, **kwargs):
        out = forward(*args, **kwargs)
        if generator.forward is first_timed:
            print(FIRST_FRAME_MARK, flush=True)
            generator.forward = forward
        return out

    generator.forward = first_timed
    predictions = demo.make_animation(source, driving, generator, kp_detector, relative=True,
                                      adapt_movement_scale=True, cpu=True)
    imageio.mimsave(spec["output"], [img_as_ubyte(frame) for frame in predictions], fps=fps)
    print(f"wrote {len(predictions)} frames to {spec['output']}", flush=True)
    return {}


def build_end_to_end_exports(args, exportdir, rows):
    """build.py's exports of --checkpoint, for the savedmodel / tflite / onnx (and bfloat16 SavedModel) rows
    among `rows`."""
    base = [sys.executable, os.path.join(REPO_DIR, "build.py"), "--config", args.config, "--checkpoint",
            args.checkpoint, "--outdir", exportdir]
    builds = []
    tflite = "tflite" in rows or "tflite-int8" in rows
    if tflite or any(row in ("savedmodel", "onnx") for row in rows):
        builds.append(base + ([] if tflite else ["--nolite"]) + (["--int8"] if "tflite-int8" in rows else [])
                      + (["--onnx"] if "onnx" in rows else []))
    if "savedmodel-bfloat16" in rows:
        builds.append(base + ["--precision", "bfloat16", "--nolite"])
    for command in builds:
        print("building the end-to-end exports ...", flush=True)
        subprocess.run(command, check=True, cwd=REPO_DIR, stdout=subprocess.DEVNULL)


END_TO_END_ARGS = ("config", "checkpoint", "targets", "end_to_end", "source_image", "driving_video")


def job_end_to_end(spec):
    """The end-to-end rows, from a process without TensorFlow: a child's peak RSS counts the memory of the
    process it was forked from, so they are started from a small one."""
    import types

    rows = end_to_end(types.SimpleNamespace(**spec), spec["tmpdir"])
    print(f"import times: {IMPORT_ROUNDS} rounds of fresh processes ...", flush=True)
    return {"rows": rows, "imports": import_seconds(end_to_end_rows(spec["targets"]))}


def end_to_end(args, tmpdir):
    """[{target, frames, first_frame_s, written_s, exit_s, peak_rss_mb}] for every row and frame count.

    The checkpoint is read once first, so every row finds it in the OS page cache, as a user's second run.
    """
    exportdir = os.path.join(tmpdir, "end-to-end-exports")
    build_end_to_end_exports(args, exportdir, end_to_end_rows(args.targets))
    read_through(args.checkpoint)
    results = []
    for frames in args.end_to_end:
        clip = os.path.join(tmpdir, f"end-to-end-{frames}.mp4")
        write_clip(args.driving_video, clip, frames)
        cache = tempfile.mkdtemp(prefix="model-cache-", dir=tmpdir)  # empty: the cold row fills it
        env = {**os.environ, "FOMM_CACHE_DIR": cache}
        for row in end_to_end_rows(args.targets):
            output = os.path.join(tmpdir, f"{row}-{frames}.mp4")
            command = (original_command(args, clip, output) if row == "original"
                       else run_py_command(args, row, clip, output, exportdir))
            print(f"end to end: {row}, {frames} frames ...", flush=True)
            results.append(dict(timed_process(command, frames, env), target=row, frames=frames))
        os.remove(clip)
    return results


# What each end-to-end row's process imports before its model loads (run.py's load_tensorflow and
# backends.tflite_interpreter_class; the original's torch), timed alone in fresh processes.
ROW_IMPORTS = {"direct-cold": "backends.saved_model_runtime(); backends.tensorflow()",  # a miss imports it all
               "direct-warm": "backends.saved_model_runtime()", "savedmodel": "backends.saved_model_runtime()",
               "tflite": "backends.tflite_interpreter_class()", "onnx": "import onnxruntime",
               "original": "import torch"}
IMPORT_ROUNDS = 3


def row_import(row):
    """ROW_IMPORTS' statement for an end-to-end row (a bfloat16 or int8 row imports what its float32 row does)."""
    return ROW_IMPORTS[row.replace("-bfloat16", "").replace("-int8", "")]


def import_seconds(rows, rounds=IMPORT_ROUNDS):
    """{row: [seconds, one per round]}: a fresh interpreter per row and round runs row_import(row) and
    prints how long it took; the rounds alternate between the rows, so a busy moment of the shared host
    lands on all of them. A row whose import fails (no onnxruntime, no torch) gets no entry."""
    script = ("import sys, time; sys.path.insert(0, {repo!r}); import backends; started = time.perf_counter(); "
              "{statement}; print(time.perf_counter() - started)")
    seconds = {}
    for _ in range(rounds):
        for row in dict.fromkeys(rows):
            done = subprocess.run([sys.executable, "-c", script.format(repo=REPO_DIR, statement=row_import(row))],
                                  capture_output=True, text=True, cwd=REPO_DIR)
            if done.returncode == 0:
                seconds.setdefault(row, []).append(float(done.stdout.split()[-1]))
    return seconds


def import_table(seconds):
    lines = ["| target | imports | s, fastest | s, median | s, slowest |", "|---|---|---|---|---|"]
    for row, values in seconds.items():
        values = sorted(values)
        lines.append(f"| {row} | `{row_import(row)}` | {values[0]:.2f} | {values[len(values) // 2]:.2f} "
                     f"| {values[-1]:.2f} |")
    return "\n".join(lines)


def read_through(path):
    """Read a file once, so that every timed process finds it in the OS page cache (a user's second run)."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


RUN_PY_BATCH = 4  # run.py's default --batchsize: the steady row an end-to-end row is set against


def end_to_end_table(rows, steady=()):
    """The markdown table of the end-to-end rows, with ratios to the original's row of the same length and,
    where the same run has the target's steady-state row, the start-up overhead: written - frames x
    steady seconds per frame (what the process spends on anything but frames)."""
    header = ("| target | frames | first frame s | output written s | process exit s | written vs original "
              "| start-up overhead s | peak RSS MB |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    originals = {row["frames"]: row for row in rows if row["target"] == "original" and "error" not in row}
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['target']} | {row['frames']} | failed: {row['error']} |" + " |" * 5)
            continue
        original = originals.get(row["frames"])
        ratio = original["written_s"] / row["written_s"] if original and row.get("written_s") else None
        cells = [row["target"], str(row["frames"]), _number(row.get("first_frame_s"), "{:.1f}"),
                 _number(row.get("written_s"), "{:.1f}"), f"{row['exit_s']:.1f}", _ratio(ratio),
                 _number(startup_overhead(row, steady), "{:.1f}"), f"{row['peak_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def startup_overhead(row, steady):
    """Seconds of an end-to-end row not explained by its frames at the steady-state rate, or None."""
    target = row["target"].removesuffix(CACHE_STATES[0]).removesuffix(CACHE_STATES[1])
    batch = 1 if target == "original" else RUN_PY_BATCH
    match = next((r for r in steady if r["target"] == target and r["batch"] == batch and "fps" in r), None)
    if match is None or row.get("written_s") is None:
        return None
    return row["written_s"] - row["frames"] / match["fps"]


# --------------------------------------------------------------------------------------------------
# --crop: what run.py --crop adds to a fresh run, for a 1080p photo and a 720p clip
# --------------------------------------------------------------------------------------------------

CROP_TARGETS = ("direct", "savedmodel", "tflite", "onnx")  # the run.py targets a --crop row runs
WILD_PHOTO = (1080, 1920)  # the photo's height and width
WILD_FACE = (300, 200, 400)  # the source image pasted at (x, y), this many pixels wide: a face of ~200 px
# run.py --profile's stages that only a --crop run has, once per run and per frame. "load TensorFlow"
# shows only where run.py imports it for mtcnn's face detector alone (onnx; tflite with an export folder
# that lacks build.py's LiteRT detector files).
CROP_ONCE_STAGES = ("load TensorFlow", "build detector", "detect photo", "detect clip")
CROP_FRAME_STAGES = ("crop+resize", "paste")
ANIMATE_STAGES = ("kp_detector", "process_kp_driving", "generator")


def crop_targets(targets):
    return [target for target in targets if target in CROP_TARGETS]


def crop_spec(args):
    """The --crop job's arguments, paths made absolute: its profiled runs work in a folder of their own."""
    paths = {name: os.path.abspath(getattr(args, name)) for name in ("config", "checkpoint", "source_image",
                                                                      "driving_video")}
    return {"targets": args.targets, "crop": args.crop, **paths}


def job_crop(spec):
    """The --crop rows, from a process without TensorFlow (see job_end_to_end)."""
    import types

    return {"rows": crop_rows(types.SimpleNamespace(**spec), spec["tmpdir"])}


def crop_rows(args, tmpdir):
    """[{target, frames, plain, crop, profile}] per target: `plain` and `crop` are timed_process results of
    run.py on the cropped inputs and of run.py --crop on the wild ones, `profile` the stages of a third,
    profiled --crop run (see parse_profile). Timed runs go without --profile, whose TensorBoard trace
    would slow the direct target down."""
    targets = crop_targets(args.targets)
    exportdir = os.path.join(tmpdir, "crop-exports")
    build_end_to_end_exports(args, exportdir, targets)
    read_through(args.checkpoint)
    photo, wild_clip, clip = write_crop_inputs(args, tmpdir, args.crop)
    env = {**os.environ, "FOMM_CACHE_DIR": tempfile.mkdtemp(prefix="model-cache-", dir=tmpdir)}
    results = []
    for target in targets:
        plain = run_py_command(args, target, clip, os.path.join(tmpdir, f"plain-{target}.mp4"), exportdir)
        wild = run_py_command(args, target, wild_clip, os.path.join(tmpdir, f"crop-{target}.mp4"), exportdir,
                              source=photo) + ["--crop"]
        if target == "direct":  # fill the model cache first: both timed rows load from it, as a user's second run
            subprocess.run(plain + ["--frames", "1"], cwd=REPO_DIR, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
        print(f"--crop: {target}, {args.crop} frames ...", flush=True)
        row = {"target": target, "frames": args.crop, "plain": timed_process(plain, args.crop, env),
               "crop": timed_process(wild, args.crop, env)}
        row.update(profiled_run(wild + ["--profile"], env, tmpdir))
        results.append(row)
    return results


def write_crop_inputs(args, tmpdir, frames):
    """(photo, wild clip, clip) paths: --source_image pasted on a WILD_PHOTO canvas; `frames` frames of
    --driving_video placed in a 1280x720 video (wild_inputs, the pictures the face tests check); and the
    same frames as they are, which the uncropped row animates."""
    import media
    import wild_inputs
    from PIL import Image

    source = media.to_rgb(media.to_uint8(media.decode_image(args.source_image)))
    x, y, width = WILD_FACE
    photo = wild_inputs.canvas(source, *WILD_PHOTO, [(x, y, width / source.shape[1])])
    paths = tuple(os.path.join(tmpdir, name) for name in ("wild-photo.png", "wild-clip.mp4", "clip.mp4"))
    Image.fromarray(photo).save(paths[0])
    write_clip(args.driving_video, paths[1], frames, place=wild_inputs.placed_clip)
    write_clip(args.driving_video, paths[2], frames)
    return paths


def profiled_run(command, env, tmpdir):
    """{profile: {stage: seconds}, profile_frames, profile_total_s} of a run.py --profile command (run in
    tmpdir, where its TensorBoard trace goes), or {profile_error} when it fails."""
    result = subprocess.run(command, cwd=tmpdir, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        return {"profile_error": lines[-1] if lines else f"exit status {result.returncode}"}
    return parse_profile(result.stdout)


_PROFILE_HEAD = re.compile(r"^profile: (\d+) frames in ([\d.]+) s", re.M)
_PROFILE_STAGE = re.compile(r"^  (\S.*?) +(\d+) +(\d+\.\d{3})\b", re.M)  # name, calls, total seconds


def parse_profile(stdout):
    """run.py --profile's table as {profile: {stage: total seconds}, profile_frames, profile_total_s}."""
    head = _PROFILE_HEAD.search(stdout)
    if head is None:
        return {"profile_error": "run.py printed no profile"}
    table = stdout[head.end():]
    return {"profile": {name: float(seconds) for name, _, seconds in _PROFILE_STAGE.findall(table)},
            "profile_frames": int(head.group(1)), "profile_total_s": float(head.group(2))}


def crop_table(rows):
    """The markdown table of the --crop rows: each target's written time on the cropped inputs and with
    --crop, what --crop adds (seconds and share of the --crop run), and the profiled run's split."""
    header = ("| target | frames | written s, cropped inputs | written s, --crop | --crop adds | load TensorFlow s "
              "| build detector s | detect photo s | detect clip s | crop+resize ms/frame | animate ms/frame "
              "| paste ms/frame | encode ms/frame |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        failed = next((row[key].get("error", "no output written") for key in ("plain", "crop")
                       if "written_s" not in row[key]), None)
        failed = failed or row.get("profile_error")
        if failed:
            lines.append(f"| {row['target']} | {row['frames']} | failed: {failed} |" + " |" * 10)
            continue
        plain, crop = row["plain"]["written_s"], row["crop"]["written_s"]
        stages, frames = row["profile"], max(row["profile_frames"], 1)
        per_frame = {name: 1000 * stages.get(name, 0.0) / frames for name in (*CROP_FRAME_STAGES, "encode")}
        animate = 1000 * sum(stages.get(name, 0.0) for name in ANIMATE_STAGES) / frames
        cells = [row["target"], str(row["frames"]), f"{plain:.1f}", f"{crop:.1f}",
                 f"{crop - plain:.1f} s ({(crop - plain) / crop:.0%})",
                 *(_number(stages.get(name), "{:.2f}") for name in CROP_ONCE_STAGES),
                 f"{per_frame['crop+resize']:.1f}", f"{animate:.0f}", f"{per_frame['paste']:.1f}",
                 f"{per_frame['encode']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The run: jobs in order, then the table
# --------------------------------------------------------------------------------------------------

def row_specs(args, outdir, tmpdir):
    """One job spec per (target, batch); the original runs frame by frame, so it has one row."""
    base = {"config": args.config, "source_image": args.source_image, "driving_video": args.driving_video,
            "frames": args.frames, "repeats": args.repeats, "outdir": outdir, "tmpdir": tmpdir}
    specs = []
    for target in args.targets:
        if target == "original":
            specs.append(dict(base, kind="original", target=target, batch=1))
        else:
            specs += [dict(base, kind="row", target=target, batch=batch) for batch in args.batch]
    return specs


def tflite_kinds(targets):
    kinds = {"tflite": "float32", "tflite-float16": "float16", "tflite-int8": "int8", "tflite-int8full": "int8full"}
    return [kinds[t] for t in targets if t in kinds]


def streaming_check(args, tmpdir):
    """{frames: peak RSS MB} of run.py on synthetic clips of STREAM_LENGTHS frames."""
    results = {}
    for count in STREAM_LENGTHS:
        clip = os.path.join(tmpdir, f"clip-{count}.mp4")
        write_clip(args.driving_video, clip, count)
        print(f"streaming: {count} frames ...", flush=True)
        results[count] = run_job({"kind": "stream", "clip": clip, "frames": count, "tmpdir": tmpdir})
        os.remove(clip)
    return results


def machine():
    """CPU model name (lscpu) and core count."""
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], stdout=subprocess.PIPE, text=True, check=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                     model)
    except (OSError, subprocess.CalledProcessError):
        pass  # lscpu is Linux-only; platform's answer stays
    return {"cpu": model, "cores": os.cpu_count()}


def gflop_per_frame(row, gflop, frames):
    """FLOPs a row performs per frame: per-frame modules plus per-video work shared by the N frames."""
    if row["target"] in ("original", "direct-plain"):
        # The original computes kp_detector on the source and on the first driving frame once more.
        extra = 2 if row["target"] == "original" else 1
        return gflop["kp_detector"] + gflop["generator (original)"] + extra * gflop["kp_detector"] / frames
    if row.get("cached"):
        per_video = gflop["kp_detector (fused)"] + gflop["source_encoder"]
        return gflop["kp_detector (fused)"] + gflop["generator_cached"] + per_video / frames
    return gflop["kp_detector (fused)"] + gflop["generator (fused)"] + gflop["kp_detector (fused)"] / frames


def roofs(rows):
    """{'roof_gflops': {dtype: GFLOP/s}, 'roof_kernels': {dtype: {kernel: GFLOP/s}}} over the rows' measurements.

    Each is the fastest of its measurements (one before each row): work of others on a shared machine
    only slows a kernel down, so the fastest is the closest to what the hardware does, and a row's
    fraction of it is never inflated by a roof timed during a hiccup.
    """
    measured = [row["roof"] for row in rows if row.get("roof") and "error" not in row["roof"]]
    kernels = {dtype: {kernel: max(m["kernels"][dtype][kernel] for m in measured)
                       for kernel in measured[0]["kernels"][dtype]} for dtype in ROOF_DTYPES} if measured else {}
    return {"roof_gflops": {dtype: max(rates.values()) for dtype, rates in kernels.items()}, "roof_kernels": kernels}


def row_dtype(target):
    """The arithmetic a row's convolutions run in, which picks its roof.

    tflite-float16 stores float16 weights but XNNPACK computes in float32; tflite-int8 (dynamic range)
    runs its convolutions as int8 x int8 with activations quantized on the fly; tflite-int8full
    (build.py --precision int8) runs the generator's convolutions on int8 tensors calibrated ahead.
    """
    if target.endswith("-bfloat16"):
        return "bfloat16"
    if target.endswith(("-int8", "-int8full")):
        return "int8"
    return "float32"


def summarize(row, gflop, roof, frames, original_fps):
    """Derived numbers of one finished row: frames/s end to end and per module, % of its dtype's roof."""
    module_seconds = row["module_seconds"]
    model_seconds = sum(module_seconds.values())
    summary = {"fps": frames / row["seconds"],
               "module_ms_per_frame": {k: 1000 * v / frames for k, v in module_seconds.items()},
               "module_fps": {k: frames / v for k, v in module_seconds.items() if v > 0}}
    summary["dtype"] = row_dtype(row["target"])
    if gflop and roof:
        per_frame = gflop_per_frame(row, gflop, frames)
        summary["gflop_per_frame"] = per_frame
        summary["gflops"] = per_frame * frames / model_seconds
        summary["roof_fraction"] = summary["gflops"] / roof[summary["dtype"]]
    if original_fps:
        summary["vs_original"] = summary["fps"] / original_fps
    return summary


def table(rows):
    """The markdown table of the finished rows."""
    header = ("| target | batch | frames/s | vs original | kp_detector ms/frame | process_kp_driving ms/frame "
              "| generator ms/frame | source_encoder ms/video | GFLOP/frame | GFLOP/s | dtype | % roof | peak RSS MB |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['target']} | {row['batch']} | failed: {row['error']} |" + " |" * 10)
            continue
        ms = row["module_ms_per_frame"]
        generator_ms = ms.get("generator_cached", ms.get("generator", 0.0))
        encoder = row["module_seconds"].get("source_encoder")
        cells = [row["target"], str(row["batch"]), f"{row['fps']:.3f}", _ratio(row.get("vs_original")),
                 f"{ms.get('kp_detector', 0):.0f}", f"{ms.get('process_kp_driving', 0):.1f}", f"{generator_ms:.0f}",
                 "-" if encoder is None else f"{1000 * encoder:.0f}",
                 _number(row.get("gflop_per_frame"), "{:.1f}"), _number(row.get("gflops"), "{:.0f}"),
                 row.get("dtype", "-"), _number(row.get("roof_fraction"), "{:.0%}"),
                 f"{row['peak_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(value):
    return "-" if value is None else f"{value:.2f}x"


def _number(value, fmt):
    return "-" if value is None else fmt.format(value)


def steady_rows(args, report, tmpdir):
    """The steady-state rows (exports built, FLOPs counted, one subprocess per row), summarized; the report
    gets the FLOP counts, the roofs and the int8 and streaming checks."""
    outdir = os.path.join(tmpdir, "exports")
    exported = [t for t in args.targets if t.startswith(("savedmodel", "tflite", "onnx"))]
    if exported:
        print("building exports ...", flush=True)
        built = run_job({"kind": "build", "config": args.config, "outdir": outdir,
                         "tflite": tflite_kinds(args.targets), "onnx": "onnx" in args.targets,
                         "bfloat16": "savedmodel-bfloat16" in args.targets})
        if "error" in built:
            sys.exit(f"error: building the exports failed: {built['error']}")
    print("counting FLOPs ...", flush=True)
    report["gflop_per_call"] = run_job({"kind": "flops", "config": args.config}).get("gflop")
    rows = []
    for spec in row_specs(args, outdir, tmpdir):
        print(f"{spec['target']} batch {spec['batch']} ...", flush=True)
        # The machine is shared: the roofs are measured again right before each row.
        roof = run_job({"kind": "roof", "tmpdir": tmpdir})
        rows.append(dict(run_job(spec), target=spec["target"], batch=spec["batch"], roof=roof))
    report.update(roofs(rows))
    report["cpu_flags"] = cpu_flags()
    if "tflite-int8" in args.targets:
        print("int8 quality on the example model ...", flush=True)
        report["int8_quality"] = run_job({"kind": "int8_quality", "outdir": os.path.join(tmpdir, "example")})
    if args.streaming:
        report["streaming"] = streaming_check(args, tmpdir)
    original = next((r for r in rows if r["target"] == "original" and "error" not in r), None)
    original_fps = args.frames / original["seconds"] if original else None
    for row in rows:
        if "error" not in row:
            row.update(summarize(row, report["gflop_per_call"], report["roof_gflops"], args.frames, original_fps))
    return rows


# Jobs that time fresh run.py processes: they stay small (no TensorFlow), since a child's peak RSS counts
# the memory of the process it was forked from.
FRESH_PROCESS_JOBS = ("end_to_end", "end_to_end_original", "crop")


def main(argv=None):
    args = parse_args(argv)
    import backends

    job = json.loads(args.job) if args.job else None
    if job is None or job["kind"] not in FRESH_PROCESS_JOBS:  # those processes never load TensorFlow
        backends.tensorflow()  # first, so that TensorFlow's start-up lines stay off the terminal
    if job is not None:
        job_main(job)
        return 0
    if args.report:
        with open(args.report, encoding="utf-8") as f:
            print_report(json.load(f))
        return 0
    skipped = original_available() if "original" in args.targets else None
    if skipped:
        print(f"original row skipped: {skipped}")
        args.targets.remove("original")
    report = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine(),
              "command": " ".join(["python", "benchmark.py", *(sys.argv[1:] if argv is None else argv)]),
              "config": os.path.relpath(args.config, REPO_DIR), "frames": args.frames,
              "source_image": args.source_image, "driving_video": args.driving_video}
    with tempfile.TemporaryDirectory(prefix="fomm-benchmark-") as tmpdir:
        rows = steady_rows(args, report, tmpdir) if args.steady else []
        if args.end_to_end:
            print(f"end to end: {len(end_to_end_rows(args.targets)) * len(args.end_to_end)} fresh processes ...",
                  flush=True)
            report["end_to_end"] = run_job({"kind": "end_to_end", "tmpdir": tmpdir, **{
                name: getattr(args, name) for name in END_TO_END_ARGS}})
            report["checkpoint"] = args.checkpoint
        if args.crop:
            print(f"--crop: 3 fresh processes per target ({', '.join(crop_targets(args.targets))}) ...", flush=True)
            report["crop"] = run_job({"kind": "crop", "tmpdir": tmpdir, **crop_spec(args)})
            report["checkpoint"] = args.checkpoint
    report["rows"] = rows
    print_report(report)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.json}")
    return 0


def roof_lines(report):
    """The roof per dtype with the kernels it was the faster of, and the CPU flags that explain it."""
    batch, size, channels, kernel = ROOF_CONV
    lines = [f"CPU flags: {' '.join(report.get('cpu_flags') or ['(unknown)'])}",
             f"roof per dtype (fastest of the per-row measurements; {ROOF_MATMUL}^2 matmul, {kernel}x{kernel} conv "
             f"{channels}->{channels} at {size}x{size} batch {batch}; int8: full-integer TF Lite conv, XNNPACK):"]
    for dtype, rate in report["roof_gflops"].items():
        kernels = ", ".join(f"{name} {value:.0f}" for name, value in report["roof_kernels"][dtype].items())
        lines.append(f"  {dtype}: {rate:.0f} GFLOP/s ({kernels})")
    return "\n".join(lines)


def print_report(report):
    print()
    print(f"{report['machine']['cpu']}, {report['machine']['cores']} cores, {report['date']}; "
          f"{report['config']}, {report['frames']} driving frames, random weights")
    if report.get("roof_gflops"):
        print(roof_lines(report))
    if report.get("gflop_per_call"):
        print("GFLOP per call (batch 1): " + ", ".join(f"{k} {v:.1f}" for k, v in report["gflop_per_call"].items()))
    end_to_end_report = report.get("end_to_end")
    if end_to_end_report and "error" in end_to_end_report:
        print(f"\nend-to-end rows failed: {end_to_end_report['error']}")
    elif end_to_end_report:
        print(f"\nEnd to end, checkpoint {report['checkpoint']} (a fresh process per row: command start -> first "
              f"frame, output written, exit):\n")
        print(end_to_end_table(end_to_end_report["rows"], report["rows"]))
        if end_to_end_report.get("imports"):
            print(f"\nWhat each row imports before its model loads, alone in a fresh process "
                  f"({IMPORT_ROUNDS} alternating rounds):\n")
            print(import_table(end_to_end_report["imports"]))
    crop_report = report.get("crop")
    if crop_report and "error" in crop_report:
        print(f"\n--crop rows failed: {crop_report['error']}")
    elif crop_report:
        print(f"\nrun.py --crop, checkpoint {report['checkpoint']}: a {WILD_PHOTO[1]}x{WILD_PHOTO[0]} photo and a "
              f"1280x720 clip against the cropped source image and clip (fresh processes; the split from a "
              f"third, profiled --crop run):\n")
        print(crop_table(crop_report["rows"]))
    if report["rows"]:
        print()
        print(table(report["rows"]))
    quality = report.get("int8_quality")
    if quality and "error" not in quality:
        print(f"\nint8 quality (example model, example clip, {quality['frames']} frames, vs tflite float32): "
              f"prediction max abs {quality['prediction_max_abs']:.4f}, mean abs {quality['prediction_mean_abs']:.4f}; "
              f"reconstruction L1 {quality['reconstruction_l1']['float32']:.4f} -> "
              f"{quality['reconstruction_l1']['int8']:.4f} ({quality['reconstruction_l1_change']:+.1%})")
    elif quality:
        print(f"\nint8 quality check failed: {quality['error']}")
    streaming = report.get("streaming")
    if streaming:
        rss = {int(count): result.get("peak_rss_mb") for count, result in streaming.items()}  # JSON keys: str
        short, long = rss.get(STREAM_LENGTHS[0]), rss.get(STREAM_LENGTHS[1])
        if short and long:
            print(f"\nstreaming (run.py, example model): peak RSS {short:.0f} MB at {STREAM_LENGTHS[0]} frames, "
                  f"{long:.0f} MB at {STREAM_LENGTHS[1]} frames ({long / short:.2f}x)")
        else:
            print(f"\nstreaming check failed: {streaming}")


if __name__ == "__main__":
    sys.exit(main())
