"""Shared test helpers: the repo on sys.path, quiet TensorFlow, and the PyTorch-made fixtures."""
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

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
        import modules
        import utils

        return modules.parse_config(utils.load_config(self.config_path))

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
# run.py's status lines: what it is doing before the progress bar can say it (run.status)
STATUS_LINE = re.compile(r"^(loading .+|\S.*: building the graph on the first batch)\.\.\.$")


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
