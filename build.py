"""Export CLI: SavedModel, TF Lite (float32 / float16 / int8), TF.js and ONNX files of a FOMM checkpoint.

    python build.py --model vox                    # SavedModels + float32 .tflite of all three modules
    python build.py --model vox --float16 --tfjs   # + float16 .tflite and TF.js graph models
    python build.py --model vox --onnx             # + ONNX models (pip install -r requirements-onnx.txt)
    python build.py -a                             # every config/NAME-256.yaml whose checkpoint is present

Under --outdir (default: this repository):
  saved_models/<model>/<module>/          serving_default = the module's signature function;
                                          assets.extra/signature.json describes it
  tflite/<model>/<module>.tflite          builtin ops only, converted from the SavedModel
  tflite/<model>/<module>.json            signature input/output names, shapes, dtypes, tensor indices
  tflite/<model>/<module>-float16.tflite  (+ .json) with --float16, beside the float32 file
  tflite/<model>/<module>-int8.tflite     (+ .json) with --int8: dynamic-range quantized, not exact; for the
                                          generator modules only (kp_detector stays float32: keypoints)
  tflite/<model>/generator-int8full.tflite (+ .json) with --precision int8 --calibration VIDEO: its
                                          convolutions full-integer (int8 weights and activations, float32
                                          at the signature); kp_detector and process_kp_driving stay float32
<module> is kp_detector, process_kp_driving and generator (the SPEC signatures), plus source_encoder and
generator_cached: the generator split into its source-only work, which run.py runs once per video,
and the rest, per batch (every format; the tflite target runs the pair only where LiteRT can keep XNNPACK
to one op per partition: see export_files.runs_cached_pair). Each JSON records a digest of the weights,
so run.py uses that pair only with a generator of the same weights.
  js/<model>/<module>/                    with --tfjs: TF.js graph model + signature.json (output order)
  onnx/<model>/<module>.onnx              with --onnx: converted from the SavedModel by tf2onnx (opset 17)
  onnx/<model>/<module>.json              its input/output names, shapes and dtypes
  tflite/face-pnet.tflite, face-rnet.tflite, face-onet.tflite (+ .json)  whenever TF Lite files are written:
                                          MTCNN's three networks from the mtcnn package's weights (one set
                                          for every model; kept when up to date), so that run.py --target
                                          tflite --crop finds faces on LiteRT, without TensorFlow
<model> is --model, or the --config file's stem without '-256'. Variants (--prescale, --hardcode,
--predictiononly, --staticbatchsize) are written to the same paths; each JSON records the options
it was built with, and run.py checks them.

Every artefact is written under a temporary name beside its destination and renamed into place, so
a failed build leaves the previous export intact. Bad input ends with one line on stderr and exit 1.
"""
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

# TensorFlow-free; modules (and TensorFlow, quietly) load once the arguments are parsed
import backends
import checkpoint_loader
import export_files
import model_config
import precision
import utils

MODULES = export_files.EXPORT_MODULES + export_files.CACHED_EXPORT_MODULES
ONNX_OPSET = 17  # tf2onnx 1.17 converts up to opset 18; 17 is what onnxruntime has supported longest
REPO_DIR = os.path.dirname(os.path.abspath(__file__))
TFJS_VENV_CONVERTER = os.path.join(REPO_DIR, ".venv-tfjs", "bin", "tensorflowjs_converter")


def parse_args(argv=None):
    parser = utils.ArgumentParser(description="Build SavedModel, TF Lite and TF.js exports from a checkpoint.")
    parser.add_argument("--model", help="model name: config/NAME-256.yaml and checkpoint/NAME-cpk.pth.tar")
    parser.add_argument("--config", help="config path (with --checkpoint; <model> becomes the file's stem)")
    parser.add_argument("--checkpoint", help="checkpoint path")
    parser.add_argument("-a", "--all", action="store_true",
                        help="build every config in config/ whose checkpoint is in checkpoint/")
    parser.add_argument("--module", choices=["all", *MODULES], default="all", help="which module to build")
    parser.add_argument("--nolite", action="store_true", help="skip the TF Lite conversion")
    parser.add_argument("--predictiononly", action="store_true", help="the generator outputs only `prediction`")
    parser.add_argument("--float16", action="store_true",
                        help="also write float16 TF Lite files (<module>-float16.tflite)")
    parser.add_argument("--int8", action="store_true",
                        help="also write dynamic-range int8 TF Lite files (<module>-int8.tflite): int8 weights, "
                             "float32 activations; faster and smaller, with a measured quality cost (README)")
    parser.add_argument("--precision", choices=precision.PRECISIONS, default=precision.DEFAULT,
                        help="arithmetic of the exports: float32 (default), bfloat16 (SavedModel only, the generator "
                             "written as <module>-bfloat16 beside the float32 ones; add --nolite) or int8 (TF Lite "
                             "full-integer generator-int8full.tflite, keypoints float32; needs --calibration)")
    parser.add_argument("--calibration", metavar="VIDEO",
                        help="with --precision int8: the video whose frames calibrate the int8 activation ranges "
                             "(first frame = source, the others = driving), e.g. example/driving.mp4")
    parser.add_argument("--tfjs", action="store_true",
                        help="also write TF.js graph models (needs tools/make_tfjs_venv.sh)")
    parser.add_argument("--onnx", action="store_true",
                        help="also write ONNX models (onnx/<model>/<module>.onnx; needs requirements-onnx.txt)")
    parser.add_argument("--staticbatchsize", type=int, default=None,
                        help="fix the batch size of the driving inputs (TF Lite delegates need static shapes)")
    parser.add_argument("--hardcode", choices=["00", "01", "10", "11"], default=None,
                        help="bake use_relative_jacobian (first digit) and adapt_movement_scale (second) "
                             "into process_kp_driving")
    parser.add_argument("--prescale", action="store_true",
                        help="kp_detector also outputs source_image_scaled, which the generator's dense "
                             "motion network takes instead of downscaling the source again")
    parser.add_argument("--loadwithtorch", action="store_true",
                        help="load the checkpoint with torch.load instead of the built-in reader (needs PyTorch)")
    parser.add_argument("--outdir", default=REPO_DIR,
                        help="folder that receives saved_models/, tflite/, js/ and onnx/ (default: the repository)")
    args = parser.parse_args(argv)
    if args.all and (args.model or args.config or args.checkpoint):
        parser.error("-a builds every model in config/; drop --model/--config/--checkpoint")
    if not args.all and not args.model and not (args.config and args.checkpoint):
        parser.error("give --model NAME, --config and --checkpoint, or -a")
    if args.staticbatchsize is not None and args.staticbatchsize < 1:
        parser.error("--staticbatchsize must be at least 1")
    pair_error = precision.build_pair_error(export_formats(args), args.precision)
    if pair_error:
        parser.error(pair_error)
    calibration_error = check_calibration(args)
    if calibration_error:
        parser.error(calibration_error)
    return args


def check_calibration(args):
    """None when --calibration fits --precision, else the one-line usage error."""
    if args.precision == "int8" and args.calibration is None:
        return "--precision int8 needs --calibration VIDEO: the frames that calibrate its activation ranges"
    if args.precision != "int8" and args.calibration is not None:
        return "--calibration applies to --precision int8 only"
    if args.calibration is not None and not os.path.isfile(args.calibration):
        return f"--calibration {args.calibration}: no such file"
    return None


def export_formats(args):
    """The export formats this build writes (each must exist at --precision).

    An int8 build's SavedModels are float32: the source of its TF Lite files, not an int8 export.
    """
    formats = [] if args.precision == "int8" and not args.nolite else ["savedmodel"]
    formats += [] if args.nolite else ["tflite"]
    return formats + [name for name, on in (("tfjs", args.tfjs), ("onnx", args.onnx)) if on]


# --------------------------------------------------------------------------------------------------
# Which models to build
# --------------------------------------------------------------------------------------------------

def model_jobs(args):
    """[(name, config_path, checkpoint_path)] to build, and a list of 'NAME: why' for skipped ones."""
    if not args.all:
        config, checkpoint = utils.model_paths(args.model, args.config, args.checkpoint)
        return [(export_files.export_model_name(args.model, args.config), config, checkpoint)], []
    jobs, skipped = [], []
    for name in utils.known_models():
        config, checkpoint = utils.model_paths(name)
        if os.path.isfile(checkpoint):
            jobs.append((name, config, checkpoint))
        else:
            skipped.append(f"{name}: no {os.path.relpath(checkpoint)}")
    return jobs, skipped


def needs_checkpoint(args):
    """process_kp_driving has no weights: building only it needs no checkpoint."""
    return args.module != "process_kp_driving"


def selected_modules(args):
    return MODULES if args.module == "all" else (args.module,)


def build_options(module, args):
    """The build flags that shape `module`, as recorded in its signature JSON and checked by run.py."""
    return {
        "static_batch_size": None if module == "source_encoder" else args.staticbatchsize,
        "hardcode": args.hardcode if module == "process_kp_driving" else None,
        "prescale": args.prescale and module in ("kp_detector", "generator"),
        "prediction_only": args.predictiononly and module in ("generator", "generator_cached"),
    }


def make_module(module, config, state_dicts, where, args, winograd=False):
    """The modules.SignatureModule to export for `module` with the requested options (`winograd`: the
    generator's bottleneck convs as Winograd's, for its TF Lite files)."""
    import modules

    return modules.build_module(module, config, state_dicts, where, **build_options(module, args),
                                precision=module_precision(module, args), winograd=winograd)


def winograd_for_tflite(module, args):
    """Whether this build writes float32 or float16 TF Lite files of `module` that convert from a Winograd
    build of it (modules.WinogradConv: 20-25% faster per frame on XNNPACK): the generator modules, where
    both their SavedModel and their TF Lite file are float32. int8 files keep the plain convs: TF Lite
    quantizes each conv, and a Winograd conv's transformed inputs span wider ranges than its input."""
    return (not args.nolite and module in ("generator", "generator_cached")
            and module_precision(module, args) == tflite_precision(module, args) == precision.DEFAULT)


def module_precision(module, args):
    """The precision of `module`'s SavedModel: bfloat16 for the modules a bfloat16 build writes apart,
    float32 for the others (an int8 build quantizes only when converting to TF Lite)."""
    bfloat16 = args.precision == "bfloat16" and module in precision.BFLOAT16_MODULES
    return args.precision if bfloat16 else precision.DEFAULT


def tflite_precision(module, args):
    """int8 for the modules an int8 build converts full-integer (precision.INT8_MODULES), else float32."""
    return "int8" if args.precision == "int8" and module in precision.INT8_MODULES else precision.DEFAULT


# --------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def staged_dir(dest):
    """Yield an empty temporary folder beside `dest`; it replaces `dest` only if the block succeeds."""
    utils.make_parent(dest)
    temp = utils.make_temp(dest, is_dir=True)
    try:
        yield temp
        utils.swap_in_dir(temp, dest)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def write_files_atomically(contents):
    """Write {path: bytes} so that each file appears complete or not at all."""
    temps = {}
    try:
        for path, data in contents.items():
            utils.make_parent(path)
            temps[path] = utils.make_temp(path, is_dir=False)
            with open(temps[path], "wb") as f:
                f.write(data)
        for path, temp in temps.items():
            os.replace(temp, path)
    except BaseException:
        for temp in temps.values():
            if os.path.exists(temp):
                os.remove(temp)
        raise


def json_bytes(value):
    return (json.dumps(value, indent=2) + "\n").encode()


# --------------------------------------------------------------------------------------------------
# SavedModel
# --------------------------------------------------------------------------------------------------

def _shape_list(shape):
    """A TensorShape or shape vector as a JSON list, -1 for a dynamic dimension."""
    return [-1 if dim is None or dim < 0 else int(dim) for dim in shape]


def savedmodel_signature(module, info):
    """Signature description of a module's serving_default, outputs in their flattened (sorted) order."""
    outputs = module.concrete_function().structured_outputs
    return dict(info,
                inputs=[{"name": s.name, "shape": _shape_list(s.shape), "dtype": s.dtype.name}
                        for s in module.input_specs],
                outputs=[{"name": name, "shape": _shape_list(outputs[name].shape), "dtype": outputs[name].dtype.name}
                         for name in sorted(outputs)])


def export_savedmodel(module, path, info):
    """tf.saved_model.save with the module's signature function as serving_default."""
    import tensorflow as tf

    with staged_dir(path) as temp:
        tf.saved_model.save(module.export_root(), temp,
                            signatures={export_files.SIGNATURE_KEY: module.concrete_function()})
        description = export_files.signature_json_path("savedmodel", temp)
        os.makedirs(os.path.dirname(description), exist_ok=True)
        with open(description, "wb") as f:
            f.write(json_bytes(savedmodel_signature(module, info)))


# --------------------------------------------------------------------------------------------------
# TF Lite
# --------------------------------------------------------------------------------------------------

def convert_to_tflite(saved_model_path, float16=False, int8=False, calibration=None):
    """The SavedModel's serving_default as a .tflite flatbuffer with TF Lite builtin ops only.

    The function is frozen and its GraphDef converted, rather than the SavedModel re-imported:
    with a dynamic batch the SavedModel importer loses the channel count after the generator's
    nearest upsampling, which leaves a Conv2D only Flex could run. Freezing also turns every
    variable into a constant (no VAR_HANDLE / READ_VARIABLE ops). The frozen path writes no
    SignatureDef, so add_signature_def puts serving_default back.

    int8 is TF Lite's dynamic-range quantization: weights stored as int8, activations quantized on
    the fly where a kernel supports it (conv, fully connected), float32 everywhere else.
    `calibration` (a list of {input name: array}) makes it full-integer instead: every op runs on int8
    tensors whose ranges the converter measured on those samples, with float32 kept at the signature
    (quantize / dequantize inside), so callers feed and read float32 as from the float32 file.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(saved_model_path)
    function = loaded.signatures[export_files.SIGNATURE_KEY]
    # The inputs in the module's declared order, from build.py's description inside the SavedModel: the
    # loaded function's structured_input_signature is a dict whose order changes from process to process,
    # which gave two builds of the same model and clip different bytes (their SignatureDef's input order).
    input_names = [entry["name"] for entry in export_files.read_signature_json("savedmodel", saved_model_path)["inputs"]]
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], loaded)
    converter.experimental_lower_to_saved_model = False
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if float16 or int8 or calibration:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if float16:
        converter.target_spec.supported_types = [tf.float16]
    try:
        flatbuffer = quantize_full_integer(converter, function, calibration) if calibration else converter.convert()
    except Exception as err:  # ConverterError and friends: report one line, the export stays as it was
        raise ExportError(f"{saved_model_path}: TF Lite conversion failed ({_first_line(err)})") from err
    return add_signature_def(flatbuffer, function, input_names)


# The op types an int8 build runs on int8 tensors: the convolutions (with their folded BatchNorm and ReLU).
# Everything else stays float32. Quantized, the keypoint algebra and grid sampling break: the jacobian
# inverse's DIV fails at run time (divisor at the zero point) and grid sampling's LESS_EQUAL aborts the
# process (QuantizeMultiplierGreaterThanOne), measured with TFLITE_BUILTINS_INT8 alone. Pooling,
# upsampling, padding, concatenation and residual adds in int8 too brought the demo model's PSNR against
# float32 from 40.8 to 16.5 dB.
INT8_OPS = ("CONV_2D", "QUANTIZE", "DEQUANTIZE")


def float_op_types():
    """Every TF Lite builtin op type outside INT8_OPS: the converter keeps these float32."""
    from tensorflow.lite.python import schema_py_generated as schema

    return sorted(name for name in vars(schema.BuiltinOperator) if not name.startswith("_") and name not in INT8_OPS)


def quantize_full_integer(converter, function, calibration):
    """The converter's model with INT8_OPS on int8 tensors, ranges calibrated on `calibration`.

    TF Lite's quantization debugger is the public way to keep op types float (denylisted_ops); those need
    the float builtins beside the int8 ones. Its debug dataset only builds the debug model, so one sample does.
    """
    import tensorflow as tf

    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.representative_dataset = representative_dataset(function, calibration)
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=float_op_types())
    # The quantizer prints its settings natively and warns of its own tf.lite.Interpreter's deprecation.
    with backends.native_output_hidden(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=representative_dataset(function, calibration[:1]), debug_options=options)
        return debugger.get_nondebug_quantized_model()


def representative_dataset(function, calibration):
    """The converter's representative dataset: each sample's arrays in the frozen function's input order."""
    # a signature function takes its keyword inputs flattened, i.e. sorted by name
    order = sorted(function.structured_input_signature[1])

    def samples():
        for sample in calibration:
            yield [sample[name] for name in order]

    return samples


def add_signature_def(flatbuffer, function, input_names):
    """Give a frozen-graph .tflite the serving_default SignatureDef of `function`, its inputs in the order
    of `input_names`.

    Inputs keep their placeholder names (the signature's input names). Outputs come out of the
    converter in the function's flattened output order, i.e. sorted by name; they are renamed
    from Identity_N to their signature names too, for tools that ignore signatures.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    subgraph = model.subgraphs[0]
    input_index = {subgraph.tensors[i].name.decode(): int(i) for i in subgraph.inputs}
    output_names = sorted(function.structured_outputs)
    if sorted(input_index) != sorted(input_names) or len(subgraph.outputs) != len(output_names):
        raise ExportError(f"TF Lite tensors {sorted(input_index)} do not match the signature {input_names}")
    for name, index in zip(output_names, subgraph.outputs):
        subgraph.tensors[index].name = name.encode()
    model.signatureDefs = [schema.SignatureDefT(
        inputs=[schema.TensorMapT(name=name, tensorIndex=input_index[name]) for name in input_names],
        outputs=[schema.TensorMapT(name=name, tensorIndex=int(index))
                 for name, index in zip(output_names, subgraph.outputs)],
        signatureKey=export_files.SIGNATURE_KEY, subgraphIndex=0)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def tflite_signature(flatbuffer, info):
    """Signature description of a .tflite: names, shapes (-1 = dynamic), dtypes and tensor indices."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    subgraph = model.subgraphs[0]
    signature = model.signatureDefs[0]

    def describe(tensor_map):
        tensor = subgraph.tensors[tensor_map.tensorIndex]
        shape = tensor.shapeSignature if tensor.shapeSignature is not None else tensor.shape
        return {"name": tensor_map.name.decode(), "index": int(tensor_map.tensorIndex), "shape": _shape_list(shape),
                "dtype": flatbuffer_utils.type_to_name(tensor.type).lower()}

    return dict(info, signature=signature.signatureKey.decode(),
                inputs=[describe(t) for t in signature.inputs], outputs=[describe(t) for t in signature.outputs])


def export_tflite(saved_model_path, path, info, float16, int8=False, calibration=None):
    """tflite/<model>/<module>[-float16|-int8|-int8full].tflite and its JSON, converted from the SavedModel
    (full-integer int8 when `calibration` samples are given)."""
    flatbuffer = convert_to_tflite(saved_model_path, float16, int8, calibration)
    description = tflite_signature(flatbuffer, dict(info, float16=float16, int8=int8))
    write_files_atomically({path: flatbuffer, export_files.signature_json_path("tflite", path): json_bytes(description)})


def export_face_detector(outdir):
    """tflite/face-pnet.tflite, face-rnet.tflite, face-onet.tflite (+ .json): MTCNN's networks from the mtcnn
    package's own weights, for run.py --target tflite --crop (faces_lite). Model-independent, so one set per
    export root; kept when already built from the installed package's weights. Returns the paths written."""
    import faces
    import faces_lite

    digest = faces_lite.weights_digest(faces.weight_paths())
    if faces_lite.find_detector(outdir)[0] is not None:  # built from these weights (find_detector compares)
        return []
    paths = faces_lite.detector_paths(outdir)
    for module, stage, path in zip(faces_lite.DETECTOR_MODULES, faces.build_detector().stages, paths):
        started = time.perf_counter()
        flatbuffer, function = convert_face_network(stage.model, module)
        flatbuffer = add_signature_def(flatbuffer, function, ["image"])
        description = tflite_signature(flatbuffer, {"module": module, "weights": digest})
        write_files_atomically({path: flatbuffer,
                                export_files.signature_json_path("tflite", path): json_bytes(description)})
        report(path, started, outdir)
    return list(paths)


def convert_face_network(network, module):
    """(.tflite flatbuffer with builtin ops only, the converted concrete function) of one MTCNN Keras
    network: input `image` of faces_lite.INPUT_SHAPES[module], outputs named by faces_lite.OUTPUT_NAMES.
    Frozen like convert_to_tflite's functions, so the weights are constants in the file."""
    import tensorflow as tf

    import faces_lite

    names = faces_lite.OUTPUT_NAMES[module]
    spec = tf.TensorSpec(faces_lite.INPUT_SHAPES[module], tf.float32, name="image")
    function = tf.function(lambda image: dict(zip(names, network(image))), input_signature=[spec])
    concrete = function.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], network)
    converter.experimental_lower_to_saved_model = False
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        return converter.convert(), concrete
    except Exception as err:  # ConverterError and friends, as in convert_to_tflite
        raise ExportError(f"{module}: TF Lite conversion failed ({_first_line(err)})") from err


# --------------------------------------------------------------------------------------------------
# TF.js
# --------------------------------------------------------------------------------------------------

def tfjs_converter():
    """tensorflowjs_converter: $TFJS_CONVERTER, the project's .venv-tfjs, or one on PATH."""
    for candidate in (os.environ.get("TFJS_CONVERTER"), TFJS_VENV_CONVERTER, shutil.which("tensorflowjs_converter")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ExportError("tensorflowjs_converter not found: create it with `bash tools/make_tfjs_venv.sh`")


def export_tfjs(saved_model_path, path, info):
    """js/<model>/<module>/: the SavedModel as a TF.js graph model, plus signature.json.

    Converted graph models keep only the first output's name (the rest become Identity_N:0), so
    signature.json lists the outputs in the order model.execute() returns them.
    """
    converter = tfjs_converter()
    with staged_dir(path) as temp:
        command = [converter, "--input_format=tf_saved_model", "--output_format=tfjs_graph_model",
                   f"--signature_name={export_files.SIGNATURE_KEY}", "--saved_model_tags=serve", saved_model_path, temp]
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0 or not os.path.isfile(os.path.join(temp, "model.json")):
            raise ExportError(f"{saved_model_path}: tensorflowjs_converter failed ({_last_line(result.stdout)})")
        saved = export_files.read_signature_json("savedmodel", saved_model_path)
        with open(os.path.join(temp, "model.json"), encoding="utf-8") as f:
            graph = json.load(f)
        description = dict(info, inputs=saved["inputs"], outputs=tfjs_outputs(graph, saved["outputs"]))
        with open(export_files.signature_json_path("tfjs", temp), "wb") as f:
            f.write(json_bytes(description))


def tfjs_outputs(graph, saved_outputs):
    """The SavedModel's outputs, each with the graph model tensor ('Identity_N:0') that holds it.

    The converter names the outputs Identity:0, Identity_1:0, ... in the SavedModel's flattened
    (sorted by name) order; the signature in model.json keeps a readable key for only some of them,
    so those keys are used to check the pairing.
    """
    entries = graph["signature"]["outputs"]
    tensors = sorted((entry["name"] for entry in entries.values()), key=_identity_number)
    if len(tensors) != len(saved_outputs):
        raise ExportError(f"TF.js graph has outputs {tensors}, the SavedModel {[o['name'] for o in saved_outputs]}")
    pairs = [dict(output, tensor=tensor) for output, tensor in zip(saved_outputs, tensors)]
    for pair in pairs:
        if pair["name"] in entries and entries[pair["name"]]["name"] != pair["tensor"]:
            raise ExportError(f"TF.js output {pair['name']} is {entries[pair['name']]['name']}, "
                              f"expected {pair['tensor']}")
    return pairs


def _identity_number(tensor_name):
    """'Identity:0' -> 0, 'Identity_3:0' -> 3: the converter's numbering of the outputs."""
    node = tensor_name.split(":")[0]
    if node == "Identity":
        return 0
    prefix, _, number = node.rpartition("_")
    if prefix != "Identity" or not number.isdigit():
        raise ExportError(f"TF.js output tensor {tensor_name} is not named Identity_N")
    return int(number)


# --------------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------------

def check_onnx_converter():
    """Fail before building anything when --onnx cannot convert: tf2onnx is an optional extra."""
    try:
        import tf2onnx  # noqa: F401
    except ImportError:
        raise ExportError(f"--onnx needs tf2onnx: {export_files.ONNX_INSTALL}") from None


def convert_to_onnx(saved_model_path, saved):
    """The SavedModel's serving_default as an ONNX ModelProto whose inputs and outputs keep its names.

    As for TF Lite, the signature function is frozen (variables become initializers) and its GraphDef
    converted. Inputs come in the signature's order, outputs sorted by name as in every other export.
    tf2onnx keeps going past a TensorFlow op it cannot convert, leaving it in the graph, so the ONNX
    checker must accept the result: a bad graph fails here, not when run.py loads it. `saved` is the
    SavedModel's signature description (build.py's JSON inside it).
    """
    import onnx
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    loaded = tf.saved_model.load(saved_model_path)
    function = loaded.signatures[export_files.SIGNATURE_KEY]
    frozen = convert_variables_to_constants_v2(function)
    placeholders = {tensor.name.split(":")[0]: tensor.name for tensor in frozen.inputs}
    input_names = [entry["name"] for entry in saved["inputs"]]
    output_names = [entry["name"] for entry in saved["outputs"]]
    if sorted(placeholders) != sorted(input_names):
        raise ExportError(f"{saved_model_path}: frozen inputs {sorted(placeholders)} do not match the signature "
                          f"{input_names}")
    # The function returns its outputs flattened, i.e. sorted by name, as tensors Identity, Identity_1, ...
    outputs = dict(zip(sorted(function.structured_outputs), (tensor.name for tensor in frozen.outputs)))
    if sorted(outputs) != output_names:
        raise ExportError(f"{saved_model_path}: frozen outputs {sorted(outputs)} do not match the signature "
                          f"{output_names}")
    renames = {**{placeholders[name]: name for name in input_names}, **{outputs[name]: name for name in output_names}}
    try:
        with _quiet_loggers("tensorflow", "tf2onnx"):
            model, _ = tf2onnx.convert.from_graph_def(
                frozen.graph.as_graph_def(), name=saved.get("module"),
                input_names=[placeholders[n] for n in input_names], output_names=[outputs[n] for n in output_names],
                opset=ONNX_OPSET, tensors_to_rename=renames)
        onnx.checker.check_model(model)
    except Exception as err:  # tf2onnx raises anything from ValueError to KeyError; one line, export intact
        raise ExportError(f"{saved_model_path}: ONNX conversion failed ({_first_line(err)})") from err
    return model


@contextlib.contextmanager
def _quiet_loggers(*names):
    """Silence Python loggers for a block: tf2onnx logs each rewrite and the TF1 APIs it calls warn of
    their deprecation; a failure is reported in one line instead."""
    import logging

    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def onnx_signature(model, info):
    """Signature description of an ONNX model: input and output names, shapes (-1 = dynamic), dtypes."""
    import onnx

    def describe(value):
        tensor_type = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim]
        return {"name": value.name, "shape": shape,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name}

    return dict(info, opset=ONNX_OPSET, inputs=[describe(v) for v in model.graph.input],
                outputs=[describe(v) for v in model.graph.output])


def check_onnx_signature(description, saved, saved_model_path):
    """The names, input shapes and dynamic batch callers bind to must survive the conversion."""
    inputs = [(i["name"], i["shape"]) for i in description["inputs"]]
    outputs = [o["name"] for o in description["outputs"]]
    if inputs != [(i["name"], i["shape"]) for i in saved["inputs"]] or outputs != [o["name"] for o in saved["outputs"]]:
        raise ExportError(f"{saved_model_path}: ONNX inputs {inputs} and outputs {outputs} differ from the signature's")


def export_onnx(saved_model_path, path, info):
    """onnx/<model>/<module>.onnx and its JSON, converted from the SavedModel."""
    saved = export_files.read_signature_json("savedmodel", saved_model_path)
    model = convert_to_onnx(saved_model_path, saved)
    description = onnx_signature(model, info)
    check_onnx_signature(description, saved, saved_model_path)
    write_files_atomically({path: model.SerializeToString(),
                            export_files.signature_json_path("onnx", path): json_bytes(description)})


# --------------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------------

class ExportError(Exception):
    """A conversion that failed; the message is one line and the previous export is left intact."""


def _first_line(error):
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _last_line(text):
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def report(path, started, outdir):
    """One progress line per artefact: path (relative to the export root), size, seconds."""
    size = (os.path.getsize(path) if os.path.isfile(path)
            else sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files))
    size_text = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
    print(f"  {os.path.relpath(path, outdir)}  {size_text}  {time.perf_counter() - started:.1f} s", flush=True)


def tflite_variants(args, module_name):
    """(float16, int8) of each .tflite of `module_name` to write: float32 always, float16 on request, int8 on
    request for precision.DYNAMIC_INT8_MODULES."""
    variants = [(False, False)]
    if args.float16:
        variants.append((True, False))
    if args.int8 and module_name in precision.DYNAMIC_INT8_MODULES:
        variants.append((False, True))
    return variants


def writes_face_detector(args):
    """Whether this build writes files of a target that runs without TensorFlow (TF Lite, ONNX): then it writes
    the face detector's TF Lite files too (export_face_detector), so that run.py --crop on those targets
    finds faces on LiteRT instead of loading TensorFlow for mtcnn."""
    return not args.nolite or args.onnx


def build_model(name, config_path, checkpoint_path, args):
    """Every requested artefact of one model."""
    import modules
    config = model_config.load(config_path).model
    if args.prescale:
        modules.check_prescale(config)
    state_dicts = (checkpoint_loader.load_state_dicts(checkpoint_path, use_torch=args.loadwithtorch)
                   if needs_checkpoint(args) else None)
    print(f"{name}:", flush=True)
    calibration = calibration_samples(config, state_dicts, checkpoint_path, args) if args.precision == "int8" else {}
    for module_name in selected_modules(args):
        make = functools.partial(make_module, module_name, config, state_dicts, checkpoint_path, args)
        build_and_export(make, name, module_name, args, calibration.get(module_name))


def build_and_export(make, name, module_name, args, calibration=None):
    """Export make()'s module (make: make_module with all but `winograd` given), its float TF Lite files
    from make(winograd=True)'s where winograd_for_tflite says so."""
    started = time.perf_counter()
    make_lite = functools.partial(make, winograd=True) if winograd_for_tflite(module_name, args) else None
    export_module(make(), name, module_name, args, started, calibration, make_lite)


# --------------------------------------------------------------------------------------------------
# int8 calibration: the representative dataset of each full-integer module
# --------------------------------------------------------------------------------------------------

CALIBRATION_FRAMES = 32  # frames read from --calibration: the first is the source, the rest drive


def calibration_frames(path, frame_shape):
    """The first CALIBRATION_FRAMES frames of `path`, preprocessed as run.py preprocesses driving frames."""
    import media

    with media.open_driving_clip(path, frame_shape) as clip:
        frames = [frame for _, frame in zip(range(CALIBRATION_FRAMES), clip)]
    if len(frames) < 2:
        raise utils.UserError(f"--calibration {path}: needs at least 2 frames (a source and a driving one), "
                              f"has {len(frames)}")
    return frames


def driving_batches(frames, batch_size):
    """[B, H, W, C] batches of `frames` (B = --staticbatchsize, else 1), the incomplete tail dropped."""
    import numpy as np

    return [np.stack(frames[start:start + batch_size]) for start in range(0, len(frames) - batch_size + 1, batch_size)]


def calibration_samples(config, state_dicts, checkpoint_path, args):
    """{module: [{input name: array}]} for precision.INT8_MODULES, drawn from the --calibration video's frames.

    The generator takes the first frame as its source and each batch of
    the others as driving, with the keypoints the float32 kp_detector finds on them, so calibration
    measures the ranges real keypoints produce (raw driving keypoints: relative motion stays near them).
    """
    import animate

    frames = calibration_frames(args.calibration, config.frame_shape)
    batch_size = args.staticbatchsize or 1
    kp_detector = make_module("kp_detector", config, state_dicts, checkpoint_path, args)

    def keypoints(images):
        return {key: value.numpy() for key, value in kp_detector(img=images).items()}

    source = frames[0][None]
    kp_source = keypoints(source)
    source_inputs = {"source_image": source, **animate.kp_arguments(kp_source, "kp_source")}
    if "source_image_scaled" in kp_source:
        source_inputs["source_image_scaled"] = kp_source["source_image_scaled"]
    generator = [dict(source_inputs, **animate.kp_arguments(keypoints(images), "kp_driving"))
                 for images in driving_batches(frames[1:], batch_size)]
    return {"generator": generator}


def tflite_file(outdir, name, module_name, args, float16, int8):
    """(path, precision) of one TF Lite variant: the float32 variant of an int8 build's INT8_MODULES is
    their full-integer <module>-int8full file."""
    file_precision = precision.DEFAULT if float16 or int8 else tflite_precision(module_name, args)
    module_file = export_files.precision_module(module_name, file_precision)
    return export_files.tflite_path(outdir, name, module_file, float16, int8), file_precision


@contextlib.contextmanager
def lite_saved_model(saved_model, make_lite, info):
    """The SavedModel the float TF Lite files convert from: `saved_model`, or where make_lite() builds one
    (a Winograd build), exported to a temporary folder removed afterwards."""
    if make_lite is None:
        yield saved_model
        return
    with tempfile.TemporaryDirectory(prefix=".lite-", dir=os.path.dirname(saved_model)) as temp:
        path = os.path.join(temp, "saved_model")
        export_savedmodel(make_lite(), path, info)
        yield path


def export_module(module, name, module_name, args, started, calibration=None, make_lite=None):
    """The SavedModel of one modules.SignatureModule, then the TF Lite, TF.js and ONNX files made from it
    (the float TF Lite ones from make_lite()'s module where given: see winograd_for_tflite)."""
    import modules
    info = {"model": name, "module": module_name, "build": build_options(module_name, args),
            "precision": module_precision(module_name, args)}
    if hasattr(module, "model"):
        info["weights"] = modules.weights_digest(module.model)
    saved_model = export_files.savedmodel_path(args.outdir, name,
                                               export_files.precision_module(module_name, info["precision"]))
    export_savedmodel(module, saved_model, info)
    report(saved_model, started, args.outdir)
    if not args.nolite:
        with lite_saved_model(saved_model, make_lite, info) as lite_source:
            for float16, int8 in tflite_variants(args, module_name):
                started = time.perf_counter()
                path, file_precision = tflite_file(args.outdir, name, module_name, args, float16, int8)
                full_int8 = file_precision == "int8"
                file_info = dict(info, precision=file_precision,
                                 **({"calibration": os.path.basename(args.calibration)} if full_int8 else {}))
                source = saved_model if int8 or full_int8 else lite_source
                export_tflite(source, path, file_info, float16, int8, calibration if full_int8 else None)
                report(path, started, args.outdir)
    if args.tfjs:
        started = time.perf_counter()
        path = export_files.tfjs_path(args.outdir, name, module_name)
        export_tfjs(saved_model, path, info)
        report(path, started, args.outdir)
    if args.onnx:
        started = time.perf_counter()
        path = export_files.onnx_path(args.outdir, name, module_name)
        export_onnx(saved_model, path, info)
        report(path, started, args.outdir)


def main(argv=None):
    args = parse_args(argv)
    try:
        # TensorFlow first and quietly (tf2onnx would import it noisily); Ctrl-C during it is as clean as later.
        backends.tensorflow()
        if args.onnx:
            check_onnx_converter()
        jobs, skipped = model_jobs(args)
        for line in skipped:
            print(f"skipped {line}", flush=True)
        if not jobs:
            raise utils.UserError("no model to build: no config in config/ has its checkpoint in checkpoint/")
        for name, config_path, checkpoint_path in jobs:
            build_model(name, config_path, checkpoint_path, args)
        if writes_face_detector(args):
            export_face_detector(args.outdir)
    except KeyboardInterrupt:  # first, so that it never needs the modules named below
        print("interrupted: exports being written were discarded", file=sys.stderr)
        return 130
    except (utils.UserError, checkpoint_loader.CheckpointError, ExportError) as err:
        utils.print_error(err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
