"""Dataset mode in-process against Ray workers (run.py --workers N), in one run on one machine.

    python tools/bench_workers.py --checkpoint checkpoint/vox-cpk.pth.tar            # 8 clips x 16 frames
    python tools/bench_workers.py --checkpoint CK --workers 1,2,4 --clips 16 --frames 32

Cuts --clips short clips from a driving video into a temporary dataset, then runs
`run.py --datamode dataset --mode reconstruction` on it in a fresh process per row: in-process, then with
each --workers count. Each row's start-up (to the model loaded in every worker) and rendering time come
from run.py's own summary line; the wall time is command start to exit. Ray's overhead is the rendering
time of `--workers 1` against in-process; start-up is reported apart (Ray's instance, then a model load
per worker). Speed does not depend on the weights: any checkpoint of the config's shape will do (a
random one is fine). Needs Ray (pip install -r requirements-cluster.txt).
"""
import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_DIR)

import media  # noqa: E402

SUMMARY = re.compile(r"(\d+) videos? rendered, \d+ already complete, (\d+) failed: (\d+) frames? in ([\d.]+) s "
                     r"\(([\d.]+) frames/s\) after ([\d.]+) s of start-up")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.path.join(REPO_DIR, "config", "vox-256.yaml"))
    parser.add_argument("--checkpoint", default=os.path.join(REPO_DIR, "checkpoint", "vox-cpk.pth.tar"))
    parser.add_argument("--driving_video", default=os.path.join(REPO_DIR, "example", "driving.mp4"))
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default: 1,2)")
    return parser.parse_args(argv)


def make_dataset(root, driving_video, clips, frames):
    """`clips` clips of `frames` frames each, cut from the driving video at different offsets (looping)."""
    os.makedirs(os.path.join(root, "train"))
    os.makedirs(os.path.join(root, "test"))
    with media.open_video(driving_video) as video:
        source = [frame for frame in video]
    for clip in range(clips):
        with media.FrameWriter(os.path.join(root, "test", f"clip{clip:02d}.mp4"), 25) as writer:
            for index in range(frames):
                writer.write(source[(clip * 7 + index) % len(source)])


def run_row(args, root, output, workers):
    command = [sys.executable, os.path.join(REPO_DIR, "run.py"), "--config", args.config, "--checkpoint",
               args.checkpoint, "--datamode", "dataset", "--mode", "reconstruction", "--root_dir", root,
               "--output", output + "/"]
    if workers is not None:
        command += ["--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    match = SUMMARY.search(result.stdout)
    videos, failed, frames, rendering, _, start_up = match.groups()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"run": "in-process" if workers is None else f"--workers {workers}", "wall": wall,
            "start_up": float(start_up), "rendering": float(rendering), "videos": int(videos),
            "frames": int(frames), "driver_rss_mb": peak / 1024 if peak > before else None}


def main(argv=None):
    args = parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "data")
        make_dataset(root, args.driving_video, args.clips, args.frames)
        for workers in [None] + [int(w) for w in args.workers.split(",")]:
            rows.append(run_row(args, root, os.path.join(tmp, f"out{workers}"), workers))
            print(f"  {rows[-1]['run']}: {rows[-1]['wall']:.1f} s", file=sys.stderr, flush=True)
    base = rows[0]["rendering"]
    print(f"\n{args.clips} clips x {args.frames} frames, {os.cpu_count()} CPUs, {args.config}\n")
    print("| run | wall s | start-up s | rendering s | videos/s | frames/s | rendering vs in-process |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['run']} | {row['wall']:.1f} | {row['start_up']:.1f} | {row['rendering']:.1f} | "
              f"{row['videos'] / row['rendering']:.3f} | {row['frames'] / row['rendering']:.2f} | "
              f"{base / row['rendering']:.2f}x |")
    if rows[0]["driver_rss_mb"]:
        print(f"\nin-process peak RSS (one model, what a worker holds): {rows[0]['driver_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
