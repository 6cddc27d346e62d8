"""run.py end to end: frames written equal the original demo.py's, and bad input is one clean line."""
import re
import subprocess
import sys
import threading

import imageio.v2 as imageio
import numpy as np
import pytest

from conftest import (FIXTURE_NAMES, REPO, assert_frames_match, assert_one_line_error, load_fixture, read_png_frames,
                      stderr_lines)

import animate
import checkpoint_loader
import run


def fixture_args(fx, output, *extra):
    return ["--config", str(fx.config_path), "--checkpoint", str(fx.checkpoint()),
            "--source_image", str(fx.dir / "source.png"), "--driving_video", str(fx.dir / "driving.mp4"),
            "--output", str(output), *extra]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_cli_frames_equal_original_demo(name, tmp_path):
    # reference: demo.make_animation(relative=True, adapt_movement_scale=True) on the same files
    fx = load_fixture(name)
    out = tmp_path / "frames/"
    assert run.main(fixture_args(fx, f"{out}/", "--relative", "--adapt", "--batchsize", "4")) == 0
    assert_frames_match(read_png_frames(out), fx.ref["frames"])


def test_cli_absolute_mode_with_exact_batch(tmp_path):
    fx = load_fixture(FIXTURE_NAMES[0])
    out = tmp_path / "abs/"
    assert run.main(fixture_args(fx, f"{out}/", "--batchsize", "4", "--exactbatch")) == 0
    assert_frames_match(read_png_frames(out), fx.ref["frames_absolute"])


def test_cli_frames_limit_and_gif(tmp_path):
    fx = load_fixture(FIXTURE_NAMES[0])
    out = tmp_path / "clip.gif"
    assert run.main(fixture_args(fx, out, "--relative", "--frames", "3")) == 0
    assert len(imageio.mimread(out)) == 3


def test_cli_animates_bundled_example(tmp_path):
    out = tmp_path / "example.mp4"
    code = run.main(["--config", str(REPO / "example/demo-256.yaml"),
                     "--checkpoint", str(REPO / "example/demo-cpk.pth.tar"),
                     "--source_image", str(REPO / "example/source.png"),
                     "--driving_video", str(REPO / "example/driving.mp4"),
                     "--relative", "--adapt", "--frames", "4", "--output", str(out)])
    assert code == 0
    reader = imageio.get_reader(out)
    assert reader.get_meta_data()["fps"] == pytest.approx(imageio.get_reader(REPO / "example/driving.mp4")
                                                          .get_meta_data()["fps"])
    assert sum(1 for _ in reader) == 4



def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    fx = load_fixture(FIXTURE_NAMES[0])
    args = fixture_args(fx, tmp_path / "out.mp4")
    args[3] = str(tmp_path / "nope.pth.tar")
    assert_one_line_error(capsys, run.main(args), "nope.pth.tar")
    assert list(tmp_path.iterdir()) == []


def test_missing_source_image_is_one_line(tmp_path, capsys):
    fx = load_fixture(FIXTURE_NAMES[0])
    args = fixture_args(fx, tmp_path / "out.mp4")
    args[5] = str(tmp_path / "missing.png")
    assert_one_line_error(capsys, run.main(args), "missing.png")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_for_another_config_names_key_and_shapes(tmp_path, capsys):
    first_order = next(n for n in FIXTURE_NAMES if load_fixture(n).config().estimate_jacobian)
    zero_order = next(n for n in FIXTURE_NAMES if not load_fixture(n).config().estimate_jacobian)
    args = fixture_args(load_fixture(zero_order), tmp_path / "out.mp4")
    args[3] = str(load_fixture(first_order).checkpoint())
    code = run.main(args)
    err = capsys.readouterr().err
    assert code == 1 and len(stderr_lines(err)) == 1, err
    found = re.search(r"\[(\w+)\]: (\S+) has shape (\[[\d, ]*\]) but the config needs (\[[\d, ]*\])", err)
    assert found, err
    module, key, has, needs = found.groups()
    # the shapes are the two checkpoints' own: the wrong one's tensor, and the one that fits the config
    wrong = checkpoint_loader.load_state_dicts(load_fixture(first_order).checkpoint())[module][key]
    right = checkpoint_loader.load_state_dicts(load_fixture(zero_order).checkpoint())[module][key]
    assert (has, needs) == (str(list(wrong.shape)), str(list(right.shape))), err
    assert wrong.shape != right.shape
    assert list(tmp_path.iterdir()) == []


def test_the_generator_builds_on_a_thread_and_its_checkpoint_errors_are_one_line(tmp_path, capsys, monkeypatch):
    # animate.direct_modules builds the generator's modules on a thread while the keypoint detector builds
    # and runs: the frames are the original's as ever, and a generator tensor that does not fit still ends
    # the run with one line and nothing written.
    fx = load_fixture(FIXTURE_NAMES[0])
    threads = []
    build = animate.generator_modules

    def watched(*args):
        threads.append(threading.current_thread() is threading.main_thread())
        if len(threads) > 1:
            raise checkpoint_loader.CheckpointError("checkpoint [generator]: final.bias has shape [2] but the config "
                                                    "needs [3]")
        return build(*args)

    monkeypatch.setattr(animate, "generator_modules", watched)
    out = tmp_path / "frames/"
    assert run.main(fixture_args(fx, f"{out}/", "--relative", "--adapt", "--no_cache")) == 0
    assert threads == [False], "the generator was built on the caller's thread"
    assert_frames_match(read_png_frames(out), fx.ref["frames"])
    capsys.readouterr()
    code = run.main(fixture_args(fx, tmp_path / "out.mp4", "--no_cache"))
    assert_one_line_error(capsys, code, "final.bias has shape [2] but the config needs [3]")
    assert [path.name for path in tmp_path.iterdir()] == ["frames"], "an output was written"


def test_not_a_checkpoint_is_one_line(tmp_path, capsys):
    fx = load_fixture(FIXTURE_NAMES[0])
    bogus = tmp_path / "bogus.pth.tar"
    bogus.write_bytes((fx.dir / "source.png").read_bytes())
    args = fixture_args(fx, tmp_path / "out.mp4")
    args[3] = str(bogus)
    assert_one_line_error(capsys, run.main(args), "bogus.pth.tar")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bogus.pth.tar"]


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), "--model", "no-such-model",
                           "--output", str(tmp_path / "x.mp4")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_loadwithtorch_gives_identical_frames(tmp_path):
    pytest.importorskip("torch")
    fx = load_fixture(FIXTURE_NAMES[0])
    a, b = tmp_path / "a/", tmp_path / "b/"
    assert run.main(fixture_args(fx, f"{a}/", "--relative", "--adapt")) == 0
    assert run.main(fixture_args(fx, f"{b}/", "--relative", "--adapt", "--loadwithtorch")) == 0
    np.testing.assert_array_equal(read_png_frames(a), read_png_frames(b))
