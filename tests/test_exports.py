"""build.py exports (SavedModel, TF Lite float32/float16, TF.js) and run.py's savedmodel / tflite targets.

Reference numbers come from tests/make_fixtures.py running the original PyTorch code on the fixture
checkpoints (see test_parity.py); the SPEC bounds are the same: keypoints within 1e-4, predictions
within 2e-3 max abs, uint8 frames identical on >= 99.9% of pixels and never more than one level off.
Each export is built once per session (in-process build.main calls into temporary folders); the
build-flag variants and TF.js are built for the `vox` fixture only, to keep the suite fast.
"""
import base64
import functools
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import (FIXTURE_NAMES, INTERMEDIATE_TOL, MODEL, PREDICTION_TOL, REPO, VARIANT_FIXTURE, Builds,
                      assert_frames_match, assert_kp_close, assert_one_line_error, direct_frames, generator_inputs,
                      demo_generator_batches, driving_keypoints, load_fixture, max_abs, nchw_to_nhwc, process_inputs,
                      read_png_frames, run_args, run_main_in_fresh_process, tfjs_available)

import backends
import build
import run
import export_files
import faces
import faces_lite
import media
import ops_md  # tools/, on sys.path through conftest

ALL_MODULES = export_files.EXPORT_MODULES
TARGETS = ("savedmodel", "tflite")
# Measured on the vox fixture (float16 weights, float32 compute): prediction max abs 3.1e-3 and
# mean abs 1.7e-4 from the original's; the bounds leave about 2x headroom.
FLOAT16_PREDICTION_MAX = 6e-3
FLOAT16_PREDICTION_MEAN = 4e-4
TFJS_TOL = 1e-3

pytestmark = pytest.mark.skipif(VARIANT_FIXTURE not in FIXTURE_NAMES, reason="tests/fixtures/vox is missing")


@pytest.fixture(scope="session")
def builds(tmp_path_factory):
    return Builds(tmp_path_factory)


# --------------------------------------------------------------------------------------------------
# SavedModel and TF Lite float32 against the original
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_exported_kp_detector_matches_original(builds, name, target):
    fx = load_fixture(name)
    kp_detector = builds.models(name, target)["kp_detector"]
    for images, prefix in (("source", "kp_source"), ("driving", "kp_driving")):
        ours = kp_detector(img=nchw_to_nhwc(fx.ref[images]))
        assert_kp_close(ours, fx.kp(prefix), prefix)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_exported_process_kp_driving_matches_normalize_kp(builds, name, target):
    fx = load_fixture(name)
    process = builds.models(name, target)["process_kp_driving"]
    for adapt in (0, 1):
        ours = process(**process_inputs(fx, 1.0, adapt))
        assert_kp_close(ours, fx.kp(f"norm_1{adapt}"), adapt)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_exported_generator_matches_original(builds, name, target):
    fx = load_fixture(name)
    ours = builds.models(name, target)["generator"](**generator_inputs(fx))
    assert max_abs(ours["prediction"], nchw_to_nhwc(fx.ref["prediction"])) <= PREDICTION_TOL
    for key in ("mask", "occlusion_map", "deformed"):
        assert (key in ours) == (key in fx.ref), key
        if key in ours:
            assert max_abs(ours[key], nchw_to_nhwc(fx.ref[key])) <= INTERMEDIATE_TOL, key


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_exported_pipeline_frames_equal_originals_demo(builds, name, target):
    import animate

    fx = load_fixture(name)
    calls = builds.models(name, target)
    models = animate.Models(calls["kp_detector"], calls["process_kp_driving"], calls["generator"],
                            fx.config().estimate_jacobian)
    predictions = animate.animate(models, nchw_to_nhwc(fx.ref["source"])[0], list(nchw_to_nhwc(fx.ref["driving"])),
                                  relative=True, adapt=True, batch_size=4)
    assert_frames_match([media.to_uint8(p) for p in predictions], fx.ref["frames"])


# --------------------------------------------------------------------------------------------------
# What every .tflite and its JSON must be
# --------------------------------------------------------------------------------------------------

def builtin_op_names():
    from tensorflow.lite.python import schema_py_generated as schema

    return {name for name in vars(schema.BuiltinOperator) if not name.startswith("_")} - {"CUSTOM"}


def variant_roots(builds):
    """The builds of the variant fixture that OPS.md describes (tools/ops_md.py's VARIANTS)."""
    return {variant: builds.root(VARIANT_FIXTURE, flags, modules)
            for variant, (flags, modules, _) in ops_md.VARIANTS.items()}


def test_no_variables_and_only_builtin_ops_in_any_tflite(builds):
    roots = [builds.root(name) for name in FIXTURE_NAMES] + list(variant_roots(builds).values())
    files = sorted(path for root in roots for path in Path(root, "tflite").rglob("*.tflite"))
    assert len(files) >= 3 * len(FIXTURE_NAMES)
    builtins = builtin_op_names()
    for path in files:
        ops = export_files.tflite_ops(path)
        assert not {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE"} & set(ops), path
        assert set(ops) <= builtins, (path, sorted(set(ops) - builtins))  # no Flex / custom ops


def test_tflite_json_lists_the_signature_the_interpreter_sees(builds):
    root = builds.root(VARIANT_FIXTURE)
    for module in ALL_MODULES:
        path = export_files.tflite_path(root, MODEL, module)
        description = export_files.read_signature_json("tflite", path)
        runner = export_files.tflite_interpreter(path).get_signature_runner(export_files.SIGNATURE_KEY)
        for listed, details in ((description["inputs"], runner.get_input_details()),
                                (description["outputs"], runner.get_output_details())):
            assert {d["name"] for d in listed} == set(details)
            for entry in listed:
                actual = details[entry["name"]]
                assert entry["index"] == actual["index"]
                assert entry["shape"] == actual["shape_signature"].tolist()
                assert entry["dtype"] == np.dtype(actual["dtype"]).name


def test_dynamic_batch_by_default(builds):
    description = export_files.read_signature_json("tflite", export_files.tflite_path(builds.root(VARIANT_FIXTURE), MODEL,
                                                                        "generator"))
    shapes = {d["name"]: d["shape"] for d in description["inputs"] + description["outputs"]}
    assert shapes["source_image"][0] == 1 and shapes["kp_source"][0] == 1
    assert shapes["kp_driving"][0] == -1 and shapes["prediction"][0] == -1


def test_ops_md_lists_what_a_rebuild_produces(builds):
    # OPS.md is written by `python tools/ops_md.py` from the same VARIANTS builds.
    documented = ops_md.parse((REPO / "OPS.md").read_text())
    rebuilt = ops_md.op_lists(variant_roots(builds), MODEL)
    assert documented[VARIANT_FIXTURE] == rebuilt


# --------------------------------------------------------------------------------------------------
# Build flags
# --------------------------------------------------------------------------------------------------

def test_float16_prediction_within_measured_tolerance(builds):
    fx = load_fixture(VARIANT_FIXTURE)
    generator = builds.models(VARIANT_FIXTURE, "tflite", ("--float16",), float16=True)["generator"]
    diff = np.abs(generator(**generator_inputs(fx))["prediction"] - nchw_to_nhwc(fx.ref["prediction"]))
    assert diff.max() <= FLOAT16_PREDICTION_MAX and diff.mean() <= FLOAT16_PREDICTION_MEAN, (diff.max(), diff.mean())


def test_float16_file_sits_beside_float32(builds):
    root = builds.root(VARIANT_FIXTURE, ("--float16",))
    for module in ALL_MODULES:
        float32, float16 = export_files.tflite_path(root, MODEL, module), export_files.tflite_path(root, MODEL, module, True)
        assert os.path.isfile(float32) and os.path.isfile(float16)
        assert export_files.read_signature_json("tflite", float16)["float16"] is True
    assert "DEQUANTIZE" in export_files.tflite_ops(export_files.tflite_path(root, MODEL, "generator", True))


# --------------------------------------------------------------------------------------------------
# The float TF Lite generators' Winograd convs (build.winograd_for_tflite)
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def winograd_root(tmp_path_factory):
    """The vox fixture's generator, float32, float16 and dynamic-range int8, with the Winograd threshold
    lowered to its 16-channel bottleneck (the published configs' 256 pass the real one)."""
    import modules

    fx = load_fixture(VARIANT_FIXTURE)
    root = tmp_path_factory.mktemp("exports-winograd")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modules, "WINOGRAD_MIN_CHANNELS", 1)
        assert build.main(["--config", str(fx.config_path), "--checkpoint", str(fx.checkpoint()), "--outdir",
                           str(root), "--module", "generator", "--float16", "--int8"]) == 0
    return root


def savedmodel_op_types(path):
    """Every op type in a SavedModel's graph and its functions."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    graph = saved.meta_graphs[0].graph_def
    return {node.op for node in graph.node} | {node.op for f in graph.library.function for node in f.node_def}


def test_float_tflite_generators_run_winograd_convs_and_match_original(winograd_root):
    fx = load_fixture(VARIANT_FIXTURE)
    path = functools.partial(export_files.tflite_path, winograd_root, MODEL, "generator")
    # SPACE_TO_DEPTH gathers the Winograd tiles; nothing else in the generator uses it
    assert "SPACE_TO_DEPTH" in export_files.tflite_ops(path(False, False))
    assert "SPACE_TO_DEPTH" in export_files.tflite_ops(path(True, False))
    assert "SPACE_TO_DEPTH" not in export_files.tflite_ops(path(False, True))  # int8 keeps the plain convs
    saved_model = export_files.savedmodel_path(winograd_root, MODEL, "generator")
    assert "SpaceToDepth" not in savedmodel_op_types(saved_model)  # the savedmodel target's graph stays plain
    assert not [name for name in os.listdir(os.path.dirname(saved_model)) if name.startswith(".")]  # no leftovers
    ours = export_files.load_export("tflite", path(False, False))(**generator_inputs(fx))
    assert max_abs(ours["prediction"], nchw_to_nhwc(fx.ref["prediction"])) <= PREDICTION_TOL
    for key in ("mask", "occlusion_map", "deformed"):
        assert max_abs(ours[key], nchw_to_nhwc(fx.ref[key])) <= INTERMEDIATE_TOL, key
    half = export_files.load_export("tflite", path(True, False))(**generator_inputs(fx))["prediction"]
    assert max_abs(half, nchw_to_nhwc(fx.ref["prediction"])) <= FLOAT16_PREDICTION_MAX


def export_path(target, root, module, float16=False):
    if target == "savedmodel":
        return export_files.savedmodel_path(root, MODEL, module)
    return export_files.tflite_path(root, MODEL, module, float16)


def signature_names(target, root, module, side):
    """Input or output names of an export, from the signature JSON build.py wrote beside it."""
    return [d["name"] for d in export_files.read_signature_json(target, export_path(target, root, module))[side]]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("hardcode", ["00", "01", "10", "11"])
def test_hardcode_equals_passing_the_flags(builds, hardcode, target):
    fx = load_fixture(VARIANT_FIXTURE)
    root = builds.root(VARIANT_FIXTURE, ("--hardcode", hardcode), ["process_kp_driving"])
    assert not {"use_relative_jacobian", "adapt_movement_scale"} & set(
        signature_names(target, root, "process_kp_driving", "inputs"))
    baked = export_files.load_export(target, export_path(target, root, "process_kp_driving"))
    passed = builds.models(VARIANT_FIXTURE, target)["process_kp_driving"]
    inputs = process_inputs(fx, float(hardcode[0]), float(hardcode[1]))
    ours = baked(**{k: v for k, v in inputs.items() if k not in ("use_relative_jacobian", "adapt_movement_scale")})
    expected = passed(**inputs)
    assert set(ours) == set(expected)
    for key in expected:
        np.testing.assert_array_equal(ours[key], expected[key])


@pytest.mark.parametrize("target", TARGETS)
def test_prescale_generator_equals_default(builds, target):
    fx = load_fixture(VARIANT_FIXTURE)
    prescale = builds.models(VARIANT_FIXTURE, target, ("--prescale",))
    default = builds.models(VARIANT_FIXTURE, target)
    source = nchw_to_nhwc(fx.ref["source"])
    kp_source = prescale["kp_detector"](img=source)
    assert kp_source["source_image_scaled"].shape[1:3] == fx.ref["mask"].shape[2:4]  # dense motion's h, w
    inputs = generator_inputs(fx)
    ours = prescale["generator"](**inputs, source_image_scaled=kp_source["source_image_scaled"])
    expected = default["generator"](**inputs)
    for key in expected:
        assert max_abs(ours[key], expected[key]) <= 1e-5, key


def test_prescale_refused_when_scale_factors_differ(tmp_path, capsys):
    fx = load_fixture(VARIANT_FIXTURE)
    config = yaml.safe_load(fx.config_path.read_text())
    config["model_params"]["generator_params"]["dense_motion_params"]["scale_factor"] = 0.5
    path = tmp_path / "mixed-256.yaml"
    path.write_text(yaml.safe_dump(config))
    code = build.main(["--config", str(path), "--checkpoint", str(fx.checkpoint()), "--prescale",
                       "--outdir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "scale_factor" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", TARGETS)
def test_predictiononly_outputs_only_prediction(builds, target):
    fx = load_fixture(VARIANT_FIXTURE)
    root = builds.root(VARIANT_FIXTURE, ("--predictiononly",), ["generator"])
    assert signature_names(target, root, "generator", "outputs") == ["prediction"]
    ours = export_files.load_export(target, export_path(target, root, "generator"))(**generator_inputs(fx))
    expected = builds.models(VARIANT_FIXTURE, target)["generator"](**generator_inputs(fx))
    assert list(ours) == ["prediction"]
    assert max_abs(ours["prediction"], expected["prediction"]) <= 1e-6


def test_static_batch_size_is_baked_in(builds):
    root = builds.root(VARIANT_FIXTURE, ("--staticbatchsize", "4"))
    for module in ALL_MODULES:
        description = export_files.read_signature_json("tflite", export_files.tflite_path(root, MODEL, module))
        assert all(-1 not in d["shape"] for d in description["inputs"] + description["outputs"]), module
        assert description["build"]["static_batch_size"] == 4


def is_zero_order(name):
    config = yaml.safe_load(load_fixture(name).config_path.read_text())
    return not config["model_params"]["common_params"].get("estimate_jacobian", False)


@pytest.mark.parametrize("name", [name for name in FIXTURE_NAMES if is_zero_order(name)])
def test_zero_order_exports_have_no_jacobians(builds, name):
    root = builds.root(name)
    for target in TARGETS:
        for module in ALL_MODULES:
            names = signature_names(target, root, module, "inputs") + signature_names(target, root, module, "outputs")
            assert not [n for n in names if "jacobian" in n and n != "use_relative_jacobian"], (target, module)


# --------------------------------------------------------------------------------------------------
# The cached generator pair: source_encoder once per video, generator_cached per batch
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def cached_root(builds, tmp_path_factory):
    """The vox fixture's default exports plus source_encoder and generator_cached, in a folder of their own."""
    fx = load_fixture(VARIANT_FIXTURE)
    root = tmp_path_factory.mktemp("exports-cached")
    shutil.copytree(builds.root(VARIANT_FIXTURE), root, dirs_exist_ok=True)
    for module in export_files.CACHED_EXPORT_MODULES:
        code = build.main(["--config", str(fx.config_path), "--checkpoint", str(fx.checkpoint()),
                           "--outdir", str(root), "--module", module])
        assert code == 0, f"build.py failed: {module}"
    return root


def cached_run_args(root, target, output):
    return run.parse_args(run_args(load_fixture(VARIANT_FIXTURE), output, "--relative", "--adapt", "--target", target,
                                   "--exportdir", str(root)))


def test_tflite_runs_the_cached_pair_where_litert_keeps_partitions_unfused(cached_root, monkeypatch):
    for module in export_files.CACHED_EXPORT_MODULES:
        assert os.path.isfile(export_files.tflite_path(cached_root, MODEL, module)), module
    assert set(export_files.find_exports("tflite", cached_root, MODEL)) >= set(export_files.CACHED_EXPORT_MODULES)
    assert not export_files.runs_cached_pair("tflite", "int8")  # the full-integer generator has no cached twin

    class FusingInterpreter:  # tf.lite.Interpreter's constructor: no one-op-per-partition option
        def __init__(self, model_path=None, model_content=None, num_threads=None):
            pass

    monkeypatch.setattr(backends, "tflite_interpreter_class", lambda: FusingInterpreter)
    assert set(export_files.find_exports("tflite", cached_root, MODEL)) == set(export_files.EXPORT_MODULES)
    assert set(export_files.find_exports("savedmodel", cached_root, MODEL)) == set(
        export_files.EXPORT_MODULES + export_files.CACHED_EXPORT_MODULES)


def test_tflite_cached_pair_equals_generator_call_after_call(cached_root):
    fx = load_fixture(VARIANT_FIXTURE)
    exports = export_files.find_exports("tflite", cached_root, MODEL)
    calls = {module: export_files.load_export("tflite", path) for module, (path, _) in exports.items()}
    source, driving = nchw_to_nhwc(fx.ref["source"]), nchw_to_nhwc(fx.ref["driving"])
    for step, (image, frames) in enumerate([(source, slice(0, 2)), (driving[1:2], slice(2, 5)),
                                            (driving[4:5], slice(5, 6)), (source, slice(1, 4))]):
        call_inputs = driving_keypoints(fx, frames, image)
        ours = calls["generator_cached"](**call_inputs, **calls["source_encoder"](source_image=image))
        expected = calls["generator"](**call_inputs)
        assert set(ours) == set(expected)
        for key in expected:
            assert max_abs(ours[key], expected[key]) <= INTERMEDIATE_TOL, (step, key)


@pytest.fixture(scope="module")
def demo_cached_pair(tmp_path_factory):
    """The bundled demo model's source_encoder and generator_cached, as SavedModel and TF Lite."""
    example = REPO / "example"
    root = tmp_path_factory.mktemp("exports-demo-cached")
    for module in export_files.CACHED_EXPORT_MODULES:
        assert build.main(["--config", str(example / "demo-256.yaml"), "--checkpoint",
                           str(example / "demo-cpk.pth.tar"), "--outdir", str(root), "--module", module]) == 0
    return root


def test_demo_tflite_generator_cached_gives_every_call_the_savedmodels_frames(demo_cached_pair):
    # With LiteRT's fused XNNPACK partitions, this graph's frames came out 0.99 max abs off from the second
    # call of an interpreter on, in about half of them (export_files.UNFUSED_DELEGATE); several fresh
    # interpreters make a lucky pass unlikely.
    def load(target, module):
        path = (export_files.savedmodel_path if target == "savedmodel" else export_files.tflite_path)(
            demo_cached_pair, "demo", module)
        return export_files.load_export(target, path)

    batches = demo_generator_batches(3, 4)
    encoded = load("savedmodel", "source_encoder")(source_image=batches[0]["source_image"])
    reference = load("savedmodel", "generator_cached")
    expected = [reference(**batch, **encoded)["prediction"] for batch in batches]
    for interpreter in range(6):
        generator = load("tflite", "generator_cached")
        for call, (batch, frames) in enumerate(zip(batches, expected)):
            assert max_abs(generator(**batch, **encoded)["prediction"], frames) <= INTERMEDIATE_TOL, (interpreter, call)


def test_cached_pair_equals_generator(cached_root):
    fx = load_fixture(VARIANT_FIXTURE)
    exports = export_files.find_exports("savedmodel", cached_root, MODEL)
    calls = {module: export_files.load_export("savedmodel", path) for module, (path, _) in exports.items()}
    inputs = generator_inputs(fx)
    encoded = calls["source_encoder"](source_image=inputs["source_image"])
    ours = calls["generator_cached"](**inputs, **encoded)
    expected = calls["generator"](**inputs)
    assert set(ours) == set(expected)
    for key in expected:
        assert max_abs(ours[key], expected[key]) <= 1e-5, key


def test_run_py_uses_the_cached_pair_and_writes_direct_frames(cached_root, tmp_path_factory, tmp_path, monkeypatch):
    fx = load_fixture(VARIANT_FIXTURE)
    args = cached_run_args(cached_root, "savedmodel", tmp_path / "frames")
    loaded = {}  # path: whether it loaded on the caller's thread
    load_export = export_files.load_export

    def noted(target, path):
        loaded[path] = threading.current_thread() is threading.main_thread()
        return load_export(target, path)

    monkeypatch.setattr(export_files, "load_export", noted)
    models = run.load_models(args, fx.config(), str(fx.checkpoint()))
    assert models.cached
    models.wait()
    plain = export_files.savedmodel_path(cached_root, MODEL, "generator")
    assert len(loaded) == 4 and plain not in loaded, "the plain generator is loaded beside the pair that replaces it"
    generator = export_files.savedmodel_path(cached_root, MODEL, "generator_cached")
    assert {path for path, on_caller in loaded.items() if not on_caller} == {generator}, \
        "generator_cached's weights should load on a thread of their own, the other exports on the caller's"
    out = tmp_path / "frames"
    assert run.main(run_args(fx, out, "--relative", "--adapt", "--target", "savedmodel",
                             "--exportdir", str(cached_root))) == 0
    assert_frames_match(read_png_frames(out), direct_frames(VARIANT_FIXTURE, tmp_path_factory))


def test_cached_pair_of_other_weights_is_ignored(cached_root, tmp_path, capsys):
    fx = load_fixture(VARIANT_FIXTURE)
    root = tmp_path / "exports"
    shutil.copytree(cached_root, root)
    description_path = Path(export_files.signature_json_path("savedmodel",
                                                      export_files.savedmodel_path(root, MODEL, "generator_cached")))
    description = json.loads(description_path.read_text())
    description["weights"] = "0" * 16  # as if built from another checkpoint
    description_path.write_text(json.dumps(description))
    models = run.load_models(cached_run_args(root, "savedmodel", tmp_path / "frames"), fx.config(),
                             str(fx.checkpoint()))
    assert not models.cached
    err = capsys.readouterr().err
    assert "do not match the generator export" in err and "python build.py" in err, err


# --------------------------------------------------------------------------------------------------
# TF.js (in Node, pure-JS CPU backend)
# --------------------------------------------------------------------------------------------------

def encode(array):
    array = np.asarray(array, np.float32)  # not ascontiguousarray: it turns scalars into shape [1]
    return {"shape": list(array.shape), "data": base64.b64encode(array.tobytes()).decode()}


def decode(entry):
    return np.frombuffer(base64.b64decode(entry["data"]), np.float32).reshape(entry["shape"])


def run_tfjs(model_dir, inputs, tmp_path):
    """Outputs of a TF.js graph model on numpy inputs, run by tests/js/run_graph_model.mjs."""
    inputs_path, outputs_path = tmp_path / "inputs.json", tmp_path / "outputs.json"
    inputs_path.write_text(json.dumps({k: encode(v) for k, v in inputs.items()}))
    result = subprocess.run(["node", str(REPO / "tests/js/run_graph_model.mjs"), str(model_dir), str(inputs_path),
                             str(outputs_path)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return {k: decode(v) for k, v in json.loads(outputs_path.read_text()).items()}


@pytest.fixture(scope="session")
def tfjs_root(builds):
    reason = tfjs_available()
    if reason:
        pytest.skip(f"TF.js check skipped: {reason}")
    return builds.root(VARIANT_FIXTURE, ("--tfjs", "--nolite"))


def test_tfjs_outputs_match_savedmodel(tfjs_root, tmp_path):
    fx = load_fixture(VARIANT_FIXTURE)
    driving = nchw_to_nhwc(fx.ref["driving"])
    cases = {"kp_detector": {"img": driving}, "process_kp_driving": process_inputs(fx),
             "generator": generator_inputs(fx)}
    for module, inputs in cases.items():
        expected = export_files.savedmodel_function(export_files.savedmodel_path(tfjs_root, MODEL, module))(**inputs)
        ours = run_tfjs(export_files.tfjs_path(tfjs_root, MODEL, module), inputs, tmp_path)
        assert set(ours) == set(expected), module
        for key in expected:
            assert max_abs(ours[key], expected[key]) <= TFJS_TOL, (module, key)


def test_tfjs_graphs_have_no_einsum(tfjs_root):
    for module in ALL_MODULES:
        graph = json.loads(Path(export_files.tfjs_path(tfjs_root, MODEL, module), "model.json").read_text())
        ops = {node["op"] for node in graph["modelTopology"]["node"]}
        assert "Einsum" not in ops, module


# --------------------------------------------------------------------------------------------------
# run.py on the exported targets
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_run_py_exported_target_writes_direct_frames(builds, tmp_path_factory, tmp_path, name, target):
    fx = load_fixture(name)
    root = builds.root(name)
    out = tmp_path / "frames"
    assert run.main(run_args(fx, out, "--relative", "--adapt", "--target", target, "--exportdir", str(root))) == 0
    assert_frames_match(read_png_frames(out), direct_frames(name, tmp_path_factory))


def test_run_py_static_batch_with_exactbatch_on_six_frames(builds, tmp_path_factory, tmp_path):
    fx = load_fixture(VARIANT_FIXTURE)
    assert fx.ref["driving"].shape[0] % 4 != 0
    root = builds.root(VARIANT_FIXTURE, ("--staticbatchsize", "4"))
    out = tmp_path / "frames"
    assert run.main(run_args(fx, out, "--relative", "--adapt", "--target", "tflite", "--exportdir", str(root),
                             "--batchsize", "4", "--exactbatch")) == 0
    assert_frames_match(read_png_frames(out), direct_frames(VARIANT_FIXTURE, tmp_path_factory))


@pytest.mark.parametrize("target", TARGETS)
def test_run_py_prescale_writes_direct_frames(builds, tmp_path_factory, tmp_path, target):
    fx = load_fixture(VARIANT_FIXTURE)
    root = builds.root(VARIANT_FIXTURE, ("--prescale",))
    out = tmp_path / "frames"
    assert run.main(run_args(fx, out, "--relative", "--adapt", "--prescale", "--target", target,
                             "--exportdir", str(root))) == 0
    assert_frames_match(read_png_frames(out), direct_frames(VARIANT_FIXTURE, tmp_path_factory))


def test_run_py_float16_target_runs(builds, tmp_path):
    fx = load_fixture(VARIANT_FIXTURE)
    root = builds.root(VARIANT_FIXTURE, ("--float16",))
    out = tmp_path / "frames"
    assert run.main(run_args(fx, out, "--relative", "--adapt", "--target", "tflite", "--float16",
                             "--exportdir", str(root))) == 0
    assert len(read_png_frames(out)) == fx.ref["frames"].shape[0]



@pytest.mark.parametrize("target", TARGETS)
def test_missing_export_names_the_build_command(tmp_path, capsys, target):
    fx = load_fixture(VARIANT_FIXTURE)
    empty = tmp_path / "exports"
    code = run.main(run_args(fx, tmp_path / "frames", "--target", target, "--exportdir", str(empty), "--prescale"))
    assert_one_line_error(capsys, code, "no such export",
                          f"python build.py --config {fx.config_path} --checkpoint {fx.checkpoint()} --prescale "
                          f"--outdir {empty}")
    assert not (tmp_path / "frames").exists()


def test_prescale_run_on_default_exports_names_the_build_command(builds, tmp_path, capsys):
    fx = load_fixture(VARIANT_FIXTURE)
    code = run.main(run_args(fx, tmp_path / "frames", "--prescale", "--target", "tflite",
                             "--exportdir", str(builds.root(VARIANT_FIXTURE))))
    assert_one_line_error(capsys, code, "without --prescale", "python build.py", "--prescale")


def test_static_batch_export_without_exactbatch_is_one_line(builds, tmp_path, capsys):
    fx = load_fixture(VARIANT_FIXTURE)
    root = builds.root(VARIANT_FIXTURE, ("--staticbatchsize", "4"))
    code = run.main(run_args(fx, tmp_path / "frames", "--target", "tflite", "--exportdir", str(root)))
    assert_one_line_error(capsys, code, "static batch size of 4", "--batchsize 4 --exactbatch")


def test_hardcoded_flags_that_do_not_fit_the_run_are_one_line(builds, tmp_path, capsys):
    fx = load_fixture(VARIANT_FIXTURE)
    root = builds.root(VARIANT_FIXTURE, ("--hardcode", "10"))
    code = run.main(run_args(fx, tmp_path / "frames", "--relative", "--adapt", "--target", "savedmodel",
                             "--exportdir", str(root)))
    assert_one_line_error(capsys, code, "--hardcode 10", "python build.py")


@pytest.mark.parametrize("hardcode", [None, "10"])
def test_tflite_run_never_imports_tensorflow(builds, tmp_path, hardcode):
    """The tflite target runs on LiteRT alone, a --hardcode export too (its flags are dropped from the
    call by the export's own signature), and gives the frames of the plain export."""
    fx = load_fixture(VARIANT_FIXTURE)
    flags = ("--hardcode", hardcode) if hardcode else ()
    args = run_args(fx, tmp_path / "frames", "--relative", "--target", "tflite",
                    "--exportdir", str(builds.root(VARIANT_FIXTURE, flags)))
    result = run_main_in_fresh_process(args)
    assert result.stdout.strip().splitlines()[-1] == "0 []", result.stdout + result.stderr
    plain = run_args(fx, tmp_path / "plain", "--relative", "--target", "tflite",
                     "--exportdir", str(builds.root(VARIANT_FIXTURE)))
    assert run.main(plain) == 0
    ours, expected = read_png_frames(tmp_path / "frames"), read_png_frames(tmp_path / "plain")
    assert len(ours) == len(expected) > 0
    np.testing.assert_array_equal(np.stack(ours), np.stack(expected))


def test_savedmodel_run_imports_no_keras_and_gives_the_frames_of_a_whole_tensorflow(builds, tmp_path):
    """The savedmodel target imports backends.saved_model_runtime()'s part of TensorFlow only (no Keras, no
    tf.data API), and its frames are those of this process, where all of TensorFlow is imported."""
    fx = load_fixture(VARIANT_FIXTURE)
    root = str(builds.root(VARIANT_FIXTURE))
    result = run_main_in_fresh_process(run_args(fx, tmp_path / "fresh", "--relative", "--adapt", "--target",
                                                "savedmodel", "--exportdir", root))
    assert result.stdout.strip().splitlines()[-1] == "0 ['tensorflow']", result.stdout + result.stderr
    assert run.main(run_args(fx, tmp_path / "whole", "--relative", "--adapt", "--target", "savedmodel",
                             "--exportdir", root)) == 0
    ours, expected = read_png_frames(tmp_path / "fresh"), read_png_frames(tmp_path / "whole")
    assert len(ours) == len(expected) > 0
    np.testing.assert_array_equal(np.stack(ours), np.stack(expected))


# --------------------------------------------------------------------------------------------------
# --crop on the tflite target: faces found on LiteRT with build.py's detector files
# --------------------------------------------------------------------------------------------------

WILD_PHOTO = str(REPO / "example" / "wild.png")  # two faces
WILD_DRIVING = str(REPO / "example" / "driving.mp4")


def crop_run_args(root, output):
    fx = load_fixture(VARIANT_FIXTURE)
    return ["--config", str(fx.config_path), "--target", "tflite", "--exportdir", str(root), "--source_image",
            WILD_PHOTO, "--driving_video", WILD_DRIVING, "--crop", "--frames", "2", "--relative", "--output", f"{output}/"]


def test_build_writes_the_face_detector_once_per_export_root(builds):
    root = builds.root(VARIANT_FIXTURE)
    paths, why_not = faces_lite.find_detector(str(root))
    assert why_not is None  # all three, built from the installed mtcnn's weights
    shapes = [export_files.read_signature_json("tflite", path)["inputs"][0]["shape"] for path in paths]
    assert shapes == [[1, -1, -1, 3], [-1, 24, 24, 3], [-1, 48, 48, 3]]  # P-Net takes any picture size
    written = [os.path.getmtime(path) for path in paths]
    assert build.export_face_detector(str(root)) == []  # up to date: kept
    assert [os.path.getmtime(path) for path in paths] == written


def test_a_build_without_tflite_writes_no_face_detector(tmp_path):
    fx = load_fixture(VARIANT_FIXTURE)
    assert build.main(["--config", str(fx.config_path), "--checkpoint", str(fx.checkpoint()), "--module",
                       "process_kp_driving", "--nolite", "--outdir", str(tmp_path)]) == 0
    assert not any(os.path.exists(path) for path in faces_lite.detector_paths(str(tmp_path)))


def test_tflite_crop_finds_faces_without_tensorflow(builds, tmp_path):
    args = crop_run_args(builds.root(VARIANT_FIXTURE), tmp_path / "frames")
    result = run_main_in_fresh_process(args)
    assert result.stdout.strip().splitlines()[-1] == "0 []", result.stdout + result.stderr
    assert "animating 2 faces" in result.stdout and "note:" not in result.stderr, result.stdout + result.stderr
    assert len(read_png_frames(tmp_path / "frames")) == 2


def test_tflite_list_faces_finds_them_without_tensorflow(builds):
    fx = load_fixture(VARIANT_FIXTURE)
    args = ["--config", str(fx.config_path), "--target", "tflite", "--exportdir", str(builds.root(VARIANT_FIXTURE)),
            "--source_image", WILD_PHOTO, "--driving_video", WILD_DRIVING, "--list_faces"]
    result = run_main_in_fresh_process(args)
    assert result.stdout.strip().splitlines()[-1] == "0 []", result.stdout + result.stderr
    assert "wild.png: 2 faces" in result.stdout and "driving.mp4: 1 face track" in result.stdout, result.stdout


def test_tflite_crop_without_the_detector_files_falls_back_to_mtcnn_with_a_note(builds, tmp_path, capsys):
    old = tmp_path / "old"  # an export root from before build.py wrote the detector
    shutil.copytree(Path(builds.root(VARIANT_FIXTURE), "tflite", MODEL), old / "tflite" / MODEL)
    assert run.main(crop_run_args(old, tmp_path / "frames")) == 0
    said = capsys.readouterr()
    notes = [line for line in said.err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1, said.err
    assert "face-pnet.tflite: no such file" in notes[0] and "rebuild with: python build.py" in notes[0]
    assert "animating 2 faces" in said.out and len(read_png_frames(tmp_path / "frames")) == 2
    assert isinstance(faces.detector(), faces.MtcnnDetector)


def test_a_broken_face_detector_file_is_one_line(builds, tmp_path, capsys):
    shutil.copytree(Path(builds.root(VARIANT_FIXTURE), "tflite"), tmp_path / "root" / "tflite")
    (tmp_path / "root" / "tflite" / "face-onet.tflite").write_bytes(b"not a model")
    code = run.main(crop_run_args(tmp_path / "root", tmp_path / "frames"))
    assert_one_line_error(capsys, code, "face-onet.tflite: LiteRT cannot load it", "rebuild it with build.py")
    # the run's detector choice ends with it: the next detection in this process does not load that file
    assert isinstance(faces.detector(), faces.MtcnnDetector)


# --------------------------------------------------------------------------------------------------
# build.py errors and atomic writes
# --------------------------------------------------------------------------------------------------

def test_build_missing_checkpoint_is_one_line(tmp_path, capsys):
    fx = load_fixture(VARIANT_FIXTURE)
    code = build.main(["--config", str(fx.config_path), "--checkpoint", str(tmp_path / "nope.pth.tar"),
                       "--outdir", str(tmp_path / "out")])
    assert_one_line_error(capsys, code, "nope.pth.tar")
    assert not (tmp_path / "out").exists()


def test_failed_conversion_leaves_previous_export_intact(builds, tmp_path, capsys, monkeypatch):
    fx = load_fixture(VARIANT_FIXTURE)
    out = tmp_path / "out"
    previous = Path(export_files.tfjs_path(out, MODEL, "process_kp_driving"))
    previous.mkdir(parents=True)
    (previous / "model.json").write_text("{}")
    monkeypatch.setenv("TFJS_CONVERTER", shutil.which("false"))
    code = build.main(["--config", str(fx.config_path), "--checkpoint", str(fx.checkpoint()), "--outdir", str(out),
                       "--module", "process_kp_driving", "--nolite", "--tfjs"])
    assert_one_line_error(capsys, code, "tensorflowjs_converter failed")
    assert sorted(p.name for p in previous.iterdir()) == ["model.json"]
    assert (previous / "model.json").read_text() == "{}"
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
