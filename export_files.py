"""build.py's exports as run.py finds and runs them: the layout (saved_models/, tflite/, onnx/, js/),
the signature JSON beside each export, loading per target (SavedModel, LiteRT, onnxruntime) and
the op lists OPS.md is made of. The runtimes are imported through backends, quietly, when first used.
"""
import contextlib
import inspect
import json
import os

import numpy as np

import backends
import utils
from precision import BFLOAT16_MODULES, DYNAMIC_INT8_MODULES, INT8_MODULES


EXPORT_MODULES = ("kp_detector", "process_kp_driving", "generator")
# Optional exports beside them: the generator split into its once-per-video source side and the rest.
CACHED_EXPORT_MODULES = ("source_encoder", "generator_cached")
SIGNATURE_KEY = "serving_default"
SIGNATURE_JSON = "signature.json"  # name of the signature description inside SavedModel and TF.js folders
ONNX_INSTALL = "pip install -r requirements-onnx.txt"  # tf2onnx and onnxruntime are optional extras


def export_model_name(model, config=None):
    """The <model> of the export paths: the config file's stem minus '-256' when a config path is given."""
    if config is None:
        return model
    stem = os.path.splitext(os.path.basename(str(config)))[0]
    return stem[:-len("-256")] if stem.endswith("-256") else stem


def savedmodel_path(root, model, module):
    """saved_models/<model>/<module>/ under the export root."""
    return os.path.join(root, "saved_models", model, module)


def tflite_path(root, model, module, float16=False, int8=False):
    """tflite/<model>/<module>.tflite, or <module>-float16.tflite / <module>-int8.tflite, under the export root."""
    suffix = "-float16" if float16 else "-int8" if int8 else ""
    return os.path.join(root, "tflite", model, f"{module}{suffix}.tflite")


def onnx_path(root, model, module):
    """onnx/<model>/<module>.onnx under the export root."""
    return os.path.join(root, "onnx", model, f"{module}.onnx")


def tfjs_path(root, model, module):
    """js/<model>/<module>/ (model.json, weight shards, signature.json) under the export root."""
    return os.path.join(root, "js", model, module)


def signature_json_path(target, path):
    """Where build.py describes the export at `path`: inputs, outputs (in order) and build options."""
    if target in ("tflite", "onnx"):
        return os.path.splitext(path)[0] + ".json"
    if target == "savedmodel":
        # assets.extra/ is the SavedModel folder for files TensorFlow itself ignores.
        return os.path.join(path, "assets.extra", SIGNATURE_JSON)
    return os.path.join(path, SIGNATURE_JSON)


def read_signature_json(target, path):
    """The signature description build.py wrote beside an export; UserError if absent or unreadable."""
    json_path = signature_json_path(target, path)
    try:
        with open(json_path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise utils.UserError(f"{json_path}: missing (the export at {path} was not made by build.py)") from None
    except (OSError, ValueError) as err:
        raise utils.UserError(f"{json_path}: unreadable ({utils.first_line(err)})") from err


# LiteRT 2.3's XNNPACK delegate, when it fuses several ops of these graphs into one delegated partition,
# can compute wrong outputs from an interpreter's second call on: the demo model's int8 generator gave
# 8-12 dB frames in 5-6 interpreters of 8, its float32 generator_cached frames 0.99 max abs off in 9 of
# 24 calls (the first call always right; which interpreters, the process's earlier allocations decided,
# so "after the float32 files" or "where TensorFlow has run" looked like the cause). One op per partition
# (XNNPACK still runs every op it ran, same bits) never went wrong (0 of 30 int8 interpreters, 0 of 48
# generator_cached calls), at no measurable cost. tests/test_precision.py and tests/test_exports.py check
# both graphs. tf.lite.Interpreter (no LiteRT) lacks the option: there the tflite target runs without
# the cached pair (see runs_cached_pair).
UNFUSED_DELEGATE = "experimental_disable_delegate_node_fusion"


def tflite_interpreter(path=None, model_content=None):
    """A TF Lite interpreter on all cores: LiteRT's (ai_edge_litert), else TensorFlow's tf.lite.Interpreter;
    its delegate gets one op per partition where the class has the option (see UNFUSED_DELEGATE)."""
    interpreter_class = backends.tflite_interpreter_class()
    options = unfused_delegate_options(interpreter_class)
    try:
        with backends.native_output_hidden():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            return interpreter_class(model_path=path, model_content=model_content, num_threads=backends.threads(),
                                     **options)
    except ValueError as err:  # a truncated or foreign file: "The model is not a valid Flatbuffer buffer"
        raise utils.UserError(f"{path or 'TF Lite model'}: LiteRT cannot load it ({utils.first_line(err)}); "
                              f"rebuild it with build.py") from err


def unfused_delegate_options(interpreter_class):
    """{UNFUSED_DELEGATE: True} where `interpreter_class` takes that option, else {}."""
    return {UNFUSED_DELEGATE: True} if UNFUSED_DELEGATE in inspect.signature(interpreter_class).parameters else {}


def savedmodel_calls(path):
    """{signature name: callable over numpy keyword inputs, returning {output name: numpy}} of a SavedModel.

    TensorFlow's import is backends.saved_model_runtime()'s: loading and calling need no more."""
    tf = backends.saved_model_runtime()
    loaded = tf.saved_model.load(path)

    def numpy_call(function):
        def call(**inputs):
            outputs = function(**{name: tf.constant(value, tf.float32) for name, value in inputs.items()})
            return {name: value.numpy() for name, value in outputs.items()}

        call.saved_model = loaded  # signatures hold the loaded variables only weakly: keep them alive
        return call

    return {name: numpy_call(function) for name, function in loaded.signatures.items()}


def savedmodel_function(path):
    """Run a SavedModel's serving_default with numpy keyword inputs; returns {output name: numpy}."""
    return savedmodel_calls(path)[SIGNATURE_KEY]


def tflite_function(path):
    """Run a .tflite file's serving_default signature with numpy keyword inputs (any batch size)."""
    runner = tflite_interpreter(path).get_signature_runner(SIGNATURE_KEY)
    shapes_seen = set()

    def call(**inputs):
        # The signature runner resizes every input to the given arrays, so a dynamic batch just works.
        inputs = {name: np.asarray(value, np.float32) for name, value in inputs.items()}
        shapes = tuple(sorted((name, value.shape) for name, value in inputs.items()))
        # LiteRT applies its XNNPACK delegate, and announces it on stderr, at the first call per input shape.
        quiet = backends.native_output_hidden() if shapes not in shapes_seen else contextlib.nullcontext()
        with quiet:
            outputs = runner(**inputs)
        shapes_seen.add(shapes)
        return {name: np.array(value) for name, value in outputs.items()}

    return call


def onnx_session(path):
    """An onnxruntime session on the CPU with one intra-op thread per core; UserError without onnxruntime."""
    try:
        import onnxruntime
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
    except ImportError:
        raise utils.UserError(f"--target onnx needs onnxruntime: {ONNX_INSTALL}") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = backends.threads()
    # onnxruntime's load errors derive from Exception directly, so they are named one by one.
    load_errors = (ort_errors.Fail, ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.InvalidArgument,
                   ort_errors.NoSuchFile, ort_errors.NotImplemented)
    try:
        return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except load_errors as err:
        raise utils.UserError(f"{path}: onnxruntime cannot load it ({utils.first_line(err)})") from err


def onnx_function(path):
    """Run an .onnx file with numpy keyword inputs (any batch size); returns {output name: numpy}."""
    session = onnx_session(path)
    output_names = [output.name for output in session.get_outputs()]

    def call(**inputs):
        outputs = session.run(output_names, {name: np.asarray(value, np.float32) for name, value in inputs.items()})
        return dict(zip(output_names, outputs))

    return call

def runs_cached_pair(target, precision="float32"):
    """Whether `target` at `precision` runs the source_encoder + generator_cached pair when it is there.

    Not TF Lite at int8 (the full-integer generator has no cached counterpart: the float32 pair would
    replace it), nor TF Lite without LiteRT's one-op-per-partition option (with fused XNNPACK partitions
    generator_cached went wrong from its second call on; see UNFUSED_DELEGATE).
    """
    if target != "tflite":
        return True
    return precision != "int8" and bool(unfused_delegate_options(backends.tflite_interpreter_class()))


class ExportMissing(utils.UserError):
    """An export that run.py needs is not on disk; `path` names it."""

    def __init__(self, path):
        super().__init__(f"{path}: no such export")
        self.path = path


def find_exports(target, root, model, float16=False, int8=False, precision="float32"):
    """{module: (path, signature description)} of the exports of `model` under `root`.

    `target` is 'savedmodel', 'tflite' (float16 picks those files; int8 those of DYNAMIC_INT8_MODULES) or 'onnx'. Nothing is
    loaded yet, so a caller can check the build options first. Raises ExportMissing for the first
    absent EXPORT_MODULES export; CACHED_EXPORT_MODULES are included when present and the target runs
    them (runs_cached_pair). precision 'bfloat16' (SavedModel)
    takes the generator modules from their -bfloat16 folders, 'int8' (TF Lite) the generator from its
    -int8full file (precision.INT8_MODULES).
    """
    exports = {}
    cached_modules = CACHED_EXPORT_MODULES if runs_cached_pair(target, precision) else ()
    for module in EXPORT_MODULES + cached_modules:
        path = _export_file(target, root, model, precision_module(module, precision), float16, int8)
        present = os.path.isfile(os.path.join(path, "saved_model.pb") if target == "savedmodel" else path)
        if present:
            exports[module] = (path, read_signature_json(target, path))
        elif module in EXPORT_MODULES:
            raise ExportMissing(path)
    return exports


def precision_module(module, precision):
    """The export name of `module` at `precision`: <module>-bfloat16 for the modules a bfloat16 build
    writes apart (BFLOAT16_MODULES), <module>-int8full for the full-integer TF Lite files of an int8
    build (INT8_MODULES), else <module> (keypoint algebra stays float32)."""
    if precision == "bfloat16" and module in BFLOAT16_MODULES:
        return f"{module}-bfloat16"
    if precision == "int8" and module in INT8_MODULES:
        return f"{module}-int8full"
    return module


def _export_file(target, root, model, module, float16, int8):
    int8 = int8 and module in DYNAMIC_INT8_MODULES  # the others run their float32 files
    if target == "savedmodel":
        return savedmodel_path(root, model, module)
    if target == "onnx":
        return onnx_path(root, model, module)
    return tflite_path(root, model, module, float16, int8)


def load_export(target, path):
    """A callable over numpy keyword inputs for the savedmodel, tflite or onnx export at `path`."""
    loaders = {"savedmodel": savedmodel_function, "tflite": tflite_function, "onnx": onnx_function}
    return loaders[target](path)


def tflite_ops(path):
    """Sorted names of the operators a .tflite file runs (builtins as CONV_2D; custom ops by custom code).

    Read from the flatbuffer with the schema bindings TensorFlow ships, counting only operators
    that appear in a subgraph.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    with open(path, "rb") as f:
        model = schema.Model.GetRootAs(f.read(), 0)
    builtin_names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    ops = set()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            code = model.OperatorCodes(subgraph.Operators(o).OpcodeIndex())
            # Builtin codes above 127 live in BuiltinCode; older files only fill DeprecatedBuiltinCode.
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            if builtin == schema.BuiltinOperator.CUSTOM:
                ops.add(code.CustomCode().decode())
            else:
                ops.add(builtin_names[builtin])
    return sorted(ops)


def onnx_ops(path):
    """Sorted op types an .onnx file runs, those inside control-flow subgraphs included.

    Ops outside the standard ONNX domain are named domain:op_type, so they stand out.
    """
    import onnx

    def graph_ops(graph):
        for node in graph.node:
            yield node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"
            for attribute in node.attribute:  # the bodies of Loop / If / Scan
                subgraphs = list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else [])
                for subgraph in subgraphs:
                    yield from graph_ops(subgraph)

    return sorted(set(graph_ops(onnx.load(path, load_external_data=False).graph)))
