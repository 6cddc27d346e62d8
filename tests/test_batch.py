"""Batch runs in-process: --jobs FILE.csv, a bad input failing its own job only, completion records and resume.

The same rules hold on Ray workers (tests/test_cluster.py); these run without Ray.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, load_fixture, make_dataset, read_png_frames, stderr_lines, write_jobs_csv

import jobs
import run

ZERO_ORDER = "zero_order"


def model_args(fx):
    return ["--config", str(fx.config_path), "--checkpoint", str(fx.checkpoint())]


def files_in(folder):
    """Every file under `folder` (relative names), hidden completion records and all."""
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, _, names in os.walk(folder) for name in names)


def test_jobs_csv_renders_each_row_and_fails_the_bad_ones_alone(tmp_path, capsys):
    fx = load_fixture(ZERO_ORDER)
    listed = write_jobs_csv(tmp_path, [("source.png", "driving.mp4", "out/a.mp4"),
                                   ("source.png", "broken.mp4", "out/b.mp4"),
                                   ("missing.png", "driving.mp4", "out/c.gif"),
                                   ("source.png", "driving.mp4", "out/frames/")])
    code = run.main([*model_args(fx), "--jobs", str(listed), "--relative"])
    captured = capsys.readouterr()
    errors = [line for line in stderr_lines(captured.err) if line.startswith("error: ")]
    assert code == 1, captured.err
    assert errors[0].startswith("error: b.mp4: ") and "not a readable video" in errors[0], errors
    assert errors[1].startswith("error: c.gif: ") and "missing.png: no such file" in errors[1], errors
    assert errors[2] == "error: 2 of 4 jobs failed (b.mp4, c.gif); the other outputs were written", errors
    assert "Traceback" not in captured.err
    out = tmp_path / "out"
    assert [name for name in files_in(out) if not os.path.basename(name).startswith(".")] == \
        ["a.mp4", "b.mp4.error.log", "c.gif.error.log"] + [f"frames/frame_{i:05d}.png" for i in range(6)]
    assert "Traceback" in (out / "b.mp4.error.log").read_text()
    assert "2 videos rendered, 0 already complete, 2 failed: 12 frames" in captured.out
    # the CSV's rows animate exactly as the same pair given with --source_image / --driving_video
    single = tmp_path / "single"
    assert run.main([*model_args(fx), "--source_image", str(tmp_path / "source.png"), "--driving_video",
                     str(tmp_path / "driving.mp4"), "--relative", "--output", f"{single}/"]) == 0
    assert (read_png_frames(out / "frames") == read_png_frames(single)).all()


@pytest.mark.parametrize("content, fragment", [
    ("source_image,driving\n", "must name the columns source_image,driving_video,output (missing: driving_video, "
                               "output)"),
    ("source_image,driving_video,output\n", "no jobs (only a header)"),
    ("source_image,driving_video,output\na.png,,out.mp4\n", "line 2: no driving_video"),
    ("source_image,driving_video,output\na.png,b.mp4,o.mp4\nc.png,d.mp4,o.mp4\n", "lines 2 and 3 both write"),
    ("source_image,driving_video,output\na.png,b.mp4,o.txt\n", "cannot write .txt"),
])
def test_a_malformed_jobs_file_is_one_line_before_any_work(tmp_path, capsys, content, fragment):
    fx = load_fixture(ZERO_ORDER)
    listed = tmp_path / "jobs.csv"
    listed.write_text(content)
    code = run.main([*model_args(fx), "--jobs", str(listed)])
    lines = stderr_lines(capsys.readouterr().err)
    assert code == 1 and len(lines) == 1 and fragment in lines[0], lines


@pytest.mark.parametrize("argv, fragment", [
    (["--ray_address", "127.0.0.1:6379"], "--ray_address runs the jobs on Ray workers: give --workers N too"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--workers", "2"], "--workers renders a batch: give --jobs FILE.csv or --datamode dataset"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--jobs", "j.csv", "--datamode", "dataset"], "--jobs lists the jobs of --datamode file"),
    (["--jobs", "j.csv", "--source_image", "a.png"], "--jobs names every source_image and driving_video"),
    (["--overwrite"], "--overwrite applies to --jobs and --datamode dataset"),
    (["--workers", "2", "--profile", "--jobs", "j.csv"], "--profile times the in-process run"),
    (["--workers", "2", "--crop", "--jobs", "j.csv"], "--crop and the face options apply to one --source_image"),
])
def test_batch_flags_out_of_place_are_usage_errors(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit_info:
        run.parse_args(argv)
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_a_rerun_skips_complete_outputs_and_redoes_changed_ones(tmp_path, capsys):
    fx = load_fixture(ZERO_ORDER)
    counts = make_dataset(tmp_path / "data", fx)
    out = tmp_path / "out"
    command = [*model_args(fx), "--datamode", "dataset", "--mode", "reconstruction", "--root_dir",
               str(tmp_path / "data"), "--output", f"{out}/"]
    assert run.main(command) == 0
    videos = {name: out / f"{os.path.splitext(name)[0]}.mp4" for name in counts}
    metrics = (out / "metrics.csv").read_text()
    first = {name: path.stat().st_mtime_ns for name, path in videos.items()}
    capsys.readouterr()

    assert run.main(command) == 0  # nothing to do: no model load, same metrics rows
    captured = capsys.readouterr()
    assert "note: 3 outputs of 3 already complete with this model and these options" in captured.err
    assert "loading" not in captured.err
    assert {name: path.stat().st_mtime_ns for name, path in videos.items()} == first
    assert (out / "metrics.csv").read_text() == metrics

    os.remove(videos["b_strip.png"])  # a lost output, and another one truncated by hand
    with open(videos["c_video.mp4"], "ab") as f:
        f.write(b"\0")
    assert run.main(command) == 0
    assert "note: 1 output of 3 already complete" in capsys.readouterr().err
    assert videos["a_folder"].stat().st_mtime_ns == first["a_folder"]
    assert videos["b_strip.png"].exists() and videos["c_video.mp4"].stat().st_mtime_ns != first["c_video.mp4"]
    assert (out / "metrics.csv").read_text() == metrics

    again = {name: path.stat().st_mtime_ns for name, path in videos.items()}
    assert run.main([*command, "--frames", "3"]) == 0  # a flag that changes the pixels: all redone
    assert all(path.stat().st_mtime_ns != again[name] for name, path in videos.items())
    assert "already complete" not in capsys.readouterr().err
    again = {name: path.stat().st_mtime_ns for name, path in videos.items()}
    assert run.main([*command, "--frames", "3", "--overwrite"]) == 0
    assert all(path.stat().st_mtime_ns != again[name] for name, path in videos.items())


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    """Kill the driver (SIGKILL) once its first output is written; the rerun keeps that output as it is."""
    fx = load_fixture(ZERO_ORDER)
    sources = tmp_path / "in"
    sources.mkdir()
    rows = [("source.png", "driving.mp4", f"../out/{index}.mp4") for index in range(6)]
    listed = write_jobs_csv(sources, rows)
    command = [sys.executable, os.path.join(REPO, "run.py"), *model_args(fx), "--jobs", str(listed), "--quiet"]
    process = subprocess.Popen(command, cwd=tmp_path)
    first = tmp_path / "out" / "0.mp4"
    deadline = time.monotonic() + 120
    while not jobs.record_path(str(first)) or not os.path.exists(jobs.record_path(str(first))):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = {path: path.stat().st_mtime_ns for path in (tmp_path / "out").glob("*.mp4")}
    assert first in done
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in done.items()
               if os.path.exists(jobs.record_path(str(path))))
    assert sorted(path.name for path in (tmp_path / "out").glob("*.mp4")) == [f"{i}.mp4" for i in range(6)]
    assert not [name for name in os.listdir(tmp_path / "out") if ".tmp" in name]  # the killed job's leftovers
