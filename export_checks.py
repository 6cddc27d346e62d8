"""Which of build.py's exports a run needs, found and checked against its options before anything loads.

A savedmodel / tflite / onnx run reads only the signature JSON beside each export here: whether the
files exist, whether they were built with the run's --prescale / --staticbatchsize / --hardcode, and
whether a cached source encoder still matches its generator. Every refusal names the build.py command
that makes the right exports. Loading (which imports the target's runtime) happens in
CheckedExports.load, after every check has passed.
"""
import os
import shlex
from dataclasses import dataclass

import animate
import export_files
import faces_lite
import precision
import utils


# Targets whose generator loads on a thread. A SavedModel's load (0.6-1.4 s for vox-256's generator_cached)
# then overlaps the other loads and first calls: its first frame came 0.03-0.3 s sooner, in 4 pairs of runs.
# Not TF Lite (an interpreter is made in milliseconds, and neither it nor its first call's AllocateTensors on a
# thread bought anything) nor ONNX (its session on a thread cost about 95 MB of peak RSS for a first frame
# already well before the original's): README, Performance, "Tried after run J and not kept".
LOADED_ON_A_THREAD = ("savedmodel",)


@dataclass
class CheckedExports:
    """build.py's exports for this run, found and checked against its options from their JSON alone."""
    exports: dict  # {module: (path, signature description)}
    hardcode: object  # process_kp_driving's --hardcode XY, or None
    first_order: bool
    prescale: bool

    def load(self, target):
        """animate.Models over the exports (this imports the target's runtime).

        With the source_encoder + generator_cached pair there, the plain generator export is not loaded:
        the pair gives its outputs, and loading a third copy of the generator's weights would cost
        start-up time and memory for nothing. A SavedModel generator (most of the weights) loads on a
        thread (utils.LoadedOnThread), while the other exports load and the first job reads its inputs
        and finds its source keypoints; its first call waits for it.
        """
        cached = all(module in self.exports for module in export_files.CACHED_EXPORT_MODULES)
        generator = "generator_cached" if cached else "generator"
        calls = {}
        if target in LOADED_ON_A_THREAD:
            calls[generator] = utils.LoadedOnThread(export_files.load_export, target, self.exports[generator][0])
        calls.update({module: export_files.load_export(target, path) for module, (path, _) in self.exports.items()
                      if module not in calls and not (cached and module == "generator")})
        if self.hardcode is not None:
            calls["process_kp_driving"] = without_flag_inputs(calls["process_kp_driving"],
                                                              self.exports["process_kp_driving"][1]["inputs"])
        wait = getattr(calls[generator], "wait", lambda: None)
        if cached:
            return animate.models_from_calls(calls, self.first_order, self.prescale, wait)
        return animate.Models(calls["kp_detector"], calls["process_kp_driving"], calls["generator"],
                              estimate_jacobian=self.first_order, prescale=self.prescale, wait=wait)


def check_exports(args, checkpoint_path):
    """The savedmodel / tflite / onnx exports this run needs, checked to exist and fit its options."""
    command = build_command(args, checkpoint_path)
    name = export_files.export_model_name(args.model or utils.DEFAULT_MODEL, args.config)
    try:
        exports = export_files.find_exports(args.target, args.exportdir, name, args.float16, args.int8,
                                            args.precision)
    except export_files.ExportMissing as missing:
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
    return CheckedExports(exports, hardcode, first_order, builds["generator"]["prescale"])


def litert_face_detector(args, checkpoint_path):
    """build.py's LiteRT face detector files (faces_lite.find_detector) for a --target tflite / onnx run
    that finds faces, so that TensorFlow never loads; None when the export folder lacks them (built before
    build.py wrote them) or they were built from other mtcnn weights: detection then falls back to
    mtcnn on TensorFlow, with a note naming the build that writes them."""
    paths, why_not = faces_lite.find_detector(args.exportdir)
    if paths is None:
        utils.note(f"{why_not}, so faces are found with mtcnn on TensorFlow (3-4 s to load); to find them on "
                   f"LiteRT, rebuild with: {build_command(args, checkpoint_path)}")
    return paths


def export_exists(args, name):
    """Whether the exports --target needs at precision `name` (or precision.DYNAMIC_INT8) are all there (the
    direct target needs none); --precision auto picks only a precision that was built."""
    if args.target == "direct":
        return True
    model = export_files.export_model_name(args.model or utils.DEFAULT_MODEL, args.config)
    run_precision, int8 = precision.run_settings(name)
    try:
        export_files.find_exports(args.target, args.exportdir, model, args.float16, int8, run_precision)
    except export_files.ExportMissing:
        return False
    return True


def without_stale_cache(exports, command):
    """`exports` with source_encoder / generator_cached only if both are there and hold the generator's weights.

    build.py records a digest of the weights in each export's JSON; a pair left from a build of other
    weights (or a partial one) is dropped with a warning, and the plain generator runs instead.
    """
    cached = [module for module in export_files.CACHED_EXPORT_MODULES if module in exports]
    if not cached:
        return exports
    weights = exports["generator"][1].get("weights")
    complete = len(cached) == len(export_files.CACHED_EXPORT_MODULES)
    if complete and weights is not None and all(exports[module][1].get("weights") == weights for module in cached):
        return exports
    utils.warn(f"the {' and '.join(cached)} exports do not match the generator export; running without them "
         f"(rebuild with: {command})")
    return {module: entry for module, entry in exports.items() if module not in cached}


def build_command(args, checkpoint_path):
    """The build.py command that makes the exports this run asks for."""
    words = ["python", "build.py"]
    if args.config:
        # The checkpoint the user gave, else the one named after the config; never another model's.
        words += ["--config", args.config, "--checkpoint", checkpoint_path or "<CHECKPOINT>"]
    else:
        words += ["--model", args.model or utils.DEFAULT_MODEL]
    words += [flag for flag, on in (("--prescale", args.prescale), ("--float16", args.float16), ("--int8", args.int8),
                                    ("--onnx", args.target == "onnx")) if on]
    if args.precision == "int8":  # full-integer TF Lite, calibrated on the bundled example's driving frames
        words += ["--precision", "int8", "--calibration", utils.EXAMPLE_DRIVING]
    elif args.precision != precision.DEFAULT:
        words += ["--precision", args.precision, "--nolite"]
    if os.path.abspath(args.exportdir) != utils.REPO_DIR:
        words += ["--outdir", args.exportdir]
    return shlex.join(words)


def check_prescale_exports(args, builds, command):
    """--prescale needs prescale exports; kp_detector and generator must agree either way."""
    kp_prescale, generator_prescale = builds["kp_detector"]["prescale"], builds["generator"]["prescale"]
    if args.prescale and not (kp_prescale and generator_prescale):
        raise utils.UserError(f"--prescale: the {args.target} exports were built without --prescale; "
                              f"make them with: {command}")
    if kp_prescale != generator_prescale:
        raise utils.UserError(f"the {args.target} kp_detector and generator exports disagree on --prescale; "
                              f"rebuild both with: {command}")


def check_static_batch(args, builds, command):
    """An export with --staticbatchsize N runs only full batches of N (--batchsize N --exactbatch)."""
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
    relative_jacobian, adapt = hardcode
    if args.relative and ((first_order and relative_jacobian != "1") or adapt != ("1" if args.adapt else "0")):
        raise utils.UserError(f"the {args.target} process_kp_driving export was built with --hardcode {hardcode}, "
                              f"which does not fit --relative{' --adapt' if args.adapt else ''}; "
                              f"rebuild it with: {command}")


def without_flag_inputs(process, inputs):
    """Call a --hardcode process_kp_driving export: its two flags are baked in, so the pipeline's flag
    inputs that its signature does not declare are dropped."""
    declared = {item["name"] for item in inputs}

    def call(**values):
        return process(**{name: value for name, value in values.items() if name in declared})

    return call
