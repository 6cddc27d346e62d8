"""build.py --onnx and run.py --target onnx (onnxruntime) against the original's reference numbers.

Reference numbers come from tests/make_fixtures.py running the original PyTorch code on the fixture
checkpoints; the bounds are the SPEC's, as for the other exports (tests/test_exports.py; the build cache
and input helpers both use are conftest's): keypoints within 1e-4, predictions within 2e-3 max abs,
uint8 frames identical on >= 99.9% of pixels and never more than one level off. tf2onnx, onnx and
onnxruntime are optional (requirements-onnx.txt): without them every test skips except the checks of
one-line errors that need neither (a missing export, build.py --onnx without tf2onnx).
"""
import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import (FIXTURE_NAMES, INTERMEDIATE_TOL, KP_TOL, MODEL, PREDICTION_TOL, REPO, VARIANT_FIXTURE, Builds,
                      assert_frames_match, assert_kp_close, assert_one_line_error, direct_frames, generator_inputs,
                      driving_keypoints, load_fixture, max_abs, nchw_to_nhwc, process_inputs, read_png_frames,
                      run_args, run_main_in_fresh_process, run_readme_cli_commands)

import animate
import build
import faces_lite
import ops_md  # tools/, on sys.path through conftest
import run
import export_files

ONNX_FLAGS = ("--onnx", "--nolite")  # the TF Lite files are test_exports.py's business
MISSING = [name for name in ("tf2onnx", "onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
requires_onnx = pytest.mark.skipif(bool(MISSING), reason=f"{', '.join(MISSING)} not installed: "
                                                         "pip install -r requirements-onnx.txt")
# Two graphs of the same weights (a batch of 3 vs of 1, the cached pair vs the generator) differ by float
# rounding only; tests/test_exports.py bounds the SavedModel cached pair the same way.
SAME_MODEL_TOL = 1e-5

pytestmark = pytest.mark.skipif(VARIANT_FIXTURE not in FIXTURE_NAMES, reason="tests/fixtures/vox is missing")


class OnnxBuilds(Builds):
    """conftest.Builds with --onnx --nolite added to every build, and the models loaded from the .onnx files."""

    def root(self, name, flags=(), modules=export_files.EXPORT_MODULES):
        return super().root(name, (*flags, *ONNX_FLAGS), modules)

    def models(self, name, flags=()):
        exports = export_files.find_exports("onnx", self.root(name, flags), MODEL)
        return {module: export_files.load_export("onnx", path) for module, (path, _) in exports.items()}


@pytest.fixture(scope="session")
def onnx_builds(tmp_path_factory):
    return OnnxBuilds(tmp_path_factory)


# --------------------------------------------------------------------------------------------------
# Each module against the original
# --------------------------------------------------------------------------------------------------

@requires_onnx
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_onnx_kp_detector_matches_original(onnx_builds, name):
    fx = load_fixture(name)
    kp_detector = onnx_builds.models(name)["kp_detector"]
    for images, prefix in (("source", "kp_source"), ("driving", "kp_driving")):
        ours = kp_detector(img=nchw_to_nhwc(fx.ref[images]))
        assert_kp_close(ours, fx.kp(prefix), prefix)


@requires_onnx
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_onnx_process_kp_driving_matches_normalize_kp(onnx_builds, name):
    fx = load_fixture(name)
    process = onnx_builds.models(name)["process_kp_driving"]
    for adapt in (0, 1):
        ours = process(**process_inputs(fx, 1.0, adapt))
        assert_kp_close(ours, fx.kp(f"norm_1{adapt}"), adapt)


@requires_onnx
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_onnx_generator_matches_original(onnx_builds, name):
    fx = load_fixture(name)
    ours = onnx_builds.models(name)["generator"](**generator_inputs(fx))
    assert max_abs(ours["prediction"], nchw_to_nhwc(fx.ref["prediction"])) <= PREDICTION_TOL
    for key in ("mask", "occlusion_map", "deformed"):
        assert (key in ours) == (key in fx.ref), key
        if key in ours:
            assert max_abs(ours[key], nchw_to_nhwc(fx.ref[key])) <= INTERMEDIATE_TOL, key


@requires_onnx
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_onnx_batch_of_one_and_of_three(onnx_builds, name):
    # The driving batch is dynamic: 1 and 3 frames give the original's keypoints and frames (the
    # reference holds generator outputs for its first 2 frames; the third must equal its own batch of one).
    fx = load_fixture(name)
    models = onnx_builds.models(name)
    driving = nchw_to_nhwc(fx.ref["driving"])
    for count in (1, 3):
        ours = models["kp_detector"](img=driving[:count])
        for key, reference in fx.kp("kp_driving").items():
            assert max_abs(ours[key], reference[:count]) <= KP_TOL, (count, key)
    batch = models["generator"](**driving_keypoints(fx, slice(0, 3)))["prediction"]
    reference = nchw_to_nhwc(fx.ref["prediction"])
    assert batch.shape[0] == 3
    assert max_abs(batch[:len(reference)], reference) <= PREDICTION_TOL
    third = models["generator"](**driving_keypoints(fx, slice(2, 3)))["prediction"]
    assert max_abs(batch[2:3], third) <= SAME_MODEL_TOL


# --------------------------------------------------------------------------------------------------
# What every .onnx and its JSON must be
# --------------------------------------------------------------------------------------------------

ORT_DTYPES = {"tensor(float)": "float32"}  # onnxruntime's type names of the dtypes the signatures use


def _ort_shape(shape):
    """onnxruntime's shape (ints, and a name or None for a dynamic dimension) in the JSON's -1 form."""
    return [dim if isinstance(dim, int) else -1 for dim in shape]


@requires_onnx
def test_onnx_json_lists_what_onnxruntime_sees_and_keeps_the_signature(onnx_builds):
    root = onnx_builds.root(VARIANT_FIXTURE)
    for module in export_files.EXPORT_MODULES:
        path = export_files.onnx_path(root, MODEL, module)
        description = export_files.read_signature_json("onnx", path)
        saved = export_files.read_signature_json("savedmodel", export_files.savedmodel_path(root, MODEL, module))
        session = export_files.onnx_session(path)
        for side, nodes in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
            listed = description[side]
            assert [d["name"] for d in listed] == [d["name"] for d in saved[side]], (module, side)
            assert [(d["name"], d["shape"], d["dtype"]) for d in listed] == [
                (node.name, _ort_shape(node.shape), ORT_DTYPES.get(node.type)) for node in nodes], (module, side)
        assert [d["shape"] for d in description["inputs"]] == [d["shape"] for d in saved["inputs"]], module
        assert description["build"] == saved["build"] and description.get("weights") == saved.get("weights")


@requires_onnx
def test_onnx_dynamic_batch_by_default_and_static_on_request(onnx_builds):
    default = export_files.read_signature_json("onnx", export_files.onnx_path(onnx_builds.root(VARIANT_FIXTURE), MODEL, "generator"))
    shapes = {d["name"]: d["shape"] for d in default["inputs"] + default["outputs"]}
    assert shapes["source_image"][0] == 1 and shapes["kp_source"][0] == 1
    assert shapes["kp_driving"][0] == -1 and shapes["prediction"][0] == -1
    static_root = onnx_builds.root(VARIANT_FIXTURE, ("--staticbatchsize", "4"), ["generator"])
    static = export_files.read_signature_json("onnx", export_files.onnx_path(static_root, MODEL, "generator"))
    assert all(-1 not in d["shape"] for d in static["inputs"]), static["inputs"]
    assert static["build"]["static_batch_size"] == 4


@requires_onnx
def test_onnx_graphs_use_standard_ops_only(onnx_builds):
    import onnx

    for name in FIXTURE_NAMES:
        for module in export_files.EXPORT_MODULES:
            path = export_files.onnx_path(onnx_builds.root(name), MODEL, module)
            model = onnx.load(path)
            assert model.opset_import[0].version == build.ONNX_OPSET
            unknown = [op for op in export_files.onnx_ops(path) if not onnx.defs.has(op)]
            assert not unknown, (name, module, unknown)


@requires_onnx
def test_ops_md_lists_the_onnx_ops_a_rebuild_produces(onnx_builds):
    # OPS.md is written by `python tools/ops_md.py` from the same variant builds (ops_md.ONNX_VARIANTS).
    roots = {variant: onnx_builds.root(VARIANT_FIXTURE, ops_md.VARIANTS[variant][0], ops_md.VARIANTS[variant][1])
             for variant in ops_md.ONNX_VARIANTS}
    documented = ops_md.parse((REPO / "OPS.md").read_text(), "onnx")
    assert documented[VARIANT_FIXTURE] == ops_md.onnx_op_lists(roots, MODEL)


# --------------------------------------------------------------------------------------------------
# The cached generator pair
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def onnx_cached_root(onnx_builds):
    return onnx_builds.root(VARIANT_FIXTURE, (), export_files.EXPORT_MODULES + export_files.CACHED_EXPORT_MODULES)


@requires_onnx
def test_onnx_cached_pair_equals_generator_call_after_call(onnx_cached_root):
    # Sources and keypoints change on every call, in one session (LiteRT's fused XNNPACK partitions once got
    # generator_cached wrong from its second call on: export_files.UNFUSED_DELEGATE).
    fx = load_fixture(VARIANT_FIXTURE)
    exports = export_files.find_exports("onnx", onnx_cached_root, MODEL)
    assert set(exports) == set(export_files.EXPORT_MODULES + export_files.CACHED_EXPORT_MODULES)
    calls = {module: export_files.load_export("onnx", path) for module, (path, _) in exports.items()}
    source, driving = nchw_to_nhwc(fx.ref["source"]), nchw_to_nhwc(fx.ref["driving"])
    for step, (image, frames) in enumerate([(source, slice(0, 2)), (driving[1:2], slice(2, 5)),
                                            (driving[4:5], slice(5, 6)), (source, slice(1, 4))]):
        call_inputs = driving_keypoints(fx, frames, image)
        encoded = calls["source_encoder"](source_image=image)
        ours = calls["generator_cached"](**call_inputs, **encoded)
        expected = calls["generator"](**call_inputs)
        assert set(ours) == set(expected)
        for key in expected:
            assert max_abs(ours[key], expected[key]) <= SAME_MODEL_TOL, (step, key)


@requires_onnx
def test_run_py_onnx_uses_the_cached_pair_and_writes_direct_frames(onnx_cached_root, tmp_path_factory, tmp_path):
    fx = load_fixture(VARIANT_FIXTURE)
    argv = run_args(fx, tmp_path / "frames", "--relative", "--adapt", "--target", "onnx",
                    "--exportdir", str(onnx_cached_root))
    assert run.load_models(run.parse_args(argv), fx.config(), str(fx.checkpoint())).cached
    assert run.main(argv) == 0
    assert_frames_match(read_png_frames(tmp_path / "frames"), direct_frames(VARIANT_FIXTURE, tmp_path_factory))


# --------------------------------------------------------------------------------------------------
# run.py --target onnx
# --------------------------------------------------------------------------------------------------

@requires_onnx
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_run_py_onnx_target_writes_direct_frames(onnx_builds, tmp_path_factory, tmp_path, name):
    fx = load_fixture(name)
    out = tmp_path / "frames"
    assert run.main(run_args(fx, out, "--relative", "--adapt", "--target", "onnx",
                             "--exportdir", str(onnx_builds.root(name)))) == 0
    assert_frames_match(read_png_frames(out), direct_frames(name, tmp_path_factory))


@requires_onnx
def test_run_py_onnx_prescale_writes_direct_frames(onnx_builds, tmp_path_factory, tmp_path):
    fx = load_fixture(VARIANT_FIXTURE)
    root = onnx_builds.root(VARIANT_FIXTURE, ("--prescale",))
    out = tmp_path / "frames"
    assert run.main(run_args(fx, out, "--relative", "--adapt", "--prescale", "--target", "onnx",
                             "--exportdir", str(root))) == 0
    assert_frames_match(read_png_frames(out), direct_frames(VARIANT_FIXTURE, tmp_path_factory))


def test_missing_onnx_export_names_the_build_command(tmp_path, capsys):
    fx = load_fixture(VARIANT_FIXTURE)
    empty = tmp_path / "exports"
    code = run.main(run_args(fx, tmp_path / "frames", "--target", "onnx", "--exportdir", str(empty)))
    assert_one_line_error(capsys, code, "no such export",
                          f"python build.py --config {fx.config_path} --checkpoint {fx.checkpoint()} --onnx "
                          f"--outdir {empty}")
    assert not (tmp_path / "frames").exists()


@requires_onnx
def test_run_py_onnx_without_onnxruntime_is_one_line(onnx_builds, tmp_path, capsys, monkeypatch):
    fx = load_fixture(VARIANT_FIXTURE)
    root = onnx_builds.root(VARIANT_FIXTURE)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    code = run.main(run_args(fx, tmp_path / "frames", "--target", "onnx", "--exportdir", str(root)))
    assert_one_line_error(capsys, code, "onnxruntime", "pip install -r requirements-onnx.txt")
    assert not (tmp_path / "frames").exists()


@requires_onnx
def test_run_py_unreadable_onnx_file_is_one_line(onnx_builds, tmp_path, capsys):
    fx = load_fixture(VARIANT_FIXTURE)
    root = tmp_path / "exports"
    shutil.copytree(onnx_builds.root(VARIANT_FIXTURE), root)
    Path(export_files.onnx_path(root, MODEL, "generator_cached")).write_bytes(b"not an onnx file")
    code = run.main(run_args(fx, tmp_path / "frames", "--target", "onnx", "--exportdir", str(root)))
    assert_one_line_error(capsys, code, "generator_cached.onnx", "onnxruntime cannot load it")


# --------------------------------------------------------------------------------------------------
# build.py --onnx errors
# --------------------------------------------------------------------------------------------------

def test_build_onnx_without_tf2onnx_is_one_line(tmp_path, capsys, monkeypatch):
    fx = load_fixture(VARIANT_FIXTURE)
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # `import tf2onnx` now fails
    code = build.main(["--config", str(fx.config_path), "--checkpoint", str(fx.checkpoint()), "--onnx",
                       "--outdir", str(tmp_path / "out")])
    assert_one_line_error(capsys, code, "tf2onnx", "pip install -r requirements-onnx.txt")
    assert not (tmp_path / "out").exists()


@requires_onnx
def test_failed_onnx_conversion_leaves_previous_export_intact(tmp_path, capsys, monkeypatch):
    import tf2onnx

    def fail(*args, **kwargs):
        raise ValueError("unsupported op")

    fx = load_fixture(VARIANT_FIXTURE)
    out = tmp_path / "out"
    previous = Path(export_files.onnx_path(out, MODEL, "process_kp_driving"))
    previous.parent.mkdir(parents=True)
    previous.write_bytes(b"previous")
    monkeypatch.setattr(tf2onnx.convert, "from_graph_def", fail)
    code = build.main(["--config", str(fx.config_path), "--checkpoint", str(fx.checkpoint()), "--outdir", str(out),
                       "--module", "process_kp_driving", *ONNX_FLAGS])
    assert_one_line_error(capsys, code, "ONNX conversion failed (unsupported op)")
    assert previous.read_bytes() == b"previous"
    assert not Path(export_files.signature_json_path("onnx", previous)).exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


# --------------------------------------------------------------------------------------------------
# --crop: faces found on LiteRT with the detector files build.py --onnx writes
# --------------------------------------------------------------------------------------------------

@requires_onnx
def test_onnx_crop_finds_faces_on_litert_without_tensorflow(onnx_builds, tmp_path):
    root = onnx_builds.root(VARIANT_FIXTURE)  # --onnx --nolite: no model TF Lite files, the detector's all the same
    assert faces_lite.find_detector(str(root))[1] is None
    fx = load_fixture(VARIANT_FIXTURE)
    args = ["--config", str(fx.config_path), "--target", "onnx", "--exportdir", str(root), "--source_image",
            str(REPO / "example" / "wild.png"), "--driving_video", str(REPO / "example" / "driving.mp4"), "--crop",
            "--frames", "2", "--relative", "--output", f"{tmp_path / 'frames'}/"]
    result = run_main_in_fresh_process(args)
    assert result.stdout.strip().splitlines()[-1] == "0 []", result.stdout + result.stderr
    assert "animating 2 faces" in result.stdout and "note:" not in result.stderr, result.stdout + result.stderr
    assert len(read_png_frames(tmp_path / "frames")) == 2


# --------------------------------------------------------------------------------------------------
# The README's "ONNX" commands, on the bundled example
# --------------------------------------------------------------------------------------------------

@requires_onnx
def test_readme_onnx_commands_run(tmp_path, monkeypatch):
    # The install command is CI's; build.py and run.py run as written, with their exports in tmp_path.
    assert run_readme_cli_commands("ONNX", tmp_path, monkeypatch) == ["build.py", "run.py"]
    assert [p for p in (tmp_path / "output").iterdir() if p.stat().st_size > 0]
