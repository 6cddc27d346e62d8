"""run.py --workers N on Ray (cluster.py): the same files as in-process, failures alone, a killed worker's job
retried, an existing cluster joined by address, Ctrl-C leaving nothing half-written.

Two workers on the 2-core CI machine, the smallest fixture model; each run starts its own Ray instance
(~20 s here). Skipped, saying so, without Ray (pip install -r requirements-cluster.txt).
"""
import filecmp
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import imageio.v2 as imageio
import pytest

from conftest import REPO, load_fixture, make_dataset, readme_commands, stderr_lines, write_jobs_csv

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed: pip install -r requirements-cluster.txt")
ZERO_ORDER = "zero_order"
RUN = os.path.join(REPO, "run.py")


def run_py(*argv, cwd=None, env=None, **popen):
    fx = load_fixture(ZERO_ORDER)
    command = [sys.executable, RUN, "--config", str(fx.config_path), "--checkpoint", str(fx.checkpoint()), *argv]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **popen)


def visible_files(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, _, names in os.walk(folder) for name in names if not name.startswith("."))


def temporaries(folder):
    return [name for _, _, names in os.walk(folder) for name in names if ".tmp" in name]


def four_video_dataset(root):
    counts = make_dataset(root, load_fixture(ZERO_ORDER))  # frame folder, strip, mp4
    shutil.copy(root / "test" / "c_video.mp4", root / "test" / "d_video.mp4")
    return {**counts, "d_video.mp4": counts["c_video.mp4"]}


@needs_ray
@pytest.mark.parametrize("mode", ["reconstruction", "animate"])
def test_workers_write_the_same_files_and_metrics_as_in_process(tmp_path, mode):
    four_video_dataset(tmp_path / "data")
    common = ["--datamode", "dataset", "--mode", mode, "--root_dir", str(tmp_path / "data"), "--threads", "1"]
    alone = run_py(*common, "--output", f"{tmp_path}/alone/")
    assert alone.returncode == 0, alone.stderr
    on_ray = run_py(*common, "--output", f"{tmp_path}/ray/", "--workers", "2")
    assert on_ray.returncode == 0, on_ray.stderr
    assert "starting 2 Ray workers (1 CPU, 1 thread each)" in on_ray.stderr
    names = visible_files(tmp_path / "alone")
    videos = [name for name in names if name.endswith(".mp4")]
    assert names == visible_files(tmp_path / "ray") and len(videos) == (4 if mode == "reconstruction" else 16)
    # one thread per worker as in-process: byte-identical videos and metrics rows, in the dataset's order
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "alone", tmp_path / "ray", names, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)
    assert f"{len(videos)} videos rendered, 0 already complete, 0 failed" in on_ray.stdout


@needs_ray
def test_a_bad_job_fails_alone_on_workers(tmp_path):
    listed = write_jobs_csv(tmp_path, [("source.png", "driving.mp4", "out/a.mp4"),
                                       ("source.png", "broken.mp4", "out/b.mp4"),
                                       ("source.png", "driving.mp4", "out/c.gif")])
    result = run_py("--jobs", str(listed), "--workers", "2", "--audio")
    errors = [line for line in stderr_lines(result.stderr) if line.startswith("error: ")]
    # what a worker warns about reaches the driver's terminal, naming the job
    assert "warning: c.gif: --audio: " in result.stderr and "cannot hold sound" in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    assert len(errors) == 2 and errors[0].startswith("error: b.mp4: ") and "not a readable video" in errors[0], errors
    assert errors[1] == "error: 1 of 3 jobs failed (b.mp4); the other outputs were written"
    assert "Traceback" not in result.stderr
    assert visible_files(tmp_path / "out") == ["a.mp4", "b.mp4.error.log", "c.gif"]
    assert not temporaries(tmp_path / "out")


def ray_worker_pids():
    """PIDs of Ray actors of ours busy rendering: Ray titles such a process `ray::RenderWorker.render`."""
    import psutil

    pids = []
    for process in psutil.process_iter(["cmdline"]):
        if (process.info["cmdline"] or [""])[0].startswith("ray::RenderWorker.render"):
            pids.append(process.pid)
    return pids


def listening_addresses(pids):
    import psutil

    addresses = set()
    for pid in pids:
        try:
            for connection in psutil.Process(pid).net_connections(kind="inet"):
                if connection.status == psutil.CONN_LISTEN:
                    addresses.add(connection.laddr.ip)
        except psutil.Error:
            pass
    return addresses


def ray_processes():
    import psutil

    return [p.pid for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] in ("raylet", "gcs_server") or (p.info["cmdline"] or [""])[0].startswith("ray::")]


@needs_ray
def test_a_killed_worker_has_its_job_retried_and_nothing_half_written(tmp_path):
    rows = [("source.png", "driving.mp4", f"out/{index}.mp4") for index in range(4)]
    listed = write_jobs_csv(tmp_path, rows, frames=1200)
    fx = load_fixture(ZERO_ORDER)
    command = [sys.executable, RUN, "--config", str(fx.config_path), "--checkpoint", str(fx.checkpoint()),
               "--jobs", str(listed), "--workers", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ray_worker_pids():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    os.kill(ray_worker_pids()[0], signal.SIGKILL)  # a 1200-frame video takes ~10 s: it dies mid-video
    listening = listening_addresses(ray_processes())
    assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, f"Ray listens beyond the loopback: {listening}"
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    retried = [line for line in err.splitlines() if "died" in line and "retrying on another worker" in line]
    assert len(retried) == 1, err
    print(retried[0])
    assert visible_files(tmp_path / "out") == [f"{index}.mp4" for index in range(4)]
    assert not temporaries(tmp_path / "out")
    for index in range(4):
        assert imageio.get_reader(tmp_path / "out" / f"{index}.mp4").count_frames() == 1200
    assert "4 videos rendered, 0 already complete, 0 failed: 4800 frames" in out


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_open(port):
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@needs_ray
def test_an_existing_cluster_by_address_and_ctrl_c(tmp_path):
    """`ray start --head` on the loopback, run.py --ray_address, Ctrl-C mid-run, `ray stop`: nothing left."""
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    start = subprocess.run([ray, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                            "--num-cpus", "2", "--disable-usage-stats", "--include-dashboard=false"],
                           env=env, capture_output=True, text=True, timeout=120)
    try:
        assert start.returncode == 0, start.stderr
        print(start.stdout[-600:], start.stderr[-600:])
        assert port_open(port)
        listed = write_jobs_csv(tmp_path, [("source.png", "driving.mp4", f"out/{index}.mp4") for index in range(2)])
        joined = run_py("--jobs", str(listed), "--workers", "2", "--ray_address", f"127.0.0.1:{port}", env=env)
        assert joined.returncode == 0, joined.stderr
        assert f"joined the Ray cluster at 127.0.0.1:{port}" in joined.stderr
        assert visible_files(tmp_path / "out") == ["0.mp4", "1.mp4"]

        long_jobs = write_jobs_csv(tmp_path, [("source.png", "driving.mp4", f"long/{index}.mp4")
                                              for index in range(2)], frames=1200)
        fx = load_fixture(ZERO_ORDER)
        process = subprocess.Popen([sys.executable, RUN, "--config", str(fx.config_path), "--checkpoint",
                                    str(fx.checkpoint()), "--jobs", str(long_jobs), "--workers", "2", "--ray_address",
                                    f"127.0.0.1:{port}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        deadline = time.monotonic() + 300
        while not ray_worker_pids():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
        assert process.returncode == 130, err
        assert "interrupted" in err and "Traceback" not in err, err
        time.sleep(1.0)
        assert not ray_worker_pids(), "the run's workers outlived its Ctrl-C"
        assert not os.path.exists(tmp_path / "long") or not visible_files(tmp_path / "long")
        assert not os.path.exists(tmp_path / "long") or not temporaries(tmp_path / "long")
    finally:
        stop = subprocess.run([ray, "stop"], env=env, capture_output=True, text=True, timeout=120)
        print(stop.stdout[-300:], stop.stderr[-300:])
    assert not port_open(port), "something still listens on the cluster's port after ray stop"


def test_workers_without_ray_is_one_line_naming_the_install(tmp_path):
    (tmp_path / "ray.py").write_text("raise ImportError('No module named ray')\n")
    listed = write_jobs_csv(tmp_path, [("source.png", "driving.mp4", "out/a.mp4")])
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = run_py("--jobs", str(listed), "--workers", "2", env=env)
    lines = stderr_lines(result.stderr)
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0] == "error: --workers runs the jobs on Ray, which is not installed: " \
                       "pip install -r requirements-cluster.txt"


@needs_ray
def test_readme_scale_out_command(tmp_path):
    """README's Scale out command, as written, from the repository; run again, it skips both outputs."""
    import shlex

    [command] = readme_commands("Scale out: many videos, many machines")
    words = shlex.split(command)
    assert words[:2] == ["python", "run.py"]
    outputs = [os.path.join(REPO, "output", "jobs", name) for name in ("first.mp4", "second.gif")]
    first = subprocess.run([sys.executable, *words[1:], "--overwrite"], cwd=REPO, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr
    assert all(os.path.getsize(path) > 0 for path in outputs)
    assert "2 videos rendered, 0 already complete, 0 failed: 80 frames" in first.stdout, first.stdout
    again = subprocess.run([sys.executable, *words[1:]], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "0 videos rendered, 2 already complete, 0 failed" in again.stdout
    assert "Ray" not in again.stderr  # nothing to render: no Ray instance started
