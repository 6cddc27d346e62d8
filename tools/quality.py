"""The quality gate of --precision (issue 16): every trained model, each reduced precision against float32.

    python tools/quality.py [--frames 16] [--json docs/quality.json] [--models demo,vox,...]

Models: the bundled demo model (example/demo-256.yaml, trained by this project) on the example clip
(example/source.png + example/driving.mp4), and every test fixture (tests/fixtures/*: small models
trained by tests/make_fixtures.py) on its own clip. The demo model on ../shared/data's real face and
driving video is measured too when that folder is there, for a person to look at: it is printed, but
left out of the verdicts, which must come out the same on any checkout.

Each precision runs on its natural target, against float32 on the direct target (the exact reference):
  bfloat16       direct  the generator's heavy convolutions in bfloat16 (skipped where the CPU would
                         emulate it: no AVX512_BF16 / AMX-BF16)
  int8           tflite  full-integer generator-int8full.tflite (build.py --precision int8 --calibration
                         on the model's own clip), keypoints float32
  int8-dynamic   tflite  build.py --int8: int8 weights, float32 activations, in the generator (kp_detector
                         float32: precision.DYNAMIC_INT8_MODULES)
The int8 files are built into a temporary folder. Per model and precision: the animation of the first
--frames driving frames (relative, adapt) -> prediction max / mean abs difference and PSNR against
float32, the driving keypoints' largest shift in pixels; the reconstruction of those frames from the
first one (the original reconstruction.py) -> its L1 and the change against float32's.

Gate: a precision is "near-lossless" iff, on every model, PSNR >= 40 dB against float32 and the
reconstruction L1 is within 2% of float32's. Prints a markdown table and one verdict line per precision,
and writes the verdicts with every number to --json (precision.NEAR_LOSSLESS encodes them for --precision
auto; a test checks the two agree).
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_DIR)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import precision  # noqa: E402  (light: imports nothing but the standard library)

EXAMPLE_DIR = os.path.join(REPO_DIR, "example")
FIXTURES_DIR = os.path.join(REPO_DIR, "tests", "fixtures")
SHARED_DATA_DIR = os.path.normpath(os.path.join(REPO_DIR, os.pardir, "shared", "data"))
DEFAULT_JSON = os.path.join(REPO_DIR, "docs", "quality.json")
# (precision, target) in the table's order; float32 on direct is the reference the others are measured against.
PRECISIONS = (("float32", "direct"), ("bfloat16", "direct"), ("int8", "tflite"), (precision.DYNAMIC_INT8, "tflite"))
REFERENCE = "float32"
MIN_PSNR_DB = 40.0  # issue 16's gate
MAX_L1_CHANGE = 0.02
BATCH = 4
BUILT_MODULES = ("kp_detector", "process_kp_driving", "generator")  # what run.py's tflite target loads


@dataclass(frozen=True)
class Case:
    """One trained model on one source photo and driving clip."""
    label: str
    config: str
    checkpoint: str
    source: str
    driving: str
    calibration: str  # the clip its int8 file is calibrated on (build.py --calibration)
    in_verdict: bool = True


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16, help="driving frames per model (default: 16)")
    parser.add_argument("--models", help="comma-separated subset of: demo, shared, and the fixture names "
                                         "(default: all; the verdicts need all)")
    parser.add_argument("--json", help="where the verdicts go (default: docs/quality.json when every model runs)")
    args = parser.parse_args(argv)
    if args.frames < 2:
        parser.error("--frames must be at least 2 (reconstruction needs a source frame and a driving one)")
    known = [case_key(case) for case in all_cases()]
    args.models = known if args.models is None else [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(args.models) - set(known))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(known)}")
    if args.json is None and set(args.models) == set(known):  # a subset's verdicts would not be the gate's
        args.json = DEFAULT_JSON
    return args


# --------------------------------------------------------------------------------------------------
# The models
# --------------------------------------------------------------------------------------------------

def demo_case(data_dir, label, in_verdict=True):
    """The bundled demo model on data_dir's source.png / driving.mp4, calibrated on the example clip
    (what the README's int8 build command does)."""
    return Case(label, os.path.join(EXAMPLE_DIR, "demo-256.yaml"), os.path.join(EXAMPLE_DIR, "demo-cpk.pth.tar"),
                os.path.join(data_dir, "source.png"), os.path.join(data_dir, "driving.mp4"),
                os.path.join(EXAMPLE_DIR, "driving.mp4"), in_verdict)


def fixture_case(name):
    folder = os.path.join(FIXTURES_DIR, name)
    clip = os.path.join(folder, "driving.mp4")
    return Case(f"fixture {name}", os.path.join(folder, "config.yaml"), os.path.join(folder, "legacy.pth.tar"),
                os.path.join(folder, "source.png"), clip, clip)


def all_cases():
    """The demo model on the example clip, every fixture on its own, then ../shared/data's face if present."""
    found = [demo_case(EXAMPLE_DIR, "demo, example clip")]
    found += [fixture_case(name) for name in sorted(os.listdir(FIXTURES_DIR))
              if os.path.isfile(os.path.join(FIXTURES_DIR, name, "reference.npz"))]
    if os.path.isfile(os.path.join(SHARED_DATA_DIR, "driving.mp4")):
        found.append(demo_case(SHARED_DATA_DIR, "demo, real face (../shared/data; not in the verdict)", False))
    return found


def case_key(case):
    """--models' name of a case: demo, shared, or the fixture's folder name."""
    if case.label.startswith("fixture "):
        return case.label.split(" ", 1)[1]
    return "demo" if case.in_verdict else "shared"


def read_inputs(case, frame_shape, frame_count):
    """(source image, the first frame_count driving frames), preprocessed as run.py does."""
    import media

    source = media.read_image(case.source, frame_shape)
    with media.open_driving_clip(case.driving, frame_shape) as clip:
        frames = [frame for _, frame in zip(range(frame_count), clip)]
    return source, frames


# --------------------------------------------------------------------------------------------------
# Each precision's models
# --------------------------------------------------------------------------------------------------

def build_int8_exports(case, outdir):
    """The TF Lite files both int8 precisions run: float32 keypoint modules, generator-int8full.tflite
    calibrated on case.calibration, and the dynamic-range -int8 files build.py --int8 writes.

    build.py runs in a process of its own, as a user runs it; its progress lines go to stderr, so that
    stdout holds only the table. Fixed (2026-12-03): the same int8 files, run in one process after the
    float32 TF Lite files of the same model, once computed the demo model's frames of ../shared/data
    at 11.9 dB PSNR against float32 instead of 40.9 dB. Not the order: LiteRT 2.3's fused XNNPACK
    partitions went wrong from an interpreter's second call on, in interpreters that the process's
    earlier allocations picked; export_files.tflite_interpreter now gives XNNPACK one op per partition
    (see UNFUSED_DELEGATE there), so loading several sets of files in one process is safe."""
    for module in BUILT_MODULES:
        argv = ["--config", case.config, "--checkpoint", case.checkpoint, "--outdir", outdir, "--module", module,
                "--precision", "int8", "--calibration", case.calibration, "--int8"]
        result = subprocess.run([sys.executable, os.path.join(REPO_DIR, "build.py"), *argv], stdout=sys.stderr)
        if result.returncode != 0:
            raise SystemExit(f"error: build.py {' '.join(argv)} failed")


def tflite_models(case, exportdir, name):
    """animate.Models of run.py --target tflite over the exports of one int8 precision, loaded as run.py
    loads them."""
    import run

    flag = ["--precision", "int8"] if name == "int8" else ["--int8"]
    args = run.parse_args(["--target", "tflite", "--config", case.config, "--exportdir", exportdir, *flag])
    return run.load_models(args, None, None)


def models_at(name, case, config, state_dicts, exportdir):
    """animate.Models of `name` (a PRECISIONS name) for one case."""
    import animate

    if name in ("float32", "bfloat16"):
        return animate.direct_models(config, state_dicts, precision=name)
    return tflite_models(case, exportdir, name)


def available_precisions():
    """PRECISIONS this CPU runs natively (bfloat16 emulated would measure nothing a user gets)."""
    return [(name, target) for name, target in PRECISIONS if precision.native(name.split("-")[0])]


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------

def outputs(models, source, frames):
    """{'prediction' [N, H, W, C], 'keypoints' [N, K, 2], 'l1'} of one model at one precision."""
    import animate

    batching = animate.Batching(BATCH)
    predictions = np.stack(list(animate.animate(models, source, frames, relative=True, adapt=True,
                                                batch_size=BATCH)))
    keypoints = np.stack([kp["value"] for kp in animate.frame_keypoints(models, frames, batching)])
    l1 = np.mean([animate.reconstruction_l1(out["prediction"], frame)
                  for frame, out in animate.reconstruct_frames(models, frames, batching)])
    return {"prediction": predictions, "keypoints": keypoints, "l1": float(l1)}


def psnr_db(a, b):
    """PSNR of images in [0, 1]; 200 dB stands for identical."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float(10 * np.log10(1 / max(mse, 1e-20)))


def compare(reference, measured, frame_shape):
    """The gate's numbers of one precision against float32's outputs."""
    difference = np.abs(measured["prediction"].astype(np.float64) - reference["prediction"])
    # keypoints live in [-1, 1]: half the frame's width (height) per unit
    scale = np.array(frame_shape[1::-1], np.float64) / 2
    shift = np.abs(measured["keypoints"] - reference["keypoints"]) * scale
    return {"frames": len(difference), "prediction_max_abs": float(difference.max()),
            "prediction_mean_abs": float(difference.mean()),
            "psnr_db": psnr_db(measured["prediction"], reference["prediction"]),
            "keypoint_shift_px": float(shift.max()), "reconstruction_l1": measured["l1"],
            "reconstruction_l1_float32": reference["l1"], "reconstruction_l1_change": measured["l1"] / reference["l1"] - 1}


def measure(case, precisions, frame_count, tmpdir):
    """[row dict] of one case: float32's own row, then one per reduced precision."""
    import checkpoint_loader
    import model_config

    config = model_config.load(case.config).model
    source, frames = read_inputs(case, config.frame_shape, frame_count)
    state_dicts = checkpoint_loader.load_state_dicts(case.checkpoint)
    exportdir = None
    if any(target == "tflite" for _, target in precisions):
        exportdir = tempfile.mkdtemp(prefix="int8-", dir=tmpdir)
        build_int8_exports(case, exportdir)
    reference = outputs(models_at(REFERENCE, case, config, state_dicts, exportdir), source, frames)
    rows = []
    for name, target in precisions:
        measured = reference if name == REFERENCE else outputs(
            models_at(name, case, config, state_dicts, exportdir), source, frames)
        rows.append(dict(compare(reference, measured, config.frame_shape), model=case.label, precision=name,
                         target=target, in_verdict=case.in_verdict))
    return rows


# --------------------------------------------------------------------------------------------------
# Verdicts and the report
# --------------------------------------------------------------------------------------------------

def passes_gate(row):
    return row["psnr_db"] >= MIN_PSNR_DB and abs(row["reconstruction_l1_change"]) <= MAX_L1_CHANGE


def verdicts(rows):
    """{precision: {target, near_lossless, worst_psnr_db, worst_l1_change, failing}} over the rows in the
    verdict; near-lossless needs every model to pass."""
    found = {}
    for name, target in PRECISIONS:
        judged = [row for row in rows if row["precision"] == name and row["in_verdict"]]
        if name == REFERENCE or not judged:
            continue
        found[name] = {"target": target, "near_lossless": all(passes_gate(row) for row in judged),
                       "worst_psnr_db": min(row["psnr_db"] for row in judged),
                       "worst_l1_change": max((row["reconstruction_l1_change"] for row in judged), key=abs),
                       "failing": [row["model"] for row in judged if not passes_gate(row)]}
    return found


def verdict_line(name, verdict):
    words = "near-lossless" if verdict["near_lossless"] else "NOT near-lossless"
    line = (f"{name} ({verdict['target']}): {words}: worst PSNR {verdict['worst_psnr_db']:.1f} dB vs float32 "
            f"(gate >= {MIN_PSNR_DB:.0f}), worst reconstruction L1 change {verdict['worst_l1_change']:+.2%} "
            f"(gate within {MAX_L1_CHANGE:.0%})")
    return line + (f"; fails on: {', '.join(verdict['failing'])}" if verdict["failing"] else "")


def table(rows):
    lines = ["| model | precision | target | frames | prediction max abs | prediction mean abs | PSNR dB "
             "| keypoint shift px | reconstruction L1 | vs float32 |", "|" + "---|" * 10]
    for row in rows:
        if row["precision"] == REFERENCE:
            cells = ["-", "-", "-", "-", f"{row['reconstruction_l1']:.4f}", "-"]
        else:
            cells = [f"{row['prediction_max_abs']:.4f}", f"{row['prediction_mean_abs']:.5f}", f"{row['psnr_db']:.1f}",
                     f"{row['keypoint_shift_px']:.3f}", f"{row['reconstruction_l1']:.4f}",
                     f"{row['reconstruction_l1_change']:+.2%}"]
        lines.append("| " + " | ".join([row["model"], row["precision"], row["target"], str(row["frames"]), *cells])
                     + " |")
    return "\n".join(lines)


def write_json(path, args, rows, found):
    report = {"measured": datetime.date.today().isoformat(), "frames": args.frames,
              "gate": {"min_psnr_db": MIN_PSNR_DB, "max_reconstruction_l1_change": MAX_L1_CHANGE},
              "cpu_flags": sorted(precision.cpu_flags() & set(precision.BFLOAT16_FLAGS + precision.INT8_FLAGS)),
              "verdicts": found, "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


def main(argv=None):
    args = parse_args(argv)
    import backends

    backends.tensorflow()
    precisions = available_precisions()
    skipped = [name for name, target in PRECISIONS if (name, target) not in precisions]
    if skipped:
        print(f"note: skipped {', '.join(skipped)}: this CPU would emulate it", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="quality-") as tmpdir:
        for case in all_cases():
            if case_key(case) in args.models:
                print(f"{case.label} ...", file=sys.stderr, flush=True)
                rows += measure(case, precisions, args.frames, tmpdir)
    print(table(rows))
    found = verdicts(rows)
    print()
    for name, verdict in found.items():
        print(verdict_line(name, verdict))
    if args.json:
        write_json(args.json, args, rows, found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
