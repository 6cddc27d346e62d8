"""A newcomer's first hour: mistakes fail fast and say what to do, defaults are said, output is quiet.

The subprocess tests force TensorFlow's oneDNN start-up lines on (TF_ENABLE_ONEDNN_OPTS=1), so they
pass whether or not this CPU makes TensorFlow print them by default.
"""
import os
import shlex
import shutil
import subprocess
import sys
import time

import imageio.v2 as imageio
import numpy as np
import pytest

from conftest import REPO, STATUS_LINE, PROGRESS_BAR, assert_one_line_error, load_fixture, readme_commands, stderr_lines

import run

EXAMPLE = ["--config", str(REPO / "example/demo-256.yaml"), "--checkpoint", str(REPO / "example/demo-cpk.pth.tar")]
FIXTURE = "vox"
NOISY_ENV = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1"}  # TensorFlow prints its oneDNN lines on any CPU
NOISY_ENV.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it: our code must quiet TensorFlow itself


def run_process(args, cwd=REPO, script="run.py"):
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True, cwd=cwd,
                          env=NOISY_ENV)


def fixture_args(output, *extra, name=FIXTURE):
    fx = load_fixture(name)
    return ["--config", str(fx.config_path), "--checkpoint", str(fx.checkpoint()),
            "--source_image", str(fx.dir / "source.png"), "--driving_video", str(fx.dir / "driving.mp4"),
            "--output", str(output), *extra]


def assert_only_our_lines(stderr):
    """Every stderr line is a status line or a progress update: nothing from TensorFlow, absl or LiteRT."""
    for line in stderr.replace("\r", "\n").splitlines():
        assert not line.strip() or STATUS_LINE.match(line) or PROGRESS_BAR.search(line) or \
            line.strip().endswith("?frame/s]"), f"unexpected line on stderr: {line!r}\n{stderr}"


# --------------------------------------------------------------------------------------------------
# Quiet output: the README's commands print our lines only, on every target
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def example_exports(tmp_path_factory):
    """The demo model's exports (SavedModel, TF Lite, and ONNX when installed), built as the README says."""
    outdir = tmp_path_factory.mktemp("exports")
    extra = ["--onnx"] if _have_onnx() else []
    built = run_process([*EXAMPLE, "--outdir", str(outdir), *extra], script="build.py")
    assert built.returncode == 0, built.stderr
    assert_only_our_lines(built.stderr)
    return outdir


def _have_onnx():
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError:
        return False
    return True


def test_readme_command_1_prints_only_our_lines(tmp_path):
    command = shlex.split(readme_commands("Quick start")[0].split("&&")[-1])  # after `pip install ... &&`
    assert command[:2] == ["python", "run.py"]
    args = [*command[2:], "--frames", "8", "--output", str(tmp_path / "example.mp4")]
    started = time.perf_counter()
    result = run_process(args)
    assert result.returncode == 0, result.stderr
    assert_only_our_lines(result.stderr)
    assert result.stdout.strip() == f"wrote 8 frames to {tmp_path / 'example.mp4'}"
    print(f"README command 1, 8 frames: {time.perf_counter() - started:.1f} s")


@pytest.mark.parametrize("target", ["savedmodel", "tflite", "onnx"])
def test_export_targets_print_only_our_lines(target, example_exports, tmp_path):
    if target == "onnx" and not _have_onnx():
        pytest.skip("onnx: pip install -r requirements-onnx.txt")
    args = [*EXAMPLE, "--target", target, "--exportdir", str(example_exports), "--relative", "--adapt",
            "--source_image", "example/source.png", "--driving_video", "example/driving.mp4", "--frames", "5",
            "--output", str(tmp_path / "out.mp4")]
    result = run_process(args)
    assert result.returncode == 0, result.stderr
    assert_only_our_lines(result.stderr)


def test_tflite_crop_prints_only_our_lines(example_exports, tmp_path):
    # faces found on LiteRT, with build.py's detector files: the runtime's own lines stay off the terminal too
    args = [*EXAMPLE, "--target", "tflite", "--exportdir", str(example_exports), "--relative", "--crop",
            "--source_image", "example/wild.png", "--driving_video", "example/driving.mp4", "--frames", "3",
            "--output", str(tmp_path / "out.mp4")]
    result = run_process(args)
    assert result.returncode == 0, result.stderr
    assert_only_our_lines(result.stderr)
    assert "animating 2 faces" in result.stdout, result.stdout


def test_quiet_prints_nothing_and_verbose_shows_tensorflow(tmp_path):
    quiet = run_process(fixture_args(tmp_path / "q.mp4", "--frames", "2", "--quiet"))
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == "", quiet.stderr
    verbose = run_process(fixture_args(tmp_path / "v.mp4", "--frames", "2", "--verbose"))
    assert verbose.returncode == 0, verbose.stderr
    assert "oneDNN custom operations are on" in verbose.stderr  # forced on by NOISY_ENV


def test_tensorflow_start_up_skips_ipython_and_leaves_it_importable():
    pytest.importorskip("IPython", reason="IPython is not installed: Keras cannot import it anyway")
    script = (f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
              "import backends\n"
              "backends.tensorflow()\n"
              "print('IPython imported' if 'IPython' in sys.modules else 'IPython not imported')\n"
              "import IPython\n"
              "print('IPython importable')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["IPython not imported", "IPython importable"], result.stdout


def test_saved_model_runtime_leaves_out_the_public_api_until_something_asks():
    # The savedmodel target and the direct target's cache import this much; tf.<anything> then imports the rest.
    script = (f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
              "import backends\n"
              "tf = backends.saved_model_runtime()\n"
              "print(sorted(name for name in ('keras', 'tensorflow._api.v2.data', 'tensorflow._api.v2.distribute')"
              " if name in sys.modules))\n"
              "print(tf.constant([1.5], tf.float32).numpy().tolist())\n"
              "import tensorflow\n"
              "print(tensorflow.executing_eagerly(), tensorflow.__version__ == tf.__version__, 'keras' in sys.modules)\n"
              "print(backends.tensorflow() is tensorflow, hasattr(tensorflow, 'keras'))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=NOISY_ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "[1.5]", "True True True", "True True"], result.stdout
    assert_only_our_lines(result.stderr)


def test_graph_rewrites_are_kept_only_on_amx_cpus_and_gpus():
    import backends

    tf = backends.tensorflow()
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible: graph rewrites are kept whatever the CPU")
    assert backends.keeps_graph_rewrites(tf, {"avx512f", "amx_tile", "amx_bf16"})
    assert not backends.keeps_graph_rewrites(tf, {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
    assert not backends.keeps_graph_rewrites(tf, set())
    expected = not backends.keeps_graph_rewrites(tf)
    assert tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False) == expected


# --------------------------------------------------------------------------------------------------
# Fail fast: bad paths are reported before TensorFlow is imported
# --------------------------------------------------------------------------------------------------

BEFORE_IMPORT_CASES = {
    "missing source": (["--source_image", "nope.png"], "--source_image nope.png: no such file"),
    "missing driving": (["--driving_video", "nope.mp4"], "--driving_video nope.mp4: no such file"),
    "missing config": (["--config", "nope.yaml"], "--config nope.yaml: no such file"),
    "missing checkpoint": (["--checkpoint", "nope.pth.tar"], "--checkpoint nope.pth.tar: no such file"),
    "still image as driving video": (["--driving_video", "{source}"], "a still image, not a video"),
    "unknown model": (["--model", "vox2"], "no config for model 'vox2'"),
}


def test_bad_paths_fail_before_tensorflow_is_imported(tmp_path):
    # One fresh interpreter runs every case, then reports whether anything imported TensorFlow.
    fx = load_fixture(FIXTURE)
    cases = {}
    for name, (override, expected) in BEFORE_IMPORT_CASES.items():
        args = fixture_args(tmp_path / "out.mp4")
        if override[0] == "--model":
            args = args[4:]  # --model instead of --config / --checkpoint
        for flag, value in zip(override[::2], override[1::2]):
            value = value.format(source=fx.dir / "source.png")
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
        cases[name] = (args, expected)
    script = (
        "import json, sys, time\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import run\n"
        f"cases = json.loads({__import__('json').dumps(cases)!r})\n"
        "for name, (args, expected) in cases.items():\n"
        "    started = time.perf_counter()\n"
        "    code = run.main(args)\n"
        "    print(f'{name}: exit {code} in {time.perf_counter() - started:.2f} s', file=sys.stdout)\n"
        "print('tensorflow imported' if 'tensorflow' in sys.modules else 'tensorflow not imported')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env=NOISY_ENV)
    print(result.stdout)
    assert result.stdout.strip().splitlines()[-1] == "tensorflow not imported", result.stdout + result.stderr
    errors = stderr_lines(result.stderr)
    assert len(errors) == len(cases), result.stderr
    for (name, (_, expected)), line in zip(cases.items(), errors):
        assert line.startswith("error: ") and expected in line, (name, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_typo_fails_within_a_second_of_start(tmp_path):
    started = time.perf_counter()
    result = run_process(fixture_args(tmp_path / "out.mp4", "--source_image", "typo.png"))
    elapsed = time.perf_counter() - started
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --source_image typo.png: no such file", result.stderr
    print(f"time to the error for a mistyped path: {elapsed:.2f} s (a fresh process)")


# --------------------------------------------------------------------------------------------------
# Never guess silently: defaults are said, flags that do nothing are named
# --------------------------------------------------------------------------------------------------

def prepare_messages(capsys, *argv):
    run.prepare(run.parse_args(list(argv)))
    return capsys.readouterr().err


def test_bundled_example_standing_in_is_said_and_found_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = prepare_messages(capsys, *EXAMPLE, "--output", str(tmp_path / "x.mp4"))
    assert "note: no --source_image given: using the bundled example/source.png" in err
    assert "note: no --driving_video given: using the bundled example/driving.mp4" in err


def test_default_model_is_said_and_missing_checkpoint_points_to_its_readme(tmp_path, capsys):
    if (REPO / "checkpoint" / "vox-cpk.pth.tar").exists():
        pytest.skip("checkpoint/vox-cpk.pth.tar is installed here")
    code = run.main(["--output", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert code == 1
    assert "note: no --model given: using vox" in err
    assert "checkpoint/README.md" in err.splitlines()[-1]


@pytest.mark.parametrize("flags, said", [
    (["--adapt"], "--adapt scales relative motion and does nothing without --relative"),
    (["--find_best_frame"], "--find_best_frame picks where relative motion starts"),
    (["--best_frame", "1"], "--best_frame picks where relative motion starts"),
    (["--mode", "reconstruction"], "--source_image is not used"),  # fixture_args gives one
    (["--frames", "1000"], "--frames 1000: "),
])
def test_flags_that_do_nothing_are_named(flags, said, tmp_path, capsys):
    err = prepare_messages(capsys, *fixture_args(tmp_path / "x.mp4"), *flags)
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and said in warnings[0], err


@pytest.mark.parametrize("frames", ["-5", "0"])
def test_frames_out_of_range_is_a_one_line_usage_error(frames, capsys):
    with pytest.raises(SystemExit) as exit_:
        run.parse_args([*EXAMPLE, "--frames", frames])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and f"got {frames}" in err, err


def test_non_square_source_warns_it_will_be_stretched(tmp_path, capsys):
    fx = load_fixture(FIXTURE)
    portrait = tmp_path / "portrait.png"
    image = imageio.imread(fx.dir / "source.png")
    imageio.imwrite(portrait, np.concatenate([image, image], axis=0))  # twice as tall as wide
    err = prepare_messages(capsys, *fixture_args(tmp_path / "x.mp4", "--source_image", str(portrait)))
    height, width = 2 * image.shape[0], image.shape[1]
    assert f"the source image is {width}x{height} and will be stretched" in err and "--crop" in err, err


def test_square_enough_source_does_not_warn(tmp_path, capsys):
    fx = load_fixture(FIXTURE)
    image = imageio.imread(fx.dir / "source.png")
    near = tmp_path / "near.png"
    imageio.imwrite(near, image[:-2])  # 2% off square: within the tolerance
    assert "stretched" not in prepare_messages(capsys, *fixture_args(tmp_path / "x.mp4", "--source_image", str(near)))


def test_missing_device_is_one_line_before_the_model_loads(tmp_path, capsys):
    code = run.main(fixture_args(tmp_path / "x.mp4", "--device", "/GPU:7"))
    assert_one_line_error(capsys, code, "--device /GPU:7: no such device on this machine")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# Messages in our words
# --------------------------------------------------------------------------------------------------

def test_one_frame_is_singular(tmp_path, capsys):
    assert run.main(fixture_args(tmp_path / "x.mp4", "--frames", "1")) == 0
    assert capsys.readouterr().out.strip() == f"wrote 1 frame to {tmp_path / 'x.mp4'}"


def test_undecodable_image_is_described_without_imageio_internals(tmp_path, capsys):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    code = run.main(fixture_args(tmp_path / "x.mp4", "--source_image", str(fake)))
    assert_one_line_error(capsys, code, "fake.png: not a readable image (unrecognised or damaged file)")


def test_audio_into_a_gif_warns_in_one_sentence(tmp_path, capsys):
    assert run.main(fixture_args(tmp_path / "x.gif", "--frames", "1", "--audio")) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: --audio: {tmp_path / 'x.gif'} is a GIF, which cannot hold sound; "
                        "writing it without the audio track"]


# --------------------------------------------------------------------------------------------------
# Build hints name the user's own files, and work
# --------------------------------------------------------------------------------------------------

def test_build_hint_names_the_checkpoint_beside_the_config_and_runs(tmp_path):
    fx = load_fixture(FIXTURE)
    config = tmp_path / "tiny-256.yaml"
    shutil.copy(fx.config_path, config)
    shutil.copy(fx.checkpoint(), tmp_path / "tiny-cpk.pth.tar")
    args = ["--target", "tflite", "--config", str(config), "--exportdir", str(tmp_path / "exports"),
            "--source_image", str(fx.dir / "source.png"), "--driving_video", str(fx.dir / "driving.mp4"),
            "--frames", "2", "--output", str(tmp_path / "out.mp4")]
    missing = run_process(args)
    assert missing.returncode == 1
    hint = missing.stderr.strip().split("make it with: ", 1)[1]
    assert f"--checkpoint {tmp_path / 'tiny-cpk.pth.tar'}" in hint, hint
    words = shlex.split(hint)
    assert words[:2] == ["python", "build.py"]
    built = run_process(words[2:], script="build.py")
    assert built.returncode == 0, built.stderr
    assert run_process(args).returncode == 0


def test_build_hint_without_a_checkpoint_by_that_name_has_a_placeholder(tmp_path, capsys):
    config = tmp_path / "mine-256.yaml"
    shutil.copy(load_fixture(FIXTURE).config_path, config)
    code = run.main(["--target", "savedmodel", "--config", str(config), "--exportdir", str(tmp_path / "none"),
                     *fixture_args(tmp_path / "x.mp4")[4:]])
    err = capsys.readouterr().err
    assert code == 1 and f"--config {config} --checkpoint '<CHECKPOINT>'" in err, err
    assert "vox-cpk" not in err


def test_exit_without_teardown_keeps_the_code_the_atexit_handlers_and_buffered_output():
    # run.py leaves through os._exit once TensorFlow is loaded (its teardown costs 0.8-1.0 s after the
    # output is written); what a normal exit guarantees must still happen.
    code = ("import atexit, sys, run\n"
            "atexit.register(lambda: print('handler ran'))\n"
            "sys.stdout.write('buffered, no newline')\n"
            "run.exit_without_teardown(3)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert result.stdout == "buffered, no newlinehandler ran\n"
