"""--precision: which arithmetic each target runs in, which pairs exist, and whether this CPU runs it natively.

Imports nothing heavy: run.py and build.py check a precision before TensorFlow loads.

float32 is the exact default. bfloat16 runs the generator's heavy convolutions in bfloat16
(modules.Bfloat16Generator: the bottleneck, its up blocks, the dense motion hourglass and the source
encoder), keypoints and everything geometric in float32. int8 is full-integer TF Lite for the generator's
convolutions (int8 weights and activations, float32 at the signature), calibrated on a video's frames
(build.py --calibration) and written as generator-int8full.tflite; keypoints stay float32. `--int8` (TF
Lite dynamic range: int8 weights, float32 activations) keeps its own <module>-int8.tflite files.
"""
PRECISIONS = ("float32", "bfloat16", "int8")
DEFAULT = "float32"
# run.py: the precisions each --target runs.
RUN_PAIRS = {"direct": ("float32", "bfloat16"), "savedmodel": ("float32", "bfloat16"), "tflite": ("float32", "int8"),
             "onnx": ("float32",)}
# build.py: the precisions each export format is written in (bfloat16 exists as a SavedModel only, int8 as
# TF Lite only: an int8 build's SavedModels are the float32 ones its TF Lite files are converted from).
BUILD_PAIRS = {"savedmodel": ("float32", "bfloat16"), "tflite": ("float32", "int8"), "tfjs": ("float32",),
               "onnx": ("float32",)}
# The exports a bfloat16 build writes under a name of their own (<module>-bfloat16); the others are float32.
BFLOAT16_MODULES = ("generator", "source_encoder", "generator_cached")
# The TF Lite files an int8 build writes full-integer under a name of their own (<module>-int8full).
# kp_detector stays float32: its convolutions in int8 moved the demo model's keypoints by up to 10 px (the
# heatmap softmax's temperature of 0.1 amplifies every quantization step tenfold); process_kp_driving is a
# few hundred flops of keypoint algebra.
INT8_MODULES = ("generator",)
# /proc/cpuinfo flags with bfloat16 dot products in hardware (oneDNN uses them; without, it emulates).
BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


def pairs_text(pairs):
    """'direct: float32, bfloat16; savedmodel: ...' for a usage error."""
    return "; ".join(f"{target}: {', '.join(precisions)}" for target, precisions in pairs.items())


def run_pair_error(target, precision):
    """None when run.py can run `target` at `precision`, else the one-line usage error."""
    if precision in RUN_PAIRS[target]:
        return None
    return f"--precision {precision} does not exist for --target {target}; the pairs that do: {pairs_text(RUN_PAIRS)}"


def build_pair_error(formats, precision):
    """None when build.py can write every format in `formats` at `precision`, else the one-line usage error."""
    missing = [name for name in formats if precision not in BUILD_PAIRS[name]]
    if not missing:
        return None
    return (f"--precision {precision} does not exist for {', '.join(missing)} exports; the pairs that do: "
            f"{pairs_text(BUILD_PAIRS)}")


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU's instruction-set flags (empty where /proc/cpuinfo is absent)."""
    try:
        with open(path, encoding="utf-8") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.split(":", 1)[-1].split())


def native(precision, flags=None):
    """Whether this CPU has the instructions `precision` needs (float32 always)."""
    flags = cpu_flags() if flags is None else flags
    if precision == "bfloat16":
        return any(flag in flags for flag in BFLOAT16_FLAGS)
    return True


def effective(precision, warn, flags=None):
    """The precision to run: `precision`, or float32 with a one-line warning where the CPU would emulate it.

    Emulated bfloat16 (no AVX512_BF16 / AMX) is slower than float32 and still loses precision, so it is
    never what a user asking for speed wants.
    """
    if native(precision, flags):
        return precision
    warn(f"--precision {precision}: this CPU lacks {' / '.join(f.upper() for f in BFLOAT16_FLAGS)} "
         f"(bfloat16 would be emulated, slower than float32); running float32")
    return DEFAULT
