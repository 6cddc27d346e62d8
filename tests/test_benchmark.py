"""benchmark.py and tools/profile_parts.py on a small fixture: the README's Performance commands, run as written.

Only the shape of the report is checked here (speed belongs to the benchmark's own table, never to
a timed test): every requested row ran, the FLOP and roof columns are derived from the counted FLOPs,
and the JSON holds what the README's table is made of.
"""
import json
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO, readme_commands


def performance_command(script, crop=False):
    """The README Performance section's one command of `script`; for benchmark.py, the one with (crop=True)
    or without --crop."""
    [command] = [c for c in readme_commands("Performance") if shlex.split(c)[:2] == ["python", script]
                 and ("--crop" in shlex.split(c)) == crop]
    return shlex.split(command)


def test_readme_performance_commands_are_the_benchmarks_and_the_profile():
    scripts = sorted(shlex.split(c)[1] for c in readme_commands("Performance"))
    assert scripts == ["benchmark.py", "benchmark.py", "tools/profile_parts.py"]


def run_readme_command(words):
    result = subprocess.run([sys.executable, *words[1:]], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def run_readme_benchmark(**which):
    """The README's benchmark.py command (see performance_command): its words, stdout and --json report."""
    words = performance_command("benchmark.py", **which)
    stdout = run_readme_command(words)
    json_path = REPO / words[words.index("--json") + 1]
    return words, stdout, json.loads(json_path.read_text())


@pytest.fixture(scope="module")
def quick_report():
    return run_readme_benchmark()


def test_quick_benchmark_reports_every_requested_row(quick_report):
    words, stdout, report = quick_report
    targets = words[words.index("--targets") + 1].split(",")
    batches = [int(b) for b in words[words.index("--batch") + 1].split(",")]
    rows = {(row["target"], row["batch"]): row for row in report["rows"]}
    assert set(rows) == {(target, batch) for target in targets for batch in batches}
    for (target, batch), row in rows.items():
        assert "error" not in row, row
        assert row["fps"] > 0 and row["peak_rss_mb"] > 0
        assert re.search(rf"^\| {re.escape(target)} \| {batch} \| {row['fps']:.3f} \|", stdout, re.M), stdout


def test_quick_benchmark_flops_and_roof_follow_the_counts(quick_report):
    _, _, report = quick_report
    gflop = report["gflop_per_call"]
    # the fused generator (BatchNorm folded) and the cached split do less work than the original graph
    assert gflop["generator (fused)"] <= gflop["generator (original)"]
    assert gflop["source_encoder"] + gflop["generator_cached"] == pytest.approx(gflop["generator (fused)"], rel=0.02)
    # the roof of each dtype is the faster of its kernels, and the fastest of the per-row measurements
    assert set(report["roof_gflops"]) == {"float32", "bfloat16", "int8"}
    for dtype, rate in report["roof_gflops"].items():
        assert rate == max(report["roof_kernels"][dtype].values())
        assert rate == max(max(row["roof"]["kernels"][dtype].values()) for row in report["rows"])
    for row in report["rows"]:
        per_frame = row["gflop_per_frame"]
        model_seconds = sum(row["module_seconds"].values())
        assert row["roof_fraction"] == pytest.approx(
            per_frame * report["frames"] / model_seconds / report["roof_gflops"][row["dtype"]], rel=1e-9)


def test_quick_benchmark_prints_the_roofs_with_the_cpu_flags(quick_report):
    _, stdout, report = quick_report
    assert stdout.count("CPU flags:") == 1
    for dtype, rate in report["roof_gflops"].items():
        assert f"  {dtype}: {rate:.0f} GFLOP/s" in stdout, stdout


def test_profile_parts_prints_every_stage_for_both_graphs():
    stdout = run_readme_command(performance_command("tools/profile_parts.py"))
    stages = re.findall(r"^\| ([^|]+?) \| ([\d.]+) \| ([\d.]+) \| (\S+) \|$", stdout, re.M)
    names = [name for name, *_ in stages]
    assert names[:3] == ["kp_detector", "dense motion", "warp features"] and names[-1] == "per-frame sum", stdout
    per_frame = [(float(a), float(b)) for name, a, b, _ in stages if name not in ("per-frame sum",)
                 and "per video" not in name]
    total = next((float(a), float(b)) for name, a, b, _ in stages if name == "per-frame sum")
    rounding = 0.05 * (len(per_frame) + 1)  # every number is printed to 0.1 ms
    assert total == pytest.approx((sum(a for a, _ in per_frame), sum(b for _, b in per_frame)), abs=rounding)


# The end-to-end rows' clock (benchmark.timed_process), on stand-in commands: a real run is minutes long.

def test_end_to_end_clock_marks_first_frame_output_and_exit_in_order():
    import benchmark

    script = ("import sys, time; print('x:  1/3 [00:00<?', file=sys.stderr, flush=True); time.sleep(0.3); "
              "print('wrote 3 frames to out.mp4', flush=True); time.sleep(0.3)")
    result = benchmark.timed_process([sys.executable, "-c", script], 3, None)
    assert result["first_frame_s"] < result["written_s"] < result["exit_s"]
    assert result["written_s"] - result["first_frame_s"] >= 0.25 and result["exit_s"] - result["written_s"] >= 0.25
    assert result["peak_rss_mb"] > 0  # no upper bound: a child forked from this process counts its memory too


def test_end_to_end_clock_reports_a_failed_run_by_its_last_line():
    import benchmark

    script = "import sys; print('error: no such file', file=sys.stderr); sys.exit(1)"
    assert benchmark.timed_process([sys.executable, "-c", script], 3, None) == {"error": "error: no such file"}


def test_end_to_end_table_compares_each_row_with_the_original_of_its_length():
    import benchmark

    rows = [{"target": target, "frames": 32, "first_frame_s": 1.0, "written_s": written, "exit_s": written + 1,
             "peak_rss_mb": 100.0} for target, written in (("original", 20.0), ("tflite", 10.0))]
    table = benchmark.end_to_end_table(rows)
    assert "| tflite | 32 | 1.0 | 10.0 | 11.0 | 2.00x | - | 100 |" in table.splitlines()


def test_end_to_end_overhead_is_what_the_frames_at_the_steady_rate_do_not_explain():
    import benchmark

    rows = [{"target": target, "frames": 32, "first_frame_s": 1.0, "written_s": written, "exit_s": written + 1,
             "peak_rss_mb": 100.0} for target, written in (("original", 20.0), ("direct-cold", 15.0))]
    steady = [{"target": "original", "batch": 1, "fps": 2.0}, {"target": "direct", "batch": 1, "fps": 8.0},
              {"target": "direct", "batch": 4, "fps": 4.0}]  # run.py's default batch is the one that counts
    lines = benchmark.end_to_end_table(rows, steady).splitlines()
    assert "| original | 32 | 1.0 | 20.0 | 21.0 | 1.00x | 4.0 | 100 |" in lines
    assert "| direct-cold | 32 | 1.0 | 15.0 | 16.0 | 1.33x | 7.0 | 100 |" in lines


def test_import_times_run_each_rows_import_in_fresh_processes():
    import benchmark

    every_row = benchmark.end_to_end_rows(list(benchmark.END_TO_END_ROWS))
    assert {benchmark.row_import(row) for row in every_row} <= set(benchmark.ROW_IMPORTS.values())
    assert benchmark.row_import("savedmodel-bfloat16") == benchmark.row_import("savedmodel")
    seconds = benchmark.import_seconds(["tflite", "tflite-int8"], rounds=2)
    assert set(seconds) == {"tflite", "tflite-int8"} and all(len(values) == 2 for values in seconds.values())
    assert all(value > 0 for values in seconds.values() for value in values)
    table = benchmark.import_table({"tflite": [0.3, 0.1, 0.2]}).splitlines()
    assert table[2] == "| tflite | `backends.tflite_interpreter_class()` | 0.10 | 0.20 | 0.30 |"


def test_bfloat16_end_to_end_rows_run_run_py_at_bfloat16_and_count_against_their_steady_row():
    import types

    import benchmark

    assert benchmark.end_to_end_rows(["direct-bfloat16", "savedmodel-bfloat16"]) == [
        "direct-bfloat16-cold", "direct-bfloat16-warm", "savedmodel-bfloat16"]
    args = types.SimpleNamespace(config="c.yaml", checkpoint="m.pth.tar", source_image="s.png")
    for row, target in (("direct-bfloat16-warm", "direct"), ("savedmodel-bfloat16", "savedmodel")):
        command = benchmark.run_py_command(args, row, "clip.mp4", "out.mp4", "exports")
        assert command[command.index("--target") + 1] == target
        assert command[command.index("--precision") + 1] == "bfloat16"
    assert "--precision" not in benchmark.run_py_command(args, "direct-cold", "clip.mp4", "out.mp4", "exports")
    row = {"target": "direct-bfloat16-warm", "frames": 10, "written_s": 4.0}
    assert benchmark.startup_overhead(row, [{"target": "direct-bfloat16", "batch": 4, "fps": 5.0}]) == 2.0


def test_int8_end_to_end_row_runs_the_dynamic_range_export_against_its_steady_row():
    import types

    import benchmark

    assert benchmark.end_to_end_rows(["tflite", "tflite-int8", "tflite-int8full"]) == ["tflite", "tflite-int8"]
    args = types.SimpleNamespace(config="c.yaml", checkpoint="m.pth.tar", source_image="s.png")
    command = benchmark.run_py_command(args, "tflite-int8", "clip.mp4", "out.mp4", "exports")
    assert command[command.index("--target") + 1] == "tflite" and "--int8" in command
    assert "--int8" not in benchmark.run_py_command(args, "tflite", "clip.mp4", "out.mp4", "exports")
    row = {"target": "tflite-int8", "frames": 10, "written_s": 4.0}
    assert benchmark.startup_overhead(row, [{"target": "tflite-int8", "batch": 4, "fps": 5.0}]) == 2.0


# --crop: what run.py --crop adds, timed in fresh processes (the README's command on the example model)

@pytest.fixture(scope="module")
def crop_report():
    return run_readme_benchmark(crop=True)


def test_crop_rows_time_each_target_and_split_what_crop_adds(crop_report):
    words, stdout, report = crop_report
    targets = words[words.index("--targets") + 1].split(",")
    frames = int(words[words.index("--crop") + 1])
    rows = report["crop"]["rows"]
    assert [row["target"] for row in rows] == targets
    for row in rows:
        assert "error" not in row["plain"] and "error" not in row["crop"] and "profile_error" not in row, row
        assert row["profile_frames"] == frames
        stages = row["profile"]
        for stage in ("build detector", "detect photo", "detect clip", "crop+resize", "paste", "encode", "generator"):
            assert stages[stage] > 0, (stage, row)
        # TensorFlow is imported for mtcnn's face detector alone on onnx, part of what --crop adds there; the
        # tflite target finds faces on LiteRT (build.py wrote the detector files beside the benchmark's exports)
        assert ("load TensorFlow" in stages) == (row["target"] == "onnx"), row
        assert re.search(rf"^\| {row['target']} \| {frames} \| {row['plain']['written_s']:.1f} \| "
                         rf"{row['crop']['written_s']:.1f} \| ", stdout, re.M), stdout


def test_crop_table_reads_the_split_from_run_pys_profile():
    import animate
    import benchmark

    timings = animate.Timings()
    for stage, seconds, calls in (("load models", 1.0, 1), ("build detector", 0.3, 1), ("detect photo", 0.8, 1),
                                  ("detect clip", 0.4, 1), ("decode", 0.2, 4), ("crop+resize", 0.02, 4),
                                  ("kp_detector", 0.4, 1), ("process_kp_driving", 0.04, 1), ("generator", 1.56, 1),
                                  ("paste", 0.08, 4), ("encode", 0.12, 4)):
        timings.add(stage, seconds, calls)
    parsed = benchmark.parse_profile("wrote 4 frames to out.mp4\n" + timings.summary(4, 6.0))
    assert parsed == {"profile": timings.seconds, "profile_frames": 4, "profile_total_s": 6.0}
    row = {"target": "direct", "frames": 4, "plain": {"written_s": 8.0}, "crop": {"written_s": 10.0}, **parsed}
    table = benchmark.crop_table([row]).splitlines()
    # 2 of 10 s added; no "load TensorFlow" on direct; per frame: 5 ms crop+resize, (400 + 40 + 1560) / 4 ms animate
    assert table[2] == "| direct | 4 | 8.0 | 10.0 | 2.0 s (20%) | - | 0.30 | 0.80 | 0.40 | 5.0 | 500 | 20.0 | 30.0 |"
