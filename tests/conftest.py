"""Shared test helpers: the repo (and tools/) on sys.path, quiet TensorFlow, the PyTorch-made fixtures,
the SPEC bounds, README commands and exports built once per session."""
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
# run.py's model cache goes to a folder of this session, never the user's ~/.cache (subprocesses inherit it);
# it is deleted when the session ends.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["FOMM_CACHE_DIR"] = tempfile.mkdtemp(prefix="fomm-test-cache-")
atexit.register(shutil.rmtree, os.environ["FOMM_CACHE_DIR"], ignore_errors=True)
sys.path.insert(0, str(REPO))
import animate  # noqa: E402  (the repository's modules, found through the path above)
import media  # noqa: E402
import wild_inputs  # noqa: E402
from wild_inputs import PLACED, background, place, placed_clip  # noqa: E402,F401  (the tests' names for them)

FIXTURES = REPO / "tests" / "fixtures"
FIXTURE_NAMES = sorted(p.name for p in FIXTURES.iterdir() if (p / "reference.npz").exists()) if FIXTURES.exists() else []


def nchw_to_nhwc(array):
    """The original's [B, C, H, W] (or [B, K, C, h, w]) -> our channels-last layout."""
    array = np.asarray(array)
    if array.ndim == 4:
        return array.transpose(0, 2, 3, 1)
    if array.ndim == 5:
        return array.transpose(0, 1, 3, 4, 2)
    raise ValueError(f"unexpected rank {array.ndim}")


class Fixture:
    """One fixture directory written by tests/make_fixtures.py from the original PyTorch code."""

    def __init__(self, name):
        self.name = name
        self.dir = FIXTURES / name
        self.ref = dict(np.load(self.dir / "reference.npz"))
        meta = self.dir / "expected.json"
        self.meta = json.loads(meta.read_text()) if meta.exists() else {}

    @property
    def config_path(self):
        return self.dir / "config.yaml"

    def checkpoint(self, fmt="legacy"):
        return self.dir / f"{fmt}.pth.tar"

    def config(self):
        import model_config

        return model_config.load(self.config_path).model

    def generator_kp_driving(self):
        """norm_11 keypoints for the frames whose generator outputs the reference holds (the first G)."""
        count = self.ref["prediction"].shape[0]
        return {k: v[:count] for k, v in self.kp("norm_11").items()}

    def kp(self, prefix):
        """Reference keypoints {'value', 'jacobian'?} for e.g. prefix='kp_source' or 'norm_11'."""
        kp = {"value": self.ref[f"{prefix}_value"]}
        if f"{prefix}_jacobian" in self.ref:
            kp["jacobian"] = self.ref[f"{prefix}_jacobian"]
        return kp


# tqdm's progress updates, e.g. "clip.mp4:  45%|####5     | 9/20 [00:01<00:01,  8.10frame/s]"
PROGRESS_BAR = re.compile(r"\[(\d+:)?\d\d:\d\d[<,]")
# run.py's status lines: what it is doing before the progress bar can say it (run.status), and what the
# model cache wrote (run.inform)
STATUS_LINE = re.compile(r"^(loading .+|looking for faces|cropping|\S.*: building the graph on the first batch)\.\.\.$"
                         r"|^model cache: wrote .+$")


def stderr_lines(text):
    """Non-empty stderr lines, without the progress bar's updates (split on its carriage returns) and
    without run.py's status lines."""
    return [line for line in re.split(r"[\r\n]", text)
            if line.strip() and not PROGRESS_BAR.search(line) and not STATUS_LINE.match(line)]


def assert_one_line_error(capsys, code, *fragments):
    """A CLI failure: exit code 1 and one line on stderr besides status lines, no traceback, naming every
    fragment."""
    err = capsys.readouterr().err
    lines = stderr_lines(err)
    assert code == 1, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], err


_CACHE = {}


def load_fixture(name):
    if name not in _CACHE:
        _CACHE[name] = Fixture(name)
    return _CACHE[name]


@pytest.fixture(params=FIXTURE_NAMES)
def fixture(request):
    return load_fixture(request.param)


_MODELS = {}


def fixture_models(name):
    """(config, KPDetector, OcclusionAwareGenerator) loaded torch-free from the legacy checkpoint, cached."""
    if name not in _MODELS:
        import checkpoint_loader
        import modules

        fx = load_fixture(name)
        config = fx.config()
        state = checkpoint_loader.load_state_dicts(fx.checkpoint("legacy"))
        kp_detector = modules.create_kp_detector(config)
        generator = modules.create_generator(config)
        checkpoint_loader.load_kp_detector_weights(kp_detector, state, name)
        checkpoint_loader.load_generator_weights(generator, state, name)
        _MODELS[name] = (config, kp_detector, generator)
    return _MODELS[name]


# --------------------------------------------------------------------------------------------------
# Helpers several test modules share
# --------------------------------------------------------------------------------------------------

# SPEC bounds against the original (tests/test_parity.py): keypoints within 1e-4, predictions within
# 2e-3 max abs, uint8 frames identical on >= 99.9% of pixels and never more than one level off.
KP_TOL = 1e-4
PREDICTION_TOL = 2e-3
# Intermediates pass through fewer layers than the prediction; the same bound keeps them honest.
INTERMEDIATE_TOL = 2e-3


def max_abs(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def assert_frames_match(ours, reference):
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.shape == reference.shape and ours.dtype == np.uint8
    diff = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
    assert diff.max() <= 1
    assert (diff == 0).mean() >= 0.999


# run.main in a fresh process; its last stdout line: the exit code and which of tensorflow / keras it imported
_RUN_MAIN_REPORTING_IMPORTS = (
    "import json, sys\n"
    "import run\n"
    "code = run.main(json.loads(sys.argv[1]))\n"
    "print(code, sorted(name for name in ('tensorflow', 'keras') if name in sys.modules))\n")


def run_main_in_fresh_process(args, timeout=300):
    """run.py's main(args) in a fresh Python process (the CompletedProcess); its stdout ends with
    '0 []' when it succeeded without importing TensorFlow or Keras."""
    return subprocess.run([sys.executable, "-c", _RUN_MAIN_REPORTING_IMPORTS, json.dumps(args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def readme_commands(section):
    """The ```bash blocks of README.md's `## <section>`, stripped, in order."""
    text = (REPO / "README.md").read_text()
    heading = f"\n## {section}\n"
    assert heading in text, f"README.md has no '## {section}' section"
    body = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", body, re.S)]


# tools/ is not a package: its scripts (ops_md, example_gif, profile_parts) import as top-level modules.
sys.path.insert(0, str(REPO / "tools"))

# Exports built by build.py in-process (tests/test_exports.py, test_onnx.py, test_web.py)
MODEL = "config"  # build.py names a --config build after the file's stem: fixtures' config.yaml -> config
VARIANT_FIXTURE = "vox"  # the fixture every build flag and TF.js are checked on
NODE_MODULES = REPO / "node_modules" / "@tensorflow" / "tfjs"


class Builds:
    """Exports built once per test session: one export root per (fixture, build flags)."""

    def __init__(self, tmp_path_factory):
        self.tmp_path_factory = tmp_path_factory
        self.roots = {}

    def root(self, name, flags=(), modules=None):
        """The export root of `name` built with `flags`, holding at least `modules` (default: every
        export module)."""
        import build
        import export_files

        modules = export_files.EXPORT_MODULES if modules is None else modules
        key = (name, tuple(flags))
        if key not in self.roots:
            self.roots[key] = (self.tmp_path_factory.mktemp(f"exports-{name}"), set())
        root, built = self.roots[key]
        fx = load_fixture(name)
        for module in modules:
            if module not in built:
                code = build.main(["--config", str(fx.config_path), "--checkpoint", str(fx.checkpoint()),
                                   "--outdir", str(root), "--module", module, *flags])
                assert code == 0, f"build.py failed: {name} {module} {flags}"
                built.add(module)
        return root

    def models(self, name, target, flags=(), float16=False):
        """{module: callable} for one build, loaded through export_files like run.py does."""
        import export_files

        found = export_files.find_exports(target, self.root(name, flags), MODEL, float16)
        return {module: export_files.load_export(target, path) for module, (path, _) in found.items()}


def assert_kp_close(ours, reference, label):
    """Keypoint outputs {'value', 'jacobian'?} within KP_TOL of the original's, key for key."""
    assert set(ours) == set(reference), label
    for key in reference:
        assert max_abs(ours[key], reference[key]) <= KP_TOL, (label, key)


def generator_inputs(fx):
    """Inputs of the original's generator call recorded in the fixture (kp_driving = norm_11)."""
    return {"source_image": nchw_to_nhwc(fx.ref["source"]), **animate.kp_arguments(fx.generator_kp_driving(), "kp_driving"),
            **animate.kp_arguments(fx.kp("kp_source"), "kp_source")}


def driving_keypoints(fx, frames, source_image=None):
    """generator_inputs with the norm_11 keypoints of driving `frames` (a slice) and optionally another source."""
    inputs = dict(generator_inputs(fx), **animate.kp_arguments({k: v[frames] for k, v in fx.kp("norm_11").items()}, "kp_driving"))
    if source_image is not None:
        inputs["source_image"] = source_image
    return inputs


def demo_generator_batches(count, batch_size):
    """`count` generator inputs of the demo model: the example photo, one source keypoint set, and driving
    keypoints (with jacobians) scattered around it, different in every batch."""
    rng = np.random.default_rng(0)
    source = media.read_image(str(REPO / "example" / "source.png"), (256, 256, 3))[None].astype(np.float32)
    kp_source = rng.uniform(-0.6, 0.6, (1, 10, 2)).astype(np.float32)
    eye = np.eye(2, dtype=np.float32)
    return [{"source_image": source, "kp_source": kp_source, "kp_source_jacobian": np.tile(eye, (1, 10, 1, 1)),
             "kp_driving": (kp_source + rng.normal(0, 0.05, (batch_size, 10, 2))).astype(np.float32),
             "kp_driving_jacobian": (eye + rng.normal(0, 0.05, (batch_size, 10, 2, 2))).astype(np.float32)}
            for _ in range(count)]


def process_inputs(fx, relative_jacobian=1.0, adapt=1.0):
    kp_driving = fx.kp("kp_driving")
    return {**animate.kp_arguments(kp_driving, "kp_driving"),
            **animate.kp_arguments({k: v[:1] for k, v in kp_driving.items()}, "kp_driving_initial"),
            **animate.kp_arguments(fx.kp("kp_source"), "kp_source"),
            "use_relative_jacobian": np.float32(relative_jacobian), "adapt_movement_scale": np.float32(adapt)}


def run_readme_cli_commands(section, tmp_path, monkeypatch):
    """Run the build.py / run.py commands of a README section as written, on the bundled example, from
    tmp_path with their exports in tmp_path/exports; any other command (an install) must be one .ci/run
    runs. Returns the scripts run, in order."""
    import shlex

    import build
    import run

    ci = (REPO / ".ci" / "run").read_text().splitlines()
    clis = {"build.py": (build.main, "--outdir"), "run.py": (run.main, "--exportdir")}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "example").symlink_to(REPO / "example")
    ran = []
    for command in readme_commands(section):
        words = shlex.split(command)
        if words[0] != "python":
            assert command in ci, f"README command not run by .ci/run: {command}"
            continue
        main, export_flag = clis[words[1]]
        assert main([*words[2:], export_flag, str(tmp_path / "exports")]) == 0, command
        ran.append(words[1])
    return ran


def tfjs_available():
    """None when TF.js can be built and run here, else why not (for the skip message)."""
    import shutil

    import build

    if shutil.which("node") is None:
        return "node is not installed"
    if not NODE_MODULES.is_dir():
        return "node_modules missing: run `npm ci`"
    if not os.access(build.TFJS_VENV_CONVERTER, os.X_OK) and shutil.which("tensorflowjs_converter") is None:
        return "tensorflowjs_converter missing: run `bash tools/make_tfjs_venv.sh`"
    return None


def read_png_frames(directory):
    import imageio.v2 as imageio

    return np.stack([imageio.imread(p) for p in sorted(Path(directory).glob("frame_*.png"))])


def run_args(fx, output, *extra):
    return ["--config", str(fx.config_path), "--checkpoint", str(fx.checkpoint()),
            "--source_image", str(fx.dir / "source.png"), "--driving_video", str(fx.dir / "driving.mp4"),
            "--output", f"{output}/", *extra]


_DIRECT_FRAMES = {}


def direct_frames(name, tmp_path_factory):
    """Frames run.py writes on the direct target (relative, adapt, batch 4), once per fixture."""
    import run

    if name not in _DIRECT_FRAMES:
        out = tmp_path_factory.mktemp(f"direct-{name}") / "frames"
        assert run.main(run_args(load_fixture(name), out, "--relative", "--adapt")) == 0
        _DIRECT_FRAMES[name] = read_png_frames(out)
    return _DIRECT_FRAMES[name]


# ----------------------------------------------------------------------------
# Pictures in the wild, built from the example (tests/test_faces.py, test_crop.py, test_run_crop.py) with
# wild_inputs (shared with benchmark.py --crop)
# ----------------------------------------------------------------------------

SOURCE = REPO / "example" / "source.png"
DRIVING = REPO / "example" / "driving.mp4"
SQUARE = (256, 256, 3)  # the published configs' frame_shape


def map_back(box, x, y, scale):
    """A box found on the canvas, in the pixels of the picture placed at (x, y) with `scale`."""
    bx, by, bw, bh = box
    return ((bx - x) / scale, (by - y) / scale, bw / scale, bh / scale)


def box_iou(first, second):
    """Plain IoU of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = first
    bx, by, bw, bh = second
    inner_w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    inner_h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inner = inner_w * inner_h
    return inner / (aw * ah + bw * bh - inner)


# (canvas height, width, [(x, y, scale) per pasted copy of example/source.png, left to right]).
# The 0.3 copy's face is about 26x35 px: the original's 640 px downscale of a 1920 px canvas would
# shrink it under MTCNN's 20 px minimum.
CANVASES = {
    "landscape 1920x1080": (1080, 1920, [(300, 200, 1.5), (1000, 150, 0.3), (1300, 500, 0.75)]),
    "portrait 1080x1920": (1920, 1080, [(100, 300, 2.0), (500, 1400, 1.0)]),
}


def canvas_picture(name):
    height, width, placements = CANVASES[name]
    return wild_inputs.canvas(media.decode_image(str(SOURCE)), height, width, placements)


@functools.lru_cache(maxsize=1)
def driving_frames():
    """example/driving.mp4's 40 frames (256x256 uint8), decoded once per session."""
    with media.open_video(str(DRIVING)) as video:
        return tuple(np.array(frame) for frame in video)


def make_dataset(root, fx):
    """A dataset in the original's three layouts (train/ + test/): frame folder, strip, mp4."""
    import imageio.v2 as imageio

    frames = media.to_uint8(nchw_to_nhwc(fx.ref["driving"]))
    (root / "train").mkdir(parents=True)
    (root / "test" / "a_folder").mkdir(parents=True)
    for index, frame in enumerate(frames[:4]):
        imageio.imwrite(root / "test" / "a_folder" / f"{index:03d}.png", frame)
    imageio.imwrite(root / "test" / "b_strip.png", np.concatenate(list(frames[1:6]), axis=1))
    with media.FrameWriter(root / "test" / "c_video.mp4", 10) as writer:
        for frame in frames[::-1]:
            writer.write(frame)
    return {"a_folder": 4, "b_strip.png": 5, "c_video.mp4": 6}


def write_jobs_csv(folder, rows, frames=None):
    """A run.py --jobs CSV in `folder` beside copies of the smallest fixture's source.png and driving.mp4
    (looped to `frames` frames when given, for a longer job) and a broken.mp4; rows name them relatively."""
    import imageio.v2 as imageio

    fx = load_fixture("zero_order")
    (folder / "source.png").write_bytes((fx.dir / "source.png").read_bytes())
    if frames is None:
        (folder / "driving.mp4").write_bytes((fx.dir / "driving.mp4").read_bytes())
    else:
        clip = imageio.mimread(fx.dir / "driving.mp4")
        imageio.mimwrite(folder / "driving.mp4", [clip[i % len(clip)] for i in range(frames)], fps=25,
                         macro_block_size=1)
    (folder / "broken.mp4").write_bytes(b"not a video")
    path = folder / "jobs.csv"
    path.write_text("source_image,driving_video,output\n" + "".join(",".join(row) + "\n" for row in rows))
    return path
