"""run.py's modes and features beyond plain animation: best start frame, audio, reconstruction,
dataset mode, visualizer, profiling, and the README's "Use it" commands.

References: the original demo.py's forward/backward construction around its best frame is rebuilt here
from two independent `animate.animate` runs; the original's reconstruction L1 is recomputed from the
predictions and the input frames; the dataset split and pairs are the values scikit-learn 1.9.1 and
the original PairedDataset give (quoted where used). Everything runs on the small fixture checkpoints,
with the direct models built once per checkpoint (building them is most of a CLI run's time).
"""
import csv
import re
import shlex
import subprocess
from pathlib import Path

import imageio.v2 as imageio
import imageio_ffmpeg
import numpy as np
import pytest
import yaml
from skimage import img_as_float32

from conftest import (REPO, assert_frames_match, assert_one_line_error, load_fixture, make_dataset, nchw_to_nhwc,
                      readme_commands)

import animate
import checkpoint_loader
import model_config
import run
import datasets
import media
import visualizer

FIRST_ORDER = "vox"  # jacobians and an occlusion map: every visualizer panel
ZERO_ORDER = "zero_order"  # the smallest fixture: the default for CLI runs

_MODELS = {}


def direct_models(name):
    """animate.Models of a fixture on the direct target, built once."""
    fx = load_fixture(name)
    return checkpoint_models(str(fx.checkpoint()), fx.config())


def checkpoint_models(checkpoint, config):
    if checkpoint not in _MODELS:
        _MODELS[checkpoint] = animate.direct_models(config, checkpoint_loader.load_state_dicts(checkpoint))
    return _MODELS[checkpoint]


@pytest.fixture
def cached_models(monkeypatch):
    """run.load_models, remembered per (target, checkpoint, export folder) across tests (and no model cache
    entry written: run() loads through load_models_and_cache_writer)."""
    load = run.load_models_and_cache_writer

    def remembered(args, config, checkpoint_path, exports=None, checkpoint=None):
        if args.target == "direct" and not args.prescale:
            return checkpoint_models(str(checkpoint_path), config)
        key = (args.target, str(checkpoint_path), args.exportdir, args.prescale)
        if key not in _MODELS:
            _MODELS[key] = load(args, config, checkpoint_path, exports)[0]
        return _MODELS[key]

    monkeypatch.setattr(run, "load_models", remembered)
    monkeypatch.setattr(run, "load_models_and_cache_writer", lambda *args: (remembered(*args), None))


def model_args(fx):
    return ["--config", str(fx.config_path), "--checkpoint", str(fx.checkpoint())]


def animate_args(fx, output, *extra, driving=None):
    return [*model_args(fx), "--source_image", str(fx.dir / "source.png"),
            "--driving_video", str(driving or fx.dir / "driving.mp4"), "--output", str(output), *extra]


def driving_frames(fx, path=None):
    """The driving video's frames exactly as run.py preprocesses them."""
    with media.open_driving_clip(path or fx.dir / "driving.mp4", fx.config().frame_shape) as clip:
        return list(clip)


def source_image(fx):
    return media.read_image(fx.dir / "source.png", fx.config().frame_shape)


def png_frames(folder):
    return np.stack([imageio.imread(p) for p in sorted(Path(folder).glob("frame_*.png"))])


def ffmpeg(*args):
    return subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", *args], capture_output=True, text=True)



def write_video(path, frames, fps=10):
    with media.FrameWriter(path, fps) as writer:
        for frame in frames:
            writer.write(media.to_uint8(frame))
    return path


# --------------------------------------------------------------------------------------------------
# Best start frame
# --------------------------------------------------------------------------------------------------

def test_convex_hull_area_equals_shoelace_of_the_hull():
    square_with_inner_points = [[0, 0], [2, 0], [2, 1], [0, 1], [1, 0.5], [0.5, 0.2]]
    assert animate.convex_hull_area(square_with_inner_points) == pytest.approx(2.0)
    assert animate.convex_hull_area([[0, 0], [1, 1], [2, 2]]) == 0.0  # collinear


def test_find_best_frame_picks_the_frame_that_is_the_source():
    fx = load_fixture(FIRST_ORDER)
    frames = list(nchw_to_nhwc(fx.ref["driving"]))
    source = nchw_to_nhwc(fx.ref["source"])[0]
    frames[4] = source
    index, kp = animate.find_best_frame(direct_models(FIRST_ORDER), source, frames, animate.Batching(4))
    assert index == 4
    assert kp["value"].shape == (1, fx.config().num_kp, 2) and kp["jacobian"].shape[0] == 1


def test_cli_find_best_frame_picks_the_source_frame_of_a_video(cached_models, tmp_path, capsys):
    fx = load_fixture(ZERO_ORDER)
    frames = driving_frames(fx)
    frames[3] = source_image(fx)
    driving = write_video(tmp_path / "driving.mp4", frames)
    code = run.main(animate_args(fx, f"{tmp_path}/out/", "--relative", "--find_best_frame", driving=driving))
    assert code == 0
    assert "best frame 3" in capsys.readouterr().out
    assert len(png_frames(tmp_path / "out")) == len(frames)


@pytest.mark.parametrize("best", [0, 3, 5])
def test_best_frame_equals_demo_forward_backward_construction(cached_models, tmp_path, best):
    # demo.py: predictions of frames best..0 and best..end, each relative to frame `best`,
    # joined as backward[::-1] + forward[1:] (checked against the original's own run when written: 0 or 1 off).
    fx = load_fixture(FIRST_ORDER)
    assert run.main(animate_args(fx, f"{tmp_path}/out/", "--relative", "--adapt", "--best_frame", str(best))) == 0
    models, source, frames = direct_models(FIRST_ORDER), source_image(fx), driving_frames(fx)
    forward = list(animate.animate(models, source, frames[best:], relative=True, adapt=True, batch_size=4))
    backward = list(animate.animate(models, source, frames[:best + 1][::-1], relative=True, adapt=True,
                                    batch_size=4))
    expected = [media.to_uint8(p) for p in backward[::-1] + forward[1:]]
    assert_frames_match(png_frames(tmp_path / "out"), expected)


def test_best_frame_out_of_range_is_one_line_error(cached_models, tmp_path, capsys):
    fx = load_fixture(ZERO_ORDER)
    code = run.main(animate_args(fx, tmp_path / "out.mp4", "--relative", "--best_frame", "6"))
    assert_one_line_error(capsys, code, "--best_frame 6", "6 frames (0-5)")
    assert list(tmp_path.iterdir()) == []


def test_best_frame_with_reconstruction_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        run.parse_args(["--mode", "reconstruction", "--best_frame", "2"])
    assert exit_.value.code == 2 and "--mode animate" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------------

def audio_seconds(path):
    """Length of a file's first audio track, from the samples ffmpeg decodes (mono s16 at 8 kHz)."""
    decoded = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:a:0",
                              "-f", "s16le", "-ac", "1", "-ar", "8000", "-"], capture_output=True, check=True)
    return len(decoded.stdout) / 2 / 8000


def test_audio_track_is_copied_and_cut_to_the_frames_written(cached_models, tmp_path, capsys):
    fx = load_fixture(ZERO_ORDER)
    driving = tmp_path / "tone.mp4"
    made = ffmpeg("-v", "error", "-f", "lavfi", "-i", "testsrc=size=80x80:rate=10", "-f", "lavfi",
                  "-i", "sine=frequency=440:sample_rate=44100", "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                  "-c:a", "aac", str(driving))
    assert made.returncode == 0, made.stderr
    output = tmp_path / "out.mp4"
    assert run.main(animate_args(fx, output, "--relative", "--audio", "--frames", "5", driving=driving)) == 0
    assert "warning" not in capsys.readouterr().err
    streams = [line for line in ffmpeg("-i", str(output)).stderr.splitlines() if "Stream #" in line]
    assert any("Audio: aac" in line for line in streams), streams
    assert audio_seconds(output) == pytest.approx(5 / 10, abs=1 / 10)  # 5 frames at 10 fps, within a frame


def test_audio_from_a_silent_video_warns_and_writes_video(cached_models, tmp_path, capsys):
    fx = load_fixture(ZERO_ORDER)
    output = tmp_path / "out.mp4"
    assert run.main(animate_args(fx, output, "--audio")) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(err) == 1 and "no audio track" in err[0], err
    assert media.audio_stream(output) is None
    assert sum(1 for _ in imageio.get_reader(output)) == 6


# --------------------------------------------------------------------------------------------------
# Reconstruction
# --------------------------------------------------------------------------------------------------

def read_metrics(path):
    with open(path, newline="") as f:
        return {row["video"]: (int(row["frames"]), float(row["l1"])) for row in csv.DictReader(f)}


def reconstruction_l1(name, frames):
    """reconstruction.py's per-frame L1, recomputed from our predictions: frame 0 is the source, absolute kp."""
    predictions = animate.animate(direct_models(name), frames[0], frames, batch_size=4)
    return [float(np.abs(p - f).mean()) for p, f in zip(predictions, frames)]


def test_file_reconstruction_writes_video_and_l1(cached_models, tmp_path, capsys):
    fx = load_fixture(ZERO_ORDER)
    code = run.main([*model_args(fx), "--mode", "reconstruction", "--driving_video", str(fx.dir / "driving.mp4"),
                     "--output", f"{tmp_path}/rec/"])
    assert code == 0
    frames = driving_frames(fx)
    expected = reconstruction_l1(ZERO_ORDER, frames)
    metrics = read_metrics(tmp_path / "metrics.csv")
    assert metrics["driving.mp4"] == (6, pytest.approx(np.mean(expected), abs=1e-7))
    assert metrics["mean"] == metrics["driving.mp4"]
    assert f"{np.mean(expected):.6f}" in capsys.readouterr().out
    written = png_frames(tmp_path / "rec").astype(np.float64) / 255  # quantised: within half a level
    from_written = np.mean([np.abs(w - f).mean() for w, f in zip(written, frames)])
    assert from_written == pytest.approx(np.mean(expected), abs=1 / 255)


def test_dataset_clips_read_each_layout_like_frames_dataset(tmp_path):
    fx = load_fixture(ZERO_ORDER)
    make_dataset(tmp_path, fx)
    frames = img_as_float32(media.to_uint8(nchw_to_nhwc(fx.ref["driving"])))  # FramesDataset's conversion
    shape = fx.config().frame_shape
    assert [Path(p).name for p in datasets.dataset_test_videos(tmp_path)] == ["a_folder", "b_strip.png", "c_video.mp4"]
    for name, expected in (("a_folder", frames[:4]), ("b_strip.png", frames[1:6])):
        with media.open_dataset_clip(tmp_path / "test" / name, shape) as clip:
            np.testing.assert_array_equal(np.stack(list(clip)), expected)


def test_dataset_reconstruction_reports_per_video_and_mean_l1(cached_models, tmp_path, capsys):
    fx = load_fixture(ZERO_ORDER)
    counts = make_dataset(tmp_path / "data", fx)
    out = tmp_path / "out"
    code = run.main([*model_args(fx), "--datamode", "dataset", "--mode", "reconstruction",
                     "--root_dir", str(tmp_path / "data"), "--output", f"{out}/"])
    assert code == 0
    metrics = read_metrics(out / "metrics.csv")
    every_frame = []
    for name, count in counts.items():
        with media.open_dataset_clip(tmp_path / "data" / "test" / name, fx.config().frame_shape) as clip:
            expected = reconstruction_l1(ZERO_ORDER, list(clip))
        every_frame += expected
        assert metrics[name] == (count, pytest.approx(np.mean(expected), abs=1e-7)), name
        video = out / f"{Path(name).stem}.mp4"
        assert sum(1 for _ in imageio.get_reader(video)) == count
    # reconstruction.py's number: the mean over every frame of every video
    assert metrics["mean"] == (15, pytest.approx(np.mean(every_frame), abs=1e-7))
    assert "mean L1" in capsys.readouterr().out


def test_a_bad_dataset_video_fails_its_own_job_only(cached_models, tmp_path, capsys):
    fx = load_fixture(ZERO_ORDER)
    counts = make_dataset(tmp_path / "data", fx)
    (tmp_path / "data" / "test" / "d_broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    code = run.main([*model_args(fx), "--datamode", "dataset", "--mode", "reconstruction",
                     "--root_dir", str(tmp_path / "data"), "--output", f"{out}/"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert code == 1
    assert errors[0].startswith("error: d_broken.mp4: ") and "not a readable video" in errors[0], errors
    assert errors[0].endswith(f"(traceback in {out / 'd_broken.mp4.error.log'})"), errors
    assert errors[1] == "error: 1 of 4 jobs failed (d_broken.mp4); the other outputs were written", errors
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == sorted([f"{Path(n).stem}.mp4" for n in counts] + ["d_broken.mp4.error.log", "metrics.csv"])
    assert "Traceback" in (out / "d_broken.mp4.error.log").read_text()
    assert set(read_metrics(out / "metrics.csv")) == {*counts, "mean"}


def test_random_test_split_equals_scikit_learn():
    # sklearn 1.9.1: train_test_split(names, random_state=0, test_size=0.2)[1]
    assert datasets.random_test_split([f"v{i:02d}" for i in range(10)]) == ["v02", "v08"]
    assert datasets.random_test_split([f"v{i:02d}" for i in range(23)]) == ["v11", "v10", "v21", "v14", "v20"]


def test_animation_pairs_follow_paired_dataset(tmp_path):
    names = ["v0", "v1", "v2"]
    # the original PairedDataset(number_of_pairs=4) over three videos, as (driving, source)
    assert datasets.animation_pairs(names, 4) == [("v2", "v1"), ("v0", "v2"), ("v0", "v1"), ("v1", "v1")]
    listed = tmp_path / "pairs.csv"
    listed.write_text("distance,source,driving,frame\n0,v1,v9,0\n0,v1,v2,0\n0,v0,v1,0\n0,v2,v0,0\n")
    assert datasets.animation_pairs(names, 2, str(listed)) == [("v2", "v1"), ("v1", "v0")]


def test_dataset_animate_writes_one_video_per_pair(cached_models, tmp_path):
    fx = load_fixture(ZERO_ORDER)
    counts = make_dataset(tmp_path / "data", fx)
    config = yaml.safe_load(fx.config_path.read_text())
    config["animate_params"]["num_pairs"] = 2
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    code = run.main(["--config", str(config_path), "--checkpoint", str(fx.checkpoint()), "--datamode", "dataset",
                     "--root_dir", str(tmp_path / "data"), "--output", f"{out}/"])
    assert code == 0
    pairs = datasets.animation_pairs(list(counts), 2)
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # hidden: completion records
    assert written == sorted(f"{Path(d).stem}-{Path(s).stem}.mp4" for d, s in pairs)
    for driving, source in pairs:
        assert sum(1 for _ in imageio.get_reader(out / f"{Path(driving).stem}-{Path(source).stem}.mp4")) == \
            counts[driving]


# The original's dataset modes on the vox fixture's dataset/ (written by tests/make_fixtures.py, with the
# references in its expected.json and reference.npz from the original's reconstruction.py / animate.py loops).

def test_dataset_reconstruction_l1_equals_the_original_reconstruction_py(cached_models, tmp_path):
    fx = load_fixture(FIRST_ORDER)
    original = fx.meta["reconstruction"]
    out = tmp_path / "out"
    code = run.main([*model_args(fx), "--datamode", "dataset", "--mode", "reconstruction",
                     "--root_dir", str(fx.dir / "dataset"), "--output", f"{out}/"])
    assert code == 0
    metrics = read_metrics(out / "metrics.csv")
    for name, losses in original["l1_per_frame"].items():
        # predictions agree to ~3e-6 max abs, so a mean absolute error can move by no more than that
        assert metrics[name] == (len(losses), pytest.approx(np.mean(losses), abs=5e-6)), name
    total = sum(len(losses) for losses in original["l1_per_frame"].values())
    assert metrics["mean"] == (total, pytest.approx(original["mean_l1"], abs=5e-6))


def dataset_animation_job(fx, tmp_path, normalization):
    """run.py's dataset job for the fixture's reference pair, with `normalization` as the config's."""
    reference = fx.meta["dataset_animation"]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"distance,source,driving,frame\n0,{reference['source']},{reference['driving']},0\n")
    config = yaml.safe_load(fx.config_path.read_text())
    config["dataset_params"]["pairs_list"] = str(pairs)
    config["animate_params"]["normalization_params"] = normalization
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    args = run.parse_args(["--config", str(config_path), "--checkpoint", str(fx.checkpoint()), "--datamode",
                           "dataset", "--root_dir", str(fx.dir / "dataset"), "--output", f"{tmp_path}/out/"])
    [job] = list(run.dataset_jobs(args, model_config.load(config_path)))
    return job.with_source()


def dataset_animation(fx, job):
    with job.open_driving() as clip:
        outputs = animate.animate_frames(direct_models(FIRST_ORDER), job.source, list(clip), job.motion,
                                         animate.Batching(4))
        return np.stack([out["prediction"] for _, out in outputs])


def test_dataset_animate_follows_normalization_params_like_the_original_animate_py(tmp_path):
    fx = load_fixture(FIRST_ORDER)
    normalization = fx.meta["dataset_animation"]["normalization_params"]
    assert normalization["use_relative_jacobian"] is False  # the case this reference exists for
    job = dataset_animation_job(fx, tmp_path, normalization)
    assert job.motion == animate.Motion(relative=True, adapt=True, relative_jacobian=False)
    expected = nchw_to_nhwc(fx.ref["dataset_animation_prediction"])
    assert np.abs(dataset_animation(fx, job) - expected).max() <= 1e-4
    # the flag matters on this pair: with relative jacobians the frames are visibly different
    relative_jacobian = dataset_animation_job(fx, tmp_path, {**normalization, "use_relative_jacobian": True})
    assert np.abs(dataset_animation(fx, relative_jacobian) - expected).max() > 1e-2


def test_best_frame_frames_equal_the_original_demo_py(cached_models, tmp_path):
    fx = load_fixture(FIRST_ORDER)
    best = fx.meta["best_frame"]
    assert run.main(animate_args(fx, f"{tmp_path}/out/", "--relative", "--adapt", "--best_frame", str(best))) == 0
    assert_frames_match(png_frames(tmp_path / "out"), fx.ref[f"frames_best_{best}"])


def test_missing_dataset_is_one_line_error(tmp_path, capsys):
    fx = load_fixture(ZERO_ORDER)
    code = run.main([*model_args(fx), "--datamode", "dataset", "--root_dir", str(tmp_path / "nope"),
                     "--output", f"{tmp_path}/out/"])
    assert_one_line_error(capsys, code, "nope", "dataset")


# --------------------------------------------------------------------------------------------------
# Visualizer
# --------------------------------------------------------------------------------------------------

def first_frame_outputs(name):
    fx = load_fixture(name)
    frames = list(nchw_to_nhwc(fx.ref["driving"]))
    source = nchw_to_nhwc(fx.ref["source"])[0]
    driving, outputs = next(animate.animate_frames(direct_models(name), source, frames, animate.Motion(relative=True),
                                                   animate.Batching(2)))
    return fx, source, driving, outputs


@pytest.mark.parametrize("name,panels", [(FIRST_ORDER, 7), (ZERO_ORDER, 6)])  # zero_order: no occlusion map
def test_visualizer_row_size_and_prediction_panel(name, panels):
    fx, source, driving, outputs = first_frame_outputs(name)
    height, width = fx.config().frame_shape[:2]
    row = visualizer.Visualizer(kp_size=2, draw_border=True).visualize(source, driving, outputs)
    assert row.shape == (height, panels * width, 3) and row.dtype == np.uint8
    prediction = row[:, 4 * width:5 * width]
    np.testing.assert_array_equal(prediction[:, 1:-1], media.to_uint8(outputs["prediction"])[:, 1:-1])
    assert (prediction[:, [0, -1]] == 255).all()  # draw_border


def test_visualizer_keypoints_and_masks_use_gist_rainbow():
    fx, source, driving, outputs = first_frame_outputs(FIRST_ORDER)
    width = fx.config().frame_shape[1]
    row = visualizer.Visualizer(kp_size=1).visualize(source, driving, outputs).astype(int)
    last = len(outputs["kp_source"]) - 1  # drawn last, so on top of any neighbour
    x, y = np.round((outputs["kp_source"][last] + 1) / 2 * [width, fx.config().frame_shape[0]]).astype(int)
    np.testing.assert_allclose(row[y, x], 255 * visualizer.gist_rainbow(last / (last + 1)), atol=1)
    np.testing.assert_allclose(visualizer.gist_rainbow(0), [1, 0, 0.16])  # matplotlib's gist_rainbow(0)[:3]
    mask = np.zeros((4, 4, 3))
    mask[..., 2] = 1  # everything moves with keypoint 1 of 2
    np.testing.assert_allclose(visualizer.Visualizer().motion_masks(mask, 8, 8), np.broadcast_to(
        visualizer.gist_rainbow(0.5), (8, 8, 3)))


def test_cli_visualizer_png_frames_show_the_written_prediction(cached_models, tmp_path):
    fx = load_fixture(FIRST_ORDER)
    width = fx.config().frame_shape[1]
    assert run.main(animate_args(fx, f"{tmp_path}/out/", "--relative", "--visualizer", "--frames", "3")) == 0
    predictions, rows = png_frames(tmp_path / "out"), png_frames(tmp_path / "out_visualizer")
    assert len(rows) == len(predictions) == 3
    np.testing.assert_array_equal(rows[:, :, 4 * width + 1:5 * width - 1], predictions[:, :, 1:-1])


# --------------------------------------------------------------------------------------------------
# Profile
# --------------------------------------------------------------------------------------------------

def profile_table(out):
    """run.py --profile's table: {section heading: {stage: [calls, total s, ms/frame?, share]}}."""
    table = out[out.index("\nprofile: "):].splitlines()[2:]
    sections, rows = {}, None
    for line in table:
        name, values = re.match(r"  (\S.*?)  +(\S.*)$", line).groups()
        if values.startswith("calls"):
            rows = sections.setdefault(name, {})
        else:
            rows[name] = values.split()
    return sections


def test_profile_prints_totals_once_and_per_frame_times_per_batch(cached_models, tmp_path, monkeypatch, capsys):
    fx = load_fixture(ZERO_ORDER)
    frames = len(driving_frames(fx))
    batches = 1 + -(-(frames - 1) // 2)  # the first frame alone (written at once), then batches of 2
    monkeypatch.chdir(tmp_path)
    assert run.main(animate_args(fx, tmp_path / "out.mp4", "--relative", "--profile", "--batchsize", "2")) == 0
    out = capsys.readouterr().out
    assert f"profile: {frames} frames in " in out
    sections = profile_table(out)
    assert list(sections) == ["once per run or video", "per frame"], out
    once, per_frame = sections.values()
    # one-off work: calls, total seconds and share, no ms/frame
    assert list(once) == ["load models", "source encoding", "other (imports, setup)"], out
    assert once["load models"][0] == once["source encoding"][0] == "1"
    assert all(re.fullmatch(r"\d+\.\d{3}", row[-2]) and row[-1].endswith("%") for row in once.values()), out
    assert len(once["other (imports, setup)"]) == 2 and all(len(row) == 3 for row in list(once.values())[:2]), out
    # per frame: one model call per batch (the source's kp_detector and encoder are source encoding), one
    # decode and encode per frame
    assert set(per_frame) == {"kp_detector", "process_kp_driving", "generator", "decode", "encode"}, out
    for stage, row in per_frame.items():
        assert len(row) == 4 and re.fullmatch(r"\d+\.\d", row[2]), out
        assert int(row[0]) == (frames if stage in ("decode", "encode") else batches), (stage, out)
    assert list((tmp_path / "log" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert "pip install tensorboard" in out


def test_timings_count_a_stage_timed_inside_another_as_part_of_it():
    timings = animate.Timings()
    inner = timings.timed("kp_detector", lambda: None)
    with timings.stage("source encoding"):
        inner()
    inner()
    assert list(timings.timed_iter("decode", "abc")) == ["a", "b", "c"]
    assert timings.calls == {"source encoding": 1, "kp_detector": 1, "decode": 3}
    once, per_frame = profile_table("\n" + timings.summary(3, 1.0)).values()
    assert list(once) == ["source encoding", "other (imports, setup)"] and set(per_frame) == {"kp_detector", "decode"}


def test_timings_count_stages_timed_on_two_threads_at_once():
    # run.py --crop finds faces on a thread while the model loads: both stages count, neither is nested
    import threading

    timings = animate.Timings()
    detecting, loaded = threading.Event(), threading.Event()

    def detect():
        detecting.set()
        loaded.wait(5)

    worker = threading.Thread(target=timings.timed("detect photo", detect))
    worker.start()
    detecting.wait(5)  # the worker's stage is open now
    timings.timed("load models", loaded.set)()
    worker.join()
    assert timings.calls == {"load models": 1, "detect photo": 1}


# --------------------------------------------------------------------------------------------------
# One export target: SavedModel
# --------------------------------------------------------------------------------------------------

def test_savedmodel_target_runs_best_frame_visualizer_and_reconstruction(cached_models, tmp_path):
    import build

    fx = load_fixture(ZERO_ORDER)
    exports = tmp_path / "exports"
    assert build.main([*model_args(fx), "--outdir", str(exports), "--nolite"]) == 0
    target = ["--target", "savedmodel", "--exportdir", str(exports)]
    flags = ["--relative", "--best_frame", "2", "--visualizer"]
    assert run.main(animate_args(fx, f"{tmp_path}/saved/", *flags, *target)) == 0
    assert run.main(animate_args(fx, f"{tmp_path}/direct/", *flags)) == 0
    for folder in ("saved", "saved_visualizer"):
        assert_frames_match(png_frames(tmp_path / folder), png_frames(tmp_path / folder.replace("saved", "direct")))
    assert run.main([*model_args(fx), *target, "--mode", "reconstruction", "--output", f"{tmp_path}/rec/rec.mp4",
                     "--driving_video", str(fx.dir / "driving.mp4")]) == 0
    l1 = read_metrics(tmp_path / "rec" / "metrics.csv")["mean"][1]
    assert l1 == pytest.approx(np.mean(reconstruction_l1(ZERO_ORDER, driving_frames(fx))), abs=1e-5)


# --------------------------------------------------------------------------------------------------
# The README's "Use it" commands
# --------------------------------------------------------------------------------------------------

def test_readme_use_it_commands_run(cached_models, tmp_path, monkeypatch):
    commands = readme_commands("Use it")
    assert len(commands) >= 3
    monkeypatch.chdir(tmp_path)
    (tmp_path / "example").symlink_to(REPO / "example")
    for command in commands:
        words = shlex.split(command)
        assert words[:2] == ["python", "run.py"], command
        assert run.main(words[2:]) == 0, command
