"""--precision: which arithmetic each target runs in, which pairs exist, and whether this CPU runs it natively.

Imports nothing heavy: run.py and build.py check a precision before TensorFlow loads.

float32 is the exact default. bfloat16 runs the generator's heavy convolutions in bfloat16
(modules.load_generator's section 6 blocks: the bottleneck, its up blocks, the dense motion hourglass and the source
encoder), keypoints and everything geometric in float32. int8 is full-integer TF Lite for the generator's
convolutions (int8 weights and activations, float32 at the signature), calibrated on a video's frames
(build.py --calibration) and written as generator-int8full.tflite; keypoints stay float32. `--int8` (TF
Lite dynamic range: int8 weights, float32 activations, in the generator; keypoints float32) keeps its own
<module>-int8.tflite files.

`--precision auto` (run.py only, never the default) runs the fastest precision of the target that passed
tools/quality.py's near-lossless gate and that this CPU runs natively, else float32; on tflite `--int8`
is one of its candidates (DYNAMIC_INT8).
"""
PRECISIONS = ("float32", "bfloat16", "int8")
DEFAULT = "float32"
AUTO = "auto"  # run.py: resolved to one of PRECISIONS (or DYNAMIC_INT8) before anything loads
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
# `--int8` (TF Lite dynamic range) is not a --precision but --precision auto may choose it: this name stands for it.
DYNAMIC_INT8 = "int8-dynamic"
# The TF Lite files build.py --int8 writes as <module>-int8.tflite; run.py --int8 runs the float32 files of the
# others. kp_detector stays float32 for the reason INT8_MODULES gives: with int8 weights it moved the real
# face's keypoints (../shared/data) by 3.3 px and its frames to 38.8 dB against float32; process_kp_driving
# has no weights to quantize.
DYNAMIC_INT8_MODULES = ("generator", "source_encoder", "generator_cached")
# /proc/cpuinfo flags with bfloat16 dot products in hardware (oneDNN uses them; without, it emulates).
BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")
# /proc/cpuinfo flags with int8 dot products in hardware (XNNPACK's int8 kernels use them; without, int8
# still runs, on AVX2 kernels whose speed against float32 was never measured here).
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


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


# --------------------------------------------------------------------------------------------------
# --precision auto
# --------------------------------------------------------------------------------------------------

# The verdicts of tools/quality.py's gate (near-lossless: PSNR >= 40 dB against float32 and reconstruction
# L1 within 2% of float32's, on every trained model the repo has), as measured and written to
# docs/quality.json (tests/test_precision.py checks that the two agree): {precision: (passed, worst case)}.
# Measured 2026-12-03 on an AMD EPYC with AVX512_BF16 / VNNI: bfloat16 (direct) passes on all 6 models;
# full-integer int8 (tflite) fails on two: the demo model's reconstruction L1 +3.82%, fixture wide 39.9 dB;
# dynamic-range int8 (--int8, kp_detector float32) passes with 49.6 dB at worst (55.1 dB on the real face).
GATE = {"bfloat16": (True, "worst PSNR 62.4 dB, reconstruction L1 within 0.11%"),
        "int8": (False, "the demo model's reconstruction L1 +3.82% of float32's, fixture wide's PSNR 39.9 dB"),
        DYNAMIC_INT8: (True, "worst PSNR 49.6 dB, reconstruction L1 within 1.03%")}
# What auto tries per run.py target, fastest first; float32 when none qualifies. Speeds from benchmark.py
# (README, Performance): bfloat16 direct 1.60x float32 direct, savedmodel 1.41x; TF Lite dynamic-range int8
# (--int8) 3.1x float32 TF Lite and full-integer int8 2.6x. onnx runs float32 only.
AUTO_CANDIDATES = {"direct": ("bfloat16",), "savedmodel": ("bfloat16",), "tflite": (DYNAMIC_INT8, "int8"),
                   "onnx": ()}
# The flags a precision needs to be faster than float32 here, for auto: bfloat16 is emulated without them;
# int8 was measured faster only on a CPU with them.
FAST_FLAGS = {"bfloat16": BFLOAT16_FLAGS, "int8": INT8_FLAGS, DYNAMIC_INT8: INT8_FLAGS}
# The build.py flags that write a precision's exports (named when auto finds none).
BUILD_FLAGS = {"bfloat16": "--precision bfloat16 --nolite", "int8": "--precision int8 --calibration VIDEO",
               DYNAMIC_INT8: "--int8"}


def choice_text(choice):
    """How a note names a precision auto considers: DYNAMIC_INT8 by its flag, --int8."""
    return "--int8" if choice == DYNAMIC_INT8 else choice


def run_settings(choice):
    """(--precision, --int8) that run a precision auto chose: DYNAMIC_INT8 is float32 with --int8."""
    return (DEFAULT, True) if choice == DYNAMIC_INT8 else (choice, False)


def flags_text(names):
    return " / ".join(name.upper() for name in names)


def auto(target, export_exists=lambda name: True, flags=None):
    """(precision, why) of --precision auto on `target`: its fastest candidate that passed the near-lossless
    gate, whose instructions this CPU has, and (export targets) whose export_exists(precision); else float32.
    `why` is one clause naming what decided."""
    flags = cpu_flags() if flags is None else flags
    rejected = []
    for candidate in AUTO_CANDIDATES[target]:
        passed, worst = GATE[candidate]
        name = choice_text(candidate)
        needed = FAST_FLAGS[candidate]
        if not any(flag in flags for flag in needed):
            rejected.append(f"this CPU lacks {flags_text(needed)} for {name}")
        elif not passed:
            rejected.append(f"{name} failed the near-lossless gate ({worst}; tools/quality.py)")
        elif not export_exists(candidate):
            rejected.append(f"no {name} export was found (build.py {BUILD_FLAGS[candidate]} makes it)")
        else:
            having = flags_text([flag for flag in needed if flag in flags])
            return candidate, (f"this CPU has {having} and {name} passed the near-lossless gate "
                               f"({worst}; tools/quality.py)")
    return DEFAULT, "; ".join(rejected) or f"--target {target} runs float32 only"
